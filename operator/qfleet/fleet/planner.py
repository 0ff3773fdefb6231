"""The planner: from a QuantizedModel and what the cluster holds, what should exist and be said.

``plan(model, observed, config, now=...)`` is pure. It reads the resource (spec, metadata and
its own last status, which is the operator's memory of results and of what each tier serves),
the Jobs, their pods, the Deployments and the node inventory, and returns the Jobs to create
and delete, the Deployments to create, scale or update, the new status and the events. The
kopf handlers in ``qfleet.operator`` only gather the inputs and apply the plan.

Per target tier the story is: no node of the tier -> wait (``NodesAvailable=False``); no result
for the current pipeline key -> run a Job; Job finished -> record its result; a passed gate
makes the new INT8 model the served one, a failed gate keeps what was served (or serves the
FP32 model with ``onGateFailure: fp32``, or the BF16 model with ``onGateFailure: bf16`` when the
result has one that passed the same gate, else it keeps and says why); replicas follow the
camera demand, planned with the FPS of the precision served.

``onGateFailure: bf16`` with a target tier that has no native bf16 never gets here: the spec is
invalid as a whole (see :func:`qfleet.fleet.spec.parse_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qfleet.fleet import conditions as c
from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import (
    Owner,
    deployment_for,
    job_for,
    model_selector,
    pipeline_inputs,
    template_hash,
)
from qfleet.fleet.nodes import Inventory
from qfleet.fleet.replicas import Demand
from qfleet.fleet.results import JobOutcome, job_outcome
from qfleet.fleet.scaling import FleetPlan, Pool, plan_fleet
from qfleet.fleet.spec import ModelSpec, SpecError, parse_spec
from qfleet.fleet.uris import UriError, parse_pvc_uri

# Per-tier states reported in status.variants[].state.
STATE_WAITING_FOR_NODES = "WaitingForNodes"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_GATE_FAILED = "GateFailed"
STATE_FAILED = "Failed"


@dataclass(frozen=True)
class Observed:
    """What the cluster holds for one model (the operator's caches; may lag a little)."""

    jobs: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()
    deployments: Sequence[Mapping[str, Any]] = ()
    inventory: Inventory = field(default_factory=Inventory)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentChange:
    name: str
    #: create: send ``body``; scale: patch ``spec.replicas`` only; update: patch metadata and spec.
    action: Literal["create", "scale", "update"]
    body: dict[str, Any]
    replicas: int


@dataclass
class Plan:
    status: dict[str, Any]
    create_jobs: list[dict[str, Any]] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    deployments: list[DeploymentChange] = field(default_factory=list)
    delete_deployments: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Set when the spec cannot be acted on (the handler turns it into a PermanentError).
    invalid_spec: str | None = None
    pipeline_key: str | None = None
    #: Per tier: the finished Jobs whose results this plan records for the first time.
    new_results: dict[str, dict[str, Any]] = field(default_factory=dict)


def owner_of(model: Mapping[str, Any]) -> Owner:
    metadata = model.get("metadata") or {}
    return Owner(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        uid=str(metadata.get("uid", "")),
    )


def current_pipeline_key(model: Mapping[str, Any], spec: ModelSpec, config: FleetConfig) -> str:
    annotations = (model.get("metadata") or {}).get("annotations") or {}
    return names.pipeline_key(pipeline_inputs(spec, config, rerun=annotations.get(names.ANNOTATION_RERUN)))


def plan(model: Mapping[str, Any], observed: Observed, config: FleetConfig, *, now: str) -> Plan:
    """Plan one reconcile of ``model``; see the module docstring."""
    metadata = model.get("metadata") or {}
    generation = metadata.get("generation")
    previous: Mapping[str, Any] = model.get("status") or {}
    try:
        spec = parse_spec(model.get("spec"))
    except SpecError as exc:
        return _invalid(previous, str(exc), generation=generation, now=now)
    return _Planner(model, spec, observed, config, now=now).run()


def _invalid(previous: Mapping[str, Any], message: str, *, generation: int | None, now: str) -> Plan:
    """The spec cannot be acted on: say so, touch no child (what is served keeps serving)."""
    old = previous.get("conditions") or []
    keep = [
        item for item in old if item.get("type") not in (c.TYPE_READY, c.TYPE_DEGRADED, c.TYPE_PROGRESSING)
    ]
    conditions = [
        c.condition(
            old, c.TYPE_READY, c.FALSE, c.REASON_INVALID_SPEC, message, generation=generation, now=now
        ),
        c.condition(
            old, c.TYPE_PROGRESSING, c.FALSE, c.REASON_INVALID_SPEC, message, generation=generation, now=now
        ),
        c.condition(
            old, c.TYPE_DEGRADED, c.TRUE, c.REASON_INVALID_SPEC, message, generation=generation, now=now
        ),
        *keep,
    ]
    status = {**previous, "phase": c.FAILED, "observedGeneration": generation, "conditions": conditions}
    events = []
    previous_ready = c.find(old, c.TYPE_READY)
    if previous_ready is None or previous_ready.get("message") != message:
        events.append(Event("Warning", c.EVENT_INVALID_SPEC, message))
    return Plan(status=status, events=events, invalid_spec=message)


class _Planner:
    def __init__(
        self,
        model: Mapping[str, Any],
        spec: ModelSpec,
        observed: Observed,
        config: FleetConfig,
        *,
        now: str,
    ) -> None:
        self.model = model
        self.spec = spec
        self.observed = observed
        self.config = config
        self.now = now
        self.owner = owner_of(model)
        self.generation = (model.get("metadata") or {}).get("generation")
        self.previous: Mapping[str, Any] = model.get("status") or {}
        self.old_conditions: Sequence[Mapping[str, Any]] = self.previous.get("conditions") or []
        self.old_variants = {
            str(item.get("isa")): item
            for item in self.previous.get("variants") or []
            if isinstance(item, Mapping)
        }
        self.key = current_pipeline_key(model, spec, config)
        self.jobs = {str((job.get("metadata") or {}).get("name")): job for job in observed.jobs}
        self.deployments = {str((dep.get("metadata") or {}).get("name")): dep for dep in observed.deployments}
        self.result = Plan(status={}, pipeline_key=self.key)
        #: Target tiers with no schedulable node now (whatever they already serve or run).
        self.tiers_without_nodes: set[str] = set()

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> Plan:
        variants = [self._variant(target.isa) for target in self.spec.targets]
        self._delete_obsolete_jobs()
        fleet = self._scale(variants)
        self._deployments(variants, fleet)
        self.result.status = self._status(variants, fleet)
        self._transition_events(variants, fleet)
        return self.result

    def _variant(self, tier: str) -> dict[str, Any]:
        """Drive one tier's pipeline and decide what it serves."""
        old = self.old_variants.get(tier, {})
        result: dict[str, Any] | None = (
            dict(old["result"]) if isinstance(old.get("result"), Mapping) else None
        )
        served = _model_record(old.get("served"))
        last_good = _model_record(old.get("lastGood"))
        job_name = names.job_name(self.owner.name, tier, self.key)
        variant: dict[str, Any] = {"isa": tier, "pipelineKey": self.key, "job": job_name}
        nodes = self.observed.inventory.matching(tier, self.spec.target(tier).node_selector)
        if not nodes:
            self.tiers_without_nodes.add(tier)

        recorded = result is not None and result.get("pipelineKey") == self.key
        if not recorded:
            job = self.jobs.get(job_name)
            if job is not None:
                outcome = job_outcome(job, self.observed.pods, now=self.now)
                if outcome.state != "running" and not outcome.awaiting_result:
                    result = _result_record(outcome, self.key, job_name, now=self.now)
                    recorded = True
                    self.result.new_results[tier] = result
            elif nodes:
                self.result.create_jobs.append(job_for(self.owner, self.spec, tier, self.key, self.config))

        if recorded and result is not None:
            served, last_good = self._choose_served(result, served, last_good)
            variant["state"], variant["reason"], variant["message"] = _state_of(result)
            if variant["state"] == STATE_GATE_FAILED:
                variant["message"] = (
                    f"{variant['message']}; {_gate_failure_action(result, self.spec.on_gate_failure)}"
                )
        elif not nodes and self.jobs.get(job_name) is None:
            variant["state"] = STATE_WAITING_FOR_NODES
            variant["reason"] = c.REASON_NODES_MISSING
            variant["message"] = f"no schedulable node of ISA tier {tier}{_selector_text(self.spec, tier)}"
        else:
            variant["state"] = STATE_RUNNING
            variant["reason"] = c.REASON_QUANTIZING
            variant["message"] = f"quantization Job {job_name} is running"
        if result is not None:
            variant["result"] = result
        if served is not None:
            variant["served"] = _keep_since(served, _model_record(old.get("served")))
        if last_good is not None:
            variant["lastGood"] = _keep_since(last_good, _model_record(old.get("lastGood")))
        return variant

    def _choose_served(
        self,
        result: Mapping[str, Any],
        served: dict[str, Any] | None,
        last_good: dict[str, Any] | None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """What a tier serves once the current key has a result (see the module docstring)."""
        if not result.get("succeeded"):
            return served, last_good  # a failed Job changes nothing that is served
        gate = result.get("gate") or {}
        if gate.get("passed"):
            int8 = self._record(result, "int8")
            return int8, int8
        if self.spec.on_gate_failure == "fp32":
            return self._record(result, "fp32"), last_good
        if self.spec.on_gate_failure == "bf16" and _bf16_usable(result):
            return self._record(result, "bf16"), last_good
        # bf16 without a usable BF16 model (an older Job, or the BF16 gate failed too): as keep.
        # keep: the last model that passed; never an FP32 model of the key that just failed.
        if last_good is not None:
            return last_good, last_good
        if served is not None and served.get("pipelineKey") != self.key:
            return served, last_good
        return None, last_good

    def _record(self, result: Mapping[str, Any], precision: str) -> dict[str, Any]:
        return {
            "pipelineKey": result["pipelineKey"],
            "precision": precision,
            "artifact": result["artifact"] if precision == "int8" else result[f"{precision}Artifact"],
            "fpsPerReplica": result[f"{precision}Fps"],
            "accuracy": result[f"{precision}Accuracy"],
            "since": self.now,
        }

    def _delete_obsolete_jobs(self) -> None:
        wanted = {names.job_name(self.owner.name, target.isa, self.key) for target in self.spec.targets}
        for name in sorted(self.jobs):
            if name not in wanted:
                self.result.delete_jobs.append(name)

    def _scale(self, variants: Sequence[Mapping[str, Any]]) -> FleetPlan:
        pools = [
            Pool(
                isa=variant["isa"],
                fps_per_replica=float(variant["served"]["fpsPerReplica"]),
                allocatable_cpu=self.observed.inventory.allocatable_cpu(
                    variant["isa"], self.spec.target(variant["isa"]).node_selector
                ),
            )
            for variant in variants
            if "served" in variant and float(variant["served"].get("fpsPerReplica") or 0) > 0
        ]
        demand = Demand(self.spec.cameras, self.spec.camera_fps, self.spec.faces_per_frame)
        return plan_fleet(
            demand.faces_per_second,
            pools,
            utilization=self.spec.target_utilization,
            min_replicas=self.spec.min_replicas,
            max_replicas=self.spec.max_replicas,
            placement=self.spec.placement,
        )

    def _deployments(self, variants: list[dict[str, Any]], fleet: FleetPlan) -> None:
        target_names = {names.deployment_name(self.owner.name, target.isa) for target in self.spec.targets}
        for name in sorted(self.deployments):
            if name not in target_names:
                self.result.delete_deployments.append(name)
        for variant in variants:
            served = variant.get("served")
            if served is None:
                continue
            tier = variant["isa"]
            try:
                artifact = parse_pvc_uri(served["artifact"], field=f"status.variants[{tier}].served.artifact")
            except UriError:
                continue
            replicas = fleet.replicas.get(tier, self.spec.min_replicas)
            desired = deployment_for(
                self.owner,
                self.spec,
                tier,
                artifact=artifact,
                pipeline_key=str(served.get("pipelineKey", "")),
                replicas=replicas,
                config=self.config,
            )
            name = desired["metadata"]["name"]
            variant["deployment"] = name
            variant["replicas"] = replicas
            current = self.deployments.get(name)
            if current is None:
                self.result.deployments.append(DeploymentChange(name, "create", desired, replicas))
                variant["readyReplicas"] = 0
                variant["rolledOut"] = replicas == 0
                continue
            if template_hash(current) != template_hash(desired):
                self.result.deployments.append(DeploymentChange(name, "update", desired, replicas))
                variant["rolledOut"] = False
            elif (current.get("spec") or {}).get("replicas") != replicas:
                self.result.deployments.append(DeploymentChange(name, "scale", desired, replicas))
                variant["rolledOut"] = _rolled_out(current, replicas)
            else:
                variant["rolledOut"] = _rolled_out(current, replicas)
            variant["readyReplicas"] = int((current.get("status") or {}).get("readyReplicas") or 0)

    # -- status ------------------------------------------------------------------------------

    def _status(self, variants: list[dict[str, Any]], fleet: FleetPlan) -> dict[str, Any]:
        spec = self.spec
        states = [variant["state"] for variant in variants]
        serving = [variant for variant in variants if "served" in variant]
        running = STATE_RUNNING in states
        rolling = [variant["isa"] for variant in serving if not variant.get("rolledOut", False)]
        # Waiting for a first node, or lost every node of the tier after the fact (the Deployment
        # stays: its pods wait to be scheduled, e.g. until the autoscaler brings nodes back).
        missing_nodes = [variant["isa"] for variant in variants if variant["isa"] in self.tiers_without_nodes]
        failed = [variant for variant in variants if variant["state"] == STATE_FAILED]
        gate_failed = [variant for variant in variants if variant["state"] == STATE_GATE_FAILED]
        fallback = [
            v["isa"]
            for v in serving
            if v["served"].get("pipelineKey") != self.key or v["served"]["precision"] != "int8"
        ]
        short = bool(serving) and fleet.shortfall_fps > 0

        problems: list[str] = []
        for variant in failed + gate_failed:
            problems.append(f"{variant['isa']}: {variant.get('message', '')}")
        if missing_nodes:
            problems.append(f"no nodes of {', '.join(missing_nodes)}")
        if short:
            problems.append(f"capacity short by {fleet.shortfall_fps:.1f} faces/s")
        if fallback and not problems:
            problems.append(f"not serving the current INT8 model on {', '.join(fallback)}")

        if running:
            phase = c.QUANTIZING
        elif serving:
            if problems or fallback or len(serving) < len(variants):
                phase = c.DEGRADED
            elif rolling:
                phase = c.PENDING
            else:
                phase = c.READY
        elif gate_failed:
            phase = c.BLOCKED
        elif failed and len(failed) == len(variants):
            phase = c.FAILED
        elif failed:
            phase = c.DEGRADED
        else:
            phase = c.PENDING

        cond = self._cond
        conditions = [
            self._ready_condition(phase, variants, serving, rolling),
            cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_QUANTIZING, _running_message(variants))
            if running
            else cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_ROLLING_OUT, f"rolling out {', '.join(rolling)}")
            if rolling
            else cond(c.TYPE_PROGRESSING, c.FALSE, c.REASON_IDLE, "nothing to do"),
            cond(
                c.TYPE_DEGRADED,
                c.TRUE,
                _degraded_reason(failed, gate_failed, missing_nodes, short),
                "; ".join(problems),
            )
            if problems
            else cond(c.TYPE_DEGRADED, c.FALSE, c.REASON_AS_EXPECTED, "no failures"),
            self._gate_condition(variants),
            cond(
                c.TYPE_NODES_AVAILABLE,
                c.FALSE,
                c.REASON_NODES_MISSING,
                "; ".join(self._nodes_message(v) for v in variants if v["isa"] in self.tiers_without_nodes),
            )
            if missing_nodes
            else cond(c.TYPE_NODES_AVAILABLE, c.TRUE, c.REASON_NODES_FOUND, "every target tier has nodes"),
            self._capacity_condition(fleet, serving),
        ]
        for variant in variants:
            variant.pop("rolledOut", None)
        return {
            "phase": phase,
            "observedGeneration": self.generation,
            "pipelineKey": self.key,
            "selector": names.selector_string(model_selector(self.owner)),
            "conditions": conditions,
            "demand": {"cameras": spec.cameras, "facesPerSecond": round(fleet.demand_fps, 3)},
            "capacity": {
                "replicas": fleet.total_replicas,
                "facesPerSecond": round(fleet.capacity_fps, 3),
                "shortfallFacesPerSecond": round(fleet.shortfall_fps, 3),
            },
            "summary": _summary(variants),
            "variants": variants,
        }

    def _nodes_message(self, variant: Mapping[str, Any]) -> str:
        if variant["state"] == STATE_WAITING_FOR_NODES:
            return str(variant["message"])
        tier = variant["isa"]
        waiting = "its serving pods" if "served" in variant else "its quantization Job"
        return (
            f"no schedulable node of ISA tier {tier}{_selector_text(self.spec, tier)}: {waiting} cannot run"
        )

    def _cond(self, type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return c.condition(
            self.old_conditions, type_, status, reason, message, generation=self.generation, now=self.now
        )

    def _ready_condition(
        self,
        phase: str,
        variants: Sequence[Mapping[str, Any]],
        serving: Sequence[Mapping[str, Any]],
        rolling: Sequence[str],
    ) -> dict[str, Any]:
        if phase == c.READY:
            return self._cond(
                c.TYPE_READY, c.TRUE, c.REASON_ALL_SERVING, f"{len(serving)} target(s) serving INT8 models"
            )
        if not serving:
            return self._cond(c.TYPE_READY, c.FALSE, c.REASON_NOTHING_SERVED, "no model is served yet")
        if rolling and phase == c.PENDING:
            return self._cond(
                c.TYPE_READY, c.FALSE, c.REASON_ROLLING_OUT, f"replicas of {', '.join(rolling)} not ready"
            )
        waiting = [v["isa"] for v in variants if v["state"] != STATE_SUCCEEDED or "served" not in v]
        return self._cond(
            c.TYPE_READY,
            c.FALSE,
            c.REASON_TARGET_INCOMPLETE,
            f"serving {len(serving)} of {len(variants)} target(s); not current: {', '.join(waiting) or 'none'}",
        )

    def _gate_condition(self, variants: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        current = [v for v in variants if (v.get("result") or {}).get("pipelineKey") == self.key]
        decided = [v for v in current if (v.get("result") or {}).get("succeeded")]
        failed = [v for v in decided if not v["result"]["gate"].get("passed")]
        if failed:
            first = failed[0]["result"]["gate"]
            message = "; ".join(f"{v['isa']}: {v['result']['gate'].get('message', '')}" for v in failed)
            return self._cond(
                c.TYPE_ACCURACY_GATE, c.FALSE, str(first.get("reason") or "GateFailed"), message
            )
        if decided and len(decided) == len(variants):
            drops = ", ".join(f"{v['isa']} {100 * v['result']['accuracyDrop']:.3f}" for v in decided)
            return self._cond(
                c.TYPE_ACCURACY_GATE, c.TRUE, c.REASON_GATE_PASSED, f"accuracy drop in points: {drops}"
            )
        return self._cond(
            c.TYPE_ACCURACY_GATE, c.UNKNOWN, c.REASON_GATE_PENDING, "waiting for validation results"
        )

    def _capacity_condition(self, fleet: FleetPlan, serving: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not serving:
            return self._cond(
                c.TYPE_CAPACITY_INSUFFICIENT, c.UNKNOWN, c.REASON_NO_CAPACITY, "no model is served yet"
            )
        if fleet.shortfall_fps > 0:
            return self._cond(
                c.TYPE_CAPACITY_INSUFFICIENT,
                c.TRUE,
                c.REASON_MAX_REPLICAS,
                f"demand {fleet.demand_fps:.1f} faces/s exceeds capacity {fleet.capacity_fps:.1f} faces/s "
                f"at maxReplicas {self.spec.max_replicas} per tier: short by {fleet.shortfall_fps:.1f} faces/s",
            )
        return self._cond(
            c.TYPE_CAPACITY_INSUFFICIENT,
            c.FALSE,
            c.REASON_DEMAND_COVERED,
            f"{fleet.total_replicas} replica(s) carry {fleet.capacity_fps:.1f} faces/s "
            f"for a demand of {fleet.demand_fps:.1f} faces/s",
        )

    # -- events ------------------------------------------------------------------------------

    def _transition_events(self, variants: Sequence[Mapping[str, Any]], fleet: FleetPlan) -> None:
        events = self.result.events
        for tier, result in self.result.new_results.items():
            events.append(_result_event(tier, result, self.spec.on_gate_failure))
        for variant in variants:
            tier = variant["isa"]
            old = self.old_variants.get(tier, {})
            served = variant.get("served") or {}
            old_served = old.get("served") or {}
            if served and served.get("artifact") != old_served.get("artifact"):
                events.append(
                    Event(
                        "Normal",
                        c.EVENT_ROLLED_OUT,
                        f"{tier}: serving the {served['precision'].upper()} model {served['artifact']} "
                        f"({served['fpsPerReplica']:.1f} faces/s per replica)",
                    )
                )
            if "replicas" in variant and variant["replicas"] != old.get("replicas"):
                events.append(
                    Event(
                        "Normal",
                        c.EVENT_SCALED,
                        f"{tier}: {old.get('replicas', 0)} -> {variant['replicas']} replica(s) for "
                        f"{fleet.demand_fps:.1f} faces/s from {self.spec.cameras} camera(s)",
                    )
                )
        status = self.result.status
        for type_, event_type, reason in (
            (c.TYPE_NODES_AVAILABLE, c.FALSE, c.EVENT_NODES_MISSING),
            (c.TYPE_CAPACITY_INSUFFICIENT, c.TRUE, c.EVENT_CAPACITY),
        ):
            new = c.find(status["conditions"], type_)
            old_cond = c.find(self.old_conditions, type_)
            if (
                new is not None
                and new["status"] == event_type
                and (old_cond is None or old_cond.get("status") != event_type)
            ):
                events.append(Event("Warning", reason, str(new["message"])))
        if status["phase"] != self.previous.get("phase"):
            kind: Literal["Normal", "Warning"] = (
                "Warning" if status["phase"] in (c.DEGRADED, c.BLOCKED, c.FAILED) else "Normal"
            )
            events.append(
                Event(kind, c.EVENT_PHASE, f"{self.previous.get('phase') or 'New'} -> {status['phase']}")
            )


def _model_record(value: object) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) and value.get("artifact") else None


def _keep_since(record: dict[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep the earlier ``since`` when the model did not change (so the status stays stable)."""
    if (
        old is not None
        and old.get("artifact") == record.get("artifact")
        and old.get("precision") == record.get("precision")
    ):
        return {**record, "since": old.get("since", record.get("since"))}
    return record


def _result_record(outcome: JobOutcome, key: str, job_name: str, *, now: str) -> dict[str, Any]:
    """A finished Job's outcome as it is kept in ``status.variants[].result``."""
    finished_at = outcome.finished_at or now
    if outcome.state == "succeeded" and outcome.result is not None:
        result = outcome.result
        record: dict[str, Any] = {
            "pipelineKey": key,
            "job": job_name,
            "succeeded": True,
            "artifact": result.artifact,
            "fp32Artifact": result.fp32_artifact,
            "fp32Accuracy": result.fp32_accuracy,
            "int8Accuracy": result.int8_accuracy,
            "accuracyDrop": result.drop,
            "fp32Fps": result.fp32_fps,
            "int8Fps": result.int8_fps,
            "gate": {
                "passed": result.gate_passed,
                "reason": result.gate_reason,
                "message": result.gate_message,
            },
            "versions": dict(result.versions),
            "seconds": result.seconds,
            "finishedAt": finished_at,
        }
        if result.runtime_isa:
            record["runtimeIsa"] = result.runtime_isa
        if result.inference_precision:
            record["inferencePrecision"] = dict(result.inference_precision)
        speedup = {
            _camel(key): value
            for key, value in result.speedup.items()
            if key in ("int8_vs_fp32", "int8_vs_bf16")
        }
        if speedup:
            record["speedup"] = speedup
        if result.bf16 is not None:
            record.update(
                bf16Artifact=result.bf16.artifact,
                bf16Accuracy=result.bf16.accuracy,
                bf16Fps=result.bf16.fps,
                bf16Gate={
                    "passed": result.bf16.gate_passed,
                    "reason": result.bf16.gate_reason,
                    "drop": result.bf16.drop,
                },
            )
        return record
    error: dict[str, Any] = {"reason": outcome.reason or "Failed", "message": outcome.message}
    if outcome.stage:
        error["stage"] = outcome.stage
    if outcome.exit_code is not None:
        error["exitCode"] = outcome.exit_code
    return {
        "pipelineKey": key,
        "job": job_name,
        "succeeded": False,
        "error": error,
        "finishedAt": finished_at,
    }


def _camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(part.capitalize() for part in rest)


def _bf16_usable(result: Mapping[str, Any]) -> bool:
    """Whether ``result`` holds a BF16 model that passed the same gate as INT8 would have."""
    return bool(result.get("bf16Artifact")) and bool((result.get("bf16Gate") or {}).get("passed"))


def _gate_failure_action(result: Mapping[str, Any], policy: str) -> str:
    """What a failed INT8 gate leads to under ``policy``, in words for messages and events."""
    keeping = "keeping the last model that passed"
    if policy == "fp32":
        return "serving the FP32 model instead"
    if policy != "bf16":
        return keeping
    if _bf16_usable(result):
        drop = float((result.get("bf16Gate") or {}).get("drop") or 0.0)
        return (
            f"serving the BF16 model instead (accuracy {100 * float(result['bf16Accuracy']):.2f}%, "
            f"drop {100 * drop:.3f} points, {float(result['bf16Fps']):.1f} faces/s per replica)"
        )
    if not result.get("bf16Artifact"):
        return (
            f"onGateFailure is bf16 but the result has no BF16 model (a Job of an older qfleet, or "
            f"its node computed no bf16): {keeping}"
        )
    reason = (result.get("bf16Gate") or {}).get("reason") or c.REASON_GATE_FAILED
    return f"onGateFailure is bf16 but the BF16 model failed the gate too ({reason}): {keeping}"


def _state_of(result: Mapping[str, Any]) -> tuple[str, str, str]:
    if not result.get("succeeded"):
        error = result.get("error") or {}
        stage = f" in stage {error['stage']}" if error.get("stage") else ""
        return (
            STATE_FAILED,
            c.REASON_JOB_FAILED,
            f"Job {result.get('job')} failed ({error.get('reason', 'Failed')}){stage}: {error.get('message', '')}",
        )
    gate = result.get("gate") or {}
    if not gate.get("passed"):
        return (
            STATE_GATE_FAILED,
            str(gate.get("reason") or c.REASON_GATE_FAILED),
            str(gate.get("message") or ""),
        )
    return STATE_SUCCEEDED, c.REASON_GATE_PASSED, _result_text(result)


def _result_text(result: Mapping[str, Any]) -> str:
    return (
        f"INT8 accuracy {100 * result['int8Accuracy']:.2f}% (FP32 {100 * result['fp32Accuracy']:.2f}%, "
        f"drop {100 * result['accuracyDrop']:.3f} points), {result['int8Fps']:.1f} faces/s per replica "
        f"(FP32 {result['fp32Fps']:.1f})"
    )


def _result_event(tier: str, result: Mapping[str, Any], policy: str) -> Event:
    state, _, message = _state_of(result)
    if state == STATE_SUCCEEDED:
        return Event("Normal", c.EVENT_JOB_SUCCEEDED, f"{tier}: {message}")
    if state == STATE_GATE_FAILED:
        return Event(
            "Warning", c.EVENT_GATE_FAILED, f"{tier}: {message}; {_gate_failure_action(result, policy)}"
        )
    return Event("Warning", c.EVENT_JOB_FAILED, f"{tier}: {message}")


def _rolled_out(deployment: Mapping[str, Any], replicas: int) -> bool:
    """Whether the Deployment runs ``replicas`` ready pods of its current template."""
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False
    if replicas == 0:
        return True
    updated = status.get("updatedReplicas")
    ready = int(status.get("readyReplicas") or 0)
    return ready >= replicas and (updated is None or int(updated) >= replicas)


def _running_message(variants: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{v['isa']}: Job {v['job']}" for v in variants if v["state"] == STATE_RUNNING)


def _degraded_reason(
    failed: Sequence[Mapping[str, Any]],
    gate_failed: Sequence[Mapping[str, Any]],
    missing_nodes: Sequence[str],
    short: bool,
) -> str:
    if failed:
        return c.REASON_JOB_FAILED
    if gate_failed:
        return c.REASON_GATE_FAILED
    if missing_nodes:
        return c.REASON_NODES_MISSING
    return c.REASON_MAX_REPLICAS if short else c.REASON_AS_EXPECTED


def _selector_text(spec: ModelSpec, tier: str) -> str:
    selector = spec.target(tier).node_selector
    if not selector:
        return ""
    return " with labels " + ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def _summary(variants: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    fps = []
    drops = []
    for variant in variants:
        served = variant.get("served")
        fps.append(f"{served['fpsPerReplica']:.0f}" if served else "-")
        result = variant.get("result") or {}
        drops.append(f"{100 * result['accuracyDrop']:.2f}" if result.get("succeeded") else "-")
    return {"fps": "/".join(fps), "drop": "/".join(drops)}
