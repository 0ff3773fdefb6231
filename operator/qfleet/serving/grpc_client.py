"""A small asyncio client of the Open Inference Protocol's gRPC service, for ``qfleet loadtest --grpc``.

Calls are spread over a few HTTP/2 channels in turn. :meth:`GrpcClient.infer` returns the output
tensors, or the failure as a short error kind (``grpc_unavailable``, ``timeout``, ``bad_response``)
so that a load test counts it instead of stopping.
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any

import grpc
import numpy.typing as npt
from grpc import aio

from qfleet.errors import InputError
from qfleet.serving import grpc_protocol
from qfleet.serving.protocol import ProtocolError


class GrpcClient:
    def __init__(self, target: str, *, channels: int = 1, timeout_s: float = 30.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channels = [
            # Without a distinct option, grpcio hands back one shared connection for equal targets.
            aio.insecure_channel(
                target, options=[("grpc.channel_id", index), ("grpc.max_receive_message_length", -1)]
            )
            for index in range(max(1, channels))
        ]
        self._next = itertools.cycle(range(len(self._channels)))
        self._infer = [
            channel.unary_unary(
                grpc_protocol.method_path("ModelInfer"),
                request_serializer=grpc_protocol.ModelInferRequest.SerializeToString,
                response_deserializer=grpc_protocol.ModelInferResponse.FromString,
            )
            for channel in self._channels
        ]

    async def __aenter__(self) -> GrpcClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for channel in self._channels:
            await channel.close()

    async def model_metadata(self, model: str) -> dict[str, Any]:
        """The model's metadata as the REST protocol writes it (``inputs``: name, datatype, shape)."""
        request_class, response_class = grpc_protocol.METHODS["ModelMetadata"]
        call = self._channels[0].unary_unary(
            grpc_protocol.method_path("ModelMetadata"),
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            metadata = await call(request_class(name=model), timeout=self.timeout_s)
        except aio.AioRpcError as exc:
            raise InputError(
                f"cannot read the metadata of model {model!r} at {self.target}: {exc.code().name}: {exc.details()}",
                hint="is the server up, and is that its model name?",
            ) from None

        def tensors(entries: Any) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in entries
            ]

        return {
            "name": metadata.name,
            "inputs": tensors(metadata.inputs),
            "outputs": tensors(metadata.outputs),
        }

    @staticmethod
    def infer_request(model: str, input_name: str, array: npt.NDArray[Any]) -> Any:
        """A ``ModelInferRequest`` with the array as raw contents (build once, send many times)."""
        return grpc_protocol.encode_model_infer_request(model, input_name, array)

    async def infer(self, request: Any) -> dict[str, npt.NDArray[Any]] | str:
        """The outputs by name, or the error kind."""
        call = self._infer[next(self._next)]
        try:
            response = await call(request, timeout=self.timeout_s)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            return f"grpc_{exc.code().name.lower()}"
        try:
            return grpc_protocol.decode_model_infer_response(response)
        except ProtocolError:
            return "bad_response"
