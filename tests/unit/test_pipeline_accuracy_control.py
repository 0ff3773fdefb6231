"""Accuracy control's budget in a pipeline spec, and what the result says of it."""

from __future__ import annotations

import json
from typing import Any

from qfleet import defaults
from qfleet.cli import build_parser
from qfleet.commands.pipeline import spec_from_args
from qfleet.pipeline import PipelineSpec, control_summary, termination_message


def _spec(**options: Any) -> PipelineSpec:
    return PipelineSpec(
        source="/m/face.onnx", fmt="onnx", calibration="/c", lfw="/l.bin", out="/o", **options
    )


def _round_trip(spec: PipelineSpec) -> PipelineSpec:
    return spec_from_args(build_parser().parse_args(["pipeline", *spec.to_args()]))


def test_the_budget_is_spelled_out_in_a_jobs_args_and_reads_back() -> None:
    spec = _spec(accuracy_control=True, accuracy_control_max_iterations=7, accuracy_control_timeout=90.5)
    args = spec.to_args()
    assert args[args.index("--accuracy-control-max-iterations") + 1] == "7"
    assert args[args.index("--accuracy-control-timeout") + 1] == "90.5"
    assert _round_trip(spec) == spec


def test_the_budget_defaults_are_the_shared_ones() -> None:
    spec = _round_trip(_spec(accuracy_control=True))
    assert spec.accuracy_control_max_iterations == defaults.ACCURACY_CONTROL_MAX_ITERATIONS
    assert spec.accuracy_control_timeout == defaults.ACCURACY_CONTROL_TIMEOUT_S
    assert "--accuracy-control-timeout" not in _spec().to_args()


REPORT = {
    "outcome": "max_iterations",
    "met": False,
    "drop": 0.0067,
    "fully_quantized_drop": 0.0217,
    "iterations": 20,
    "seconds": 41.2,
    "reverted": [{"name": f"Multiply_{i}", "type": "Convolution", "input": f"prelu{i}"} for i in range(40)],
    "trials": [{"reverted": i, "drop": 0.01} for i in range(20)],
}


def test_the_result_summarises_the_control_and_names_the_reverted_operations() -> None:
    summary = control_summary({"quantization": {"accuracy_control": REPORT}})["accuracy_control"]
    assert summary["outcome"] == "max_iterations" and summary["met"] is False
    assert summary["iterations"] == 20 and summary["drop"] == 0.0067
    assert summary["reverted_layers"][:2] == ["Multiply_0", "Multiply_1"]
    assert "trials" not in summary  # qfleet.json has them; the termination message has no room
    assert control_summary({"quantization": {}}) == {}


def test_the_termination_message_keeps_the_control_when_it_must_trim() -> None:
    summary = control_summary({"quantization": {"accuracy_control": REPORT}})
    result = {"isa": "avx2", "gate": {"passed": False}, **summary, "timings": {"x" * 5000: 1.0}}
    message = json.loads(termination_message(result))
    assert message["accuracy_control"]["outcome"] == "max_iterations"
    assert "timings" not in message
