"""Sharing a camera load between ISA pools: fill, spread, clamps and shortfall."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qfleet.fleet.scaling import Pool, plan_fleet


def test_the_users_numbers() -> None:
    # 64 cameras x 6 FPS x 1 face = 384 faces/s; INT8 579 faces/s per replica at 80%: 1 replica.
    plan = plan_fleet(384, [Pool("avx512_vnni", 579)], utilization=0.8, min_replicas=1, max_replicas=64)
    assert plan.replicas == {"avx512_vnni": 1}
    # FP32 326 faces/s at 80% -> 260.8 per replica -> 2 replicas.
    plan = plan_fleet(384, [Pool("avx2", 326)], utilization=0.8, min_replicas=1, max_replicas=64)
    assert plan.replicas == {"avx2": 2} and plan.shortfall_fps == 0


def test_fill_uses_targets_in_order() -> None:
    pools = [Pool("amx_int8", 1000), Pool("avx2", 500)]
    plan = plan_fleet(2500, pools, utilization=1.0, min_replicas=0, max_replicas=2)
    # Under the Service's even spreading 4 replicas would carry only 4 x 500 faces/s (the slowest
    # one's share): no more than amx's 2 alone, so avx2 stays out.
    assert plan.replicas == {"amx_int8": 2, "avx2": 0}
    assert plan.capacity_fps == 2000 and plan.shortfall_fps == pytest.approx(500)


def test_a_slow_pool_that_would_overload_is_left_out() -> None:
    # amx 2 x 1000 and avx2 2 x 100 add up to 2200, but an even share of 3000 / 4 overloads an
    # avx2 pod (100 faces/s); amx alone carries 2000: the most the fleet can carry.
    pools = [Pool("amx_int8", 1000), Pool("avx2", 100)]
    plan = plan_fleet(3000, pools, utilization=1.0, min_replicas=0, max_replicas=2)
    assert plan.replicas == {"amx_int8": 2, "avx2": 0}
    assert plan.capacity_fps == 2000 and plan.shortfall_fps == pytest.approx(1000)


def test_mixed_speeds_get_replicas_for_an_even_share() -> None:
    # minReplicas 1 keeps the slow pool serving, so every pod may get no more than 100 faces/s.
    pools = [Pool("amx_int8", 1000), Pool("avx2", 100)]
    plan = plan_fleet(900, pools, utilization=1.0, min_replicas=1, max_replicas=20)
    assert plan.total_replicas == 9 and plan.shortfall_fps == 0
    assert plan.demand_fps / plan.total_replicas <= 100


def test_unschedulable_replicas_spill_to_the_next_pool_and_stay_pending() -> None:
    pools = [Pool("amx_int8", 100, current_replicas=8, unschedulable=3), Pool("avx2", 100)]
    plan = plan_fleet(800, pools, utilization=1.0, min_replicas=0, max_replicas=20)
    # amx keeps its 8 (3 pending for the autoscaler) but counts 5; avx2 carries the other 300.
    assert plan.replicas == {"amx_int8": 8, "avx2": 3}
    assert plan.unschedulable == {"amx_int8": 3} and plan.capacity_fps == 800


def test_min_replicas_everywhere_and_zero_demand() -> None:
    plan = plan_fleet(0, [Pool("a", 10), Pool("b", 10)], utilization=0.8, min_replicas=1, max_replicas=5)
    assert plan.replicas == {"a": 1, "b": 1} and plan.shortfall_fps == 0


def test_spread_follows_allocatable_cpu() -> None:
    pools = [Pool("avx512_vnni", 100, allocatable_cpu=300), Pool("avx2", 100, allocatable_cpu=100)]
    plan = plan_fleet(800, pools, utilization=1.0, min_replicas=0, max_replicas=100, placement="spread")
    assert plan.replicas == {"avx512_vnni": 6, "avx2": 2}


def test_spread_hands_overflow_to_pools_with_room() -> None:
    pools = [Pool("a", 100, allocatable_cpu=100), Pool("b", 100, allocatable_cpu=100)]
    plan = plan_fleet(800, pools, utilization=1.0, min_replicas=0, max_replicas=3, placement="spread")
    assert plan.replicas == {"a": 3, "b": 3} and plan.shortfall_fps == pytest.approx(200)
    plan = plan_fleet(700, [Pool("a", 100, 100), Pool("b", 500, 100)], utilization=1.0, min_replicas=0,
                      max_replicas=3, placement="spread")  # fmt: skip
    # Each gets 350 faces/s: a needs 4 (max 3), b 1; but 4 pods share 700 evenly, 175 each,
    # which overloads an "a" pod: b alone carries it with 2 replicas.
    assert plan.replicas == {"a": 0, "b": 2} and plan.shortfall_fps == 0


def test_no_pools_means_the_whole_demand_is_short() -> None:
    plan = plan_fleet(100, [], utilization=0.8, min_replicas=1, max_replicas=3)
    assert plan.replicas == {} and plan.shortfall_fps == 100


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="placement"):
        plan_fleet(1, [Pool("a", 1)], utilization=0.8, min_replicas=0, max_replicas=1, placement="pack")
    with pytest.raises(ValueError, match="min_replicas"):
        plan_fleet(1, [Pool("a", 1)], utilization=0.8, min_replicas=3, max_replicas=1)


@given(
    demand=st.floats(0, 1e5),
    fps=st.lists(st.floats(1, 5000), min_size=1, max_size=4),
    cpu=st.lists(st.floats(0, 512), min_size=4, max_size=4),
    utilization=st.floats(0.1, 1.0),
    bounds=st.tuples(st.integers(0, 5), st.integers(0, 40)),
    placement=st.sampled_from(["fill", "spread"]),
)
def test_invariants(demand: float, fps: list[float], cpu: list[float], utilization: float,
                    bounds: tuple[int, int], placement: str) -> None:  # fmt: skip
    low, extra = bounds
    high = max(1, low + extra)
    pools = [Pool(f"t{i}", value, cpu[i]) for i, value in enumerate(fps)]
    plan = plan_fleet(
        demand, pools, utilization=utilization, min_replicas=low, max_replicas=high, placement=placement
    )
    assert all(replicas <= high for replicas in plan.replicas.values())
    active = [p for p in pools if plan.replicas[p.isa] > 0]
    slowest = min((p.fps_per_replica * utilization for p in active), default=0.0)
    capacity = plan.total_replicas * slowest
    assert plan.capacity_fps == pytest.approx(capacity)
    assert plan.shortfall_fps == pytest.approx(max(0.0, demand - capacity), abs=1e-6)
    if plan.shortfall_fps == 0 and plan.total_replicas > 0:
        # The Service spreads evenly: no pod gets more than its measured FPS x utilization.
        assert demand / plan.total_replicas <= slowest * (1 + 1e-9)
    if low > 0:
        assert all(replicas >= low for replicas in plan.replicas.values())
    if placement == "fill" and plan.shortfall_fps == 0 and len(active) == 1:
        # Fill never over-provisions one pool: one replica less would not do.
        assert (plan.total_replicas - 1) * slowest < demand * (1 + 1e-9) or plan.total_replicas == low
