"""Open-loop camera load against an Open Inference Protocol server.

Each simulated camera sends one request per frame, ``faces_per_frame`` face crops in it, on its
own fixed schedule (``1 / camera_fps`` apart, from a random start offset inside the first frame
interval so that cameras do not fire in lockstep). The schedule is *open loop*: a frame is sent
when it is due whether or not earlier frames were answered, as real cameras do -- a slow server
gets a growing queue, not a politely slowed client.

Definitions in the report:

- ``offered_fps``: faces per second the schedule sends (cameras x camera_fps x faces_per_frame).
- ``achieved_fps``: faces answered with 200 per second, over the time from the first scheduled
  frame to the last answer.
- latency: from a frame's *scheduled* send time to its answer, so that time a frame spent waiting
  for the client (a busy event loop, no free connection) is counted, not hidden.
- ``late_frames``: frames whose actual send time slipped more than one frame interval behind
  schedule, i.e. the load generator itself could not keep up (then its numbers understate the
  offered load: run it on a less busy machine, or with fewer cameras per process).
- ``frames_over_interval``: answered frames whose latency exceeded one frame interval: the
  server fell behind the camera's frame rate for that frame.
- errors: non-200 answers (``http_503`` ...), ``timeout``, ``connection`` and ``bad_response``
  (a 200 whose outputs do not hold one row per face); over gRPC, the status code in lower case
  (``grpc_resource_exhausted``, ``grpc_unavailable`` ...) and ``bad_response``.

With ``grpc`` the frames go to the protocol's gRPC service (``ModelInfer`` with
``raw_input_contents``) at ``host:port`` over ``max_connections`` HTTP/2 channels, calls spread
over them in turn; the model must be named (gRPC has no repository index to discover it from).

Only the URL given is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from qfleet.errors import InputError
from qfleet.serving.protocol import HEADER_LENGTH, ProtocolError, decode_infer_response, encode_infer_request

#: Distinct request bodies cycled over cameras: enough that consecutive requests differ, few
#: enough that encoding them up front costs nothing.
DISTINCT_FRAMES = 8


@dataclass(frozen=True)
class LoadSpec:
    url: str
    cameras: int
    camera_fps: float
    faces_per_frame: int
    seconds: float
    binary: bool = True
    model: str | None = None
    datatype: str = "UINT8"
    timeout_s: float = 30.0
    max_connections: int = 256
    seed: int = 0
    grpc: bool = False

    def validate(self) -> None:
        if self.cameras < 1:
            raise InputError(f"--cameras must be at least 1, got {self.cameras}")
        if not self.camera_fps > 0:
            raise InputError(f"--camera-fps must be positive, got {self.camera_fps}")
        if self.faces_per_frame < 1:
            raise InputError(f"--faces-per-frame must be at least 1, got {self.faces_per_frame}")
        if not self.seconds > 0:
            raise InputError(f"--seconds must be positive, got {self.seconds}")
        if self.datatype not in ("UINT8", "FP32"):
            raise InputError(f"--datatype must be UINT8 or FP32, got {self.datatype!r}")
        if self.max_connections < 1:
            raise InputError(f"--max-connections must be at least 1, got {self.max_connections}")

    @property
    def interval_s(self) -> float:
        return 1.0 / self.camera_fps

    @property
    def offered_fps(self) -> float:
        return self.cameras * self.camera_fps * self.faces_per_frame


#: HTTP/2 channels a gRPC load test opens at most: each multiplexes many calls, so a few suffice
#: (one would serialise every frame through one connection's framing on both sides).
MAX_GRPC_CHANNELS = 8


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str | None


def parse_target(url: str, model: str | None = None) -> Target:
    """The server's base URL (and the model, when the URL names one: ``.../v2/models/NAME[/infer]``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--url {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8080")
    path = parts.path.rstrip("/")
    prefix, marker, rest = path.partition("/v2")
    named = None
    if marker:
        segments = [segment for segment in rest.split("/") if segment]
        if len(segments) >= 2 and segments[0] == "models":
            named = segments[1]
    if model is not None and named is not None and model != named:
        raise InputError(f"--url names model {named!r} but --model is {model!r}")
    return Target(base_url=f"{parts.scheme}://{parts.netloc}{prefix}", model=model or named)


def parse_grpc_target(url: str) -> str:
    """``host:port`` of a gRPC server from ``host:port`` or ``grpc://host:port``."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise InputError(
            f"--url {url!r} is not a gRPC address", hint="with --grpc, give host:port, e.g. 127.0.0.1:8081"
        )
    return parts.netloc


def camera_offsets(cameras: int, interval_s: float, rng: np.random.Generator) -> npt.NDArray[Any]:
    """Each camera's first-frame time, uniform in one frame interval (cameras are not in phase)."""
    return np.sort(rng.uniform(0.0, interval_s, size=cameras))


def frames_in(offset_s: float, interval_s: float, seconds: float) -> int:
    """How many frames a camera starting at ``offset_s`` sends in ``seconds``."""
    if offset_s >= seconds:
        return 0
    return math.ceil((seconds - offset_s) / interval_s - 1e-9)


@dataclass
class FrameResult:
    camera: int
    scheduled: float
    sent: float
    done: float
    ok: bool
    error: str | None = None


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(values.mean()), 3),
        "max": round(float(values.max()), 3),
    }


def summarize(
    spec: LoadSpec, results: list[FrameResult], *, started: float, frames_scheduled: int
) -> dict[str, Any]:
    """The load test report from every frame's outcome (times on one monotonic clock)."""
    ok = [result for result in results if result.ok]
    errors = Counter(result.error or "unknown" for result in results if not result.ok)
    last_done = max((result.done for result in results), default=started)
    elapsed = max(last_done - started, 1e-9)
    latencies = [result.done - result.scheduled for result in ok]
    lags = [result.sent - result.scheduled for result in results]
    interval = spec.interval_s
    return {
        "cameras": spec.cameras,
        "camera_fps": spec.camera_fps,
        "faces_per_frame": spec.faces_per_frame,
        "seconds": spec.seconds,
        "binary": spec.binary,
        "datatype": spec.datatype,
        "frames_scheduled": frames_scheduled,
        "frames_sent": len(results),
        "frames_ok": len(ok),
        "offered_fps": round(spec.offered_fps, 3),
        "offered_fps_actual": round(frames_scheduled * spec.faces_per_frame / spec.seconds, 3),
        "achieved_fps": round(len(ok) * spec.faces_per_frame / elapsed, 3),
        "elapsed_s": round(elapsed, 3),
        "latency_ms": percentiles_ms(latencies),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items())),
        "late_frames": sum(1 for lag in lags if lag > interval),
        "max_send_lag_ms": round(max(lags, default=0.0) * 1000.0, 3),
        "frames_over_interval": sum(1 for latency in latencies if latency > interval),
    }


#: Sends camera N's frame and returns the error kind (None: answered with one row per face).
SendFrame = Callable[[int], Awaitable[str | None]]


@dataclass
class _Run:
    spec: LoadSpec
    send: SendFrame
    results: list[FrameResult] = field(default_factory=list)


async def _fetch_json(session: Any, method: str, url: str) -> Any:
    import aiohttp

    try:
        async with session.request(method, url) as response:
            text = await response.text()
            if response.status != 200:
                raise InputError(f"{method} {url} answered {response.status}: {text[:200]}")
            return json.loads(text)
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
        raise InputError(
            f"cannot read {url}: {exc or type(exc).__name__}", hint="is the server up?"
        ) from None


async def _discover(session: Any, target: Target) -> tuple[str, dict[str, Any]]:
    """The model name and its metadata (inputs, shapes) from the server."""
    model = target.model
    if model is None:
        index = await _fetch_json(session, "POST", f"{target.base_url}/v2/repository/index")
        names = (
            [entry.get("name") for entry in index if isinstance(entry, dict)]
            if isinstance(index, list)
            else []
        )
        if len(names) != 1 or not isinstance(names[0], str):
            raise InputError(
                f"server at {target.base_url} serves {len(names)} models", hint="pass --model NAME"
            )
        model = names[0]
    metadata = await _fetch_json(session, "GET", f"{target.base_url}/v2/models/{model}")
    if not isinstance(metadata, dict) or not metadata.get("inputs"):
        raise InputError(f"model metadata of {model!r} at {target.base_url} lists no inputs")
    return model, metadata


def _frame_arrays(spec: LoadSpec, model_input: dict[str, Any]) -> list[npt.NDArray[Any]]:
    """The distinct frames' face crops (random pixels) in the datatype the spec sends."""
    shape = list(model_input.get("shape") or [])
    tail = shape[1:]
    if not tail or not all(isinstance(dim, int) and dim > 0 for dim in tail):
        raise InputError(
            f"model input {model_input.get('name')!r} has shape {shape}; need fixed dims after the batch"
        )
    rng = np.random.default_rng(spec.seed)
    arrays = []
    for _ in range(min(spec.cameras, DISTINCT_FRAMES)):
        crops = rng.integers(0, 256, size=(spec.faces_per_frame, *tail), dtype=np.uint8)
        arrays.append(crops if spec.datatype == "UINT8" else crops.astype(np.float32))
    return arrays


def _one_row_per_face(outputs: dict[str, npt.NDArray[Any]], faces: int) -> bool:
    return bool(outputs) and all(array.shape[:1] == (faces,) for array in outputs.values())


def _http_sender(spec: LoadSpec, session: Any, infer_url: str, model_input: dict[str, Any]) -> SendFrame:
    bodies = [
        encode_infer_request(model_input["name"], array, binary=spec.binary)
        for array in _frame_arrays(spec, model_input)
    ]

    async def send(camera: int) -> str | None:
        import aiohttp

        body, headers = bodies[camera % len(bodies)]
        try:
            async with session.post(infer_url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    return f"http_{response.status}"
                outputs = decode_infer_response(payload, header_length=response.headers.get(HEADER_LENGTH))
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError:
            return "connection"
        except ProtocolError:
            return "bad_response"
        return None if _one_row_per_face(outputs, spec.faces_per_frame) else "bad_response"

    return send


async def _send_frame(run: _Run, camera: int, scheduled: float) -> None:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    error = await run.send(camera)
    run.results.append(FrameResult(camera, scheduled, sent, loop.time(), error is None, error))


async def _camera(run: _Run, camera: int, start: float, offset: float, tasks: set[Any]) -> None:
    loop = asyncio.get_running_loop()
    spec = run.spec
    for frame in range(frames_in(offset, spec.interval_s, spec.seconds)):
        scheduled = start + offset + frame * spec.interval_s
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Fire and forget (open loop); the task set keeps a reference until it finishes.
        task = asyncio.create_task(_send_frame(run, camera, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _drive(run: _Run) -> tuple[float, int, float]:
    """Every camera's schedule; returns the start time, the frames scheduled and the wall clock start."""
    spec = run.spec
    rng = np.random.default_rng(spec.seed + 1)
    offsets = camera_offsets(spec.cameras, spec.interval_s, rng)
    frames_scheduled = sum(frames_in(float(offset), spec.interval_s, spec.seconds) for offset in offsets)
    loop = asyncio.get_running_loop()
    # Start a little in the future so that every camera's first frame is on time.
    start = loop.time() + 0.05
    tasks: set[Any] = set()
    wall_started = time.time()
    await asyncio.gather(
        *(_camera(run, camera, start, float(offset), tasks) for camera, offset in enumerate(offsets))
    )
    if tasks:
        await asyncio.gather(*list(tasks))
    return start, frames_scheduled, wall_started


async def _run_http(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp

    target = parse_target(spec.url, spec.model)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    connector = aiohttp.TCPConnector(limit=spec.max_connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        model, metadata = await _discover(session, target)
        infer_url = f"{target.base_url}/v2/models/{model}/infer"
        run = _Run(spec, _http_sender(spec, session, infer_url, metadata["inputs"][0]))
        start, frames_scheduled, wall_started = await _drive(run)
    report = summarize(spec, run.results, started=start, frames_scheduled=frames_scheduled)
    return {"url": target.base_url, "model": model, "started_at": round(wall_started, 3), **report}


async def _run_grpc(spec: LoadSpec) -> dict[str, Any]:
    from qfleet.serving.grpc_client import GrpcClient

    target = parse_grpc_target(spec.url)
    if spec.model is None:
        raise InputError("--grpc needs --model NAME", hint="the gRPC protocol has no index to discover it")
    channels = max(1, min(spec.max_connections, MAX_GRPC_CHANNELS))
    async with GrpcClient(target, channels=channels, timeout_s=spec.timeout_s) as client:
        model_input = (await client.model_metadata(spec.model))["inputs"][0]
        requests = [
            client.infer_request(spec.model, model_input["name"], array)
            for array in _frame_arrays(spec, model_input)
        ]

        async def send(camera: int) -> str | None:
            outcome = await client.infer(requests[camera % len(requests)])
            if isinstance(outcome, str):
                return outcome
            return None if _one_row_per_face(outcome, spec.faces_per_frame) else "bad_response"

        run = _Run(spec, send)
        start, frames_scheduled, wall_started = await _drive(run)
    report = summarize(spec, run.results, started=start, frames_scheduled=frames_scheduled)
    return {"url": f"grpc://{target}", "model": spec.model, "started_at": round(wall_started, 3), **report}


async def run_loadtest(spec: LoadSpec) -> dict[str, Any]:
    """Drive the camera schedule against ``spec.url`` and report (see the module docstring)."""
    spec.validate()
    report = await (_run_grpc(spec) if spec.grpc else _run_http(spec))
    report["protocol"] = "grpc" if spec.grpc else "http"
    return report


def loadtest(spec: LoadSpec) -> dict[str, Any]:
    """Synchronous entry point: run the load test on a fresh event loop."""
    return asyncio.run(run_loadtest(spec))
