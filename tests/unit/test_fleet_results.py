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
