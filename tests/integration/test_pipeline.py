"""`qfleet pipeline` end to end on a tiny model: what a quantization Job runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qfleet import isa
from qfleet.cli import main
from qfleet.lfw.dataset import encode_image, write_lfw_bin
from qfleet.model.runtime import native_bf16
from qfleet.pipeline import TERMINATION_MESSAGE_LIMIT, write_bf16_artifact
from tests.support.operator_fixtures import write_datasets


@pytest.fixture
def face_data(tmp_path: Path) -> dict[str, Path]:
    """A 20-pair lfw.bin and a 12-image calibration folder of random smooth crops."""
    rng = np.random.default_rng(7)

    def crop() -> np.ndarray:
        coarse = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float32)
        return np.kron(coarse, np.ones((14, 14, 1))).astype(np.uint8)

    images = [encode_image(crop(), "PNG") for _ in range(40)]
    lfw = tmp_path / "lfw.bin"
    write_lfw_bin(lfw, images, [i % 2 == 0 for i in range(20)])
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index in range(12):
        (calibration / f"face_{index:02d}.png").write_bytes(encode_image(crop(), "PNG"))
    return {"lfw": lfw, "calibration": calibration}


@pytest.fixture
def separable_data(tmp_path: Path) -> dict[str, Path]:
    """40 pairs the tiny model tells apart (12 structured faces, same pairs jittered) and 8 of
    those faces for calibration: FP32 accuracy is far above chance, so a drop means something."""
    data = write_datasets(tmp_path / "data")
    return {"lfw": data / "lfw.bin", "calibration": data / "calib"}


#: How much LFW accuracy the tiny model's INT8 may lose against its FP32 on ``separable_data``: two
#: of its 40 pairs. Measured on an AVX2 host: FP32 1.0 and INT8 1.0 (tiny models of seeds 0, 1, 2),
#: so the bound leaves room for another ISA's rounding; a quantizer that collapses the embeddings
#: (as in test_quantize.py's accuracy-control set-up) scores 0.5 and fails it.
INT8_TOLERANCE = 0.05


def _pipeline_argv(source: Path, data: dict[str, Path], out: Path, log: Path, *extra: str) -> list[str]:
    return [
        "pipeline",
        "--source",
        str(source),
        "--format",
        "openvino",
        "--calibration",
        str(data["calibration"]),
        "--lfw",
        str(data["lfw"]),
        "--out",
        str(out),
        "--subset-size",
        "12",
        "--benchmark-seconds",
        "0.5",
        "--termination-log",
        str(log),
        "--json",
        "-q",
        *extra,
    ]


def test_pipeline_writes_artifacts_and_a_valid_termination_message(
    tiny_ir: Callable[..., Path],
    separable_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    out, log = tmp_path / "out", tmp_path / "termination-log"
    # A gate this loose always passes: the accuracy is checked below, against a stated tolerance.
    argv = _pipeline_argv(tiny_ir(), separable_data, out, log, "--expect-isa", "avx2", "--max-drop", "0.5")
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    message = log.read_text()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    result = json.loads(message)
    assert result["isa"] == "avx2" and "error" not in result
    assert result["artifact"] == str(out / "int8" / "model.xml") and Path(result["artifact"]).is_file()
    assert Path(result["fp32_artifact"]).is_file()
    for precision in ("fp32", "int8"):
        assert 0.0 <= result[precision]["accuracy"] <= 1.0 and result[precision]["fps"] > 0
    assert result["fp32"]["accuracy"] >= 0.9, result["fp32"]  # far from chance: the bound below bites
    assert result["int8"]["accuracy"] >= result["fp32"]["accuracy"] - INT8_TOLERANCE, (
        result["fp32"],
        result["int8"],
    )
    assert result["gate"]["passed"] is True and result["gate"]["reason"] == "Passed"
    assert result["gate"]["drop"] == pytest.approx(
        result["fp32"]["accuracy"] - result["int8"]["accuracy"], abs=1e-6
    )
    assert printed["artifact"] == result["artifact"]
    int8_meta = json.loads((out / "int8" / "qfleet.json").read_text())
    assert int8_meta["kind"] == "int8" and int8_meta["isa"] == "avx2"
    # Precision is part of every number: asked and used, per block and per artifact.
    assert result["fp32"]["precision"] == "fp32" and result["fp32"]["inference_precision"] == "f32"
    assert result["int8"]["precision"] == "int8" and result["int8"]["inference_precision"] == "f32"
    assert int8_meta["precision"] == "int8" and int8_meta["inference_precision"] == "f32"
    fp32_meta = json.loads((out / "fp32" / "qfleet.json").read_text())
    assert fp32_meta["precision"] == "fp32" and fp32_meta["inference_precision"] == "f32"
    # The avx2 tier has no native bf16, so there is no BF16 variant, whatever this host has.
    assert "bf16" not in result and "bf16_artifact" not in result and not (out / "bf16").exists()
    assert set(result["speedup"]) == {"int8_vs_fp32"}
    assert result["runtime_isa"] and json.loads((out / "validation-fp32.json").read_text())["runtime_isa"]
    for name in ("result.json", "validation-fp32.json", "validation-int8.json", "benchmark-int8.json"):
        assert (out / name).is_file(), name


def test_benchmark_batch_adds_the_int8_fps_at_the_serving_batch(
    tiny_ir: Callable[..., Path],
    separable_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, log = tmp_path / "out", tmp_path / "termination-log"
    argv = _pipeline_argv(tiny_ir(), separable_data, out, log, "--max-drop", "0.5", "--benchmark-batch", "4")
    assert main(argv) == 0
    result = json.loads(log.read_text())
    assert result["int8"]["batch"] == 4 and result["int8"]["batch_fps"] > 0
    assert result["int8"]["batch_latency_ms_median"] > 0
    benchmark = json.loads((out / "benchmark-int8-batch4.json").read_text())
    assert benchmark["batch"] == 4 and benchmark["dynamic_batch"] is True
    assert "decode-lfw" in result["timings"]


def test_failed_gate_is_not_a_failed_job(
    tiny_ir: Callable[..., Path], face_data: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "log"
    # No model reaches 1.0 on random pairs, so a minimum accuracy of 1.0 must fail the gate.
    argv = _pipeline_argv(tiny_ir(), face_data, tmp_path / "out", log, "--min-accuracy", "1.0")
    assert main(argv) == 0
    gate = json.loads(log.read_text())["gate"]
    assert gate["passed"] is False and gate["reason"] == "BelowMinimumAccuracy"


def test_a_failing_stage_is_named_and_nothing_is_left_behind(
    tiny_ir: Callable[..., Path],
    face_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty-calibration"
    empty.mkdir()
    out, log = tmp_path / "out", tmp_path / "log"
    argv = _pipeline_argv(tiny_ir(), face_data | {"calibration": empty}, out, log)
    assert main(argv) == 2  # bad input: the Job must not retry
    result = json.loads(log.read_text())
    assert result["error"]["stage"] == "quantize" and result["error"]["exit_code"] == 2
    assert "empty-calibration" in result["error"]["message"]
    assert "stage quantize" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["empty-calibration", "log", "lfw.bin", "calibration", "tiny"]
    )


def test_wrong_isa_is_refused_before_any_work(
    tiny_ir: Callable[..., Path], face_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    log = tmp_path / "log"
    assert main(_pipeline_argv(tiny_ir(), face_data, tmp_path / "out", log, "--expect-isa", "amx_int8")) == 3
    error = json.loads(log.read_text())["error"]
    assert error["stage"] == "isa" and "avx2" in error["message"] and "amx_int8" in error["message"]
    assert json.loads(log.read_text())["timings"].keys() == {"isa"}


@pytest.mark.skipif(not native_bf16(), reason="OpenVINO has no native bf16 on this host")
def test_a_bf16_tier_measures_fp32_bf16_and_int8(
    tiny_ir: Callable[..., Path], face_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = isa.detect_host_tier()
    if not isa.has_native_bf16(tier):
        pytest.skip(f"this host's tier {tier} is not a bf16 tier")
    out, log = tmp_path / "out", tmp_path / "log"
    assert main(_pipeline_argv(tiny_ir(), face_data, out, log, "--max-drop", "0.5")) == 0
    message = log.read_text()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    result = json.loads(message)
    assert result["fp32"]["inference_precision"] == "f32"  # the gate's baseline is never bf16
    assert result["bf16"]["precision"] == "bf16" and result["bf16"]["inference_precision"] == "bf16"
    assert set(result["speedup"]) == {"int8_vs_fp32", "int8_vs_bf16"}
    assert result["bf16"]["gate"]["passed"] in (True, False)
    bf16_meta = json.loads((out / "bf16" / "qfleet.json").read_text())
    assert bf16_meta["precision"] == "bf16" and bf16_meta["isa"] == tier
    assert (out / "bf16" / "model.bin").read_bytes() == (out / "fp32" / "model.bin").read_bytes()


def test_bf16_artifact_is_the_fp32_ir_recorded_as_bf16(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    fp32_dir = tiny_ir("fp32").parent
    validation = {
        "inference_precision": "bf16",
        "runtime_isa": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
    }
    write_bf16_artifact(fp32_dir, tmp_path / "bf16", validation, isa_tier="avx512_bf16")
    metadata = json.loads((tmp_path / "bf16" / "qfleet.json").read_text())
    assert metadata["precision"] == "bf16" and metadata["inference_precision"] == "bf16"
    assert metadata["isa"] == "avx512_bf16" and metadata["kind"] == "fp32"
    assert (tmp_path / "bf16" / "model.xml").read_bytes() == (fp32_dir / "model.xml").read_bytes()
    assert json.loads((fp32_dir / "qfleet.json").read_text())["precision"] == "fp32"  # untouched
