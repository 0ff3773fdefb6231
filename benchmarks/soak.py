"""Soak: the operator under churn, and the server under camera load, for minutes on end.

Part 1, the operator. The real ``qfleet operator`` process on the KMock API emulator (over HTTP)
with ``--models`` QuantizedModels (default 1000) over ``--nodes`` nodes of three ISA tiers. The
models start quantized (their status holds a passed result, as after an operator restart on an
existing fleet). Then, for ``--minutes``, ``--rate`` changes per second, picked at random:
camera changes (60%), source changes (15%: a new pipeline key, so a new Job), creations (12.5%)
and deletions (12.5%; the population stays near ``--models``). Afterwards, with the churn
stopped, every resource must converge to its spec: status for the current generation and
pipeline key, the current key's result served, exactly its own Job, a Deployment with the
planned replicas and the current artifact; deleted resources leave nothing behind. The
operator's RSS is sampled all along.

   In this part only, a quantization Job does not run ``qfleet pipeline``: its pod "finishes"
   after ``--job-seconds`` with a recorded, passed result whose paths are the Job's own
   ``--out`` (see :class:`SoakCluster`), so that thousands of source changes cost no CPU. The
   pipeline itself is exercised by the operator's integration tests.

   The churn asks for about 2.75 new Jobs per second (source changes and creations). The
   operator's cap on running Jobs (``QFLEET_MAX_RUNNING_JOBS``, 4 by default) with Jobs of
   ``--job-seconds`` 2 s lets through at most 2 per second (measured: 1.4-1.7 at 1000 models,
   4 unfinished all along), so with the default cap the backlog grows as long as the churn
   lasts and no operator could converge soon after it. The soak measures the operator under
   churn, not the cap (the integration tests do that), so it runs with a cap of 16
   (``--max-running-jobs``); each phase's table shows whether the cap was full.

Kubernetes' garbage collector is played by the test cluster (children of a deleted resource
go with it, through their ownerReferences).

Part 2, the server. ``qfleet serve`` on an INT8 model (default: the iResNet-50 that
``benchmarks/serving.py`` builds) on 127.0.0.1; its capacity is ``qfleet benchmark``'s FPS;
then ``qfleet loadtest`` offers ``--load`` (0.9) x that capacity, in back-to-back windows of
``--window`` seconds for ``--minutes``. Each window reports its errors and latency; stable means
no errors and the last windows' p95 within a small factor of the first ones'.

    python benchmarks/soak.py [--minutes 10] [--models 1000] [--rate 10] [--part operator|server|both]
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests package: its emulated cluster
sys.path.insert(0, str(REPO / "benchmarks"))

import kmock  # noqa: E402

from _common import (  # noqa: E402
    CAMERA_FPS,
    FACES_PER_FRAME,
    MAX_REPLICAS,
    NAMESPACE,
    RESULTS,
    TIERS,
    UTILIZATION,
    cpu_model,
    model_spec,
    percentile,
    process_cpu_seconds,
    qfleet_json,
    quantized_status,
    replace_section,
    rss_mib,
    script_parser,
    self_cpu_seconds,
    server_process,
    utc_stamp,
)
from qfleet.fleet import names  # noqa: E402
from qfleet.fleet.job_queue import job_finished  # noqa: E402
from qfleet.fleet.planner import current_pipeline_key  # noqa: E402
from qfleet.fleet.replicas import needed_replicas  # noqa: E402
from qfleet.fleet.spec import parse_spec  # noqa: E402
from qfleet.operator.settings import OperatorSettings  # noqa: E402
from tests.support.cluster import DEPLOYMENTS, JOBS, NODES, PODS, Cluster, Emulator, _matches, now  # noqa: E402

SECTION_TITLE = "## Soak"
FPS = dict(TIERS)
#: The operator's settings for this benchmark (see ``--max-running-jobs``).
OPERATOR_ENV: dict[str, str] = {}
CHANGE_KINDS = (("cameras", 0.6), ("source", 0.15), ("create", 0.125), ("delete", 0.125))


# -- the cluster, with recorded Job results -----------------------------------------------------------


class SoakCluster(Cluster):
    """The integration tests' cluster with two changes for a long run with thousands of objects:
    its controllers look every ``interval`` seconds (not every 0.1 s), and a Job's pod does not
    run the pipeline but finishes after ``job_seconds`` with a recorded, passed result."""

    def __init__(self, *args: Any, job_seconds: float, interval: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job_seconds = job_seconds
        self.interval = interval
        self.garbage_collector = True
        self.jobs_completed = 0
        self._nodes: list[dict[str, Any]] = []
        self._nodes_at = -1.0

    def _schedule(self, template: Any) -> dict[str, Any] | None:
        """The base scheduler, on a node list read once per second (not once per pod and Deployment)."""
        if time.monotonic() - self._nodes_at > 1.0:
            self._nodes = sorted(self.objects(NODES), key=lambda node: node["metadata"]["name"])
            self._nodes_at = time.monotonic()
        terms = (
            (((template.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms")
        )
        for node in self._nodes:
            labels = node["metadata"].get("labels") or {}
            if not terms or any(_matches(term, labels) for term in terms):
                return node
        return None

    async def _control_loop(self) -> None:
        while True:
            try:
                await self._control_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the cluster alive; the checks at the end will tell
                print(f"cluster controllers: {type(exc).__name__}: {exc}", file=sys.stderr)
            await asyncio.sleep(self.interval)

    async def _run_job(self, job: dict[str, Any]) -> None:
        await asyncio.sleep(self.job_seconds)
        metadata = job["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        if self.get(JOBS, namespace, name) is None:
            return  # deleted meanwhile (an obsolete key)
        container = job["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        out, tier = args[args.index("--out") + 1], args[args.index("--expect-isa") + 1]
        message = json.dumps({
            "isa": tier, "artifact": f"{out}/int8/model.xml", "fp32_artifact": f"{out}/fp32/model.xml",
            "fp32": {"accuracy": 0.9963, "fps": FPS[tier] / 1.77}, "int8": {"accuracy": 0.996, "fps": FPS[tier]},
            "gate": {"passed": True, "drop": 0.0003, "reason": "Passed", "message": "recorded result"},
            "versions": {"recorded": "soak"}, "seconds": self.job_seconds,
        })  # fmt: skip
        stamp = now()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-0soak",
                "namespace": namespace,
                "labels": {**(job["spec"]["template"]["metadata"].get("labels") or {}), "job-name": name,
                           "batch.kubernetes.io/job-name": name, "controller-uid": metadata["uid"]},
                "annotations": dict(job["spec"]["template"]["metadata"].get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                     "uid": metadata["uid"], "controller": True}],
            },
            "spec": {**job["spec"]["template"]["spec"], "nodeName": "soak"},
            "status": {"phase": "Succeeded", "startTime": stamp, "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": f"soak@sha256:{'0' * 64}",
                "ready": False, "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                         "startedAt": stamp, "finishedAt": stamp}}}]},
        }  # fmt: skip
        try:
            await self.create(f"/api/v1/namespaces/{namespace}/pods", pod)
            await self._finish_job(namespace, name, succeeded=True)
            self.jobs_completed += 1
        except RuntimeError as exc:  # the Job went away meanwhile
            print(f"soak kubelet: {exc}", file=sys.stderr)


# -- the fleet and what it should look like -------------------------------------------------------------


@dataclass
class Fleet:
    """Every model's spec as the benchmark last set it (the truth the operator must converge to)."""

    config: Any
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)  # name -> creations count when deleted
    next_index: int = 0
    sources: collections.Counter[str] = field(default_factory=collections.Counter)
    #: name -> its pipeline key, until its spec changes (see :meth:`changed`): the checks run
    #: every 2 s over every model, and parsing every spec each time was a third of their cost.
    keys: dict[str, str] = field(default_factory=dict)

    def tier(self, name: str) -> str:
        return str(self.specs[name]["targets"][0]["isa"])

    def key(self, name: str) -> str:
        if name not in self.keys:
            body = {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": self.specs[name]}
            self.keys[name] = current_pipeline_key(body, parse_spec(self.specs[name]), self.config)
        return self.keys[name]

    def changed(self, name: str) -> None:
        """The spec of ``name`` was changed (or deleted) in place: its key must be computed again."""
        self.keys.pop(name, None)

    def replicas(self, name: str) -> int:
        cameras = int(self.specs[name]["demand"]["cameras"])
        needed = needed_replicas(cameras * CAMERA_FPS * FACES_PER_FRAME, FPS[self.tier(name)], UTILIZATION)
        return max(1, min(MAX_REPLICAS, needed))


def spec_for(name: str, tier: str, cameras: int, version: int) -> dict[str, Any]:
    return model_spec(f"pvc://models/{name}/v{version}/model.onnx", tier, cameras)


def quantized_body(name: str, spec: dict[str, Any], config: Any) -> dict[str, Any]:
    """A model whose status already holds a passed result for its key (no Job needed)."""
    body: dict[str, Any] = {"apiVersion": names.API_VERSION, "kind": names.KIND,
                            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}  # fmt: skip
    tier = spec["targets"][0]["isa"]
    key = current_pipeline_key(body, parse_spec(spec), config)
    job = names.job_name(name, tier, key)
    body["status"] = quantized_status(
        name, tier, key, FPS[tier], job=job, gate_message="recorded", seconds=1.0
    )
    return body


def stored(cluster: Cluster, resource: Any) -> list[dict[str, Any]]:
    """The objects of ``resource`` in the namespace, straight from the emulator's store, not copied
    (read only): at 10,000 models the checks share the one process that serves the API."""
    return cluster.emulator.live(resource, NAMESPACE, copy=False)


def stored_one(cluster: Cluster, resource: Any, name: str) -> dict[str, Any] | None:
    key = (resource, NAMESPACE, name)
    obj = cluster.emulator.objects[key] if key in cluster.emulator.objects else None  # noqa: SIM401
    return None if obj is None or obj.deleted else obj.raw


def mismatches(cluster: Cluster, fleet: Fleet) -> list[str]:
    """How every resource differs from what its spec asks for (empty: converged)."""
    problems: list[str] = []
    jobs_by_model: dict[str, set[str]] = collections.defaultdict(set)
    for job in stored(cluster, JOBS):
        jobs_by_model[job["metadata"]["annotations"][names.ANNOTATION_MODEL_NAME]].add(
            job["metadata"]["name"]
        )
    deployments_by_model: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for deployment in stored(cluster, DEPLOYMENTS):
        owner = deployment["metadata"]["annotations"][names.ANNOTATION_MODEL_NAME]
        deployments_by_model[owner].append(deployment)
    for name in fleet.specs:
        model = stored_one(cluster, cluster.model_resource, name)
        if model is None:
            problems.append(f"{name}: missing")
            continue
        status = model.get("status") or {}
        key, tier = fleet.key(name), fleet.tier(name)
        if status.get("observedGeneration") != model["metadata"].get("generation"):
            problems.append(f"{name}: observedGeneration {status.get('observedGeneration')} "
                            f"!= generation {model['metadata'].get('generation')}")  # fmt: skip
        if status.get("pipelineKey") != key:
            problems.append(f"{name}: status key {status.get('pipelineKey')} != spec key {key}")
        variant: dict[str, Any] = next(iter(status.get("variants") or []), {})
        if (variant.get("served") or {}).get("pipelineKey") != key:
            problems.append(
                f"{name}: serves key {(variant.get('served') or {}).get('pipelineKey')}, not {key}"
            )
        if status.get("phase") != "Ready":
            # The first target's state and why: enough to tell a queued Job from a failed one.
            why = " ".join(str(variant.get(field) or "") for field in ("state", "reason", "message")).strip()
            problems.append(f"{name}: phase {status.get('phase')}" + (f" ({why[:300]})" if why else ""))
        wanted_job = names.job_name(name, tier, key)
        # A resource that never needed a Job (pre-quantized, key unchanged) has none.
        if jobs_by_model.get(name, set()) - {wanted_job}:
            problems.append(f"{name}: obsolete Jobs {sorted(jobs_by_model[name] - {wanted_job})}")
        deployments = deployments_by_model.get(name, [])
        if len(deployments) != 1:
            problems.append(f"{name}: {len(deployments)} Deployments")
            continue
        deployment = deployments[0]
        if deployment["spec"]["replicas"] != fleet.replicas(name):
            problems.append(f"{name}: {deployment['spec']['replicas']} replicas, want {fleet.replicas(name)}")
        if f"/{key}/" not in deployment["metadata"]["annotations"].get(names.ANNOTATION_ARTIFACT, ""):
            problems.append(f"{name}: Deployment serves {deployment['metadata']['annotations']}")
    for name in fleet.deleted:
        if jobs_by_model.get(name) or deployments_by_model.get(name):
            problems.append(f"{name}: deleted, but children remain")
    return problems


@dataclass(frozen=True)
class Sample:
    """One look at the run, every 5 s: the operator's RSS, CPU seconds so far of the operator and
    of this process (the emulator, its controllers and the checks), the Jobs the cluster holds
    unfinished, and how many Jobs have finished so far."""

    at: float
    rss_mib: float
    operator_cpu: float
    emulator_cpu: float
    unfinished_jobs: int
    jobs_completed: int


def unfinished_jobs(cluster: Cluster) -> int:
    return sum(1 for job in stored(cluster, JOBS) if not job_finished(job))


def phase_figures(timeline: list[Sample], begin: float, end: float) -> dict[str, Any]:
    """What the samples within [begin, end] say: the cores the operator and the emulator's process
    used, Jobs finished per second, and the Jobs unfinished (median, max): a cap of running Jobs
    that is always full shows as a median at the cap."""
    inside = [s for s in timeline if begin <= s.at <= end]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    wall = max(last.at - first.at, 1e-9)
    unfinished = [s.unfinished_jobs for s in inside]
    return {
        "seconds": round(wall),
        "operator_cores": round((last.operator_cpu - first.operator_cpu) / wall, 2),
        "emulator_cores": round((last.emulator_cpu - first.emulator_cpu) / wall, 2),
        "jobs_per_s": round((last.jobs_completed - first.jobs_completed) / wall, 2),
        "unfinished_jobs_median": statistics.median(unfinished),
        "unfinished_jobs_max": max(unfinished),
    }


async def converge(cluster: Cluster, fleet: Fleet, *, timeout: float, interval: float) -> list[str]:
    """Check until nothing differs from the specs or ``timeout`` passes; what still differs.
    (Not ``Cluster.wait_for``: its diagnostics on a timeout read every pod per Deployment, which
    took many minutes at 10,000 models.)"""
    deadline = time.monotonic() + timeout
    while (remaining := mismatches(cluster, fleet)) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
    return remaining


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return 0.0
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def largest_step(samples: list[tuple[float, float]]) -> dict[str, float]:
    """The largest rise of RSS between two consecutive samples, and when (seconds from start)."""
    steps = [(later[1] - earlier[1], later[0]) for earlier, later in itertools.pairwise(samples)]
    rise, at = max(steps, default=(0.0, 0.0))
    return {"mib": round(rise, 1), "at_s": round(at)}


# -- part 1 -----------------------------------------------------------------------------------------------


async def soak_operator(
    *,
    models: int,
    nodes: int,
    minutes: float,
    rate: float,
    job_seconds: float,
    seed: int,
    converge_minutes: float = 10.0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    config = OperatorSettings.from_env(OPERATOR_ENV).fleet
    fleet = Fleet(config)
    root = Path(tempfile.mkdtemp(prefix="qfleet-soak-"))
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        cluster = SoakCluster(emulator, server, root, job_seconds=job_seconds, interval=1.0)
        await cluster.add_namespace(NAMESPACE)
        for index in range(nodes):
            # Room for every replica: the soak measures the operator, not the scheduler (the test
            # cluster now places serving pods by their CPU requests).
            await cluster.add_node(f"node-{index:04d}", TIERS[index % len(TIERS)][0], cpu="100000")
        for index in range(models):
            name = f"site-{index:04d}"
            fleet.specs[name] = spec_for(name, TIERS[index % len(TIERS)][0], rng.choice((16, 64, 256)), 1)
            await cluster.apply_model(quantized_body(name, fleet.specs[name], config))
        await cluster.start()
        started = time.monotonic()
        process = await cluster.start_operator("--namespace", NAMESPACE, "--quiet", env=OPERATOR_ENV)
        timeline: list[Sample] = []

        async def sample() -> None:
            while True:
                timeline.append(Sample(time.monotonic() - started, rss_mib(process.pid),
                                       process_cpu_seconds(process.pid), self_cpu_seconds(),
                                       unfinished_jobs(cluster), cluster.jobs_completed))  # fmt: skip
                await asyncio.sleep(5.0)

        sampler = asyncio.create_task(sample())
        # The checks run in the emulator's process: every 2 s, at 10,000 models every 5 s (a
        # check reads every model, Job and Deployment).
        check_every = max(2.0, models / 2000)
        try:
            unready = await converge(cluster, fleet, timeout=900, interval=check_every)
            if unready:
                raise RuntimeError(f"start-up: {len(unready)} mismatches after 900 s, e.g. {unready[:5]}")
            startup_s = time.monotonic() - started
            churn_started = time.monotonic()
            rss_at_churn = rss_mib(process.pid)
            applied: collections.Counter[str] = collections.Counter()
            latencies: list[float] = []
            tracked: list[asyncio.Task[None]] = []
            deadline = churn_started + minutes * 60
            tick = 0
            while time.monotonic() < deadline:
                kind = rng.choices([k for k, _ in CHANGE_KINDS], weights=[w for _, w in CHANGE_KINDS])[0]
                population = len(fleet.specs)
                if kind == "create" and population > models * 1.05:
                    kind = "delete"
                elif kind == "delete" and population < models * 0.95:
                    kind = "create"
                await apply_change(cluster, fleet, kind, rng, tracked, latencies, sample=tick % 10 == 0)
                applied[kind] += 1
                tick += 1
                await asyncio.sleep(max(0.0, churn_started + tick / rate - time.monotonic()))
            churn_s = time.monotonic() - churn_started
            stopped = time.monotonic()
            await asyncio.gather(*tracked, return_exceptions=True)
            remaining = await converge(cluster, fleet, timeout=converge_minutes * 60, interval=check_every)
            converge_s = time.monotonic() - stopped
            converged = not remaining
            late_children = late_creations(cluster, fleet)
            rss_end = rss_mib(process.pid)
            alive = process.returncode is None
        finally:
            sampler.cancel()
            await cluster.stop()
    phases = {"start-up": (0.0, startup_s), "churn": (startup_s, startup_s + churn_s),
              "after churn": (startup_s + churn_s, startup_s + churn_s + converge_s)}  # fmt: skip
    samples = [(s.at, s.rss_mib) for s in timeline]  # (seconds, MiB)
    churn_samples = [(t, m) for t, m in samples if t >= churn_started - started]
    second_half = churn_samples[len(churn_samples) // 2 :]
    return {
        "models_start": models,
        "models_end": len(fleet.specs),
        "nodes": nodes,
        "minutes": round(churn_s / 60, 2),
        "changes": dict(applied),
        "changes_total": sum(applied.values()),
        "changes_per_s": round(sum(applied.values()) / churn_s, 2),
        "jobs_completed": cluster.jobs_completed,
        "startup_s": round(startup_s, 1),
        "converged": converged and not remaining,
        "converge_s": round(converge_s, 1),
        "mismatches": remaining[:20],
        "mismatch_count": len(remaining),
        "late_children_of_deleted": late_children,
        "camera_change_s": {
            "sampled": len(latencies),
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p95": round(percentile(latencies, 0.95), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "rss_mib": {
            "at_churn_start": round(rss_at_churn, 1),
            "end": round(rss_end, 1),
            "max": round(max(m for _, m in samples), 1),
            "slope_second_half_mib_per_min": round(slope_per_minute(second_half), 2),
        },
        "phases": {name: phase_figures(timeline, *bounds) for name, bounds in phases.items()},
        "rss_largest_step": largest_step([(t, m) for t, m in samples if t >= startup_s]),
        "rss_samples": [(round(t), round(m, 1)) for t, m in samples[:: max(1, len(samples) // 40)]],
        "api_requests": sum(emulator.request_counts.values()),
        "operator_alive": alive,
    }


async def apply_change(
    cluster: Cluster,
    fleet: Fleet,
    kind: str,
    rng: random.Random,
    tracked: list[asyncio.Task[None]],
    latencies: list[float],
    *,
    sample: bool,
) -> None:
    if kind == "create":
        name = f"new-{fleet.next_index:05d}"
        fleet.next_index += 1
        fleet.specs[name] = spec_for(name, rng.choice(TIERS)[0], rng.choice((16, 64, 256)), 1)
        body = {"apiVersion": names.API_VERSION, "kind": names.KIND,
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": fleet.specs[name]}  # fmt: skip
        await cluster.apply_model(body)
        return
    name = rng.choice(sorted(fleet.specs))
    path = cluster.model_path(NAMESPACE, name)
    fleet.changed(name)
    if kind == "delete":
        del fleet.specs[name]
        fleet.deleted[name] = len(cluster.emulator.creations)
        await cluster.request("DELETE", path)
    elif kind == "source":
        fleet.sources[name] += 1
        version = fleet.sources[name] + 1
        source = {"format": "onnx", "uri": f"pvc://models/{name}/v{version}/model.onnx"}
        fleet.specs[name]["source"] = source
        await cluster.patch(path, {"spec": {"source": source}})
    else:
        old = fleet.replicas(name)
        cameras = rng.choice(
            [c for c in (8, 16, 64, 256, 1024) if c != fleet.specs[name]["demand"]["cameras"]]
        )
        fleet.specs[name]["demand"]["cameras"] = cameras
        begin = time.monotonic()
        await cluster.patch(path, {"spec": {"demand": {"cameras": cameras}}})
        want = fleet.replicas(name)
        # Timed only where a Deployment serves already: a new model's replicas wait for its Job.
        serving = stored_one(cluster, DEPLOYMENTS, names.deployment_name(name, fleet.tier(name)))
        if sample and want != old and serving is not None:
            tracked.append(asyncio.create_task(track(cluster, fleet, name, want, begin, latencies)))


async def track(
    cluster: Cluster, fleet: Fleet, name: str, want: int, begin: float, latencies: list[float]
) -> None:
    """Time until the Deployment has the new replica count (sampled changes only)."""
    deployment = names.deployment_name(name, fleet.tier(name))
    while time.monotonic() - begin < 120:
        if name not in fleet.specs or fleet.replicas(name) != want:
            return  # changed again or deleted meanwhile: no clean measurement
        found = cluster.get(DEPLOYMENTS, NAMESPACE, deployment)
        if found is not None and found["spec"]["replicas"] == want:
            latencies.append(time.monotonic() - begin)
            return
        await asyncio.sleep(0.05)


def late_creations(cluster: Cluster, fleet: Fleet) -> int:
    """Children created for a resource after it was deleted (Kubernetes' GC removes them).

    A child's name starts with its resource's name and a dash; one pass over the creations tries
    each such prefix of the name (a pass per deleted resource costs deleted x creations, some
    700 x 100,000 after a 10-minute churn at 10,000 models).
    """
    late = 0
    first = min(fleet.deleted.values(), default=len(cluster.emulator.creations))
    for index, (resource, _, created) in enumerate(cluster.emulator.creations[first:], start=first):
        if resource not in (JOBS, DEPLOYMENTS, PODS):
            continue
        dashes = [at for at, char in enumerate(created) if char == "-"]
        if any(fleet.deleted.get(created[:at], index + 1) <= index for at in dashes):
            late += 1
    return late


# -- part 2 -----------------------------------------------------------------------------------------------


def soak_server(
    *, model: Path, minutes: float, load: float, window: float, cameras: int, faces: int
) -> dict[str, Any]:
    capacity = qfleet_json("benchmark", "--model", str(model), "--seconds", "20", timeout=300)["fps"]
    camera_fps = load * capacity / (cameras * faces)
    with server_process(model) as (url, server):
        windows: list[dict[str, Any]] = []
        started = time.monotonic()
        while time.monotonic() - started < minutes * 60:
            report = qfleet_json("loadtest", "--url", url, "--cameras", str(cameras), "--camera-fps",
                                 f"{camera_fps:.4f}", "--faces-per-frame", str(faces), "--seconds", str(window),
                                 "--binary", timeout=window + 120)  # fmt: skip
            windows.append({
                "at_s": round(time.monotonic() - started), "achieved_fps": report["achieved_fps"],
                "offered_fps": report["offered_fps"], "errors": report["errors"],
                "late_frames": report["late_frames"], "latency_ms": report["latency_ms"],
                "server_rss_mib": round(rss_mib(server.pid), 1),
            })  # fmt: skip
            print(json.dumps(windows[-1]), file=sys.stderr, flush=True)
        alive = server.poll() is None
    p95 = [w["latency_ms"]["p95"] for w in windows]
    third = max(1, len(windows) // 3)
    return {
        "model": str(model),
        "capacity_fps": round(capacity, 1),
        "load": load,
        "offered_fps": round(load * capacity, 1),
        "cameras": cameras,
        "camera_fps": round(camera_fps, 3),
        "faces_per_frame": faces,
        "minutes": round(len(windows) * window / 60, 2),
        "windows": windows,
        "errors": sum(w["errors"] for w in windows),
        "late_frames": sum(w["late_frames"] for w in windows),
        "achieved_fps_mean": round(statistics.fmean(w["achieved_fps"] for w in windows), 1),
        "p95_ms_first_third": round(statistics.median(p95[:third]), 1),
        "p95_ms_last_third": round(statistics.median(p95[-third:]), 1),
        "p95_ms_max": round(max(p95), 1),
        "p50_ms_median": round(statistics.median(w["latency_ms"]["p50"] for w in windows), 1),
        "server_rss_mib_first_last": (windows[0]["server_rss_mib"], windows[-1]["server_rss_mib"]),
        "server_alive": alive,
    }


def default_model() -> Path:
    from serving import DEFAULT_WORK, build_int8_model

    return build_int8_model(DEFAULT_WORK)


# -- report -----------------------------------------------------------------------------------------------


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def render(operator: dict[str, Any] | None, server: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [SECTION_TITLE, "", f"`python benchmarks/soak.py {meta['argv']}` on {meta['machine']}, {meta['when']}; "
             f"1-minute load average at the end {meta['load']} (the machine is shared with other jobs).", ""]  # fmt: skip
    if operator is not None:
        o, r, c = operator, operator["rss_mib"], operator["camera_change_s"]
        lines += [
            f"**Operator under churn** (KMock emulator over HTTP, real `qfleet operator` process; Jobs finish "
            f"after {meta['job_seconds']} s with a recorded passed result instead of running the pipeline, in "
            f"this benchmark only):",
            "",
            "| resources (start -> end) | nodes | churn | changes (cameras / source / create / delete) | changes/s | "
            "Jobs completed | converged after churn | mismatches | operator RSS at churn start -> end (max) | "
            "RSS slope, 2nd half | camera change -> replicas p50 / p95 / max |",
            "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---|",
            f"| {o['models_start']} -> {o['models_end']} | {o['nodes']} | {o['minutes']:.1f} min | "
            f"{o['changes'].get('cameras', 0)} / {o['changes'].get('source', 0)} / {o['changes'].get('create', 0)} / "
            f"{o['changes'].get('delete', 0)} | {o['changes_per_s']:.1f} | {o['jobs_completed']} | "
            f"{'yes' if o['converged'] else '**no**'}, {o['converge_s']:.0f} s | {o['mismatch_count']} | "
            f"{r['at_churn_start']:.0f} -> {r['end']:.0f} MiB ({r['max']:.0f}) | {r['slope_second_half_mib_per_min']:+.2f} "
            f"MiB/min | {c['p50']} / {c['p95']} / {c['max']} s ({c['sampled']} sampled) |",
            "",
            f"During the churn the operator's RSS rose by at most {o['rss_largest_step']['mib']:.0f} MiB between "
            f"two samples (5 s apart), {o['rss_largest_step']['at_s']} s after it started (its resync reconciles "
            f"every resource at once every 300 s); the slope over the second half is the growth rate.",
            "",
            f"Start-up (every Deployment planned) took {o['startup_s']:.0f} s; {o['api_requests']} API requests in "
            f"all; the operator process stayed up: {o['operator_alive']}. Children created for a resource after "
            f"its deletion (removed by the garbage collector through their ownerReferences): "
            f"{o['late_children_of_deleted']}.",
            "",
            f"Per phase (operator cap on running Jobs: {meta['max_running_jobs']}; the emulator's process also "
            f"runs the cluster's controllers and the checks):",
            "",
            "| phase | seconds | operator cores | emulator cores | Jobs finished/s | unfinished Jobs median / max |",
            "|---|---:|---:|---:|---:|---|",
            *(f"| {name} | {f['seconds']} | {f['operator_cores']} | {f['emulator_cores']} | {f['jobs_per_s']} | "
              f"{f['unfinished_jobs_median']} / {f['unfinished_jobs_max']} |"
              for name, f in o["phases"].items() if f),
            "",
        ]  # fmt: skip
    if server is not None:
        s = server
        lines += [
            f"**Server at {s['load']}x capacity** (`qfleet serve` on 127.0.0.1, `{Path(s['model']).parent.name}`; capacity "
            f"= `qfleet benchmark` {s['capacity_fps']} faces/s; `qfleet loadtest` {s['cameras']} cameras x "
            f"{s['camera_fps']} fps x {s['faces_per_frame']} faces = {s['offered_fps']} faces/s, back-to-back windows; "
            f"the capacity is measured once, before the load, and on a shared machine it moves with the other "
            f"jobs' load):",
            "",
            "| duration | windows | achieved faces/s (mean) | errors | late frames | p50 ms (median window) | "
            "p95 ms first third -> last third (max) | server RSS first -> last window |",
            "|---:|---:|---:|---:|---:|---:|---|---|",
            f"| {s['minutes']:.1f} min | {len(s['windows'])} | {s['achieved_fps_mean']} | {s['errors']} | "
            f"{s['late_frames']} | {s['p50_ms_median']} | {s['p95_ms_first_third']} -> {s['p95_ms_last_third']} "
            f"({s['p95_ms_max']}) | {s['server_rss_mib_first_last'][0]} -> {s['server_rss_mib_first_last'][1]} MiB |",
            "",
        ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--part", choices=("operator", "server", "both"), default="both")
    parser.add_argument("--minutes", type=float, default=10.0, help="duration of each part (default 10)")
    parser.add_argument("--models", type=int, default=1000, help="QuantizedModels (default 1000)")
    parser.add_argument("--nodes", type=int, default=60, help="nodes (default 60)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second (default 10)")
    parser.add_argument("--converge-minutes", type=float, default=10.0,
                        help="how long the fleet may take to converge after the churn (default 10)")  # fmt: skip
    parser.add_argument(
        "--job-seconds", type=float, default=2.0, help="how long a recorded Job takes (default 2)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model.xml to serve (default: INT8 iResNet-50)"
    )
    parser.add_argument("--load", type=float, default=0.9, help="offered load, x capacity (default 0.9)")
    parser.add_argument(
        "--window", type=float, default=30.0, help="seconds per load test window (default 30)"
    )
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--faces-per-frame", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--max-running-jobs", type=int, default=16,
                        help="the operator's cap on running Jobs (default 16; see the module's doc)")  # fmt: skip
    args = parser.parse_args(argv)
    OPERATOR_ENV["QFLEET_MAX_RUNNING_JOBS"] = str(args.max_running_jobs)
    operator = server = None
    if args.part in ("operator", "both"):
        operator = asyncio.run(soak_operator(models=args.models, nodes=args.nodes, minutes=args.minutes,
                                             rate=args.rate, job_seconds=args.job_seconds, seed=args.seed,
                                             converge_minutes=args.converge_minutes))  # fmt: skip
        print(json.dumps(operator), flush=True)
    if args.part in ("server", "both"):
        server = soak_server(model=args.model or default_model(), minutes=args.minutes, load=args.load,
                             window=args.window, cameras=args.cameras, faces=args.faces_per_frame)  # fmt: skip
        print(json.dumps(server), flush=True)
    meta = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "when": utc_stamp(),
        "load": f"{os.getloadavg()[0]:.1f}",
        "job_seconds": args.job_seconds,
        "max_running_jobs": args.max_running_jobs,
    }
    section = render(operator, server, meta)
    print(section)
    if not args.no_write:
        replace_section(args.results, SECTION_TITLE, section)
    failed = (operator is not None and (not operator["converged"] or not operator["operator_alive"])) or (
        server is not None and (server["errors"] > 0 or not server["server_alive"])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
