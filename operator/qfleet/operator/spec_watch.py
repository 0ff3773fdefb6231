"""A change to a model's spec reaches its reconcile without waiting for kopf.

kopf lists every model and hands each to its worker before it opens its watch, and its
watcher takes one listed object per turn of the event loop, a turn that the resume of the fleet
makes long: with 3000 models (500 nodes, 2 cores) its listing took 27 s, and a camera change made
meanwhile reached the operator only after it -- 23-35 s late (issue 16). So the operator watches
the models itself, from the resourceVersion of its own LIST: a model whose
``metadata.generation`` moves past the one known (the API server counts every spec change
there, and nothing else), or that is created, is reconciled at once, ahead of the fleet's resume.

Where the operator lists the fleet, this watch is what turns spec changes into reconciles: kopf's
create and update handlers are not selected there (each change cost kopf a handler cycle, a PATCH
of its diff base on the model and one more event to process; see the handlers module). So the
watch never gives up: an expired resourceVersion lists the models again, and any error is retried
with a growing pause. What it could still miss (a deletion and re-creation hidden in a relist) the
operator's resync reconciles every few minutes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from qfleet.operator.kube import ApiError, KubeApi

log = logging.getLogger("qfleet.operator")

#: After a failed watch (API unavailable), wait this long before the next one, doubling to the cap.
RETRY_SECONDS = 1.0
RETRY_CAP_SECONDS = 30.0


class Generations:
    """The newest ``metadata.generation`` seen per model: which events are spec changes.

    Not the cache's models index, though that holds the generation too: the cache counts a
    model as known once kopf has reported it (a standby's periodic resync reconciles only
    those), and this watch runs on a standby as well, where kopf reports nothing.
    """

    def __init__(self) -> None:
        self._known: dict[Hashable, int] = {}

    def advanced(self, key: Hashable, generation: Any) -> bool:
        """Record ``generation`` for ``key``; True when it is newer than the one known (a spec
        change since, or a model not known before)."""
        if not isinstance(generation, int):
            return False
        known = self._known.get(key)
        if known is not None and generation <= known:
            return False
        self._known[key] = generation
        return True

    def forget(self, key: Hashable) -> None:
        self._known.pop(key, None)

    def __len__(self) -> int:
        return len(self._known)


def model_key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def generation_of(body: Mapping[str, Any]) -> Any:
    return (body.get("metadata") or {}).get("generation")


class SpecWatch:
    """Watch one collection of models; call ``on_change(key)`` for each spec change while
    ``active()`` (a standby replica watches too, so that it knows the generations when it leads,
    but leaves the models to the leader)."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        since: str,
        generations: Generations,
        on_change: Callable[[tuple[str, str]], None],
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.api = api
        self.path = path
        self.since = since
        self.generations = generations
        self.on_change = on_change
        self.active = active

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One model, from an event or a LIST (``event_type`` None)."""
        key = model_key(body)
        if event_type in ("DELETED", "ADDED"):  # ADDED: maybe a new model of a deleted one's name
            self.generations.forget(key)
        if event_type == "DELETED":
            return
        if self.generations.advanced(key, generation_of(body)) and self.active():
            self.on_change(key)

    async def run_forever(self) -> None:
        failures = 0
        expired = False
        while True:
            try:
                if expired:
                    await self._relist()
                    expired = False
                await self._watch_once()
                failures = 0
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.status == 410:  # the version expired: list anew
                    expired = True
                    continue
                failures += 1
                delay = min(RETRY_CAP_SECONDS, RETRY_SECONDS * 2 ** min(failures - 1, 8))
                if isinstance(exc, ApiError):
                    log.warning("watch of the models' specs failed (%s); again in %.0f s", exc, delay)
                else:  # a malformed event, say: the watch goes on, from a fresh LIST
                    log.exception("watch of the models' specs broke; listing again in %.0f s", delay)
                    expired = True
                await asyncio.sleep(delay)

    async def _watch_once(self) -> None:
        """One watch stream, until the server ends it (or sends an error)."""
        async for event in self.api.watch(self.path, self.since):
            event_type = event.get("type")
            body = event.get("object") or {}
            if event_type == "ERROR":
                raise ApiError(int(body.get("code") or 0), str(body.get("reason")), str(body.get("message")))
            version = (body.get("metadata") or {}).get("resourceVersion")
            if version:
                self.since = str(version)
            if event_type != "BOOKMARK":
                self.observe(event_type, body)

    async def _relist(self) -> None:
        """Pick up from a fresh LIST; the changes in the gap are each reconciled (a few, at most)."""
        items, version = await self.api.list_collection(self.path)
        for body in items:
            self.observe(None, body)
        if version is not None:
            self.since = version
