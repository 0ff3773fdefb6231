"""A counting semaphore whose waiters go in order of priority, then of arrival.

At start-up every model asks for a reconcile at once; a user's change made meanwhile must not
queue behind thousands of them. Reconciles hold one of a few slots (the API server gains nothing
from more requests in flight), and a freed slot goes to the most urgent waiter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: A user changed the model: the handler waits for this reconcile.
URGENT = 0
#: A child, a node or a timer asks for another look.
NORMAL = 1
#: Start-up (resume) and the periodic resync: every model, no hurry.
BACKGROUND = 2


class PrioritySlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    @property
    def busy(self) -> int:
        return self.limit - self._free

    @asynccontextmanager
    async def hold(self, priority: int) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over just before the cancellation
            else:
                future.cancel()  # skipped when a slot is handed out
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes to this waiter
                return
        self._free += 1
