"""The accuracy gate: its edges, and `qfleet gate`'s exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qfleet.cli import main
from qfleet.fleet.gate import (
    ACCURACY_DROP_EXCEEDED,
    BELOW_MINIMUM_ACCURACY,
    PASSED,
    gate,
)


def test_drop_within_limit_passes() -> None:
    decision = gate(0.9968, 0.9963, max_drop=0.001)
    assert decision.passed and decision.reason == PASSED and decision.failures == ()
    assert decision.drop == pytest.approx(0.0005)


def test_drop_exactly_at_the_limit_passes_despite_float_noise() -> None:
    assert 0.9968 - 0.9958 > 0.001  # binary floating point: 0.0010000000000000009
    decision = gate(0.9968, 0.9958, max_drop=0.001)
    assert decision.passed and decision.drop == 0.001


def test_drop_just_over_the_limit_fails() -> None:
    decision = gate(0.9968, 0.99579, max_drop=0.001)
    assert not decision.passed and decision.reason == ACCURACY_DROP_EXCEEDED
    assert "more than the allowed 0.1%" in decision.message


def test_int8_better_than_fp32_is_a_negative_drop() -> None:
    decision = gate(0.990, 0.992, max_drop=0.0)
    assert decision.passed and decision.drop == pytest.approx(-0.002)
    assert gate(0.99, 0.99, max_drop=0.0).drop == 0.0  # not -0.0


def test_minimum_accuracy() -> None:
    assert gate(0.99, 0.985, max_drop=0.01, min_accuracy=0.985).passed  # exactly the minimum
    decision = gate(0.99, 0.984, max_drop=0.01, min_accuracy=0.985)
    assert not decision.passed and decision.reason == BELOW_MINIMUM_ACCURACY
    assert decision.failures == (BELOW_MINIMUM_ACCURACY,)


def test_both_failing_reports_the_minimum_first_and_names_both() -> None:
    decision = gate(0.99, 0.90, max_drop=0.001, min_accuracy=0.95)
    assert not decision.passed and decision.reason == BELOW_MINIMUM_ACCURACY
    assert decision.failures == (BELOW_MINIMUM_ACCURACY, ACCURACY_DROP_EXCEEDED)
    assert "below the minimum" in decision.message and "more than the allowed" in decision.message


def test_accepts_validation_results() -> None:
    fp32 = {"accuracy": 0.99, "pairs": 6000, "flip": True, "isa": "avx2"}
    int8 = {"accuracy": 0.989, "pairs": 6000, "flip": True, "isa": "avx2"}
    decision = gate(fp32, int8, max_drop=0.002)
    assert decision.passed
    assert decision.as_dict()["drop"] == pytest.approx(0.001)
    assert json.dumps(decision.as_dict())  # JSON-ready


@pytest.mark.parametrize(
    ("fp32", "int8", "kwargs", "message"),
    [
        ({"accuracy": 0.99, "pairs": 6000}, {"accuracy": 0.99, "pairs": 600}, {}, "differ in 'pairs'"),
        ({"accuracy": 0.99, "isa": "avx2"}, {"accuracy": 0.99, "isa": "amx_int8"}, {}, "differ in 'isa'"),
        ({"pairs": 10}, {"accuracy": 0.99}, {}, "FP32 result has no 'accuracy'"),
        (1.5, 0.9, {}, "within \\[0, 1\\]"),
        (0.9, float("nan"), {}, "within \\[0, 1\\]"),
        (0.9, 0.9, {"max_drop": -0.1}, "max drop"),
        (0.9, 0.9, {"min_accuracy": 2.0}, "minimum accuracy"),
    ],
)
def test_invalid_inputs(fp32: object, int8: object, kwargs: dict, message: str) -> None:
    options = {"max_drop": 0.01, **kwargs}
    with pytest.raises(ValueError, match=message):
        gate(fp32, int8, **options)  # type: ignore[arg-type]


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data) + "\n")
    return path


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp32 = write(tmp_path / "fp32.json", {"accuracy": 0.9968, "pairs": 6000})
    # Captured stdout of `qfleet validate --json` with a log line before the JSON works too.
    int8 = tmp_path / "int8.json"
    int8.write_text('some log line\n{"accuracy": 0.9963, "pairs": 6000}\n')
    assert main(["gate", "--fp32", str(fp32), "--int8", str(int8), "--max-drop", "0.001", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] is True and result["reason"] == PASSED and "_exit_code" not in result

    assert main(["gate", "--fp32", str(fp32), "--int8", str(int8), "--max-drop", "0.0001", "--json"]) == 1
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] is False and result["reason"] == ACCURACY_DROP_EXCEEDED

    argv = ["gate", "--fp32", str(fp32), "--int8", str(int8), "--max-drop", "0.01", "--min-accuracy", "0.999"]
    assert main(argv) == 1
    assert "FAILED (BelowMinimumAccuracy)" in capsys.readouterr().out


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp32 = write(tmp_path / "fp32.json", {"accuracy": 0.99, "pairs": 6000})
    other = write(tmp_path / "other.json", {"accuracy": 0.99, "pairs": 10})
    assert main(["gate", "--fp32", str(fp32), "--int8", str(other), "--max-drop", "0.01"]) == 2
    assert "differ in 'pairs'" in capsys.readouterr().err
    assert (
        main(["gate", "--fp32", str(fp32), "--int8", str(tmp_path / "absent.json"), "--max-drop", "0.01"])
        == 2
    )
    assert "absent.json does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json\n")
    assert main(["gate", "--fp32", str(fp32), "--int8", str(garbage), "--max-drop", "0.01"]) == 2
    assert "not a JSON validation result" in capsys.readouterr().err


def test_pure_modules_import_no_runtime_libraries() -> None:
    # The protocol and the gate run inside the operator too: no OpenVINO, kopf or Kubernetes client.
    import subprocess
    import sys

    code = (
        "import sys, qfleet.lfw.protocol, qfleet.fleet.gate;"
        "print(sorted(m for m in ('openvino', 'kopf', 'kubernetes', 'nncf', 'mxnet') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "[]"


def test_a_baseline_not_computed_in_f32_is_refused() -> None:
    """On bf16 CPUs OpenVINO computes an FP32 model in bf16 unless told f32: no gate against that."""
    int8 = {"accuracy": 0.989, "pairs": 6000, "inference_precision": "f32"}
    with pytest.raises(ValueError, match="computed in bf16, not f32"):
        gate({"accuracy": 0.99, "pairs": 6000, "inference_precision": "bf16"}, int8, max_drop=0.01)
    assert gate({"accuracy": 0.99, "pairs": 6000, "inference_precision": "f32"}, int8, max_drop=0.01).passed
    assert gate({"accuracy": 0.99, "pairs": 6000}, int8, max_drop=0.01).passed  # older results: no key


def test_the_bf16_variant_is_gated_the_same_way_under_its_own_name() -> None:
    decision = gate(0.99, 0.95, max_drop=0.01, min_accuracy=0.97, candidate="BF16")
    assert not decision.passed and decision.message.startswith("BF16 accuracy 95% is below")
    assert "INT8" not in decision.message
