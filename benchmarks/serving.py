"""Does the server deliver the FPS that ``qfleet benchmark`` measured, over REST and gRPC, with
dynamic batching? And does the plan hold when the replicas batch?

One run, one INT8 model, on this machine:

0. Batch sweep: ``qfleet benchmark --batch N --dynamic-batch`` for N in ``--sweep`` (1: the
   plain batch-1 benchmark); the best FPS is the "best-batch FPS".
1. Protocol overhead at the serving batch B (``--max-batch``): ``qfleet serve --max-batch B``
   saturated by ``--concurrency`` closed-loop clients, each sending B-face requests as soon as the
   last was answered, over REST (binary tensor extension) and over gRPC, alternating with
   ``qfleet benchmark --batch B --dynamic-batch`` (compiled as the server compiles it),
   ``--rounds`` times, then the benchmark once more. Goal: each protocol >= 95% of the benchmark
   (ratio of medians). Alternating spreads the load of other processes over all alike.
2. Cameras: ``--cameras`` closed-loop clients sending 1-face requests (REST binary) to the
   server with batching (``--max-batch B``) and without (``--max-batch 1``). Goal: with batching
   >= 90% of the best-batch FPS.
3. The plan holds with batching on: the unloaded latency of one face, then ``qfleet loadtest``
   (open loop) of ``--cameras`` cameras x 1 face offering 0.8x, 0.9x and 1.3x the FPS the
   operator plans a replica with for one-face requests (``qfleet.fleet.replicas.batching_fps``:
   the batch-1 FPS; planned with the batch-B FPS, 0.9x drew refusals): at 0.9x no errors, at
   1.3x achieved faces/s levels off near capacity. Each offer records how full the server's
   batches were and what it answered (its /metrics), and the cores the load generator took.

``--phases`` runs some of them (``--phases plan``: the plan phase alone, measuring the batch-1
and batch-B FPS first unless ``--capacity`` gives the planned FPS).

The clients run on the same machine and take some of its CPU: what the server delivers is
measured with that cost included, as a pod's neighbours would not have it.

Without ``--model`` an iResNet-50-shaped MXNet checkpoint (random weights, ``iresnet.py``) goes
through ``qfleet convert`` and NNCF ``quantize`` (performance preset, random calibration crops)
once; the INT8 IR is cached under ``--work``. Results go to stdout (JSON with ``--json``) and,
with ``--results``, into the "Serving" and "Batch size" sections of ``benchmarks/RESULTS.md``.

    python benchmarks/serving.py [--model XML] [--seconds 20] [--max-batch 4] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from _common import (
    CpuMeter,
    cpu_model,
    free_port,
    load_average,
    qfleet_json,
    replace_section,
    script_parser,
    server_process,
    utc_stamp,
)
from qfleet.fleet.replicas import batching_fps
from qfleet.isa import detect_host_tier
from qfleet.model.metadata import read_metadata
from qfleet.serving.loadtest import LoadSpec, loadtest, percentiles_ms
from qfleet.serving.protocol import HEADER_LENGTH, decode_infer_response, encode_infer_request

T = TypeVar("T")
SECTION_TITLE = "## Serving"
BATCH_SECTION_TITLE = "## Batch size (iResNet-50 INT8)"
#: Open-loop offers, as multiples of the batch-B FPS: the operator's default planning utilisation
#: (0.8), the issue's 0.9x ("no errors, p95 a small multiple of unloaded") and 1.3x (overload).
OFFERED_FACTORS = (0.8, 0.9, 1.3)
#: Others' CPU (cores) below which a phase counts as measured on a quiet machine.
CLEAN_CORES = 0.2
DEFAULT_WORK = Path(tempfile.gettempdir()) / "qfleet-benchmarks" / "serving"


def build_int8_model(work: Path, *, depth: int = 50, calibration_samples: int = 30) -> Path:
    """INT8 iResNet-``depth`` IR under ``work`` (built once: checkpoint -> convert -> quantize)."""
    int8_xml = work / f"iresnet{depth}-int8" / "model.xml"
    if int8_xml.is_file():
        return int8_xml
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from iresnet import build_checkpoint
    from qfleet.model.convert import convert_model
    from qfleet.model.quantize import quantize_model

    prefix = work / f"iresnet{depth}-mxnet" / "model"
    if not prefix.with_name("model-symbol.json").is_file():
        print(f"building an iResNet-{depth} checkpoint in {prefix.parent}", file=sys.stderr)
        build_checkpoint(depth, prefix)
    fp32_dir = work / f"iresnet{depth}-fp32"
    if not (fp32_dir / "model.xml").is_file():
        print("converting it to an FP32 IR", file=sys.stderr)
        convert_model(prefix, fmt="mxnet", epoch=1, out_dir=fp32_dir)
    rng = np.random.default_rng(0)
    # Random crops calibrate well enough for speed: INT8 kernels do not depend on the ranges.
    crops = [
        rng.uniform(0, 255, size=(1, 3, 112, 112)).astype(np.float32) for _ in range(calibration_samples)
    ]
    print(f"quantizing it to INT8 with {calibration_samples} calibration crops", file=sys.stderr)
    quantize_model(fp32_dir / "model.xml", calibration=crops, out_dir=int8_xml.parent, progress=False)
    return int8_xml


async def _model_input(session: Any, url: str) -> tuple[str, str, list[int]]:
    async with session.post(f"{url}/v2/repository/index") as response:
        name = (await response.json())[0]["name"]
    async with session.get(f"{url}/v2/models/{name}") as response:
        model_input = (await response.json())["inputs"][0]
    return name, model_input["name"], model_input["shape"][1:]


async def closed_loop(
    url: str, *, concurrency: int, faces_per_request: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """``concurrency`` REST clients back to back; faces/s of answers completed in the measured window."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        name, input_name, tail = await _model_input(session, url)
        crops = np.random.default_rng(0).integers(0, 256, size=(faces_per_request, *tail), dtype=np.uint8)
        body, headers = encode_infer_request(input_name, crops, binary=True)
        infer_url = f"{url}/v2/models/{name}/infer"
        loop = asyncio.get_running_loop()
        begin = loop.time() + warmup_s
        end = begin + seconds
        done: list[tuple[float, float]] = []  # (sent, answered) of OK answers
        errors = 0

        async def client() -> None:
            nonlocal errors
            while (sent := loop.time()) < end:
                async with session.post(infer_url, data=body, headers=headers) as response:
                    payload = await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
                    outputs = decode_infer_response(
                        payload, header_length=response.headers.get(HEADER_LENGTH)
                    )
                    assert all(array.shape[0] == faces_per_request for array in outputs.values())
                done.append((sent, loop.time()))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return _window_report(done, errors, begin=begin, end=end, concurrency=concurrency,
                          faces_per_request=faces_per_request, seconds=seconds)  # fmt: skip


async def closed_loop_grpc(
    target: str, model: str, *, concurrency: int, faces_per_request: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """``concurrency`` gRPC clients back to back (over a few HTTP/2 channels, as loadtest does)."""
    from qfleet.serving.grpc_client import GrpcClient

    async with GrpcClient(target, channels=min(concurrency, 8), timeout_s=120) as client:
        model_input = (await client.model_metadata(model))["inputs"][0]
        crops = np.random.default_rng(0).integers(
            0, 256, size=(faces_per_request, *model_input["shape"][1:]), dtype=np.uint8
        )
        request = client.infer_request(model, model_input["name"], crops)
        loop = asyncio.get_running_loop()
        begin = loop.time() + warmup_s
        end = begin + seconds
        done: list[tuple[float, float]] = []
        errors = 0

        async def one_client() -> None:
            nonlocal errors
            while (sent := loop.time()) < end:
                outcome = await client.infer(request)
                if isinstance(outcome, str):
                    errors += 1
                    continue
                assert all(array.shape[0] == faces_per_request for array in outcome.values())
                done.append((sent, loop.time()))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return _window_report(done, errors, begin=begin, end=end, concurrency=concurrency,
                          faces_per_request=faces_per_request, seconds=seconds)  # fmt: skip


def _window_report(
    done: list[tuple[float, float]],
    errors: int,
    *,
    begin: float,
    end: float,
    concurrency: int,
    faces_per_request: int,
    seconds: float,
) -> dict[str, Any]:
    in_window = [(sent, answered) for sent, answered in done if begin <= answered < end]
    return {
        "faces_per_s": round(len(in_window) * faces_per_request / seconds, 3),
        "requests": len(in_window),
        "errors": errors,
        "latency_ms": percentiles_ms([answered - sent for sent, answered in in_window]),
        "concurrency": concurrency,
        "faces_per_request": faces_per_request,
        "seconds": seconds,
    }


def direct_benchmark(
    model_xml: Path, *, seconds: float, threads: int | None, batch: int = 1
) -> dict[str, Any]:
    """``qfleet benchmark --json`` in its own process (what the quantization Job runs); at
    ``batch`` > 1 compiled as ``qfleet serve --max-batch`` compiles it."""
    args = ["benchmark", "--model", str(model_xml), "--seconds", str(seconds)]
    args += [] if threads is None else ["--threads", str(threads)]
    args += [] if batch == 1 else ["--batch", str(batch), "--dynamic-batch"]
    for attempt in (1, 2):
        try:
            return qfleet_json(*args, timeout=3 * seconds + 120)
        except subprocess.TimeoutExpired:
            # Seen once under heavy machine load: the benchmark process hung at exit. Retry once.
            print(f"qfleet benchmark timed out (attempt {attempt})", file=sys.stderr)
    raise RuntimeError("qfleet benchmark did not finish twice in a row")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(run[key]) for run in runs))


class _Run:
    """The measurements of one run, and how to take each on a shared machine."""

    def __init__(self, model_xml: Path, *, seconds: float, threads: int | None, quiet_cores: float,
                 wait_quiet_s: float) -> None:  # fmt: skip
        self.model_xml = model_xml
        self.seconds = seconds
        self.threads = threads
        self.quiet_cores = quiet_cores
        self.wait_quiet_s = wait_quiet_s
        self.meter = CpuMeter()

    def measure(self, name: str, phase: Callable[[], T]) -> T:
        print(f"measuring {name}", file=sys.stderr)
        return self.meter.measure(name, phase, max_cores=self.quiet_cores, wait_s=self.wait_quiet_s)

    def direct(self, name: str, batch: int) -> dict[str, Any]:
        return self.measure(
            name,
            lambda: direct_benchmark(self.model_xml, seconds=self.seconds, threads=self.threads, batch=batch),
        )

    def rest(self, name: str, url: str, *, concurrency: int, faces: int) -> dict[str, Any]:
        return self.measure(name, lambda: asyncio.run(closed_loop(
            url, concurrency=concurrency, faces_per_request=faces, seconds=self.seconds, warmup_s=3.0)))  # fmt: skip

    def grpc(self, name: str, target: str, model: str, *, concurrency: int, faces: int) -> dict[str, Any]:
        return self.measure(name, lambda: asyncio.run(closed_loop_grpc(
            target, model, concurrency=concurrency, faces_per_request=faces, seconds=self.seconds,
            warmup_s=3.0)))  # fmt: skip

    def server_args(self, max_batch: int, batch_timeout_ms: float, grpc_port: int) -> list[str]:
        args = [] if self.threads is None else ["--threads", str(self.threads)]
        args += ["--max-batch", str(max_batch), "--batch-timeout-ms", f"{batch_timeout_ms:g}"]
        return [*args, "--grpc-port", str(grpc_port)]


#: The phases, in the order they run (``--phases`` picks some).
PHASES = ("sweep", "protocols", "cameras", "plan")


def run(
    *,
    model_xml: Path,
    seconds: float,
    rounds: int,
    max_batch: int,
    batch_timeout_ms: float,
    sweep: tuple[int, ...],
    cameras: int,
    concurrency: int,
    threads: int | None,
    quiet_cores: float,
    wait_quiet_s: float,
    phases: tuple[str, ...] = PHASES,
    offered: tuple[float, ...] = OFFERED_FACTORS,
    capacity: float | None = None,
) -> dict[str, Any]:
    bench = _Run(
        model_xml, seconds=seconds, threads=threads, quiet_cores=quiet_cores, wait_quiet_s=wait_quiet_s
    )
    result: dict[str, Any] = {
        "model": str(model_xml),
        "model_kind": read_metadata(model_xml).get("kind", "unknown"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": detect_host_tier(),
        "measured_at": utc_stamp(),
        "load_average_1m_at_start": load_average(),
        "max_batch": max_batch,
        "batch_timeout_ms": batch_timeout_ms,
        "quiet_cores": quiet_cores,
        "phases_run": list(phases),
        "phases": bench.meter.phases,
    }
    if "sweep" in phases:
        _sweep_phase(bench, result, sweep)
    cams_batched: list[dict[str, Any]] = []
    if {"protocols", "cameras", "plan"} & set(phases):
        grpc_port = free_port()
        with server_process(model_xml, *bench.server_args(max_batch, batch_timeout_ms, grpc_port)) as (
            url,
            server,
        ):
            bench.meter.server_pid = server.pid
            if "protocols" in phases:
                capacity = _protocols_phase(
                    bench, result, url, f"127.0.0.1:{grpc_port}", rounds=rounds, concurrency=concurrency
                )
            elif "plan" in phases and capacity is None:
                # Without the protocol rounds, one benchmark at batch B.
                capacity = _direct_summary(result, [bench.direct("direct_1", max_batch)], max_batch)
            if "cameras" in phases:
                cams_batched = [
                    bench.rest(f"cameras_batched_{i + 1}", url, concurrency=cameras, faces=1)
                    for i in range(rounds)
                ]
            if "plan" in phases:
                assert capacity is not None
                if "direct" in result:
                    capacity = _planned_fps(bench, result, batch_fps=capacity)
                result["capacity"] = round(capacity, 2)
                result["capacity_from"] = "planned" if "direct" in result else "--capacity"
                _plan_phase(bench, result, url, capacity=capacity, cameras=cameras, offered=offered)
    if "cameras" in phases:
        with server_process(model_xml, *bench.server_args(1, batch_timeout_ms, free_port())) as (url, server):
            bench.meter.server_pid = server.pid
            cams_plain = [
                bench.rest(f"cameras_unbatched_{i + 1}", url, concurrency=cameras, faces=1)
                for i in range(rounds)
            ]
        best = result.get("best_batch", {}).get("fps")
        for name, runs in (("cameras_batched", cams_batched), ("cameras_unbatched", cams_plain)):
            fps = _median(runs, "faces_per_s")
            result[name] = {
                **runs[-1],
                "faces_per_s_runs": [run["faces_per_s"] for run in runs],
                "faces_per_s": round(fps, 2),
                "errors": sum(run["errors"] for run in runs),
                "over_best_batch": round(fps / best, 4) if best else None,
            }
    result["load_average_1m_at_end"] = load_average()
    return result


def _sweep_phase(bench: _Run, result: dict[str, Any], sweep: tuple[int, ...]) -> None:
    """0. ``qfleet benchmark`` at each batch of the sweep; the best is the best-batch FPS."""
    sweep_runs = {batch: bench.direct(f"sweep_b{batch}", batch) for batch in sweep}
    result["sweep"] = {
        str(batch): {"fps": round(run["fps"], 2), "latency_ms_median": round(run["latency_ms_median"], 2)}
        for batch, run in sweep_runs.items()
    }
    best_batch = max(sweep_runs, key=lambda batch: sweep_runs[batch]["fps"])
    result["best_batch"] = {"batch": best_batch, "fps": round(sweep_runs[best_batch]["fps"], 2)}


def _planned_fps(bench: _Run, result: dict[str, Any], *, batch_fps: float) -> float:
    """What the operator plans a replica with for these cameras' one-face requests: between the
    batch-1 FPS (the sweep's, else measured now) and the batch-B FPS (see ``batching_fps``)."""
    batch1 = (result.get("sweep") or {}).get("1", {}).get("fps")
    if batch1 is None:
        batch1 = bench.direct("direct_b1", 1)["fps"]
    result["planned"] = {
        "batch1_fps": round(batch1, 2),
        "batch_fps": round(batch_fps, 2),
        "faces_per_request": 1,
    }
    return batching_fps(
        batch1_fps=batch1, batch_fps=batch_fps, batch=result["max_batch"], faces_per_request=1
    )


def _direct_summary(result: dict[str, Any], direct: list[dict[str, Any]], max_batch: int) -> float:
    """Record the ``qfleet benchmark`` runs at batch B; their median FPS is the capacity planned with."""
    capacity = _median(direct, "fps")
    result["direct"] = {
        "batch": max_batch,
        "fps_runs": [round(run["fps"], 2) for run in direct],
        "fps": round(capacity, 2),
        "streams": direct[0]["streams"],
        "infer_requests": direct[0]["infer_requests"],
        "latency_ms_median": round(_median(direct, "latency_ms_median"), 2),
    }
    return capacity


def _protocols_phase(
    bench: _Run, result: dict[str, Any], url: str, grpc_target: str, *, rounds: int, concurrency: int
) -> float:
    """1. B-face requests (each one inference) over REST and gRPC, alternating with the benchmark."""
    max_batch = result["max_batch"]
    model = read_model_name(url)
    direct: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    grpc: list[dict[str, Any]] = []
    for index in range(rounds):
        direct.append(bench.direct(f"direct_{index + 1}", max_batch))
        rest.append(bench.rest(f"rest_{index + 1}", url, concurrency=concurrency, faces=max_batch))
        grpc.append(bench.grpc(f"grpc_{index + 1}", grpc_target, model, concurrency=concurrency,
                               faces=max_batch))  # fmt: skip
    direct.append(bench.direct(f"direct_{rounds + 1}", max_batch))
    capacity = _direct_summary(result, direct, max_batch)
    for name, runs in (("rest", rest), ("grpc", grpc)):
        fps = _median(runs, "faces_per_s")
        result[name] = {
            **runs[-1],
            "faces_per_s_runs": [run["faces_per_s"] for run in runs],
            "faces_per_s": round(fps, 2),
            "errors": sum(run["errors"] for run in runs),
            "over_direct": round(fps / capacity, 4),
        }
    return capacity


def _plan_phase(
    bench: _Run,
    result: dict[str, Any],
    url: str,
    *,
    capacity: float,
    cameras: int,
    offered: tuple[float, ...],
) -> None:
    """3. The unloaded latency, then open-loop camera load at multiples of ``capacity``; each offer
    also records how full the server's batches were and what it refused (from its /metrics)."""
    seconds = bench.seconds
    result["unloaded"] = bench.measure("unloaded", lambda: asyncio.run(closed_loop(
        url, concurrency=1, faces_per_request=1, seconds=max(seconds / 2, 5.0), warmup_s=1.0)))  # fmt: skip
    unloaded_p50 = result["unloaded"]["latency_ms"]["p50"]
    for factor in offered:
        spec = LoadSpec(url=url, cameras=cameras, camera_fps=factor * capacity / cameras, faces_per_frame=1,
                        seconds=seconds * 1.5, binary=True, timeout_s=120.0)  # fmt: skip
        report = bench.measure(
            f"offered_{factor:g}x", functools.partial(_offer, url, spec, max_batch=result["max_batch"])
        )
        p95 = report["latency_ms"]["p95"]
        report["p95_over_unloaded_p50"] = round(p95 / unloaded_p50, 2) if p95 and unloaded_p50 else None
        report["achieved_over_capacity"] = round(report["achieved_fps"] / capacity, 4)
        result[f"offered_{factor:g}x"] = report


def _offer(url: str, spec: LoadSpec, *, max_batch: int) -> dict[str, Any]:
    """One open-loop load test, with the server's batches and answers during it."""
    before = server_counts(url)
    report = loadtest(spec)
    report["server"] = server_counts(url).since(before).summary(max_batch)
    return report


@dataclass(frozen=True)
class ServerCounts:
    """The server's inference batches (by size bucket) and infer answers (by status code) so far."""

    batches_le: dict[float, float]
    batches: float
    faces: float
    answers: dict[str, float]

    def since(self, earlier: ServerCounts) -> ServerCounts:
        return ServerCounts(
            batches_le={le: n - earlier.batches_le.get(le, 0.0) for le, n in self.batches_le.items()},
            batches=self.batches - earlier.batches,
            faces=self.faces - earlier.faces,
            answers={code: n - earlier.answers.get(code, 0.0) for code, n in self.answers.items()},
        )

    def summary(self, max_batch: int) -> dict[str, Any]:
        # Full batches: all but those in the bucket just below max_batch (the server's buckets
        # step by one face up to 4; a histogram without that bucket cannot tell).
        below_full = self.batches_le.get(float(max_batch - 1)) if max_batch > 1 else 0.0
        return {
            "inferences": int(self.batches),
            "faces_per_inference": self._share(self.faces),
            "full_batch_share": None if below_full is None else self._share(self.batches - below_full),
            "single_face_share": self._share(self.batches_le.get(1.0, 0.0)),
            "answers_by_code": {code: int(n) for code, n in sorted(self.answers.items()) if n},
        }

    def _share(self, count: float) -> float | None:
        return round(count / self.batches, 3) if self.batches else None


def server_counts(url: str) -> ServerCounts:
    """Read the batch-size histogram and the infer answers from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics") as response:
        text = response.read().decode()
    batches_le: dict[float, float] = {}
    batches = faces = 0.0
    answers: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "qfleet_server_inference_batch_faces_bucket":
                batches_le[float(sample.labels["le"])] = sample.value
            elif sample.name == "qfleet_server_inference_batch_faces_count":
                batches = sample.value
            elif sample.name == "qfleet_server_inference_batch_faces_sum":
                faces = sample.value
            elif sample.name == "qfleet_server_requests_total" and "infer" in sample.labels["endpoint"]:
                code = sample.labels["code"]
                answers[code] = answers.get(code, 0.0) + sample.value
    return ServerCounts(batches_le, batches, faces, answers)


def read_model_name(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/v2/repository/index", method="POST")
    ) as response:
        return str(json.load(response)[0]["name"])


def _others(phases: dict[str, Any], prefix: str) -> str:
    return " / ".join(
        f"{phase['others_cores']:.2f} ({phase['load_average_1m']:.1f})"
        for name, phase in phases.items()
        if name.startswith(prefix)
    )


def _goal(value: float, goal: float) -> str:
    return "met" if value >= goal else "**NOT met**"


def markdown(result: dict[str, Any]) -> str:
    direct, rest, grpc = result["direct"], result["rest"], result["grpc"]
    batched, plain = result["cameras_batched"], result["cameras_unbatched"]
    phases = result["phases"]
    b = result["max_batch"]
    best = result["best_batch"]

    def runs(values: list[float]) -> str:
        return " / ".join(f"{value:.1f}" for value in values)

    lines = [
        SECTION_TITLE,
        "",
        f"`python benchmarks/serving.py` on {result['cpu']}, {result['cores']} cores, ISA tier "
        f"{result['isa']}, {result['measured_at']}; 1-minute load average {result['load_average_1m_at_start']:.2f} "
        f"at the start, {result['load_average_1m_at_end']:.2f} at the end. Model: "
        f"`{Path(result['model']).parent.name}` ({result['model_kind'].upper()}, THROUGHPUT hint: "
        f"{direct['streams']} streams, {direct['infer_requests']} infer requests). Server: "
        f"`qfleet serve --max-batch {b} --batch-timeout-ms {result['batch_timeout_ms']:g}`, REST and gRPC from "
        "one process; the clients run on the same cores. Each phase waited until other processes used at "
        f"most {result['quiet_cores']:g} cores (repeated up to 3 times when they used more); the last column is "
        "the CPU other processes used during the phase, in cores, and in brackets the 1-minute load average at "
        "its end (this benchmark's own server and clients included).",
        "",
        "| measurement | faces/s | latency ms (p50 / p95 / p99) | errors | others' CPU (load) |",
        "|---|---:|---|---:|---|",
        f"| `qfleet benchmark --batch {b} --dynamic-batch`, runs alternating with REST and gRPC | "
        f"{runs(direct['fps_runs'])} (median **{direct['fps']:.1f}**) | median {direct['latency_ms_median']:.0f} "
        f"per batch | - | {_others(phases, 'direct_')} |",
        f"| REST binary at saturation, {b} faces/request, {rest['concurrency']} clients | "
        f"{runs(rest['faces_per_s_runs'])} (median **{rest['faces_per_s']:.1f}** = **{rest['over_direct']:.1%}**) "
        f"| {_ms(rest['latency_ms'])} (last run) | {rest['errors']} | {_others(phases, 'rest_')} |",
        f"| gRPC at saturation, {b} faces/request, {grpc['concurrency']} clients | "
        f"{runs(grpc['faces_per_s_runs'])} (median **{grpc['faces_per_s']:.1f}** = **{grpc['over_direct']:.1%}**) "
        f"| {_ms(grpc['latency_ms'])} (last run) | {grpc['errors']} | {_others(phases, 'grpc_')} |",
        f"| {batched['concurrency']} cameras, 1 face/request, REST, `--max-batch {b}` | "
        f"{runs(batched['faces_per_s_runs'])} (median **{batched['faces_per_s']:.1f}** = "
        f"**{batched['over_best_batch']:.1%}** of best-batch {best['fps']:.1f}) | {_ms(batched['latency_ms'])} | "
        f"{batched['errors']} | {_others(phases, 'cameras_batched')} |",
        f"| {plain['concurrency']} cameras, 1 face/request, REST, `--max-batch 1` | "
        f"{runs(plain['faces_per_s_runs'])} (median **{plain['faces_per_s']:.1f}** = "
        f"{plain['over_best_batch']:.1%} of best-batch) | {_ms(plain['latency_ms'])} | {plain['errors']} | "
        f"{_others(phases, 'cameras_unbatched')} |",
        f"| unloaded: one face at a time, `--max-batch {b}` | {result['unloaded']['faces_per_s']:.1f} | "
        f"{_ms(result['unloaded']['latency_ms'])} | {result['unloaded']['errors']} | {_others(phases, 'unloaded')} |",
    ]
    lines += plan_rows(result)
    at_09, at_13 = result["offered_0.9x"], result["offered_1.3x"]
    lines += [
        "",
        f"- REST binary at batch {b}: {rest['over_direct']:.1%} of `qfleet benchmark` at the same batch "
        f"(goal >= 95%: {_goal(rest['over_direct'], 0.95)}); gRPC: {grpc['over_direct']:.1%} "
        f"({_goal(grpc['over_direct'], 0.95)}).",
        f"- 1-face requests from {batched['concurrency']} cameras: with `--max-batch {b}` "
        f"{batched['over_best_batch']:.1%} of the best-batch FPS (batch {best['batch']}, {best['fps']:.1f}; goal "
        f">= 90%: {_goal(batched['over_best_batch'], 0.90)}); without batching {plain['over_best_batch']:.1%} "
        f"(batching gives x{batched['faces_per_s'] / plain['faces_per_s']:.2f}).",
        f"- Plan tightness with batching, against the {result['capacity']:.1f} faces/s the operator plans one-face requests with: 0.9x: "
        f"{at_09['errors']} errors, achieved {at_09['achieved_over_capacity']:.0%} of capacity "
        f"({'holds' if at_09['errors'] == 0 else '**does not hold**'}); 1.3x: achieved "
        f"{at_13['achieved_over_capacity']:.0%} of capacity while {at_13['offered_fps']:.1f} faces/s were offered "
        f"({'levels off near capacity' if at_13['achieved_over_capacity'] <= 1.1 else 'above capacity'}), "
        f"{at_13['errors']} errors.",
        "- Latency of the open-loop phases counts from each frame's scheduled send time, so queueing is included.",
        _clients_cpu(result),
    ]
    busiest = max(phase["others_cores"] for phase in phases.values())
    if busiest > CLEAN_CORES:
        clean = [f"{name} {phase['others_cores']:.2f}" for name, phase in phases.items()
                 if phase["others_cores"] <= CLEAN_CORES]  # fmt: skip
        lines.append(
            f"- Other processes used up to {busiest:.2f} of the {result['cores']} cores during the phases, and "
            "unevenly: a ratio of two medians measured under different contention is no evidence either way. "
            f"Phases measured clean (others <= {CLEAN_CORES} cores): {', '.join(clean) or 'none'}."
        )
    lines.append("")
    return "\n".join(lines)


def _offers(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The open-loop phases that ran, as (factor, report), in the order they ran."""
    return [(key[len("offered_") : -1], value) for key, value in result.items() if key.startswith("offered_")]


def plan_rows(result: dict[str, Any]) -> list[str]:
    """The table rows of the open-loop phases (plan tightness)."""
    rows = []
    for factor, report in _offers(result):
        server = report.get("server") or {}
        batches = (
            f"; {server['faces_per_inference']:.2f} faces per inference, {server['full_batch_share']:.0%} full"
            if server.get("faces_per_inference") and server.get("full_batch_share") is not None
            else ""
        )
        rows.append(
            f"| open loop {factor}x of {result['capacity']:.1f}: {report['cameras']} cameras x "
            f"{report['camera_fps']:.2f} fps x 1 face, {report['seconds']:g} s | offered {report['offered_fps']:.1f}, "
            f"achieved {report['achieved_fps']:.1f} ({report['achieved_over_capacity']:.0%}){batches} | "
            f"{_ms(report['latency_ms'])} (p95 = {report['p95_over_unloaded_p50']}x unloaded p50) | "
            f"{report['errors']} | {_others(result['phases'], f'offered_{factor}x')} |"
        )
    return rows


def plan_markdown(result: dict[str, Any]) -> str:
    """The plan-tightness table alone (a run of ``--phases plan``)."""
    lines = [
        f"Plan tightness: `qfleet serve --max-batch {result['max_batch']} --batch-timeout-ms "
        f"{result['batch_timeout_ms']:g}` on {result['cpu']}, {result['cores']} cores, {result['measured_at']}; "
        f"capacity {result['capacity']:.1f} faces/s ({_capacity_from(result)}); 1-minute load average {result['load_average_1m_at_start']:.2f} at the start, "
        f"{result['load_average_1m_at_end']:.2f} at the end.",
        "",
        "| measurement | faces/s | latency ms (p50 / p95 / p99) | errors | others' CPU (load) |",
        "|---|---:|---|---:|---|",
        f"| unloaded: one face at a time | {result['unloaded']['faces_per_s']:.1f} | "
        f"{_ms(result['unloaded']['latency_ms'])} | {result['unloaded']['errors']} | "
        f"{_others(result['phases'], 'unloaded')} |",
        *plan_rows(result),
        "",
        _clients_cpu(result),
        "",
    ]
    return "\n".join(lines)


def _capacity_from(result: dict[str, Any]) -> str:
    if result.get("capacity_from") == "--capacity":
        return "given with --capacity"
    planned = result["planned"]
    return (
        f"what the operator plans one-face requests with: batch-1 {planned['batch1_fps']:.1f}, "
        f"`--batch {result['max_batch']} --dynamic-batch` {planned['batch_fps']:.1f}"
    )


def _clients_cpu(result: dict[str, Any]) -> str:
    """What the load generators (this script) and the server took of the cores, per phase kind."""
    phases = result["phases"]

    def cores(prefix: str) -> str:
        chosen = [
            phase for name, phase in phases.items() if name.startswith(prefix) and "script_cores" in phase
        ]
        if not chosen:
            return "-"
        return " / ".join(
            f"{phase['script_cores']:.2f} (server {phase['server_cores']:.2f})" for phase in chosen
        )

    return (
        f"- Cores the load generator took (the server's in brackets): open loop {cores('offered_')}; "
        f"closed-loop cameras {cores('cameras_batched')}."
    )


def batch_markdown(result: dict[str, Any]) -> str:
    best = result["best_batch"]
    lines = [
        BATCH_SECTION_TITLE,
        "",
        f"`qfleet benchmark --batch N --dynamic-batch` (N = 1: the plain batch-1 benchmark), "
        f"{result['direct']['streams']} streams, the first phase of `benchmarks/serving.py` on {result['cpu']}, "
        f"{result['cores']} cores, ISA tier {result['isa']}, {result['measured_at']} (1-minute load "
        f"{result['load_average_1m_at_start']:.2f} at the start; others' CPU per run in the last column).",
        "",
        "| batch | FPS | median latency ms per batch | others' CPU (load) |",
        "|---:|---:|---:|---|",
    ]
    for batch, run in result["sweep"].items():
        lines.append(
            f"| {batch} | {run['fps']:.1f} | {run['latency_ms_median']:.1f} | "
            f"{_others(result['phases'], f'sweep_b{batch}')} |"
        )
    lines += [
        "",
        f"Best: batch {best['batch']} at {best['fps']:.1f} FPS.",
        "",
    ]
    return "\n".join(lines)


def _ms(latency: dict[str, float | None]) -> str:
    values = [latency["p50"], latency["p95"], latency["p99"]]
    return " / ".join("-" if value is None else f"{value:.0f}" for value in values)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--model", type=Path, help="an INT8 model.xml (default: build iResNet-50 INT8 under --work)"
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the built model is cached")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=2, help="direct/REST/gRPC alternations (default 2)")
    parser.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch (default 4)")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0, help="the server's --batch-timeout-ms")
    parser.add_argument("--sweep", default="1,2,4,8", help="batches of the sweep (default 1,2,4,8)")
    parser.add_argument("--cameras", type=int, default=64, help="simulated cameras, 1 face each (default 64)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="clients of the protocol phases (default 4)"
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.15,
        help="on a shared machine: wait until other processes use at most this many cores before each "
        "phase, and repeat a phase (up to 3 times, keeping the cleanest) when they used more (default 0.15)",
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=300.0, help="longest wait for a quiet machine per phase (s)"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"the phases to run, comma-separated (default all: {','.join(PHASES)}); plan alone measures "
        "the capacity with one `qfleet benchmark` unless --capacity gives it",
    )
    parser.add_argument(
        "--offered",
        default=",".join(f"{factor:g}" for factor in OFFERED_FACTORS),
        help="the plan phase's offers, as multiples of the capacity (default 0.8,0.9,1.3)",
    )
    parser.add_argument("--capacity", type=float, help="faces/s the plan phase offers multiples of")
    parser.add_argument("--results", type=Path, help="update the Serving section of this RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    phases = tuple(phase.strip() for phase in args.phases.split(",") if phase.strip())
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)} (choose from {', '.join(PHASES)})")
    if args.results and set(phases) != set(PHASES):
        parser.error("--results needs every phase (the sections compare them)")
    model_xml = args.model or build_int8_model(args.work)
    result = run(
        model_xml=model_xml,
        seconds=args.seconds,
        rounds=args.rounds,
        max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms,
        sweep=tuple(int(batch) for batch in args.sweep.split(",")),
        cameras=args.cameras,
        concurrency=args.concurrency,
        threads=args.threads,
        quiet_cores=args.quiet_cores,
        wait_quiet_s=args.wait_quiet,
        phases=phases,
        offered=tuple(float(factor) for factor in args.offered.split(",")),
        capacity=args.capacity,
    )
    if set(phases) == set(PHASES):
        section = markdown(result)
    elif "plan" in phases:
        section = plan_markdown(result)
    else:
        section = json.dumps(result, indent=2)
    if args.results:
        replace_section(args.results, SECTION_TITLE, section)
        replace_section(args.results, BATCH_SECTION_TITLE, batch_markdown(result))
    print(json.dumps(result, indent=2) if args.json else section)


if __name__ == "__main__":
    main()
