"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) on grpcio's asyncio server.

It runs on the REST server's event loop and shares its :class:`~qfleet.serving.server.ServerState`:
the same engine (faces from both protocols meet in one dynamic batching queue), the same
``--max-concurrency`` count, the same metrics and the same drain. Answers:

- ``ServerLive``, ``ServerReady``, ``ModelReady`` (false while draining), ``ServerMetadata``,
  ``ModelMetadata`` (NOT_FOUND for another model or version), ``ModelInfer``.
- A malformed ``ModelInfer`` is INVALID_ARGUMENT, an unknown model NOT_FOUND, a message over
  ``--max-body-bytes`` RESOURCE_EXHAUSTED (grpcio refuses it before the handler runs), a request
  over ``--max-concurrency`` in flight RESOURCE_EXHAUSTED, a request while draining UNAVAILABLE
  (the code gRPC clients and proxies retry on another replica). Nothing a client sends is a
  crash: anything unexpected is INTERNAL and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from qfleet import __version__
from qfleet.errors import InputError
from qfleet.serving import grpc_protocol as messages
from qfleet.serving.protocol import ProtocolError

if TYPE_CHECKING:
    from qfleet.serving.server import ServerState

log = logging.getLogger(__name__)

#: ProtocolError's HTTP-style status -> the gRPC code that means the same.
_CODE_OF_STATUS = {404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}


class RpcRefused(Exception):
    """An answer other than OK: the gRPC code and a one-line message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_code(error: ProtocolError) -> grpc.StatusCode:
    """The gRPC code for a request the protocol refused (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND)."""
    return _CODE_OF_STATUS.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)


Handler = Callable[[Any, "ServerState"], Awaitable[Any]]


async def _server_live(request: Any, state: ServerState) -> Any:
    return messages.METHODS["ServerLive"][1](live=True)


async def _server_ready(request: Any, state: ServerState) -> Any:
    return messages.METHODS["ServerReady"][1](ready=not state.draining)


def _check_model(state: ServerState, name: str, version: str) -> None:
    from qfleet.serving.protocol import unknown_model

    problem = unknown_model(state.signature, name, version or None)
    if problem is not None:
        raise RpcRefused(grpc.StatusCode.NOT_FOUND, problem)


async def _model_ready(request: Any, state: ServerState) -> Any:
    _check_model(state, request.name, request.version)
    return messages.METHODS["ModelReady"][1](ready=not state.draining)


async def _server_metadata(request: Any, state: ServerState) -> Any:
    return messages.METHODS["ServerMetadata"][1](name="qfleet", version=__version__, extensions=[])


async def _model_metadata(request: Any, state: ServerState) -> Any:
    _check_model(state, request.name, request.version)
    return messages.model_metadata(state.signature)


async def _model_infer(request: Any, state: ServerState) -> Any:
    if state.draining:
        raise RpcRefused(
            grpc.StatusCode.UNAVAILABLE, "server is shutting down; send the request to another replica"
        )
    started = time.perf_counter()
    state.inflight += 1
    state.metrics.inflight.inc()
    try:
        if state.inferring >= state.max_concurrency:
            raise RpcRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server is at its limit of {state.max_concurrency} concurrent inference requests",
            )
        state.inferring += 1
        try:
            try:
                parsed = messages.parse_model_infer(request, signature=state.signature)
            except ProtocolError as exc:
                raise RpcRefused(status_code(exc), exc.message) from None
            results = await state.engine.infer(parsed.faces)
            response = messages.encode_model_infer(signature=state.signature, request=parsed, results=results)
            state.metrics.inferred(parsed.batch_size, time.perf_counter() - started)
            return response
        finally:
            state.inferring -= 1
    finally:
        state.inflight -= 1
        state.metrics.inflight.dec()


HANDLERS: dict[str, Handler] = {
    "ServerLive": _server_live,
    "ServerReady": _server_ready,
    "ModelReady": _model_ready,
    "ServerMetadata": _server_metadata,
    "ModelMetadata": _model_metadata,
    "ModelInfer": _model_infer,
}


def _method_handler(method: str, handler: Handler, state: ServerState) -> grpc.RpcMethodHandler:
    request_class, response_class = messages.METHODS[method]

    async def answer(body: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            try:
                request = request_class.FromString(body)
            except DecodeError:
                raise RpcRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the message is not an inference.{request_class.__name__}",
                ) from None
            response = await handler(request, state)
        except RpcRefused as refused:
            state.metrics.answered_grpc(method, refused.code.name)
            await context.abort(refused.code, refused.message)
        except Exception:
            log.exception("unexpected error answering gRPC %s", method)
            state.metrics.answered_grpc(method, grpc.StatusCode.INTERNAL.name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")
        state.metrics.answered_grpc(method, grpc.StatusCode.OK.name)
        return response

    # The handler decodes the request itself: grpcio answers a message its deserializer cannot
    # read with UNKNOWN, where the client deserves INVALID_ARGUMENT.
    return grpc.unary_unary_rpc_method_handler(answer, response_serializer=response_class.SerializeToString)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(state: ServerState, *, host: str, port: int) -> tuple[aio.Server, str]:
    """Listen on ``host:port`` (0: any free port); returns the started server and its address."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", state.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # grpcio sets SO_REUSEPORT by default: a second server on a taken port would then
            # share it silently instead of failing to start.
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                messages.SERVICE,
                {method: _method_handler(method, handler, state) for method, handler in HANDLERS.items()},
            ),
        )
    )
    try:
        bound = server.add_insecure_port(grpc_address(host, port))
    except RuntimeError as exc:
        bound = 0
        reason = str(exc)
    else:
        reason = "address in use or not available"
    if bound == 0:
        raise InputError(
            f"cannot listen for gRPC on {grpc_address(host, port)}: {reason}",
            hint="pick another --grpc-port, or --grpc-port 0 for any free port",
        )
    await server.start()
    return server, grpc_address(host, bound)
