"""The server image's packages are enough to serve: `qfleet serve` started as the image runs it.

The static checks of the images are in ``tests/unit/deploy/test_images.py``; this one starts a
real server process with every package the server image leaves out hidden from it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.image_packages import BLOCKER, blocked_modules
from tests.support.paths import REPO
from tests.support.server import end_process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_image_serves_a_model_without_mxnet_nncf_or_kubernetes(tiny_ir: Callable[..., Path]) -> None:
    """Start `qfleet serve` exactly as the server image would run it, with only its packages."""
    xml = tiny_ir("served")
    port = _free_port()
    body = f"""
    import sys
    from qfleet.cli import main
    sys.exit(main(["serve", "--model", {str(xml)!r}, "--host", "127.0.0.1", "--port", "{port}"]))
    """
    script = BLOCKER.format(blocked=sorted(blocked_modules("server"))) + textwrap.dedent(body)
    env = {**os.environ, "QFLEET_HOST_ISA": "avx2"}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
                ) as response:
                    ready = response.status == 200
                    break
            except OSError:
                time.sleep(0.3)
        if not ready:
            process.kill()
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"server did not become ready without the excluded packages:\n{stderr[-3000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        end_process(process, timeout=20)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
