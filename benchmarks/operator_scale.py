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
from qfleet.operator.settings import OperatorSettings  # noqa: E402
from tests.support.cluster import DEPLOYMENTS, NODES, Cluster, Emulator  # noqa: E402

SECTION_TITLE = "## Operator scale"
OPERATOR_ENV = {"QFLEET_RESYNC_SECONDS": "3600"}


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


async def measure(models: int, nodes: int, changes: int, burst: int, seed: int) -> dict[str, Any]:
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
            body = model_body(index, tier, fps, cameras, config)
            await cluster.apply_model(body)
            fleet[body["metadata"]["name"]] = (tier, fps, cameras)

        def replicas(name: str) -> int | None:
            tier = fleet[name][0]
            deployment = cluster.get(DEPLOYMENTS, NAMESPACE, names.deployment_name(name, tier))
            return None if deployment is None else int(deployment["spec"]["replicas"])

        started = time.perf_counter()
        process = await cluster.start_operator("--namespace", NAMESPACE, "--quiet", env=OPERATOR_ENV)
        try:
            pending = set(fleet)
            while pending:
                pending = {n for n in pending if replicas(n) != replicas_for(fleet[n][2], fleet[n][1])}
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"{len(pending)} Deployments missing after 10 minutes")
                await asyncio.sleep(0.05)
            startup = time.perf_counter() - started
            await asyncio.sleep(2.0)  # let the follow-up reconciles (Deployment events) settle

            async def change(name: str) -> float:
                tier, fps, cameras = fleet[name]
                new = 1024 if cameras != 1024 else 32  # always a different replica count
                want = replicas_for(new, fps)
                assert want != replicas_for(cameras, fps)
                fleet[name] = (tier, fps, new)
                begin = time.perf_counter()
                await cluster.patch(
                    cluster.model_path(NAMESPACE, name), {"spec": {"demand": {"cameras": new}}}
                )
                while replicas(name) != want:
                    if time.perf_counter() - begin > 60:
                        raise RuntimeError(f"{name}: no rescale within 60 s")
                    await asyncio.sleep(0.002)
                return time.perf_counter() - begin

            sequential = [await change(name) for name in rng.sample(sorted(fleet), min(changes, models))]
            await asyncio.sleep(1.0)
            burst_names = rng.sample(sorted(fleet), min(burst, models))
            burst_started = time.perf_counter()
            burst_latencies = await asyncio.gather(*(change(name) for name in burst_names))
            burst_total = time.perf_counter() - burst_started
            memory = status_kib(process.pid, "VmHWM", "VmRSS")
            api = []
            for name in rng.sample(sorted(fleet), min(20, models)):
                begin = time.perf_counter()
                await cluster.request("GET", cluster.model_path(NAMESPACE, name))
                api.append(time.perf_counter() - begin)
            requests = sum(emulator.request_counts.values())
            assert len(cluster.objects(NODES)) == nodes
        finally:
            await cluster.stop_operator(process)
    return {
        "models": models,
        "nodes": nodes,
        "startup_s": round(startup, 2),
        "sequential": summary(sequential),
        "burst": {
            **summary(list(burst_latencies)),
            "size": len(burst_names),
            "total_s": round(burst_total, 3),
        },
        "api_get_ms": round(statistics.median(api) * 1000, 2),
        "api_requests": requests,
        "peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        "rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
    }


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "changes": len(latencies),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3),
    }


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"`python benchmarks/operator_scale.py` on {meta['cpu']}, {meta['cores']} cores, {meta['measured_at']}; "
        f"the KMock API emulator (same machine, one Python process, over HTTP) and the real `qfleet operator` "
        f"process. Models start quantized (their status holds a passed result, as after an operator restart), "
        f"so no Job runs. A change = PATCH `spec.demand.cameras` -> the Deployment's `spec.replicas` is the "
        f"new count. Load average at the end: {meta['load']}.",
        "",
        "| models | nodes | start-up (all Deployments) | one change at a time p50 / p95 / max | "
        "burst: N changes at once, p50 / p95 / max | operator peak RSS | emulator GET p50 |",
        "|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in results:
        s, b = r["sequential"], r["burst"]
        lines.append(
            f"| {r['models']} | {r['nodes']} | {r['startup_s']:.1f} s | {s['p50_s'] * 1000:.0f} / "
            f"**{s['p95_s'] * 1000:.0f}** / {s['max_s'] * 1000:.0f} ms ({s['changes']} changes) | "
            f"N={b['size']}: {b['p50_s'] * 1000:.0f} / {b['p95_s'] * 1000:.0f} / {b['max_s'] * 1000:.0f} ms | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['api_get_ms']:.1f} ms |"
        )
    small, large = results[0], results[-1]
    ratio = large["sequential"]["p95_s"] / max(small["sequential"]["p95_s"], 1e-9)
    goal = large["sequential"]["p95_s"] < 2.0
    lines += [
        "",
        f"Goal p95 < 2 s at {large['models']} models: **{'met' if goal else 'missed'}** "
        f"({large['sequential']['p95_s']:.2f} s); p95 at {large['models']} vs {small['models']} models: "
        f"{ratio:.2f}x. A change costs the API server a few requests (kopf's annotation patch, one GET of the "
        f"model, the Deployment patch, the status patch, a Scaled event); a burst queues them on the one "
        f"emulator process (the GET column is its answer time with the operator idle). Start-up is bound by "
        f"the same: {large['api_requests']} requests for {large['models']} models (per model a GET, the "
        f"Deployment, the status, kopf's annotation, two Events, and a GET when the Deployment appears).",
        "",
    ]
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
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    results = []
    for models in args.models:
        result = asyncio.run(measure(models, args.nodes, args.changes, args.burst, args.seed))
        print(json.dumps(result), flush=True)
        results.append(result)
    meta = {
        "cpu": cpu_model(),
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
