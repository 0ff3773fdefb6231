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
from dataclasses import dataclass, field, replace
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
from qfleet.fleet.results import job_outcome, result_record
from qfleet.fleet.scaling import FleetPlan, Pool, plan_fleet
from qfleet.fleet.spec import ModelSpec, SpecError, parse_spec
from qfleet.fleet.status import (
    CapacityStatus,
    Condition,
    DemandStatus,
    ModelStatus,
    ResultRecord,
    ServedModel,
    Summary,
    VariantStatus,
    parse_status,
    status_to_dict,
)
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
    model_status: ModelStatus
    create_jobs: list[dict[str, Any]] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    deployments: list[DeploymentChange] = field(default_factory=list)
    delete_deployments: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Set when the spec cannot be acted on (the handler turns it into a PermanentError).
    invalid_spec: str | None = None
    pipeline_key: str | None = None
    #: Per tier: the finished Jobs whose results this plan records for the first time.
    new_results: dict[str, ResultRecord] = field(default_factory=dict)

    @property
    def status(self) -> dict[str, Any]:
        """The new status as the CRD spells it (what the operator writes)."""
        return status_to_dict(self.model_status)


@dataclass(frozen=True)
class _Overview:
    """What the phase and the conditions are decided from."""

    variants: tuple[VariantStatus, ...]
    serving: tuple[VariantStatus, ...]
    running: bool
    #: Serving tiers whose Deployment does not run its ready replicas of the current template.
    rolling: tuple[str, ...]
    #: Waiting for a first node, or lost every node of the tier after the fact (the Deployment
    #: stays: its pods wait to be scheduled, e.g. until the autoscaler brings nodes back).
    missing_nodes: tuple[str, ...]
    failed: tuple[VariantStatus, ...]
    gate_failed: tuple[VariantStatus, ...]
    #: Serving tiers that serve an older or a non-INT8 model.
    fallback: tuple[str, ...]
    short: bool
    problems: tuple[str, ...]


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
    previous = parse_status(model.get("status"))
    try:
        spec = parse_spec(model.get("spec"))
    except SpecError as exc:
        return _invalid(previous, str(exc), generation=generation, now=now)
    return _Planner(model, spec, observed, config, now=now).run()


def _invalid(previous: ModelStatus, message: str, *, generation: int | None, now: str) -> Plan:
    """The spec cannot be acted on: say so, touch no child (what is served keeps serving)."""
    old = previous.conditions
    keep = [item for item in old if item.type not in (c.TYPE_READY, c.TYPE_DEGRADED, c.TYPE_PROGRESSING)]

    def cond(type_: str, status: str) -> Condition:
        return c.condition(old, type_, status, c.REASON_INVALID_SPEC, message, generation=generation, now=now)

    conditions = (
        cond(c.TYPE_READY, c.FALSE),
        cond(c.TYPE_PROGRESSING, c.FALSE),
        cond(c.TYPE_DEGRADED, c.TRUE),
    )
    status = replace(
        previous, phase=c.FAILED, observed_generation=generation, conditions=(*conditions, *keep)
    )
    events = []
    previous_ready = c.find(old, c.TYPE_READY)
    if previous_ready is None or previous_ready.message != message:
        events.append(Event("Warning", c.EVENT_INVALID_SPEC, message))
    return Plan(model_status=status, events=events, invalid_spec=message)


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
        self.spec = spec
        self.observed = observed
        self.config = config
        self.now = now
        self.owner = owner_of(model)
        self.generation = (model.get("metadata") or {}).get("generation")
        self.previous = parse_status(model.get("status"))
        self.old_variants = {variant.isa: variant for variant in self.previous.variants}
        self.key = current_pipeline_key(model, spec, config)
        self.jobs = {str((job.get("metadata") or {}).get("name")): job for job in observed.jobs}
        self.deployments = {str((dep.get("metadata") or {}).get("name")): dep for dep in observed.deployments}
        self.result = Plan(model_status=ModelStatus(), pipeline_key=self.key)
        #: Target tiers with no schedulable node now (whatever they already serve or run).
        self.tiers_without_nodes: set[str] = set()

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> Plan:
        variants = [self._variant(target.isa) for target in self.spec.targets]
        self._delete_obsolete_jobs()
        fleet = self._scale(variants)
        variants, rolled_out = self._deployments(variants, fleet)
        self.result.model_status = self._status(variants, fleet, rolled_out)
        self._transition_events(self.result.model_status, fleet)
        return self.result

    def _variant(self, tier: str) -> VariantStatus:
        """Drive one tier's pipeline and decide what it serves."""
        old = self.old_variants.get(tier, VariantStatus(isa=tier))
        old_served, old_last_good = _usable(old.served), _usable(old.last_good)
        served, last_good = old_served, old_last_good
        job_name = names.job_name(self.owner.name, tier, self.key)
        nodes = self.observed.inventory.matching(tier, self.spec.target(tier).node_selector)
        if not nodes:
            self.tiers_without_nodes.add(tier)
        result = old.result
        if result is None or result.pipeline_key != self.key:
            result = self._drive_job(tier, job_name, has_nodes=bool(nodes)) or result
        if result is not None and result.pipeline_key == self.key:
            served, last_good = self._choose_served(result, served, last_good)
            state, reason, message = self._recorded_state(result, job_name)
        elif not nodes and job_name not in self.jobs:
            state, reason = STATE_WAITING_FOR_NODES, c.REASON_NODES_MISSING
            message = f"no schedulable node of ISA tier {tier}{_selector_text(self.spec, tier)}"
        else:
            state, reason = STATE_RUNNING, c.REASON_QUANTIZING
            message = f"quantization Job {job_name} is running"
        return VariantStatus(
            isa=tier,
            pipeline_key=self.key,
            job=job_name,
            state=state,
            reason=reason,
            message=message,
            result=result,
            served=_keep_since(served, old_served),
            last_good=_keep_since(last_good, old_last_good),
        )

    def _drive_job(self, tier: str, job_name: str, *, has_nodes: bool) -> ResultRecord | None:
        """Start the tier's Job (where a node can run it), or record its result once it finished."""
        job = self.jobs.get(job_name)
        if job is None:
            if has_nodes:
                self.result.create_jobs.append(job_for(self.owner, self.spec, tier, self.key, self.config))
            return None
        outcome = job_outcome(job, self.observed.pods, now=self.now)
        if outcome.state == "running" or outcome.awaiting_result:
            return None
        record = result_record(outcome, self.key, job_name, now=self.now)
        self.result.new_results[tier] = record
        return record

    def _recorded_state(self, result: ResultRecord, job_name: str) -> tuple[str, str, str]:
        state, reason, message = _state_of(result, job_name)
        if state == STATE_GATE_FAILED:
            message = f"{message}; {_gate_failure_action(result, self.spec.on_gate_failure)}"
        return state, reason, message

    def _choose_served(
        self,
        result: ResultRecord,
        served: ServedModel | None,
        last_good: ServedModel | None,
    ) -> tuple[ServedModel | None, ServedModel | None]:
        """What a tier serves once the current key has a result (see the module docstring)."""
        if not result.succeeded:
            return served, last_good  # a failed Job changes nothing that is served
        if result.gate.passed:
            int8 = self._served_model(result, "int8")
            return int8, int8
        if self.spec.on_gate_failure == "fp32":
            return self._served_model(result, "fp32"), last_good
        if self.spec.on_gate_failure == "bf16" and _bf16_usable(result):
            return self._served_model(result, "bf16"), last_good
        # bf16 without a usable BF16 model (an older Job, or the BF16 gate failed too): as keep.
        # keep: the last model that passed; never an FP32 model of the key that just failed.
        if last_good is not None:
            return last_good, last_good
        if served is not None and served.pipeline_key != self.key:
            return served, last_good
        return None, last_good

    def _served_model(self, result: ResultRecord, precision: str) -> ServedModel:
        if precision == "bf16" and result.bf16 is not None:
            artifact, fps, accuracy = result.bf16.artifact, result.bf16.fps, result.bf16.accuracy
        elif precision == "fp32":
            artifact, fps, accuracy = result.fp32_artifact, result.fp32_fps, result.fp32_accuracy
        else:
            artifact, fps, accuracy = result.artifact, result.int8_fps, result.int8_accuracy
        return ServedModel(
            pipeline_key=result.pipeline_key,
            precision=precision,
            artifact=artifact,
            fps_per_replica=fps,
            accuracy=accuracy,
            since=self.now,
        )

    def _delete_obsolete_jobs(self) -> None:
        wanted = {names.job_name(self.owner.name, target.isa, self.key) for target in self.spec.targets}
        for name in sorted(self.jobs):
            if name not in wanted:
                self.result.delete_jobs.append(name)

    def _scale(self, variants: Sequence[VariantStatus]) -> FleetPlan:
        pools = [
            Pool(
                isa=variant.isa,
                fps_per_replica=variant.served.fps_per_replica,
                allocatable_cpu=self.observed.inventory.allocatable_cpu(
                    variant.isa, self.spec.target(variant.isa).node_selector
                ),
            )
            for variant in variants
            if variant.served is not None and variant.served.fps_per_replica > 0
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

    def _deployments(
        self, variants: Sequence[VariantStatus], fleet: FleetPlan
    ) -> tuple[list[VariantStatus], set[str]]:
        """Deployment changes; the variants with their Deployment, and the tiers rolled out."""
        target_names = {names.deployment_name(self.owner.name, target.isa) for target in self.spec.targets}
        for name in sorted(self.deployments):
            if name not in target_names:
                self.result.delete_deployments.append(name)
        updated: list[VariantStatus] = []
        rolled_out: set[str] = set()
        for variant in variants:
            deployed = self._deployment(variant, fleet)
            if deployed is None:
                updated.append(variant)
                continue
            with_deployment, done = deployed
            updated.append(with_deployment)
            if done:
                rolled_out.add(variant.isa)
        return updated, rolled_out

    def _deployment(self, variant: VariantStatus, fleet: FleetPlan) -> tuple[VariantStatus, bool] | None:
        """The change to the tier's Deployment, the variant that says so, and whether it rolled out."""
        served = variant.served
        if served is None:
            return None
        tier = variant.isa
        try:
            artifact = parse_pvc_uri(served.artifact, field=f"status.variants[{tier}].served.artifact")
        except UriError:
            return None
        replicas = fleet.replicas.get(tier, self.spec.min_replicas)
        desired = deployment_for(
            self.owner,
            self.spec,
            tier,
            artifact=artifact,
            pipeline_key=served.pipeline_key,
            replicas=replicas,
            config=self.config,
        )
        name = str(desired["metadata"]["name"])
        with_deployment = replace(variant, deployment=name, replicas=replicas)
        current = self.deployments.get(name)
        if current is None:
            self.result.deployments.append(DeploymentChange(name, "create", desired, replicas))
            return replace(with_deployment, ready_replicas=0), replicas == 0
        ready = int((current.get("status") or {}).get("readyReplicas") or 0)
        with_deployment = replace(with_deployment, ready_replicas=ready)
        if template_hash(current) != template_hash(desired):
            self.result.deployments.append(DeploymentChange(name, "update", desired, replicas))
            return with_deployment, False
        if (current.get("spec") or {}).get("replicas") != replicas:
            self.result.deployments.append(DeploymentChange(name, "scale", desired, replicas))
        return with_deployment, _rolled_out(current, replicas)

    # -- status ------------------------------------------------------------------------------

    def _status(
        self, variants: Sequence[VariantStatus], fleet: FleetPlan, rolled_out: set[str]
    ) -> ModelStatus:
        overview = self._overview(variants, fleet, rolled_out)
        phase = _phase(overview)
        return ModelStatus(
            phase=phase,
            observed_generation=self.generation,
            pipeline_key=self.key,
            selector=names.selector_string(model_selector(self.owner)),
            conditions=(
                self._ready_condition(phase, overview),
                self._progressing_condition(overview),
                self._degraded_condition(overview),
                self._gate_condition(variants),
                self._nodes_condition(overview),
                self._capacity_condition(fleet, overview.serving),
            ),
            demand=DemandStatus(cameras=self.spec.cameras, faces_per_second=round(fleet.demand_fps, 3)),
            capacity=CapacityStatus(
                replicas=fleet.total_replicas,
                faces_per_second=round(fleet.capacity_fps, 3),
                shortfall_faces_per_second=round(fleet.shortfall_fps, 3),
            ),
            summary=_summary(variants),
            variants=tuple(variants),
        )

    def _overview(
        self, variants: Sequence[VariantStatus], fleet: FleetPlan, rolled_out: set[str]
    ) -> _Overview:
        serving = tuple(variant for variant in variants if variant.served is not None)
        missing_nodes = tuple(variant.isa for variant in variants if variant.isa in self.tiers_without_nodes)
        failed = tuple(variant for variant in variants if variant.state == STATE_FAILED)
        gate_failed = tuple(variant for variant in variants if variant.state == STATE_GATE_FAILED)
        fallback = _fallback(serving, self.key)
        short = bool(serving) and fleet.shortfall_fps > 0
        return _Overview(
            variants=tuple(variants),
            serving=serving,
            running=any(variant.state == STATE_RUNNING for variant in variants),
            rolling=tuple(variant.isa for variant in serving if variant.isa not in rolled_out),
            missing_nodes=missing_nodes,
            failed=failed,
            gate_failed=gate_failed,
            fallback=fallback,
            short=short,
            problems=_problems(
                failed + gate_failed, missing_nodes, fleet.shortfall_fps if short else 0.0, fallback
            ),
        )

    def _cond(self, type_: str, status: str, reason: str, message: str) -> Condition:
        return c.condition(
            self.previous.conditions, type_, status, reason, message, generation=self.generation, now=self.now
        )

    def _ready_condition(self, phase: str, overview: _Overview) -> Condition:
        serving, variants = overview.serving, overview.variants
        if phase == c.READY:
            return self._cond(
                c.TYPE_READY, c.TRUE, c.REASON_ALL_SERVING, f"{len(serving)} target(s) serving INT8 models"
            )
        if not serving:
            return self._cond(c.TYPE_READY, c.FALSE, c.REASON_NOTHING_SERVED, "no model is served yet")
        if overview.rolling and phase == c.PENDING:
            return self._cond(
                c.TYPE_READY,
                c.FALSE,
                c.REASON_ROLLING_OUT,
                f"replicas of {', '.join(overview.rolling)} not ready",
            )
        waiting = [v.isa for v in variants if v.state != STATE_SUCCEEDED or v.served is None]
        return self._cond(
            c.TYPE_READY,
            c.FALSE,
            c.REASON_TARGET_INCOMPLETE,
            f"serving {len(serving)} of {len(variants)} target(s); not current: {', '.join(waiting) or 'none'}",
        )

    def _progressing_condition(self, overview: _Overview) -> Condition:
        if overview.running:
            message = "; ".join(
                f"{v.isa}: Job {v.job}" for v in overview.variants if v.state == STATE_RUNNING
            )
            return self._cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_QUANTIZING, message)
        if overview.rolling:
            return self._cond(
                c.TYPE_PROGRESSING, c.TRUE, c.REASON_ROLLING_OUT, f"rolling out {', '.join(overview.rolling)}"
            )
        return self._cond(c.TYPE_PROGRESSING, c.FALSE, c.REASON_IDLE, "nothing to do")

    def _degraded_condition(self, overview: _Overview) -> Condition:
        if not overview.problems:
            return self._cond(c.TYPE_DEGRADED, c.FALSE, c.REASON_AS_EXPECTED, "no failures")
        return self._cond(c.TYPE_DEGRADED, c.TRUE, _degraded_reason(overview), "; ".join(overview.problems))

    def _gate_condition(self, variants: Sequence[VariantStatus]) -> Condition:
        decided = [
            (variant.isa, variant.result)
            for variant in variants
            if variant.result is not None
            and variant.result.pipeline_key == self.key
            and variant.result.succeeded
        ]
        failed = [(tier, result) for tier, result in decided if not result.gate.passed]
        if failed:
            message = "; ".join(f"{tier}: {result.gate.message}" for tier, result in failed)
            reason = failed[0][1].gate.reason or c.REASON_GATE_FAILED
            return self._cond(c.TYPE_ACCURACY_GATE, c.FALSE, reason, message)
        if decided and len(decided) == len(variants):
            drops = ", ".join(f"{tier} {100 * result.accuracy_drop:.3f}" for tier, result in decided)
            return self._cond(
                c.TYPE_ACCURACY_GATE, c.TRUE, c.REASON_GATE_PASSED, f"accuracy drop in points: {drops}"
            )
        return self._cond(
            c.TYPE_ACCURACY_GATE, c.UNKNOWN, c.REASON_GATE_PENDING, "waiting for validation results"
        )

    def _nodes_condition(self, overview: _Overview) -> Condition:
        if not overview.missing_nodes:
            return self._cond(
                c.TYPE_NODES_AVAILABLE, c.TRUE, c.REASON_NODES_FOUND, "every target tier has nodes"
            )
        message = "; ".join(
            self._nodes_message(variant)
            for variant in overview.variants
            if variant.isa in self.tiers_without_nodes
        )
        return self._cond(c.TYPE_NODES_AVAILABLE, c.FALSE, c.REASON_NODES_MISSING, message)

    def _nodes_message(self, variant: VariantStatus) -> str:
        if variant.state == STATE_WAITING_FOR_NODES:
            return variant.message
        tier = variant.isa
        waiting = "its serving pods" if variant.served is not None else "its quantization Job"
        return (
            f"no schedulable node of ISA tier {tier}{_selector_text(self.spec, tier)}: {waiting} cannot run"
        )

    def _capacity_condition(self, fleet: FleetPlan, serving: Sequence[VariantStatus]) -> Condition:
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

    def _transition_events(self, status: ModelStatus, fleet: FleetPlan) -> None:
        events = self.result.events
        for tier, result in self.result.new_results.items():
            events.append(_result_event(tier, result, self.spec.on_gate_failure))
        for variant in status.variants:
            events.extend(self._variant_events(variant, fleet))
        events.extend(self._condition_events(status))
        if status.phase != self.previous.phase:
            kind: Literal["Normal", "Warning"] = (
                "Warning" if status.phase in (c.DEGRADED, c.BLOCKED, c.FAILED) else "Normal"
            )
            events.append(Event(kind, c.EVENT_PHASE, f"{self.previous.phase or 'New'} -> {status.phase}"))

    def _variant_events(self, variant: VariantStatus, fleet: FleetPlan) -> list[Event]:
        """A new model served (RolledOut), a new replica count (Scaled)."""
        tier = variant.isa
        old = self.old_variants.get(tier, VariantStatus(isa=tier))
        events = []
        served = variant.served
        if served is not None and served.artifact != (old.served.artifact if old.served else None):
            events.append(
                Event(
                    "Normal",
                    c.EVENT_ROLLED_OUT,
                    f"{tier}: serving the {served.precision.upper()} model {served.artifact} "
                    f"({served.fps_per_replica:.1f} faces/s per replica)",
                )
            )
        if variant.replicas is not None and variant.replicas != old.replicas:
            events.append(
                Event(
                    "Normal",
                    c.EVENT_SCALED,
                    f"{tier}: {old.replicas or 0} -> {variant.replicas} replica(s) for "
                    f"{fleet.demand_fps:.1f} faces/s from {self.spec.cameras} camera(s)",
                )
            )
        return events

    def _condition_events(self, status: ModelStatus) -> list[Event]:
        """Warnings when nodes go missing or capacity falls short (once, as the condition turns)."""
        events = []
        for type_, event_type, reason in (
            (c.TYPE_NODES_AVAILABLE, c.FALSE, c.EVENT_NODES_MISSING),
            (c.TYPE_CAPACITY_INSUFFICIENT, c.TRUE, c.EVENT_CAPACITY),
        ):
            new = c.find(status.conditions, type_)
            old = c.find(self.previous.conditions, type_)
            if new is not None and new.status == event_type and (old is None or old.status != event_type):
                events.append(Event("Warning", reason, new.message))
        return events


def _phase(overview: _Overview) -> str:
    if overview.running:
        return c.QUANTIZING
    if overview.serving:
        if overview.problems or overview.fallback or len(overview.serving) < len(overview.variants):
            return c.DEGRADED
        return c.PENDING if overview.rolling else c.READY
    if overview.gate_failed:
        return c.BLOCKED
    if overview.failed:
        return c.FAILED if len(overview.failed) == len(overview.variants) else c.DEGRADED
    return c.PENDING


def _fallback(serving: Sequence[VariantStatus], key: str) -> tuple[str, ...]:
    """Tiers that serve an older model, or one that is not INT8."""
    return tuple(
        variant.isa
        for variant in serving
        if variant.served is not None
        and (variant.served.pipeline_key != key or variant.served.precision != "int8")
    )


def _problems(
    failures: Sequence[VariantStatus],
    missing_nodes: Sequence[str],
    shortfall_fps: float,
    fallback: Sequence[str],
) -> tuple[str, ...]:
    problems = [f"{variant.isa}: {variant.message}" for variant in failures]
    if missing_nodes:
        problems.append(f"no nodes of {', '.join(missing_nodes)}")
    if shortfall_fps > 0:
        problems.append(f"capacity short by {shortfall_fps:.1f} faces/s")
    if fallback and not problems:
        problems.append(f"not serving the current INT8 model on {', '.join(fallback)}")
    return tuple(problems)


def _degraded_reason(overview: _Overview) -> str:
    if overview.failed:
        return c.REASON_JOB_FAILED
    if overview.gate_failed:
        return c.REASON_GATE_FAILED
    if overview.missing_nodes:
        return c.REASON_NODES_MISSING
    return c.REASON_MAX_REPLICAS if overview.short else c.REASON_AS_EXPECTED


def _usable(record: ServedModel | None) -> ServedModel | None:
    """A kept model record, if it names an artifact (else it is no record at all)."""
    return record if record is not None and record.artifact else None


def _keep_since(record: ServedModel | None, old: ServedModel | None) -> ServedModel | None:
    """Keep the earlier ``since`` when the model did not change (so the status stays stable)."""
    if record is None or old is None:
        return record
    if old.artifact == record.artifact and old.precision == record.precision:
        return replace(record, since=old.since or record.since)
    return record


def _bf16_usable(result: ResultRecord) -> bool:
    """Whether ``result`` holds a BF16 model that passed the same gate as INT8 would have."""
    return result.bf16 is not None and bool(result.bf16.artifact) and result.bf16.gate_passed


def _gate_failure_action(result: ResultRecord, policy: str) -> str:
    """What a failed INT8 gate leads to under ``policy``, in words for messages and events."""
    keeping = "keeping the last model that passed"
    if policy == "fp32":
        return "serving the FP32 model instead"
    if policy != "bf16":
        return keeping
    bf16 = result.bf16
    if bf16 is None or not bf16.artifact:
        return (
            f"onGateFailure is bf16 but the result has no BF16 model (a Job of an older qfleet, or "
            f"its node computed no bf16): {keeping}"
        )
    if bf16.gate_passed:
        return (
            f"serving the BF16 model instead (accuracy {100 * bf16.accuracy:.2f}%, "
            f"drop {100 * bf16.gate_drop:.3f} points, {bf16.fps:.1f} faces/s per replica)"
        )
    reason = bf16.gate_reason or c.REASON_GATE_FAILED
    return f"onGateFailure is bf16 but the BF16 model failed the gate too ({reason}): {keeping}"


def _state_of(result: ResultRecord, job_name: str) -> tuple[str, str, str]:
    """The variant's state, reason and message for ``result`` of the Job ``job_name``."""
    if not result.succeeded:
        error = result.error
        reason = error.reason if error is not None else "Failed"
        detail = error.message if error is not None else ""
        stage = f" in stage {error.stage}" if error is not None and error.stage else ""
        return (
            STATE_FAILED,
            c.REASON_JOB_FAILED,
            f"Job {result.job or job_name} failed ({reason}){stage}: {detail}",
        )
    if not result.gate.passed:
        return STATE_GATE_FAILED, result.gate.reason or c.REASON_GATE_FAILED, result.gate.message
    return STATE_SUCCEEDED, c.REASON_GATE_PASSED, _result_text(result)


def _result_text(result: ResultRecord) -> str:
    return (
        f"INT8 accuracy {100 * result.int8_accuracy:.2f}% (FP32 {100 * result.fp32_accuracy:.2f}%, "
        f"drop {100 * result.accuracy_drop:.3f} points), {result.int8_fps:.1f} faces/s per replica "
        f"(FP32 {result.fp32_fps:.1f})"
    )


def _result_event(tier: str, result: ResultRecord, policy: str) -> Event:
    state, _, message = _state_of(result, result.job)
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


def _selector_text(spec: ModelSpec, tier: str) -> str:
    selector = spec.target(tier).node_selector
    if not selector:
        return ""
    return " with labels " + ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def _summary(variants: Sequence[VariantStatus]) -> Summary:
    fps = [f"{v.served.fps_per_replica:.0f}" if v.served is not None else "-" for v in variants]
    drops = [
        f"{100 * v.result.accuracy_drop:.2f}" if v.result is not None and v.result.succeeded else "-"
        for v in variants
    ]
    return Summary(fps="/".join(fps), drop="/".join(drops))
