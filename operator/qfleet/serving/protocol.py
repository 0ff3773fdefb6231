"""The Open Inference Protocol (KServe v2) REST messages, with the binary tensor data extension.

Pure functions: bytes in, numpy arrays out (and back), no HTTP server, no OpenVINO. The server
calls :func:`parse_infer_request` and :func:`encode_infer_response`; the load generator and the
tests call the client half, :func:`encode_infer_request` and :func:`decode_infer_response`.

Binary tensor data extension: the body starts with the JSON header, whose length in bytes is
the ``Inference-Header-Content-Length`` HTTP header; the raw tensors follow in input order,
each input saying how many bytes it takes in ``parameters.binary_data_size``. Outputs come back
the same way when the request asks for it (``binary_data_output`` for all outputs, or
``binary_data`` on one output).

Every malformed request raises :class:`ProtocolError` carrying the HTTP status to answer with
(4xx) and a one-line message; nothing here may raise anything else on any input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

#: HTTP header that marks a body as "JSON header + binary tensors".
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Content type of a body that carries binary tensors.
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

#: Protocol datatype names and the numpy dtypes they travel as (little-endian, row-major).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAME_BY_DTYPE: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}

#: Datatypes a face input accepts: the model's own (FP32) and raw camera pixels (UINT8, 0..255),
#: which are converted to the model's type on arrival.
ACCEPTED_INPUT_DATATYPES: tuple[str, ...] = ("FP32", "UINT8")


class ProtocolError(Exception):
    """A request the server must refuse: ``status`` is the 4xx to answer, the message says why."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it; ``-1`` marks a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """What the server serves: one face input (batch first) and its outputs."""

    name: str
    version: str
    platform: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    def metadata(self) -> dict[str, Any]:
        """The body of ``GET /v2/models/{name}``."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [self.input.as_dict()],
            "outputs": [output.as_dict() for output in self.outputs],
        }

    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: the face batch, converted to the model's input dtype."""

    id: str | None
    faces: npt.NDArray[Any]
    outputs: tuple[RequestedOutput, ...]
    #: The datatype the client sent (FP32 or UINT8), for logs and metrics.
    sent_datatype: str = "FP32"
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.faces.shape[0])


def datatype_name(dtype: np.dtype[Any] | type) -> str:
    """The protocol name of a numpy dtype (``float32`` -> ``FP32``)."""
    resolved = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _NAME_BY_DTYPE[resolved]
    except KeyError:
        raise ValueError(f"numpy dtype {resolved} has no Open Inference Protocol datatype") from None


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header length from ``Inference-Header-Content-Length``; None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}")
    length = int(text)
    if length == 0 or length > body_length:
        raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body holds {body_length} bytes")
    return length


def _load_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("request body must be a JSON object with an 'inputs' list")
    return header


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(dim) is int and dim >= 0 for dim in value):
        raise ProtocolError(f"{what} 'shape' must be a list of non-negative integers, got {value!r:.80}")
    return tuple(value)


def check_shape(shape: tuple[int, ...], spec: TensorSpec) -> None:
    expected = spec.shape
    if len(shape) != len(expected) or any(
        want != -1 and got != want for got, want in zip(shape, expected, strict=True)
    ):
        raise ProtocolError(
            f"input '{spec.name}' has shape {list(shape)}; the model takes {list(expected)} (-1: any size)"
        )
    if shape[0] < 1:
        raise ProtocolError(
            f"input '{spec.name}' has an empty batch (shape {list(shape)}); send at least one face"
        )


def json_tensor(data: Any, *, datatype: str, shape: tuple[int, ...], name: str) -> npt.NDArray[Any]:
    """A tensor from JSON numbers (flat or nested row-major lists)."""
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}' 'data' must be a list of numbers")
    wire = DATATYPES[datatype]
    try:
        # Parse as float64 first so that out-of-range or fractional UINT8 values are caught, not wrapped.
        values = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(
            f"input '{name}' 'data' must be a (nested) list of numbers of one shape"
        ) from None
    expected = math.prod(shape)
    if values.size != expected:
        raise ProtocolError(
            f"input '{name}' has {values.size} values but shape {list(shape)} needs {expected}"
        )
    if wire.kind == "u":
        info = np.iinfo(wire)
        if values.size and (
            values.min() < info.min or values.max() > info.max or not np.array_equal(values, np.round(values))
        ):
            raise ProtocolError(
                f"input '{name}' is {datatype}: values must be integers in {info.min}..{info.max}"
            )
    return values.reshape(shape).astype(wire)


def _binary_tensor(
    blob: bytes | memoryview, offset: int, *, size: Any, datatype: str, shape: tuple[int, ...], name: str
) -> tuple[npt.NDArray[Any], int]:
    wire = DATATYPES[datatype]
    expected = math.prod(shape) * wire.itemsize
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input '{name}' binary_data_size must be a non-negative integer")
    if size != expected:
        raise ProtocolError(
            f"input '{name}' binary_data_size is {size} bytes but shape {list(shape)} of {datatype} "
            f"needs {expected}"
        )
    if offset + size > len(blob):
        raise ProtocolError(
            f"input '{name}' needs {size} bytes of binary data but only {len(blob) - offset} remain in the body"
        )
    array = np.frombuffer(blob, dtype=wire, count=math.prod(shape), offset=offset).reshape(shape)
    return array, offset + size


def _requested_outputs(
    header: dict[str, Any], signature: ModelSignature, params: dict[str, Any]
) -> tuple[RequestedOutput, ...]:
    all_binary = params.get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    requested = header.get("outputs")
    if requested is None:
        return tuple(RequestedOutput(name, all_binary) for name in signature.output_names())
    if not isinstance(requested, list):
        raise ProtocolError("'outputs' must be a list of {'name': ...} objects")
    known = set(signature.output_names())
    chosen: list[RequestedOutput] = []
    for item in requested:
        entry = _object(item, "each entry of 'outputs'")
        name = entry.get("name")
        if name not in known:
            raise ProtocolError(f"unknown output {name!r}; the model has {sorted(known)}")
        if any(out.name == name for out in chosen):
            raise ProtocolError(f"output {name!r} is requested twice")
        binary = _object(entry.get("parameters"), f"output {name!r} 'parameters'").get(
            "binary_data", all_binary
        )
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r} parameter 'binary_data' must be true or false")
        chosen.append(RequestedOutput(name, binary))
    return tuple(chosen)


def _input_tensor(
    entry: dict[str, Any], spec: TensorSpec, blob: memoryview, offset: int, header_length: str | None
) -> tuple[npt.NDArray[Any], str, int]:
    """One input's tensor (from JSON ``data`` or the binary part at ``offset``), its datatype and
    the offset after it."""
    name = spec.name
    datatype = entry.get("datatype")
    if datatype not in ACCEPTED_INPUT_DATATYPES:
        raise ProtocolError(
            f"input '{name}' has datatype {datatype!r}; send one of {', '.join(ACCEPTED_INPUT_DATATYPES)}"
        )
    shape = _shape(entry.get("shape"), f"input '{name}'")
    check_shape(shape, spec)
    input_params = _object(entry.get("parameters"), f"input '{name}' 'parameters'")
    has_data = "data" in entry
    if "binary_data_size" in input_params:
        if has_data:
            raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size; send one")
        if header_length is None:
            raise ProtocolError(f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH}")
        array, offset = _binary_tensor(
            blob, offset, size=input_params["binary_data_size"], datatype=datatype, shape=shape, name=name
        )
        return array, datatype, offset
    if has_data:
        return json_tensor(entry["data"], datatype=datatype, shape=shape, name=name), datatype, offset
    raise ProtocolError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")


def parse_infer_request(
    body: bytes, *, signature: ModelSignature, header_length: str | None = None
) -> InferRequest:
    """Validate an ``/infer`` body against the model; raise :class:`ProtocolError` when it does not fit.

    ``header_length`` is the raw ``Inference-Header-Content-Length`` header value (None when
    the request has none, i.e. pure JSON).
    """
    json_length = parse_header_length(header_length, len(body))
    if json_length is None:
        json_length = len(body)
    if json_length == 0:
        raise ProtocolError("request body is empty; send a JSON object with an 'inputs' list")
    header = _load_header(body[:json_length])
    blob = memoryview(body)[json_length:]

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    params = _object(header.get("parameters"), "'parameters'")
    outputs = _requested_outputs(header, signature, params)

    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(
            f"'inputs' must be a non-empty list; the model takes input '{signature.input.name}'"
        )
    spec = signature.input
    faces: npt.NDArray[Any] | None = None
    sent_datatype = spec.datatype
    offset = 0
    for item in inputs:
        entry = _object(item, "each entry of 'inputs'")
        name = entry.get("name")
        if name != spec.name:
            raise ProtocolError(f"unknown input {name!r}; the model takes only '{spec.name}'")
        if faces is not None:
            raise ProtocolError(f"input '{name}' is given twice")
        faces, sent_datatype, offset = _input_tensor(entry, spec, blob, offset, header_length)
    if faces is None:  # pragma: no cover - the loop above either sets it or raises
        raise ProtocolError(f"missing input '{spec.name}'")
    if offset != len(blob):
        raise ProtocolError(f"the body has {len(blob) - offset} bytes of binary data that no input claims")

    return InferRequest(
        id=request_id,
        faces=model_input(faces, spec),
        outputs=outputs,
        sent_datatype=sent_datatype,
        parameters=params,
    )


def model_input(faces: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    """The faces as the model's contiguous input array; NaN and infinity refused."""
    if faces.dtype.kind == "f" and not np.isfinite(faces).all():
        raise ProtocolError(f"input '{spec.name}' holds NaN or infinity")
    return np.ascontiguousarray(faces, dtype=DATATYPES[spec.datatype])


def unknown_model(signature: ModelSignature, name: str, version: str | None) -> str | None:
    """Why a request's model (and version) is not the one served, or None when it is."""
    if name != signature.name:
        return f"unknown model {name!r}; this server serves {signature.name!r}"
    if version is not None and version != signature.version:
        return f"model {name!r} has no version {version!r}; it has {signature.version!r}"
    return None


def encode_infer_response(
    *,
    signature: ModelSignature,
    request: InferRequest,
    results: Mapping[str, npt.NDArray[Any]],
) -> tuple[bytes, dict[str, str]]:
    """The ``/infer`` response body and the headers that describe it."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        array = np.ascontiguousarray(results[wanted.name])
        entry: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype_name(array.dtype),
            "shape": list(array.shape),
        }
        if wanted.binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    response: dict[str, Any] = {
        "model_name": signature.name,
        "model_version": signature.version,
        "outputs": outputs,
    }
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


# --- the client half -------------------------------------------------------------------------


def encode_infer_request(
    input_name: str,
    array: npt.NDArray[Any],
    *,
    binary: bool,
    binary_output: bool | None = None,
    request_id: str | None = None,
    outputs: Sequence[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An ``/infer`` body for one input tensor, as JSON numbers or as binary tensor data.

    ``binary_output`` (default: same as ``binary``) asks for the outputs as binary data.
    """
    array = np.ascontiguousarray(array)
    datatype = datatype_name(array.dtype)
    entry: dict[str, Any] = {"name": input_name, "datatype": datatype, "shape": list(array.shape)}
    raw = b""
    if binary:
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
    else:
        entry["data"] = array.reshape(-1).tolist()
    header: dict[str, Any] = {"inputs": [entry]}
    if request_id is not None:
        header["id"] = request_id
    want_binary = binary if binary_output is None else binary_output
    if outputs is not None:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": want_binary}} for name in outputs]
    elif want_binary:
        header["parameters"] = {"binary_data_output": True}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return encoded, {"Content-Type": JSON_CONTENT_TYPE}
    return encoded + raw, {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(encoded))}


def decode_infer_response(body: bytes, *, header_length: str | None = None) -> dict[str, npt.NDArray[Any]]:
    """The output tensors of an ``/infer`` response, by name (JSON or binary outputs)."""
    json_length = parse_header_length(header_length, len(body)) or len(body)
    header = _load_header(body[:json_length])
    blob = memoryview(body)[json_length:]
    offset = 0
    tensors: dict[str, npt.NDArray[Any]] = {}
    outputs = header.get("outputs")
    if not isinstance(outputs, list):
        raise ProtocolError("response has no 'outputs' list")
    for item in outputs:
        entry = _object(item, "each entry of 'outputs'")
        name = str(entry.get("name"))
        datatype = entry.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"output {name!r} has unknown datatype {datatype!r}")
        shape = _shape(entry.get("shape"), f"output {name!r}")
        size = _object(entry.get("parameters"), f"output {name!r} 'parameters'").get("binary_data_size")
        if size is not None:
            tensors[name], offset = _binary_tensor(
                blob, offset, size=size, datatype=datatype, shape=shape, name=name
            )
        else:
            tensors[name] = json_tensor(entry.get("data"), datatype=datatype, shape=shape, name=name)
    return tensors
