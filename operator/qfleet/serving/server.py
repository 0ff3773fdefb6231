"""The inference server: Open Inference Protocol (KServe v2) REST over aiohttp, one OpenVINO model.

Endpoints (``{model}`` also accepts ``/versions/1``):

- ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``
- ``GET /v2/models/{model}`` (metadata), ``GET /v2/models/{model}/ready``
- ``POST /v2/models/{model}/infer`` (JSON tensors or the binary tensor data extension)
- ``POST /v2/repository/index`` (the one model, for clients that discover it)
- ``GET /metrics`` (Prometheus text format)

The same model over gRPC (``inference.GRPCInferenceService``) listens on ``grpc_port``
(:mod:`qfleet.serving.grpc_server`), sharing this server's engine, limits, metrics and drain.

Limits and their answers:

- A malformed request is a 4xx with ``{"error": "..."}`` (400; 404 for an unknown model; 413
  for a body over ``max_body_bytes``), never a 5xx.
- Overload is a 503 with ``Retry-After: 1``: when ``max_concurrency`` inference requests are
  already in flight, new ones are refused at once instead of queueing without bound, so latency
  stays bounded and a load balancer (or the client) can retry on another replica. 503, not
  429: the refusal is about this replica's capacity, not about the client's request rate.
- SIGTERM (or SIGINT): readiness turns false, the listening sockets close, in-flight requests
  are answered (up to ``shutdown_grace_s``), new requests on open connections get a 503 (gRPC:
  UNAVAILABLE), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from qfleet import __version__
from qfleet.errors import InputError
from qfleet.model.metadata import read_metadata, require_model_xml
from qfleet.serving.engine import InferenceEngine, check_serving_isa
from qfleet.serving.metrics import ServerMetrics
from qfleet.serving.protocol import (
    HEADER_LENGTH,
    ModelSignature,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
    unknown_model,
)
from qfleet.serving.settings import (
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PORT,
    DEFAULT_SHUTDOWN_GRACE_S,
)

log = logging.getLogger(__name__)

#: Bodies larger than this are parsed on a worker thread so that decoding a big JSON tensor does
#: not stall the other requests on the event loop.
PARSE_OFFLOAD_BYTES = 256 * 1024
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ServerConfig:
    model_xml: Path
    name: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: The gRPC port (0: any free port); None serves REST only.
    grpc_port: int | None = DEFAULT_GRPC_PORT
    threads: int | None = None
    max_batch: int = 1
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S
    allow_isa_mismatch: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


@dataclass
class ServerState:
    engine: InferenceEngine
    metrics: ServerMetrics
    max_body_bytes: int
    max_concurrency: int
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    draining: bool = False
    #: Requests being handled, bodies still arriving included (what a drain waits for).
    inflight: int = 0
    #: Requests past reading their body (what --max-concurrency bounds).
    inferring: int = 0

    @property
    def signature(self) -> ModelSignature:
        return self.engine.signature


STATE = web.AppKey("qfleet_server_state", ServerState)


def default_model_name(model_xml: Path, metadata: dict[str, Any]) -> str:
    """``qfleet.json``'s ``name``, else the model directory's name (``model.xml``) or the file stem."""
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        name = model_xml.parent.name if model_xml.stem == "model" else model_xml.stem
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")
    return cleaned or "model"


def load_engine(config: ServerConfig) -> tuple[InferenceEngine, ServerMetrics, dict[str, Any]]:
    """Check the model (files, ISA tier, name) and compile it; the slow part of starting."""
    xml = require_model_xml(config.model_xml)
    metadata = read_metadata(xml)
    plan = check_serving_isa(xml, metadata, allow_mismatch=config.allow_isa_mismatch)
    isa = plan.isa
    name = config.name or default_model_name(xml, metadata)
    if not _MODEL_NAME.match(name):
        raise InputError(
            f"model name {name!r} is not usable in a URL", hint="use letters, digits, '.', '_', '-'"
        )
    if config.max_body_bytes < 1024:
        raise InputError(f"--max-body-bytes must be at least 1024, got {config.max_body_bytes}")
    if config.max_concurrency < 1:
        raise InputError(f"--max-concurrency must be at least 1, got {config.max_concurrency}")
    kind = str(metadata.get("kind", "unknown"))
    metrics = ServerMetrics(
        model_name=name,
        model_kind=kind,
        model_isa=isa,
        model_precision=plan.precision,
        inference_precision=plan.float_precision,
    )
    engine = InferenceEngine(
        xml,
        name=name,
        threads=config.threads,
        max_batch=config.max_batch,
        batch_timeout_s=config.batch_timeout_s,
        on_batch=metrics.batch.observe,
        precision=plan.precision,
        float_precision=plan.float_precision,
    )
    info = {"model": name, "model_xml": str(xml), "kind": kind, "isa": isa, **engine.describe()}
    return engine, metrics, info


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors_and_counts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as ``{"error": ...}`` JSON (the protocol's error object), every answer counted."""
    route = request.match_info.route
    endpoint = route.name if route is not None and route.name else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = _error(exc.status, f"{exc.reason}: {request.method} {request.path}", headers=headers)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        response = _error(500, "internal server error (see the server log)")
    request.app[STATE].metrics.answered(endpoint, response.status)
    return response


def _unknown_model(request: web.Request, signature: ModelSignature) -> str | None:
    """Why the URL's model (and version) is not the one served, or None when it is."""
    return unknown_model(signature, request.match_info["model"], request.match_info.get("version"))


def _model_route(handler: Callable[[web.Request, ServerState], Awaitable[web.Response]]) -> Handler:
    """A handler under ``/v2/models/{model}[/versions/{version}]``: 404 unless it names our model."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        state = request.app[STATE]
        problem = _unknown_model(request, state.signature)
        if problem is not None:
            return _error(404, problem)
        return await handler(request, state)

    return wrapped


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "qfleet", "version": __version__, "extensions": ["binary_tensor_data"]})


async def _live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _ready(request: web.Request) -> web.Response:
    if request.app[STATE].draining:
        return _error(400, "server is shutting down")
    return web.Response(status=200)


async def _model_metadata(request: web.Request, state: ServerState) -> web.Response:
    return web.json_response(state.signature.metadata())


async def _model_ready(request: web.Request, state: ServerState) -> web.Response:
    if state.draining:
        return _error(400, f"model {state.signature.name!r} is shutting down")
    return web.Response(status=200)


async def _repository_index(request: web.Request) -> web.Response:
    signature = request.app[STATE].signature
    state = "UNAVAILABLE" if request.app[STATE].draining else "READY"
    return web.json_response([{"name": signature.name, "version": signature.version, "state": state}])


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[STATE].metrics
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})


async def _infer(request: web.Request, state: ServerState) -> web.Response:
    retry = {"Retry-After": "1"}
    if state.draining:
        return _error(503, "server is shutting down; send the request to another replica", headers=retry)
    too_large = (
        f"request body is over the limit of {state.max_body_bytes} bytes; send fewer faces per request"
    )
    if request.content_length is not None and request.content_length > state.max_body_bytes:
        return _error(413, too_large)
    started = time.perf_counter()
    state.inflight += 1
    state.metrics.inflight.inc()
    try:
        try:
            # A client that trickles its body must not hold the server: bound the time to read it,
            # and count it against --max-concurrency only once the body is here.
            body = await asyncio.wait_for(request.read(), timeout=state.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, too_large)
        except TimeoutError:
            return _error(408, f"request body did not arrive within {state.body_timeout_s:g} s")
        except ConnectionResetError:  # the client left mid-body: nobody reads this answer
            return _error(400, "the client closed the connection before sending the whole body")
        if state.inferring >= state.max_concurrency:
            return _error(
                503,
                f"server is at its limit of {state.max_concurrency} concurrent inference requests",
                headers=retry,
            )
        state.inferring += 1
        try:
            return await _infer_body(request, state, body, started)
        finally:
            state.inferring -= 1
    finally:
        state.inflight -= 1
        state.metrics.inflight.dec()


async def _infer_body(request: web.Request, state: ServerState, body: bytes, started: float) -> web.Response:
    parse = functools.partial(
        parse_infer_request,
        body,
        signature=state.signature,
        header_length=request.headers.get(HEADER_LENGTH),
    )
    try:
        if len(body) > PARSE_OFFLOAD_BYTES:
            parsed = await asyncio.get_running_loop().run_in_executor(None, parse)
        else:
            parsed = parse()
    except ProtocolError as exc:
        return _error(exc.status, exc.message)
    results = await state.engine.infer(parsed.faces)
    payload, headers = encode_infer_response(signature=state.signature, request=parsed, results=results)
    state.metrics.inferred(parsed.batch_size, time.perf_counter() - started)
    return web.Response(body=payload, headers=headers)


def build_app(
    engine: InferenceEngine,
    metrics: ServerMetrics,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> web.Application:
    """The aiohttp application around a compiled model (no socket yet: tests can serve it in-process)."""
    app = web.Application(middlewares=[_json_errors_and_counts], client_max_size=max_body_bytes)
    app[STATE] = ServerState(
        engine=engine,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        max_concurrency=max_concurrency,
        body_timeout_s=body_timeout_s,
    )
    metrics.ready.set(1)
    routes = app.router
    routes.add_get("/v2", _server_metadata, name="server_metadata")
    routes.add_get("/v2/health/live", _live, name="live")
    routes.add_get("/v2/health/ready", _ready, name="ready")
    routes.add_post("/v2/repository/index", _repository_index, name="repository_index")
    routes.add_get("/metrics", _metrics, name="metrics")
    for prefix, suffix in (("/v2/models/{model}", ""), ("/v2/models/{model}/versions/{version}", "_version")):
        routes.add_get(prefix, _model_route(_model_metadata), name="model_metadata" + suffix)
        routes.add_get(prefix + "/ready", _model_route(_model_ready), name="model_ready" + suffix)
        routes.add_post(prefix + "/infer", _model_route(_infer), name="infer" + suffix)
    return app


def start_draining(app: web.Application) -> None:
    """Readiness false and new inference requests refused; in-flight ones carry on."""
    state = app[STATE]
    state.draining = True
    state.metrics.ready.set(0)


async def _drain(site: web.BaseSite, state: ServerState, *, grace_s: float) -> None:
    """Stop listening, then wait (at most ``grace_s``) until no inference request is in flight.

    aiohttp's own shutdown stops reading from open connections at once, which would strand a
    request whose body is still arriving; so the server waits for its in-flight requests itself
    and only then lets aiohttp close the (now idle) connections.
    """
    await site.stop()
    deadline = time.monotonic() + grace_s
    while state.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if state.inflight:
        log.warning(
            "%d request(s) still in flight after %.0f s; closing their connections", state.inflight, grace_s
        )


async def serve(
    config: ServerConfig,
    *,
    engine: InferenceEngine | None = None,
    metrics: ServerMetrics | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), drain, and return a summary."""
    info: dict[str, Any] = {}
    if engine is None or metrics is None:
        engine, metrics, info = load_engine(config)
    app = build_app(
        engine,
        metrics,
        max_body_bytes=config.max_body_bytes,
        max_concurrency=config.max_concurrency,
        body_timeout_s=config.body_timeout_s,
    )
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace_s
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    host, port = runner.addresses[0][:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    grpc_server: Any = None
    grpc_target: str | None = None
    if config.grpc_port is not None:
        from qfleet.serving.grpc_server import start_grpc_server

        try:
            grpc_server, grpc_target = await start_grpc_server(
                app[STATE], host=config.host, port=config.grpc_port
            )
        except BaseException:
            await runner.cleanup()
            raise
        # Logged before the REST line below, which is the one tests and scripts wait for.
        log.info("gRPC listening on %s", grpc_target)
    log.info(
        "serving model %r (%s) on %s: %d stream(s), %d infer request(s), max batch %d",
        engine.signature.name,
        info.get("kind", "?"),
        url,
        engine.streams,
        engine.infer_requests,
        engine.max_batch,
    )
    # The line tests and scripts wait for.
    log.info("listening on %s", url)

    stop = stop or asyncio.Event()
    reason: dict[str, str] = {"stopped_by": "stop event"}
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        reason["stopped_by"] = signum.name
        stop.set()

    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    started = time.monotonic()
    try:
        await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        state = app[STATE]
        start_draining(app)
        log.info("%s: draining %d in-flight request(s), then exiting", reason["stopped_by"], state.inflight)
        # grpcio refuses new calls from here on and cancels those still running after the grace.
        grpc_stopped = (
            asyncio.ensure_future(grpc_server.stop(config.shutdown_grace_s))
            if grpc_server is not None
            else None
        )
        await _drain(site, state, grace_s=config.shutdown_grace_s)
        if grpc_stopped is not None:
            await grpc_stopped
        await runner.cleanup()
        engine.close()
    return {
        **info,
        "url": url,
        "grpc": grpc_target,
        "stopped_by": reason["stopped_by"],
        "uptime_s": round(time.monotonic() - started, 3),
        "faces_inferred": metrics.faces_total,
    }
