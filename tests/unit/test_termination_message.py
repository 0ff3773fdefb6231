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
