"""The inference server in-process: protocol conformance, bad input, limits, draining, metrics."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from qfleet.serving.protocol import HEADER_LENGTH, decode_infer_response, encode_infer_request
from qfleet.serving.server import STATE, ServerConfig, build_app, load_engine, start_draining

MakeClient = Callable[..., Any]

#: Numeric comparisons pin f32: OpenVINO defaults to bf16 on CPUs with native bf16.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture
async def make_client(tiny_ir: Callable[..., Path]) -> AsyncIterator[MakeClient]:
    """Factory: an aiohttp test client of a server over a tiny IR, with ServerConfig overrides."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        config = ServerConfig(model_xml=tiny_ir("tiny"), **overrides)
        engine, metrics, _ = load_engine(config)
        app = build_app(
            engine, metrics, max_body_bytes=config.max_body_bytes, max_concurrency=config.max_concurrency
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def crops(count: int, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3, 112, 112)).astype(dtype)


def reference_embeddings(model_xml: Path, faces: np.ndarray) -> np.ndarray:
    """What OpenVINO computes for the same faces without the server."""
    import openvino as ov

    compiled = ov.Core().compile_model(model_xml, "CPU", F32)
    return np.asarray(compiled({0: faces.astype(np.float32)})[compiled.output(0)])


async def infer(
    client: TestClient[Any, Any],
    faces: np.ndarray,
    *,
    binary: bool,
    path: str = "/v2/models/tiny/infer",
    **kw: Any,
) -> tuple[int, dict[str, np.ndarray] | dict[str, Any]]:
    body, headers = encode_infer_request("data", faces, binary=binary, **kw)
    response = await client.post(path, data=body, headers=headers)
    payload = await response.read()
    if response.status != 200:
        return response.status, json.loads(payload)
    return 200, decode_infer_response(payload, header_length=response.headers.get(HEADER_LENGTH))


async def test_health_and_metadata_endpoints(make_client: MakeClient) -> None:
    client = await make_client()
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/tiny/ready",
        "/v2/models/tiny/versions/1/ready",
    ):
        assert (await client.get(path)).status == 200, path
    server = await (await client.get("/v2")).json()
    assert "binary_tensor_data" in server["extensions"]
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        metadata = await (await client.get(path)).json()
        assert metadata["name"] == "tiny"
        assert metadata["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 112, 112]}]
        assert metadata["outputs"] == [{"name": "fc1", "datatype": "FP32", "shape": [-1, 16]}]
    index = await (await client.post("/v2/repository/index")).json()
    assert index == [{"name": "tiny", "version": "1", "state": "READY"}]


@pytest.mark.parametrize(
    ("binary", "dtype", "path"),
    [
        (False, np.float32, "/v2/models/tiny/infer"),
        (False, np.uint8, "/v2/models/tiny/infer"),
        (True, np.uint8, "/v2/models/tiny/versions/1/infer"),
        (True, np.float32, "/v2/models/tiny/infer"),
    ],
)
async def test_infer_matches_openvino(
    make_client: MakeClient, tiny_ir: Callable[..., Path], binary: bool, dtype: Any, path: str
) -> None:
    client = await make_client()
    faces = crops(5, dtype)
    status, outputs = await infer(client, faces, binary=binary, path=path)
    assert status == 200
    embeddings = outputs["fc1"]
    assert embeddings.shape == (5, 16) and embeddings.dtype == np.float32
    expected = reference_embeddings(tiny_ir("reference"), faces)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4)


async def test_binary_input_json_output_echoes_id(make_client: MakeClient) -> None:
    client = await make_client()
    body, headers = encode_infer_request(
        "data", crops(2), binary=True, binary_output=False, request_id="cam3-f9"
    )
    response = await client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status == 200
    assert HEADER_LENGTH not in response.headers
    result = await response.json()
    assert result["id"] == "cam3-f9"
    assert result["model_name"] == "tiny" and result["model_version"] == "1"
    assert result["outputs"][0]["shape"] == [2, 16] and len(result["outputs"][0]["data"]) == 32


@pytest.mark.parametrize(
    "path",
    ["/v2/models/other/infer", "/v2/models/tiny/versions/2/infer", "/v2/models/other", "/v2/models/x/ready"],
)
async def test_unknown_model_or_version_is_404(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    method = client.post if path.endswith("infer") else client.get
    response = await method(path, data=b"{}")
    assert response.status == 404
    assert "error" in await response.json()


def binary_body(faces: np.ndarray, **header_overrides: Any) -> tuple[bytes, dict[str, str]]:
    entry = {
        "name": "data",
        "datatype": "UINT8",
        "shape": list(faces.shape),
        "parameters": {"binary_data_size": faces.nbytes},
    }
    entry.update(header_overrides)
    header = json.dumps({"inputs": [entry]}).encode()
    return header + faces.tobytes(), {HEADER_LENGTH: str(len(header))}


def bad_requests() -> list[tuple[str, bytes, dict[str, str], str]]:
    one = crops(1)
    good, headers = binary_body(one)
    cases = [
        ("not JSON", b"faces please", {}, "not valid JSON"),
        ("missing input", b'{"inputs": []}', {}, "non-empty list"),
        ("unknown input", *binary_body(one, name="image"), "unknown input 'image'"),
        ("wrong datatype", *binary_body(one, datatype="INT8"), "datatype 'INT8'"),
        ("wrong shape", *binary_body(one, shape=[1, 3, 112, 111]), "has shape [1, 3, 112, 111]"),
        ("wrong rank", *binary_body(one, shape=[3, 112, 112]), "has shape [3, 112, 112]"),
        ("length mismatch", good[:-10], headers, "remain in the body"),
        ("trailing bytes", good + b"xx", headers, "no input claims"),
        ("bad header length", good, {HEADER_LENGTH: "many"}, HEADER_LENGTH),
        ("header length past the body", good, {HEADER_LENGTH: str(len(good) + 1)}, HEADER_LENGTH),
        (
            "JSON length mismatch",
            json.dumps(
                {"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 112, 112], "data": [1.0]}]}
            ).encode(),
            {},
            "has 1 values",
        ),
    ]
    return [(name, body, hdrs, message) for name, body, hdrs, message in cases]


@pytest.mark.parametrize(
    ("case", "body", "headers", "message"), bad_requests(), ids=[c[0] for c in bad_requests()]
)
async def test_bad_input_is_400_json(
    make_client: MakeClient, case: str, body: bytes, headers: dict[str, str], message: str
) -> None:
    client = await make_client()
    response = await client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status == 400, case
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert message in error
    # The server carries on serving.
    status, _ = await infer(client, crops(1), binary=True)
    assert status == 200


async def test_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=64 * 1024)
    body, headers = encode_infer_request("data", crops(2), binary=True)  # 75 KB of pixels
    response = await client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status == 413
    assert "over the limit of 65536 bytes" in (await response.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    response = await client.post("/v2/models/tiny/infer", data=chunks(), headers=headers)
    assert response.status == 413
    assert "error" in await response.json()
    status, _ = await infer(client, crops(1), binary=True)
    assert status == 200


async def test_unknown_route_and_method_are_json(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/v3/anything")
    assert response.status == 404 and "error" in await response.json()
    response = await client.delete("/v2/health/live")
    assert response.status == 405 and "error" in await response.json()
    assert "GET" in response.headers["Allow"]


async def test_over_max_concurrency_is_503(make_client: MakeClient) -> None:
    client = await make_client(max_concurrency=1)
    assert client.app is not None
    engine = client.app[STATE].engine
    release = asyncio.Event()
    real_infer = engine.infer

    async def held_infer(faces: np.ndarray) -> dict[str, np.ndarray]:
        await release.wait()
        return await real_infer(faces)

    engine.infer = held_infer  # type: ignore[method-assign]
    first = asyncio.create_task(infer(client, crops(1), binary=True))
    while "qfleet_server_inflight_requests 1.0" not in await (await client.get("/metrics")).text():
        await asyncio.sleep(0.01)
    body, headers = encode_infer_request("data", crops(1), binary=True)
    response = await client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert "limit of 1 concurrent" in (await response.json())["error"]
    release.set()
    status, _ = await first
    assert status == 200


async def test_draining_refuses_new_work_but_stays_live(make_client: MakeClient) -> None:
    client = await make_client()
    assert client.app is not None
    start_draining(client.app)
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/health/ready")).status == 400
    assert (await client.get("/v2/models/tiny/ready")).status == 400
    status, error = await infer(client, crops(1), binary=True)
    assert status == 503 and "shutting down" in error["error"]
    assert "qfleet_server_ready 0.0" in await (await client.get("/metrics")).text()


async def test_dynamic_batching_merges_concurrent_requests(
    make_client: MakeClient, tiny_ir: Callable[..., Path]
) -> None:
    # A long batch window makes the merge deterministic: 4 one-face requests fill a batch of 4.
    client = await make_client(max_batch=4, batch_timeout_s=2.0)
    faces = crops(4)
    results = await asyncio.gather(*(infer(client, faces[i : i + 1], binary=True) for i in range(4)))
    expected = reference_embeddings(tiny_ir("reference"), faces)
    for index, (status, outputs) in enumerate(results):
        assert status == 200
        np.testing.assert_allclose(outputs["fc1"][0], expected[index], rtol=1e-4, atol=1e-4)
    text = await (await client.get("/metrics")).text()
    assert "qfleet_server_inference_batch_faces_count 1.0" in text
    assert "qfleet_server_inference_batch_faces_sum 4.0" in text

    # A request larger than the batch is cut into batches and put back together in order.
    many = crops(10, seed=3)
    status, outputs = await infer(client, many, binary=True)
    assert status == 200
    np.testing.assert_allclose(outputs["fc1"], reference_embeddings(tiny_ir("reference2"), many), atol=1e-4)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_requests_faces_and_latency(make_client: MakeClient) -> None:
    client = await make_client()
    for count in (1, 3, 4):
        status, _ = await infer(client, crops(count), binary=True)
        assert status == 200
    await client.post("/v2/models/tiny/infer", data=b"nope")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert metric(text, 'qfleet_server_requests_total{code="200",endpoint="infer"}') == 3
    assert metric(text, 'qfleet_server_requests_total{code="400",endpoint="infer"}') == 1
    assert metric(text, "qfleet_server_faces_inferred_total") == 8
    assert metric(text, "qfleet_server_request_latency_seconds_count") == 3
    assert metric(text, "qfleet_server_inflight_requests") == 0
    assert metric(text, "qfleet_server_faces_per_second") > 0
    assert metric(text, "qfleet_server_ready") == 1
    assert (
        'qfleet_server_model_info{inference_precision="f32",isa="any",kind="fp32",model="tiny",precision="fp32"} 1.0'
        in text
    )


async def test_a_cancelled_request_does_not_disturb_the_others(
    make_client: MakeClient, tiny_ir: Callable[..., Path]
) -> None:
    client = await make_client(max_batch=2, batch_timeout_s=0.001)
    assert client.app is not None
    engine = client.app[STATE].engine
    abandoned = asyncio.create_task(engine.infer(crops(40, np.float32)))
    await asyncio.sleep(0)  # queued, partly running
    abandoned.cancel()
    faces = crops(6, seed=5)
    outputs = await engine.infer(faces.astype(np.float32))
    np.testing.assert_allclose(outputs["fc1"], reference_embeddings(tiny_ir("reference"), faces), atol=1e-4)
    with pytest.raises(asyncio.CancelledError):
        await abandoned


async def test_client_gone_mid_body_is_not_a_server_error(make_client: MakeClient) -> None:
    client = await make_client()
    body, headers = encode_infer_request("data", crops(2), binary=True)
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"{HEADER_LENGTH}: {headers[HEADER_LENGTH]}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.2)
    text = await (await client.get("/metrics")).text()
    assert 'code="500"' not in text
    assert metric(text, "qfleet_server_inflight_requests") == 0
    status, _ = await infer(client, crops(1), binary=True)
    assert status == 200
