"""pvc://CLAIM/PATH parsing: only PVCs, no escaping the claim, round trips to pod paths."""

from __future__ import annotations

import pytest

from qfleet.fleet.uris import (
    MOUNT_ROOT,
    PvcUri,
    S3Uri,
    UriError,
    artifact_of_result,
    in_pod,
    parse_artifact_uri,
    parse_input_uri,
    parse_pvc_uri,
    pod_path_to_uri,
)


def test_parses_claim_and_path() -> None:
    uri = parse_pvc_uri("pvc://models/arcface/model", field="spec.source.uri")
    assert uri == PvcUri("models", "arcface/model")
    assert uri.mount_path == f"{MOUNT_ROOT}/models"
    assert uri.pod_path == f"{MOUNT_ROOT}/models/arcface/model"
    assert str(uri) == "pvc://models/arcface/model"


def test_normalises_slashes_and_dots() -> None:
    assert parse_pvc_uri("pvc://data/calib/", field="f") == PvcUri("data", "calib")
    assert parse_pvc_uri("pvc://data/a//./b", field="f") == PvcUri("data", "a/b")
    assert parse_pvc_uri("pvc://data", field="f") == PvcUri("data", "")
    assert parse_pvc_uri("PVC://data/x", field="f") == PvcUri("data", "x")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("s3://bucket/model.onnx", ["unsupported scheme 's3'", "pvc://CLAIM/PATH"]),
        ("https://example.com/m.onnx", ["unsupported scheme 'https'"]),
        ("/models/m.onnx", ["not a URI"]),
        ("pvc://data/../secrets", ["'..'"]),
        ("pvc://data/a/../../etc", ["'..'"]),
        ("pvc://data//etc/passwd", ["absolute path"]),
        ("pvc:///etc/passwd", ["not a valid PersistentVolumeClaim name"]),
        ("pvc://Data/x", ["not a valid PersistentVolumeClaim name"]),
        ("", ["must be a URI"]),
        (None, ["must be a URI"]),
    ],
)
def test_refuses_what_it_cannot_mount(value: object, words: list[str]) -> None:
    """``parse_pvc_uri`` reads claims only (the spec's URIs go through parse_input_uri)."""
    with pytest.raises(UriError) as caught:
        parse_pvc_uri(value, field="spec.source.uri")
    message = str(caught.value)
    assert "spec.source.uri" in message
    for word in words:
        assert word in message


def test_join_refuses_escapes() -> None:
    base = parse_pvc_uri("pvc://models/qfleet", field="f")
    assert base.join("m", "key", "avx2") == PvcUri("models", "qfleet/m/key/avx2")
    with pytest.raises(UriError):
        base.join("..")
    with pytest.raises(UriError):
        base.join("/abs")


def test_pod_path_round_trip() -> None:
    uri = PvcUri("models", "qfleet/m/int8/model.xml")
    assert pod_path_to_uri(uri.pod_path) == uri
    assert pod_path_to_uri("/tmp/elsewhere/model.xml") is None
    assert pod_path_to_uri(f"{MOUNT_ROOT}/models/../x") is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("gs://bucket/model.onnx", ["unsupported scheme 'gs'", "s3://BUCKET/KEY"]),
        ("s3://bucket/../model.onnx", ["'..'"]),
        ("s3://Bucket/model.onnx", ["not a valid bucket name"]),
        ("http://example.com/m.onnx", ["plain http", "allowHttp"]),
        ("https://example.com/../m.onnx", ["'..'"]),
        ("pvc://data/../x", ["'..'"]),
    ],
)
def test_input_uris_name_the_field_and_what_is_wrong(value: str, words: list[str]) -> None:
    with pytest.raises(UriError) as caught:
        parse_input_uri(value, field="spec.source.uri")
    assert "spec.source.uri" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_input_and_artifact_uris() -> None:
    assert parse_input_uri("s3://data/calib/", field="f") == S3Uri("data", "calib")
    assert str(parse_input_uri("https://example.com/lfw.bin", field="f")) == "https://example.com/lfw.bin"
    assert (
        str(parse_input_uri("http://mirror/lfw.bin", field="f", allow_http=True)) == "http://mirror/lfw.bin"
    )
    assert parse_artifact_uri("s3://models/qfleet", field="f") == S3Uri("models", "qfleet")
    with pytest.raises(UriError, match="read-only"):
        parse_artifact_uri("https://example.com/out", field="spec.artifacts.uri")
    assert in_pod(PvcUri("data", "lfw.bin")) == f"{MOUNT_ROOT}/data/lfw.bin"
    assert in_pod(S3Uri("data", "lfw.bin")) == "s3://data/lfw.bin"
    assert artifact_of_result("s3://models/q/int8/model.xml") == S3Uri("models", "q/int8/model.xml")
    assert artifact_of_result(f"{MOUNT_ROOT}/models/q/model.xml") == PvcUri("models", "q/model.xml")
    assert artifact_of_result("/tmp/elsewhere") is None and artifact_of_result("s3://../x") is None
