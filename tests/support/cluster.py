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
- the **Deployment controller**: reports ``readyReplicas`` (when a node matches the template's
  affinity and :attr:`Cluster.deployments_ready` is set).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import functools
import json
import os
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

import kmock
import yaml
from kmock._internal import dicts as kmock_dicts

from qfleet.isa import TIER_NAMES, TIERS, cpuinfo_flags, kernel_cap_env, tier, tier_from_flags
from tests.support.paths import REPO

CRD_PATH = REPO / "crds" / "qfleet.dev_quantizedmodels.yaml"

JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
NODES = kmock.resource("", "v1", "nodes")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _path_get(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)  # type: ignore[assignment]
    return data


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.strip(".").split(".")
    result: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        result = {part: result}
    return result


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
        if self.method is not None and method.upper() != self.method.upper():
            return False
        is_watch = query.get("watch") in ("true", "1")
        if self.watch is not None and is_watch != self.watch:
            return False
        return re.search(self.path, path) is not None

    def release(self) -> None:
        """End a held delay now."""
        self.released.set()


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


class Emulator(kmock.KubernetesEmulator):
    """The emulator plus the metadata stamping and scale mapping of a real API server."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._revision = 0
        self._scale_paths: dict[Any, tuple[str, str]] = {}
        #: (resource, namespace, name) of every creation request, 409s included.
        self.creations: list[tuple[Any, str | None, str]] = []
        self._in_flight: set[kmock.Request] = set()
        #: Requests served, by (action, plural, subresource): what a client costs the API server.
        self.request_counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: Injected faults, tried in order (the first that matches acts).
        self.faults: list[Fault] = []

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
        items = [
            obj.raw
            for (resource, _, _), obj in list(self.objects.items())
            if resource == NAMESPACES and not obj.deleted
        ]
        return aiohttp.web.json_response(
            {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": str(self._revision)},
             "items": items}
        )  # fmt: skip

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _handle(self, request: kmock.Request) -> Any:
        self._in_flight.add(request)
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
            self._in_flight.discard(request)
            self._forget_requests()

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        """The emulator's object lookup, by key when the request names one object.

        (The emulator scans every stored object for every request; with thousands of objects
        that, not the client under test, would dominate every measurement.)
        """
        if strict and request.name is not None and request.resource is not None:
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]

    def _forget_requests(self, keep: int = 16) -> None:
        """Drop the served requests' history (kept only for assertions we do not use).

        The emulator routes each request by searching the whole history for it, so every request
        costs O(requests so far); with thousands of requests it stalls. Requests still being
        routed stay.
        """
        if len(self._requests) <= keep:
            return
        self._requests[:] = [request for request in self._requests if request in self._in_flight]
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
                metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
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
                if request.subresource != "status" and "spec" in data:
                    patched = kmock_dicts.patch_dict(current, {"spec": data["spec"]})
                    if patched.get("spec") != current.get("spec"):
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
        self.deployments_ready = True
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
        """Current objects of a resource (reads straight from the emulator's store)."""
        found = []
        for (res, ns, _name), obj in list(self.emulator.objects.items()):
            if res == resource and (namespace is None or ns == namespace) and not obj.deleted:
                found.append(copy.deepcopy(obj.raw))
        return found

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
            "status": {"allocatable": {"cpu": cpu, "memory": "64Gi"}, "capacity": {"cpu": cpu}},
        }
        return await self.create("/api/v1/nodes", body)

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

    def write_kubeconfig(self) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": str(self.server.url).rstrip("/")}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
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
        jobs = {(job["metadata"]["namespace"], job["metadata"]["name"]): job for job in self.objects(JOBS)}
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
        for pod in self.objects(PODS):
            owner = (pod["metadata"].get("labels") or {}).get("controller-uid")
            if owner and owner not in live_uids:
                namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
                await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
        for deployment in self.objects(DEPLOYMENTS):
            await self._control_deployment(deployment)
        if self.garbage_collector:
            await self._collect_garbage()

    async def _collect_garbage(self) -> None:
        """Delete dependents whose controller owner no longer exists (by uid), as Kubernetes'
        garbage collector does with background propagation."""
        live_uids = {
            str((obj.raw.get("metadata") or {}).get("uid"))
            for obj in list(self.emulator.objects.values())
            if not obj.deleted
        }
        for resource, plural in ((JOBS, "jobs"), (DEPLOYMENTS, "deployments")):
            for obj in self.objects(resource):
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and all(owner.get("uid") not in live_uids for owner in owners):
                    base = "/apis/batch/v1" if resource == JOBS else "/apis/apps/v1"
                    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                    with contextlib.suppress(RuntimeError):
                        await self.request("DELETE", f"{base}/namespaces/{namespace}/{plural}/{name}")

    def _schedule(self, template: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first node that satisfies the pod template's required node affinity."""
        terms = (
            (((template.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms")
        )
        for node in sorted(self.objects(NODES), key=lambda n: n["metadata"]["name"]):
            labels = node["metadata"].get("labels") or {}
            if not terms or any(_matches(term, labels) for term in terms):
                return node
        return None

    async def _control_deployment(self, deployment: dict[str, Any]) -> None:
        metadata, spec = deployment["metadata"], deployment.get("spec") or {}
        desired = int(spec.get("replicas") or 0)
        ready = desired if self.deployments_ready and self._schedule(spec.get("template") or {}) else 0
        status = {
            "observedGeneration": metadata.get("generation", 1),
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        current = deployment.get("status") or {}
        if any(current.get(key) != value for key, value in status.items()):
            path = f"/apis/apps/v1/namespaces/{metadata['namespace']}/deployments/{metadata['name']}/status"
            await self.patch(path, {"status": status})

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
                current = self.get(JOBS, namespace, name) or job
                deadline = (current.get("spec") or {}).get("activeDeadlineSeconds")
                if attempts.done() or deadline is None or loop.time() - started <= float(deadline):
                    continue
                attempts.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempts
                run.deadline_exceeded = True
                # The Job controller terminates (deletes) the active pods, then fails the Job.
                for pod in self.objects(PODS, namespace):
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
        argv, env, termination_file = self.pod_process(template, pod_dir, node)
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
        self, template: Mapping[str, Any], pod_dir: Path
    ) -> tuple[dict[str, Any], Path, dict[str, Path]]:
        """The container, its termination message file and its mount paths -> host folders."""
        spec = template["spec"]
        container = spec["containers"][0]
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
                mapping[mount["mountPath"]] = folder
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        termination_file = pod_dir / "termination-log"
        mapping[termination_path] = termination_file

        return container, termination_file, mapping

    def pod_paths_in(self, text: str, template: Mapping[str, Any], pod_dir: Path) -> str:
        """``text`` with this host's folders written back as the pod's mount paths."""
        _, _, mapping = self._mounts(template, pod_dir)
        for pod_path, host in sorted(mapping.items(), key=lambda item: len(str(item[1])), reverse=True):
            text = text.replace(str(host), pod_path)
        return text

    def pod_process(
        self, template: Mapping[str, Any], pod_dir: Path, node: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], Path]:
        """The container's command line and environment with its paths mapped to this host.

        Only paths change: each volume mount's path becomes a host folder and the termination
        message path a file in ``pod_dir``; the executable is looked up in this Python's bin dir.
        """
        container, termination_file, mapping = self._mounts(template, pod_dir)

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
