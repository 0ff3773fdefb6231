"""The Open Inference Protocol messages: parsing, validation and the binary tensor extension."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfleet.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ModelSignature,
    ProtocolError,
    RequestedOutput,
    TensorSpec,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    parse_infer_request,
)

SIGNATURE = ModelSignature(
    name="face",
    version="1",
    platform="openvino_ir",
    input=TensorSpec("data", "FP32", (-1, 3, 4, 4)),
    outputs=(TensorSpec("fc1", "FP32", (-1, 5)), TensorSpec("norm", "FP32", (-1, 1))),
)


def crops(count: int, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3, 4, 4)).astype(dtype)


def parse(body: bytes, headers: dict[str, str]) -> InferRequest:
    return parse_infer_request(body, signature=SIGNATURE, header_length=headers.get(HEADER_LENGTH))


def json_body(header: dict[str, Any]) -> bytes:
    return json.dumps(header).encode()


def good_input(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "data", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0.5] * 48}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_round_trip_several_faces(binary: bool, dtype: Any) -> None:
    faces = crops(3, dtype)
    body, headers = encode_infer_request("data", faces, binary=binary, request_id="frame-7")
    request = parse(body, headers)
    assert request.faces.dtype == np.float32
    assert request.faces.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(request.faces, faces.astype(np.float32))
    assert request.batch_size == 3
    assert request.id == "frame-7"
    assert request.sent_datatype == ("UINT8" if dtype is np.uint8 else "FP32")
    assert [out.name for out in request.outputs] == ["fc1", "norm"]
    assert all(out.binary is binary for out in request.outputs)
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert int(headers[HEADER_LENGTH]) == len(body) - faces.nbytes


def test_nested_json_data_is_accepted() -> None:
    faces = crops(2, np.float32)
    body = json_body({"inputs": [good_input(shape=[2, 3, 4, 4], data=faces.tolist())]})
    np.testing.assert_array_equal(parse(body, {}).faces, faces)


def test_output_selection_and_binary_flags() -> None:
    header = {
        "inputs": [good_input()],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "norm"}, {"name": "fc1", "parameters": {"binary_data": False}}],
    }
    request = parse(json_body(header), {})
    assert request.outputs == (RequestedOutput("norm", True), RequestedOutput("fc1", False))


def test_metadata_reports_free_batch() -> None:
    metadata = SIGNATURE.metadata()
    assert metadata["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 4, 4]}]
    assert metadata["outputs"][0] == {"name": "fc1", "datatype": "FP32", "shape": [-1, 5]}
    assert metadata["versions"] == ["1"]


def binary_request(
    size_claimed: int, payload: bytes, *, shape: list[int] | None = None
) -> tuple[bytes, dict[str, str]]:
    header = json_body(
        {
            "inputs": [
                {
                    "name": "data",
                    "datatype": "UINT8",
                    "shape": shape or [1, 3, 4, 4],
                    "parameters": {"binary_data_size": size_claimed},
                }
            ]
        }
    )
    return header + payload, {HEADER_LENGTH: str(len(header))}


BAD_JSON_REQUESTS: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "JSON object"),
    ("no inputs", {}, "'inputs' must be a non-empty list"),
    ("empty inputs", {"inputs": []}, "'inputs' must be a non-empty list"),
    ("unknown input", {"inputs": [good_input(name="pixels")]}, "unknown input 'pixels'"),
    ("input twice", {"inputs": [good_input(), good_input()]}, "given twice"),
    ("input not object", {"inputs": ["data"]}, "must be a JSON object"),
    ("datatype INT32", {"inputs": [good_input(datatype="INT32")]}, "datatype 'INT32'"),
    ("datatype missing", {"inputs": [good_input(datatype=None)]}, "datatype None"),
    ("wrong rank", {"inputs": [good_input(shape=[3, 4, 4])]}, "the model takes [-1, 3, 4, 4]"),
    ("wrong size", {"inputs": [good_input(shape=[1, 3, 5, 4], data=[0] * 60)]}, "has shape [1, 3, 5, 4]"),
    ("empty batch", {"inputs": [good_input(shape=[0, 3, 4, 4], data=[])]}, "empty batch"),
    ("shape not ints", {"inputs": [good_input(shape=[1, 3, 4, 4.0])]}, "'shape' must be a list"),
    ("shape bool", {"inputs": [good_input(shape=[True, 3, 4, 4])]}, "'shape' must be a list"),
    ("negative dim", {"inputs": [good_input(shape=[-1, 3, 4, 4])]}, "'shape' must be a list"),
    ("too few values", {"inputs": [good_input(data=[0.5] * 47)]}, "has 47 values but shape"),
    ("too many values", {"inputs": [good_input(data=[0.5] * 96)]}, "has 96 values but shape"),
    ("ragged data", {"inputs": [good_input(data=[[1, 2], [3]])]}, "of one shape"),
    ("string data", {"inputs": [good_input(data=["a"] * 48)]}, "list of numbers"),
    ("data not list", {"inputs": [good_input(data=3)]}, "must be a list of numbers"),
    ("no data", {"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 4, 4]}]}, "neither 'data'"),
    ("uint8 out of range", {"inputs": [good_input(datatype="UINT8", data=[256] * 48)]}, "integers in 0..255"),
    ("uint8 negative", {"inputs": [good_input(datatype="UINT8", data=[-1] * 48)]}, "integers in 0..255"),
    ("uint8 fraction", {"inputs": [good_input(datatype="UINT8", data=[0.5] * 48)]}, "integers in 0..255"),
    (
        "unknown output",
        {"inputs": [good_input()], "outputs": [{"name": "logits"}]},
        "unknown output 'logits'",
    ),
    ("outputs not list", {"inputs": [good_input()], "outputs": {"name": "fc1"}}, "'outputs' must be a list"),
    ("output twice", {"inputs": [good_input()], "outputs": [{"name": "fc1"}] * 2}, "requested twice"),
    (
        "bad binary flag",
        {"inputs": [good_input()], "parameters": {"binary_data_output": "yes"}},
        "true or false",
    ),
    ("parameters not object", {"inputs": [good_input()], "parameters": [1]}, "'parameters' must be"),
    ("id not string", {"inputs": [good_input()], "id": 7}, "'id' must be a string"),
    (
        "binary size without header",
        {
            "inputs": [
                {
                    "name": "data",
                    "datatype": "FP32",
                    "shape": [1, 3, 4, 4],
                    "parameters": {"binary_data_size": 192},
                }
            ]
        },
        f"has binary_data_size but the request has no {HEADER_LENGTH}",
    ),
]


@pytest.mark.parametrize(
    ("case", "header", "message"), BAD_JSON_REQUESTS, ids=[c[0] for c in BAD_JSON_REQUESTS]
)
def test_bad_json_requests_are_400(case: str, header: Any, message: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(json_body(header), {})
    assert raised.value.status == 400
    assert message in raised.value.message


def test_nan_is_refused() -> None:
    body = (
        b'{"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [NaN'
        + b", 1" * 47
        + b"]}]}"
    )
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        parse(body, {})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100000, "JSON"),
    ],
)
def test_not_json_is_400(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse(body, {})


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1e3", "٣", "99999"])
def test_bad_header_length_is_400(value: str) -> None:
    body, _ = binary_request(48, bytes(48))
    with pytest.raises(ProtocolError, match=HEADER_LENGTH):
        parse(body, {HEADER_LENGTH: value})


@pytest.mark.parametrize(
    ("claimed", "payload", "message"),
    [
        (47, bytes(47), "needs 48"),
        (48, bytes(20), "only 20 remain"),
        (48, bytes(50), "2 bytes of binary data that no input claims"),
        ("48", bytes(48), "non-negative integer"),
    ],
)
def test_binary_length_mismatch_is_400(claimed: Any, payload: bytes, message: str) -> None:
    body, headers = binary_request(claimed, payload)
    with pytest.raises(ProtocolError, match=message):
        parse(body, headers)


def test_both_data_and_binary_is_400() -> None:
    header = json_body({"inputs": [{**good_input(), "parameters": {"binary_data_size": 192}}]})
    with pytest.raises(ProtocolError, match="both 'data' and binary_data_size"):
        parse(header + bytes(192), {HEADER_LENGTH: str(len(header))})


@pytest.mark.parametrize("binary", [False, True])
def test_response_round_trip(binary: bool) -> None:
    faces = crops(2)
    body, headers = encode_infer_request("data", faces, binary=True, binary_output=binary, request_id="r1")
    request = parse(body, headers)
    results = {
        "fc1": np.arange(10, dtype=np.float32).reshape(2, 5),
        "norm": np.array([[1.5], [2.5]], dtype=np.float32),
    }
    payload, response_headers = encode_infer_response(signature=SIGNATURE, request=request, results=results)
    header_length = response_headers.get(HEADER_LENGTH)
    assert (header_length is not None) is binary
    header = json.loads(payload[: int(header_length)] if header_length else payload)
    assert header["id"] == "r1"
    assert header["model_name"] == "face"
    assert header["outputs"][0]["shape"] == [2, 5]
    assert header["outputs"][0]["datatype"] == "FP32"
    decoded = decode_infer_response(payload, header_length=header_length)
    for name, array in results.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_response_holds_only_requested_outputs() -> None:
    body, headers = encode_infer_request("data", crops(1), binary=False, outputs=["norm"])
    request = parse(body, headers)
    results = {"fc1": np.zeros((1, 5), np.float32), "norm": np.ones((1, 1), np.float32)}
    payload, _ = encode_infer_response(signature=SIGNATURE, request=request, results=results)
    assert [out["name"] for out in json.loads(payload)["outputs"]] == ["norm"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.one_of(st.none(), st.text(max_size=6)))
def test_arbitrary_bytes_never_crash(body: bytes, header_length: str | None) -> None:
    try:
        parse_infer_request(body, signature=SIGNATURE, header_length=header_length)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": st.sampled_from(["data", "x", 1]),
                        "datatype": st.sampled_from(["FP32", "UINT8", "INT8", "BYTES", None]),
                        "shape": st.lists(st.integers(-2, 4), max_size=5) | JSON_VALUES,
                        "data": JSON_VALUES,
                        "parameters": JSON_VALUES,
                    },
                ),
                max_size=3,
            ),
            "outputs": JSON_VALUES,
            "parameters": JSON_VALUES,
            "id": JSON_VALUES,
        },
    )
)
def test_arbitrary_json_requests_never_crash(header: dict[str, Any]) -> None:
    try:
        request = parse(json_body(header), {})
    except ProtocolError as exc:
        assert 400 <= exc.status < 500
    else:
        assert request.faces.shape[1:] == (3, 4, 4)
