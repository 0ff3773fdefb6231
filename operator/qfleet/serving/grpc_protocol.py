"""The Open Inference Protocol (KServe v2) gRPC messages: message classes and ModelInfer <-> numpy.

Pure: protobuf messages in, numpy arrays out (and back), no gRPC server, no OpenVINO. The
message classes come from the compiled ``grpc_predict_v2.proto`` (:mod:`qfleet.serving.grpc_descriptor`)
in a descriptor pool of their own, not protobuf's process-wide one: tritonclient and KServe
register the same ``inference.*`` names there, and a process may well import one of them too.

A face input travels as ``raw_input_contents`` (the flattened little-endian bytes, what
tritonclient sends) or as typed contents (``fp32_contents`` for FP32, ``uint_contents`` for
UINT8); outputs always go back as ``raw_output_contents``, as Triton answers. Every malformed
request raises :class:`~qfleet.serving.protocol.ProtocolError` (status 400, or 404 for an
unknown model), which the server maps to a gRPC status code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from qfleet.serving.grpc_descriptor import FILE_DESCRIPTOR
from qfleet.serving.protocol import (
    ACCEPTED_INPUT_DATATYPES,
    DATATYPES,
    InferRequest,
    ModelSignature,
    ProtocolError,
    RequestedOutput,
    check_shape,
    datatype_name,
    json_tensor,
    model_input,
    unknown_model,
)

SERVICE = "inference.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
_FILE = _POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(FILE_DESCRIPTOR))


def message_class(name: str) -> Any:
    """The message class of ``inference.<name>`` (``ModelInferRequest``, ...)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


#: method name -> (request class, response class), from the service descriptor.
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in _POOL.FindServiceByName(SERVICE).methods
}

ModelInferRequest = METHODS["ModelInfer"][0]
ModelInferResponse = METHODS["ModelInfer"][1]

#: Typed-contents field per accepted input datatype.
_CONTENTS_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


def method_path(method: str) -> str:
    """The HTTP/2 path of a service method (``/inference.GRPCInferenceService/ModelInfer``)."""
    return f"/{SERVICE}/{method}"


def _parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _requested_outputs(request: Any, signature: ModelSignature) -> tuple[RequestedOutput, ...]:
    if not request.outputs:
        return tuple(RequestedOutput(name, True) for name in signature.output_names())
    known = set(signature.output_names())
    chosen: list[RequestedOutput] = []
    for output in request.outputs:
        if output.name not in known:
            raise ProtocolError(f"unknown output {output.name!r}; the model has {sorted(known)}")
        if any(out.name == output.name for out in chosen):
            raise ProtocolError(f"output {output.name!r} is requested twice")
        chosen.append(RequestedOutput(output.name, True))
    return tuple(chosen)


def _raw_tensor(raw: bytes, *, datatype: str, shape: tuple[int, ...], name: str) -> npt.NDArray[Any]:
    wire = DATATYPES[datatype]
    expected = math.prod(shape) * wire.itemsize
    if len(raw) != expected:
        raise ProtocolError(
            f"tensor '{name}' has {len(raw)} bytes of raw contents but shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=wire).reshape(shape)


def parse_model_infer(request: Any, *, signature: ModelSignature) -> InferRequest:
    """Validate a ``ModelInferRequest`` against the served model; raise ProtocolError if it does not fit."""
    problem = unknown_model(signature, request.model_name, request.model_version or None)
    if problem is not None:
        raise ProtocolError(problem, status=404)
    spec = signature.input
    if len(request.inputs) != 1:
        raise ProtocolError(
            f"the request has {len(request.inputs)} inputs; the model takes one, '{spec.name}'"
        )
    entry = request.inputs[0]
    if entry.name != spec.name:
        raise ProtocolError(f"unknown input {entry.name!r}; the model takes only '{spec.name}'")
    if entry.datatype not in ACCEPTED_INPUT_DATATYPES:
        raise ProtocolError(
            f"input '{spec.name}' has datatype {entry.datatype!r}; "
            f"send one of {', '.join(ACCEPTED_INPUT_DATATYPES)}"
        )
    shape = tuple(int(dim) for dim in entry.shape)
    if any(dim < 0 for dim in shape):
        raise ProtocolError(f"input '{spec.name}' shape {list(shape)} has a negative dimension")
    check_shape(shape, spec)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for 1 input")
        if entry.HasField("contents"):
            raise ProtocolError(f"input '{spec.name}' has both contents and raw_input_contents; send one")
        faces = _raw_tensor(raw[0], datatype=entry.datatype, shape=shape, name=spec.name)
    else:
        field = _CONTENTS_FIELD[entry.datatype]
        values = getattr(entry.contents, field)
        if not values:
            raise ProtocolError(f"input '{spec.name}' has neither raw_input_contents nor contents.{field}")
        faces = json_tensor(list(values), datatype=entry.datatype, shape=shape, name=spec.name)
    return InferRequest(
        id=request.id or None,
        faces=model_input(faces, spec),
        outputs=_requested_outputs(request, signature),
        sent_datatype=entry.datatype,
        parameters=_parameters(request.parameters),
    )


def encode_model_infer(
    *, signature: ModelSignature, request: InferRequest, results: Mapping[str, npt.NDArray[Any]]
) -> Any:
    """The ``ModelInferResponse``: the requested outputs as ``raw_output_contents``."""
    response = ModelInferResponse(
        model_name=signature.name, model_version=signature.version, id=request.id or ""
    )
    for wanted in request.outputs:
        array = np.ascontiguousarray(results[wanted.name])
        tensor = response.outputs.add(name=wanted.name, datatype=datatype_name(array.dtype))
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


def model_metadata(signature: ModelSignature) -> Any:
    """The ``ModelMetadataResponse`` of the served model."""
    response = METHODS["ModelMetadata"][1](
        name=signature.name, versions=[signature.version], platform=signature.platform
    )
    for spec, tensors in (
        (signature.input, response.inputs),
        *((out, response.outputs) for out in signature.outputs),
    ):
        tensors.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    return response


# --- the client half -------------------------------------------------------------------------


def encode_model_infer_request(
    model: str,
    input_name: str,
    array: npt.NDArray[Any],
    *,
    raw: bool = True,
    request_id: str | None = None,
    outputs: Sequence[str] | None = None,
) -> Any:
    """A ``ModelInferRequest`` for one input tensor, as raw bytes or as typed contents."""
    array = np.ascontiguousarray(array)
    datatype = datatype_name(array.dtype)
    request = ModelInferRequest(model_name=model, id=request_id or "")
    entry = request.inputs.add(name=input_name, datatype=datatype)
    entry.shape.extend(array.shape)
    if raw:
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    else:
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise ValueError(f"typed contents are only written for {sorted(_CONTENTS_FIELD)}, not {datatype}")
        getattr(entry.contents, field).extend(array.reshape(-1).tolist())
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def decode_model_infer_response(response: Any) -> dict[str, npt.NDArray[Any]]:
    """The output tensors of a ``ModelInferResponse`` (raw output contents), by name."""
    if len(response.raw_output_contents) != len(response.outputs):
        raise ProtocolError(
            f"response has {len(response.outputs)} outputs but {len(response.raw_output_contents)} raw contents"
        )
    tensors: dict[str, npt.NDArray[Any]] = {}
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if output.datatype not in DATATYPES:
            raise ProtocolError(f"output {output.name!r} has unknown datatype {output.datatype!r}")
        tensors[output.name] = _raw_tensor(
            raw, datatype=output.datatype, shape=tuple(int(dim) for dim in output.shape), name=output.name
        )
    return tensors
