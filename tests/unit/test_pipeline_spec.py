"""One spelling of a pipeline run: a Job's args are ``PipelineSpec.to_args()``, and the command
line reads them back into the same spec, so the Job and a hand run cannot drift apart."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qfleet import defaults
from qfleet.cli import build_parser
from qfleet.commands.pipeline import spec_from_args
from qfleet.isa import TIER_NAMES
from qfleet.pipeline import PipelineSpec


def parse(args: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["pipeline", *args])


def test_the_command_line_defaults_are_the_specs_and_the_crds() -> None:
    parsed = spec_from_args(
        parse(["--source", "s", "--format", "onnx", "--calibration", "c", "--lfw", "l", "--out", "o"])
    )
    assert parsed == PipelineSpec(source="s", fmt="onnx", calibration="c", lfw="l", out="o")
    # The bug this guards: the pipeline once gated at 0.01 while the CRD's maxDrop defaults to 0.001.
    assert parsed.max_drop == defaults.MAX_DROP == 0.001
    assert (parsed.preset, parsed.subset_size) == (defaults.PRESET, defaults.SUBSET_SIZE)


specs = st.builds(
    PipelineSpec,
    source=st.sampled_from(["/models/r100/model", "/m/face.onnx"]),
    fmt=st.sampled_from(defaults.SOURCE_FORMATS),
    calibration=st.just("/data/calib"),
    lfw=st.just("/data/lfw.bin"),
    out=st.just("/artifacts/key"),
    expect_isa=st.none() | st.sampled_from(TIER_NAMES),
    epoch=st.none() | st.integers(0, 9999),
    preset=st.sampled_from(defaults.PRESETS),
    subset_size=st.integers(1, 5000),
    max_drop=st.floats(0, 0.5, allow_nan=False),
    min_accuracy=st.none() | st.floats(0, 1, allow_nan=False),
    accuracy_control=st.booleans(),
    threads=st.none() | st.integers(1, 128),
    benchmark_seconds=st.floats(0.1, 600, allow_nan=False),
    benchmark_batch=st.integers(1, 64),
    flip=st.booleans(),
    progress=st.booleans(),
    termination_log=st.none() | st.just("/dev/termination-log"),
)


@given(specs)
def test_to_args_round_trips_through_the_command_line(spec: PipelineSpec) -> None:
    assert spec_from_args(parse(spec.to_args())) == spec


@pytest.mark.parametrize("value", [0.001, 1e-05, 0.3, 10.0])
def test_numbers_are_written_as_they_read_back(value: float) -> None:
    spec = PipelineSpec(source="s", fmt="onnx", calibration="c", lfw="l", out="o", max_drop=value)
    args = spec.to_args()
    assert float(args[args.index("--max-drop") + 1]) == value
