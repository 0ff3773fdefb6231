"""``qfleet serve`` as a real process: SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from qfleet.serving.protocol import HEADER_LENGTH, decode_infer_response, encode_infer_request
from tests.support.server import start_server, stop_server


@contextmanager
def server_process(
    model_xml: Path, log_dir: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``qfleet serve --port 0`` in a subprocess; yields it, its URL and its stderr log file."""
    server = start_server(model_xml, log_dir / "serve.stderr", *args)
    try:
        yield server.process, server.url, server.log
    finally:
        stop_server(server)


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_sigterm_answers_the_in_flight_request_then_exits_0(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    xml = tiny_ir("tiny")
    faces = np.random.default_rng(0).integers(0, 256, size=(3, 3, 112, 112), dtype=np.uint8)
    body, headers = encode_infer_request("data", faces, binary=True)
    with server_process(xml, tmp_path) as (process, url, stderr_path):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # An in-flight request that stays in flight for as long as the test wants: send its
        # headers and half its body, and the rest only after SIGTERM.
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"{HEADER_LENGTH}: {headers[HEADER_LENGTH]}\r\nConnection: close\r\n\r\n"
        )
        half = len(body) // 2
        writer.write(head.encode() + body[:half])
        await writer.drain()
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                async with session.get(f"{url}/metrics") as response:
                    if "qfleet_server_inflight_requests 1.0" in await response.text():
                        break
                assert time.monotonic() < deadline, "the half-sent request never became in flight"
                await asyncio.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        await wait_for(
            lambda: "SIGTERM: draining 1 in-flight" in stderr_path.read_text(), "the drain log line"
        )

        # New connections are refused while the old request is still being answered.
        async def connect_refused() -> bool:
            try:
                _, probe = await asyncio.open_connection(host, int(port))
            except OSError:
                return True
            probe.close()
            return False

        deadline = time.monotonic() + 10
        while not await connect_refused():
            assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
            await asyncio.sleep(0.05)
        assert process.poll() is None, "the server exited before answering its in-flight request"

        writer.write(body[half:])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
        head_bytes, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode().split("\r\n")
        assert status_line.split()[1] == "200", raw[:300]
        response_headers = dict(line.split(": ", 1) for line in header_lines)
        outputs = decode_infer_response(payload, header_length=response_headers.get(HEADER_LENGTH))
        assert outputs["fc1"].shape == (3, 16)
        assert np.isfinite(outputs["fc1"]).all()

        stdout, _ = process.communicate(timeout=30)
        assert process.returncode == 0, stderr_path.read_text()
        summary = json.loads(stdout.splitlines()[-1])
        assert summary["stopped_by"] == "SIGTERM"
        assert summary["faces_inferred"] == 3


def test_port_in_use_is_a_one_line_error(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    xml = tiny_ir("tiny")
    with server_process(xml, tmp_path) as (_, url, _):
        port = url.rsplit(":", 1)[1]
        done = subprocess.run(
            [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(xml), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--port", "70000"], "--port"),
        (["--name", "a b"], "not usable in a URL"),
    ],
)
def test_bad_options_are_one_line_errors(tiny_ir: Callable[..., Path], args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(tiny_ir("tiny")), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert message in done.stderr


def test_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(tmp_path / "none" / "model.xml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
