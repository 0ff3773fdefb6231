"""The operator-wide cap on running quantization Jobs: who starts now, who waits, in which order."""

from __future__ import annotations

import pytest

from qfleet.fleet.job_queue import JobQueue, job_finished


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def order(created: str, name: str, tier: int = 0, namespace: str = "ns") -> tuple[str, ...]:
    return (created, namespace, name, str(tier))


def ask(queue: JobQueue, model: str, created: str, tier: int = 0) -> int:
    return queue.request(f"ns/{model}-{tier}", model=("ns", model), order=order(created, model, tier))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_up_to_the_cap_start_then_the_rest_wait_in_line(clock: Clock) -> None:
    queue = JobQueue(2, clock=clock)
    assert ask(queue, "a", "2030-01-01") == 0
    assert ask(queue, "b", "2030-01-02") == 0
    assert queue.free_slots() == 0
    assert ask(queue, "c", "2030-01-03") == 1
    assert ask(queue, "d", "2030-01-04") == 2
    assert queue.waiting_models() == [("ns", "c"), ("ns", "d")]
    assert (queue.running, queue.reserved, queue.queued) == (0, 2, 2)


def test_asking_again_gives_the_same_answer(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    assert ask(queue, "a", "2030-01-01") == 0
    assert ask(queue, "a", "2030-01-01") == 0  # reserved: still yes, no second slot
    assert queue.free_slots() == 0
    assert ask(queue, "b", "2030-01-02") == 1
    assert ask(queue, "b", "2030-01-02") == 1
    assert queue.queued == 1


def test_a_running_job_is_a_yes_and_takes_a_slot(clock: Clock) -> None:
    queue = JobQueue(2, clock=clock)
    queue.sync_running(["ns/a-0", "other/x-0"])
    assert queue.free_slots() == 0
    assert ask(queue, "a", "2030-01-01") == 0  # already running (the cache showed it)
    assert ask(queue, "b", "2030-01-02") == 1


def test_a_reservation_becomes_running_when_the_job_is_seen(clock: Clock) -> None:
    queue = JobQueue(2, clock=clock)
    assert ask(queue, "a", "2030-01-01") == 0
    queue.sync_running(["ns/a-0"])
    assert (queue.running, queue.reserved, queue.free_slots()) == (1, 0, 1)
    queue.sync_running([])  # finished
    assert queue.free_slots() == 2


def test_when_a_slot_frees_only_the_head_of_the_queue_takes_it(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.sync_running(["ns/old-0"])
    assert ask(queue, "a", "2030-01-01") == 1
    assert ask(queue, "c", "2030-01-03") == 2
    queue.sync_running([])  # the old Job finished: one slot
    # The later model happens to be reconciled first: it stays behind the head.
    assert ask(queue, "c", "2030-01-03") == 1
    assert ask(queue, "b", "2030-01-02") == 1  # a newcomer older than c goes ahead of it
    assert queue.waiting_models() == [("ns", "a"), ("ns", "b"), ("ns", "c")]
    assert ask(queue, "a", "2030-01-01") == 0
    assert queue.waiting_models() == [("ns", "b"), ("ns", "c")]
    assert ask(queue, "c", "2030-01-03") == 2


def test_two_free_slots_go_to_the_first_two(clock: Clock) -> None:
    queue = JobQueue(2, clock=clock)
    queue.sync_running(["ns/x-0", "ns/y-0"])
    for name, created in [("c", "03"), ("a", "01"), ("b", "02")]:
        assert ask(queue, name, created) > 0
    queue.sync_running([])
    assert ask(queue, "c", "03") == 1
    assert ask(queue, "b", "02") == 0  # second in line, two slots
    assert ask(queue, "c", "03") == 1
    assert ask(queue, "a", "01") == 0
    assert queue.free_slots() == 0 and queue.waiting_models() == [("ns", "c")]


def test_the_order_does_not_depend_on_who_asked_first(clock: Clock) -> None:
    requests = [(f"m{i:02d}", f"2030-01-{i % 28 + 1:02d}T{i:02d}", i % 3) for i in range(30)]
    queues = []
    for permutation in (requests, list(reversed(requests)), requests[10:] + requests[:10]):
        queue = JobQueue(1, clock=clock)
        queue.sync_running(["ns/busy"])
        for name, created, tier in permutation:
            ask(queue, name, created, tier)
        queues.append(queue.waiting_models())
    assert queues[0] == queues[1] == queues[2]
    expected = sorted(requests, key=lambda r: (r[1], "ns", r[0], str(r[2])))
    assert queues[0] == [("ns", name) for name, _, _ in expected]


def test_a_models_tiers_queue_by_tier_index(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.sync_running(["ns/busy"])
    assert ask(queue, "a", "01", tier=2) == 1
    assert ask(queue, "a", "01", tier=0) == 1
    assert ask(queue, "b", "00", tier=5) == 1
    assert ask(queue, "a", "01", tier=2) == 3


def test_a_reservation_expires_when_the_job_never_shows_up(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock, reservation_seconds=60)
    assert ask(queue, "a", "01") == 0  # ... and the create failed
    assert ask(queue, "b", "02") == 1
    clock.now += 59
    assert queue.free_slots() == 0
    clock.now += 1
    assert queue.free_slots() == 1
    assert ask(queue, "b", "02") == 0


def test_withdraw_keeps_only_what_the_latest_plan_asked_for(clock: Clock) -> None:
    queue = JobQueue(2, clock=clock)
    assert ask(queue, "a", "01", tier=0) == 0
    assert ask(queue, "a", "01", tier=1) == 0
    assert ask(queue, "a", "01", tier=2) == 1
    assert ask(queue, "b", "02") == 2
    queue.withdraw(("ns", "a"), keep={"ns/a-1"})  # the spec dropped tiers 0 and 2
    assert queue.free_slots() == 1
    assert queue.waiting_models() == [("ns", "b")]
    assert ask(queue, "b", "02") == 0
    queue.withdraw(("ns", "a"))  # deleted
    queue.withdraw(("ns", "b"))
    assert queue.free_slots() == 2 and queue.waiting_models() == []


def test_withdraw_leaves_other_models_alone(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    assert ask(queue, "a", "01") == 0
    assert ask(queue, "b", "02") == 1
    queue.withdraw(("other", "a"))
    queue.withdraw(("ns", "c"))
    assert queue.free_slots() == 0 and queue.waiting_models() == [("ns", "b")]


def test_a_job_seen_running_leaves_the_queue(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.sync_running(["ns/x"])
    assert ask(queue, "a", "01") == 1
    queue.sync_running(["ns/a-0"])  # someone else (a previous operator) started it
    assert queue.waiting_models() == []
    assert ask(queue, "a", "01") == 0


def test_a_request_not_asked_again_goes_stale(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock, stale_seconds=900)
    queue.sync_running(["ns/x"])
    assert ask(queue, "gone", "01") == 1  # its model was deleted while the operator was away
    clock.now += 600
    assert ask(queue, "b", "02") == 2
    clock.now += 600
    queue.sync_running([])
    assert queue.waiting_models() == [("ns", "b")]
    assert ask(queue, "b", "02") == 0


def test_without_a_cap_everything_starts(clock: Clock) -> None:
    for cap in (0, -1):
        queue = JobQueue(cap, clock=clock)
        queue.sync_running([f"ns/x{i}" for i in range(100)])
        assert all(ask(queue, f"m{i}", "01") == 0 for i in range(100))
        assert queue.free_slots() is None
        assert queue.waiting_models() == [] and queue.queued == 0


def test_after_a_restart_nothing_starts_before_every_known_model_was_planned(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.expect([("ns", "a"), ("ns", "b"), ("ns", "c")], within=120)
    assert queue.settling
    # The newest model is reconciled first: a free slot, but older models may still ask.
    assert ask(queue, "c", "03") == 1
    queue.planned(("ns", "c"))
    assert ask(queue, "a", "01") == 1  # b has not been planned: it could be older still
    queue.planned(("ns", "a"))
    assert ask(queue, "b", "02") == 1  # a is ahead of b, the only unplanned model is b itself
    queue.planned(("ns", "b"))
    assert not queue.settling
    assert queue.waiting_models() == [("ns", "a"), ("ns", "b"), ("ns", "c")]
    assert ask(queue, "c", "03") == 2  # a takes the slot, then b is next
    assert ask(queue, "a", "01") == 0


def test_a_lone_model_starts_at_once_after_a_restart(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.expect([("ns", "a")])
    assert ask(queue, "a", "01") == 0


def test_settling_ends_after_its_time(clock: Clock) -> None:
    queue = JobQueue(1, clock=clock)
    queue.expect([("ns", "a"), ("ns", "never")], within=120)
    assert ask(queue, "a", "01") == 1
    clock.now += 120
    assert not queue.settling
    assert ask(queue, "a", "01") == 0


@pytest.mark.parametrize(
    ("conditions", "finished"),
    [
        ([], False),
        ([{"type": "Suspended", "status": "False"}], False),
        ([{"type": "Complete", "status": "False"}], False),
        ([{"type": "Complete", "status": "True"}], True),
        ([{"type": "Failed", "status": "True"}], True),
        ([{"type": "SuccessCriteriaMet", "status": "True"}], True),
    ],
)
def test_job_finished(conditions: list[dict[str, str]], finished: bool) -> None:
    assert job_finished({"metadata": {"name": "j"}, "status": {"conditions": conditions}}) is finished
    assert job_finished({"metadata": {"name": "j"}}) is False
