"""A real ``qfleet serve`` process for tests: started on a free port, found by its log line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LISTENING = re.compile(r"listening on (http://(\S+):(\d+))")
#: Logged before LISTENING when the server also serves gRPC.
GRPC_LISTENING = re.compile(r"gRPC listening on (\S+)")


@dataclass(frozen=True)
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    host: str
    port: int
    log: Path
    #: The gRPC target (``host:port``), None when the server runs without gRPC.
    grpc: str | None = None


def start_server(model_xml: Path, log: Path, *args: str, timeout: float = 60) -> ServerProcess:
    """``qfleet serve --port 0 --json ARGS`` with stderr in ``log``; returns once it listens.

    gRPC listens on a free port too (``--grpc-port 0``) unless ARGS choose otherwise: the
    default port would collide between servers.
    """
    if not {"--grpc-port", "--no-grpc"} & set(args):
        args = ("--grpc-port", "0", *args)
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(model_xml), "--port", "0", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not (found := LISTENING.search(log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    grpc = GRPC_LISTENING.search(log.read_text())
    return ServerProcess(
        process, found.group(1), found.group(2), int(found.group(3)), log, grpc.group(1) if grpc else None
    )


def stop_server(server: ServerProcess, *, graceful: bool = False, timeout: float = 60) -> None:
    """SIGTERM and wait (``graceful``: the drain is part of the test), else SIGKILL."""
    if server.process.poll() is not None:
        return
    if graceful:
        server.process.terminate()
    else:
        server.process.kill()
    server.process.wait(timeout=timeout)


def end_process(process: subprocess.Popen[str] | subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds; waits for the exit."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
