"""An operator-wide cap on running quantization Jobs, with a queue in a stable order.

A Helm upgrade that changes the toolkit image makes every model want new Jobs at once; the
cluster should see at most ``cap`` of them running, the rest started one by one as slots free,
oldest model first. This module only decides; the reconciler feeds it what runs (from its
cache of Jobs) and asks it, for each Job a plan wants to create, whether to create it now.

- A Job is *running* while the cluster holds it unfinished (:meth:`JobQueue.sync_running`).
- A request that gets a slot *reserves* it until the Job is seen running, the model withdraws
  the request, or :attr:`~JobQueue.reservation_seconds` pass (the create may have failed).
- Every other request *waits*. Waiting requests are ordered by the ``order`` their model gives
  (the planner: creation time, namespace, name, tier), the same on every operator restart;
  a free slot goes to the head of the queue only: a later model whose reconcile happens to run
  first is told its place, it does not jump ahead.
- After a restart the queue forgets who was waiting. Until every model known at start-up has
  been planned once (:meth:`JobQueue.expect`, :meth:`JobQueue.planned`), nothing new starts,
  so the first reconciles, in whatever order they come, cannot take the slots from older models.
- A waiting request that its model has not repeated for :attr:`~JobQueue.stale_seconds` is
  dropped (a model deleted while the operator missed the event must not block the queue).

Names are opaque strings: Job names are unique only within a namespace, so the caller qualifies
them (``namespace/name``). Pure: imports neither kopf nor kubernetes.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ModelKey = tuple[str, str]  # (namespace, name)

#: A Job is finished once one of these conditions is "True" (SuccessCriteriaMet: Kubernetes 1.31+
#: sets it before Complete, while the last pods terminate).
FINISHED_CONDITIONS = frozenset({"Complete", "SuccessCriteriaMet", "Failed"})

#: Seconds a slot stays reserved for a Job that was allowed to start but is not seen running.
RESERVATION_SECONDS = 60.0
#: Seconds before a waiting request that was not asked again is dropped.
STALE_SECONDS = 900.0
#: Seconds the queue waits, after a restart, for the models known then to be planned once.
SETTLE_SECONDS = 120.0
#: Stale waiting requests are looked for at most this often (the look is linear in the queue).
_SWEEP_SECONDS = 10.0


def job_finished(job: Mapping[str, Any]) -> bool:
    """Whether a Job object (or its summary: metadata and status) has finished."""
    return any(
        isinstance(item, Mapping) and item.get("type") in FINISHED_CONDITIONS and item.get("status") == "True"
        for item in (job.get("status") or {}).get("conditions") or ()
    )


@dataclass
class _Waiting:
    model: ModelKey
    sort_key: tuple[tuple[str, ...], str]
    asked_at: float


class JobQueue:
    def __init__(
        self,
        cap: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        reservation_seconds: float = RESERVATION_SECONDS,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        """``cap`` <= 0: no limit (every request starts at once and nothing is recorded)."""
        self.cap = cap
        self.clock = clock
        self.reservation_seconds = reservation_seconds
        self.stale_seconds = stale_seconds
        self._running: frozenset[str] = frozenset()
        #: job -> (model, until): allowed to start, not seen running yet.
        self._reserved: dict[str, tuple[ModelKey, float]] = {}
        self._waiting: dict[str, _Waiting] = {}
        #: The waiting requests' sort keys, (order, job), sorted: the queue.
        self._queue: list[tuple[tuple[str, ...], str]] = []
        self._expected: set[ModelKey] = set()
        self._settle_until = 0.0
        self._swept_at = clock()

    @property
    def limited(self) -> bool:
        return self.cap > 0

    # -- what the cluster runs ---------------------------------------------------------------------

    def sync_running(self, running: Iterable[str]) -> None:
        """The Jobs that the cluster holds unfinished, all of them (not only one model's).

        A reserved or waiting Job seen here counts as running from now on."""
        self._running = frozenset(running)
        if not self.limited:
            return
        for job in self._running.intersection(self._reserved):
            del self._reserved[job]
        for job in self._running.intersection(self._waiting):
            self._drop_waiting(job)

    # -- start-up ------------------------------------------------------------------------------

    def expect(self, models: Iterable[ModelKey], *, within: float = SETTLE_SECONDS) -> None:
        """After a restart: ``models`` may each want a Job ahead of anyone. Until each one was
        :meth:`planned` (or ``within`` seconds pass), a request starts only if no other of them
        is left."""
        self._expected = set(models)
        self._settle_until = self.clock() + within

    def planned(self, model: ModelKey) -> None:
        """``model`` was planned (or found gone): everything it wants is requested by now."""
        self._expected.discard(model)

    @property
    def settling(self) -> bool:
        return bool(self._expected) and self.clock() < self._settle_until

    # -- requests ------------------------------------------------------------------------------

    def request(self, job: str, *, model: ModelKey, order: tuple[str, ...]) -> int:
        """0: start ``job`` now (its slot is reserved); n > 0: it waits, n-th in line (1 = next)."""
        if not self.limited:
            return 0
        now = self.clock()
        self._expire(now)
        if job in self._running or job in self._reserved:
            return 0
        sort_key = (tuple(order), job)
        entry = self._waiting.get(job)
        if entry is not None and entry.sort_key != sort_key:
            self._drop_waiting(job)
            entry = None
        if entry is None:
            entry = _Waiting(model=model, sort_key=sort_key, asked_at=now)
            self._waiting[job] = entry
            bisect.insort(self._queue, sort_key)
        entry.asked_at = now
        ahead = bisect.bisect_left(self._queue, sort_key)
        free = self._free()
        others_expected = len(self._expected) - (model in self._expected)
        if ahead < free and not (others_expected and now < self._settle_until):
            self._drop_waiting(job)
            self._reserved[job] = (model, now + self.reservation_seconds)
            return 0
        return max(1, ahead + 1 - free)

    def withdraw(self, model: ModelKey, keep: Collection[str] = ()) -> None:
        """Drop ``model``'s waiting requests and reservations except those of the Jobs in ``keep``
        (what its latest plan created or queued; nothing for a deleted model)."""
        if not self.limited:
            return
        for job, (owner, _) in list(self._reserved.items()):
            if owner == model and job not in keep:
                del self._reserved[job]
        for job, entry in list(self._waiting.items()):
            if entry.model == model and job not in keep:
                self._drop_waiting(job)

    # -- what is going on ---------------------------------------------------------------------

    def waiting_models(self, limit: int | None = None) -> list[ModelKey]:
        """Models with waiting requests, in queue order (each once, at its first request's place);
        the first ``limit`` of them only, if given."""
        self._expire(self.clock())
        seen: dict[ModelKey, None] = {}
        for _, job in self._queue:
            if limit is not None and len(seen) >= limit:
                break
            seen.setdefault(self._waiting[job].model, None)
        return list(seen)

    def free_slots(self) -> int | None:
        """Slots not taken by running or reserved Jobs; None without a cap."""
        if not self.limited:
            return None
        self._expire(self.clock())
        return self._free()

    @property
    def running(self) -> int:
        """Jobs running in the cluster (whether or not this queue started them)."""
        return len(self._running)

    @property
    def reserved(self) -> int:
        return len(self._reserved)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- internals -----------------------------------------------------------------------------

    def _free(self) -> int:
        return max(0, self.cap - len(self._running) - len(self._reserved))

    def _drop_waiting(self, job: str) -> None:
        entry = self._waiting.pop(job)
        index = bisect.bisect_left(self._queue, entry.sort_key)
        del self._queue[index]

    def _expire(self, now: float) -> None:
        for job, (_, until) in list(self._reserved.items()):
            if until <= now:
                del self._reserved[job]
        if now - self._swept_at >= _SWEEP_SECONDS:
            self._swept_at = now
            for job, entry in list(self._waiting.items()):
                if now - entry.asked_at >= self.stale_seconds:
                    self._drop_waiting(job)
