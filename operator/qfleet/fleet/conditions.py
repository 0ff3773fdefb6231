"""Status vocabulary: phases, condition types, reasons and event reasons, in one place.

Conditions follow the Kubernetes convention (type, status, reason, message, lastTransitionTime,
observedGeneration). ``lastTransitionTime`` changes only when ``status`` changes, so writing the
same conditions again is a no-op and the status patch can be skipped.

Phases, from the user's point of view:

- ``Pending``: accepted and waiting for the cluster: no node of a tier yet (nothing served, no
  Job running), or the replicas of a new rollout or scale-up are not ready yet.
- ``Quantizing``: a quantization Job of the current spec is running.
- ``Ready``: every target serves a model of the current spec and its replicas are ready.
- ``Degraded``: serving, but not everything is right (a Job or the gate failed for a tier, a
  tier has no nodes or serves an older or FP32 model, or capacity is short of the demand).
- ``Blocked``: nothing can be served until the user acts (every target's gate failed with
  ``onGateFailure: keep`` and no earlier model passed).
- ``Failed``: the spec is invalid, or every target's Job failed with nothing to serve.
"""

from __future__ import annotations

from collections.abc import Sequence

from qfleet.fleet.status import Condition

PENDING = "Pending"
QUANTIZING = "Quantizing"
READY = "Ready"
DEGRADED = "Degraded"
BLOCKED = "Blocked"
FAILED = "Failed"
PHASES = (PENDING, QUANTIZING, READY, DEGRADED, BLOCKED, FAILED)

# Condition types.
TYPE_READY = "Ready"
TYPE_PROGRESSING = "Progressing"
TYPE_DEGRADED = "Degraded"
TYPE_ACCURACY_GATE = "AccuracyGate"
TYPE_NODES_AVAILABLE = "NodesAvailable"
TYPE_CAPACITY_INSUFFICIENT = "CapacityInsufficient"
#: A tier's new model failed to roll out and the tier serves its last good model again.
TYPE_ROLLED_BACK = "RolledBack"
#: kstatus's "abnormal-true" pair, which Flux's health checks read: work is under way
#: (Reconciling, mirrors Progressing) or cannot go on without a change (Stalled).
TYPE_RECONCILING = "Reconciling"
TYPE_STALLED = "Stalled"
CONDITION_TYPES = (
    TYPE_READY,
    TYPE_PROGRESSING,
    TYPE_DEGRADED,
    TYPE_ACCURACY_GATE,
    TYPE_NODES_AVAILABLE,
    TYPE_CAPACITY_INSUFFICIENT,
    TYPE_ROLLED_BACK,
    TYPE_RECONCILING,
    TYPE_STALLED,
)

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

# Reasons (CamelCase, as Kubernetes expects). The gate's own reasons ("Passed",
# "AccuracyDropExceeded", "BelowMinimumAccuracy") come from the pipeline result as they are.
REASON_INVALID_SPEC = "InvalidSpec"
REASON_ALL_SERVING = "AllTargetsServing"
REASON_NOTHING_SERVED = "NothingServed"
REASON_ROLLING_OUT = "RollingOut"
REASON_QUANTIZING = "Quantizing"
REASON_IDLE = "Idle"
REASON_AS_EXPECTED = "AsExpected"
REASON_JOB_FAILED = "JobFailed"
REASON_GATE_FAILED = "GateFailed"
REASON_NODES_MISSING = "NoNodesOfTier"
REASON_NODES_FOUND = "NodesFound"
REASON_GATE_PASSED = "Passed"
REASON_GATE_PENDING = "AwaitingResults"
REASON_DEMAND_COVERED = "DemandCovered"
REASON_MAX_REPLICAS = "MaxReplicasReached"
REASON_NO_CAPACITY = "NoServingCapacity"
REASON_TARGET_INCOMPLETE = "TargetsIncomplete"
#: A quantization Job waits for one of the operator's slots (``operator.maxRunningJobs``).
REASON_QUEUED = "Queued"
#: Serving pods sat Pending as unschedulable for longer than ``demand.pendingGraceSeconds``.
REASON_UNSCHEDULABLE = "Unschedulable"
#: A new source model waits until every target tier's gate passed (``rollout.consistency``).
REASON_WAITING_FOR_TIERS = "WaitingForAllTiers"
#: Rollback reasons: the Deployment's own, or the new pods' crash loop.
REASON_PROGRESS_DEADLINE = "ProgressDeadlineExceeded"
REASON_CRASH_LOOP = "CrashLoopBackOff"
REASON_NO_ROLLBACK = "NoRollback"

# Event reasons.
EVENT_JOB_CREATED = "QuantizationStarted"
EVENT_JOB_SUCCEEDED = "QuantizationSucceeded"
EVENT_JOB_FAILED = "QuantizationFailed"
EVENT_JOB_DELETED = "ObsoleteJobDeleted"
EVENT_GATE_FAILED = "AccuracyGateFailed"
EVENT_ROLLED_OUT = "RolledOut"
EVENT_SCALED = "Scaled"
EVENT_NODES_MISSING = "NoNodesOfTier"
EVENT_INVALID_SPEC = "InvalidSpec"
EVENT_CAPACITY = "CapacityInsufficient"
EVENT_PHASE = "PhaseChanged"
EVENT_ROLLED_BACK = "RolledBack"


def condition(
    conditions: Sequence[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> Condition:
    """A condition; keeps the earlier ``lastTransitionTime`` when ``status`` did not change."""
    previous = find(conditions, type_)
    kept = previous.last_transition_time if previous is not None and previous.status == status else ""
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=kept or now,
        observed_generation=generation,
    )


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for item in conditions:
        if item.type == type_:
            return item
    return None
