"""A replica that starts leading -- at start-up, or after kopf's peering resumed it because the
leader died -- resumes the fleet from its own LIST, in its priority slots."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from qfleet.fleet import names
from qfleet.operator import handlers
from qfleet.operator.cache import ClusterCache
from qfleet.operator.handlers import FollowKopfPeering, kopf_drives_the_models, peering_priority
from qfleet.operator.kube import ApiError
from qfleet.operator.slots import BACKGROUND, URGENT

MODELS = f"/apis/{names.API_VERSION}/namespaces/ns/{names.PLURAL}"


def model(name: str, generation: int, observed: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "generation": generation, "resourceVersion": "10"},
        "status": {"observedGeneration": observed},
    }


class ListingApi:
    def __init__(self, models: list[dict[str, Any]]) -> None:
        self.models = models
        self.lists = 0

    async def list_pages(self, path: str) -> AsyncIterator[tuple[list[dict[str, Any]], str | None]]:
        self.lists += 1
        yield (self.models if path == MODELS else []), "20"


class Triggers:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}

    def trigger(self, namespace: str, name: str, *, delay: float, priority: int) -> None:
        self.calls[(namespace, name)] = priority


async def take_over(
    cache: ClusterCache, api: ListingApi, on_listed: Any = lambda: None, triggers: Triggers | None = None
) -> Triggers:
    triggers = triggers or Triggers()
    memo = kopf.Memo(namespaces=["ns"])
    await handlers._resume_fleet(
        cache,
        api,  # type: ignore[arg-type]
        triggers,  # type: ignore[arg-type]
        memo,
        logging.getLogger("test"),
        on_listed=on_listed,
    )
    return triggers


class FailingListApi(ListingApi):
    """Refuses the first ``failures`` LISTs (the API server restarting, say)."""

    def __init__(self, models: list[dict[str, Any]], failures: int) -> None:
        super().__init__(models)
        self.failures = failures

    async def list_pages(self, path: str) -> AsyncIterator[tuple[list[dict[str, Any]], str | None]]:
        if self.failures:
            self.failures -= 1
            raise ApiError(503, "ServiceUnavailable", "etcd is restarting")
        async for page in super().list_pages(path):
            yield page


async def test_a_replica_with_peering_lists_when_it_takes_over_and_until_the_api_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "retry_delay", lambda failures: 0.0)
    cache = ClusterCache()  # nothing listed at start-up: it stood by
    api = FailingListApi([model("m", 2, 1)], failures=2)
    triggers = Triggers()
    seen: list[int] = []  # the triggers asked for when the caches were listed
    await take_over(cache, api, on_listed=lambda: seen.append(len(triggers.calls)), triggers=triggers)
    assert seen == [0]  # the caches are ready before any reconcile is asked for
    assert triggers.calls == {("ns", "m"): URGENT}
    assert api.failures == 0


async def test_a_standby_lists_afresh_and_reconciles_every_model_unhandled_changes_first() -> None:
    cache = ClusterCache()
    api = ListingApi([model("same", 1, 1)])
    await cache.snapshot(api, ["ns"])  # type: ignore[arg-type]
    cache._listed_at = 0.0  # its start-up LIST, long ago: it has been standing by
    # Meanwhile the leader handled "same", a model was created, one changed and no one led.
    api.models = [model("same", 2, 2), model("changed", 5, 4), model("new", 1, 1)]
    lists = api.lists
    triggers = await take_over(cache, api)
    assert api.lists > lists  # listed afresh
    assert triggers.calls == {
        ("ns", "same"): BACKGROUND,
        ("ns", "changed"): URGENT,
        ("ns", "new"): BACKGROUND,
    }


async def test_a_replica_resumed_right_after_its_start_up_list_does_not_list_again() -> None:
    cache = ClusterCache()
    api = ListingApi([model("m", 1, 1)])
    await cache.snapshot(api, ["ns"])  # type: ignore[arg-type]
    lists = api.lists
    triggers = await take_over(cache, api)
    assert api.lists == lists and triggers.calls == {("ns", "m"): BACKGROUND}


def test_kopf_drives_the_models_only_where_the_operator_could_not_list_them() -> None:
    assert kopf_drives_the_models(memo=kopf.Memo(lists_the_fleet=False))
    assert not kopf_drives_the_models(memo=kopf.Memo(lists_the_fleet=True))


def test_kopf_resuming_the_replica_starts_the_takeover() -> None:
    resumed: list[bool] = []
    follower = FollowKopfPeering(leading=False, on_resumed=lambda: resumed.append(True))
    record = logging.LogRecord(
        "kopf", logging.INFO, "", 0, "Resuming operations after the pause.", None, None
    )
    follower.emit(record)
    assert follower.leading and resumed == [True]


def test_the_older_replica_outranks_a_newer_one_and_replicas_never_tie() -> None:
    """kopf pauses a replica that sees a peer of higher or equal priority: a standby that has just
    started must not take over from a working leader, and two replicas must never tie."""
    started = 1_800_000_000.0
    assert peering_priority(started) > peering_priority(started + 0.002)
    assert len({peering_priority(started) for _ in range(50)}) > 1  # the tie-break
    assert peering_priority(4_000_000_000.0) > 0 and peering_priority(started) < 2**53


def test_events_of_reconciles_before_kopf_called_any_handler_wait_for_its_queue(monkeypatch: Any) -> None:
    """The fleet's resume reconciles before kopf has called a handler (whose context holds kopf's
    event queue): those events are held, and posted from the first handler on."""
    from qfleet.fleet.planner import Event

    posted: list[str] = []
    monkeypatch.setattr(kopf, "event", lambda model, *, type, reason, message: posted.append(reason))
    events = handlers.KopfEvents(limit=2)
    for reason in ("QuantizationStarted", "Scaled", "Dropped"):
        events({"metadata": {"name": "m"}}, Event("Normal", reason, "..."))
    assert posted == []
    events.remember_context()  # kopf's first handler call
    assert posted == ["QuantizationStarted", "Scaled"]  # over the limit: dropped, and logged
    events({"metadata": {"name": "m"}}, Event("Normal", "Ready", "..."))
    assert posted[-1] == "Ready"


def test_when_kopf_begins_to_stop_the_replica_stops_working_at_once() -> None:
    """kopf withdraws its keep-alive as soon as it begins to stop, and the standby leads; its
    shutdown takes seconds more: the operator's own work stops at the first of them."""
    stopped: list[bool] = []
    follower = FollowKopfPeering(leading=True, on_stopping=lambda: stopped.append(True))

    def log(message: str) -> None:
        follower.emit(logging.LogRecord("kopf", logging.INFO, "", 0, message, None, None))

    log("Signal SIGTERM is received. Operator is stopping.")
    assert not follower.leading and follower.stopping and stopped == [True]
    log("Resuming operations after the pause.")  # never again, once stopping
    assert not follower.leading
