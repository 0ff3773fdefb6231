"""Processes listen only where they are told.

``qfleet serve`` listens on 127.0.0.1 unless ``--host`` says otherwise (the Deployments the operator
builds pass ``--host 0.0.0.0``: a pod must be reachable by its Service), for REST and gRPC alike.
grpcio listens through IPv6 sockets: an IPv4 address becomes its IPv4-mapped form (the same
address), and the IPv4 wildcard ``0.0.0.0`` a dual-stack ``::`` (every address, as asked). The operator opens no
port at all unless ``--metrics-port``/``--liveness`` ask for one. The listening sockets are read
from the kernel (``/proc/PID/fd`` and ``/proc/net/tcp*``), not from what the process says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.server import start_server, stop_server

LISTEN = "0A"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6 in /proc is four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


@contextmanager
def serving(model_xml: Path, log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """The server, its REST port and its gRPC port."""
    server = start_server(model_xml, log, *args)
    assert server.grpc is not None
    try:
        yield server.process, server.port, int(server.grpc.rsplit(":", 1)[1])
    finally:
        stop_server(server)


def test_the_listening_socket_reader_sees_a_socket() -> None:
    """The control: a socket this test opens is found, with its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert ("127.0.0.1", sock.getsockname()[1]) in listening_sockets(os.getpid())


def test_the_server_listens_on_loopback_only_by_default(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    with serving(tiny_ir("tiny"), tmp_path / "serve.log") as (process, port, grpc_port):
        assert listening_sockets(process.pid) == {("127.0.0.1", port), ("127.0.0.1", grpc_port)}


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.2"])
def test_the_server_listens_where_it_is_told(tiny_ir: Callable[..., Path], tmp_path: Path, host: str) -> None:
    with serving(tiny_ir("tiny"), tmp_path / "serve.log", "--host", host) as (process, port, grpc_port):
        grpc_host = "::" if host == "0.0.0.0" else host
        assert listening_sockets(process.pid) == {(host, port), (grpc_host, grpc_port)}


def test_the_operator_opens_no_port_unless_asked(tmp_path: Path) -> None:
    from tests.support.cluster import running_cluster

    async def scenario() -> tuple[set[tuple[str, int]], set[tuple[str, int]], int]:
        async with running_cluster(tmp_path) as cluster:
            await cluster.add_namespace("faces")
            quiet = await cluster.start_operator("--namespace", "faces")
            await cluster.wait_for(
                "the operator watching",
                lambda: cluster.emulator.request_counts["WATCH", "quantizedmodels", ""],
            )
            await asyncio.sleep(1.0)
            none = listening_sockets(quiet.pid)
            await cluster.stop_operator(quiet)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            asked = await cluster.start_operator("--namespace", "faces", "--metrics-port", str(port),
                                                 log_name="operator-2")  # fmt: skip
            await cluster.wait_for("metrics up", lambda: listening_sockets(asked.pid))
            await asyncio.sleep(1.0)
            some = listening_sockets(asked.pid)
            return none, some, port

    none, some, port = asyncio.run(scenario())
    assert none == set()
    # Prometheus scrapes the operator pod from another pod: the metrics port is on every interface.
    assert {port for _, port in some} == {port}
