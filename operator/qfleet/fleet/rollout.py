"""What the planner reads of a tier's serving Deployment and pods while models and replicas change.

Pure functions over the plain dicts the operator caches (a Deployment's metadata, spec.replicas
and status; a pod's labels, annotations and status):

- whether a rollout has settled (every pod runs the current template and is ready);
- whether it failed: the Deployment's ``ProgressDeadlineExceeded``, or new pods crash-looping;
- which pods sit Pending as unschedulable, and since when;
- how many replicas a tier must keep while another tier's new replicas are not ready yet, so
  that the ready capacity never drops below the demand during a handover;
- the PodDisruptionBudget's ``minAvailable`` that keeps the demand covered during a drain;
- the status records a Deployment carries in its annotations (JSON, never pickle).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qfleet.fleet import names
from qfleet.fleet.replicas import needed_replicas

#: Restarts after which a pod that never got ready counts as crash-looping (kubelet's back-off
#: has then reached tens of seconds; a model that fails to load fails every time).
CRASH_LOOP_RESTARTS = 3
#: Container waiting reasons that mean the new model cannot run.
FAILING_REASONS = ("CrashLoopBackOff", "CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff")


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time as Kubernetes writes it (``2026-01-02T03:04:05Z``); None when unreadable."""
    try:
        found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _metadata(obj).get("annotations") or {}


def record(obj: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """A JSON record kept in an annotation of ``obj``; None when absent or not a JSON object."""
    if obj is None:
        return None
    text = annotations_of(obj).get(key)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, Mapping) else None


def annotation_float(obj: Mapping[str, Any] | None, key: str) -> float | None:
    text = annotations_of(obj).get(key) if obj is not None else None
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def settled(deployment: Mapping[str, Any]) -> bool:
    """Every pod of the Deployment runs its current template and is ready (no old pod left)."""
    metadata, status = _metadata(deployment), _status(deployment)
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False
    wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
    total = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    return total == updated == wanted and ready >= wanted


def ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    return int(_status(deployment).get("readyReplicas") or 0) if deployment is not None else 0


def progress_deadline_exceeded(deployment: Mapping[str, Any]) -> str | None:
    """The Deployment's own verdict on a stuck rollout, in words; None while it progresses."""
    for condition in _status(deployment).get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("status") == "False"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return str(condition.get("message") or "the rollout made no progress within its deadline")
    return None


@dataclass(frozen=True)
class TierPods:
    """A tier's serving pods as the planner needs them."""

    #: Pods Pending as unschedulable for longer than the grace period.
    unschedulable: int
    #: Seconds until the next pending pod's grace period ends (None: none is pending).
    next_expiry_s: float | None
    #: Why the new model's pods fail, in words (None: they do not).
    failing: str | None


def tier_pods(
    pods: Sequence[Mapping[str, Any]],
    tier: str,
    *,
    artifact: str | None,
    now: str,
    grace_seconds: float,
) -> TierPods:
    """Count ``tier``'s serving pods pending as unschedulable; find ``artifact``'s failing ones."""
    slug = names.tier_slug(tier)
    current = parse_time(now)
    expired, next_expiry, failing = 0, None, None
    for pod in pods:
        labels = _metadata(pod).get("labels") or {}
        if labels.get(names.LABEL_COMPONENT) != names.COMPONENT_SERVER or labels.get(names.LABEL_ISA) != slug:
            continue
        since = _unschedulable_since(pod)
        if since is not None and current is not None:
            left = grace_seconds - (current - since).total_seconds()
            if left <= 0:
                expired += 1
            else:
                next_expiry = left if next_expiry is None else min(next_expiry, left)
        if failing is None and artifact and annotations_of(pod).get(names.ANNOTATION_ARTIFACT) == artifact:
            failing = _failing(pod)
    return TierPods(unschedulable=expired, next_expiry_s=next_expiry, failing=failing)


def _unschedulable_since(pod: Mapping[str, Any]) -> datetime | None:
    status = _status(pod)
    if status.get("phase") not in (None, "Pending"):
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return parse_time(str(condition.get("lastTransitionTime") or ""))
    return None


def _failing(pod: Mapping[str, Any]) -> str | None:
    name = _metadata(pod).get("name")
    # An init container that keeps failing (a model fetch refused: damaged, missing, denied)
    # holds the pod before its server ever starts: the same dead end as a crashing server.
    status = _status(pod)
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if container.get("ready"):
            continue
        waiting = (container.get("state") or {}).get("waiting") or {}
        restarts = int(container.get("restartCount") or 0)
        reason = waiting.get("reason")
        if reason in FAILING_REASONS and (reason != "CrashLoopBackOff" or restarts >= CRASH_LOOP_RESTARTS):
            detail = waiting.get("message") or ""
            return f"pod {name}: {reason} after {restarts} restart(s){': ' + detail if detail else ''}"
    return None


def hold_replicas(
    planned: Mapping[str, int],
    current: Mapping[str, int],
    ready: Mapping[str, int],
    fps: Mapping[str, float],
    *,
    demand_fps: float,
    utilization: float,
) -> dict[str, int]:
    """Replicas per tier such that scaling down never leaves the ready capacity below the demand.

    A tier that is to shrink (``current`` above ``planned``) keeps what the demand needs beyond
    what the *ready* replicas of the other tiers carry (counted up to their planned number):
    when a new tier takes over, the old one shrinks only as the new one's pods become ready.
    """
    held = dict(planned)
    for tier, target in planned.items():
        now = current.get(tier, 0)
        if now <= target:
            continue
        others = sum(
            min(ready.get(other, 0), planned[other]) * fps[other] * utilization
            for other in planned
            if other != tier
        )
        rest = demand_fps - others
        keep = needed_replicas(rest, fps[tier], utilization) if rest > 1e-9 else 0
        held[tier] = max(target, min(now, keep))
    return held


def pdb_min_available(replicas: int, *, demand_fps: float, capacity_fps: float) -> int:
    """Pods of a tier that must stay up during a voluntary disruption (a node drain).

    The fleet's capacity is planned with headroom (whole replicas, utilisation); each tier may
    lose its share of that headroom: ``ceil(replicas x demand / capacity)`` pods stay.
    """
    if replicas <= 0 or demand_fps <= 0:
        return 0
    if capacity_fps <= 0:
        return replicas
    return min(replicas, math.ceil(round(replicas * demand_fps / capacity_fps, 9)))
