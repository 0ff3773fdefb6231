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
camera demand, planned with the FPS of the precision served (with ``spec.serving.batching.maxBatch``
> 1 INT8's between its batch-1 FPS and the FPS the Job measured at that batch, by the faces one
frame brings, see :func:`qfleet.fleet.replicas.batching_fps`; the pods then batch as much).

``onGateFailure: bf16`` with a target tier that has no native bf16 never gets here: the spec is
invalid as a whole (see :func:`qfleet.fleet.spec.parse_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from qfleet.fleet import conditions as c
from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import (
    Owner,
    ServingModel,
    cpu_budget,
    deployment_for,
    job_for,
    knobs_for,
    model_selector,
    pipeline_inputs,
    serving_labels,
    template_hash,
    threads_for,
)
from qfleet.fleet.nodes import Inventory
from qfleet.fleet.replicas import Demand, batching_fps
from qfleet.fleet.results import job_outcome, result_record
from qfleet.fleet.rollout import (
    TierPods,
    annotation_float,
    hold_replicas,
    pdb_min_available,
    progress_deadline_exceeded,
    ready_replicas,
    record,
    settled,
    tier_pods,
)
from qfleet.fleet.scaling import FleetPlan, Pool, plan_fleet
from qfleet.fleet.service import address_url, pdb_for, service_for
from qfleet.fleet.spec import ModelSpec, SpecError, parse_spec
from qfleet.fleet.status import (
    CapacityStatus,
    Condition,
    DemandStatus,
    ModelStatus,
    ResultRecord,
    RollbackRecord,
    ServedModel,
    Summary,
    VariantStatus,
    parse_result_record,
    parse_served,
    parse_status,
    result_to_dict,
    served_to_dict,
    status_to_dict,
)
from qfleet.fleet.uris import UriError, parse_artifact_uri

# Per-tier states reported in status.variants[].state.
STATE_WAITING_FOR_NODES = "WaitingForNodes"
STATE_QUEUED = "Queued"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_GATE_FAILED = "GateFailed"
STATE_FAILED = "Failed"


@dataclass(frozen=True)
class Observed:
    """What the cluster holds for one model (the operator's caches; may lag a little)."""

    jobs: Sequence[Mapping[str, Any]] = ()
    #: The quantization Jobs' pods and the serving pods.
    pods: Sequence[Mapping[str, Any]] = ()
    deployments: Sequence[Mapping[str, Any]] = ()
    services: Sequence[Mapping[str, Any]] = ()
    pdbs: Sequence[Mapping[str, Any]] = ()
    inventory: Inventory = field(default_factory=Inventory)
    #: The operator's queue of quantization Jobs: (Job name, order) -> 0 to start it now, else its
    #: place in the queue. None: no cap.
    admit_job: Callable[[str, tuple[str, ...]], int] | None = None


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
    #: Jobs this plan wanted to start but the operator's queue holds back.
    queued_jobs: list[str] = field(default_factory=list)
    #: The Service, and the PodDisruptionBudgets, to create or patch (whole desired objects).
    services: list[dict[str, Any]] = field(default_factory=list)
    pdbs: list[dict[str, Any]] = field(default_factory=list)
    #: (kind, name) of those the caches hold already: patched straight away, not first created
    #: (a create that answers 409 Conflict costs a request per rescale for nothing).
    existing: set[tuple[str, str]] = field(default_factory=set)
    delete_pdbs: list[str] = field(default_factory=list)
    #: Plan again after this many seconds even without an event (a grace period ends).
    requeue_after: float | None = None

    @property
    def status(self) -> dict[str, Any]:
        """The new status as the CRD spells it (what the operator writes)."""
        return status_to_dict(self.model_status)


@dataclass(frozen=True)
class _Overview:
    """What the phase and the conditions are decided from."""

    variants: tuple[VariantStatus, ...]
    serving: tuple[VariantStatus, ...]
    #: A Job runs or waits in the operator's queue.
    running: bool
    queued: tuple[str, ...]
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


def source_key(spec: ModelSpec) -> str:
    """Which source model a spec names: models of different sources give embeddings that do not
    match one gallery (a new calibration or preset of the same source does not change that)."""
    source = {"format": spec.source_format, "uri": str(spec.source), "epoch": spec.epoch}
    return names.short_hash(json.dumps(source, sort_keys=True), 12)


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
    replaced = (c.TYPE_READY, c.TYPE_DEGRADED, c.TYPE_PROGRESSING, c.TYPE_RECONCILING, c.TYPE_STALLED)
    keep = [item for item in old if item.type not in replaced]

    def cond(type_: str, status: str) -> Condition:
        return c.condition(old, type_, status, c.REASON_INVALID_SPEC, message, generation=generation, now=now)

    conditions = (
        cond(c.TYPE_READY, c.FALSE),
        cond(c.TYPE_PROGRESSING, c.FALSE),
        cond(c.TYPE_DEGRADED, c.TRUE),
        cond(c.TYPE_RECONCILING, c.FALSE),
        cond(c.TYPE_STALLED, c.TRUE),
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
        metadata = model.get("metadata") or {}
        self.generation = metadata.get("generation")
        self.created = str(metadata.get("creationTimestamp") or "")
        self.previous = parse_status(model.get("status"))
        self.key = current_pipeline_key(model, spec, config)
        self.source_key = source_key(spec)
        self.jobs = {str((job.get("metadata") or {}).get("name")): job for job in observed.jobs}
        self.deployments = {str((dep.get("metadata") or {}).get("name")): dep for dep in observed.deployments}
        self.result = Plan(model_status=ModelStatus(), pipeline_key=self.key)
        #: Target tiers with no schedulable node now (whatever they already serve or run).
        self.tiers_without_nodes: set[str] = set()
        #: Per tier: the place of its Job in the operator's queue.
        self.queued: dict[str, int] = {}
        #: Per tier: its serving pods (pending, failing).
        self.pods: dict[str, TierPods] = {}
        #: Per tier: the lower FPS per replica while its pods change model (see _fps_floor).
        self.floors: dict[str, float | None] = {}
        #: Per tier: the tolerations of its pods (a tainted node counts only if they tolerate it).
        self.tolerations = {
            target.isa: knobs_for(spec, target.isa, config).tolerations or () for target in spec.targets
        }
        # The status is the operator's memory; where it lost a tier's records (a restored backup,
        # a status edited by hand) the tier's Deployment still carries them.
        self.old_variants = {
            target.isa: self._recovered(target.isa, self.previous.variants) for target in spec.targets
        }

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> Plan:
        results = {target.isa: self._result(target.isa) for target in self.spec.targets}
        waiting_for = self._tiers_holding_new_source(results)
        variants = [
            self._variant(target.isa, results[target.isa], waiting_for) for target in self.spec.targets
        ]
        self._delete_obsolete_jobs()
        fleet = self._scale(variants)
        variants, rolled_out = self._deployments(variants, fleet)
        self._service_and_budgets(variants, fleet)
        self.result.model_status = self._status(variants, fleet, rolled_out)
        self._transition_events(self.result.model_status, fleet)
        return self.result

    def _recovered(self, tier: str, variants: Sequence[VariantStatus]) -> VariantStatus:
        old = next((variant for variant in variants if variant.isa == tier), VariantStatus(isa=tier))
        deployment = self._deployment_of(tier)
        if deployment is None or (old.served is not None and old.result is not None):
            return old
        served = record(deployment, names.ANNOTATION_SERVED)
        last_good = record(deployment, names.ANNOTATION_LAST_GOOD)
        result = record(deployment, names.ANNOTATION_RESULT)
        return replace(
            old,
            served=old.served or (parse_served(served) if served else None),
            last_good=old.last_good or (parse_served(last_good) if last_good else None),
            result=old.result or (parse_result_record(result) if result else None),
        )

    def _result(self, tier: str) -> ResultRecord | None:
        """The tier's result for the current key once its Job finished (else the last one)."""
        old = self.old_variants[tier]
        target = self.spec.target(tier)
        nodes = self.observed.inventory.matching(tier, target.node_selector, self.tolerations[tier])
        if not nodes:
            self.tiers_without_nodes.add(tier)
        result = old.result
        if result is None or result.pipeline_key != self.key:
            result = self._drive_job(tier, has_nodes=bool(nodes)) or result
        return result

    def _tiers_holding_new_source(self, results: Mapping[str, ResultRecord | None]) -> tuple[str, ...]:
        """Under ``rollout.consistency: allTiers``, the tiers whose gate has not passed yet while
        another tier serves an older source model (then no tier switches to the new one)."""
        if self.spec.consistency != "allTiers":
            return ()
        serving_old = any(
            variant.served is not None and not self._same_source(variant.served)
            for variant in self.old_variants.values()
        )
        if not serving_old:
            return ()
        return tuple(
            tier
            for tier, result in results.items()
            if result is None or result.pipeline_key != self.key or self._candidate(result) is None
        )

    def _same_source(self, served: ServedModel) -> bool:
        if served.source_key:
            return served.source_key == self.source_key
        return served.pipeline_key == self.key

    def _variant(self, tier: str, result: ResultRecord | None, waiting_for: Sequence[str]) -> VariantStatus:
        """Decide what one tier serves, and say what state it is in."""
        old = self.old_variants[tier]
        old_served, old_last_good = _usable(old.served), _usable(old.last_good)
        rolled_back = (
            old.rolled_back if old.rolled_back and old.rolled_back.pipeline_key == self.key else None
        )
        served = old_served
        job_name = names.job_name(self.owner.name, tier, self.key)
        if result is not None and result.pipeline_key == self.key:
            served = self._choose_served(result, old_served, old_last_good, rolled_back, waiting_for)
            state, reason, message = self._recorded_state(result, job_name)
            if waiting_for and served is old_served and self._candidate(result) is not None:
                reason = c.REASON_WAITING_FOR_TIERS
                message = (
                    f"{message}; switches to the new model once every target tier's gate passed "
                    f"(rollout.consistency allTiers): waiting for {', '.join(waiting_for)}"
                )
        elif tier in self.queued:
            state, reason = STATE_QUEUED, c.REASON_QUEUED
            ahead = self.queued[tier] - 1
            message = f"quantization Job {job_name} waits for a free slot: {ahead} queued before it"
        elif tier in self.tiers_without_nodes and job_name not in self.jobs:
            state, reason = STATE_WAITING_FOR_NODES, c.REASON_NODES_MISSING
            message = f"no schedulable node of ISA tier {tier}{_selector_text(self.spec, tier)}"
        else:
            state, reason = STATE_RUNNING, c.REASON_QUANTIZING
            message = f"quantization Job {job_name} is running"
        variant = VariantStatus(
            isa=tier,
            pipeline_key=self.key,
            job=job_name,
            state=state,
            reason=reason,
            message=message,
            result=result,
            served=_keep_since(served, old_served),
            last_good=old_last_good,
            rolled_back=rolled_back,
        )
        return self._check_rollout(variant)

    def _check_rollout(self, variant: VariantStatus) -> VariantStatus:
        """Roll a tier back to its last good model when its new model's rollout failed."""
        tier, served = variant.isa, variant.served
        deployment = self._deployment_of(tier)
        rolling = (record(deployment, names.ANNOTATION_SERVED) or {}).get("artifact") if deployment else None
        pods = tier_pods(
            self.observed.pods,
            tier,
            artifact=rolling,
            now=self.now,
            grace_seconds=self.spec.pending_grace_seconds,
        )
        self.pods[tier] = pods
        if pods.next_expiry_s is not None:
            self._requeue(pods.next_expiry_s + 1)
        if (
            deployment is None
            or served is None
            or rolling != served.artifact
            or (variant.last_good is not None and variant.last_good.artifact == served.artifact)
            or settled(deployment)
        ):
            return variant
        deadline = progress_deadline_exceeded(deployment)
        if deadline is None and pods.failing is None:
            return variant
        reason = c.REASON_PROGRESS_DEADLINE if deadline is not None else c.REASON_CRASH_LOOP
        detail = deadline if deadline is not None else str(pods.failing)
        fallback = variant.last_good
        back_to = f"serving {fallback.artifact} again" if fallback else "no earlier model to serve instead"
        message = (
            f"{served.precision.upper()} model {served.artifact} failed to roll out ({detail}); {back_to}"
        )
        return replace(
            variant,
            served=fallback,
            rolled_back=RollbackRecord(
                pipeline_key=served.pipeline_key,
                artifact=served.artifact,
                reason=reason,
                message=message,
                at=self.now,
            ),
        )

    def _requeue(self, seconds: float) -> None:
        current = self.result.requeue_after
        self.result.requeue_after = seconds if current is None else min(current, seconds)

    def _drive_job(self, tier: str, *, has_nodes: bool) -> ResultRecord | None:
        """Start the tier's Job (where a node can run it and the queue lets it), or record its
        result once it finished."""
        job_name = names.job_name(self.owner.name, tier, self.key)
        job = self.jobs.get(job_name)
        if job is None:
            if has_nodes:
                self._start_job(tier, job_name)
            return None
        outcome = job_outcome(job, self.observed.pods, now=self.now)
        if outcome.state == "running" or outcome.awaiting_result:
            return None
        record_ = result_record(outcome, self.key, job_name, now=self.now)
        self.result.new_results[tier] = record_
        return record_

    def _start_job(self, tier: str, job_name: str) -> None:
        admit = self.observed.admit_job
        # The queue's order: oldest model first, then by name and target order (stable across
        # restarts: nothing in it depends on when the operator saw the model).
        index = self.spec.tiers.index(tier)
        order = (self.created, self.owner.namespace, self.owner.name, f"{index:02d}")
        place = admit(job_name, order) if admit is not None else 0
        if place > 0:
            self.queued[tier] = place
            self.result.queued_jobs.append(job_name)
            return
        self.result.create_jobs.append(job_for(self.owner, self.spec, tier, self.key, self.config))

    def _recorded_state(self, result: ResultRecord, job_name: str) -> tuple[str, str, str]:
        state, reason, message = _state_of(result, job_name)
        if state == STATE_GATE_FAILED:
            message = f"{message}; {_gate_failure_action(result, self.spec.on_gate_failure)}"
        return state, reason, message

    def _candidate(self, result: ResultRecord) -> ServedModel | None:
        """The current key's model a tier would serve from ``result`` (None: none of it)."""
        if not result.succeeded:
            return None
        if result.gate.passed:
            return self._served_model(result, "int8")
        if self.spec.on_gate_failure == "fp32":
            return self._served_model(result, "fp32")
        if self.spec.on_gate_failure == "bf16" and _bf16_usable(result):
            return self._served_model(result, "bf16")
        return None

    def _choose_served(
        self,
        result: ResultRecord,
        served: ServedModel | None,
        last_good: ServedModel | None,
        rolled_back: RollbackRecord | None,
        waiting_for: Sequence[str],
    ) -> ServedModel | None:
        """What a tier serves once the current key has a result (see the module docstring)."""
        if not result.succeeded:
            return served  # a failed Job changes nothing that is served
        candidate = self._candidate(result)
        if candidate is not None and rolled_back is not None and rolled_back.artifact == candidate.artifact:
            return served  # its rollout failed: not again until the spec changes
        if candidate is not None:
            if waiting_for and served is not None and not self._same_source(served):
                return served  # one model across tiers: wait until every tier can switch
            return candidate
        # keep: the last model that passed; never an FP32 model of the key that just failed.
        if last_good is not None:
            return last_good
        if served is not None and served.pipeline_key != self.key:
            return served
        return None

    def _served_model(self, result: ResultRecord, precision: str) -> ServedModel:
        if precision == "bf16" and result.bf16 is not None:
            artifact, fps, accuracy = result.bf16.artifact, result.bf16.fps, result.bf16.accuracy
        elif precision == "fp32":
            artifact, fps, accuracy = result.fp32_artifact, result.fp32_fps, result.fp32_accuracy
        else:
            artifact, fps, accuracy = result.artifact, result.int8_fps, result.int8_accuracy
        batch = 1
        if precision == "int8" and result.int8_batch_fps is not None and result.int8_batch:
            # Measured at the batch the servers run (only INT8 is); what they deliver depends on
            # how many faces each request brings to a batch.
            batch = result.int8_batch
            fps = batching_fps(
                batch1_fps=result.int8_fps,
                batch_fps=result.int8_batch_fps,
                batch=batch,
                faces_per_request=self.spec.faces_per_frame,
            )
        return ServedModel(
            pipeline_key=result.pipeline_key,
            precision=precision,
            artifact=artifact,
            fps_per_replica=fps,
            accuracy=accuracy,
            since=self.now,
            # The key's Job measured the FPS with the spec's CPU budget of now.
            cpu=cpu_budget(self.spec, self.config),
            threads=threads_for(self.spec, self.config),
            batch=batch,
            source_key=self.source_key,
        )

    def _delete_obsolete_jobs(self) -> None:
        wanted = {names.job_name(self.owner.name, target.isa, self.key) for target in self.spec.targets}
        for name in sorted(self.jobs):
            if name not in wanted:
                self.result.delete_jobs.append(name)

    def _fps_floor(self, variant: VariantStatus) -> float | None:
        """While the tier's pods change model, the lower of the old and new FPS per replica."""
        served = variant.served
        deployment = self._deployment_of(variant.isa)
        if served is None or deployment is None:
            return None
        floor = annotation_float(deployment, names.ANNOTATION_FPS_FLOOR)
        running = record(deployment, names.ANNOTATION_SERVED) or {}
        if running.get("artifact") != served.artifact or running.get("cpu", served.cpu) != served.cpu:
            old_fps = floor or float(running.get("fpsPerReplica") or 0) or served.fps_per_replica
            return min(old_fps, served.fps_per_replica)
        if floor is not None and not settled(deployment):
            return min(floor, served.fps_per_replica)
        return None

    def _scale(self, variants: Sequence[VariantStatus]) -> FleetPlan:
        self.floors = {variant.isa: self._fps_floor(variant) for variant in variants}
        pools = []
        for variant in variants:
            if variant.served is None or variant.served.fps_per_replica <= 0:
                continue
            target = self.spec.target(variant.isa)
            deployment = self._deployment_of(variant.isa)
            pods = self.pods.get(variant.isa)
            pools.append(
                Pool(
                    isa=variant.isa,
                    fps_per_replica=self.floors[variant.isa] or variant.served.fps_per_replica,
                    allocatable_cpu=self.observed.inventory.allocatable_cpu(
                        variant.isa,
                        target.node_selector,
                        self.tolerations[variant.isa],
                    ),
                    current_replicas=_spec_replicas(deployment),
                    unschedulable=pods.unschedulable if pods is not None else 0,
                )
            )
        demand = Demand(self.spec.cameras, self.spec.camera_fps, self.spec.faces_per_frame)
        fleet = plan_fleet(
            demand.faces_per_second,
            pools,
            utilization=self.spec.target_utilization,
            min_replicas=self.spec.min_replicas,
            max_replicas=self.spec.max_replicas,
            placement=self.spec.placement,
        )
        held = hold_replicas(
            fleet.replicas,
            {pool.isa: pool.current_replicas for pool in pools},
            {pool.isa: self._ready(pool.isa) for pool in pools},
            {pool.isa: pool.fps_per_replica for pool in pools},
            demand_fps=fleet.demand_fps,
            utilization=self.spec.target_utilization,
        )
        return replace(fleet, replicas=held)

    def _ready(self, tier: str) -> int:
        return ready_replicas(self._deployment_of(tier))

    def _deployment_of(self, tier: str) -> Mapping[str, Any] | None:
        """The tier's serving Deployment as the cache holds it (None: not there yet)."""
        return self.deployments.get(names.deployment_name(self.owner.name, tier))

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

    def _records(self, variant: VariantStatus) -> dict[str, str]:
        """The status records the tier's Deployment carries (see :func:`_recovered`)."""
        found: dict[str, str] = {}
        if variant.served is not None:
            found[names.ANNOTATION_SERVED] = _compact(served_to_dict(variant.served))
            result = variant.result
            if result is not None and result.pipeline_key == variant.served.pipeline_key:
                found[names.ANNOTATION_RESULT] = _compact(result_to_dict(result))
            else:  # a newer key's result does not describe what is served: keep the one that does
                current = self._deployment_of(variant.isa) or {}
                kept = _records_of(current).get(names.ANNOTATION_RESULT)
                if kept and (record(current, names.ANNOTATION_RESULT) or {}).get("pipelineKey") == (
                    variant.served.pipeline_key
                ):
                    found[names.ANNOTATION_RESULT] = kept
        if variant.last_good is not None:
            found[names.ANNOTATION_LAST_GOOD] = _compact(served_to_dict(variant.last_good))
        floor = self.floors.get(variant.isa)
        if floor is not None:
            found[names.ANNOTATION_FPS_FLOOR] = f"{floor:g}"
        return found

    def _deployment(self, variant: VariantStatus, fleet: FleetPlan) -> tuple[VariantStatus, bool] | None:
        """The change to the tier's Deployment, the variant that says so, and whether it rolled out."""
        served = variant.served
        if served is None:
            return None
        tier = variant.isa
        try:
            artifact = parse_artifact_uri(served.artifact, field=f"status.variants[{tier}].served.artifact")
        except UriError:
            return None
        replicas = fleet.replicas.get(tier, self.spec.min_replicas)
        name = names.deployment_name(self.owner.name, tier)
        current = self.deployments.get(name)
        ready = ready_replicas(current)
        with_deployment = replace(variant, deployment=name, replicas=replicas, ready_replicas=ready)
        desired = deployment_for(
            self.owner,
            self.spec,
            tier,
            model=ServingModel(
                artifact=artifact,
                pipeline_key=served.pipeline_key,
                fps_per_replica=served.fps_per_replica,
                cpu=served.cpu or None,
                threads=served.threads,
                batch=served.batch,
            ),
            replicas=replicas,
            config=self.config,
        )
        same_template = current is not None and template_hash(current) == template_hash(desired)
        done = current is not None and same_template and _rolled_out(current, replicas)
        if done and _passed_gate(served):
            # Rolled out and serving: from now on the model to go back to.
            with_deployment = replace(with_deployment, last_good=served)
        desired["metadata"]["annotations"].update(self._records(with_deployment))
        if current is None:
            self.result.deployments.append(DeploymentChange(name, "create", desired, replicas))
            return with_deployment, replicas == 0
        if not same_template:
            self.result.deployments.append(DeploymentChange(name, "update", desired, replicas))
            return with_deployment, False
        if _records_of(current) != _records_of(desired):
            self.result.deployments.append(DeploymentChange(name, "update", desired, replicas))
        elif (current.get("spec") or {}).get("replicas") != replicas:
            self.result.deployments.append(DeploymentChange(name, "scale", desired, replicas))
        return with_deployment, done

    def _service_and_budgets(self, variants: Sequence[VariantStatus], fleet: FleetPlan) -> None:
        """The model's Service, and a PodDisruptionBudget per serving Deployment."""
        services = {str((obj.get("metadata") or {}).get("name")): obj for obj in self.observed.services}
        service = service_for(self.owner, self.spec, self.config)
        if template_hash(services.get(self.owner.name) or {}) != template_hash(service):
            self.result.services.append(service)
        budgets = {str((obj.get("metadata") or {}).get("name")): obj for obj in self.observed.pdbs}
        self.result.existing.update(_named("Service", services), _named("PodDisruptionBudget", budgets))
        wanted: set[str] = set()
        for variant in variants:
            if variant.deployment is None or variant.replicas is None:
                continue
            wanted.add(variant.deployment)
            budget = pdb_for(
                self.owner,
                variant.isa,
                variant.deployment,
                serving_labels(self.owner, variant.isa),
                pdb_min_available(
                    variant.replicas, demand_fps=fleet.demand_fps, capacity_fps=fleet.capacity_fps
                ),
            )
            if template_hash(budgets.get(variant.deployment) or {}) != template_hash(budget):
                self.result.pdbs.append(budget)
        self.result.delete_pdbs.extend(sorted(name for name in budgets if name not in wanted))

    # -- status ------------------------------------------------------------------------------

    def _status(
        self, variants: Sequence[VariantStatus], fleet: FleetPlan, rolled_out: set[str]
    ) -> ModelStatus:
        overview = self._overview(variants, fleet, rolled_out)
        phase = _phase(overview)
        progressing = self._progressing_condition(overview)
        return ModelStatus(
            phase=phase,
            observed_generation=self.generation,
            pipeline_key=self.key,
            selector=names.selector_string(model_selector(self.owner)),
            address_url=address_url(self.owner, self.config.server_port),
            conditions=(
                self._ready_condition(phase, overview),
                progressing,
                self._degraded_condition(overview),
                self._gate_condition(variants),
                self._nodes_condition(overview),
                self._capacity_condition(fleet, overview.serving),
                self._rolled_back_condition(variants),
                self._cond(c.TYPE_RECONCILING, progressing.status, progressing.reason, progressing.message),
                self._stalled_condition(phase, overview),
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
            running=bool(_in_state(variants, STATE_RUNNING, STATE_QUEUED)),
            queued=_in_state(variants, STATE_QUEUED),
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
            running = [v for v in overview.variants if v.state == STATE_RUNNING]
            if not running:
                message = "; ".join(v.message for v in overview.variants if v.state == STATE_QUEUED)
                return self._cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_QUEUED, message)
            message = "; ".join(f"{v.isa}: Job {v.job}" for v in running)
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

    def _stalled_condition(self, phase: str, overview: _Overview) -> Condition:
        """Nothing more happens without a change: every tier failed, or the gate blocks it."""
        if phase in (c.FAILED, c.BLOCKED):
            return self._cond(
                c.TYPE_STALLED, c.TRUE, _degraded_reason(overview), "; ".join(overview.problems)
            )
        return self._cond(c.TYPE_STALLED, c.FALSE, c.REASON_AS_EXPECTED, "not stalled")

    def _rolled_back_condition(self, variants: Sequence[VariantStatus]) -> Condition:
        rolled_back = [variant for variant in variants if variant.rolled_back is not None]
        if not rolled_back:
            return self._cond(c.TYPE_ROLLED_BACK, c.FALSE, c.REASON_NO_ROLLBACK, "no rollout failed")
        message = "; ".join(f"{v.isa}: {v.rolled_back.message}" for v in rolled_back if v.rolled_back)
        reason = rolled_back[0].rolled_back.reason if rolled_back[0].rolled_back else c.REASON_CRASH_LOOP
        return self._cond(c.TYPE_ROLLED_BACK, c.TRUE, reason, message)

    def _unschedulable_text(self, fleet: FleetPlan) -> str:
        pending = ", ".join(f"{count} of {tier}" for tier, count in sorted(fleet.unschedulable.items()))
        return (
            f"replicas Pending as unschedulable for over {self.spec.pending_grace_seconds} s "
            f"({pending}) carry nothing"
        )

    def _capacity_condition(self, fleet: FleetPlan, serving: Sequence[VariantStatus]) -> Condition:
        if not serving:
            return self._cond(
                c.TYPE_CAPACITY_INSUFFICIENT, c.UNKNOWN, c.REASON_NO_CAPACITY, "no model is served yet"
            )
        if fleet.shortfall_fps > 0 and fleet.unschedulable:
            return self._cond(
                c.TYPE_CAPACITY_INSUFFICIENT,
                c.TRUE,
                c.REASON_UNSCHEDULABLE,
                f"{self._unschedulable_text(fleet)}: demand {fleet.demand_fps:.1f} faces/s exceeds "
                f"capacity {fleet.capacity_fps:.1f} faces/s, short by {fleet.shortfall_fps:.1f} faces/s",
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
            f"{fleet.total_replicas - fleet.unschedulable_replicas} replica(s) carry "
            f"{fleet.capacity_fps:.1f} faces/s for a demand of {fleet.demand_fps:.1f} faces/s"
            + (
                f"; {self._unschedulable_text(fleet)}: their share went to other tiers"
                if fleet.unschedulable
                else ""
            ),
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
        if variant.rolled_back is not None and variant.rolled_back != old.rolled_back:
            events.append(Event("Warning", c.EVENT_ROLLED_BACK, f"{tier}: {variant.rolled_back.message}"))
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


def _in_state(variants: Sequence[VariantStatus], *states: str) -> tuple[str, ...]:
    return tuple(variant.isa for variant in variants if variant.state in states)


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


def _spec_replicas(deployment: Mapping[str, Any] | None) -> int:
    if deployment is None:
        return 0
    return int((deployment.get("spec") or {}).get("replicas") or 0)


def _passed_gate(served: ServedModel | None) -> bool:
    """INT8 and BF16 models are served only after they passed the gate; an FP32 fallback is not."""
    return served is not None and served.precision in ("int8", "bf16")


def _compact(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


_RECORD_ANNOTATIONS = (
    names.ANNOTATION_SERVED,
    names.ANNOTATION_LAST_GOOD,
    names.ANNOTATION_RESULT,
    names.ANNOTATION_FPS_FLOOR,
)


def _records_of(deployment: Mapping[str, Any]) -> dict[str, str]:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return {key: str(annotations[key]) for key in _RECORD_ANNOTATIONS if key in annotations}


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
    total = status.get("replicas")
    old_pods_left = updated is not None and total is not None and int(total) > int(updated)
    return ready >= replicas and (updated is None or int(updated) >= replicas) and not old_pods_left


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


def _named(kind: str, objects: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of each of ``objects`` (by name)."""
    return {(kind, name) for name in objects}
