"""A Kubernetes cluster for the operator's integration tests: the KMock API emulator plus the
controllers a real cluster would run.

The API server is ``kmock.KubernetesEmulator`` over real HTTP, with what the emulator leaves out
added server-side: ``metadata.resourceVersion``, ``uid``, ``generation`` and
``creationTimestamp`` are stamped on every write (kopf's patches test ``resourceVersion``), and
the QuantizedModel's ``scale`` subresource maps ``spec.replicas`` to the CRD's
``specReplicasPath`` (read from the CRD file), as the API server does.

:class:`Cluster` plays the rest, as the real components would:

- the **scheduler**: a Job's pod lands on a node whose labels satisfy the pod's required node
  affinity; no such node, no pod (it stays unscheduled until one appears);
- the **kubelet**: it runs the pod's own container command -- ``command + args`` from the Job
  spec, unchanged except for paths: every volume mount's path maps to a host folder (each
  PersistentVolumeClaim to a folder of :attr:`Cluster.claims`, emptyDirs to temporary ones) and
  the container's ``terminationMessagePath`` to a file whose content becomes the terminated
  state's ``message``. The node's ISA tier reaches the process as ``QFLEET_HOST_ISA`` (it is
  "running on that node"), and where this host can emulate the tier (the tier is at or below
  the one /proc/cpuinfo shows, with all its flags) OpenVINO's kernels are capped at it
  (``isa.kernel_cap_env``), so the Job measures that tier's kernels and precision, not this
  host's: a lower tier can be emulated by capping, a higher one cannot. Then it writes the pod with its labels (``job-name``,
  ``batch.kubernetes.io/job-name``) and container status (``image``, ``imageID``, ``state``);
- the **Job controller**: retries up to ``backoffLimit``, honours ``podFailurePolicy`` exit
  codes, writes ``succeeded``/``failed`` and the Complete/Failed conditions, and deletes the
  pods of deleted Jobs;
- the **Deployment controller**: keeps real serving pods (``<deployment>-<template hash>-<suffix>``)
  with RollingUpdate semantics (``maxSurge``/``maxUnavailable``, as numbers or percentages):
  new-template pods are added while the total stays within ``replicas + maxSurge`` and old ones
  removed only while the ready count stays at ``replicas - maxUnavailable`` or more; it reports
  the replica counts and the Available and Progressing conditions (``ProgressDeadlineExceeded``
  when no new pod became ready for ``progressDeadlineSeconds``) through the status subresource;
- for those serving pods, the **scheduler** binds a pod to a Ready, uncordoned node whose labels
  satisfy its required node affinity, whose NoSchedule/NoExecute taints it tolerates and whose
  allocatable CPU, less the requests of the pods already bound there, covers its CPU request;
  a pod that fits nowhere stays Pending with ``PodScheduled=False`` (``Unschedulable``) and is
  tried again on every pass; pods of a node that is deleted are deleted (the pod GC);
- and the **kubelet** runs them: a bound pod is Running and turns Ready after
  :attr:`Cluster.pod_ready_seconds`, unless :attr:`Cluster.deployments_ready` is cleared (never
  ready) or :attr:`Cluster.serving_fault` says its container crashes (``CrashLoopBackOff``).

Every pass of the controllers records the ready serving capacity of each model (see
:meth:`Cluster.min_capacity_since`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal import k8s_dicts, k8s_views

from qfleet.fleet.nodes import parse_cpu
from qfleet.isa import TIER_NAMES, TIERS, cpuinfo_flags, kernel_cap_env, tier, tier_from_flags
from tests.support.paths import REPO

CRD_PATH = REPO / "crds" / "qfleet.dev_quantizedmodels.yaml"

JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
NODES = kmock.resource("", "v1", "nodes")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")
SECRETS = kmock.resource("", "v1", "secrets")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _path_get(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def merge_patch_changes(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether the merge ``patch`` changes ``current`` (``None`` deletes a key, dicts merge).

    Walks the patch only: building the patched object to compare it (``patch_dict``) for every
    update's generation was a seventh of the emulator's CPU at a 10,000-model start-up, where the
    operator patches whole Deployment templates.
    """
    for key, value in patch.items():
        if value is None:
            if key in current:
                return True
        elif key not in current:
            return True
        elif isinstance(value, Mapping) and isinstance(current[key], Mapping):
            if merge_patch_changes(current[key], value):
                return True
        elif current[key] != value:
            return True
    return False


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.strip(".").split(".")
    result: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        result = {part: result}
    return result


#: Deletions kept per resource for watches that resume from an older version (the API server
#: keeps a window of history too; a watch from before it misses what it no longer holds).
DELETIONS_KEPT = 20_000
#: LISTs in chunks whose remaining pages are held for their ``continue`` token (the oldest go
#: first, as the API server's tokens expire; a client that stops paging leaves one behind).
LISTINGS_KEPT = 64


#: What the API server draws a generateName's suffix from (5 characters: 14 million names; the
#: emulator's 5 hex digits, a million, made a soak's tens of thousands of events collide often).
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def generated_suffix(length: int = 5) -> str:
    return "".join(random.choice(NAME_SUFFIX_ALPHABET) for _ in range(length))


def _events_since(
    since: str,
    objects: list[dict[str, Any]],
    deletions: list[tuple[int, dict[str, Any]]],
    selected: Callable[[Mapping[str, Any]], bool],
) -> list[dict[str, Any]]:
    """What a watch from ``since`` streams first: without a version, every object as ADDED; from
    one, each object changed after it and each later deletion, oldest first."""
    if not since.isdigit() or since == "0":
        return [{"type": "ADDED", "object": raw} for raw in objects if selected(raw.get("metadata") or {})]
    after = int(since)
    changes = [
        (int((raw.get("metadata") or {}).get("resourceVersion") or 0), "MODIFIED", raw) for raw in objects
    ]
    changes += [(revision, "DELETED", raw) for revision, raw in deletions]
    return [
        {"type": kind, "object": raw}
        for version, kind, raw in sorted(changes, key=lambda change: change[0])
        if version > after and selected(raw.get("metadata") or {})
    ]


#: The harness's own requests (its controllers and the tests) carry this header; injected faults
#: leave them alone, so a fault hits the operator and not the cluster that judges it.
HARNESS_HEADER = "X-Qfleet-Test-Harness"


@dataclass
class Fault:
    """A misbehaviour of the API server for the requests that match (see :meth:`Emulator.inject`).

    ``path`` is a regular expression searched in the request path; ``method`` ("GET", "PATCH",
    ...) and ``watch`` (True: watch requests only, False: all but watches) narrow it. What it does:

    - ``status``: answer with this error (a Kubernetes ``Status`` body) without acting;
    - ``watch_error``: a watch answered with one ``ERROR`` event of this code (410: "Expired",
      the resource version is too old), then the stream ends, as the API server does;
    - ``delay``: wait this long first (``hold=True``: until :meth:`release` or ``delay``), then
      answer 504 without acting when ``status`` is 504, else serve the request normally;
    - ``delay_response``: act on the request, then hold the answer this long (the client may be
      gone by then: the change happened but its author never heard of it).

    ``times`` limits how many requests it hits (None: until removed); ``hits`` counts them.
    """

    path: str
    method: str | None = None
    watch: bool | None = None
    status: int | None = None
    watch_error: int | None = None
    delay: float = 0.0
    delay_response: float = 0.0
    hold: bool = False
    times: int | None = None
    user_agent: str | None = None
    #: Only requests that carry this bearer token (a revoked or expired one).
    token: str | None = None
    hits: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if HARNESS_HEADER in headers:
            return False
        user_agent = headers.get("User-Agent", "")
        if self.user_agent is not None and self.user_agent not in user_agent:
            return False
        if self.token is not None and bearer_token(headers) != self.token:
            return False
        if self.method is not None and method.upper() != self.method.upper():
            return False
        is_watch = query.get("watch") in ("true", "1")
        if self.watch is not None and is_watch != self.watch:
            return False
        return re.search(self.path, path) is not None

    def release(self) -> None:
        """End a held delay now."""
        self.released.set()


@attrs.frozen
class ContinueExpired(kmock.KubernetesError):
    """A ``continue`` token the emulator no longer holds (the API server's answer once the
    list's revision was compacted away)."""

    status: int = 410
    reason: str = "Expired"
    message: str = "The provided continue parameter is too old to display a consistent list result."


def _list_key(item: Mapping[str, Any]) -> tuple[str, str]:
    meta = item.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    return value.split(" ", 1)[1] if value.lower().startswith("bearer ") else None


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message}  # fmt: skip


FAULT_REASONS = {
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


ObjectKey = tuple[kmock.resource, str | None, str]


def _routed_first(serve: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The emulator's ``serve`` for one action, marking the request routed first (see ``_routed``)."""

    @functools.wraps(serve)
    async def serve_routed(self: Any, request: kmock.Request) -> Any:
        self._routed(request)
        return await serve(self, request)

    return serve_routed


class StoredObject(k8s_dicts.Object):
    """One stored object that keeps only its current version, as etcd after compaction.

    The emulator's own object keeps every past version forever and deep-copies the whole object
    before each patch. With 10,000 models and their pods, patched all the time, that history was
    most of the emulator's memory and the copies much of its CPU. Nothing reads the past versions:
    a watch from a ``resourceVersion`` streams the current state of what changed since (see
    :meth:`Emulator._serve_watch`). The patch itself is copy-on-write (``merge_patch_dict``
    makes new dicts only along the changed paths; a JSON patch copies the document), so the
    previous version, which a watch event may still be streaming, is never changed in place --
    provided nobody mutates a stored dict in place: readers get top-level copies (``raw``,
    :meth:`Emulator.live`) or the stored dict itself (:meth:`peek`, ``live(copy=False)``), and
    must copy before changing anything in it.
    """

    def create(self, changes: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().create(changes, **kwargs)
        self._compact()

    def patch(self, changes: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        if self.deleted:
            super().patch(changes, **kwargs)
        else:
            self.history.append(kmock_dicts.patch_dict(self.last.raw, changes or {}, **kwargs))
        self._compact()

    def delete(self) -> None:
        super().delete()
        self._compact()

    def _compact(self) -> None:
        # The current version; after a deletion, the last state too (the DELETE answers with it).
        keep = 2 if self.deleted else 1
        if len(self.history) > keep:
            del self.history[:-keep]

    def peek(self) -> dict[str, Any] | None:
        """The current version itself, not copied (read only), or None when deleted: one look at
        the newest version, where ``deleted`` and ``raw`` walk the history (several times, with
        the generic ``reversed``) and ``raw`` copies it."""
        history = self.history
        version = history[-1] if len(history) else None
        return None if version is None else version._ObjectVersion__value  # type: ignore[attr-defined,no-any-return]


@attrs.frozen(eq=False, order=False)
class IndexedObjects(k8s_views.ObjectsArray):
    """The emulator's store, also indexed by resource.

    The emulator finds a LIST's or a watch's objects by testing every stored object, of every
    resource; a controller pass read every pod by scanning every model, Job, Deployment and Event
    too. The index makes reading one resource cost that resource's objects only.
    """

    _by_resource: dict[kmock.resource, dict[ObjectKey, StoredObject]] = attrs.field(factory=dict, init=False)

    def resources(self) -> list[kmock.resource]:
        """Every resource that has (or had) stored objects."""
        return list(self._by_resource)

    def of(self, resource: kmock.resource) -> Mapping[ObjectKey, StoredObject]:
        """Every stored object of ``resource`` (deleted ones included), by key."""
        return self._by_resource.get(resource, {})

    def __setitem__(self, key: Any, value: Any, /) -> None:
        if len(key) != 3:  # a version or a slice of the history: the object stays the same
            super().__setitem__(key, value)
            return
        full_key: ObjectKey = (k8s_views._parse_resource(key[0]), key[1], key[2])
        stored = StoredObject(value)
        self._objects[full_key] = stored
        self._by_resource.setdefault(full_key[0], {})[full_key] = stored

    def __delitem__(self, key: Any, /) -> None:
        super().__delitem__(key)
        if len(key) == 3:
            resource = k8s_views._parse_resource(key[0])
            self._by_resource.get(resource, {}).pop((resource, key[1], key[2]), None)

    def clear(self) -> None:
        super().clear()
        self._by_resource.clear()


class Emulator(kmock.KubernetesEmulator):
    """The emulator plus the metadata stamping and scale mapping of a real API server."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._objects: IndexedObjects = IndexedObjects()
        self._revision = 0
        self._scale_paths: dict[Any, tuple[str, str]] = {}
        #: (resource, namespace, name) of every creation request, 409s included.
        self.creations: list[tuple[Any, str | None, str]] = []
        #: Requests being served, with the time each one came in.
        self._in_flight: dict[kmock.Request, float] = {}
        #: Requests served, by (action, plural, subresource): what a client costs the API server.
        self.request_counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: Injected faults, tried in order (the first that matches acts).
        self.faults: list[Fault] = []
        #: Per resource, the latest deletions: (the revision of the deletion, the object's last
        #: state), so that a watch from an older version learns of them (see :meth:`_serve_watch`).
        self._deletions: collections.defaultdict[Any, collections.deque[tuple[int, dict[str, Any]]]] = (
            collections.defaultdict(lambda: collections.deque(maxlen=DELETIONS_KEPT))
        )
        #: Bearer tokens of the requests served to clients other than the harness, counted.
        self.tokens: collections.Counter[str | None] = collections.Counter()
        #: LISTs asked for without a ``limit`` by clients other than the harness, by resource
        #: plural: each one answered with the whole collection at once.
        self.whole_lists: collections.Counter[str] = collections.Counter()
        #: Per ``continue`` token of a LIST in chunks: its revision and the objects still to send.
        self._listings: collections.OrderedDict[str, tuple[int, list[dict[str, Any]]]] = (
            collections.OrderedDict()
        )

    def inject(self, fault: Fault) -> Fault:
        """Make the API server misbehave for matching requests (until :meth:`heal`)."""
        self.faults.append(fault)
        return fault

    def heal(self, fault: Fault | None = None) -> None:
        """Remove one fault (or all) and release the requests they hold."""
        for item in [fault] if fault is not None else list(self.faults):
            item.release()
            if item in self.faults:
                self.faults.remove(item)

    def install_crd(self, crd: Mapping[str, Any]) -> kmock.resource:
        spec = crd["spec"]
        version = next(item for item in spec["versions"] if item.get("storage"))
        resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
        subresources = version.get("subresources") or {}
        self.resources[resource] = kmock.ResourceInfo(
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular"),
            namespaced=spec["scope"] == "Namespaced",
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(spec["names"].get("shortNames", [])),
            categories=set(spec["names"].get("categories", [])),
            subresources=set(subresources),
        )
        scale = subresources.get("scale")
        if scale:
            self._scale_paths[resource] = (scale["specReplicasPath"], scale["statusReplicasPath"])
        return resource

    async def __call__(self, raw_request: Any) -> Any:
        if HARNESS_HEADER not in raw_request.headers:
            self.tokens[bearer_token(raw_request.headers)] += 1
        for fault in list(self.faults):
            if fault.matches(raw_request.method, raw_request.path, raw_request.query, raw_request.headers):
                fault.hits += 1
                return await self._misbehave(fault, raw_request)
        return await self._serve(raw_request)

    async def _misbehave(self, fault: Fault, raw_request: Any) -> Any:
        import aiohttp.web

        if fault.delay:
            if fault.hold:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fault.released.wait(), fault.delay)
            else:
                await asyncio.sleep(fault.delay)
        if fault.watch_error is not None:
            await raw_request.read()
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            code = fault.watch_error
            event = {"type": "ERROR", "object": status_body(code, FAULT_REASONS.get(code, "Error"),
                                                            "injected: too old resource version")}  # fmt: skip
            await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        if fault.status is not None:
            await raw_request.read()
            code = fault.status
            body = status_body(code, FAULT_REASONS.get(code, "Error"), f"injected fault {code}")
            return aiohttp.web.json_response(body, status=code)
        response = await self._serve(raw_request)
        if fault.delay_response:
            if fault.hold:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fault.released.wait(), fault.delay_response)
            else:
                await asyncio.sleep(fault.delay_response)
        return response

    async def _serve(self, raw_request: Any) -> Any:
        # The emulator's URL parser cannot read the cluster-scoped /api/v1/namespaces collection
        # (it takes "namespaces" for the namespace prefix), so the namespaces are served here.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces" and raw_request.method == "GET":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: Any) -> Any:
        import aiohttp.web

        await raw_request.read()
        if raw_request.query.get("watch") == "true":
            # Namespaces do not change during a test: an open stream with no events, closed when
            # the client's requested timeout is over (the client then watches again).
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            await asyncio.sleep(float(raw_request.query.get("timeoutSeconds") or 60))
            await response.write_eof()
            return response
        items = self.live(NAMESPACES)
        return aiohttp.web.json_response(
            {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": str(self._revision)},
             "items": items}
        )  # fmt: skip

    def live(
        self, resource: kmock.resource, namespace: str | None = None, *, copy: bool = True
    ) -> list[dict[str, Any]]:
        """The current objects of ``resource`` (all namespaces, or one), straight from the store:
        top-level copies whose nested values are the stored ones (``copy=False``: the stored
        objects themselves) -- read them, never change them in place (see :class:`StoredObject`)."""
        found = []
        for (_, ns, _), obj in list(self._objects.of(resource).items()):
            if namespace is None or ns == namespace:
                current = obj.peek()
                if current is not None:
                    found.append(dict(current) if copy else current)
        return found

    def live_of_kinds(self, kinds: set[str | None]) -> list[dict[str, Any]]:
        """The current objects of the resources of these kinds (and of any resource whose kind is
        not declared), not copied (read only): the owners the garbage collector looks for, where
        all objects would include every pod and Event."""
        # (Looked up only if declared: a lookup of an undeclared resource declares it.)
        declared = {resource: self.resources[resource].kind for resource in self.resources}
        return [
            obj
            for resource in self._objects.resources()
            if declared.get(resource) is None or declared[resource] in kinds
            for obj in self.live(resource, copy=False)
        ]

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _handle(self, request: kmock.Request) -> Any:
        self._in_flight[request] = time.monotonic()
        if request.resource is not None:
            action = request.action.value if request.action is not None else str(request.method)
            self.request_counts[action, str(request.resource.plural), request.subresource or ""] += 1
        try:
            if request.resource is not None:
                with contextlib.suppress(Exception):  # malformed requests get the emulator's own errors
                    self._stamp(request)
            scale = request.resource in self._scale_paths and request.subresource == "scale"
            if scale and request.action == kmock.action.FETCH:
                return await self._serve_scale(request)
            return await super()._handle(request)
        finally:
            self._in_flight.pop(request, None)
            self._forget_requests()
            self._drop_deleted(request)

    def _drop_deleted(self, request: kmock.Request) -> None:
        """Forget an object the request deleted, once it has been answered.

        The emulator keeps a deleted object (and its history) forever; under churn, thousands of
        deleted pods, Jobs and Deployments stayed in memory and in every scan. The API server
        forgets them too: a GET then answers 404 and a watch from an older version learns nothing
        of them, unless the watch's version is within the last :data:`DELETIONS_KEPT` deletions of
        the resource (as a watch from a compacted version would)."""
        if request.resource is None or request.name is None:
            return
        if request.action not in (kmock.action.DELETE, kmock.action.UPDATE):  # UPDATE: finalizers removed
            return
        key = (request.resource, request.namespace, request.name)
        if key in self._objects and self._objects[key].deleted:
            last = self._objects[key].last.raw
            self._deletions[request.resource].append((int(self._next_version()), last))
            del self._objects[key]

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        """The emulator's object lookup: by key when the request names one object, else among
        the objects of the request's resource only.

        (The emulator scans every stored object for every request; with thousands of objects
        that, not the client under test, would dominate every measurement.)
        """
        if request.resource is None:
            return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]
        if strict and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        check = self._KubernetesEmulator__check  # type: ignore[attr-defined]
        return [
            obj
            for (resource, namespace, name), obj in list(self._objects.of(request.resource).items())
            if check(request, resource, namespace, name, strict=strict)
        ]

    def _get_resources(self) -> list[kmock.resource]:
        """The declared resources and those of stored objects, without a scan of every object (the
        emulator's LIST looked the resource up this way before each answer)."""
        declared = super(kmock.KubernetesEmulator, self)._get_resources()
        return list({*declared, *self._objects.resources()})

    async def _serve_list(self, request: kmock.Request) -> Any:
        """A list carries the revision it was read at, as an API server's does (the emulator's
        says ``...``): a watch from it streams only what changed since, instead of every object
        again as ADDED -- which made kopf handle a whole fleet twice at every start-up. The
        revision is read before the objects: a write in between is streamed again, not lost."""
        self._routed(request)
        limit = request.params.get("limit") or ""
        page = int(limit) if limit.isdigit() else 0  # 0: the whole collection at once
        token = request.params.get("continue")
        if token:
            if token not in self._listings:
                raise ContinueExpired()
            revision, items = self._listings.pop(token)
            answer: dict[str, Any] = {"metadata": {}, "items": items}
        else:
            revision = self._revision
            answer = await super()._serve_list(request)
            if page:
                answer["items"].sort(key=_list_key)
            elif HARNESS_HEADER not in request.headers and request.resource is not None:
                self.whole_lists[request.resource.plural] += 1
        # In chunks, as the API server serves them: ``limit`` objects in key order, every page at
        # the first one's revision, from the objects as they were then (what changed since, a
        # watch from that revision streams), with a token for the rest (none on the last page).
        items = answer["items"]
        if 0 < page < len(items):
            token = uuid.uuid4().hex
            self._listings[token] = (revision, items[page:])
            while len(self._listings) > LISTINGS_KEPT:
                self._listings.popitem(last=False)
            answer["items"], answer["metadata"]["continue"] = items[:page], token
        answer["metadata"]["resourceVersion"] = str(revision)
        return answer

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """A watch streams every write after the state it starts from, as an API server does: from
        a ``resourceVersion``, what changed after it (deletions included); without one, every
        object as ADDED first.

        The position in the resource's event bus is taken together with that state, under the
        store's lock. The emulator's own watch joined the bus only after it had streamed the
        initial objects, so writes made while those were being sent were never streamed. A lost
        last update of a quantization Job's pod leaves the operator believing that the pod still
        runs, and it fails the model with ResultLost once the Job has been complete for five
        minutes.
        """
        self._routed(request)
        assert request.resource is not None
        since = str(request.params.get("resourceVersion") or "")
        check = self._KubernetesEmulator__check  # type: ignore[attr-defined]
        bus = self._buses[request.resource]
        yield b""  # the headers go out now, whether or not anything changes soon
        async with self._lock:
            marker = await bus.mark()
            objects = [
                obj.raw
                for obj in self._KubernetesEmulator__get_objs(request, strict=False)
                if not obj.deleted
            ]
            deletions = list(self._deletions.get(request.resource, ()))

        def selected(meta: Mapping[str, Any]) -> bool:
            return bool(
                check(request, request.resource, meta.get("namespace"), meta.get("name"), strict=False)
            )

        try:
            for event in _events_since(since, objects, deletions, selected):
                yield event
            async for event in bus.stream(since=marker):
                if selected(event.get("object", {}).get("metadata", {})):
                    yield event
        finally:
            await bus.unmark(marker)

    _serve_fetch = _routed_first(kmock.KubernetesEmulator._serve_fetch)
    _serve_create = _routed_first(kmock.KubernetesEmulator._serve_create)
    _serve_update = _routed_first(kmock.KubernetesEmulator._serve_update)
    _serve_delete = _routed_first(kmock.KubernetesEmulator._serve_delete)

    def _routed(self, request: kmock.Request) -> None:
        """The request reached its handler: the routing no longer needs it in the history.

        The emulator routes a request by testing each handler's filters against every request
        in its history; in a burst of the operator's requests, the ones that came in during the
        last second (see :meth:`_forget_requests`) made that a scan of hundreds per request.
        """
        if request in self._in_flight:
            self._in_flight[request] = 0.0

    def _forget_requests(self, keep: int = 16) -> None:
        """Drop the served requests' history (kept only for assertions we do not use).

        The emulator routes each request by searching the whole history for it, so every request
        costs O(requests so far); with thousands of requests it stalls. Requests still being
        routed stay: those in flight for less than a second that did not reach a handler of
        their own (:meth:`_routed`; routing takes microseconds; what is in flight for longer, a
        watch above all, is streaming its answer and routed long ago).
        """
        routed_before = time.monotonic() - 1.0
        self._requests[:] = [
            request for request in self._requests if self._in_flight.get(request, 0.0) > routed_before
        ]
        for payload in self._payloads:
            history = getattr(payload, "_requests", None)
            if isinstance(history, list) and len(history) > keep:
                del history[:-keep]

    def _stamp(self, request: kmock.Request) -> None:
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            metadata = data.setdefault("metadata", {})
            self.creations.append((request.resource, request.namespace, str(metadata.get("name"))))
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + generated_suffix()
            metadata["resourceVersion"] = self._next_version()
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now())
            metadata.setdefault("generation", 1)
            if request.namespace and "namespace" not in metadata:
                metadata["namespace"] = request.namespace
        elif request.action == kmock.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            current = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
            if current is None:
                return
            version = self._next_version()
            generation = int((current.get("metadata") or {}).get("generation") or 1)
            if isinstance(data, dict):
                if request.subresource == "scale":
                    spec_path, _ = self._scale_paths[request.resource]
                    replicas = (data.get("spec") or {}).get("replicas")
                    data.clear()
                    data.update(_nest(spec_path, replicas))
                elif request.subresource == "status":
                    for key_name in list(data):
                        if key_name != "status":
                            del data[key_name]
                spec_patch = request.subresource != "status" and "spec" in data
                if spec_patch and merge_patch_changes(current, {"spec": data["spec"]}):
                    generation += 1
                data.setdefault("metadata", {})
                data["metadata"]["resourceVersion"] = version
                data["metadata"]["generation"] = generation
            elif isinstance(data, list):
                if any(str(op.get("path", "")).startswith("/spec") for op in data):
                    generation += 1
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                data.append({"op": "add", "path": "/metadata/generation", "value": generation})

    async def _serve_scale(self, request: kmock.Request) -> Any:
        import aiohttp.web

        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 404, "reason": "NotFound"}, status=404
            )
        obj = self.objects[key].raw
        spec_path, status_path = self._scale_paths[request.resource]
        return aiohttp.web.json_response(
            {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    k: obj["metadata"].get(k) for k in ("name", "namespace", "resourceVersion", "uid")
                },
                "spec": {"replicas": _path_get(obj, spec_path) or 0},
                "status": {"replicas": _path_get(obj, status_path) or 0},
            }
        )


@dataclass
class JobRun:
    """What the kubelet did for one Job: the argv it executed, the pods, the exit codes."""

    name: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    exit_codes: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    log: Path | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None
    #: Set when the Job controller ended the Job for exceeding ``activeDeadlineSeconds``.
    deadline_exceeded: bool = False
    #: Terminated reasons of the pods (Completed, Error, OOMKilled).
    reasons: list[str] = field(default_factory=list)


@dataclass
class InitRun:
    """A serving pod's init containers, run for real by the emulated kubelet."""

    pod_dir: Path
    task: asyncio.Task[None] | None = None
    succeeded: bool = False
    exit_codes: list[int] = field(default_factory=list)
    failed_container: str | None = None
    restarts: int = 0
    retry_at: float = 0.0
    finished_at: float = 0.0
    #: The server's --model on this host, once the init containers succeeded.
    server_model: Path = Path()


@dataclass(frozen=True)
class PodFault:
    """What goes wrong with one pod of a Job.

    - ``oom``: the kernel's OOM killer ends the container ``after`` seconds into the run
      (SIGKILL: exit 137, terminated reason ``OOMKilled``, no termination message);
    - ``message``: the container exits as it does, but its termination message reads
      ``message`` instead (lost: ``""``; garbled: a truncated or corrupted text).
    """

    kind: str = "oom"
    after: float = 0.5
    message: str = ""


class Cluster:
    def __init__(self, emulator: Emulator, server: kmock.Server, root: Path) -> None:
        self.emulator = emulator
        self.server = server
        self.root = root
        self.model_resource = emulator.install_crd(load_crd())
        #: PersistentVolumeClaim name -> host folder with its content.
        self.claims: dict[str, Path] = {}
        #: While cleared, finished Jobs wait before the kubelet reports them (tests hold Jobs).
        self.release_jobs = asyncio.Event()
        self.release_jobs.set()
        #: While cleared, serving pods never become Ready (their readiness probe fails).
        self.deployments_ready = True
        #: How long a bound serving pod takes to become Ready (its server starting).
        self.pod_ready_seconds = 0.3
        #: Faults of serving pods: a function of the pod's annotations -> True when its container
        #: crashes on start (never Ready, ``CrashLoopBackOff`` with a growing restart count).
        self.serving_fault: Callable[[Mapping[str, str]], bool] | None = None
        #: (loop time, {(namespace, model): ready capacity}) whenever the capacity changed, with
        #: the models whose capacity changed only (0.0: none left): a whole copy of every model's
        #: capacity per pass, under churn, is a dict of 10,000 entries a second at 10,000 models.
        self.capacity_log: list[tuple[float, dict[tuple[str, str], float]]] = []
        self._capacity: dict[tuple[str, str], float] = {}  # the capacity the log adds up to
        self._pod_seq: dict[str, int] = {}  # serving pod uid -> creation order
        self._pod_counter = itertools.count(1)
        self._pod_bound: dict[str, float] = {}  # serving pod uid -> loop time it was bound
        self._rollouts: dict[str, _Rollout] = {}  # Deployment uid -> progress of its rollout
        #: Deployment uid -> (resourceVersion, template hash): hashing every template twice a pass
        #: cost more than the rest of the pass at 10,000 Deployments.
        self._template_hashes: dict[str, tuple[str, str]] = {}
        #: Deployment uid -> the inputs of the last pass that found it settled (see _quiet_now).
        self._quiet: dict[str, tuple[str, ...]] = {}
        self._inits: dict[str, InitRun] = {}  # serving pod uid -> its init containers' runs
        #: While cleared, serving pods' init containers wait before they start (tests hold them).
        self.release_inits = asyncio.Event()
        self.release_inits.set()
        #: How a test may change what runs: a function of (argv, env) -> (argv, env) that may
        #: only rewrite paths (enforced by :func:`only_paths_rewritten`).
        self.path_rewriter: Callable[[list[str], dict[str, str]], tuple[list[str], dict[str, str]]] | None = (
            None
        )
        self.runs: dict[str, JobRun] = {}
        #: Faults of pods: a function of (Job name, attempt) -> PodFault or None.
        self.pod_fault: Callable[[str, int], PodFault | None] | None = None
        #: Play Kubernetes' garbage collector: delete objects whose controller owner is gone
        #: (as the real one does, with background propagation). Off unless a test needs it.
        self.garbage_collector = False
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._operators: list[asyncio.subprocess.Process] = []
        self.kubeconfig = root / "kubeconfig.yaml"

    # -- API helpers (through HTTP, so every change is a watch event) ---------------------------

    async def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
        headers[HARNESS_HEADER] = "1"
        async with self.server.client.request(method, path, json=body, headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: Any) -> Any:
        content_type = (
            "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
        )
        return await self.request("PATCH", path, body, content_type)

    def objects(self, resource: kmock.resource, namespace: str | None = None) -> list[dict[str, Any]]:
        """Current objects of a resource (copies, read straight from the emulator's store)."""
        return [copy.deepcopy(obj) for obj in self.emulator.live(resource, namespace)]

    def _stored(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One current object, not copied: for the controllers, which only read it (a copy of
        every object on every pass was most of the emulator's CPU at 10,000 models)."""
        key = (resource, namespace, name)
        obj = self.emulator.objects[key] if key in self.emulator.objects else None  # noqa: SIM401 (no .get)
        return None if obj is None else obj.peek()  # type: ignore[attr-defined,no-any-return]

    def get(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key in self.emulator.objects and not self.emulator.objects[key].deleted:
            return copy.deepcopy(self.emulator.objects[key].raw)
        return None

    def created(self, resource: kmock.resource) -> list[str]:
        """Names of every object of ``resource`` ever created (including deleted ones and 409s)."""
        return [name for res, _, name in self.emulator.creations if res == resource]

    def events(self, namespace: str, involved: str | None = None) -> list[dict[str, Any]]:
        return [
            event
            for event in self.objects(EVENTS, namespace)
            if involved is None or (event.get("involvedObject") or {}).get("name") == involved
        ]

    # -- cluster set-up ------------------------------------------------------------------------

    async def add_namespace(self, name: str) -> None:
        # Stored directly: the emulator's URL parser reads /api/v1/namespaces as a namespaced path.
        self.emulator.objects[NAMESPACES, None, name] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
        }

    async def add_node(
        self, name: str, tier: str, *, cpu: str = "16", labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """A node of ``tier``: NFD labels its tier's feature and every lower tier's, as on real CPUs."""
        index = TIER_NAMES.index(tier)
        node_labels = {t.nfd_label: "true" for t in TIERS[index:]}
        node_labels["kubernetes.io/hostname"] = name
        node_labels.update(labels or {})
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": node_labels},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "64Gi"},
                "capacity": {"cpu": cpu},
                "conditions": [_node_ready_condition(True)],
            },
        }
        return await self.create("/api/v1/nodes", body)

    async def set_node_ready(self, name: str, ready: bool) -> dict[str, Any]:
        """The node's kubelet reports Ready (or stops: NotReady); its pods stay where they are."""
        return await self.patch(
            f"/api/v1/nodes/{name}/status", {"status": {"conditions": [_node_ready_condition(ready)]}}
        )

    async def taint_node(
        self, name: str, key: str, value: str = "", effect: str = "NoSchedule"
    ) -> dict[str, Any]:
        """Add (or replace, by key and effect) a taint of the node."""
        node = self.get(NODES, None, name)
        if node is None:
            raise RuntimeError(f"no node {name!r}")
        taints = [
            taint
            for taint in (node.get("spec") or {}).get("taints") or []
            if (taint.get("key"), taint.get("effect")) != (key, effect)
        ]
        taints.append({"key": key, "value": value, "effect": effect})
        return await self.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": taints}})

    async def cordon_node(self, name: str, cordoned: bool = True) -> dict[str, Any]:
        """``kubectl cordon`` (or ``uncordon``): no new pod lands there; running ones stay."""
        return await self.patch(
            f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True if cordoned else None}}
        )

    def add_claim(self, name: str) -> Path:
        folder = self.root / "pvc" / name
        folder.mkdir(parents=True, exist_ok=True)
        self.claims[name] = folder
        return folder

    def model_path(self, namespace: str, name: str | None = None) -> str:
        base = f"/apis/{self.model_resource.group}/{self.model_resource.version}/namespaces/{namespace}"
        return f"{base}/{self.model_resource.plural}" + (f"/{name}" if name else "")

    async def apply_model(self, body: Mapping[str, Any]) -> Any:
        namespace = body["metadata"]["namespace"]
        return await self.create(self.model_path(namespace), body)

    def model(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(self.model_resource, namespace, name)

    # -- the operator under test -----------------------------------------------------------------

    def write_kubeconfig(self, token: str = "test-token") -> Path:
        """The operator's credentials (write another ``token`` to rotate them)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": str(self.server.url).rstrip("/")}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
            "current-context": "kmock",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        return self.kubeconfig

    async def start_operator(
        self, *args: str, env: Mapping[str, str] | None = None, log_name: str = "operator"
    ) -> asyncio.subprocess.Process:
        """Run ``qfleet operator ARGS`` as a separate process against this cluster."""
        self.write_kubeconfig()
        full_env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "QFLEET_BENCHMARK_SECONDS": "1",
            **(env or {}),
        }
        log = open(self.root / f"{log_name}.log", "ab")  # noqa: SIM115 (closed in stop_operator)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qfleet.cli", "operator", *args, env=full_env, stdout=log, stderr=log
        )
        process._qfleet_log = log  # type: ignore[attr-defined]
        self._operators.append(process)
        return process

    async def stop_operator(self, process: asyncio.subprocess.Process, *, kill: bool = False) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        process._qfleet_log.close()  # type: ignore[attr-defined]
        if process in self._operators:
            self._operators.remove(process)

    def operator_log(self, log_name: str = "operator") -> str:
        path = self.root / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def reconciles(metrics_port: int) -> float:
        """How many reconciles the operator serving metrics on ``metrics_port`` has finished (0
        before its metrics are up): the observable event to await after a (re)start, instead of
        sleeping until it probably resumed its models."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return 0.0
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("qfleet_reconciles_total{")
        )

    # -- the controllers -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._control_loop())

    async def stop(self) -> None:
        for process in list(self._operators):
            await self.stop_operator(process)
        tasks = [*self._job_tasks.values(), *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _control_loop(self) -> None:
        while True:
            try:
                await self._control_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the cluster alive; the test will time out and show it
                print(f"cluster controllers: {type(exc).__name__}: {exc}", file=sys.stderr)
            await asyncio.sleep(0.1)

    async def _control_once(self) -> None:
        live = self.emulator.live
        jobs = {
            (job["metadata"]["namespace"], job["metadata"]["name"]): job for job in live(JOBS, copy=False)
        }
        for job in jobs.values():
            uid = job["metadata"]["uid"]
            if (
                uid not in self._job_tasks
                and not _job_finished(job)
                and self._schedule(job["spec"]["template"])
            ):
                self._job_tasks[uid] = asyncio.create_task(self._run_job(job))
        live_uids = {job["metadata"]["uid"] for job in jobs.values()}
        for uid, task in list(self._job_tasks.items()):
            if uid not in live_uids and not task.done():
                task.cancel()  # the Job was deleted: its pod goes with it
        pods = []
        for pod in live(PODS, copy=False):
            owner = (pod["metadata"].get("labels") or {}).get("controller-uid")
            if owner and owner not in live_uids:
                namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
                await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
            else:
                pods.append(pod)
        await self._control_serving(pods)
        if self.garbage_collector:
            await self._collect_garbage()

    async def _collect_garbage(self) -> None:
        """Delete dependents whose controller owner no longer exists (by uid), as Kubernetes'
        garbage collector does with background propagation."""
        dependents = [
            (resource, plural, obj)
            for resource, plural in ((JOBS, "jobs"), (DEPLOYMENTS, "deployments"))
            for obj in self.emulator.live(resource, copy=False)
            if obj["metadata"].get("ownerReferences")
        ]
        kinds = {
            owner.get("kind") for _, _, obj in dependents for owner in obj["metadata"]["ownerReferences"]
        }
        live_uids = {
            str((obj.get("metadata") or {}).get("uid")) for obj in self.emulator.live_of_kinds(kinds)
        }
        for resource, plural, obj in dependents:
            owners = obj["metadata"]["ownerReferences"]
            if all(owner.get("uid") not in live_uids for owner in owners):
                base = "/apis/batch/v1" if resource == JOBS else "/apis/apps/v1"
                namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                with contextlib.suppress(RuntimeError):
                    await self.request("DELETE", f"{base}/namespaces/{namespace}/{plural}/{name}")

    def _schedule(self, template: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first node that satisfies the pod template's required node affinity (Job pods)."""
        for node in sorted(self.emulator.live(NODES, copy=False), key=lambda n: n["metadata"]["name"]):
            if _affinity_matches(template.get("spec") or {}, node["metadata"].get("labels") or {}):
                return node
        return None

    # -- serving pods: the Deployment controller, the scheduler and the kubelet --------------------

    async def _control_serving(self, all_pods: list[dict[str, Any]]) -> None:
        """One pass over the serving pods (of ``all_pods``, every pod): the kubelet reports, the
        Deployment controller adds and removes pods, the scheduler binds the new ones, then each
        Deployment's status is written and the ready capacity recorded."""
        loop_time = asyncio.get_running_loop().time()
        # Read from the store without copies: the controllers never change what they read in
        # place, except the pods of the Deployments worked on (below), copied first.
        nodes = {node["metadata"]["name"]: node for node in self.emulator.live(NODES, copy=False)}
        deployments = self.emulator.live(DEPLOYMENTS, copy=False)
        live = {deployment["metadata"]["uid"]: deployment for deployment in deployments}
        owned: dict[str, list[dict[str, Any]]] = {uid: [] for uid in live}
        others: list[dict[str, Any]] = []
        for pod in all_pods:
            owner = _deployment_owner(pod)
            if owner is None:
                others.append(pod)
                continue
            node_name = (pod.get("spec") or {}).get("nodeName")
            if owner not in live or (node_name and node_name not in nodes):
                # The Deployment is gone (its pods go with it), or the node is (the pod GC).
                await self._delete_pod(pod)
                continue
            owned[owner].append(pod)
        uids = {pod["metadata"]["uid"] for pods in owned.values() for pod in pods}
        for table in (self._pod_seq, self._pod_bound, self._inits):
            for uid in [uid for uid in table if uid not in uids]:
                run = table.pop(uid)
                if isinstance(run, InitRun) and run.task is not None:
                    run.task.cancel()
        for uid in [uid for uid in self._rollouts if uid not in live]:
            del self._rollouts[uid]
        for table in (self._template_hashes, self._quiet):
            for uid in [uid for uid in table if uid not in live]:
                del table[uid]

        inputs = {uid: _inputs(deployment, owned[uid]) for uid, deployment in live.items()}
        active = {
            uid: deployment for uid, deployment in live.items() if not self._quiet_now(uid, inputs[uid])
        }
        for uid in active:
            # Top-level copies: the kubelet and the scheduler replace a pod they updated with the
            # API's answer in place, for the later steps of this pass.
            owned[uid] = [dict(pod) for pod in owned[uid]]
            for pod in owned[uid]:
                await self._run_serving_pod(pod, loop_time)
        for uid, deployment in active.items():
            owned[uid] = await self._roll_out(deployment, owned[uid])
        serving = [pod for pods in owned.values() for pod in pods]
        pending = [pod for pod in serving if not (pod.get("spec") or {}).get("nodeName")]
        if pending:
            bound = [pod for pod in [*others, *serving] if (pod.get("spec") or {}).get("nodeName")]
            await self._schedule_serving(
                sorted(pending, key=self._seq_of), list(nodes.values()), bound, loop_time
            )
        for uid, deployment in active.items():
            wrote = await self._report_deployment(deployment, owned[uid], loop_time)
            unchanged = not wrote and _inputs(deployment, owned[uid]) == inputs[uid]
            if unchanged and self._settled(deployment, owned[uid]):
                self._quiet[uid] = inputs[uid]
            else:
                self._quiet.pop(uid, None)
        capacity = self._capacity_of(serving)
        changes = {key: value for key, value in capacity.items() if self._capacity.get(key) != value}
        changes.update({key: 0.0 for key in self._capacity if key not in capacity})
        if changes or not self.capacity_log:
            self.capacity_log.append((loop_time, changes))
        self._capacity = capacity

    def _quiet_now(self, uid: str, inputs: tuple[str, ...]) -> bool:
        """Whether the Deployment can be left alone this pass: a pass found it settled (see
        :meth:`_settled`) and wrote nothing, and neither it nor its pods changed since.

        Then the kubelet, the Deployment controller and its status would do the same again --
        nothing -- and at 10,000 Deployments doing it anyway took more than a second a pass. A
        settled rollout is complete, so its progress (for ``progressDeadlineSeconds``) is now.
        """
        if self._quiet.get(uid) != inputs or self.serving_fault is not None or not self.deployments_ready:
            return False
        rollout = self._rollouts.get(uid)
        if rollout is not None:
            rollout.progressed = asyncio.get_running_loop().time()
        return True

    def _settled(self, deployment: Mapping[str, Any], pods: list[dict[str, Any]]) -> bool:
        """Nothing about the Deployment changes with time alone: its rollout is complete, every
        pod Running and Ready, none crash-looping or with init containers (whose results the
        kubelet reads from files on every pass)."""
        if self.serving_fault is not None or not self.deployments_ready:
            return False
        if len(pods) != _desired_replicas(deployment.get("spec") or {}):
            return False
        current_hash = self._template_hash(deployment)
        return all(
            _pod_labels(pod).get(POD_TEMPLATE_HASH) == current_hash
            and (pod.get("status") or {}).get("phase") == "Running"
            and _pod_ready(pod)
            and not (pod.get("spec") or {}).get("initContainers")
            for pod in pods
        )

    def _seq_of(self, pod: Mapping[str, Any]) -> tuple[int, str]:
        metadata = pod["metadata"]
        return self._pod_seq.get(metadata["uid"], 0), metadata["name"]

    async def _delete_pod(self, pod: Mapping[str, Any]) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        with contextlib.suppress(RuntimeError):  # already gone
            await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def _roll_out(
        self, deployment: Mapping[str, Any], pods: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The Deployment controller's scaling for one Deployment; returns its pods afterwards."""
        spec = deployment.get("spec") or {}
        replicas = _desired_replicas(spec)
        template = spec.get("template") or {}
        current_hash = self._template_hash(deployment)
        new = [pod for pod in pods if _pod_labels(pod).get(POD_TEMPLATE_HASH) == current_hash]
        old = [pod for pod in pods if _pod_labels(pod).get(POD_TEMPLATE_HASH) != current_hash]
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        surge, unavailable = rolling_limits(spec, replicas)
        doomed: list[dict[str, Any]] = []
        if len(new) > replicas:  # scaled down: pending and unready pods first, then the newest
            excess = self._scale_down_order(new)[: len(new) - replicas]
            doomed += excess
            new = [pod for pod in new if pod not in excess]
        if old and recreate:
            doomed += old
            old = []
        elif old:
            min_available = max(0, replicas - unavailable)
            new_unavailable = sum(1 for pod in new if not _pod_ready(pod))
            room = len(new) + len(old) - min_available - new_unavailable
            if room > 0:
                # Old pods that serve nothing go first; then ready ones, while enough stay ready.
                unhealthy = self._scale_down_order([pod for pod in old if not _pod_ready(pod)])[:room]
                old = [pod for pod in old if pod not in unhealthy]
                available = sum(1 for pod in [*new, *old] if _pod_ready(pod))
                count = min(available - min_available, room - len(unhealthy))
                healthy = self._scale_down_order(old)[: max(0, count)]
                old = [pod for pod in old if pod not in healthy]
                doomed += unhealthy + healthy
        for pod in doomed:
            await self._delete_pod(pod)
        missing = replicas - len(new)
        if old:
            missing = 0 if recreate else min(missing, replicas + surge - len(new) - len(old))
        for _ in range(max(0, missing)):
            new.append(await self._create_serving_pod(deployment, template, current_hash))
        return [*new, *old]

    def _template_hash(self, deployment: Mapping[str, Any]) -> str:
        """The Deployment's :func:`template_hash`, computed again only when it was written."""
        metadata = deployment["metadata"]
        version = str(metadata.get("resourceVersion"))
        cached = self._template_hashes.get(metadata["uid"])
        if cached is None or cached[0] != version:
            cached = (version, template_hash((deployment.get("spec") or {}).get("template") or {}))
            self._template_hashes[metadata["uid"]] = cached
        return cached[1]

    def _scale_down_order(self, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Unscheduled, then pending, then unready pods, then the newest (as the ReplicaSet does)."""

        def rank(pod: dict[str, Any]) -> tuple[bool, bool, bool, int]:
            phase = (pod.get("status") or {}).get("phase")
            scheduled = bool((pod.get("spec") or {}).get("nodeName"))
            return scheduled, phase != "Pending", _pod_ready(pod), -self._seq_of(pod)[0]

        return sorted(pods, key=rank)

    async def _create_serving_pod(
        self, deployment: Mapping[str, Any], template: Mapping[str, Any], pod_hash: str
    ) -> dict[str, Any]:
        metadata = deployment["metadata"]
        namespace = metadata["namespace"]
        template_metadata = template.get("metadata") or {}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{metadata['name']}-{pod_hash}-{generated_suffix()}",
                "namespace": namespace,
                "labels": {**(template_metadata.get("labels") or {}), POD_TEMPLATE_HASH: pod_hash},
                "annotations": dict(template_metadata.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": metadata["name"],
                        "uid": metadata["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(dict(template.get("spec") or {})),
            "status": {"phase": "Pending"},
        }
        created: dict[str, Any] = await self.create(f"/api/v1/namespaces/{namespace}/pods", body)
        self._pod_seq[created["metadata"]["uid"]] = next(self._pod_counter)
        return created

    async def _schedule_serving(
        self,
        pending: list[dict[str, Any]],
        nodes: list[dict[str, Any]],
        bound: list[dict[str, Any]],
        loop_time: float,
    ) -> None:
        """Bind each pending pod to the fitting node with the most free CPU, or say why none fits."""
        used: collections.defaultdict[str, float] = collections.defaultdict(float)
        for pod in bound:
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                used[pod["spec"]["nodeName"]] += pod_cpu_request(pod)
        for pod in pending:
            request = pod_cpu_request(pod)
            fitting: list[tuple[float, str]] = []
            reasons: collections.Counter[str] = collections.Counter()
            for node in nodes:
                name = node["metadata"]["name"]
                why = unfit_reason(pod, node, request, used[name])
                if why is None:
                    fitting.append((node_cpu(node) - used[name], name))
                else:
                    reasons[why] += 1
            path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
            if fitting:
                _, chosen = min(fitting, key=lambda item: (-item[0], item[1]))
                used[chosen] += request
                self._pod_bound[pod["metadata"]["uid"]] = loop_time
                pod["spec"] = {**(pod.get("spec") or {}), "nodeName": chosen}  # not in place: stored
                status = self._serving_status(pod, ready=False, crashing=False, restarts=0)
                updated = await self.patch(path, {"spec": {"nodeName": chosen}, "status": status})
                pod.clear()
                pod.update(updated)
                continue
            message = (
                f"0/{len(nodes)} nodes are available: "
                + ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
                + "."
                if nodes
                else "no nodes available to schedule pods"
            )
            scheduled = _condition(pod, "PodScheduled")
            if scheduled.get("reason") == "Unschedulable" and scheduled.get("message") == message:
                continue
            since = (
                scheduled.get("lastTransitionTime") if scheduled.get("reason") == "Unschedulable" else None
            )
            condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": message, "lastTransitionTime": since or now()}  # fmt: skip
            updated = await self.patch(
                path + "/status", {"status": {"phase": "Pending", "conditions": [condition]}}
            )
            pod.clear()
            pod.update(updated)

    async def _run_serving_pod(self, pod: dict[str, Any], loop_time: float) -> None:
        """The kubelet of a bound serving pod: its init containers run for real (their commands,
        as a Job's), then Ready after :attr:`pod_ready_seconds`, or crashing."""
        if not (pod.get("spec") or {}).get("nodeName"):
            return
        uid = pod["metadata"]["uid"]
        bound = self._pod_bound.setdefault(uid, loop_time)
        annotations = pod["metadata"].get("annotations") or {}
        crashing = self.serving_fault is not None and bool(self.serving_fault(annotations))
        if pod["spec"].get("initContainers"):
            init = self._init_run(pod, loop_time)
            if not init.succeeded:
                await self._report_init(pod, init)
                return
            bound = init.finished_at
            # The server starts from what the init containers left: a model that is not there
            # makes it crash, as the real server would.
            crashing = crashing or not init.server_model.exists()
        container_status = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
        restarts = int(container_status.get("restartCount") or 0)
        if crashing:
            ready = False
            restarts = max(restarts, int((loop_time - bound) / CRASH_LOOP_SECONDS))
        else:
            ready = self.deployments_ready and loop_time - bound >= self.pod_ready_seconds
        waiting = (container_status.get("state") or {}).get("waiting") or {}
        shown = (
            _pod_ready(pod),
            waiting.get("reason") == "CrashLoopBackOff",
            container_status.get("restartCount"),
        )
        if (pod.get("status") or {}).get("phase") == "Running" and shown == (ready, crashing, restarts):
            return
        status = self._serving_status(pod, ready=ready, crashing=crashing, restarts=restarts)
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}/status"
        updated = await self.patch(path, {"status": status})
        pod.clear()
        pod.update(updated)

    def _init_run(self, pod: dict[str, Any], loop_time: float) -> InitRun:
        """The pod's init containers' run: started once, restarted after a failure (the kubelet's
        back-off for a restartPolicy Always pod)."""
        uid = pod["metadata"]["uid"]
        run = self._inits.get(uid)
        if run is None:
            pod_dir = self.root / "pods" / pod["metadata"]["name"]
            pod_dir.mkdir(parents=True, exist_ok=True)
            run = self._inits[uid] = InitRun(pod_dir)
        if run.task is None and not run.succeeded and loop_time >= run.retry_at:
            run.task = asyncio.create_task(self._run_init_containers(pod, run))
        return run

    async def _run_init_containers(self, pod: dict[str, Any], run: InitRun) -> None:
        """Each init container's real command, in order, with the pod's volumes on this host."""
        await self.release_inits.wait()
        template = {"metadata": pod["metadata"], "spec": pod["spec"]}
        node = self.get(NODES, None, pod["spec"]["nodeName"]) or {
            "metadata": {"name": pod["spec"]["nodeName"]}
        }
        namespace = pod["metadata"]["namespace"]
        loop = asyncio.get_running_loop()
        try:
            for container in pod["spec"]["initContainers"]:
                argv, env, _ = self.pod_process(
                    template, run.pod_dir, node, namespace=namespace, container=container
                )
                with open(run.pod_dir / f"{container['name']}.log", "ab") as log:
                    process = await asyncio.create_subprocess_exec(
                        *argv, env=env, stdout=log, stderr=log, cwd=run.pod_dir
                    )
                    code = await process.wait()
                run.exit_codes.append(code)
                if code != 0:
                    run.failed_container = container["name"]
                    run.restarts += 1
                    run.retry_at = loop.time() + CRASH_LOOP_SECONDS
                    return
            server = pod["spec"]["containers"][0]
            argv, _, _ = self.pod_process(template, run.pod_dir, node, namespace=namespace, container=server)
            run.server_model = Path(argv[argv.index("--model") + 1]) if "--model" in argv else run.pod_dir
            run.finished_at = loop.time()
            run.succeeded = True
        finally:
            run.task = None

    async def _report_init(self, pod: dict[str, Any], run: InitRun) -> None:
        """A pod held by its init containers: Pending, Initialized False, the failing one in
        CrashLoopBackOff after a failure (as ``kubectl`` shows ``Init:CrashLoopBackOff``)."""
        statuses = []
        for container in pod["spec"]["initContainers"]:
            failing = container["name"] == run.failed_container
            state: dict[str, Any] = (
                {"waiting": {"reason": "CrashLoopBackOff",
                             "message": f"back-off restarting failed container {container['name']}"}}
                if failing and run.restarts
                else {"running": {"startedAt": now()}}
            )  # fmt: skip
            last = {"terminated": {"exitCode": run.exit_codes[-1], "reason": "Error"}} if failing else {}
            statuses.append({"name": container["name"], "image": container.get("image", ""), "ready": False,
                             "restartCount": run.restarts if failing else 0, "state": state, "lastState": last})  # fmt: skip
        current = pod.get("status") or {}
        if current.get("initContainerStatuses") == statuses:
            return
        status = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "False"},
                           {"type": "Ready", "status": "False"}],
            "initContainerStatuses": statuses,
            "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "ready": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": "PodInitializing"}}}
                                  for c in pod["spec"]["containers"]],
        }  # fmt: skip
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}/status"
        updated = await self.patch(path, {"status": status})
        pod.clear()
        pod.update(updated)

    def init_runs(self) -> list[InitRun]:
        """The serving pods' init container runs so far (for tests)."""
        return list(self._inits.values())

    def _serving_status(
        self, pod: Mapping[str, Any], *, ready: bool, crashing: bool, restarts: int
    ) -> dict[str, Any]:
        """A bound pod's status: Running, its container ready or not, or crash-looping."""
        stamp = now()
        previous = pod.get("status") or {}
        started = previous.get("startTime") or stamp
        before = {cond.get("type"): cond for cond in previous.get("conditions") or []}

        def condition(kind: str, value: bool) -> dict[str, Any]:
            status = "True" if value else "False"
            old = before.get(kind) or {}
            since = old.get("lastTransitionTime") if old.get("status") == status else None
            return {"type": kind, "status": status, "lastTransitionTime": since or stamp}

        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        name = container.get("name", "server")
        image = container.get("image", "")
        if crashing:
            state: dict[str, Any] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off restarting failed container {name} in pod {pod['metadata']['name']}",
                }
            }
            last_state: dict[str, Any] = {
                "terminated": {"exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": stamp}
            }
        else:
            state, last_state = {"running": {"startedAt": started}}, {}
        seq = self._seq_of(pod)[0]
        node = str(pod["spec"]["nodeName"])
        return {
            "phase": "Running",
            "hostIP": f"10.0.0.{int(hashlib.sha256(node.encode()).hexdigest(), 16) % 250 + 2}",
            "podIP": f"10.244.{seq // 250 % 250}.{seq % 250 + 2}",
            "startTime": started,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", True),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": [
                {
                    "name": name,
                    "image": image,
                    "imageID": f"docker.io/{image}@sha256:{'0' * 64}",
                    "ready": ready,
                    "started": not crashing,
                    "restartCount": restarts,
                    "state": state,
                    "lastState": last_state,
                }
            ],
        }

    async def _report_deployment(
        self, deployment: Mapping[str, Any], pods: list[dict[str, Any]], loop_time: float
    ) -> bool:
        """The Deployment's status subresource, written only when something in it changed (then
        True)."""
        metadata, spec = deployment["metadata"], deployment.get("spec") or {}
        replicas = _desired_replicas(spec)
        current_hash = self._template_hash(deployment)
        new = [pod for pod in pods if _pod_labels(pod).get(POD_TEMPLATE_HASH) == current_hash]
        ready = sum(1 for pod in pods if _pod_ready(pod))
        new_ready = sum(1 for pod in new if _pod_ready(pod))
        generation = int(metadata.get("generation") or 1)
        rollout = self._rollouts.get(metadata["uid"])
        if rollout is None or (rollout.template_hash, rollout.generation) != (current_hash, generation):
            rollout = self._rollouts[metadata["uid"]] = _Rollout(
                current_hash, generation, new_ready, loop_time
            )
        elif new_ready > rollout.new_ready:
            rollout.progressed = loop_time
        rollout.new_ready = new_ready
        complete = len(pods) == len(new) == new_ready == replicas
        if complete:
            rollout.progressed = loop_time
        deadline = spec.get("progressDeadlineSeconds")
        deadline = 600.0 if deadline is None else float(deadline)
        replica_set = f"{metadata['name']}-{current_hash}"
        if complete:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{replica_set}" has successfully progressed.',
            )
        elif loop_time - rollout.progressed > deadline:
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{replica_set}" has timed out progressing.',
            )
        else:
            progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{replica_set}" is progressing.')
        _, unavailable = rolling_limits(spec, replicas)
        if ready >= replicas - unavailable:
            available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            available = (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        counts = {
            "observedGeneration": generation,
            "replicas": len(pods),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, len(pods) - ready),
        }
        status = deployment.get("status") or {}
        before = {cond.get("type"): cond for cond in status.get("conditions") or []}
        wanted = {"Available": available, "Progressing": progressing}
        shown = {
            kind: (cond.get("status"), cond.get("reason"), cond.get("message"))
            for kind, cond in before.items()
        }
        if all(status.get(key) == value for key, value in counts.items()) and shown == wanted:
            return False
        stamp = now()
        conditions = []
        for kind, (value, reason, message) in wanted.items():
            old = before.get(kind) or {}
            same = shown.get(kind) == (value, reason, message)
            transition = old.get("lastTransitionTime") if old.get("status") == value else None
            conditions.append({
                "type": kind, "status": value, "reason": reason, "message": message,
                "lastUpdateTime": (old.get("lastUpdateTime") if same else None) or stamp,
                "lastTransitionTime": transition or stamp,
            })  # fmt: skip
        path = f"/apis/apps/v1/namespaces/{metadata['namespace']}/deployments/{metadata['name']}/status"
        await self.patch(path, {"status": {**counts, "conditions": conditions}})
        return True

    # -- serving capacity ----------------------------------------------------------------------------

    def _capacity_of(self, pods: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
        """Ready capacity per (namespace, model): FPS per replica x target utilization, summed
        over the Ready serving pods."""
        totals: dict[tuple[str, str], float] = {}
        utilization: dict[tuple[str, str], float] = {}
        for pod in pods:
            metadata = pod["metadata"]
            annotations = metadata.get("annotations") or {}
            model = annotations.get(MODEL_NAME_ANNOTATION)
            if _pod_labels(pod).get(COMPONENT_LABEL) != "server" or not model or not _pod_ready(pod):
                continue
            key = (str(metadata.get("namespace")), str(model))
            if key not in utilization:
                model = self._stored(self.model_resource, *key) or {}
                demand = (model.get("spec") or {}).get("demand") or {}
                utilization[key] = float(demand.get("targetUtilization", 0.8))
            try:
                fps = float(annotations.get(FPS_ANNOTATION) or 0.0)
            except ValueError:
                fps = 0.0
            totals[key] = totals.get(key, 0.0) + fps * utilization[key]
        return totals

    def serving_pods(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """The model's serving pods (all states, all tiers), by name."""
        return sorted(
            (
                pod
                for pod in self.objects(PODS, namespace)
                if _pod_labels(pod).get(COMPONENT_LABEL) == "server"
                and (pod["metadata"].get("annotations") or {}).get(MODEL_NAME_ANNOTATION) == model
            ),
            key=lambda pod: pod["metadata"]["name"],
        )

    def ready_capacity(self, namespace: str, model: str) -> float:
        """The model's ready serving capacity now (FPS x target utilization of its Ready pods)."""
        return self._capacity_of(self.serving_pods(namespace, model)).get((namespace, model), 0.0)

    @staticmethod
    def capacity_mark() -> float:
        """A point in time to pass to :meth:`min_capacity_since`."""
        return asyncio.get_running_loop().time()

    def min_capacity_since(self, mark: float, namespace: str, model: str) -> float:
        """The lowest ready capacity of the model over the controller passes since ``mark``
        (the value in effect at ``mark`` and the current one included)."""
        key = (namespace, model)
        values = [self.ready_capacity(namespace, model)]
        in_effect: float | None = None
        value = 0.0
        for when, changes in self.capacity_log:
            value = changes.get(key, value)
            if when <= mark:
                in_effect = value
            else:
                values.append(value)
        if in_effect is not None:
            values.append(in_effect)
        return min(values)

    # -- the kubelet and the Job controller ------------------------------------------------------

    async def _run_job(self, job: dict[str, Any]) -> None:
        metadata = job["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        run = self.runs.setdefault(name, JobRun(name))
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempts = asyncio.create_task(self._run_attempts(job, run))
        try:
            while not attempts.done():
                await asyncio.wait({attempts}, timeout=0.1)
                # activeDeadlineSeconds counts from the Job's start and may be changed meanwhile.
                current = self._stored(JOBS, namespace, name) or job
                deadline = (current.get("spec") or {}).get("activeDeadlineSeconds")
                if attempts.done() or deadline is None or loop.time() - started <= float(deadline):
                    continue
                attempts.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempts
                run.deadline_exceeded = True
                # The Job controller terminates (deletes) the active pods, then fails the Job.
                for pod in self.emulator.live(PODS, namespace):
                    labels = pod["metadata"].get("labels") or {}
                    if labels.get("controller-uid") == metadata["uid"] and (
                        (pod.get("status") or {}).get("phase") in ("Pending", "Running")
                    ):
                        await self.request(
                            "DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}"
                        )
                await self._finish_job(namespace, name, succeeded=False, reason="DeadlineExceeded",
                                       message="Job was active longer than specified deadline")  # fmt: skip
                return
            attempts.result()
        finally:
            if not attempts.done():
                attempts.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempts
            run.finished.set()

    async def _run_attempts(self, job: dict[str, Any], run: JobRun) -> None:
        metadata, spec = job["metadata"], job["spec"]
        namespace, name = metadata["namespace"], metadata["name"]
        failure_codes = _fail_job_exit_codes(spec)
        backoff_limit = int(spec.get("backoffLimit", 6))
        attempt = 0
        while True:
            node = self._schedule(spec["template"])
            if node is None:
                await asyncio.sleep(0.2)
                continue
            exit_code, _ = await self._run_pod(job, node, attempt, run)
            if exit_code == 0:
                await self._finish_job(namespace, name, succeeded=True)
                return
            if exit_code in failure_codes:
                await self._finish_job(namespace, name, succeeded=False, reason="PodFailurePolicy",
                                       message=f"Container pipeline failed with exit code {exit_code}")  # fmt: skip
                return
            attempt += 1
            if attempt > backoff_limit:
                await self._finish_job(namespace, name, succeeded=False, reason="BackoffLimitExceeded",
                                       message="Job has reached the specified backoff limit")  # fmt: skip
                return

    async def _run_pod(
        self, job: dict[str, Any], node: dict[str, Any], attempt: int, run: JobRun
    ) -> tuple[int, str]:
        metadata = job["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        pod_name = f"{name}-{attempt}{uuid.uuid4().hex[:4]}"
        pod_dir = self.root / "pods" / pod_name
        pod_dir.mkdir(parents=True)
        argv, env, termination_file = self.pod_process(template, pod_dir, node, namespace=namespace)
        if self.path_rewriter is not None:
            argv, env = only_paths_rewritten((argv, env), self.path_rewriter(list(argv), dict(env)))
        run.argv, run.env, run.node = argv, env, node["metadata"]["name"]
        run.log = pod_dir / "log.txt"
        labels = {
            **(template["metadata"].get("labels") or {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": metadata["uid"],
            "batch.kubernetes.io/controller-uid": metadata["uid"],
        }
        started = now()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": metadata["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": node["metadata"]["name"]},
            "status": {"phase": "Running", "startTime": started},
        }
        await self.create(f"/api/v1/namespaces/{namespace}/pods", pod)
        with open(run.log, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=log, stderr=log, cwd=pod_dir
            )
            run.process = process
            fault = self.pod_fault(name, attempt) if self.pod_fault is not None else None
            try:
                if fault is not None and fault.kind == "oom":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(process.wait()), fault.after)
                    if process.returncode is None:
                        process.kill()  # the kernel's OOM killer: SIGKILL, no chance to write a message
                exit_code = await process.wait()
            except asyncio.CancelledError:
                process.kill()
                await process.wait()
                raise
        oom_killed = fault is not None and fault.kind == "oom" and exit_code == -signal.SIGKILL
        if exit_code < 0:
            exit_code = 128 - exit_code  # a signal: the container runtime reports 128 + signal
        message = termination_file.read_text(errors="replace")[:4096] if termination_file.exists() else ""
        if fault is not None and fault.kind == "message":
            message = fault.message
        # Inside the container the process saw its mount paths, and so do the paths it reports.
        message = self.pod_paths_in(message, template, pod_dir)
        reason = "OOMKilled" if oom_killed else "Completed" if exit_code == 0 else "Error"
        run.exit_codes.append(exit_code)
        run.messages.append(message)
        run.reasons.append(reason)
        await self.release_jobs.wait()
        image = container["image"]
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "startedAt": started,
            "finishedAt": now(),
        }
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": image,
                    "imageID": f"docker.io/{image}@sha256:{'0' * 64}",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
        await self.patch(f"/api/v1/namespaces/{namespace}/pods/{pod_name}/status", {"status": status})
        return exit_code, message

    def _mounts(
        self,
        template: Mapping[str, Any],
        pod_dir: Path,
        container: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> tuple[Mapping[str, Any], Path, dict[str, Path]]:
        """The container (the first unless named), its termination message file and its mount
        paths -> host folders (a ConfigMap volume gets the ConfigMap's files)."""
        spec = template["spec"]
        container = container or spec["containers"][0]
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        mapping: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise RuntimeError(f"pod mounts claim {claim!r}, which the test did not provide")
                mapping[mount["mountPath"]] = self.claims[claim]
            else:
                folder = pod_dir / "volumes" / mount["name"]
                folder.mkdir(parents=True, exist_ok=True)
                if "configMap" in volume and namespace is not None:
                    self._write_config_map(volume["configMap"], namespace, folder)
                mapping[mount["mountPath"]] = folder
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        termination_file = pod_dir / "termination-log"
        mapping[termination_path] = termination_file

        return container, termination_file, mapping

    def _write_config_map(self, source: Mapping[str, Any], namespace: str, folder: Path) -> None:
        config_map = self.get(CONFIGMAPS, namespace, source["name"])
        if config_map is None:
            raise RuntimeError(f"pod mounts ConfigMap {source['name']!r}, which the test did not create")
        data = config_map.get("data") or {}
        for item in source.get("items") or [{"key": key, "path": key} for key in data]:
            (folder / item["path"]).write_text(data[item["key"]])

    def _env_from(self, container: Mapping[str, Any], namespace: str) -> dict[str, str]:
        """``envFrom``: every key of the named Secrets (base64 ``data``) and ConfigMaps."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                secret = self.get(SECRETS, namespace, source["secretRef"]["name"])
                if secret is None:  # the kubelet's CreateContainerConfigError
                    raise RuntimeError(f"container needs Secret {source['secretRef']['name']!r}")
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
            elif "configMapRef" in source:
                config_map = self.get(CONFIGMAPS, namespace, source["configMapRef"]["name"]) or {}
                env.update(config_map.get("data") or {})
        return env

    def pod_paths_in(self, text: str, template: Mapping[str, Any], pod_dir: Path) -> str:
        """``text`` with this host's folders written back as the pod's mount paths."""
        _, _, mapping = self._mounts(template, pod_dir)
        for pod_path, host in sorted(mapping.items(), key=lambda item: len(str(item[1])), reverse=True):
            text = text.replace(str(host), pod_path)
        return text

    def pod_process(
        self,
        template: Mapping[str, Any],
        pod_dir: Path,
        node: Mapping[str, Any],
        *,
        namespace: str | None = None,
        container: Mapping[str, Any] | None = None,
    ) -> tuple[list[str], dict[str, str], Path]:
        """The container's command line and environment with its paths mapped to this host.

        Only paths change: each volume mount's path becomes a host folder and the termination
        message path a file in ``pod_dir``; the executable is looked up in this Python's bin dir.
        """
        container, termination_file, mapping = self._mounts(template, pod_dir, container, namespace)

        def rewrite(value: str) -> str:
            for pod_path in sorted(mapping, key=len, reverse=True):
                if value == pod_path or value.startswith(pod_path.rstrip("/") + "/"):
                    return str(mapping[pod_path]) + value[len(pod_path) :]
            return value

        argv = [rewrite(part) for part in [*container.get("command", []), *container.get("args", [])]]
        executable = Path(sys.executable).parent / argv[0]
        if executable.exists():
            argv[0] = str(executable)
        env = dict(os.environ)
        if namespace is not None:
            env.update(self._env_from(container, namespace))
        for item in container.get("env") or []:
            env[item["name"]] = rewrite(str(item.get("value", "")))
        # A stuck process dumps its Python stacks on SIGABRT (see diagnostics()).
        env["PYTHONFAULTHANDLER"] = "1"
        node_tier = _tier_of(node)
        if node_tier is not None:
            env["QFLEET_HOST_ISA"] = node_tier
            if can_emulate(node_tier):
                env.update(kernel_cap_env(node_tier))
        return argv, env, termination_file

    async def _finish_job(
        self, namespace: str, name: str, *, succeeded: bool, reason: str = "", message: str = ""
    ) -> None:
        stamp = now()
        if succeeded:
            status = {
                "succeeded": 1,
                "active": 0,
                "completionTime": stamp,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
                    {"type": "Complete", "status": "True", "lastTransitionTime": stamp},
                ],
            }
        else:
            status = {
                "failed": 1,
                "active": 0,
                "conditions": [
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": reason,
                        "lastTransitionTime": stamp,
                    },
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": stamp,
                    },
                ],
            }
        await self.patch(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status", {"status": status})

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_for(
        self,
        what: str,
        check: Callable[[], Any | Awaitable[Any]],
        *,
        timeout: float = 60,
        interval: float = 0.1,
    ) -> Any:
        """Poll ``check`` until it returns a truthy value; fail with the operator's log otherwise."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.diagnostics()}")
            await asyncio.sleep(interval)

    def serving_diagnostics(self) -> list[str]:
        """Each Deployment's counts and conditions, and each of its pods: phase, readiness, why."""
        lines = ["--- deployments:"]
        pods = self.objects(PODS)
        for deployment in self.objects(DEPLOYMENTS):
            metadata, spec = deployment["metadata"], deployment.get("spec") or {}
            status = deployment.get("status") or {}
            conditions = " ".join(
                f"{cond.get('type')}={cond.get('status')}({cond.get('reason')})"
                for cond in status.get("conditions") or []
            )
            lines.append(
                f"{metadata['namespace']}/{metadata['name']}: replicas={spec.get('replicas')} "
                f"template={template_hash(spec.get('template') or {})} status: replicas={status.get('replicas')} "
                f"updated={status.get('updatedReplicas')} ready={status.get('readyReplicas')} {conditions}"
            )
            for pod in sorted(pods, key=lambda pod: pod["metadata"]["name"]):
                if _deployment_owner(pod) != metadata["uid"]:
                    continue
                pod_status = pod.get("status") or {}
                container = (pod_status.get("containerStatuses") or [{}])[0]
                waiting = (container.get("state") or {}).get("waiting") or {}
                scheduled = _condition(pod, "PodScheduled")
                why = waiting.get("reason") or (
                    f"{scheduled.get('reason')}: {scheduled.get('message')}"
                    if scheduled.get("status") == "False"
                    else ""
                )
                lines.append(
                    f"   {pod['metadata']['name']}: {pod_status.get('phase')} ready={_pod_ready(pod)} "
                    f"node={(pod.get('spec') or {}).get('nodeName')} restarts={container.get('restartCount', 0)} {why}"
                )
        return lines

    def diagnostics(self) -> str:
        lines = ["--- models:"]
        for model in self.objects(self.model_resource):
            status = model.get("status") or {}
            lines.append(f"{model['metadata']['name']}: phase={status.get('phase')} conditions=")
            for cond in status.get("conditions") or []:
                lines.append(
                    f"   {cond['type']}={cond['status']} {cond.get('reason')}: {cond.get('message')}"
                )
            for variant in status.get("variants") or []:
                lines.append(
                    f"   variant {variant.get('isa')}: {variant.get('state')} {variant.get('message')}"
                )
        lines.append("--- jobs: " + ", ".join(job["metadata"]["name"] for job in self.objects(JOBS)))
        lines.extend(self.serving_diagnostics())
        for name, run in self.runs.items():
            lines.append(f"--- run {name}: exit codes {run.exit_codes}")
            if run.process is not None and run.process.returncode is None:
                lines.append("(still running: aborted to show where it is stuck)")
                run.process.send_signal(signal.SIGABRT)
                time.sleep(1.0)
            if run.log and run.log.exists():
                lines.append(run.log.read_text(errors="replace")[-4000:])
        lines.append("--- operator log (tail):")
        lines.append(self.operator_log()[-6000:])
        return "\n".join(lines)


def only_paths_rewritten(
    before: tuple[list[str], dict[str, str]], after: tuple[list[str], dict[str, str]]
) -> tuple[list[str], dict[str, str]]:
    """``after``, if it differs from ``before`` only in paths; a test may move files, not change
    the command the operator wrote (or what the container's environment says)."""
    (argv, env), (new_argv, new_env) = before, after
    if len(new_argv) != len(argv) or set(new_env) != set(env):
        raise AssertionError("a rewrite may change paths only, not add or remove arguments or variables")
    changed = [(old, new) for old, new in zip(argv, new_argv, strict=True) if old != new]
    changed += [(env[key], new_env[key]) for key in env if env[key] != new_env[key]]
    for old, new in changed:
        if not (old.startswith("/") and new.startswith("/")):
            raise AssertionError(f"a rewrite may change paths only: {old!r} -> {new!r}")
    if Path(new_argv[0]).name != Path(argv[0]).name:
        raise AssertionError(f"the executable must stay {Path(argv[0]).name!r}")
    return new_argv, new_env


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(
        cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
        for cond in (job.get("status") or {}).get("conditions") or []
    )


def _fail_job_exit_codes(spec: Mapping[str, Any]) -> set[int]:
    codes: set[int] = set()
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        on_exit = rule.get("onExitCodes") or {}
        if rule.get("action") == "FailJob" and on_exit.get("operator") == "In":
            codes.update(int(value) for value in on_exit.get("values") or [])
    return codes


#: The label that ties a Deployment's pods to the pod template they were made from.
POD_TEMPLATE_HASH = "pod-template-hash"
#: What the capacity log reads of a serving pod (see :meth:`Cluster.ready_capacity`).
FPS_ANNOTATION = "qfleet.dev/fps-per-replica"
MODEL_NAME_ANNOTATION = "qfleet.dev/model-name"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: A crash-looping container restarts this often (the real back-off grows; tests need it short).
CRASH_LOOP_SECONDS = 0.3


@dataclass
class _Rollout:
    """The Deployment controller's memory of one rollout: its template, and when a new pod last
    became ready (the progress that ``progressDeadlineSeconds`` waits for)."""

    template_hash: str
    generation: int
    new_ready: int
    progressed: float


def template_hash(template: Mapping[str, Any]) -> str:
    """The ``pod-template-hash`` of a pod template: ten hex digits of a hash of it."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _scaled(value: Any, replicas: int, *, round_up: bool) -> int:
    text = str(value).strip()
    if text.endswith("%"):
        share = replicas * float(text[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(text)


def rolling_limits(spec: Mapping[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods: numbers or percentages of ``replicas`` (25% each by
    default; surge rounds up, unavailable down; both 0 means 1 unavailable, as Kubernetes does)."""
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge_value = rolling.get("maxSurge")
    unavailable_value = rolling.get("maxUnavailable")
    surge = _scaled("25%" if surge_value is None else surge_value, replicas, round_up=True)
    unavailable = _scaled("25%" if unavailable_value is None else unavailable_value, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _desired_replicas(spec: Mapping[str, Any]) -> int:
    replicas = spec.get("replicas")
    return 1 if replicas is None else int(replicas)


def _pod_labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return _condition(pod, "Ready").get("status") == "True"


def _inputs(deployment: Mapping[str, Any], pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """What a Deployment's pass reads, in short: its and its pods' resourceVersions (unique to each
    write, so equal tuples mean the same objects, unchanged)."""
    return (
        str(deployment["metadata"].get("resourceVersion")),
        *(str(pod["metadata"].get("resourceVersion")) for pod in pods),
    )


def _deployment_owner(pod: Mapping[str, Any]) -> str | None:
    """The uid of the Deployment that controls the pod, if one does."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "Deployment" and owner.get("controller"):
            return str(owner.get("uid"))
    return None


def _node_ready_condition(ready: bool) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "NodeStatusUnknown",
        "message": "kubelet is posting ready status" if ready else "Kubelet stopped posting node status.",
        "lastHeartbeatTime": now(),
        "lastTransitionTime": now(),
    }


def _cpu(quantity: Any) -> float:
    try:
        return parse_cpu(quantity)
    except ValueError:
        return 0.0


def pod_cpu_request(pod: Mapping[str, Any]) -> float:
    """The CPU a pod requests: each container's request (its limit where it sets none), summed."""
    total = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu")
        if cpu is not None:
            total += _cpu(cpu)
    return total


def node_cpu(node: Mapping[str, Any]) -> float:
    return _cpu(((node.get("status") or {}).get("allocatable") or {}).get("cpu", "0"))


def tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether a toleration of the pod matches the taint (Kubernetes' rules: ``Exists`` with no
    key tolerates every taint, an empty effect matches every effect, ``Equal`` is the default)."""
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _affinity_matches(pod_spec: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether node ``labels`` satisfy the pod's nodeSelector and required node affinity."""
    selector = pod_spec.get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    terms = (
        ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms")
    )
    return not terms or any(_matches(term, labels) for term in terms)


def unfit_reason(pod: Mapping[str, Any], node: Mapping[str, Any], request: float, used: float) -> str | None:
    """Why the scheduler cannot bind ``pod`` to ``node`` (``used``: CPU requested there already),
    in the words of its FailedScheduling message; None when the pod fits."""
    node_spec = node.get("spec") or {}
    pod_spec = pod.get("spec") or {}
    if _condition(node, "Ready").get("status") != "True":
        return "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
    if node_spec.get("unschedulable"):
        return "node(s) were unschedulable"
    if not _affinity_matches(pod_spec, (node.get("metadata") or {}).get("labels") or {}):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            pod_spec.get("tolerations") or [], taint
        ):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"
    if node_cpu(node) - used < request - 1e-9:
        return "Insufficient cpu"
    return None


def _matches(term: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for expression in term.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@functools.cache
def real_host_flags() -> frozenset[str]:
    """This host's CPU flags from /proc/cpuinfo (never the QFLEET_HOST_ISA override)."""
    try:
        return frozenset(cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace")))
    except OSError:
        return frozenset()


def can_emulate(tier_name: str, flags: frozenset[str] | None = None) -> bool:
    """Whether capping the kernels at ``tier_name`` runs exactly that tier here: the tier is at or
    below this host's real one and the host has every flag of it (a Skylake AVX-512 host, say,
    has no AVX-VNNI although that tier ranks lower)."""
    flags = real_host_flags() if flags is None else flags
    host = tier_from_flags(flags)
    if host is None:
        return False
    return TIER_NAMES.index(tier_name) >= TIER_NAMES.index(host) and flags.issuperset(
        tier(tier_name).cpuinfo_flags
    )


def _tier_of(node: Mapping[str, Any]) -> str | None:
    from qfleet.isa import tier_from_labels

    return tier_from_labels((node.get("metadata") or {}).get("labels"))


@contextlib.asynccontextmanager
async def running_cluster(root: Path, emulator_class: type[Emulator] | None = None) -> AsyncIterator[Cluster]:
    """An emulated API server on a local port, with the cluster's controllers running
    (``emulator_class``: an :class:`Emulator` subclass that, say, records the requests)."""
    async with (emulator_class or Emulator)() as emulator, kmock.Server(emulator) as server:
        # Built-in resources first: kopf waits for namespaces and the core API before anything.
        emulator.resources.load_bundled()
        cluster = Cluster(emulator, server, root)
        await cluster.start()
        try:
            yield cluster
        finally:
            await cluster.stop()
