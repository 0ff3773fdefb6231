"""What a pod's log collector gets from a qfleet command: no progress bars off a terminal, and
with ``--log-format json`` one JSON object per line, errors included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def qfleet(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "TQDM_DISABLE"}
    return subprocess.run(
        [sys.executable, "-m", "qfleet.cli", *argv], env=env, capture_output=True, text=True, timeout=180
    )


def test_json_logs_and_no_bars_when_stderr_is_not_a_terminal(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "ir"
    done = qfleet(
        "convert",
        "--source",
        str(tiny_ir()),
        "--format",
        "openvino",
        "--out",
        str(out),
        "--log-format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # no carriage-return progress bar in the log
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert any(entry["logger"].startswith("qfleet") and "converted" in entry["message"] for entry in entries)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)


def test_an_error_is_a_json_record_too(tmp_path: Path) -> None:
    done = qfleet(
        "convert",
        "--source",
        str(tmp_path / "absent.onnx"),
        "--format",
        "onnx",
        "--out",
        str(tmp_path / "o"),
        "--log-format",
        "json",
    )
    assert done.returncode == 2
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    errors = [entry for entry in entries if entry["level"] == "ERROR"]
    assert len(errors) == 1 and "absent.onnx" in errors[0]["message"]


def test_text_logs_stay_plain(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    done = qfleet(
        "convert", "--source", str(tiny_ir()), "--format", "openvino", "--out", str(tmp_path / "ir")
    )
    assert done.returncode == 0 and "\r" not in done.stderr
    assert any(line.startswith("INFO qfleet") for line in done.stderr.splitlines())
