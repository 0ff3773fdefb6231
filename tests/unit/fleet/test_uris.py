"""pvc://CLAIM/PATH parsing: only PVCs, no escaping the claim, round trips to pod paths."""

from __future__ import annotations

import pytest

from qfleet.fleet.uris import MOUNT_ROOT, PvcUri, UriError, parse_pvc_uri, pod_path_to_uri


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
