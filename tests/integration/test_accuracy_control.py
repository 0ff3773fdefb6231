"""Accuracy control on a face model whose plain INT8 misses the gate: it meets ``max_drop`` by
returning the harmed operations to float, and says so when its budget does not let it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.support.sensitive_model import DEMO_SITES, add_outlier_channels

pytest.importorskip("nncf")
if importlib.util.find_spec("mxnet") is None:  # imported through qfleet (numpy shim), not here
    pytest.skip("mxnet is not installed", allow_module_level=True)

#: Outlier scales at the demo model's four BatchNorm -> PReLU -> Convolution sites: plain INT8 then
#: loses about 2 points on the synthetic pairs, each site a part of it.
SCALES = (80.0, 100.0, 100.0, 80.0)
MAX_DROP = 0.005


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from qfleet.lfw.dataset import load_lfw_bin
    from qfleet.lfw.synthetic import demo_model_prefix, generate_demo_data
    from qfleet.model.convert import convert_model
    from qfleet.model.embed import validate_model

    root = tmp_path_factory.mktemp("sensitive")
    data = generate_demo_data(root / "data", calibration_images=100)
    prefix = add_outlier_channels(
        demo_model_prefix(),
        root / "checkpoint" / "model",
        [(bn, conv, scale) for (bn, conv), scale in zip(DEMO_SITES, SCALES, strict=True)],
    )
    convert_model(str(prefix), fmt="mxnet", out_dir=root / "fp32")
    pairset = load_lfw_bin(data["lfw_bin"])
    fp32 = validate_model(root / "fp32" / "model.xml", pairset, progress=False)["accuracy"]
    return {"root": root, **data, "fp32_xml": root / "fp32" / "model.xml", "pairset": pairset, "fp32": fp32}


def _accuracy(xml: Path, sensitive: dict[str, Any]) -> float:
    from qfleet.model.embed import validate_model

    return float(validate_model(xml, sensitive["pairset"], progress=False)["accuracy"])


def quantize_controlled(sensitive: dict[str, Any], out: Path, control: Any = None) -> dict[str, Any]:
    """``quantize_model`` of the sensitive model with accuracy control (``control``: its options)."""
    from qfleet.model.quantize import quantize_model

    return quantize_model(
        sensitive["fp32_xml"],
        calibration=sensitive["calibration"],
        out_dir=out,
        max_drop=MAX_DROP,
        lfw=sensitive["lfw_bin"],
        progress=False,
        control=control,
    )


def test_plain_int8_misses_and_controlled_int8_meets_the_max_drop(sensitive: dict[str, Any]) -> None:
    from qfleet.model.quantize import quantize_model

    root = sensitive["root"]
    quantize_model(
        sensitive["fp32_xml"], calibration=sensitive["calibration"], out_dir=root / "plain", progress=False
    )
    plain_drop = sensitive["fp32"] - _accuracy(root / "plain" / "model.xml", sensitive)
    assert plain_drop > MAX_DROP, "the outliers should cost plain INT8 more than the max drop"

    metadata = quantize_controlled(sensitive, root / "controlled")
    control = metadata["quantization"]["accuracy_control"]
    assert control["outcome"] == "met" and control["met"], control
    assert control["fully_quantized_drop"] == pytest.approx(plain_drop, abs=1e-6)  # rounded to 6 digits
    reverted = metadata["quantization"]["reverted_layers"]
    assert 1 <= len(reverted) < control["quantized_ops"]
    # Only the convolutions behind the outlier channels cost accuracy: those are what went back.
    rewritten = {f"prelu{bn[-1]}_fwd" for bn, _ in DEMO_SITES}
    assert {op["input"] for op in control["reverted"]} <= rewritten, control["reverted"]
    assert 1 <= control["iterations"] <= control["max_iterations"]
    controlled_drop = sensitive["fp32"] - _accuracy(root / "controlled" / "model.xml", sensitive)
    # The artifact is what was measured (the report rounds to 6 digits).
    assert controlled_drop == pytest.approx(control["drop"], abs=1e-6)
    assert controlled_drop <= MAX_DROP + 1e-9


def test_a_budget_too_small_keeps_the_best_model_and_says_why(sensitive: dict[str, Any]) -> None:
    from qfleet.model.accuracy_control import ControlOptions

    out = sensitive["root"] / "budget"
    metadata = quantize_controlled(sensitive, out, ControlOptions(timeout_s=1e-3))  # spent at once
    control = metadata["quantization"]["accuracy_control"]
    assert control["outcome"] == "timeout" and not control["met"], control
    assert control["iterations"] == 0 and control["trials"] == []
    # The best model so far is plain INT8, and its drop (above the max) is said.
    assert control["drop"] == control["fully_quantized_drop"] > MAX_DROP
    assert control["drop_on"] == "all"
    assert metadata["quantization"]["reverted_layers"] == []
    assert sensitive["fp32"] - _accuracy(out / "model.xml", sensitive) == pytest.approx(
        control["drop"], abs=1e-6
    )


def test_candidates_on_a_pair_subset_and_the_choice_confirmed_on_all(sensitive: dict[str, Any]) -> None:
    from qfleet.model.accuracy_control import ControlOptions

    out = sensitive["root"] / "subset"
    metadata = quantize_controlled(sensitive, out, ControlOptions(subset_pairs=200))
    control = metadata["quantization"]["accuracy_control"]
    assert control["subset_pairs"] == 200 < control["pairs"]
    assert control["outcome"] == "met", control
    assert [trial["pairs"] for trial in control["trials"]][-1] == "all"  # the choice, confirmed
    assert "subset" in {trial["pairs"] for trial in control["trials"]}
    assert control["drop_on"] == "all"
    drop = sensitive["fp32"] - _accuracy(out / "model.xml", sensitive)
    assert drop == pytest.approx(control["drop"], abs=1e-6)  # the report rounds to 6 digits
    assert drop <= MAX_DROP + 1e-9
