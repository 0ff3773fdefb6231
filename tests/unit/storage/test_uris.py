"""Parsing s3://, https://, pvc:// and local locations: what is accepted and the one-line refusals."""

from __future__ import annotations

import pytest

from qfleet.errors import InputError
from qfleet.fleet.uris import MOUNT_ROOT
from qfleet.storage.uris import (
    HttpUri,
    LocalPath,
    S3Uri,
    StorageUriError,
    is_s3,
    parse_location,
    parse_s3_uri,
)


@pytest.mark.parametrize(
    ("value", "bucket", "key"),
    [
        ("s3://models/arcface/r100", "models", "arcface/r100"),
        ("s3://models/arcface/r100/", "models", "arcface/r100"),
        ("s3://models", "models", ""),
        ("s3://models/", "models", ""),
        ("S3://my.bucket-1/a", "my.bucket-1", "a"),
    ],
)
def test_s3_uris_parse_to_bucket_and_normalised_key(value: str, bucket: str, key: str) -> None:
    uri = parse_s3_uri(value)
    assert (uri.bucket, uri.key) == (bucket, key)
    assert parse_location(value) == uri


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("s3://models/../etc", "'..'"),
        ("s3://models/a/../../b", "'..'"),
        ("s3://models/a/./b", "'.'"),
        ("s3://models//abs/key", "absolute"),
        ("s3://models/a//b", "empty part"),
        ("s3://models/a\\b", "backslash"),
        ("s3://models/a\x00b", "NUL"),
        ("s3:///key", "no bucket"),
        ("s3://Models/key", "not a valid bucket name"),
        ("s3://ab/key", "not a valid bucket name"),
        ("s3://-models/key", "not a valid bucket name"),
        ("s3://my..bucket/key", "not a valid bucket name"),
        ("s3://192.168.1.1/key", "not a valid bucket name"),
        ("s3://" + "a" * 64 + "/key", "not a valid bucket name"),
    ],
)
def test_unsafe_or_malformed_s3_uris_are_refused_naming_the_uri(value: str, words: str) -> None:
    with pytest.raises(StorageUriError) as caught:
        parse_location(value)
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert repr(value) in message
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2


def test_join_refuses_keys_that_climb_out_of_the_prefix() -> None:
    base = S3Uri("models", "arcface")
    assert base.join("int8", "model.xml") == S3Uri("models", "arcface/int8/model.xml")
    assert S3Uri("models", "").join("x") == S3Uri("models", "x")
    assert str(base.join("a")) == "s3://models/arcface/a" and base.prefix == "arcface/"
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\b"):
        with pytest.raises(StorageUriError):
            base.join(bad)


def test_https_is_read_only_input_and_http_needs_explicit_consent() -> None:
    uri = parse_location("https://example.com/models/lfw.bin")
    assert uri == HttpUri("https://example.com/models/lfw.bin") and uri.name == "lfw.bin"
    with pytest.raises(StorageUriError, match="plain http"):
        parse_location("http://example.com/lfw.bin")
    assert parse_location("http://example.com/lfw.bin", allow_http=True) == HttpUri(
        "http://example.com/lfw.bin"
    )
    with pytest.raises(StorageUriError, match=r"'\.\.'"):
        parse_location("https://example.com/a/../b")
    with pytest.raises(StorageUriError, match="no host"):
        parse_location("https:///lfw.bin")


def test_pvc_uris_become_in_pod_paths_and_local_paths_stay() -> None:
    assert parse_location("pvc://data/lfw.bin") == LocalPath(f"{MOUNT_ROOT}/data/lfw.bin")
    assert parse_location("/data/lfw.bin") == LocalPath("/data/lfw.bin")
    assert parse_location("relative/dir") == LocalPath("relative/dir")
    with pytest.raises(StorageUriError, match=r"'\.\.'"):
        parse_location("pvc://data/../secrets")


@pytest.mark.parametrize("value", ["ftp://host/file", "gs://bucket/key", ""])
def test_other_schemes_are_refused(value: str) -> None:
    with pytest.raises(StorageUriError):
        parse_location(value)


def test_is_s3_looks_only_at_the_scheme() -> None:
    assert is_s3("s3://b/k") and is_s3("S3://b") and not is_s3("/s3/x") and not is_s3(None)
