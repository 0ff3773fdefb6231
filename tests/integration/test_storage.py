"""Object storage end to end against a real S3 HTTP server (moto's standalone server, a separate
process reached over HTTP by boto3, as MinIO or RGW would be) and a local HTTPS file server.

Wrong credentials: moto's server does not check signatures unless IAM emulation is switched on
for a counted number of requests, so AccessDenied is tested against an endpoint that answers every
request with S3's 403 AccessDenied document, which is what a real store sends for a key it refuses.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qfleet.cli import main
from qfleet.model.metadata import METADATA_FILE
from qfleet.storage.publish import UPLOAD_KEY, publish
from qfleet.storage.s3 import S3Store
from qfleet.storage.transfer import CHUNK_SIZE
from qfleet.storage.uris import parse_s3_uri
from tests.support.s3 import DenyAll, S3Server, free_port, http_servers

BUCKET = "qfleet-models"


@pytest.fixture
def s3(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A server with one empty bucket, and this process's AWS variables pointing at it."""
    moto_server.reset()
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto_server.client().create_bucket(Bucket=BUCKET)
    return moto_server


def model_dir(folder: Path, *, size: int = 300_000) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net name='tiny'/>\n")
    (folder / "model.bin").write_bytes(bytes(range(256)) * (size // 256))
    (folder / METADATA_FILE).write_text(json.dumps({"kind": "int8", "isa": "avx2"}))
    return folder


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main([*argv, "--json", "-q"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_key(server: S3Server, prefix: str, name: str) -> str:
    """The key of a published model's file: below the upload prefix its qfleet.json names."""
    marker = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{METADATA_FILE}")["Body"].read()
    return f"{prefix}/{json.loads(marker)[UPLOAD_KEY]}/{name}"


def leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if ".partial-" in path.name)


def test_publish_then_fetch_round_trip(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = model_dir(tmp_path / "int8")
    uri = f"s3://{BUCKET}/arcface/abc123/avx2"
    outcome = publish(source, parse_s3_uri(uri))
    assert outcome["already_published"] is False and outcome["files"] == 3
    metadata = json.loads((source / METADATA_FILE).read_text())
    assert metadata["files"] == {name: sha256(source / name) for name in ("model.bin", "model.xml")}

    dest = tmp_path / "fetched"
    code, result, _ = run_cli(capsys, "fetch", uri, str(dest))
    assert code == 0, result
    assert result["files"] == 3 and result["bytes"] > 300_000 and result["mb_per_s"] > 0
    assert result["verified"] is True and result["already_fetched"] is False
    for name in ("model.xml", "model.bin"):
        assert (dest / name).read_bytes() == (source / name).read_bytes(), name
    fetched = json.loads((dest / METADATA_FILE).read_text())
    assert fetched.pop(UPLOAD_KEY).startswith(".upload-") and fetched == metadata
    assert not leftovers(tmp_path)

    # A restarted initializer finds the same model already there, verifies it and keeps it.
    code, again, _ = run_cli(capsys, "fetch", uri, str(dest))
    assert code == 0 and again["already_fetched"] is True
    # --sha256 pins qfleet.json, and through its `files` record every file.
    pinned = sha256(dest / METADATA_FILE)
    assert run_cli(capsys, "fetch", uri, str(tmp_path / "pinned"), "--sha256", pinned)[0] == 0
    code, _, err = run_cli(capsys, "fetch", uri, str(tmp_path / "wrong-pin"), "--sha256", "0" * 64)
    assert code == 2 and "does not match" in err and not (tmp_path / "wrong-pin").exists()

    # A re-run never replaces a published model.
    (source / "model.bin").write_bytes(b"retrained")
    assert publish(source, parse_s3_uri(uri))["already_published"] is True
    key = stored_key(s3, "arcface/abc123/avx2", "model.bin")
    assert s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() != b"retrained"
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="arcface/abc123/avx2/")["Contents"]
    assert len(listed) == 3  # the re-run uploaded nothing


@pytest.mark.parametrize("damage", ["altered", "truncated", "deleted"])
def test_a_damaged_object_is_refused_and_dir_left_untouched(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    source = model_dir(tmp_path / "int8")
    publish(source, parse_s3_uri(f"s3://{BUCKET}/m/int8"))
    client = s3.client()
    original = (source / "model.bin").read_bytes()
    key = stored_key(s3, "m/int8", "model.bin")
    if damage == "altered":
        client.put_object(Bucket=BUCKET, Key=key, Body=b"\x01" + original[1:])
    elif damage == "truncated":
        client.put_object(Bucket=BUCKET, Key=key, Body=original[: len(original) // 2])
    else:
        client.delete_object(Bucket=BUCKET, Key=key)
    dest = tmp_path / "volume"
    dest.mkdir()
    code, result, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/m/int8", str(dest))
    assert code == 2, err
    assert result["error"]["stage"] == "fetch"
    expected = "NoSuchKey" if damage == "deleted" else "does not match"
    assert expected in err and key in err and len(err.strip().splitlines()) == 1
    assert list(dest.iterdir()) == [] and not leftovers(tmp_path)


def test_missing_bucket_and_missing_key_are_user_errors(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "fetch", "s3://no-such-bucket/m/int8", str(tmp_path / "a"))
    assert code == 2 and "NoSuchBucket" in err and "s3://no-such-bucket/m/int8" in err
    code, _, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/not/there", str(tmp_path / "b"))
    assert code == 2 and "NoSuchKey" in err and not (tmp_path / "a").exists()


def test_keys_that_climb_out_are_refused(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/m/../../etc", str(tmp_path / "a"))
    assert code == 2 and "'..'" in err
    # A qfleet.json that lists a file outside its prefix is refused before anything is written.
    evil = {"kind": "int8", "files": {"../../escape": "0" * 64}}
    s3.client().put_object(Bucket=BUCKET, Key="evil/qfleet.json", Body=json.dumps(evil).encode())
    code, _, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/evil", str(tmp_path / "b"))
    assert code == 2 and "'..'" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "escape").exists()


@pytest.fixture
def serve_http() -> Iterator[Callable[..., str]]:
    with http_servers() as start:
        yield start


def test_access_denied_is_a_user_error(
    serve_http: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Server,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", serve_http(DenyAll))
    code, _, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/m/int8", str(tmp_path / "a"))
    assert code == 2 and "AccessDenied" in err and "AWS_ACCESS_KEY_ID" in err
    source = model_dir(tmp_path / "int8")
    with pytest.raises(Exception, match="AccessDenied") as caught:
        publish(source, parse_s3_uri(f"s3://{BUCKET}/m/int8"))
    assert getattr(caught.value, "exit_code", None) == 2


def test_an_unreachable_endpoint_fails_within_the_bounded_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    code, _, err = run_cli(capsys, "fetch", f"s3://{BUCKET}/m/int8", str(tmp_path / "a"))
    assert code == 1 and "did not answer" in err and "127.0.0.1" in err
    assert time.monotonic() - started < 60
    assert not (tmp_path / "a").exists()


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, trusted by this process through SSL_CERT_FILE."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_https_input_is_verified_against_the_pinned_sha256(
    serve_http: Callable[..., str],
    tls: ssl.SSLContext,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "lfw.bin").write_bytes(b"pairs" * 100_000)
    digest = sha256(site / "lfw.bin")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    base = serve_http(Files, tls=tls)
    code, result, _ = run_cli(capsys, "fetch", f"{base}/lfw.bin", str(tmp_path / "ok"), "--sha256", digest)
    assert code == 0 and result["kind"] == "file" and result["verified"] is True
    assert sha256(tmp_path / "ok" / "lfw.bin") == digest
    code, _, err = run_cli(capsys, "fetch", f"{base}/lfw.bin", str(tmp_path / "bad"), "--sha256", "ab" * 32)
    assert code == 2 and "does not match" in err
    assert not (tmp_path / "bad").exists() and not leftovers(tmp_path)
    # Plain http is refused unless explicitly allowed.
    code, _, err = run_cli(capsys, "fetch", "http://127.0.0.1:1/lfw.bin", str(tmp_path / "http"))
    assert code == 2 and "plain http" in err


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves the folder named by the class attribute ``root``."""

    root = "."

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=self.root, **kwargs)

    def log_message(self, *args: Any) -> None:
        pass


def test_pipeline_https_inputs_are_pinned(
    serve_http: Callable[..., str],
    tls: ssl.SSLContext,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An https:// lfw.bin whose sha256 differs from the pin stops the pipeline before any stage
    (exit 2, nothing written); a pin on a local input is refused as a mistake."""
    from tests.support.operator_fixtures import write_datasets

    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    data = write_datasets(tmp_path / "data")
    site = type("Site", (_Files,), {"root": str(data)})
    base = serve_http(site, tls=tls)
    out = tmp_path / "out"
    argv = [
        *("pipeline", "--source", str(data / "model" / "model.xml"), "--format", "openvino"),
        *("--calibration", str(data / "calib"), "--lfw", f"{base}/lfw.bin", "--out", str(out)),
        *("--subset-size", "8", "--benchmark-seconds", "0.3", "--max-drop", "0.5"),
        *("--termination-log", str(tmp_path / "termination-log")),
    ]
    code, result, _ = run_cli(capsys, *argv, "--lfw-sha256", "ab" * 32)
    assert code == 2 and result["error"]["stage"] == "fetch-inputs"
    assert "does not match" in result["error"]["message"] and "lfw.bin" in result["error"]["message"]
    assert not out.exists()
    code, result, _ = run_cli(capsys, *argv, "--lfw-sha256", sha256(data / "lfw.bin"))
    assert code == 0 and result["gate"]["passed"] and (out / "int8" / "model.xml").is_file()
    local = [*argv[: argv.index("--lfw") + 1], str(data / "lfw.bin"), *argv[argv.index("--lfw") + 2 :]]
    code, result, err = run_cli(capsys, *local, "--lfw-sha256", "ab" * 32)
    assert code == 2 and "--lfw-sha256 pins an https:// download" in err


def test_pipeline_reads_and_publishes_to_s3_and_fetch_serves_its_artifact(
    s3: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.operator_fixtures import write_datasets

    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    data = write_datasets(tmp_path / "data")
    client = s3.client()
    for path in [data / "model" / "model.xml", data / "model" / "model.bin", data / "lfw.bin"]:
        client.upload_file(str(path), BUCKET, f"inputs/{path.relative_to(data).as_posix()}")
    for face in sorted((data / "calib").iterdir()):
        client.upload_file(str(face), BUCKET, f"inputs/calib/{face.name}")
    out = f"s3://{BUCKET}/artifacts/tiny/key1/avx2"
    argv = [
        "pipeline",
        "--source",
        f"s3://{BUCKET}/inputs/model/model.xml",
        "--format",
        "openvino",
        "--calibration",
        f"s3://{BUCKET}/inputs/calib",
        "--lfw",
        f"s3://{BUCKET}/inputs/lfw.bin",
        "--out",
        out,
        "--subset-size",
        "8",
        "--benchmark-seconds",
        "0.3",
        "--max-drop",
        "0.5",
        "--termination-log",
        str(tmp_path / "termination-log"),
    ]
    code, result, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert result["artifact"] == f"{out}/int8/model.xml"
    assert result["fp32_artifact"] == f"{out}/fp32/model.xml"
    assert result["published"]["int8"] == "published" and "publish" in result["timings"]
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "artifacts/tiny/key1/avx2/result.json" in keys
    stored = json.loads(
        client.get_object(Bucket=BUCKET, Key="artifacts/tiny/key1/avx2/result.json")["Body"].read()
    )
    assert stored["artifact"] == result["artifact"]

    dest = tmp_path / "serving"
    code, _, err = run_cli(capsys, "fetch", f"{out}/int8", str(dest))
    assert code == 0, err
    metadata = json.loads((dest / METADATA_FILE).read_text())
    assert metadata["kind"] == "int8" and set(metadata["files"]) == {"model.xml", "model.bin"}
    for name, digest in metadata["files"].items():
        assert sha256(dest / name) == digest

    # Run again: the published model is kept, not replaced.
    code, again, err = run_cli(capsys, *argv)
    assert code == 0 and again["published"]["int8"] == "already published", err


def test_pipeline_with_a_missing_s3_input_is_a_user_error(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = run_cli(
        capsys,
        "pipeline",
        "--source",
        f"s3://{BUCKET}/nothing/model.xml",
        "--format",
        "openvino",
        "--calibration",
        f"s3://{BUCKET}/calib",
        "--lfw",
        f"s3://{BUCKET}/lfw.bin",
        "--out",
        f"s3://{BUCKET}/out",
        "--termination-log",
        str(tmp_path / "termination-log"),
    )
    assert code == 2
    assert result["error"]["stage"] == "fetch-inputs" and "NoSuchKey" in result["error"]["message"]


def test_store_lists_and_reads_with_bounded_chunks(s3: S3Server, tmp_path: Path) -> None:
    store = S3Store()
    size = 2 * CHUNK_SIZE + 12345
    s3.client().put_object(Bucket=BUCKET, Key="a/b/c.bin", Body=b"x" * size)
    assert store.list(parse_s3_uri(f"s3://{BUCKET}/a")) == [("a/b/c.bin", size)]
    chunks: list[int] = []
    with (tmp_path / "c.bin").open("wb") as handle:
        got, digest = store.download(parse_s3_uri(f"s3://{BUCKET}/a/b/c.bin"), handle, progress=chunks.append)
    assert got == size and digest == hashlib.sha256(b"x" * size).hexdigest()
    assert max(chunks) <= CHUNK_SIZE and sum(chunks) == size
    assert (tmp_path / "c.bin").read_bytes() == b"x" * size


def test_two_publishers_of_one_prefix_never_mix_their_files(
    s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retried Job's pod publishing while the first still runs: each uploads below a prefix of
    its own, the first qfleet.json wins with exactly its files, the loser removes its upload."""
    first = model_dir(tmp_path / "first")
    second = model_dir(tmp_path / "second")
    (second / "model.bin").write_bytes(b"another quantization" * 1000)
    uri = parse_s3_uri(f"s3://{BUCKET}/m/key/avx2/int8")

    class Racing(S3Store):
        """Lets the second publisher finish just before the first writes its qfleet.json."""

        def put_if_absent(self, data: bytes, target: Any) -> bool:
            assert publish(second, uri)["already_published"] is False
            return super().put_if_absent(data, target)

    assert publish(first, uri, store=Racing())["already_published"] is True
    code, _, err = run_cli(capsys, "fetch", str(uri), str(tmp_path / "fetched"))
    assert code == 0, err
    assert (tmp_path / "fetched" / "model.bin").read_bytes() == (second / "model.bin").read_bytes()
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="m/key/avx2/int8/")["Contents"]
    assert len(listed) == 3  # the winner's two files and its qfleet.json: the loser left nothing
