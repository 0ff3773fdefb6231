"""The gRPC service of ``qfleet serve``, driven by an independent client (tritonclient's gRPC client).

One real server process serves the module's conformance and bad-input tests; the limits and the
drain (which need a server in a given state) run the gRPC server in-process over the same
:class:`ServerState` the REST application holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from aiohttp.test_utils import TestClient, TestServer
from tritonclient.utils import InferenceServerException

from qfleet.serving import grpc_protocol
from qfleet.serving.grpc_server import start_grpc_server
from qfleet.serving.server import STATE, ServerConfig, build_app, load_engine, start_draining
from tests.support.server import ServerProcess, start_server, stop_server
from tests.support.tiny_ir import build_tiny_ir

#: Numeric comparisons pin f32: OpenVINO defaults to bf16 on CPUs with native bf16.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
MAX_BODY_BYTES = 2_000_000


@pytest.fixture(scope="module")
def model_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ir(tmp_path_factory.mktemp("grpc") / "tiny")


@pytest.fixture(scope="module")
def server(model_xml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("grpc-serve") / "serve.log"
    process = start_server(model_xml, log, "--max-body-bytes", str(MAX_BODY_BYTES))
    assert process.grpc is not None, log.read_text()
    yield process
    stop_server(process)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    assert server.grpc is not None
    with triton.InferenceServerClient(url=server.grpc) as connected:
        yield connected


def crops(count: int, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3, 112, 112)).astype(dtype)


def reference_embeddings(model_xml: Path, faces: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(model_xml, "CPU", F32)
    return np.asarray(compiled({0: faces.astype(np.float32)})[compiled.output(0)])


def triton_input(faces: np.ndarray, name: str = "data") -> triton.InferInput:
    datatype = "UINT8" if faces.dtype == np.uint8 else "FP32"
    tensor = triton.InferInput(name, list(faces.shape), datatype)
    tensor.set_data_from_numpy(faces)
    return tensor


def refused_code(call: Callable[[], Any]) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return str(refused.value.status())


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert client.get_server_metadata(as_json=True)["name"] == "qfleet"
    metadata = client.get_model_metadata("tiny", as_json=True)
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "data", "datatype": "FP32", "shape": ["-1", "3", "112", "112"]}]
    assert metadata["outputs"] == [{"name": "fc1", "datatype": "FP32", "shape": ["-1", "16"]}]
    assert refused_code(lambda: client.get_model_metadata("other")) == "StatusCode.NOT_FOUND"
    assert refused_code(lambda: client.is_model_ready("tiny", "2")) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_infer_with_raw_contents_matches_openvino(
    client: triton.InferenceServerClient, model_xml: Path, dtype: Any
) -> None:
    faces = crops(5, dtype)
    result = client.infer("tiny", [triton_input(faces)], request_id="cam7-f2")
    embeddings = result.as_numpy("fc1")
    assert embeddings.shape == (5, 16) and embeddings.dtype == np.float32
    assert result.get_response().id == "cam7-f2"
    np.testing.assert_allclose(embeddings, reference_embeddings(model_xml, faces), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_infer_with_typed_contents_matches_raw(server: ServerProcess, dtype: Any) -> None:
    """Typed contents (``uint_contents``, ``fp32_contents``) over a plain channel and the .proto's messages."""
    assert server.grpc is not None
    faces = crops(2, dtype, seed=3)
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            grpc_protocol.method_path("ModelInfer"),
            request_serializer=grpc_protocol.ModelInferRequest.SerializeToString,
            response_deserializer=grpc_protocol.ModelInferResponse.FromString,
        )
        typed = infer(grpc_protocol.encode_model_infer_request("tiny", "data", faces, raw=False), timeout=30)
        raw = infer(grpc_protocol.encode_model_infer_request("tiny", "data", faces, raw=True), timeout=30)
    np.testing.assert_array_equal(
        grpc_protocol.decode_model_infer_response(typed)["fc1"],
        grpc_protocol.decode_model_infer_response(raw)["fc1"],
    )


def test_rest_and_grpc_answer_the_same_embeddings(server: ServerProcess, client: Any) -> None:
    import requests

    from qfleet.serving.protocol import HEADER_LENGTH, decode_infer_response, encode_infer_request

    faces = crops(3, seed=5)
    body, headers = encode_infer_request("data", faces, binary=True)
    response = requests.post(f"{server.url}/v2/models/tiny/infer", data=body, headers=headers, timeout=30)
    rest = decode_infer_response(response.content, header_length=response.headers.get(HEADER_LENGTH))
    grpc_answer = client.infer("tiny", [triton_input(faces)]).as_numpy("fc1")
    np.testing.assert_array_equal(rest["fc1"], grpc_answer)


@pytest.mark.parametrize(
    ("faces", "model", "name", "code"),
    [
        (crops(1)[:, :, :56], "tiny", "data", "INVALID_ARGUMENT"),  # wrong crop size
        (crops(1), "tiny", "pixels", "INVALID_ARGUMENT"),  # unknown input
        (crops(1).astype(np.int16), "tiny", "data", "INVALID_ARGUMENT"),  # datatype not accepted
        (crops(1), "other", "data", "NOT_FOUND"),
        (crops(20, np.float32), "tiny", "data", "RESOURCE_EXHAUSTED"),  # 3 MB over the 2 MB limit
    ],
)
def test_bad_requests_are_grpc_status_codes(
    client: triton.InferenceServerClient, faces: np.ndarray, model: str, name: str, code: str
) -> None:
    if faces.dtype == np.int16:
        tensor = triton.InferInput(name, list(faces.shape), "INT16")
        tensor.set_data_from_numpy(faces)
    else:
        tensor = triton_input(faces, name)
    assert refused_code(lambda: client.infer(model, [tensor])) == f"StatusCode.{code}"
    # The server is still there and still right.
    assert client.infer("tiny", [triton_input(crops(1))]).as_numpy("fc1").shape == (1, 16)


def test_nan_short_contents_and_garbage_are_invalid_argument(server: ServerProcess) -> None:
    assert server.grpc is not None
    nan = crops(1, np.float32)
    nan[0, 0, 0, 0] = np.nan
    short = grpc_protocol.encode_model_infer_request("tiny", "data", crops(1))
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            grpc_protocol.method_path("ModelInfer"),
            request_serializer=grpc_protocol.ModelInferRequest.SerializeToString,
            response_deserializer=grpc_protocol.ModelInferResponse.FromString,
        )
        for request in (grpc_protocol.encode_model_infer_request("tiny", "data", nan), short):
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Garbage that is not a ModelInferRequest at all.
        garbage = channel.unary_unary(grpc_protocol.method_path("ModelInfer"))
        with pytest.raises(grpc.RpcError) as refused:
            garbage(b"\xff\xff\xff\xff", timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_calls_are_counted_in_the_metrics(server: ServerProcess, client: Any) -> None:
    import requests

    client.infer("tiny", [triton_input(crops(2))])
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    assert 'qfleet_server_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'qfleet_server_grpc_requests_total{code="NOT_FOUND",method="ModelMetadata"}' in text


# --- limits and drain, in-process --------------------------------------------------------------


@pytest.fixture
async def in_process(tiny_ir: Callable[..., Path]) -> AsyncIterator[tuple[Any, str]]:
    """The REST app and a gRPC server over its state, on this loop; yields (app, gRPC target)."""
    config = ServerConfig(model_xml=tiny_ir("tiny"), max_concurrency=1)
    engine, metrics, _ = load_engine(config)
    app = build_app(engine, metrics, max_concurrency=config.max_concurrency)
    rest: TestClient[Any, Any] = TestClient(TestServer(app))
    await rest.start_server()
    server, target = await start_grpc_server(app[STATE], host="127.0.0.1", port=0)
    yield app, target
    await server.stop(None)
    await rest.close()
    engine.close()


async def test_over_max_concurrency_is_resource_exhausted(in_process: tuple[Any, str]) -> None:
    app, target = in_process
    async with triton_aio.InferenceServerClient(url=target) as client:
        app[STATE].inferring = 1  # one request in flight, as far as the limit is concerned
        with pytest.raises(InferenceServerException) as refused:
            await client.infer("tiny", [triton_input(crops(1))])
        assert str(refused.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        app[STATE].inferring = 0
        result = await client.infer("tiny", [triton_input(crops(1))])
        assert result.as_numpy("fc1").shape == (1, 16)


async def test_draining_is_unavailable_and_not_ready(in_process: tuple[Any, str]) -> None:
    app, target = in_process
    async with triton_aio.InferenceServerClient(url=target) as client:
        assert await client.is_server_ready()
        start_draining(app)
        assert not await client.is_server_ready()
        assert not await client.is_model_ready("tiny")
        assert await client.is_server_live()
        with pytest.raises(InferenceServerException) as refused:
            await client.infer("tiny", [triton_input(crops(1))])
        assert str(refused.value.status()) == "StatusCode.UNAVAILABLE"
