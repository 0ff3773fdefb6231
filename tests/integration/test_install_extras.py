"""A slim install really is slim: ``pip install '.[server]'`` into a fresh virtual environment
(from the repository, as a user or an image would, not editable) holds no MXNet, ONNX, NNCF or
kopf, serves, and answers a toolkit verb with the one-line missing-extra error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def run(*argv: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("server-extra") / "venv"
    created = run(sys.executable, "-m", "venv", venv)
    assert created.returncode == 0, created.stderr
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{REPO}[server]")
    assert installed.returncode == 0, installed.stderr[-4000:]
    return venv


def test_server_extra_installs_no_toolkit_or_operator_package(server_venv: Path) -> None:
    listed = run(server_venv / "bin" / "python", "-m", "pip", "list", "--format=freeze")
    assert listed.returncode == 0, listed.stderr
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.splitlines()}
    assert {"qfleet", "openvino", "aiohttp", "prometheus-client", "numpy"} <= installed
    assert not installed & {"mxnet", "onnx", "nncf", "kopf", "kubernetes"}, sorted(installed)


def test_server_extra_serves_and_names_the_toolkit_extra(server_venv: Path, tmp_path: Path) -> None:
    qfleet = server_venv / "bin" / "qfleet"
    helped = run(qfleet, "serve", "--help", timeout=60)
    assert helped.returncode == 0 and "--model" in helped.stdout, helped.stderr
    version = run(qfleet, "--version", timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("qfleet ") and "openvino" in version.stdout

    converted = run(
        qfleet, "convert", "--source", tmp_path / "x", "--format", "onnx", "--out", tmp_path / "y", timeout=60
    )
    assert converted.returncode == 2
    lines = converted.stderr.strip().splitlines()
    assert len(lines) == 1, converted.stderr
    assert lines[0].startswith("qfleet convert: error: qfleet convert needs the toolkit extra")
    assert lines[0].endswith("pip install 'qfleet[toolkit]'")
    assert not (tmp_path / "y").exists()
