"""The operator's own watch of the models: a spec change is reconciled without waiting for kopf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from qfleet.operator.kube import ApiError
from qfleet.operator.spec_watch import Generations, SpecWatch

PATH = "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels"


def model(name: str, generation: int, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "generation": generation,
            "resourceVersion": str(version),
        }
    }


class WatchingApi:
    """Answers each watch with the next list of events, and a LIST with ``listed``."""

    def __init__(self, *streams: list[dict[str, Any]], listed: list[dict[str, Any]] | None = None) -> None:
        self.streams = list(streams)
        self.listed = listed or []
        self.watched_since: list[str] = []

    async def watch(self, path: str, since: str) -> AsyncIterator[dict[str, Any]]:
        assert path == PATH
        self.watched_since.append(since)
        for event in self.streams.pop(0):
            yield event

    async def list_collection(self, path: str) -> tuple[list[dict[str, Any]], str | None]:
        return self.listed, "900"


def watch_of(
    api: WatchingApi, generations: Generations, *, active: bool = True
) -> tuple[SpecWatch, list[Any]]:
    changed: list[Any] = []
    spec_watch = SpecWatch(api, PATH, "100", generations, changed.append, active=lambda: active)  # type: ignore[arg-type]
    return spec_watch, changed


def test_only_a_newer_generation_is_a_change() -> None:
    generations = Generations()
    assert generations.advanced("a", 1) is True  # not known before: a new model
    assert generations.advanced("a", 1) is False  # a status write or an annotation: same spec
    assert generations.advanced("a", 2) is True
    assert generations.advanced("a", 1) is False  # an older copy, delivered late
    assert generations.advanced("b", None) is False  # no generation: nothing to compare
    generations.forget("a")
    assert generations.advanced("a", 2) is True and len(generations) == 1


async def test_a_spec_change_is_reported_once_and_the_watch_goes_on_from_the_last_version() -> None:
    generations = Generations()
    generations.advanced(("ns", "m"), 1)  # as the start-up LIST saw it
    api = WatchingApi(
        [
            {"type": "MODIFIED", "object": model("m", 1, 101)},  # the operator's own status write
            {"type": "MODIFIED", "object": model("m", 2, 102)},  # the user's camera change
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
        ]
    )
    spec_watch, changed = watch_of(api, generations)
    await spec_watch._watch_once()
    assert changed == [("ns", "m")]
    assert spec_watch.since == "150"  # the next watch picks up there


async def test_a_standby_learns_the_generations_but_leaves_the_models_to_the_leader() -> None:
    generations = Generations()
    api = WatchingApi([{"type": "MODIFIED", "object": model("m", 2, 101)}])
    spec_watch, changed = watch_of(api, generations, active=False)
    await spec_watch._watch_once()
    assert changed == [] and generations.advanced(("ns", "m"), 2) is False


class Stop(BaseException):
    """Ends a test's watch: the watch itself goes on after any Exception."""


async def test_an_expired_version_lists_anew_and_reports_what_changed_in_the_gap() -> None:
    generations = Generations()
    generations.advanced(("ns", "kept"), 3)
    generations.advanced(("ns", "changed"), 1)
    api = WatchingApi(
        [{"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old"}}],
        listed=[model("kept", 3, 800), model("changed", 2, 850)],
    )
    spec_watch, changed = watch_of(api, generations)
    answers = [ApiError(410, "Gone", "too old")]  # the same, as the answer to the request

    plain_watch = api.watch
    watched_since: list[str] = []

    async def watch(path: str, since: str) -> AsyncIterator[dict[str, Any]]:
        watched_since.append(since)
        if len(watched_since) == 1:
            async for event in plain_watch(path, since):
                yield event
        elif answers:
            raise answers.pop()
        else:
            raise Stop

    api.watch = watch  # type: ignore[method-assign]
    with pytest.raises(Stop):
        await spec_watch.run_forever()
    assert changed == [("ns", "changed")]  # once: the second LIST finds nothing newer
    assert watched_since == ["100", "900", "900"]


async def test_a_broken_stream_lists_anew_and_the_watch_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the operator lists the fleet, kopf has no update handler behind this watch: an
    unexpected error (a malformed event) must not end it."""
    monkeypatch.setattr("qfleet.operator.spec_watch.RETRY_SECONDS", 0.0)
    generations = Generations()
    generations.advanced(("ns", "m"), 1)
    api = WatchingApi(listed=[model("m", 2, 850)])
    spec_watch, changed = watch_of(api, generations)
    watched_since: list[str] = []

    async def watch(path: str, since: str) -> AsyncIterator[dict[str, Any]]:
        watched_since.append(since)
        if len(watched_since) == 1:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        raise Stop
        yield {}  # an async generator, as the client's watch is

    api.watch = watch  # type: ignore[method-assign]
    with pytest.raises(Stop):
        await spec_watch.run_forever()
    assert changed == [("ns", "m")] and watched_since == ["100", "900"]


def test_a_model_created_again_under_a_deleted_ones_name_is_a_change() -> None:
    generations = Generations()
    generations.advanced(("ns", "m"), 3)
    spec_watch, changed = watch_of(WatchingApi(), generations)
    spec_watch.observe("ADDED", model("m", 1, 200))  # its deletion was not seen
    assert changed == [("ns", "m")]


async def test_a_deleted_model_is_forgotten_and_other_errors_end_the_stream() -> None:
    generations = Generations()
    generations.advanced(("ns", "m"), 4)
    api = WatchingApi(
        [
            {"type": "DELETED", "object": model("m", 4, 101)},
            {"type": "ERROR", "object": {"code": 500, "reason": "InternalError", "message": "etcd"}},
        ]
    )
    spec_watch, changed = watch_of(api, generations)
    with pytest.raises(ApiError) as failure:
        await spec_watch._watch_once()
    assert failure.value.status == 500 and changed == [] and len(generations) == 0


def test_the_operator_follows_kopf_peering_pauses_from_its_log() -> None:
    import logging

    from qfleet.operator.handlers import KOPF_PEERING_LOGGER, KOPF_RUNNING_LOGGER, _follow_peering

    peering = logging.getLogger(KOPF_PEERING_LOGGER)
    follower = _follow_peering("qfleet")
    try:
        assert follower.leading is False  # mandatory peering: kopf starts paused
        peering.info(
            "Resuming operations after the pause. Conflicting operators with the same priority are gone."
        )
        assert follower.leading is True
        peering.info("Pausing operations in favour of [<Peer b>].")
        assert follower.leading is False
        assert _follow_peering(None).leading is True  # standalone: always
        assert sum(isinstance(item, type(follower)) for item in peering.handlers) == 1
    finally:
        for logger in (peering, logging.getLogger(KOPF_RUNNING_LOGGER)):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
