"""Conditions keep their lastTransitionTime until their status changes."""

from __future__ import annotations

from collections.abc import Sequence

from qfleet.fleet import conditions as c
from qfleet.fleet.status import Condition, condition_to_dict


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    found = c.find(conditions, type_)
    return found is not None and found.status == c.TRUE


def test_transition_time_moves_only_with_the_status() -> None:
    first = c.condition([], c.TYPE_READY, c.FALSE, "NothingServed", "m", generation=1, now="t0")
    assert condition_to_dict(first) == {
        "type": "Ready", "status": "False", "reason": "NothingServed", "message": "m",
        "lastTransitionTime": "t0", "observedGeneration": 1,
    }  # fmt: skip
    same = c.condition([first], c.TYPE_READY, c.FALSE, "RollingOut", "other", generation=2, now="t1")
    assert same.last_transition_time == "t0" and same.reason == "RollingOut" and same.observed_generation == 2
    flipped = c.condition([same], c.TYPE_READY, c.TRUE, "AllTargetsServing", "ok", generation=2, now="t2")
    assert flipped.last_transition_time == "t2"
    assert is_true([flipped], c.TYPE_READY) and not is_true([same], c.TYPE_READY)


def test_vocabulary_is_complete() -> None:
    assert set(c.PHASES) == {"Pending", "Quantizing", "Ready", "Degraded", "Blocked", "Failed"}
    assert set(c.CONDITION_TYPES) == {
        "Ready", "Progressing", "Degraded", "AccuracyGate", "NodesAvailable", "CapacityInsufficient",
        "RolledBack", "Reconciling", "Stalled",
    }  # fmt: skip
