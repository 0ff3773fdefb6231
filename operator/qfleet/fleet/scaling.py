"""Share one camera load between the ISA pools that serve a model.

Each pool (one ISA tier's Deployment) carries ``fps_per_replica x utilization`` faces/s per
replica, with the FPS measured on that tier. ``fill`` uses the pools in the order of the
targets, each up to its maximum; ``spread`` gives each pool a share of the demand in proportion
to its tier's allocatable CPU, then hands what a full pool could not carry to the others in
order. Every pool keeps at least ``min_replicas``. When every pool is at its maximum and the
demand is still not covered, the shortfall (faces/s) is reported.

The model's Service spreads requests evenly over its ready pods, whatever their tier: every pod
gets ``demand / replicas``. So the plan holds only if that share stays within the slowest pod's
planned FPS; where pools of different speed serve together (``spread``, a ``fill`` that spills
over, a tier handing over to another), replicas are added until it does. The capacity reported
is ``replicas x`` the slowest pool's planned FPS, what the fleet carries under even spreading.

A pool whose pods sit Pending as unschedulable (no node has room; see the planner's grace
period) carries only its scheduled replicas: it keeps its Deployment's replicas (the pending
pods are what a cluster autoscaler acts on) but the demand they would carry spills over to the
next pools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from qfleet.fleet.replicas import needed_replicas

FILL = "fill"
SPREAD = "spread"


@dataclass(frozen=True)
class Pool:
    isa: str
    fps_per_replica: float
    #: Allocatable CPU of the tier's nodes (the weight for ``spread``).
    allocatable_cpu: float = 0.0
    #: Replicas of the tier's Deployment now, and how many of its pods cannot be scheduled.
    current_replicas: int = 0
    unschedulable: int = 0


@dataclass(frozen=True)
class FleetPlan:
    demand_fps: float
    #: Replicas per pool (what the Deployments are scaled to; unschedulable pods included).
    replicas: dict[str, int]
    capacity_fps: float
    shortfall_fps: float
    #: Per pool: replicas planned but not counted (Pending as unschedulable).
    unschedulable: dict[str, int] = field(default_factory=dict)

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())

    @property
    def unschedulable_replicas(self) -> int:
        return sum(self.unschedulable.values())


def plan_fleet(
    demand_fps: float,
    pools: Sequence[Pool],
    *,
    utilization: float,
    min_replicas: int,
    max_replicas: int,
    placement: str = FILL,
) -> FleetPlan:
    """Replicas per pool for ``demand_fps``; see the module docstring."""
    if placement not in (FILL, SPREAD):
        raise ValueError(f"placement must be {FILL!r} or {SPREAD!r}, got {placement!r}")
    if min_replicas < 0 or max_replicas < min_replicas:
        raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}")
    if not pools:
        return FleetPlan(demand_fps, {}, 0.0, max(0.0, demand_fps))

    fps = {pool.isa: pool.fps_per_replica for pool in pools}
    planned = {isa: value * utilization for isa, value in fps.items()}
    # What each pool may count: its maximum, or only its scheduled pods when some cannot be placed.
    room = {pool.isa: _room(pool, max_replicas) for pool in pools}
    floor = {pool.isa: min(min_replicas, room[pool.isa]) for pool in pools}
    replicas = dict(floor)

    def grow(isa: str, demand: float) -> None:
        """Raise the pool's replicas until it carries ``demand`` or reaches its room."""
        wanted = needed_replicas(demand, fps[isa], utilization) if demand > 0 else 0
        replicas[isa] = min(room[isa], max(replicas[isa], wanted))

    if placement == SPREAD:
        for isa, share in _cpu_shares(pools).items():
            grow(isa, demand_fps * share)
    # Demand within float noise of the capacity counts as covered (needed_replicas rounds the
    # replica ratio to 9 decimals); a millionth of a face per second is no shortfall either.
    tolerance = 1e-6 + 1e-9 * (demand_fps + max(planned.values()))
    # Fill (and spread's second pass): give what is still uncovered to pools in target order.
    for pool in pools:
        uncovered = demand_fps - sum(replicas[isa] * planned[isa] for isa in replicas)
        if uncovered <= tolerance:
            break
        grow(pool.isa, replicas[pool.isa] * planned[pool.isa] + uncovered)
    _even_out(replicas, planned, room, floor, demand_fps - tolerance)

    capacity = _even_capacity(replicas, planned)
    shortfall = max(0.0, demand_fps - capacity)
    deployed, pending = _with_pending(pools, replicas, room, max_replicas)
    return FleetPlan(
        demand_fps, deployed, capacity, shortfall if shortfall > tolerance else 0.0, unschedulable=pending
    )


def _with_pending(
    pools: Sequence[Pool], replicas: dict[str, int], room: dict[str, int], max_replicas: int
) -> tuple[dict[str, int], dict[str, int]]:
    """The replicas to deploy, and per pool the pending ones among them: a pool that has
    unschedulable pods and is planned to its room keeps them (the autoscaler's signal)."""
    deployed, pending = {}, {}
    for pool in pools:
        count = replicas[pool.isa]
        if pool.unschedulable and count >= room[pool.isa]:
            count = min(max_replicas, max(count, pool.current_replicas))
            pending[pool.isa] = count - replicas[pool.isa]
        deployed[pool.isa] = count
    return deployed, pending


def _room(pool: Pool, max_replicas: int) -> int:
    if pool.unschedulable <= 0:
        return max_replicas
    return max(0, min(max_replicas, pool.current_replicas - pool.unschedulable))


def _even_capacity(replicas: dict[str, int], planned: dict[str, float]) -> float:
    """What the pools carry when every replica gets the same share (the Service's spreading)."""
    active = [isa for isa, count in replicas.items() if count > 0]
    if not active:
        return 0.0
    return sum(replicas[isa] for isa in active) * min(planned[isa] for isa in active)


def _even_out(
    replicas: dict[str, int],
    planned: dict[str, float],
    room: dict[str, int],
    floor: dict[str, int],
    demand: float,
) -> None:
    """Make an even share per replica stay within the slowest replica's planned FPS.

    Tries the fastest "slowest pool" first: the pools at least that fast keep their replicas
    (and get more, in target order, up to ``demand /`` its planned FPS), slower ones go back to
    their ``floor`` (``minReplicas``). When no choice reaches the demand, the one that carries
    most is kept.
    """
    if _even_capacity(replicas, planned) >= demand:
        return
    forced = [isa for isa, count in floor.items() if count > 0]
    ceiling = min((planned[isa] for isa in forced), default=max(planned.values()))
    best = dict(replicas)
    for slowest in sorted({value for value in planned.values() if value <= ceiling}, reverse=True):
        trial = {isa: count if planned[isa] >= slowest else floor[isa] for isa, count in replicas.items()}
        wanted = math.ceil(round(demand / slowest, 9))
        for isa in trial:
            if planned[isa] >= slowest:
                trial[isa] = max(trial[isa], min(room[isa], trial[isa] + wanted - sum(trial.values())))
        if _even_capacity(trial, planned) > _even_capacity(best, planned):
            best = trial
        if _even_capacity(trial, planned) >= demand:
            break
    replicas.update(best)


def _cpu_shares(pools: Sequence[Pool]) -> dict[str, float]:
    """Each pool's share of the demand for ``spread``: its tier's part of the allocatable CPU
    (equal shares when no pool reports any)."""
    total_cpu = sum(max(pool.allocatable_cpu, 0.0) for pool in pools)
    return {pool.isa: pool.allocatable_cpu / total_cpu if total_cpu > 0 else 1 / len(pools) for pool in pools}
