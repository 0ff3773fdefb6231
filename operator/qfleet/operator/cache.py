"""The operator's own view of the cluster: what the reconciler reads, kept current by kopf's events.

Why not kopf's indices (``@kopf.index``): while they are being filled, kopf holds back every
handler of every resource, and each object it lists adds a readiness toggle whose
``notify_all()`` wakes every waiting worker -- quadratic in the number of objects, tens of
minutes at 10,000 models (see ``docs/kopf-index-startup.md``). Event handlers (``@kopf.on.event``)
need no such barrier, so the operator keeps its caches from them.

What the barrier gave -- a first reconcile that already sees every Job, Deployment and node --
comes from one LIST per kind in the start-up handler instead, before kopf watches anything: the
events kopf delivers afterwards are the same objects or newer ones. An object deleted in the
short gap between that LIST and kopf's own would never be confirmed by an event; such entries
are dropped at the first resync (:meth:`ClusterCache.drop_unconfirmed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qfleet.fleet import names
from qfleet.fleet.nodes import node_info
from qfleet.operator.kube import KubeApi

log = logging.getLogger("qfleet.operator")

#: The one key of the nodes index: the planner reads every node at once.
NODES_KEY = "nodes"
OWNED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
#: Only the quantization Jobs' pods matter (serving pods are seen through their Deployment).
QUANTIZER_PODS = {**OWNED, names.LABEL_COMPONENT: names.COMPONENT_QUANTIZER}
#: Serving pods matter too: Pending as unschedulable, or crash-looping in a rollout.
SERVER_PODS = {**OWNED, names.LABEL_COMPONENT: names.COMPONENT_SERVER}

_MISSING = object()


class Index(Mapping[Any, list[Any]]):
    """Objects grouped under a key (a model's ``(namespace, name)``): ``index[key]`` is the list
    of what is cached for the objects with that key. Each object is known by its identity (its
    namespace and name), so an update replaces it and a deletion removes it."""

    def __init__(self) -> None:
        self._by_key: dict[Any, dict[Hashable, Any]] = {}
        self._key_of: dict[Hashable, Any] = {}
        #: Identities from the start-up LIST that no event has confirmed yet.
        self._unconfirmed: set[Hashable] = set()
        #: The resourceVersion of what is cached, where it is a number (etcd's are).
        self._version: dict[Hashable, int] = {}

    def put(
        self, ident: Hashable, key: Any, value: Any, *, confirmed: bool = True, version: int | None = None
    ) -> bool:
        """Cache ``value`` for the object ``ident`` under ``key``; True when that changed anything.

        A ``version`` older than the cached one is ignored: the answer to the operator's own
        write can arrive after the watch event of a later change (a Deployment's status), and
        must not put the older object back.
        """
        if version is not None and version < self._version.get(ident, -1):
            return False
        if version is not None:
            self._version[ident] = version
        old_key = self._key_of.get(ident, _MISSING)
        old: Any = _MISSING
        if old_key is not _MISSING and old_key != key:
            self.remove(ident)
        elif old_key is not _MISSING:
            old = self._by_key[key].get(ident, _MISSING)
        self._by_key.setdefault(key, {})[ident] = value
        self._key_of[ident] = key
        if confirmed:
            self._unconfirmed.discard(ident)
        else:
            self._unconfirmed.add(ident)
        return bool(old is _MISSING or old != value)

    def remove(self, ident: Hashable) -> Any:
        """Forget the object ``ident``; returns its key (None when it was not cached)."""
        key = self._key_of.pop(ident, None)
        self._unconfirmed.discard(ident)
        self._version.pop(ident, None)
        if key is not None:
            bucket = self._by_key.get(key)
            if bucket is not None:
                bucket.pop(ident, None)
                if not bucket:
                    del self._by_key[key]
        return key

    def confirmed(self, ident: Hashable) -> bool:
        """Whether kopf has reported the object ``ident`` (not only the start-up LIST)."""
        return ident in self._key_of and ident not in self._unconfirmed

    def drop_unconfirmed(self) -> set[Any]:
        """Forget what only the start-up LIST saw; returns the keys that lost an object."""
        keys = {self.remove(ident) for ident in list(self._unconfirmed)}
        keys.discard(None)
        return keys

    def __getitem__(self, key: Any) -> list[Any]:
        return list(self._by_key[key].values())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def objects(self) -> int:
        return len(self._key_of)

    def prune(self, listed: set[Hashable], version: int | None) -> set[Any]:
        """After a fresh LIST of every object (``listed``, at resourceVersion ``version``): forget
        the objects it did not hold, unless cached from an event newer than it (created since).
        Returns the keys that lost an object."""
        gone = [
            ident
            for ident in self._key_of
            if ident not in listed and (version is None or self._version.get(ident, -1) <= version)
        ]
        keys = {self.remove(ident) for ident in gone}
        keys.discard(None)
        return keys


def summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the planner reads of a child: its metadata and status (a Job's spec is not needed)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "status": dict(body.get("status") or {}),
    }


def server_pod_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what the planner reads: a ready pod's status is small, a failing one says why."""
    status = body.get("status") or {}
    result = summary(body)
    result["status"] = {
        "phase": status.get("phase"),
        "conditions": [
            dict(item) for item in status.get("conditions") or [] if item.get("type") == "PodScheduled"
        ],
    }
    # Init containers too: a model fetch that keeps failing holds the pod like a crashing server.
    for key in ("initContainerStatuses", "containerStatuses"):
        result["status"][key] = [
            {"ready": item.get("ready"), "restartCount": item.get("restartCount"), "state": item.get("state")}
            for item in status.get(key) or []
        ]
    return result


def deployment_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    result = summary(body)
    result["spec"] = {"replicas": (body.get("spec") or {}).get("replicas")}
    return result


def model_generation(body: Mapping[str, Any]) -> int:
    """What is kept of a model: its generation (the reconcile reads the model itself)."""
    generation = (body.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else 0


def _changed_since_reconciled(models: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str]]:
    """The models whose ``metadata.generation`` is past the ``status.observedGeneration`` that
    the operator wrote (a model without one, from before it was written, counts as handled)."""
    for body in models:
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        observed = (body.get("status") or {}).get("observedGeneration")
        if isinstance(generation, int) and isinstance(observed, int) and generation > observed:
            yield str(meta.get("namespace")), str(meta.get("name"))


@dataclass(frozen=True)
class Kind:
    """One kind the operator caches: where to list it, which objects count, what is kept."""

    index: str  #: the attribute of :class:`ClusterCache` that holds it
    group_version: str
    plural: str
    summarize: Callable[[Mapping[str, Any]], Any]
    labels: Mapping[str, str] | None = None  #: None: every object (the models, the nodes)
    namespaced: bool = True

    def selects(self, body: Mapping[str, Any]) -> bool:
        if self.labels is None:
            return True
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        return names.ANNOTATION_MODEL_NAME in annotations and all(
            labels.get(label) == value for label, value in self.labels.items()
        )

    def key(self, body: Mapping[str, Any]) -> Any:
        meta = body.get("metadata") or {}
        if self.labels is None:
            return NODES_KEY if not self.namespaced else (str(meta.get("namespace")), meta.get("name"))
        return (str(meta.get("namespace")), (meta.get("annotations") or {})[names.ANNOTATION_MODEL_NAME])

    def path(self, namespace: str | None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"


KINDS: tuple[Kind, ...] = (
    Kind("models", names.API_VERSION, names.PLURAL, model_generation),
    Kind("jobs", "batch/v1", "jobs", summary, labels=OWNED),
    Kind("pods", "v1", "pods", summary, labels=QUANTIZER_PODS),
    Kind("server_pods", "v1", "pods", server_pod_summary, labels=SERVER_PODS),
    Kind("deployments", "apps/v1", "deployments", deployment_summary, labels=OWNED),
    Kind("services", "v1", "services", summary, labels=OWNED),
    Kind("pdbs", "policy/v1", "poddisruptionbudgets", summary, labels=OWNED),
    Kind("nodes", "v1", "nodes", node_info, namespaced=False),
)
BY_INDEX = {kind.index: kind for kind in KINDS}
#: The indices that an object of a ``kind`` may belong to (the models' own status is not cached).
BY_OBJECT_KIND: dict[str, tuple[str, ...]] = {
    "Job": ("jobs",),
    "Pod": ("pods", "server_pods"),
    "Deployment": ("deployments",),
    "Service": ("services",),
    "PodDisruptionBudget": ("pdbs",),
}


class ClusterCache:
    """Every index the reconciler reads (see :class:`~qfleet.operator.applier.Caches`)."""

    def __init__(self) -> None:
        self.indices: dict[str, Index] = {kind.index: Index() for kind in KINDS}
        #: Per collection of models the start-up LIST read (its path), that list's
        #: resourceVersion: where a watch of the models' changes picks up (see spec_watch).
        self.models_listed: dict[str, str] = {}
        #: Models whose spec the last LIST found newer than the status says was reconciled.
        self.models_changed_since_reconciled: set[tuple[str, str]] = set()
        self._listed_at: float | None = None

    def __getitem__(self, index: str) -> Index:
        return self.indices[index]

    def observe(
        self, index: str, event_type: str | None, body: Mapping[str, Any], *, confirmed: bool = True
    ) -> Any:
        """Record one object (from a watch event, or the start-up LIST) of the kind ``index``.

        Returns the key whose view changed (a model's ``(namespace, name)``, or
        :data:`NODES_KEY`), None when the event changed nothing the planner reads.
        """
        kind = BY_INDEX[index]
        cache = self.indices[index]
        meta = body.get("metadata") or {}
        ident = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED" or not kind.selects(body):
            return cache.remove(ident)
        key = kind.key(body)
        value = kind.summarize(body)
        if value is None:  # a node that cannot run anything (not ready, no tier)
            return cache.remove(ident)
        version = str(meta.get("resourceVersion") or "")
        changed = cache.put(
            ident, key, value, confirmed=confirmed, version=int(version) if version.isdigit() else None
        )
        return key if changed else None

    async def snapshot(self, api: KubeApi, namespaces: Sequence[str] | None, *, refresh: bool = False) -> int:
        """LIST every kind once (``namespaces`` None: cluster-wide); returns the objects cached.

        ``refresh``: the caches may be old (a standby's, whose kopf watches were paused), so
        what a LIST no longer holds is forgotten too (see :meth:`Index.prune`).
        """
        by_collection: dict[tuple[str, str], list[Kind]] = {}
        for kind in KINDS:  # the two pod kinds share one LIST
            by_collection.setdefault((kind.group_version, kind.plural), []).append(kind)
        listed: dict[str, set[Hashable]] = {kind.index: set() for kind in KINDS}
        oldest_version: int | None = None
        changed: set[tuple[str, str]] = set()
        for kinds in by_collection.values():
            scopes: Sequence[str | None] = (
                namespaces if kinds[0].namespaced and namespaces is not None else [None]
            )
            for namespace in scopes:
                path = kinds[0].path(namespace)
                version = None
                # Page by page: only the summaries stay (a page's bodies go before the next).
                async for items, listed_version in api.list_pages(path):
                    self._observe_listed(kinds, items, listed)
                    if kinds[0].index == "models":
                        changed.update(_changed_since_reconciled(items))
                    version = listed_version
                if kinds[0].index == "models" and version is not None:
                    self.models_listed[path] = version
                oldest_version = _older_version(oldest_version, version)
        if refresh:
            # Every LIST's version at least the first one's: an object cached from an event
            # newer than that may have been created after its LIST (and is kept).
            for kind in KINDS:
                self.indices[kind.index].prune(listed[kind.index], oldest_version)
        self.models_changed_since_reconciled = changed
        self._listed_at = time.monotonic()
        return sum(index.objects() for index in self.indices.values())

    def _observe_listed(
        self, kinds: Sequence[Kind], items: Sequence[Mapping[str, Any]], listed: dict[str, set[Hashable]]
    ) -> None:
        """Cache what one LIST returned (unconfirmed until kopf's watch sees it) and note its keys."""
        for body in items:
            meta = body.get("metadata") or {}
            for kind in kinds:
                self.observe(kind.index, None, body, confirmed=False)
                listed[kind.index].add((meta.get("namespace"), meta.get("name")))

    def listed_seconds_ago(self) -> float:
        """Seconds since the last :meth:`snapshot` (infinite before the first)."""
        return float("inf") if self._listed_at is None else time.monotonic() - self._listed_at

    def listed_models(self) -> list[tuple[str, str]]:
        """The models known from the last LIST (and the events since)."""
        return [key for key in self.indices["models"] if isinstance(key, tuple)]

    def written(self, body: Mapping[str, Any]) -> None:
        """The server's answer to one of the operator's own writes: cached at once, so the watch
        event that echoes it changes nothing and triggers no second reconcile."""
        for index in BY_OBJECT_KIND.get(str(body.get("kind")), ()):
            self.observe(index, "MODIFIED", body)

    def drop_unconfirmed(self) -> set[Any]:
        """Forget the objects that only the start-up LIST saw (deleted before kopf watched)."""
        keys: set[Any] = set()
        for index in self.indices.values():
            keys |= index.drop_unconfirmed()
        return keys


def _older_version(oldest: int | None, version: str | None) -> int | None:
    """The older of two resourceVersions (a LIST's may be missing or not a number)."""
    if version is None or not version.isdigit():
        return oldest
    return int(version) if oldest is None else min(oldest, int(version))
