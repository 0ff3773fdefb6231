from __future__ import annotations

import json

from qfleet.pipeline import TERMINATION_MESSAGE_LIMIT, termination_message


def test_small_result_is_kept_whole() -> None:
    result = {"isa": "avx2", "gate": {"passed": True}, "versions": {"openvino": "x"}, "timings": {"a": 1.0}}
    assert json.loads(termination_message(result)) == result


def test_large_result_drops_detail_then_truncates_the_error() -> None:
    result = {
        "isa": "avx2",
        "versions": {f"lib{i}": "1.0" * 50 for i in range(40)},
        "timings": {f"stage{i}": 1.0 for i in range(40)},
        "error": {"stage": "convert", "message": "é" * 5000},
    }
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    assert parsed["error"]["stage"] == "convert" and parsed["error"]["message"].endswith("...")
    assert "versions" not in parsed and parsed["isa"] == "avx2"


def test_message_that_grows_when_escaped_still_fits() -> None:
    result = {"isa": "avx2", "error": {"stage": "quantize", "message": '"\n' * 4000}}
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["error"]["stage"] == "quantize"


def _block(precision: str, inference: str) -> dict[str, object]:
    return {
        "precision": precision,
        "inference_precision": inference,
        "accuracy": 0.996333,
        "accuracy_std": 0.003145,
        "threshold": 1.4321,
        "fps": 1234.56,
        "latency_ms_median": 12.345,
    }


def test_a_full_bf16_tier_result_fits_with_every_block() -> None:
    """The largest successful result: three variants, long artifact paths, the full gate."""
    root = "/artifacts/" + "surveillance-site-" * 6 + "/arcface-r100/3f9c2a1b7d"
    result = {
        "isa": "avx512_bf16",
        "runtime_isa": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support",
        "artifact": f"{root}/int8/model.xml",
        "fp32_artifact": f"{root}/fp32/model.xml",
        "bf16_artifact": f"{root}/bf16/model.xml",
        "fp32": _block("fp32", "f32"),
        "int8": _block("int8", "f32") | {"reverted_layers": 12},
        "bf16": _block("bf16", "bf16") | {"gate": {"passed": True, "drop": 0.000333, "reason": "Passed"}},
        "gate": {
            "passed": False,
            "drop": 0.0123,
            "reason": "BelowMinimumAccuracy",
            "message": "INT8 accuracy 98.23% is below the minimum 99%; INT8 accuracy 98.23% is 1.23% below "
            "FP32 99.46%, more than the allowed 0.1%",
            "fp32_accuracy": 0.9946,
            "int8_accuracy": 0.9823,
            "max_drop": 0.001,
            "min_accuracy": 0.99,
            "failures": ["BelowMinimumAccuracy", "AccuracyDropExceeded"],
        },
        "speedup": {"int8_vs_fp32": 3.214, "int8_vs_bf16": 1.712},
        "pairs": 6000,
        "threads": 16,
        "seconds": 1234.5,
        "timings": {f"stage-{i}": 123.456 for i in range(14)},
        "versions": {name: "2026.4.1-22982-e213a147257" for name in ("openvino", "nncf", "numpy", "qfleet")},
    }
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    for key in ("fp32", "int8", "bf16", "gate", "speedup", "bf16_artifact", "runtime_isa"):
        assert parsed[key] == result[key], key
