"""How fast does the operator turn a camera change into replicas, with many models? And its memory?

For each fleet size (100 and 1000 QuantizedModels by default) over 500 nodes (AMX, AVX-512 VNNI
and AVX2 tiers), on the KMock API emulator over real HTTP, with the real ``qfleet operator``
process:

1. The models are created already quantized: their status holds a passed result for the current
   pipeline key (as after an operator restart on an existing fleet), so no Job runs; the operator
   resumes every model and creates its Deployment. "start-up" is the time until every
   Deployment exists with the planned replicas.
2. ``--changes`` camera changes, one at a time, to models picked at random: the time from the
   PATCH of ``spec.demand.cameras`` until the Deployment's ``spec.replicas`` is the new count.
3. A burst: ``--burst`` models changed at once; each one's time as above.
4. The operator's peak resident memory (VmHWM) and its RSS at the end.

Goal: p95 under 2 s at 1000 models, and no worse per change than at 100.

    python benchmarks/operator_scale.py [--models 100 1000] [--nodes 500] [--no-write]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests package: its emulated cluster

import kmock  # noqa: E402

from _common import (  # noqa: E402
    CAMERA_FPS,
    FACES_PER_FRAME,
    NAMESPACE,
    RESULTS,
    TIERS,
    UTILIZATION,
    cpu_model,
    model_spec,
    percentile,
    process_cpu_seconds,
    quantized_status,
    replace_section,
    script_parser,
    status_kib,
    utc_stamp,
)
from qfleet.fleet import names  # noqa: E402
from qfleet.fleet.planner import current_pipeline_key  # noqa: E402
from qfleet.fleet.replicas import needed_replicas  # noqa: E402
from qfleet.fleet.spec import parse_spec  # noqa: E402
from qfleet.isa import detect_host_tier  # noqa: E402
from qfleet.operator.settings import OperatorSettings  # noqa: E402
from tests.support.cluster import DEPLOYMENTS, NODES, Cluster, Emulator  # noqa: E402

SECTION_TITLE = "## Operator scale"
OPERATOR_ENV = {"QFLEET_RESYNC_SECONDS": "3600"}


def isa_tier() -> str:
    return detect_host_tier() or "unknown ISA tier"


def model_body(index: int, tier: str, fps: float, cameras: int, config: Any) -> dict[str, Any]:
    name = f"site-{index:04d}"
    spec = model_spec(f"pvc://models/{name}/model.onnx", tier, cameras)
    body: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    key = current_pipeline_key(body, parse_spec(spec), config)
    job = names.job_name(name, tier, key)
    body["status"] = quantized_status(
        name, tier, key, fps, job=job, gate_message="within 0.1 points", seconds=300.0
    )
    return body


def replicas_for(cameras: int, fps: float) -> int:
    return max(1, min(64, needed_replicas(cameras * CAMERA_FPS * FACES_PER_FRAME, fps, UTILIZATION)))


def resumable(body: dict[str, Any]) -> dict[str, Any]:
    """Mark ``body`` as handled by kopf before (its last-handled-configuration annotation), as every
    model is after an operator restart: kopf resumes it rather than handling a creation."""
    import kopf

    storage = kopf.AnnotationsDiffBaseStorage(prefix=names.GROUP, key="last-handled-configuration")
    patch = kopf.Patch()
    storage.store(body=kopf.Body(body), patch=patch, essence=storage.build(body=kopf.Body(body)))
    body["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
    return body


PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [{"name": "v1", "served": True, "storage": True}],
    },
}


async def measure(
    models: int,
    nodes: int,
    changes: int,
    burst: int,
    seed: int,
    *,
    failover: bool = False,
    peering_lifetime: int | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    config = OperatorSettings.from_env(OPERATOR_ENV).fleet
    root = Path(tempfile.mkdtemp(prefix="qfleet-scale-"))
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        cluster = Cluster(emulator, server, root)  # no controllers: nothing here needs them
        await cluster.add_namespace(NAMESPACE)
        for index in range(nodes):
            tier = TIERS[index % len(TIERS)][0]
            await cluster.add_node(f"node-{index:04d}", tier, cpu="64")
        fleet: dict[str, tuple[str, float, int]] = {}
        for index in range(models):
            tier, fps = TIERS[index % len(TIERS)]
            cameras = rng.choice((16, 64, 256))
            body = resumable(model_body(index, tier, fps, cameras, config))
            await cluster.apply_model(body)
            fleet[body["metadata"]["name"]] = (tier, fps, cameras)

        #: (seconds into start-up, latency) of each change made during it: where the slow ones fall.
        timeline: list[tuple[float, float]] = []

        def replicas(name: str) -> int | None:
            # Straight from the emulator's store, no copy: at 10,000 models the polling shares
            # the one process that also serves the API.
            key = (DEPLOYMENTS, NAMESPACE, names.deployment_name(name, fleet[name][0]))
            stored = emulator.objects[key] if key in emulator.objects else None  # noqa: SIM401 (no .get)
            return None if stored is None or stored.deleted else int(stored.raw["spec"]["replicas"])

        #: Changes whose rescale never came (see ``change``), per phase: "cold start", or how
        #: the leader went in a failover (see ``fail_overs``).
        lost: dict[str, list[str]] = {}
        phase = {"now": "cold start"}

        async def change(name: str) -> float:
            tier, fps, cameras = fleet[name]
            new = 1024 if cameras != 1024 else 32  # always a different replica count
            want = replicas_for(new, fps)
            assert want != replicas_for(cameras, fps)
            fleet[name] = (tier, fps, new)
            begin = time.perf_counter()
            await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": {"demand": {"cameras": new}}})
            while replicas(name) != want:
                if time.perf_counter() - begin > 60:
                    # Not applied within a minute: counted (and named), not timed.
                    lost.setdefault(phase["now"], []).append(name)
                    return float("nan")
                await asyncio.sleep(0.002)
            return time.perf_counter() - begin

        async def planned(started: float, during: list[float]) -> float:
            """Seconds from ``started`` until every Deployment has its planned replicas; meanwhile,
            one camera change after another (from a second after the first Deployment on), each timed into ``during``."""
            done = asyncio.Event()
            timeline.clear()

            async def change_meanwhile() -> None:
                # From a second after the first Deployment on: the operator is resuming the fleet,
                # and kopf watches the models. (The emulator does not replay the events between a
                # LIST and the WATCH that follows it, as an API server does: a change in that gap
                # would be lost until the model's own resume reads it.)
                while not done.is_set() and not cluster.objects(DEPLOYMENTS, NAMESPACE):
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
                names_ = sorted(fleet)
                while not done.is_set():
                    at = time.perf_counter() - started
                    latency = await change(rng.choice(names_))
                    if latency == latency:  # not lost
                        during.append(latency)
                        timeline.append((round(at, 1), round(latency, 3)))
                    await asyncio.sleep(0.5)

            changer = asyncio.create_task(change_meanwhile())
            pending = set(fleet)
            while pending:
                pending = {n for n in pending if replicas(n) != replicas_for(fleet[n][2], fleet[n][1])}
                if time.perf_counter() - started > 1800:
                    raise RuntimeError(f"{len(pending)} Deployments missing after 30 minutes")
                await asyncio.sleep(0.25)  # the emulator serves from this process: poll gently
            elapsed = time.perf_counter() - started
            done.set()
            await changer
            return elapsed

        env = dict(OPERATOR_ENV)
        if failover:
            cluster.emulator.install_crd(PEERING_CRD)
            await cluster.create(
                f"/apis/kopf.dev/v1/namespaces/{NAMESPACE}/kopfpeerings",
                {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "qfleet"}},
            )
            env["QFLEET_PEERING"] = "qfleet"
            env["POD_ID"] = "replica-0"  # kopf's peering identity, as the chart sets it
            if peering_lifetime is not None:
                env["QFLEET_PEERING_LIFETIME"] = str(peering_lifetime)
        before = sum(emulator.request_counts.values())
        started = time.perf_counter()
        emulator_cpu = time.process_time()
        process = await cluster.start_operator("--namespace", NAMESPACE, "--quiet", env=env)
        try:
            during: list[float] = []
            startup = await planned(started, during)
            requests = sum(emulator.request_counts.values()) - before
            by_kind = {" ".join(key): count for key, count in emulator.request_counts.most_common(12)}
            operator_cpu = process_cpu_seconds(process.pid)
            emulator_cpu = time.process_time() - emulator_cpu
            await asyncio.sleep(2.0)  # let the follow-up reconciles (Deployment events) settle
            sequential = [await change(name) for name in rng.sample(sorted(fleet), min(changes, models))]
            sequential = [latency for latency in sequential if latency == latency]
            await asyncio.sleep(1.0)
            burst_names = rng.sample(sorted(fleet), min(burst, models))
            burst_started = time.perf_counter()
            burst_latencies = [
                latency
                for latency in await asyncio.gather(*(change(name) for name in burst_names))
                if latency == latency
            ]
            burst_total = time.perf_counter() - burst_started
            memory = status_kib(process.pid, "VmHWM", "VmRSS")
            api = []
            for name in rng.sample(sorted(fleet), min(20, models)):
                begin = time.perf_counter()
                await cluster.request("GET", cluster.model_path(NAMESPACE, name))
                api.append(time.perf_counter() - begin)
            assert len(cluster.objects(NODES)) == nodes
            takeovers = await fail_overs(cluster, env, process, fleet, planned, phase) if failover else []
        finally:
            await cluster.stop_operator(process)
            for extra in list(cluster._operators):
                await cluster.stop_operator(extra)
    return {
        "models": models,
        "nodes": nodes,
        "startup_s": round(startup, 2),
        "per_model_ms": round(startup / models * 1000, 2),
        # CPU time during start-up, per model: the operator's, and the emulator's (with the
        # benchmark's own polling, which shares its process). Robust on a busy machine.
        "operator_cpu_ms_per_model": round(operator_cpu / models * 1000, 2),
        "emulator_cpu_ms_per_model": round(emulator_cpu / models * 1000, 2),
        "during_startup": summary(during) if during else None,
        "during_slowest": sorted(timeline, key=lambda item: -item[1])[:5],
        "sequential": summary(sequential),
        "burst": {
            **summary(list(burst_latencies)),
            "size": len(burst_names),
            "total_s": round(burst_total, 3),
        },
        "api_get_ms": round(statistics.median(api) * 1000, 2),
        "api_requests": requests,
        "requests_per_model": round(requests / models, 1),
        "lost_changes": lost,
        "requests_by_kind": by_kind,
        "peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        "rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
        "failovers": takeovers,
        "peering_lifetime_s": OperatorSettings.from_env(env).peering_lifetime,
    }


#: How the leader goes, in the order the benchmark takes them (each standby leads the next one):
#: "term": SIGTERM, as for a rolling upgrade, a drain or a deleted pod (kopf removes its
#: keep-alive on the way out); "restart": SIGKILL, and the kubelet restarts the container in the
#: same pod (same POD_ID, so its new, lower priority replaces its keep-alive); "kill": SIGKILL
#: and no restart, as when its node is lost (the standby waits for the keep-alive to lapse).
FAILOVERS = ("term", "restart", "kill")


async def fail_overs(
    cluster: Cluster,
    env: dict[str, str],
    leader: Any,
    fleet: dict[str, Any],
    planned: Any,
    phase: dict[str, str],
) -> list[dict[str, Any]]:
    """Each way in :data:`FAILOVERS` in turn: a standby takes over from the leader, while every
    model's cameras are changed (so each Deployment must be rescaled by the standby: that is what
    "reconciled" means here). Times from the signal until every Deployment is rescaled."""
    rows = []
    leader_id = env["POD_ID"]
    spare: tuple[Any, str, str] | None = None  # a standby already running: the crashed leader, restarted
    dead_priority = None  # the crashed leader's, until its restarted process replaces it
    for number, how in enumerate(FAILOVERS, start=1):
        if spare is None:
            standby_id = standby_log = f"replica-{number}"
            standby = await cluster.start_operator(
                "--namespace", NAMESPACE, "--quiet", env={**env, "POD_ID": standby_id}, log_name=standby_log
            )
        else:
            standby, standby_id, standby_log = spare
            spare = None
        await standing_by(cluster, [leader_id, standby_id], not_priority=dead_priority)
        resumed = asyncio.create_task(logged(cluster.root / f"{standby_log}.log", RESUMED_LINE))
        requests_before = emulator_requests(cluster)
        standby_cpu, emulator_cpu = process_cpu_seconds(standby.pid), time.process_time()
        phase["now"] = how
        signalled = time.perf_counter()
        exited = asyncio.create_task(ended(leader))
        if how == "term":
            leader.send_signal(signal.SIGTERM)
        else:
            await cluster.stop_operator(leader, kill=True)
        if how == "restart":
            dead_priority = (await keep_alives(cluster))[leader_id].get("priority")
            restarted = await cluster.start_operator(
                "--namespace",
                NAMESPACE,
                "--quiet",
                env=env | {"POD_ID": leader_id},
                log_name=f"{leader_id}-again",
            )
            spare = (restarted, leader_id, f"{leader_id}-again")
        for name, (tier, fps, cameras) in list(fleet.items()):
            new = 1024 if cameras != 1024 else 32
            fleet[name] = (tier, fps, new)
            await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": {"demand": {"cameras": new}}})
        changed = time.perf_counter() - signalled
        during: list[float] = []
        total = await planned(signalled, during)
        standby_cpu = process_cpu_seconds(standby.pid) - standby_cpu
        emulator_cpu = time.process_time() - emulator_cpu
        requests = {
            kind: count - requests_before.get(kind, 0)
            for kind, count in emulator_requests(cluster).items()
            if count > requests_before.get(kind, 0)
        }
        detected = await resumed - signalled
        memory = status_kib(standby.pid, "VmHWM")
        if how == "term":
            await cluster.stop_operator(leader)  # exited by now: reaps it
        rows.append(
            {
                "how": how,
                "total_s": round(total, 2),
                # From the signal until kopf's peering resumed the standby, and from then on: the
                # standby's own work.
                "detect_s": round(detected, 2),
                "after_takeover_s": round(total - detected, 2),
                # Until the benchmark had changed every model (one PATCH after another).
                "changed_s": round(changed, 2),
                # Until the old leader's process had ended (SIGTERM: kopf's shutdown).
                "leader_exited_s": round(await exited - signalled, 2),
                "standby_peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
                # One camera change after another while the standby resumes the fleet (timed
                # ones; those not applied within 60 s are in the result's lost changes).
                "during": summary(during) if during else None,
                # CPU time per model meanwhile, as for the start-up: the standby's, the emulator's.
                "standby_cpu_ms_per_model": round(standby_cpu / len(fleet) * 1000, 2),
                "emulator_cpu_ms_per_model": round(emulator_cpu / len(fleet) * 1000, 2),
                # Every replica's requests from the signal on (the benchmark's own PATCHes included).
                "requests_by_kind": dict(sorted(requests.items(), key=lambda item: -item[1])[:12]),
            }
        )
        leader, leader_id = standby, standby_id
    return rows


async def ended(process: Any) -> float:
    """The time (perf_counter) at which ``process`` ended."""
    await process.wait()
    return time.perf_counter()


def emulator_requests(cluster: Cluster) -> dict[str, int]:
    return {" ".join(key).strip(): count for key, count in cluster.emulator.request_counts.items()}


#: kopf's peering logs it when it lets a paused replica work.
RESUMED_LINE = b"Resuming operations"


async def logged(path: Path, line: bytes, *, every: float = 0.1) -> float:
    """The time (perf_counter) at which ``line`` appeared in the log at ``path``: read as it grows,
    only the new bytes each time (the log grows by a megabyte of event warnings)."""
    seen = b""
    with path.open("rb") as log:
        while True:
            seen = seen[-len(line) :] + log.read()
            if line in seen:
                return time.perf_counter()
            await asyncio.sleep(every)


PEERING_PATH = f"/apis/kopf.dev/v1/namespaces/{NAMESPACE}/kopfpeerings/qfleet"


async def keep_alives(cluster: Cluster) -> dict[str, Any]:
    """The peering object's keep-alives: each replica's POD_ID -> its priority, lifetime, time."""
    return (await cluster.request("GET", PEERING_PATH)).get("status") or {}


async def standing_by(
    cluster: Cluster, replicas: list[str], *, not_priority: Any = None, timeout: float = 120.0
) -> None:
    """Until each of ``replicas`` (their POD_IDs) keeps a keep-alive in the peering object, none
    with priority ``not_priority`` (a dead process's: a restarted replica has replaced it).
    The standby has joined then (it starts paused, and stays so below the older leader)."""
    begin = time.perf_counter()
    while True:
        alive = await keep_alives(cluster)
        if all(replica in alive and alive[replica].get("priority") != not_priority for replica in replicas):
            return
        if time.perf_counter() - begin > timeout:
            raise RuntimeError(f"{replicas} did not all join the peering within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "changes": len(latencies),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3),
    }


def meanwhile(row: dict[str, Any], result: dict[str, Any]) -> str:
    """The changes timed during one failover, and how many were not applied within 60 s."""
    d, lost = row.get("during"), len((result.get("lost_changes") or {}).get(row["how"], []))
    timed = f"{d['p50_s']:.2f} / {d['p95_s']:.2f} / {d['max_s']:.1f} s ({d['changes']})" if d else "-"
    return f"{timed} ({lost})"


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"`python benchmarks/operator_scale.py --models {' '.join(str(r['models']) for r in results)}"
        f"{' --failover' if any(r.get('failovers') for r in results) else ''}` on "
        f"{meta['cpu']} ({meta['isa']}), {meta['cores']} cores, {meta['measured_at']}; the KMock API emulator "
        f"(same machine, one Python process, over HTTP) and the real `qfleet operator` process. Models start "
        f"quantized and already handled by kopf (their status holds a passed result, their annotations kopf's "
        f"last-handled configuration: an operator restart), so no Job runs. A change = PATCH "
        f"`spec.demand.cameras` -> the Deployment's `spec.replicas` is the new count; during start-up one change "
        f"after another (from 1 s after the first Deployment the operator creates until the last). Load average "
        f"before / after: {meta['load_before']} / {meta['load']}.",
        "",
        "| models | nodes | start-up (all Deployments) | per model | CPU per model: operator / emulator | "
        "change during start-up p50 / p95 / max | one change at a time after p50 / p95 / max | "
        "burst: N at once p50 / p95 / max | operator peak RSS | API requests per model |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for r in results:
        s, b, d = r["sequential"], r["burst"], r.get("during_startup")
        during = (
            f"{d['p50_s'] * 1000:.0f} / **{d['p95_s'] * 1000:.0f}** / {d['max_s'] * 1000:.0f} ms ({d['changes']})"
            if d
            else "-"
        )
        lines.append(
            f"| {r['models']} | {r['nodes']} | {r['startup_s']:.1f} s | **{r['per_model_ms']:.1f} ms** | "
            f"{r['operator_cpu_ms_per_model']:.1f} / {r['emulator_cpu_ms_per_model']:.1f} ms | {during} | "
            f"{s['p50_s'] * 1000:.0f} / {s['p95_s'] * 1000:.0f} / {s['max_s'] * 1000:.0f} ms ({s['changes']}) | "
            f"N={b['size']}: {b['p50_s'] * 1000:.0f} / {b['p95_s'] * 1000:.0f} / {b['max_s'] * 1000:.0f} ms | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['requests_per_model']:.1f} |"
        )
    for r in results:
        for when, lost in (r.get("lost_changes") or {}).items():
            lines += [
                "",
                f"At {r['models']} models ({when}), {len(lost)} change(s) had not reached their replicas "
                f"after 60 s ({', '.join(lost[:5])}): counted, not timed.",
            ]
    failovers = [r for r in results if r.get("failovers")]
    if failovers:
        lines += [
            "",
            "Failover: a standby replica (kopf peering, `POD_ID` as the chart sets it) takes over while every "
            "model's cameras are changed; from the signal until the standby has rescaled every Deployment. "
            f"Keep-alive lifetime {failovers[0]['peering_lifetime_s']} s (`QFLEET_PEERING_LIFETIME`, renewed "
            "5-10 s before it lapses). term: SIGTERM (an upgrade, a drain, a deleted pod); restart: SIGKILL and "
            "the container restarted in its pod; kill: SIGKILL, no restart (its node lost).",
            "",
            "| models | leader | total | until the standby resumed | its own work | cold start | "
            "CPU per model: standby / emulator | standby peak RSS | requests per model | "
            "change meanwhile p50 / p95 / max (not applied in 60 s) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in failovers:
            for row in r["failovers"]:
                requests = sum(row["requests_by_kind"].values()) / r["models"]
                lines.append(
                    f"| {r['models']} | {row['how']} | **{row['total_s']:.1f} s** | {row['detect_s']:.1f} s | "
                    f"{row['after_takeover_s']:.1f} s | {r['startup_s']:.1f} s | "
                    f"{row['standby_cpu_ms_per_model']:.1f} / {row['emulator_cpu_ms_per_model']:.1f} ms | "
                    f"{row['standby_peak_rss_mib']:.0f} MiB | {requests:.1f} | {meanwhile(row, r)} |"
                )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--models", type=int, nargs="+", default=[100, 1000], help="fleet sizes (default 100 1000)"
    )
    parser.add_argument("--nodes", type=int, default=500, help="nodes (default 500)")
    parser.add_argument("--changes", type=int, default=40, help="camera changes one at a time (default 40)")
    parser.add_argument("--burst", type=int, default=50, help="camera changes at once (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--failover",
        action="store_true",
        help="then a standby replica takes over from the leader, three times: SIGTERM, SIGKILL and restarted, "
        "SIGKILL (see FAILOVERS)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=None,
        help="with --failover: QFLEET_PEERING_LIFETIME of both replicas (default: the operator's)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    results = []
    load_before = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    for models in args.models:
        result = asyncio.run(
            measure(
                models,
                args.nodes,
                args.changes,
                args.burst,
                args.seed,
                failover=args.failover,
                peering_lifetime=args.peering_lifetime,
            )
        )
        print(json.dumps(result), flush=True)
        results.append(result)
    meta = {
        "cpu": cpu_model(),
        "isa": isa_tier(),
        "load_before": load_before,
        "cores": os.cpu_count(),
        "measured_at": utc_stamp("%Y-%m-%d"),
        "load": ", ".join(f"{value:.1f}" for value in os.getloadavg()),
    }
    section = render(results, meta)
    print(section)
    if not args.no_write:
        replace_section(args.results, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
