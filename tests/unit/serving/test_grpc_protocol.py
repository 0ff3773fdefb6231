"""The gRPC messages without a server: ModelInfer <-> numpy, refusals, and the committed descriptor."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import pytest

from qfleet.serving import grpc_protocol
from qfleet.serving.protocol import ModelSignature, ProtocolError, TensorSpec
from tests.support.paths import REPO

SIGNATURE = ModelSignature(
    name="face",
    version="1",
    platform="openvino_ir",
    input=TensorSpec("data", "FP32", (-1, 3, 4, 4)),
    outputs=(TensorSpec("fc1", "FP32", (-1, 8)), TensorSpec("norm", "FP32", (-1,))),
)


def faces(count: int, dtype: Any = np.uint8) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, size=(count, 3, 4, 4)).astype(dtype)


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_request_round_trip(raw: bool, dtype: Any) -> None:
    sent = faces(3, dtype)
    message = grpc_protocol.encode_model_infer_request("face", "data", sent, raw=raw, request_id="c1")
    wire = grpc_protocol.ModelInferRequest.FromString(message.SerializeToString())
    parsed = grpc_protocol.parse_model_infer(wire, signature=SIGNATURE)
    assert parsed.id == "c1" and parsed.sent_datatype == ("UINT8" if dtype == np.uint8 else "FP32")
    assert parsed.faces.dtype == np.float32 and parsed.faces.flags.c_contiguous
    np.testing.assert_array_equal(parsed.faces, sent.astype(np.float32))
    assert [out.name for out in parsed.outputs] == ["fc1", "norm"]


def test_response_round_trip_keeps_the_requested_outputs_in_order() -> None:
    message = grpc_protocol.encode_model_infer_request("face", "data", faces(2), outputs=["norm", "fc1"])
    parsed = grpc_protocol.parse_model_infer(message, signature=SIGNATURE)
    results = {"fc1": np.arange(16, dtype=np.float32).reshape(2, 8), "norm": np.ones(2, dtype=np.float32)}
    response = grpc_protocol.encode_model_infer(signature=SIGNATURE, request=parsed, results=results)
    assert [out.name for out in response.outputs] == ["norm", "fc1"]
    decoded = grpc_protocol.decode_model_infer_response(
        grpc_protocol.ModelInferResponse.FromString(response.SerializeToString())
    )
    np.testing.assert_array_equal(decoded["fc1"], results["fc1"])
    np.testing.assert_array_equal(decoded["norm"], results["norm"])


def _bad(change: str) -> Any:
    message = grpc_protocol.encode_model_infer_request("face", "data", faces(1))
    if change == "model":
        message.model_name = "other"
    elif change == "version":
        message.model_version = "2"
    elif change == "input name":
        message.inputs[0].name = "pixels"
    elif change == "datatype":
        message.inputs[0].datatype = "INT64"
    elif change == "shape":
        del message.inputs[0].shape[:]
        message.inputs[0].shape.extend([1, 3, 4, 5])
    elif change == "negative dim":
        message.inputs[0].shape[0] = -1
    elif change == "empty batch":
        message.inputs[0].shape[0] = 0
        message.raw_input_contents[0] = b""
    elif change == "short raw":
        message.raw_input_contents[0] = message.raw_input_contents[0][:-1]
    elif change == "two raws":
        message.raw_input_contents.append(b"")
    elif change == "raw and typed":
        message.inputs[0].contents.uint_contents.extend([1] * 48)
    elif change == "no data":
        del message.raw_input_contents[:]
    elif change == "uint8 out of range":
        del message.raw_input_contents[:]
        message.inputs[0].contents.uint_contents.extend([256] * 48)
    elif change == "two inputs":
        message.inputs.add(name="data", datatype="UINT8")
    elif change == "unknown output":
        message.outputs.add(name="logits")
    elif change == "output twice":
        message.outputs.add(name="fc1")
        message.outputs.add(name="fc1")
    return message


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("model", 404),
        ("version", 404),
        ("input name", 400),
        ("datatype", 400),
        ("shape", 400),
        ("negative dim", 400),
        ("empty batch", 400),
        ("short raw", 400),
        ("two raws", 400),
        ("raw and typed", 400),
        ("no data", 400),
        ("uint8 out of range", 400),
        ("two inputs", 400),
        ("unknown output", 400),
        ("output twice", 400),
    ],
)
def test_malformed_requests_are_protocol_errors(change: str, status: int) -> None:
    with pytest.raises(ProtocolError) as refused:
        grpc_protocol.parse_model_infer(_bad(change), signature=SIGNATURE)
    assert refused.value.status == status


def test_model_metadata_lists_the_signature() -> None:
    metadata = grpc_protocol.model_metadata(SIGNATURE)
    assert metadata.name == "face" and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("data", "FP32", [-1, 3, 4, 4])]
    assert [t.name for t in metadata.outputs] == ["fc1", "norm"]


def test_service_methods_are_the_protocols() -> None:
    assert set(grpc_protocol.METHODS) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def test_messages_live_in_a_private_pool() -> None:
    """Importing the .proto's messages does not claim ``inference.*`` in protobuf's default pool,
    where tritonclient's and KServe's generated modules register the same names."""
    from google.protobuf import descriptor_pool

    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName("grpc_predict_v2.proto")


def test_committed_descriptor_is_current() -> None:
    """``operator/qfleet/serving/grpc_descriptor.py`` is what the script compiles from the .proto."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) compiles the .proto")
    spec = importlib.util.spec_from_file_location(
        "generate", REPO / "scripts" / "generate_grpc_descriptor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_grpc_descriptor"] = module
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run scripts/generate_grpc_descriptor.py"
