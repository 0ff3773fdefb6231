"""The same-ISA guard: an INT8 model serves only on the ISA tier it was quantized on."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qfleet.errors import IsaMismatchError
from qfleet.model.metadata import read_metadata, write_metadata
from qfleet.serving.server import ServerConfig, load_engine


def int8_model(tiny_ir: Callable[..., Path], isa: str | None) -> Path:
    xml = tiny_ir("int8", kind="int8")
    metadata = read_metadata(xml)
    if isa is not None:
        metadata["isa"] = isa
        metadata["quantization"] = {"isa": isa, "preset": "performance"}
    write_metadata(xml.parent, metadata)
    return xml


def test_int8_model_of_another_tier_is_refused(
    tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    xml = int8_model(tiny_ir, "amx_int8")
    with pytest.raises(IsaMismatchError) as raised:
        load_engine(ServerConfig(model_xml=xml))
    message = str(raised.value)
    assert "amx_int8" in message and "avx2" in message
    assert "--allow-isa-mismatch" in message


def test_allow_isa_mismatch_serves_with_a_warning(
    tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    xml = int8_model(tiny_ir, "amx_int8")
    with caplog.at_level(logging.WARNING):
        engine, metrics, info = load_engine(ServerConfig(model_xml=xml, allow_isa_mismatch=True))
    engine.close()
    assert info["isa"] == "amx_int8" and info["kind"] == "int8"
    assert any(
        "amx_int8" in record.getMessage() and "avx2" in record.getMessage() for record in caplog.records
    )
    assert 'isa="amx_int8",kind="int8"' in metrics.exposition().decode()


@pytest.mark.parametrize(("model_isa", "host_isa"), [("avx2", "avx2"), ("avx512_vnni", "avx512_vnni")])
def test_int8_model_on_its_own_tier_serves(
    tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, model_isa: str, host_isa: str
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", host_isa)
    engine, _, info = load_engine(ServerConfig(model_xml=int8_model(tiny_ir, model_isa)))
    engine.close()
    assert info["isa"] == model_isa


def test_fp32_model_serves_on_any_tier(tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "amx_int8")
    engine, _, info = load_engine(ServerConfig(model_xml=tiny_ir("fp32")))
    engine.close()
    assert info["isa"] == "any"


def test_cli_refuses_with_one_line_and_exit_3(tiny_ir: Callable[..., Path]) -> None:
    xml = int8_model(tiny_ir, "amx_int8")
    env = {**os.environ, "QFLEET_HOST_ISA": "avx2"}
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(xml), "--port", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1
    assert "amx_int8" in error_lines[0] and "avx2" in error_lines[0]
    assert json.loads(done.stdout.splitlines()[-1])["error"]["stage"] == "serve"
