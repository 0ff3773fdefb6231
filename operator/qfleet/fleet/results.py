"""What a finished quantization Job says: its state, and the pipeline's JSON result.

``qfleet pipeline`` writes one JSON object (<= 4096 bytes) to the container's termination
message file; the kubelet copies it into the pod's
``status.containerStatuses[0].state.terminated.message``. A passed or failed accuracy gate is a
*successful* run (exit 0, ``gate.passed`` true or false); a failed run exits non-zero with
``{"error": {"stage": ..., "message": ...}}`` when it got far enough to write one.

Each variant's block says what was asked (``precision``) and what OpenVINO computed in
(``inference_precision``); on tiers with native bf16 a ``bf16`` block (gated against FP32 like
INT8) and ``bf16_artifact`` come too. Results of older pipelines have neither and still parse
(their precisions are unknown, and there is no BF16 model to serve). The FP32 block is the gate's
baseline: one computed in anything but f32 (e.g. bf16, OpenVINO's default on bf16 CPUs) is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from qfleet.fleet.status import SPEEDUPS, Bf16Record, ControlRecord, GateRecord, JobError, ResultRecord
from qfleet.fleet.uris import artifact_of_result

JobState = Literal["running", "succeeded", "failed"]

#: How long a Job may be complete without its pod showing up before the result counts as lost.
RESULT_GRACE_SECONDS = 300.0


@dataclass(frozen=True)
class Bf16Result:
    """The BF16 variant: the FP32 model computed in bf16, gated against FP32 like INT8."""

    #: pvc:// URI of its artifact (the FP32 IR with a ``qfleet.json`` that says bf16).
    artifact: str
    accuracy: float
    fps: float
    gate_passed: bool
    gate_reason: str
    drop: float
    inference_precision: str | None = None


@dataclass(frozen=True)
class PipelineResult:
    isa: str
    #: pvc:// URIs of the INT8 and FP32 models.
    artifact: str
    fp32_artifact: str
    fp32_accuracy: float
    int8_accuracy: float
    fp32_fps: float
    int8_fps: float
    gate_passed: bool
    gate_reason: str
    gate_message: str
    drop: float
    versions: Mapping[str, str] = field(default_factory=dict)
    seconds: float | None = None
    #: The kernels OpenVINO reported for the INT8 model (e.g. "Intel AVX2"); None from older Jobs.
    runtime_isa: str | None = None
    #: Per variant ("fp32", "int8", "bf16"): what it was computed in, where the result says.
    inference_precision: Mapping[str, str] = field(default_factory=dict)
    #: Present only where the tier computes bf16 natively (and the pipeline was new enough).
    bf16: Bf16Result | None = None
    #: "int8_vs_fp32", "int8_vs_bf16": throughput ratios as the pipeline reported them.
    speedup: Mapping[str, float] = field(default_factory=dict)
    #: INT8 also benchmarked at the serving batch (``--benchmark-batch`` > 1); ``int8_fps`` is
    #: batch 1. None from pipelines run at batch 1 or older ones.
    int8_batch: int | None = None
    int8_batch_fps: float | None = None
    int8_batch_latency_ms: float | None = None
    #: What accuracy control did (None: the Job quantized without it).
    accuracy_control: ControlRecord | None = None


@dataclass(frozen=True)
class JobOutcome:
    state: JobState
    result: PipelineResult | None = None
    #: Why it failed: the pipeline's stage, or the Job's reason (BackoffLimitExceeded, ...).
    reason: str = ""
    message: str = ""
    stage: str = ""
    exit_code: int | None = None
    finished_at: str | None = None
    #: Complete, but the pod that holds the result is not visible (yet).
    awaiting_result: bool = False


class ResultError(ValueError):
    """A termination message that is not a usable pipeline result."""


def parse_result(message: str) -> PipelineResult:
    """Parse a successful pipeline's termination message."""
    try:
        data = json.loads(message)
    except (TypeError, ValueError):
        raise ResultError(f"the termination message is not JSON: {message[:200]!r}") from None
    if not isinstance(data, dict):
        raise ResultError("the termination message is not a JSON object")
    try:
        return _pipeline_result(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResultError(f"the pipeline result lacks {exc}") from None


def _pipeline_result(data: Mapping[str, Any]) -> PipelineResult:
    fp32 = data["fp32"]
    int8 = data["int8"]
    gate = data["gate"]
    fp32_accuracy = _number(fp32["accuracy"], "fp32.accuracy")
    int8_accuracy = _number(int8["accuracy"], "int8.accuracy")
    batch, batch_fps, batch_latency = _int8_batch(int8)
    return PipelineResult(
        isa=str(data["isa"]),
        artifact=_uri_of(data["artifact"], "artifact"),
        fp32_artifact=_uri_of(data["fp32_artifact"], "fp32_artifact"),
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        fp32_fps=_number(fp32["fps"], "fp32.fps"),
        int8_fps=_number(int8["fps"], "int8.fps"),
        gate_passed=bool(gate["passed"]),
        gate_reason=_gate_reason(gate),
        gate_message=str(gate.get("message") or ""),
        drop=_drop(gate, fp32_accuracy - int8_accuracy, "gate.drop"),
        versions={str(key): str(value) for key, value in (data.get("versions") or {}).items()},
        seconds=_number(data["seconds"], "seconds") if data.get("seconds") is not None else None,
        runtime_isa=str(data["runtime_isa"]) if data.get("runtime_isa") else None,
        inference_precision=_precisions(data),
        bf16=_bf16(data, fp32_accuracy),
        speedup={
            str(key): _number(value, f"speedup.{key}")
            for key, value in (data.get("speedup") or {}).items()
            if value is not None
        },
        int8_batch=batch,
        int8_batch_fps=batch_fps,
        int8_batch_latency_ms=batch_latency,
        accuracy_control=_control(data.get("accuracy_control")),
    )


def _control(block: object) -> ControlRecord | None:
    """The result's ``accuracy_control``: outcome, drops, validations, reverted operations."""
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ResultError(f"the pipeline result's accuracy_control is not an object: {block!r}")
    iterations = block.get("iterations")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ResultError(f"the pipeline result's accuracy_control.iterations is not a count: {iterations!r}")
    layers = block.get("reverted_layers") or []
    if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
        raise ResultError("the pipeline result's accuracy_control.reverted_layers is not a list of names")
    return ControlRecord(
        outcome=str(block.get("outcome") or ""),
        met=bool(block.get("met")),
        drop=_number(block.get("drop"), "accuracy_control.drop"),
        fully_quantized_drop=_number(
            block.get("fully_quantized_drop"), "accuracy_control.fully_quantized_drop"
        ),
        iterations=iterations,
        seconds=_number(block.get("seconds"), "accuracy_control.seconds"),
        reverted_layers=tuple(layers),
    )


def _int8_batch(int8: Mapping[str, Any]) -> tuple[int | None, float | None, float | None]:
    """(batch, FPS, median latency) of INT8 at the serving batch; Nones when not measured."""
    if int8.get("batch_fps") is None:
        return None, None, None
    batch = int8.get("batch")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ResultError(f"the pipeline result's int8.batch is not a batch size: {batch!r}")
    fps = _number(int8["batch_fps"], "int8.batch_fps")
    if fps <= 0:
        raise ResultError(f"the pipeline result's int8.batch_fps is not positive: {fps!r}")
    latency = int8.get("batch_latency_ms_median")
    return batch, fps, _number(latency, "int8.batch_latency_ms_median") if latency is not None else None


def _gate_reason(gate: Mapping[str, Any]) -> str:
    return str(gate.get("reason") or ("Passed" if gate["passed"] else "GateFailed"))


def _drop(gate: Mapping[str, Any], computed: float, what: str) -> float:
    """The gate's drop as the pipeline reported it; computed from the accuracies by older ones."""
    drop = gate.get("drop")
    return _number(drop, what) if drop is not None else computed


def _precisions(data: Mapping[str, Any]) -> dict[str, str]:
    """What each variant computed in; an FP32 baseline not computed in f32 is refused."""
    found: dict[str, str] = {}
    for variant in ("fp32", "int8", "bf16"):
        block = data.get(variant)
        if isinstance(block, Mapping) and block.get("inference_precision"):
            found[variant] = str(block["inference_precision"])
    baseline = found.get("fp32")
    if baseline is not None and baseline != "f32":
        raise ResultError(
            f"the pipeline result's FP32 baseline was computed in {baseline}, not f32, so its "
            "accuracy and FPS are not FP32's; run the Job with a qfleet that pins f32"
        )
    return found


def _bf16(data: Mapping[str, Any], fp32_accuracy: float) -> Bf16Result | None:
    """The optional BF16 block; it and ``bf16_artifact`` come together or not at all."""
    block = data.get("bf16")
    if block is None and data.get("bf16_artifact") is None:
        return None
    if not isinstance(block, Mapping) or data.get("bf16_artifact") is None:
        raise ResultError("the pipeline result has a bf16 block without bf16_artifact, or the reverse")
    gate = block["gate"]
    accuracy = _number(block["accuracy"], "bf16.accuracy")
    return Bf16Result(
        artifact=_uri_of(data["bf16_artifact"], "bf16_artifact"),
        accuracy=accuracy,
        fps=_number(block["fps"], "bf16.fps"),
        gate_passed=bool(gate["passed"]),
        gate_reason=_gate_reason(gate),
        drop=_drop(gate, fp32_accuracy - accuracy, "bf16.gate.drop"),
        inference_precision=str(block["inference_precision"]) if block.get("inference_precision") else None,
    )


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ResultError(f"the pipeline result's {what} is not a number: {value!r}")
    return float(value)


def _uri_of(location: object, what: str) -> str:
    """The artifact's URI: an in-pod path on a mounted claim, or where it was published in S3."""
    uri = artifact_of_result(str(location))
    if uri is None:
        raise ResultError(
            f"the pipeline result's {what} {location!r} is neither on a mounted claim nor an s3:// URI"
        )
    return str(uri)


def _failure_details(message: str) -> tuple[str, str]:
    """(stage, message) of a failed pipeline's termination message; raw text when not JSON."""
    try:
        data = json.loads(message)
    except (TypeError, ValueError):
        return "", message.strip()[-500:]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("stage") or ""), str(error.get("message") or "")
    return "", message.strip()[-500:]


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for item in (job.get("status") or {}).get("conditions") or ():
        if item.get("type") == type_ and item.get("status") == "True":
            return item  # type: ignore[no-any-return]
    return None


def pods_of_job(job_name: str, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    keys = ("batch.kubernetes.io/job-name", "job-name")
    return [
        pod
        for pod in pods
        if any(((pod.get("metadata") or {}).get("labels") or {}).get(key) == job_name for key in keys)
    ]


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    state = statuses[0].get("state") or {}
    terminated = state.get("terminated")
    return terminated if isinstance(terminated, Mapping) else None


def job_outcome(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *, now: str) -> JobOutcome:
    """The state of ``job`` and, once it finished, its result or why it failed."""
    name = str((job.get("metadata") or {}).get("name", ""))
    status = job.get("status") or {}
    terminated = [term for pod in pods_of_job(name, pods) if (term := _terminated(pod)) is not None]
    terminated.sort(key=lambda term: str(term.get("finishedAt") or ""))
    complete = _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet")
    failed = _job_condition(job, "Failed")
    if complete is not None or ((status.get("succeeded") or 0) >= 1 and failed is None):
        finished_at = status.get("completionTime") or (complete or {}).get("lastTransitionTime")
        return _succeeded(name, terminated, finished_at, now=now)
    if failed is not None:
        return _failed(failed, terminated)
    return JobOutcome(state="running")


def _succeeded(
    name: str, terminated: Sequence[Mapping[str, Any]], finished_at: str | None, *, now: str
) -> JobOutcome:
    """A complete Job: the result its succeeded pod holds (or why there is none to read)."""
    succeeded_pods = [term for term in terminated if term.get("exitCode") == 0]
    if not succeeded_pods:
        if _seconds_between(finished_at, now) <= RESULT_GRACE_SECONDS:
            return JobOutcome(state="succeeded", awaiting_result=True, finished_at=finished_at)
        return JobOutcome(
            state="failed",
            reason="ResultLost",
            message=f"Job {name} completed but its pod (and the result it held) is gone",
            finished_at=finished_at,
        )
    message = str(succeeded_pods[-1].get("message") or "")
    try:
        result = parse_result(message)
    except ResultError as exc:
        return JobOutcome(state="failed", reason="ResultUnreadable", message=str(exc), exit_code=0)
    return JobOutcome(state="succeeded", result=result, exit_code=0, finished_at=finished_at)


def _failed(failed: Mapping[str, Any], terminated: Sequence[Mapping[str, Any]]) -> JobOutcome:
    """A failed Job: the Job's reason, and what its last pod said (stage, message, exit code)."""
    reason = str(failed.get("reason") or "Failed")
    job_message = str(failed.get("message") or "")
    finished_at = failed.get("lastTransitionTime")
    if not terminated:
        return JobOutcome(state="failed", reason=reason, message=job_message, finished_at=finished_at)
    term = terminated[-1]
    stage, detail = _failure_details(str(term.get("message") or ""))
    exit_code = term.get("exitCode")
    return JobOutcome(
        state="failed",
        reason=reason,
        stage=stage,
        message=_with_container_reason(detail or job_message, term),
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        finished_at=finished_at,
    )


def _with_container_reason(text: str, term: Mapping[str, Any]) -> str:
    """``text`` with what the container's own state says and no message can: OOMKilled,
    ContainerCannotRun..., and the exit code."""
    why = (
        [f"container {term['reason']}"] if term.get("reason") not in (None, "", "Error", "Completed") else []
    )
    if term.get("reason") == "OOMKilled":
        why.append("it needs more memory than its limit")
    if term.get("exitCode") is not None:
        why.append(f"exit code {term['exitCode']}")
    if not why:
        return text
    return f"{text} ({', '.join(why)})" if text else ", ".join(why)


def result_record(outcome: JobOutcome, pipeline_key: str, job_name: str, *, now: str) -> ResultRecord:
    """A finished Job's outcome as the status keeps it (``status.variants[].result``)."""
    finished_at = outcome.finished_at or now
    if outcome.state == "succeeded" and outcome.result is not None:
        return _succeeded_record(outcome.result, pipeline_key, job_name, finished_at=finished_at)
    return ResultRecord(
        pipeline_key=pipeline_key,
        job=job_name,
        succeeded=False,
        finished_at=finished_at,
        error=JobError(
            reason=outcome.reason or "Failed",
            message=outcome.message,
            stage=outcome.stage,
            exit_code=outcome.exit_code,
        ),
    )


def _succeeded_record(
    result: PipelineResult, pipeline_key: str, job_name: str, *, finished_at: str
) -> ResultRecord:
    bf16 = result.bf16
    return ResultRecord(
        pipeline_key=pipeline_key,
        job=job_name,
        succeeded=True,
        finished_at=finished_at,
        artifact=result.artifact,
        fp32_artifact=result.fp32_artifact,
        fp32_accuracy=result.fp32_accuracy,
        int8_accuracy=result.int8_accuracy,
        accuracy_drop=result.drop,
        fp32_fps=result.fp32_fps,
        int8_fps=result.int8_fps,
        int8_batch=result.int8_batch,
        int8_batch_fps=result.int8_batch_fps,
        int8_batch_latency_ms=result.int8_batch_latency_ms,
        accuracy_control=result.accuracy_control,
        gate=GateRecord(result.gate_passed, result.gate_reason, result.gate_message),
        versions=dict(result.versions),
        seconds=result.seconds,
        runtime_isa=result.runtime_isa or None,
        inference_precision=dict(result.inference_precision),
        speedup={key: value for key, value in result.speedup.items() if key in SPEEDUPS},
        bf16=Bf16Record(
            artifact=bf16.artifact,
            accuracy=bf16.accuracy,
            fps=bf16.fps,
            gate_passed=bf16.gate_passed,
            gate_reason=bf16.gate_reason,
            gate_drop=bf16.drop,
        )
        if bf16 is not None
        else None,
    )


def _seconds_between(earlier: object, later: str) -> float:
    try:
        start = datetime.fromisoformat(str(earlier).replace("Z", "+00:00"))
        end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (end - start).total_seconds()
