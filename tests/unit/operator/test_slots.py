"""Priority slots: a freed slot goes to the most urgent waiter, then to the earliest."""

from __future__ import annotations

import asyncio

import pytest

from qfleet.operator.slots import BACKGROUND, NORMAL, URGENT, PrioritySlots


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_first() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def work(name: str, priority: int) -> None:
        async with slots.hold(priority):
            order.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(work("first", BACKGROUND))
    await asyncio.sleep(0)
    waiters = [
        asyncio.create_task(work(name, priority))
        for name, priority in (("b1", BACKGROUND), ("b2", BACKGROUND), ("n", NORMAL), ("u", URGENT))
    ]
    await asyncio.sleep(0)
    assert slots.busy == 1 and slots.waiting == 4
    release.set()
    await asyncio.gather(first, *waiters)
    assert order == ["first", "u", "n", "b1", "b2"]
    assert slots.busy == 0 and slots.waiting == 0


async def test_a_cancelled_waiter_gives_up_its_place_without_losing_a_slot() -> None:
    slots = PrioritySlots(1)
    release = asyncio.Event()

    async def hold_until_released() -> None:
        async with slots.hold(URGENT):
            await release.wait()

    holder = asyncio.create_task(hold_until_released())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold_until_released())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert slots.busy == 0
    async with slots.hold(BACKGROUND):  # the slot is free again
        assert slots.busy == 1


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="limit"):
        PrioritySlots(0)
