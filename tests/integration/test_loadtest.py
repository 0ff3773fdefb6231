"""``qfleet loadtest`` against a real ``qfleet serve`` process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qfleet.errors import InputError
from qfleet.serving.loadtest import LoadSpec, run_loadtest
from tests.support.server import start_server, stop_server


@contextmanager
def served(model_xml: Path, log_dir: Path, *args: str) -> Iterator[str]:
    """``qfleet serve --port 0`` in a subprocess; yields its URL."""
    server = start_server(model_xml, log_dir / "serve.stderr", *args)
    try:
        yield server.url
    finally:
        stop_server(server, graceful=True)


def qfleet_json(*args: str) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    return done.returncode, json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_loadtest_against_a_server_process(
    tiny_ir: Callable[..., Path], tmp_path: Path, binary: bool
) -> None:
    with served(tiny_ir("tiny"), tmp_path) as url:
        code, report, stderr = qfleet_json(
            "loadtest",
            "--url",
            url,
            "--cameras",
            "4",
            "--camera-fps",
            "10",
            "--faces-per-frame",
            "3",
            "--seconds",
            "2",
            *(["--binary"] if binary else []),
        )
        metrics = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import urllib.request; print(urllib.request.urlopen('{url}/metrics').read().decode())",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    assert code == 0, stderr
    assert report["model"] == "tiny"
    assert report["frames_scheduled"] == 80  # 4 cameras x 10 fps x 2 s
    assert report["frames_ok"] == 80 and report["errors"] == 0
    assert report["offered_fps"] == pytest.approx(120.0)
    # Every frame was answered; how fast depends on the host, so only the ordering is checked:
    # answers cannot outrun what the cameras offered (the window ends with the last answer).
    assert 0 < report["achieved_fps"] <= 1.05 * 120.0  # type: ignore[operator]
    latency = report["latency_ms"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert "qfleet_server_faces_inferred_total 240.0" in metrics


async def test_overload_is_reported_as_errors_not_a_stall(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    # One request in flight at most and 64 faces per frame (tens of ms of inference each) from 8
    # cameras at 10 fps: frames overlap, so the server must shed (503) instead of queueing, and
    # the report must say so.
    with served(tiny_ir("tiny"), tmp_path, "--max-concurrency", "1") as url:
        report = await run_loadtest(
            LoadSpec(url=url, cameras=8, camera_fps=10, faces_per_frame=64, seconds=1.0, binary=True)
        )
    assert report["frames_sent"] == report["frames_scheduled"]
    assert report["frames_ok"] > 0
    assert report["errors"] > 0
    assert set(report["errors_by_kind"]) == {"http_503"}  # type: ignore[arg-type]
    assert report["frames_ok"] + report["errors"] == report["frames_sent"]  # type: ignore[operator]


async def test_unreachable_server_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape("cannot read http://127.0.0.1:9/v2/models/m")):
        await run_loadtest(
            LoadSpec(
                url="http://127.0.0.1:9", model="m", cameras=1, camera_fps=1, faces_per_frame=1, seconds=1
            )
        )


def test_unknown_model_is_a_one_line_error(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    with served(tiny_ir("tiny"), tmp_path) as url:
        code, result, stderr = qfleet_json(
            "loadtest", "--url", url, "--model", "nope", "--cameras", "1", "--camera-fps", "1",
            "--faces-per-frame", "1", "--seconds", "1",
        )  # fmt: skip
    assert code == 2
    assert "404" in stderr and "Traceback" not in stderr
    assert result["error"]["stage"] == "loadtest"  # type: ignore[index]


def test_loadtest_over_grpc(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    server = start_server(tiny_ir("tiny"), tmp_path / "serve.stderr")
    try:
        assert server.grpc is not None
        code, report, stderr = qfleet_json(
            "loadtest", "--grpc", "--url", server.grpc, "--model", "tiny", "--cameras", "4",
            "--camera-fps", "10", "--faces-per-frame", "3", "--seconds", "2",
        )  # fmt: skip
        missing_model = qfleet_json(
            "loadtest", "--grpc", "--url", server.grpc, "--cameras", "1", "--camera-fps", "1",
            "--faces-per-frame", "1", "--seconds", "1",
        )  # fmt: skip
        unknown_model = qfleet_json(
            "loadtest", "--grpc", "--url", server.grpc, "--model", "nope", "--cameras", "1",
            "--camera-fps", "1", "--faces-per-frame", "1", "--seconds", "1",
        )  # fmt: skip
    finally:
        stop_server(server, graceful=True)
    assert code == 0, stderr
    assert report["protocol"] == "grpc" and report["model"] == "tiny"
    assert report["frames_scheduled"] == 80 and report["frames_ok"] == 80 and report["errors"] == 0
    assert 0 < report["achieved_fps"] <= 1.05 * 120.0  # type: ignore[operator]
    assert missing_model[0] == 2 and "--grpc needs --model" in missing_model[2]
    assert unknown_model[0] == 2 and "NOT_FOUND" in unknown_model[2] and "Traceback" not in unknown_model[2]


async def test_grpc_overload_is_reported_as_errors_not_a_stall(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    server = start_server(tiny_ir("tiny"), tmp_path / "serve.stderr", "--max-concurrency", "1")
    try:
        assert server.grpc is not None
        report = await run_loadtest(
            LoadSpec(
                url=server.grpc,
                model="tiny",
                cameras=8,
                camera_fps=10,
                faces_per_frame=64,
                seconds=1.0,
                grpc=True,
            )
        )
    finally:
        stop_server(server, graceful=True)
    assert report["frames_ok"] > 0 and report["errors"] > 0
    assert set(report["errors_by_kind"]) == {"grpc_resource_exhausted"}  # type: ignore[arg-type]
    assert report["frames_ok"] + report["errors"] == report["frames_sent"]  # type: ignore[operator]
