"""Which operations to return to float: a bounded search over a ranked list, without OpenVINO.

The operations come ranked, most harmful quantization first; reverting the top ``k`` of them is
candidate ``k``. The search grows ``k`` (1, 2, 4, ...) until a candidate keeps the drop within
``max_drop`` on the pair subset, bisects down to the smallest such ``k``, and confirms that one
on every pair. A confirmation that fails (the subset was lucky) resumes the growth above it.
Growth and bisection need about ``2 log2(n)`` validations for ``n`` operations, so the search
is bounded by construction; the budget (validations, seconds) bounds it for the user.

When the budget runs out, or reverting every ranked operation still misses ``max_drop``, the
result is the candidate with the smallest drop measured (a drop on all pairs preferred over one
on the subset) and says why it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Why the search stopped.
MET = "met"  # a candidate keeps the drop within max_drop on every pair
NOT_NEEDED = "not_needed"  # plain INT8 already does
UNREACHABLE = "unreachable"  # reverting every ranked operation still misses max_drop
MAX_ITERATIONS = "max_iterations"
TIMEOUT = "timeout"
OUTCOMES = (MET, NOT_NEEDED, UNREACHABLE, MAX_ITERATIONS, TIMEOUT)


@dataclass(frozen=True)
class Trial:
    """One validation of candidate ``reverted`` (the top-``reverted`` operations in float)."""

    reverted: int
    drop: float
    #: Measured on every pair (else on the subset).
    all_pairs: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "reverted": self.reverted,
            "drop": round(self.drop, 6),
            "pairs": "all" if self.all_pairs else "subset",
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SearchResult:
    outcome: str
    #: The candidate chosen: how many of the ranked operations go back to float.
    reverted: int
    #: Its drop, on every pair when ``all_pairs`` (else on the subset; None: plain INT8, known).
    drop: float | None
    all_pairs: bool
    trials: list[Trial] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return len(self.trials)


class _BudgetSpent(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


#: evaluate(k, all_pairs) -> drop of candidate k, on every pair or on the subset.
Evaluate = Callable[[int, bool], float]


def search_reverts(
    candidates: int,
    evaluate: Evaluate,
    *,
    max_drop: float,
    subset_is_all: bool,
    max_iterations: int,
    timeout_s: float | None,
    clock: Callable[[], float] = time.monotonic,
    started: float | None = None,
) -> SearchResult:
    """Search the smallest ``k`` <= ``candidates`` whose candidate keeps the drop <= ``max_drop``.

    Candidate 0 (plain INT8) is known to miss it. ``started`` is when the budget's clock started
    (default: now), so time spent before the search (ranking) counts against ``timeout_s``.
    """
    start = clock() if started is None else started
    trials: list[Trial] = []

    def measure(count: int, all_pairs: bool) -> bool:
        if len(trials) >= max_iterations:
            raise _BudgetSpent(MAX_ITERATIONS)
        if timeout_s is not None and clock() - start >= timeout_s:
            raise _BudgetSpent(TIMEOUT)
        before = clock()
        drop = evaluate(count, all_pairs or subset_is_all)
        trials.append(Trial(count, drop, all_pairs or subset_is_all, clock() - before))
        return drop <= max_drop

    failing = 0  # the largest count known to miss max_drop
    try:
        while failing < candidates:
            passing: int | None = None
            while passing is None:  # grow: 1, 2, 4, ... above the last failure
                count = min(candidates, max(failing + 1, 2 * failing))
                if measure(count, False):
                    passing = count
                elif count == candidates:
                    return _best(UNREACHABLE, trials)
                else:
                    failing = count
            while passing - failing > 1:  # bisect to the smallest passing count
                middle = (failing + passing) // 2
                if measure(middle, False):
                    passing = middle
                else:
                    failing = middle
            if subset_is_all or measure(passing, True):
                return SearchResult(MET, passing, trials[-1].drop, True, trials)
            failing = passing  # the subset was lucky: grow above it
        return _best(UNREACHABLE, trials)
    except _BudgetSpent as spent:
        return _best(spent.outcome, trials)


def _best(outcome: str, trials: list[Trial]) -> SearchResult:
    """The candidate with the smallest drop measured; plain INT8 when none was measured."""
    if not trials:
        return SearchResult(outcome, 0, None, True, trials)
    confirmed = [trial for trial in trials if trial.all_pairs]
    pool = confirmed or trials
    best = min(pool, key=lambda trial: (trial.drop, trial.reverted))
    return SearchResult(outcome, best.reverted, best.drop, best.all_pairs, trials)
