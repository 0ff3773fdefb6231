"""Faults thrown at a real ``qfleet serve`` process over real HTTP: fuzzed inference requests,
garbage on the wire, oversized and slow bodies, SIGTERM with requests in flight.

The protocol parser is fuzzed on its own in ``tests/unit/serving/test_protocol.py``; here the
whole server is (aiohttp's HTTP parser, the middleware, the engine), and the process must stay up.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfleet.serving.protocol import DATATYPES, HEADER_LENGTH, decode_infer_response, encode_infer_request
from tests.support.server import start_server as start_server_process

pytestmark = pytest.mark.timeout(180)

FACE = (3, 112, 112)


@dataclass
class Server:
    process: subprocess.Popen[str]
    host: str
    port: int
    log: Path

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            connection.close()


def start_server(model_xml: Path, log: Path, *args: str) -> Server:
    started = start_server_process(model_xml, log, *args)
    return Server(started.process, started.host, started.port, log)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def model_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_ir import build_tiny_ir

    return Path(build_tiny_ir(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def server(model_xml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        model_xml, tmp_path_factory.mktemp("serve") / "serve.log", "--max-body-bytes", "2000000"
    )
    yield running
    stop(running)


def valid_request(batch: int = 1, *, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    faces = np.random.default_rng(batch).integers(0, 256, size=(batch, *FACE), dtype=np.uint8)
    body, headers = encode_infer_request("data", faces, binary=binary)
    return body, {"Content-Type": "application/json", **headers}


def assert_alive_and_serving(server: Server) -> None:
    assert server.process.poll() is None, server.log.read_text()[-3000:]
    assert server.request("GET", "/v2/health/live")[0] == 200
    body, headers = valid_request(2)
    status, payload, _ = server.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 200, payload[:300]


# -- fuzzing ---------------------------------------------------------------------------------------


@st.composite
def infer_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A request near a valid one: a quarter are valid as they are, the rest have parts mutated."""
    valid = draw(st.integers(0, 3)) == 0

    def pick(right: Any, wrong: st.SearchStrategy[Any]) -> Any:
        return right if valid or draw(st.integers(0, 2)) else draw(wrong)

    batch = draw(st.sampled_from([1, 2, 3])) if valid else draw(st.sampled_from([0, 1, 2, 3]))
    datatype = pick(draw(st.sampled_from(["UINT8", "FP32"])),
                    st.sampled_from([*DATATYPES, "BYTES", "uint8", "", None, 7]))  # fmt: skip
    shape = pick([batch, *FACE], st.one_of(
        st.lists(st.integers(-3, 300), max_size=6),
        st.sampled_from([[batch, 3, 112], [batch, 112, 112, 3], [batch, 1, 112, 112], [2**40, 3, 112, 112],
                         [-1, 3, 112, 112], "1,3,112,112", None]),
    ))  # fmt: skip
    dtype = DATATYPES.get(datatype if isinstance(datatype, str) else "", np.dtype(np.uint8))
    count = batch * int(np.prod(FACE))
    count += pick(0, st.sampled_from([-1, 1, -count]))
    values = np.zeros(max(count, 0), dtype=dtype)
    if dtype.kind == "f" and values.size and not valid and draw(st.booleans()):
        values[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
    binary = draw(st.booleans())
    entry: dict[str, Any] = {"name": pick("data", st.sampled_from(["x", "", None])), "datatype": datatype,
                             "shape": shape}  # fmt: skip
    header: dict[str, Any] = {"inputs": [entry]}
    if draw(st.booleans()):
        header["outputs"] = pick([{"name": "fc1"}], st.sampled_from([[{"name": "nope"}], [{}], "fc1", [1]]))
        if draw(st.booleans()):
            header["outputs"] = [{"name": "fc1", "parameters": {"binary_data": True}}]
    if draw(st.booleans()):
        header["parameters"] = pick(
            {"binary_data_output": True}, st.sampled_from([{"binary_data_output": "x"}, []])
        )
    if draw(st.booleans()):
        header["id"] = pick("camera-7", st.sampled_from([1, ["x"], {"a": 1}]))
    headers: dict[str, str] = {}
    if binary:
        blob = values.tobytes()
        entry["parameters"] = {
            "binary_data_size": len(blob) + pick(0, st.sampled_from([1, -1, 10**9, -len(blob)]))
        }
        text = json.dumps(header).encode()
        length: Any = len(text) + pick(0, st.sampled_from([1, -1, -len(text), len(blob) + 1]))
        length = pick(
            length, st.sampled_from(["", "abc", "-5", "1e3", " 12", "99999999999999999999", "\u00b2"])
        )
        headers[HEADER_LENGTH] = str(length)
        body = text + blob
    else:
        entry["data"] = pick(values.tolist(), st.sampled_from(
            [[[0, 1], [2]], "zeros", {"a": 1}, [None] * max(count, 0), [[0] * 4] * 3, [True] * max(count, 0)]
        ))  # fmt: skip
        body = json.dumps(header).encode()
    if not valid and draw(st.integers(0, 7)) == 0:
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=20))
    content_type = pick("application/json", st.sampled_from(["application/octet-stream", "text/plain", None]))
    if content_type:
        headers["Content-Type"] = content_type
    model = pick("tiny", st.sampled_from(["tiny/versions/1", "tiny/versions/2", "other", "t%00"]))
    return f"/v2/models/{model}/infer", body, headers


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(request=infer_requests())
def test_fuzzed_infer_requests_never_get_a_5xx(
    server: Server, request: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = request
    status, payload, response_headers = server.request("POST", path, body, headers)
    STATUSES[status] += 1
    assert status < 500, (status, payload[:300], headers, body[:200])
    if status >= 400:
        assert "error" in json.loads(payload), payload[:300]
    else:  # an answer a strict client can read: standard JSON (no NaN/Infinity), finite embeddings
        outputs = decode_infer_response(payload, header_length=response_headers.get(HEADER_LENGTH))
        assert all(np.isfinite(array).all() for array in outputs.values())
        json.loads(payload[: int(response_headers.get(HEADER_LENGTH, len(payload)))], parse_constant=_refuse)


STATUSES: Counter[int] = Counter()


def _refuse(constant: str) -> None:
    raise AssertionError(f"the response holds {constant}, which is not JSON")


def test_the_server_survived_the_fuzzing_and_the_fuzzing_hit_both_sides(server: Server) -> None:
    """Runs after the fuzz test (file order): the process is up, serves, logged no 500, and the
    fuzzing drew both valid and refused requests. Run on its own, it fuzzes first, so the check
    is never skipped."""
    if not STATUSES:
        test_fuzzed_infer_requests_never_get_a_5xx(server=server)
    assert_alive_and_serving(server)
    assert STATUSES[200] > 0 and sum(n for s, n in STATUSES.items() if 400 <= s < 500) > 50, STATUSES
    assert "unexpected error" not in server.log.read_text()
    assert "Traceback" not in server.log.read_text()


@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=1, max_size=600))
def test_garbage_on_the_wire_is_refused_and_the_process_lives(server: Server, data: bytes) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        try:
            sock.sendall(data + b"\r\n\r\n")
            answer = sock.recv(64)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            answer = b""
    if answer.startswith(b"HTTP/1."):
        assert int(answer.split()[1]) < 500, answer
    assert server.process.poll() is None


# -- oversized and slow bodies ---------------------------------------------------------------------


def test_an_oversized_body_is_refused_before_it_is_read(server: Server) -> None:
    """A client announcing 10 GB gets a 413 at once; nothing near that is read or buffered."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 10000000000\r\n\r\n" + b"\0" * 65536
        )
        answer = sock.recv(4096)
        assert answer.split()[1] == b"413", answer[:200]
        assert time.monotonic() - started < 5
    found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{server.process.pid}/status").read_text())
    assert found is not None
    rss_kib = int(found.group(1))
    assert rss_kib < 1_500_000  # far below 10 GB
    assert_alive_and_serving(server)


def _slow_body_client(server: Server, results: list[tuple[str, float, bytes]], *, seconds: float) -> None:
    """A client that announces a body and sends one byte per second (slowloris); records how
    its connection ended: ("answered", after s, first bytes), ("closed", after s, b"") or
    ("still open", seconds, b"")."""
    sock = socket.create_connection((server.host, server.port), timeout=1)
    sock.sendall(
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            try:
                sock.sendall(b" ")
                answer = sock.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                answer = b""
            results.append(("answered" if answer else "closed", time.monotonic() - started, answer[:64]))
            return
        results.append(("still open", seconds, b""))
    finally:
        sock.close()


def test_slow_bodies_neither_hold_a_connection_forever_nor_starve_other_clients(
    model_xml: Path, tmp_path: Path
) -> None:
    server = start_server(model_xml, tmp_path / "serve.log", "--max-concurrency", "2", "--body-timeout", "3")
    try:
        results: list[tuple[str, float, bytes]] = []
        clients = [threading.Thread(target=_slow_body_client, args=(server, results), kwargs={"seconds": 15})
                   for _ in range(2)]  # fmt: skip
        for client in clients:
            client.start()
        time.sleep(1.0)
        body, headers = valid_request(1)
        status, payload, _ = server.request("POST", "/v2/models/tiny/infer", body, headers)
        for client in clients:
            client.join()
        assert status == 200, payload[:200]  # two slow clients must not take every slot
        assert len(results) == 2, results
        for how, after, answer in results:
            assert how in ("answered", "closed") and after < 3 + 3, results  # bounded by --body-timeout
            if how == "answered":
                assert answer.split()[1] == b"408", answer
        assert_alive_and_serving(server)
    finally:
        stop(server)


# -- SIGTERM ---------------------------------------------------------------------------------------


def _half_sent(server: Server, body: bytes, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    sock.sendall(
        f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}"
        f"Connection: close\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    return sock


def _inflight(server: Server) -> float:
    text = server.request("GET", "/metrics")[1].decode()
    found = re.search(r"^qfleet_server_inflight_requests (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_sigterm_with_many_requests_in_flight_answers_every_one(model_xml: Path, tmp_path: Path) -> None:
    server = start_server(model_xml, tmp_path / "serve.log")
    try:
        body, headers = valid_request(2)
        sockets = [_half_sent(server, body, headers) for _ in range(8)]
        deadline = time.monotonic() + 20
        while _inflight(server) < 8:
            assert time.monotonic() < deadline, "the half-sent requests never became in flight"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        for sock in sockets:
            sock.sendall(body[len(body) // 2 :])
        answers = []
        for sock in sockets:
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            sock.close()
            answers.append(b"".join(chunks))
        assert [answer.split()[1] for answer in answers] == [b"200"] * 8, [a[:120] for a in answers]
        server.process.wait(timeout=30)
        assert server.process.returncode == 0
        assert json.loads(server.process.stdout.read().splitlines()[-1])["faces_inferred"] == 16  # type: ignore[union-attr]
    finally:
        stop(server)


def test_sigterm_with_a_body_that_never_ends_exits_after_the_grace(model_xml: Path, tmp_path: Path) -> None:
    server = start_server(model_xml, tmp_path / "serve.log", "--shutdown-grace", "2")
    try:
        body, headers = valid_request(1)
        stuck = _half_sent(server, body, headers)  # the rest never comes
        deadline = time.monotonic() + 20
        while _inflight(server) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert time.monotonic() - started < 2 + 5
        assert server.process.returncode == 0
        assert "still in flight after" in server.log.read_text()
        stuck.close()
    finally:
        stop(server)
