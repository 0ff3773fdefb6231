"""Reading a finished Job: its pods' termination message and its conditions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qfleet.fleet.results import ResultError, job_outcome, parse_result
from qfleet.fleet.uris import MOUNT_ROOT

NOW = "2030-01-01T00:10:00Z"
OUT = f"{MOUNT_ROOT}/models/qfleet/m/key/avx2"


def result_message(**overrides: Any) -> str:
    result = {
        "isa": "avx2",
        "artifact": f"{OUT}/int8/model.xml",
        "fp32_artifact": f"{OUT}/fp32/model.xml",
        "fp32": {"accuracy": 0.9963, "fps": 326.0},
        "int8": {"accuracy": 0.9960, "fps": 579.0},
        "gate": {"passed": True, "drop": 0.0003, "reason": "Passed", "message": "ok"},
        "versions": {"openvino": "2026.4"},
        "seconds": 321.5,
    }
    result.update(overrides)
    return json.dumps(result)


def job(name: str = "m-avx2-key", *, complete: bool = False, failed: str | None = None) -> dict[str, Any]:
    conditions = []
    status: dict[str, Any] = {}
    if complete:
        conditions.append(
            {"type": "Complete", "status": "True", "lastTransitionTime": "2030-01-01T00:09:00Z"}
        )
        status.update(succeeded=1, completionTime="2030-01-01T00:09:00Z")
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": "too many tries",
                           "lastTransitionTime": "2030-01-01T00:09:00Z"})  # fmt: skip
    status["conditions"] = conditions
    return {"metadata": {"name": name}, "status": status}


def pod(job_name: str, *, exit_code: int, message: str, finished: str = "2030-01-01T00:08:59Z",
        label: str = "batch.kubernetes.io/job-name") -> dict[str, Any]:  # fmt: skip
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": finished}
    return {
        "metadata": {"name": f"{job_name}-x", "labels": {label: job_name}},
        "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
    }


def test_parse_result_maps_pod_paths_to_uris() -> None:
    result = parse_result(result_message())
    assert result.artifact == "pvc://models/qfleet/m/key/avx2/int8/model.xml"
    assert result.fp32_artifact.endswith("/fp32/model.xml")
    assert (result.int8_fps, result.fp32_fps) == (579.0, 326.0)
    assert result.gate_passed and result.gate_reason == "Passed"
    assert result.drop == pytest.approx(0.0003)


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1, 2]",
        result_message(int8={"fps": 1.0}),
        result_message(artifact="/elsewhere/model.xml"),
        result_message(fp32={"accuracy": "high", "fps": 1}),
    ],
)
def test_parse_result_refuses_what_it_cannot_use(message: str) -> None:
    with pytest.raises(ResultError):
        parse_result(message)


def test_running_job() -> None:
    assert job_outcome(job(), [], now=NOW).state == "running"


def test_succeeded_job_with_its_result() -> None:
    outcome = job_outcome(
        job(complete=True), [pod("m-avx2-key", exit_code=0, message=result_message())], now=NOW
    )
    assert outcome.state == "succeeded" and outcome.result is not None
    assert outcome.result.int8_accuracy == 0.996 and outcome.finished_at == "2030-01-01T00:09:00Z"


def test_old_label_and_retried_pods() -> None:
    pods = [
        pod("m-avx2-key", exit_code=1, message='{"error": {"stage": "quantize", "message": "oom"}}',
            finished="2030-01-01T00:05:00Z", label="job-name"),
        pod("m-avx2-key", exit_code=0, message=result_message(), label="job-name"),
        pod("other-job", exit_code=0, message="garbage"),
    ]  # fmt: skip
    outcome = job_outcome(job(complete=True), pods, now=NOW)
    assert outcome.state == "succeeded" and outcome.result is not None


def test_completed_job_whose_pod_is_not_seen_yet_waits_then_counts_as_lost() -> None:
    outcome = job_outcome(job(complete=True), [], now="2030-01-01T00:09:30Z")
    assert outcome.state == "succeeded" and outcome.awaiting_result
    outcome = job_outcome(job(complete=True), [], now="2030-01-01T01:00:00Z")
    assert outcome.state == "failed" and outcome.reason == "ResultLost"


def test_failed_job_reports_stage_message_and_exit_code() -> None:
    message = json.dumps({"error": {"stage": "convert", "message": "model.onnx does not exist"}})
    outcome = job_outcome(
        job(failed="BackoffLimitExceeded"), [pod("m-avx2-key", exit_code=1, message=message)], now=NOW
    )
    assert outcome.state == "failed"
    assert (outcome.reason, outcome.stage, outcome.exit_code) == ("BackoffLimitExceeded", "convert", 1)
    assert "model.onnx does not exist" in outcome.message and "exit code 1" in outcome.message


def test_failed_job_without_pods_keeps_the_jobs_reason() -> None:
    outcome = job_outcome(job(failed="DeadlineExceeded"), [], now=NOW)
    assert outcome.state == "failed" and outcome.reason == "DeadlineExceeded" and outcome.stage == ""


def test_unreadable_success_is_a_failure() -> None:
    outcome = job_outcome(job(complete=True), [pod("m-avx2-key", exit_code=0, message="{}")], now=NOW)
    assert outcome.state == "failed" and outcome.reason == "ResultUnreadable"


def bf16_message(**overrides: Any) -> str:
    """A result of a host with native bf16: precision per block, a gated BF16 variant, speedups."""
    result = {
        "isa": "avx512_bf16",
        "runtime_isa": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
        "artifact": f"{OUT}/int8/model.xml",
        "fp32_artifact": f"{OUT}/fp32/model.xml",
        "bf16_artifact": f"{OUT}/bf16/model.xml",
        "fp32": {"precision": "fp32", "inference_precision": "f32", "accuracy": 0.9963, "fps": 17.0},
        "int8": {"precision": "int8", "inference_precision": "f32", "accuracy": 0.9900, "fps": 54.0,
                 "reverted_layers": 0},
        "bf16": {"precision": "bf16", "inference_precision": "bf16", "accuracy": 0.9960, "fps": 33.0,
                 "gate": {"passed": True, "drop": 0.0003, "reason": "Passed"}},
        "gate": {"passed": False, "drop": 0.0063, "reason": "AccuracyDropExceeded", "message": "too much"},
        "speedup": {"int8_vs_fp32": 3.176, "int8_vs_bf16": 1.636},
        "versions": {"openvino": "2026.4"},
        "seconds": 321.5,
    }  # fmt: skip
    result.update(overrides)
    return json.dumps(result)


def test_parse_result_with_a_bf16_variant() -> None:
    result = parse_result(bf16_message())
    assert result.bf16 is not None
    assert result.bf16.artifact == "pvc://models/qfleet/m/key/avx2/bf16/model.xml"
    assert (result.bf16.accuracy, result.bf16.fps) == (0.996, 33.0)
    assert result.bf16.gate_passed and result.bf16.gate_reason == "Passed"
    assert result.bf16.drop == pytest.approx(0.0003) and result.bf16.inference_precision == "bf16"
    assert result.inference_precision == {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
    assert result.runtime_isa == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert result.speedup == {"int8_vs_fp32": 3.176, "int8_vs_bf16": 1.636}
    assert not result.gate_passed  # the INT8 gate is the INT8 gate


def test_parse_result_without_bf16_or_precisions_as_older_jobs_wrote() -> None:
    result = parse_result(result_message())
    assert result.bf16 is None and result.runtime_isa is None
    assert result.inference_precision == {} and result.speedup == {}
    # A host without native bf16: precisions and speedup, but no bf16 block.
    message = json.loads(bf16_message(isa="avx2", runtime_isa="Intel AVX2", speedup={"int8_vs_fp32": 2.0}))
    del message["bf16"], message["bf16_artifact"]
    result = parse_result(json.dumps(message))
    assert result.bf16 is None and result.runtime_isa == "Intel AVX2"
    assert result.inference_precision == {"fp32": "f32", "int8": "f32"}


def test_an_fp32_baseline_computed_in_bf16_is_not_a_result() -> None:
    fp32 = {"precision": "fp32", "inference_precision": "bf16", "accuracy": 0.9963, "fps": 33.0}
    with pytest.raises(ResultError, match="FP32 baseline was computed in bf16, not f32"):
        parse_result(bf16_message(fp32=fp32))
    outcome = job_outcome(
        job(complete=True), [pod("m-avx2-key", exit_code=0, message=bf16_message(fp32=fp32))], now=NOW
    )
    assert outcome.state == "failed" and outcome.reason == "ResultUnreadable"
    assert "not f32" in outcome.message


@pytest.mark.parametrize(
    "message",
    [
        bf16_message(bf16_artifact=None),
        bf16_message(bf16=None),
        bf16_message(bf16_artifact="/elsewhere/bf16/model.xml"),
        bf16_message(bf16={"accuracy": 0.99, "fps": 1.0}),
        bf16_message(bf16={"accuracy": "high", "fps": 1.0, "gate": {"passed": True}}),
        bf16_message(speedup={"int8_vs_fp32": "fast"}),
    ],
)
def test_a_broken_bf16_block_is_refused(message: str) -> None:
    with pytest.raises(ResultError):
        parse_result(message)


def test_parse_result_with_int8_at_the_serving_batch() -> None:
    int8 = {"accuracy": 0.996, "fps": 579.0, "batch": 4, "batch_fps": 1100.0, "batch_latency_ms_median": 7.2}
    result = parse_result(result_message(int8=int8))
    assert (result.int8_fps, result.int8_batch, result.int8_batch_fps) == (579.0, 4, 1100.0)
    assert result.int8_batch_latency_ms == 7.2
    plain = parse_result(result_message())  # batch 1, or a pipeline before batching
    assert (plain.int8_batch, plain.int8_batch_fps, plain.int8_batch_latency_ms) == (None, None, None)


@pytest.mark.parametrize(
    ("batch", "fps", "words"),
    [
        (0, 1100.0, "int8.batch"),
        ("4", 1100.0, "int8.batch"),
        (4, "fast", "int8.batch_fps"),
        (4, 0, "positive"),
    ],
)
def test_a_broken_batch_measurement_is_refused(batch: object, fps: object, words: str) -> None:
    int8 = {"accuracy": 0.996, "fps": 579.0, "batch": batch, "batch_fps": fps}
    with pytest.raises(ResultError, match=words):
        parse_result(result_message(int8=int8))


CONTROL = {
    "outcome": "met",
    "met": True,
    "drop": 0.004,
    "fully_quantized_drop": 0.021,
    "iterations": 6,
    "seconds": 38.2,
    "reverted_layers": ["stage1_unit1_conv1", "fc1"],
}


def test_parse_result_with_accuracy_control() -> None:
    result = parse_result(result_message(accuracy_control=CONTROL))
    control = result.accuracy_control
    assert control is not None and control.met and control.outcome == "met"
    assert (control.drop, control.fully_quantized_drop, control.iterations) == (0.004, 0.021, 6)
    assert control.reverted_layers == ("stage1_unit1_conv1", "fc1")
    assert parse_result(result_message()).accuracy_control is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"iterations": -1}, "iterations"),
        ({"reverted_layers": "fc1"}, "reverted_layers"),
        ({"drop": "small"}, "accuracy_control.drop"),
    ],
)
def test_a_broken_accuracy_control_block_is_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(ResultError, match=words):
        parse_result(result_message(accuracy_control=CONTROL | change))
