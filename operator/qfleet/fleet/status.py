"""A QuantizedModel's status as types, and their one conversion to and from the CRD's camelCase.

The status is what users read and the operator's memory (results, what each tier serves), so
the planner reads the last one and writes the next. Here it is typed; this module alone knows
the CRD's field names (``crds/qfleet.dev_quantizedmodels.yaml``; a unit test validates what
:func:`status_to_dict` writes against that schema and reads it back).

Reading is lenient: a status written by an older operator (no BF16 fields) or edited by hand
still reads, and what is missing or of the wrong type takes a neutral value instead of raising.
Writing leaves out what is unknown (``None``, empty): the API server would prune a null anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Throughput ratios a result keeps (the pipeline's names; camelCase in the status).
SPEEDUPS = ("int8_vs_fp32", "int8_vs_bf16")


@dataclass(frozen=True)
class Condition:
    """A Kubernetes-style condition (see :mod:`qfleet.fleet.conditions` for the vocabulary)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None


@dataclass(frozen=True)
class GateRecord:
    """The INT8 gate's decision as a result keeps it."""

    passed: bool = False
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Bf16Record:
    """The BF16 variant of a result: its artifact, numbers and gate (against FP32, like INT8)."""

    artifact: str
    accuracy: float
    fps: float
    gate_passed: bool
    gate_reason: str
    gate_drop: float


@dataclass(frozen=True)
class JobError:
    """Why a quantization Job failed."""

    reason: str
    message: str
    stage: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class ControlRecord:
    """What accuracy-controlled quantization did: why it stopped, the drop it reached (and plain
    INT8's), its validations, and the operations it returned to float."""

    outcome: str
    met: bool
    drop: float
    fully_quantized_drop: float
    iterations: int
    seconds: float
    reverted_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultRecord:
    """A finished Job's outcome, kept per tier until the pipeline key changes.

    A failed Job has ``succeeded`` false and an ``error``; the numbers are those of a
    succeeded one (the FPS are faces/s per replica, the accuracies LFW's).
    """

    pipeline_key: str
    job: str
    succeeded: bool
    finished_at: str
    artifact: str = ""
    fp32_artifact: str = ""
    fp32_accuracy: float = 0.0
    int8_accuracy: float = 0.0
    accuracy_drop: float = 0.0
    fp32_fps: float = 0.0
    #: At batch 1 (one face per inference).
    int8_fps: float = 0.0
    #: INT8 measured at the serving batch (``spec.serving.batching.maxBatch``) as the servers
    #: compile it; None when the batch is 1 (``int8_fps`` is that) or the Job predates batching.
    int8_batch: int | None = None
    int8_batch_fps: float | None = None
    int8_batch_latency_ms: float | None = None
    gate: GateRecord = GateRecord()
    versions: Mapping[str, str] = field(default_factory=dict)
    seconds: float | None = None
    #: The kernels OpenVINO reported (e.g. "Intel AVX2"); None from older Jobs.
    runtime_isa: str | None = None
    #: Per variant ("fp32", "int8", "bf16"): what it computed in.
    inference_precision: Mapping[str, str] = field(default_factory=dict)
    #: Keyed by :data:`SPEEDUPS`.
    speedup: Mapping[str, float] = field(default_factory=dict)
    bf16: Bf16Record | None = None
    error: JobError | None = None
    #: Present when the Job quantized with accuracy control.
    accuracy_control: ControlRecord | None = None


@dataclass(frozen=True)
class ServedModel:
    """A model a tier serves (or served last with a passed gate: ``lastGood``)."""

    pipeline_key: str
    #: "int8", "fp32" or "bf16".
    precision: str
    artifact: str
    fps_per_replica: float
    accuracy: float
    since: str
    #: The CPU budget per replica the FPS was measured with (the pods run with it, whatever the
    #: spec says now, until a Job has measured the new budget); "" in records of older operators.
    cpu: str = ""
    threads: int | None = None
    #: The batch ``fps_per_replica`` was measured at; the pods serve with ``--max-batch`` of it.
    #: 1 in records of older operators (they measured and served one face per inference).
    batch: int = 1
    #: Which source model (format, URI, epoch) the artifact came from: embeddings of different
    #: source models do not match one enrolled gallery; "" in records of older operators.
    source_key: str = ""


@dataclass(frozen=True)
class RollbackRecord:
    """A model whose rollout failed on a tier: not tried again until the pipeline key changes."""

    pipeline_key: str
    artifact: str
    reason: str
    message: str
    at: str


@dataclass(frozen=True)
class VariantStatus:
    """One target tier: its pipeline, its result, what it serves and with how many replicas."""

    isa: str
    pipeline_key: str = ""
    job: str = ""
    state: str = ""
    reason: str = ""
    message: str = ""
    result: ResultRecord | None = None
    served: ServedModel | None = None
    last_good: ServedModel | None = None
    deployment: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    rolled_back: RollbackRecord | None = None


@dataclass(frozen=True)
class DemandStatus:
    cameras: int
    faces_per_second: float


@dataclass(frozen=True)
class CapacityStatus:
    replicas: int
    faces_per_second: float
    shortfall_faces_per_second: float


@dataclass(frozen=True)
class Summary:
    """The printer columns' text: FPS per replica and accuracy drop per tier, "/"-separated."""

    fps: str
    drop: str


@dataclass(frozen=True)
class ModelStatus:
    phase: str | None = None
    observed_generation: int | None = None
    pipeline_key: str | None = None
    selector: str | None = None
    #: Where cameras send frames: the model's Service (``http://NAME.NAMESPACE.svc:8080``).
    address_url: str | None = None
    conditions: tuple[Condition, ...] = ()
    demand: DemandStatus | None = None
    capacity: CapacityStatus | None = None
    summary: Summary | None = None
    variants: tuple[VariantStatus, ...] = ()


# -- writing ---------------------------------------------------------------------------------------


def status_to_dict(status: ModelStatus) -> dict[str, Any]:
    """``status`` as the CRD's ``status`` object (plain JSON types)."""
    return _without_none(
        {
            "phase": status.phase,
            "observedGeneration": status.observed_generation,
            "pipelineKey": status.pipeline_key,
            "selector": status.selector,
            "address": {"url": status.address_url} if status.address_url else None,
            "conditions": [condition_to_dict(item) for item in status.conditions] or None,
            "demand": _demand_to_dict(status.demand),
            "capacity": _capacity_to_dict(status.capacity),
            "summary": {"fps": status.summary.fps, "drop": status.summary.drop} if status.summary else None,
            "variants": [variant_to_dict(item) for item in status.variants] or None,
        }
    )


def condition_to_dict(condition: Condition) -> dict[str, Any]:
    return _without_none(
        {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": condition.last_transition_time,
            "observedGeneration": condition.observed_generation,
        }
    )


def variant_to_dict(variant: VariantStatus) -> dict[str, Any]:
    return _without_none(
        {
            "isa": variant.isa,
            "pipelineKey": variant.pipeline_key,
            "job": variant.job,
            "state": variant.state,
            "reason": variant.reason,
            "message": variant.message,
            "result": result_to_dict(variant.result) if variant.result is not None else None,
            "served": served_to_dict(variant.served) if variant.served is not None else None,
            "lastGood": served_to_dict(variant.last_good) if variant.last_good is not None else None,
            "deployment": variant.deployment,
            "replicas": variant.replicas,
            "readyReplicas": variant.ready_replicas,
            "rolledBack": _rollback_to_dict(variant.rolled_back),
        }
    )


def served_to_dict(served: ServedModel) -> dict[str, Any]:
    return _without_none(
        {
            "pipelineKey": served.pipeline_key,
            "precision": served.precision,
            "artifact": served.artifact,
            "fpsPerReplica": served.fps_per_replica,
            "accuracy": served.accuracy,
            "since": served.since,
            "cpu": served.cpu or None,
            "threads": served.threads,
            "batch": served.batch,
            "sourceKey": served.source_key or None,
        }
    )


def _rollback_to_dict(record: RollbackRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "pipelineKey": record.pipeline_key,
        "artifact": record.artifact,
        "reason": record.reason,
        "message": record.message,
        "at": record.at,
    }


def result_to_dict(result: ResultRecord) -> dict[str, Any]:
    # ``job`` is left out when unknown: a status read back from an API server that pruned it
    # (the CRD does not declare it) then writes back the same, and no patch follows.
    head: dict[str, Any] = {
        "pipelineKey": result.pipeline_key,
        "job": result.job or None,
        "succeeded": result.succeeded,
    }
    tail = {"finishedAt": result.finished_at}
    if not result.succeeded:
        return _without_none({**head, "error": _error_to_dict(result.error), **tail})
    measured = {
        "artifact": result.artifact,
        "fp32Artifact": result.fp32_artifact,
        "fp32Accuracy": result.fp32_accuracy,
        "int8Accuracy": result.int8_accuracy,
        "accuracyDrop": result.accuracy_drop,
        "fp32Fps": result.fp32_fps,
        "int8Fps": result.int8_fps,
        "int8Batch": result.int8_batch,
        "int8BatchFps": result.int8_batch_fps,
        "int8BatchLatencyMs": result.int8_batch_latency_ms,
        "gate": {"passed": result.gate.passed, "reason": result.gate.reason, "message": result.gate.message},
        "versions": dict(result.versions),
        "seconds": result.seconds,
        "runtimeIsa": result.runtime_isa,
        "inferencePrecision": dict(result.inference_precision) or None,
        "speedup": {_camel(key): value for key, value in result.speedup.items() if key in SPEEDUPS} or None,
    }
    control = result.accuracy_control
    if control is not None:
        measured["accuracyControl"] = {
            "outcome": control.outcome,
            "met": control.met,
            "drop": control.drop,
            "fullyQuantizedDrop": control.fully_quantized_drop,
            "iterations": control.iterations,
            "seconds": control.seconds,
            "revertedLayers": list(control.reverted_layers),
        }
    return _without_none({**head, **measured, **_bf16_to_dict(result.bf16), **tail})


def _bf16_to_dict(bf16: Bf16Record | None) -> dict[str, Any]:
    if bf16 is None:
        return {}
    return {
        "bf16Artifact": bf16.artifact,
        "bf16Accuracy": bf16.accuracy,
        "bf16Fps": bf16.fps,
        "bf16Gate": {"passed": bf16.gate_passed, "reason": bf16.gate_reason, "drop": bf16.gate_drop},
    }


def _error_to_dict(error: JobError | None) -> dict[str, Any]:
    if error is None:
        return {"reason": "Failed", "message": ""}
    found: dict[str, Any] = {"reason": error.reason, "message": error.message}
    if error.stage:
        found["stage"] = error.stage
    if error.exit_code is not None:
        found["exitCode"] = error.exit_code
    return found


def _demand_to_dict(demand: DemandStatus | None) -> dict[str, Any] | None:
    if demand is None:
        return None
    return {"cameras": demand.cameras, "facesPerSecond": demand.faces_per_second}


def _capacity_to_dict(capacity: CapacityStatus | None) -> dict[str, Any] | None:
    if capacity is None:
        return None
    return {
        "replicas": capacity.replicas,
        "facesPerSecond": capacity.faces_per_second,
        "shortfallFacesPerSecond": capacity.shortfall_faces_per_second,
    }


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


def _camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(part.capitalize() for part in rest)


# -- reading ---------------------------------------------------------------------------------------


def parse_status(data: object) -> ModelStatus:
    """The CRD's ``status`` object (or anything else: an empty status) as a :class:`ModelStatus`."""
    status = _mapping(data)
    summary = _mapping(status.get("summary"))
    return ModelStatus(
        phase=_optional_str(status, "phase"),
        observed_generation=_optional_int(status, "observedGeneration"),
        pipeline_key=_optional_str(status, "pipelineKey"),
        selector=_optional_str(status, "selector"),
        address_url=_optional_str(_mapping(status.get("address")), "url"),
        conditions=tuple(
            parse_condition(item) for item in _list(status.get("conditions")) if _mapping(item).get("type")
        ),
        demand=_parse_demand(status.get("demand")),
        capacity=_parse_capacity(status.get("capacity")),
        summary=Summary(_str(summary, "fps"), _str(summary, "drop")) if summary else None,
        variants=tuple(
            parse_variant(item) for item in _list(status.get("variants")) if isinstance(item, Mapping)
        ),
    )


def parse_condition(data: object) -> Condition:
    found = _mapping(data)
    return Condition(
        type=_str(found, "type"),
        status=_str(found, "status"),
        reason=_str(found, "reason"),
        message=_str(found, "message"),
        last_transition_time=_str(found, "lastTransitionTime"),
        observed_generation=_optional_int(found, "observedGeneration"),
    )


def parse_variant(data: object) -> VariantStatus:
    found = _mapping(data)
    return VariantStatus(
        isa=_str(found, "isa"),
        pipeline_key=_str(found, "pipelineKey"),
        job=_str(found, "job"),
        state=_str(found, "state"),
        reason=_str(found, "reason"),
        message=_str(found, "message"),
        result=parse_result_record(found["result"]) if isinstance(found.get("result"), Mapping) else None,
        served=parse_served(found["served"]) if isinstance(found.get("served"), Mapping) else None,
        last_good=parse_served(found["lastGood"]) if isinstance(found.get("lastGood"), Mapping) else None,
        deployment=_optional_str(found, "deployment"),
        replicas=_optional_int(found, "replicas"),
        ready_replicas=_optional_int(found, "readyReplicas"),
        rolled_back=_parse_rollback(found.get("rolledBack")),
    )


def _parse_rollback(data: object) -> RollbackRecord | None:
    if not isinstance(data, Mapping) or not data.get("artifact"):
        return None
    return RollbackRecord(
        pipeline_key=_str(data, "pipelineKey"),
        artifact=_str(data, "artifact"),
        reason=_str(data, "reason"),
        message=_str(data, "message"),
        at=_str(data, "at"),
    )


def parse_served(data: object) -> ServedModel:
    found = _mapping(data)
    return ServedModel(
        pipeline_key=_str(found, "pipelineKey"),
        precision=_str(found, "precision"),
        artifact=_str(found, "artifact"),
        fps_per_replica=_float(found, "fpsPerReplica"),
        accuracy=_float(found, "accuracy"),
        since=_str(found, "since"),
        cpu=_str(found, "cpu"),
        threads=_optional_int(found, "threads"),
        batch=max(1, _optional_int(found, "batch") or 1),
        source_key=_str(found, "sourceKey"),
    )


def parse_result_record(data: object) -> ResultRecord:
    found = _mapping(data)
    gate = _mapping(found.get("gate"))
    speedup = _mapping(found.get("speedup"))
    return ResultRecord(
        pipeline_key=_str(found, "pipelineKey"),
        job=_str(found, "job"),
        succeeded=bool(found.get("succeeded")),
        finished_at=_str(found, "finishedAt"),
        artifact=_str(found, "artifact"),
        fp32_artifact=_str(found, "fp32Artifact"),
        fp32_accuracy=_float(found, "fp32Accuracy"),
        int8_accuracy=_float(found, "int8Accuracy"),
        accuracy_drop=_float(found, "accuracyDrop"),
        fp32_fps=_float(found, "fp32Fps"),
        int8_fps=_float(found, "int8Fps"),
        int8_batch=_optional_int(found, "int8Batch"),
        int8_batch_fps=_optional_float(found, "int8BatchFps"),
        int8_batch_latency_ms=_optional_float(found, "int8BatchLatencyMs"),
        gate=GateRecord(bool(gate.get("passed")), _str(gate, "reason"), _str(gate, "message")),
        versions=_strings(found.get("versions")),
        seconds=_optional_float(found, "seconds"),
        runtime_isa=_optional_str(found, "runtimeIsa"),
        inference_precision=_strings(found.get("inferencePrecision")),
        speedup={
            key: value for key in SPEEDUPS if (value := _optional_float(speedup, _camel(key))) is not None
        },
        bf16=_parse_bf16(found),
        error=_parse_error(found.get("error")),
        accuracy_control=_parse_control(found.get("accuracyControl")),
    )


def _parse_control(data: object) -> ControlRecord | None:
    found = _mapping(data)
    if not found:
        return None
    return ControlRecord(
        outcome=_str(found, "outcome"),
        met=bool(found.get("met")),
        drop=_float(found, "drop"),
        fully_quantized_drop=_float(found, "fullyQuantizedDrop"),
        iterations=_optional_int(found, "iterations") or 0,
        seconds=_float(found, "seconds"),
        reverted_layers=tuple(
            str(name) for name in found.get("revertedLayers") or () if isinstance(name, str)
        ),
    )


def _parse_bf16(result: Mapping[str, Any]) -> Bf16Record | None:
    """The BF16 fields come together, with ``bf16Artifact``; without it there is no BF16 model."""
    if not result.get("bf16Artifact"):
        return None
    gate = _mapping(result.get("bf16Gate"))
    return Bf16Record(
        artifact=_str(result, "bf16Artifact"),
        accuracy=_float(result, "bf16Accuracy"),
        fps=_float(result, "bf16Fps"),
        gate_passed=bool(gate.get("passed")),
        gate_reason=_str(gate, "reason"),
        gate_drop=_float(gate, "drop"),
    )


def _parse_error(data: object) -> JobError | None:
    if not isinstance(data, Mapping):
        return None
    return JobError(
        reason=_str(data, "reason", "Failed"),
        message=_str(data, "message"),
        stage=_str(data, "stage"),
        exit_code=_optional_int(data, "exitCode"),
    )


def _parse_demand(data: object) -> DemandStatus | None:
    if not isinstance(data, Mapping):
        return None
    return DemandStatus(
        cameras=_optional_int(data, "cameras") or 0, faces_per_second=_float(data, "facesPerSecond")
    )


def _parse_capacity(data: object) -> CapacityStatus | None:
    if not isinstance(data, Mapping):
        return None
    return CapacityStatus(
        replicas=_optional_int(data, "replicas") or 0,
        faces_per_second=_float(data, "facesPerSecond"),
        shortfall_faces_per_second=_float(data, "shortfallFacesPerSecond"),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return default if value is None else str(value)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _optional_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _float(data: Mapping[str, Any], key: str) -> float:
    found = _optional_float(data, key)
    return 0.0 if found is None else found


def _strings(value: object) -> dict[str, str]:
    return {str(key): str(item) for key, item in _mapping(value).items() if item is not None}
