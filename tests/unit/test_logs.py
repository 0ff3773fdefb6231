"""Logs for people and for log collectors; progress bars only on a terminal."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from qfleet.logs import JsonFormatter, configure_logging, progress_wanted


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("qfleet.test", logging.WARNING, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_a_json_record_is_one_object_on_one_line() -> None:
    text = JsonFormatter().format(record("model %s\nis slow", "x"))
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["level"] == "WARNING" and entry["logger"] == "qfleet.test"
    assert entry["message"] == "model x\nis slow" and entry["time"].endswith("+00:00")


def test_kopfs_object_reference_and_exceptions_become_fields() -> None:
    ref = {"namespace": "faces", "name": "r100", "kind": "QuantizedModel", "uid": "u"}
    failed = record("failed", k8s_ref=ref)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(failed))
    assert entry["object"] == {"namespace": "faces", "name": "r100", "kind": "QuantizedModel"}
    assert "RuntimeError: boom" in entry["exception"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging(level=logging.INFO, log_format="xml")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_never_when_quiet() -> None:
    assert progress_wanted(quiet=False, stream=Terminal())
    assert not progress_wanted(quiet=True, stream=Terminal())
    assert not progress_wanted(quiet=False, stream=io.StringIO())  # a pod's log, a pipe
