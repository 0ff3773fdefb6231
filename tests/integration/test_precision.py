"""FP32 means FP32 on every CPU: every compile names its precision, and a precision the host
cannot compute is an error, never a silent f32 (or bf16) under another name.

The bf16 refusals run in a subprocess whose OpenVINO kernels are capped at AVX2
(``ONEDNN_MAX_CPU_ISA``), which has no bf16 on any host: the tests pass on AVX2-only, AVX-512
VNNI and bf16/AMX machines alike. Checks that need native bf16 skip where it is missing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qfleet import isa
from qfleet.errors import InputError, IsaMismatchError
from qfleet.model.benchmark import benchmark_model
from qfleet.model.metadata import read_metadata, write_metadata
from qfleet.model.runtime import (
    compile_model,
    inference_precision_of,
    native_bf16,
    recorded_variant,
)
from qfleet.serving.engine import check_serving_isa

#: A subprocess with no bf16 kernels on any x86 host.
NO_BF16 = isa.kernel_cap_env("avx2")
needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="OpenVINO has no native bf16 on this host")


def qfleet(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qfleet.cli", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_fp32_compiles_in_f32_and_says_which_kernels(tiny_ir: Callable[..., Path]) -> None:
    variant = compile_model(tiny_ir(), precision="fp32")
    assert variant.inference_precision == "f32"
    assert variant.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert isa.tier_of_runtime_isa(variant.runtime_isa) is not None, variant.runtime_isa
    assert variant.describe() == {
        "precision": "fp32",
        "inference_precision": "f32",
        "runtime_isa": variant.runtime_isa,
    }


def test_benchmark_of_an_fp32_ir_reports_f32(tiny_ir: Callable[..., Path]) -> None:
    result = benchmark_model(tiny_ir(), seconds=0.2, progress=False)
    assert result["precision"] == "fp32" and result["inference_precision"] == "f32"
    assert result["runtime_isa"]


def test_precision_names_are_checked() -> None:
    assert [inference_precision_of(p) for p in ("fp32", "int8", "bf16")] == ["f32", "f32", "bf16"]
    assert inference_precision_of("int8", float_precision="bf16") == "bf16"
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        inference_precision_of("fp16")
    with pytest.raises(InputError, match="fp32 model computes in f32"):
        inference_precision_of("fp32", float_precision="bf16")


def test_asking_for_int8_on_an_fp32_graph_is_an_error(tiny_ir: Callable[..., Path]) -> None:
    with pytest.raises(InputError, match="not quantized"):
        benchmark_model(tiny_ir(), seconds=0.1, precision="int8", progress=False)


def test_bf16_where_the_host_has_none_is_an_error_not_f32(tiny_ir: Callable[..., Path]) -> None:
    xml = tiny_ir()
    done = qfleet("benchmark", "--model", str(xml), "--seconds", "0.1", "--precision", "bf16", env=NO_BF16)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "bf16" in line and "f32" in line and "qfleet isa" in done.stderr


def test_expect_isa_avx512_bf16_without_bf16_is_refused(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    # The node claims the bf16 tier, but its kernels cannot compute bf16: nothing is quantized.
    out = tmp_path / "int8"
    env = {**NO_BF16, isa.OVERRIDE_ENV: "avx512_bf16"}
    done = qfleet(
        "quantize",
        "--model",
        str(tiny_ir()),
        "--calibration",
        str(tmp_path),
        "--out",
        str(out),
        "--expect-isa",
        "avx512_bf16",
        env=env,
    )
    assert done.returncode == 3
    assert "avx512_bf16" in one_error_line(done) and "bf16" in one_error_line(done)
    assert not out.exists()


def bf16_artifact(tiny_ir: Callable[..., Path], tier: str) -> Path:
    xml = tiny_ir("bf16")
    metadata = read_metadata(xml) | {"precision": "bf16", "inference_precision": "bf16", "isa": tier}
    write_metadata(xml.parent, metadata)
    return xml


def test_a_bf16_variant_is_refused_on_a_host_without_bf16(tiny_ir: Callable[..., Path]) -> None:
    xml = bf16_artifact(tiny_ir, "avx512_bf16")
    env = {**NO_BF16, isa.OVERRIDE_ENV: "avx512_bf16"}
    done = qfleet("serve", "--model", str(xml), "--port", "0", "--json", env=env)
    assert done.returncode == 3
    line = one_error_line(done)
    assert "bf16" in line and "avx512_bf16" in line and "--allow-isa-mismatch" in done.stderr


def test_allow_isa_mismatch_serves_a_bf16_variant_in_f32_with_a_warning(
    tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(isa.OVERRIDE_ENV, "avx512_bf16")
    xml = bf16_artifact(tiny_ir, "avx512_bf16")
    with caplog.at_level(logging.WARNING):
        plan = check_serving_isa(xml, read_metadata(xml), allow_mismatch=True, host_native_bf16=lambda: False)
    assert (plan.isa, plan.precision, plan.float_precision) == ("avx512_bf16", "fp32", "f32")
    assert any("no native bf16" in record.getMessage() for record in caplog.records)
    with pytest.raises(IsaMismatchError, match="no native bf16"):
        check_serving_isa(xml, read_metadata(xml), allow_mismatch=False, host_native_bf16=lambda: False)


def test_an_artifact_without_recorded_precision_is_treated_as_f32(
    tiny_ir: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    xml = tiny_ir("old", kind="int8")
    metadata = read_metadata(xml)
    for key in ("precision", "inference_precision"):
        metadata.pop(key)
    with caplog.at_level(logging.WARNING):
        assert recorded_variant(metadata, xml) == ("int8", "f32", False)
    assert any("records no precision" in record.getMessage() for record in caplog.records)
    assert recorded_variant({"kind": "fp32", "precision": "fp32"}) == ("fp32", "f32", True)


@needs_bf16
def test_bf16_compiles_in_bf16_where_native(tiny_ir: Callable[..., Path]) -> None:
    xml = tiny_ir()
    assert compile_model(xml, precision="bf16").inference_precision == "bf16"
    assert compile_model(xml, precision="fp32").inference_precision == "f32"
    assert compile_model(xml, precision="int8", float_precision="bf16").inference_precision == "bf16"


def test_convert_records_how_the_fp32_model_ran(tmp_path: Path, tiny_ir: Callable[..., Path]) -> None:
    out = tmp_path / "converted"
    done = qfleet("convert", "--source", str(tiny_ir()), "--format", "openvino", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    metadata = json.loads((out / "qfleet.json").read_text())
    assert metadata["precision"] == "fp32" and metadata["inference_precision"] == "f32"
    assert isa.tier_of_runtime_isa(metadata["runtime_isa"]) is not None


def test_a_corrupt_ir_given_to_serve_is_a_one_line_error(tiny_ir: Callable[..., Path]) -> None:
    xml = tiny_ir()
    xml.write_text(xml.read_text()[: len(xml.read_text()) // 2])  # truncated XML
    done = qfleet("serve", "--model", str(xml), "--port", "0", "--json")
    assert done.returncode == 2
    line = one_error_line(done)
    assert str(xml) in line and "not a readable OpenVINO IR" in line
