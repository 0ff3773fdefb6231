"""Fixtures shared by all tests: tiny OpenVINO IR models built in-process (tests/support/tiny_ir.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.tiny_ir import build_tiny_ir


@pytest.fixture
def tiny_ir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_ir(name="m", **kwargs)`` builds a tiny IR under tmp_path and returns its .xml."""

    def make(name: str = "tiny", **kwargs: object) -> Path:
        return build_tiny_ir(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make
