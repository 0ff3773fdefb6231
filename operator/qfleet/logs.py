"""Logging for the command line: plain text for people, one JSON object per line for log stores.

In a pod (the operator, a quantization Job, a server) logs go to a collector (Loki, Elasticsearch,
Cloud Logging) that indexes JSON fields; ``--log-format json`` writes each record as one JSON
object with ``time``, ``level``, ``logger`` and ``message`` (plus ``exception`` and the
Kubernetes object kopf attaches to its per-object records). Progress bars are drawn only on a
terminal: in a pod's log a carriage-return bar becomes hundreds of lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS: tuple[str, ...] = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # kopf attaches the object a per-object record is about.
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = {key: ref[key] for key in ("namespace", "name", "kind") if ref.get(key)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(*, level: int, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``.

    Like ``logging.basicConfig``, a no-op when the root logger has handlers already (a test's
    log capture, an embedding program's own setup).
    """
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def progress_wanted(*, quiet: bool, stream: TextIO | None = None) -> bool:
    """Progress bars only for a person watching a terminal, and never with ``--quiet``."""
    target = stream or sys.stderr
    return not quiet and bool(getattr(target, "isatty", lambda: False)())


def disable_progress_bars() -> None:
    """tqdm reads this variable, so bars stay off in every module, NNCF's included."""
    os.environ["TQDM_DISABLE"] = "1"
