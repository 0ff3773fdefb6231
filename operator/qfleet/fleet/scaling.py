"""Share one camera load between the ISA pools that serve a model.

Each pool (one ISA tier's Deployment) carries ``fps_per_replica x utilization`` faces/s per
replica, with the FPS measured on that tier. ``fill`` uses the pools in the order of the
targets, each up to its maximum; ``spread`` gives each pool a share of the demand in proportion
to its tier's allocatable CPU, then hands what a full pool could not carry to the others in
order. Every pool keeps at least ``min_replicas``. When every pool is at its maximum and the
demand is still not covered, the shortfall (faces/s) is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qfleet.fleet.replicas import needed_replicas

FILL = "fill"
SPREAD = "spread"


@dataclass(frozen=True)
class Pool:
    isa: str
    fps_per_replica: float
    #: Allocatable CPU of the tier's nodes (the weight for ``spread``).
    allocatable_cpu: float = 0.0


@dataclass(frozen=True)
class FleetPlan:
    demand_fps: float
    replicas: dict[str, int]
    capacity_fps: float
    shortfall_fps: float

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())


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
    replicas = {pool.isa: min_replicas for pool in pools}

    def grow(isa: str, demand: float) -> None:
        """Raise the pool's replicas until it carries ``demand`` or reaches the maximum."""
        wanted = needed_replicas(demand, fps[isa], utilization) if demand > 0 else 0
        replicas[isa] = min(max_replicas, max(replicas[isa], wanted))

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

    capacity = sum(replicas[isa] * planned[isa] for isa in replicas)
    shortfall = max(0.0, demand_fps - capacity)
    return FleetPlan(demand_fps, replicas, capacity, shortfall if shortfall > tolerance else 0.0)


def _cpu_shares(pools: Sequence[Pool]) -> dict[str, float]:
    """Each pool's share of the demand for ``spread``: its tier's part of the allocatable CPU
    (equal shares when no pool reports any)."""
    total_cpu = sum(max(pool.allocatable_cpu, 0.0) for pool in pools)
    return {pool.isa: pool.allocatable_cpu / total_cpu if total_cpu > 0 else 1 / len(pools) for pool in pools}
