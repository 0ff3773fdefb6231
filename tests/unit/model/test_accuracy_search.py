"""The revert search on made-up drops: it finds the fewest operations, stays within its budget,
and says why it stopped."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from qfleet.model.accuracy_search import (
    MAX_ITERATIONS,
    MET,
    TIMEOUT,
    UNREACHABLE,
    search_reverts,
)


def _drops(needed: int, *, subset_bias: float = 0.0) -> Callable[[int, bool], float]:
    """Drop 0.02 until ``needed`` operations are in float, 0 from there (the subset reads
    ``subset_bias`` lower: a lucky subset)."""

    def evaluate(count: int, all_pairs: bool) -> float:
        drop = 0.02 if count < needed else 0.0
        return drop if all_pairs else drop - subset_bias

    return evaluate


@pytest.mark.parametrize("needed", [1, 2, 3, 5, 17, 64])
def test_finds_the_fewest_operations_in_a_logarithmic_number_of_validations(needed: int) -> None:
    result = search_reverts(
        64, _drops(needed), max_drop=0.005, subset_is_all=False, max_iterations=100, timeout_s=None
    )
    assert result.outcome == MET
    assert result.reverted == needed
    assert result.drop == 0.0 and result.all_pairs
    assert result.iterations <= 2 * math.ceil(math.log2(64)) + 1
    assert result.trials[-1].all_pairs and result.trials[-1].reverted == needed  # confirmed


def test_a_subset_that_flatters_is_caught_by_the_confirmation() -> None:
    def evaluate(count: int, all_pairs: bool) -> float:
        if count >= 6:
            return 0.0
        if count >= 4 and not all_pairs:  # 4 and 5 pass on the subset only
            return 0.0
        return 0.02

    result = search_reverts(
        16, evaluate, max_drop=0.005, subset_is_all=False, max_iterations=50, timeout_s=None
    )
    assert result.outcome == MET and result.reverted == 6
    confirmations = [trial.reverted for trial in result.trials if trial.all_pairs]
    assert confirmations == [4, 5, 6]  # each lucky candidate is confirmed (and refused) once


def test_every_operation_in_float_still_missing_is_reported_with_the_best_candidate() -> None:
    def evaluate(count: int, all_pairs: bool) -> float:
        return 0.03 - count * 0.001  # never within 0.005 with 8 operations

    result = search_reverts(
        8, evaluate, max_drop=0.005, subset_is_all=True, max_iterations=50, timeout_s=None
    )
    assert result.outcome == UNREACHABLE
    assert result.reverted == 8 and result.drop == pytest.approx(0.022)


def test_the_iteration_budget_stops_the_search_with_the_best_so_far() -> None:
    result = search_reverts(
        64, _drops(40), max_drop=0.005, subset_is_all=True, max_iterations=3, timeout_s=None
    )
    assert result.outcome == MAX_ITERATIONS
    assert result.iterations == 3
    assert [trial.reverted for trial in result.trials] == [1, 2, 4]
    assert result.drop == 0.02  # the best measured, though above max_drop


def test_the_timeout_counts_time_spent_before_the_search() -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    def evaluate(count: int, all_pairs: bool) -> float:
        now[0] += 10.0  # each validation takes 10 s
        return 0.02

    result = search_reverts(
        64,
        evaluate,
        max_drop=0.005,
        subset_is_all=True,
        max_iterations=50,
        timeout_s=45.0,
        clock=clock,
        started=80.0,
    )
    assert result.outcome == TIMEOUT
    assert result.iterations == 3  # 20 s of ranking, then validations at 100, 110, 120 (130 > 125)


def test_nothing_measured_means_plain_int8() -> None:
    result = search_reverts(
        8,
        _drops(1),
        max_drop=0.005,
        subset_is_all=True,
        max_iterations=50,
        timeout_s=1.0,
        clock=lambda: 10.0,
        started=0.0,
    )
    assert result.outcome == TIMEOUT and result.reverted == 0 and result.drop is None
