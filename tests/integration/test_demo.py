"""`qfleet demo`: the main job on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qfleet import isa
from qfleet.cli import main
from qfleet.commands.demo import DEFAULT_CAMERAS
from qfleet.model.runtime import native_bf16
from qfleet.report import precisions, render_table, summary_rows, write_report


def test_demo_runs_the_whole_chain_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert (
        main(
            ["demo", "--out", str(out), "--benchmark-seconds", "1", "--faces-per-frame", "7", "--json", "-q"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The shipped model separates unseen synthetic identities, so the gate means something.
    assert result["fp32"]["accuracy"] >= 0.95
    assert result["gate"]["passed"] is True
    assert result["int8"]["fps"] > 0 and result["fp32"]["fps"] > 0
    assert result["size_mb"]["int8"] < result["size_mb"]["fp32"]
    assert result["demand"]["faces_per_second"] == DEFAULT_CAMERAS * 6 * 7
    # Each replica is one core, so the plan does not depend on how many cores this machine has.
    assert result["threads"] == 1
    # FP32 is computed in f32 on every host; INT8's float part too.
    assert (result["fp32"]["precision"], result["fp32"]["inference_precision"]) == ("fp32", "f32")
    assert (result["int8"]["precision"], result["int8"]["inference_precision"]) == ("int8", "f32")
    assert isa.tier_of_runtime_isa(result["runtime_isa"]) is not None, result["runtime_isa"]
    # BF16 is measured exactly where the plugin computes bf16 natively.
    expected = ["fp32", "bf16", "int8"] if native_bf16() else ["fp32", "int8"]
    assert precisions(result) == expected
    assert set(result["plan"]) == set(result["size_mb"]) == set(expected)
    assert set(result["speedup"]) == {f"int8_vs_{p}" for p in expected if p != "int8"}
    for precision in expected:
        plan = result["plan"][precision]
        assert plan["capacity_fps"] >= plan["demand_fps"] == result["demand"]["faces_per_second"]
        assert plan["replicas"] >= 1
    # The demo's load needs several FP32 replicas (how many depends on the host).
    assert result["plan"]["fp32"]["replicas"] >= 2
    # More FPS never needs more replicas (which variant is faster is the host's business).
    faster, slower = sorted(("fp32", "int8"), key=lambda p: result[p]["fps"], reverse=True)
    assert result["plan"][faster]["replicas"] <= result["plan"][slower]["replicas"]
    for path in result["report"].values():
        assert Path(path).stat().st_size > 0
    assert json.loads((out / "demo.json").read_text())["speedup"] == result["speedup"]
    table = result["table"]
    assert "LFW accuracy" in table and "replicas for demand" in table and "computed in" in table
    assert ("BF16" in table.splitlines()[2]) is native_bf16()


def fake_result(*, bf16: bool) -> dict[str, Any]:
    """A demo result shaped like the pipeline's (with the demo's additions), no model run."""

    def block(precision: str, inference: str, fps: float) -> dict[str, Any]:
        return {
            "precision": precision,
            "inference_precision": inference,
            "accuracy": 0.99,
            "accuracy_std": 0.01,
            "threshold": 1.0,
            "fps": fps,
            "latency_ms_median": 1000 / fps,
        }

    def plan(fps: float) -> dict[str, Any]:
        return {"replicas": -(-21000 // int(fps * 0.8)), "capacity_fps": 21000.0, "demand_fps": 21000.0}

    result: dict[str, Any] = {
        "isa": "avx512_bf16" if bf16 else "avx2",
        "runtime_isa": "Intel AVX-512 with Intel DL Boost and bfloat16 support" if bf16 else "Intel AVX2",
        "pairs": 600,
        "threads": 1,
        "fp32": block("fp32", "f32", 600.0),
        "int8": block("int8", "f32", 1800.0) | {"reverted_layers": 0},
        "gate": {"passed": True, "drop": 0.0, "reason": "Passed"},
        "demand": {
            "cameras": 500,
            "camera_fps": 6.0,
            "faces_per_frame": 7.0,
            "faces_per_second": 21000.0,
            "utilization": 0.8,
        },
        "plan": {"fp32": plan(600.0), "int8": plan(1800.0)},
        "size_mb": {"fp32": 4.33, "int8": 1.09},
        "speedup": {"int8_vs_fp32": 3.0},
    }
    if bf16:
        result["bf16"] = block("bf16", "bf16", 1200.0) | {
            "gate": {"passed": True, "drop": 0.0017, "reason": "Passed"}
        }
        result["plan"]["bf16"] = plan(1200.0)
        result["size_mb"]["bf16"] = 4.33
        result["speedup"]["int8_vs_bf16"] = 1.5
    return result


def test_table_on_a_bf16_host_has_fp32_bf16_and_int8_columns() -> None:
    result = fake_result(bf16=True)
    rows = {row[0]: row[1:] for row in summary_rows(result)}
    assert rows[""] == ("FP32", "BF16", "INT8")
    assert rows["computed in"] == ("f32", "bf16", "int8 + f32")
    assert rows["speed-up vs FP32"] == ("1.00x", "2.00x", "3.00x")
    assert rows["INT8 speed-up vs BF16"] == ("", "", "1.50x")
    assert rows["accuracy drop vs FP32"] == ("", "+0.0017 (Passed)", "+0.0000 (Passed)")
    assert rows["replicas for demand"] == ("44", "22", "15")
    table = render_table(result)
    assert "no BF16 column" not in table and "Intel AVX-512 with Intel DL Boost and bfloat16" in table


def test_table_elsewhere_has_fp32_and_int8_and_says_why_no_bf16() -> None:
    result = fake_result(bf16=False)
    rows = {row[0]: row[1:] for row in summary_rows(result)}
    assert rows[""] == ("FP32", "INT8")
    assert rows["computed in"] == ("f32", "int8 + f32")
    assert "INT8 speed-up vs BF16" not in rows
    table = render_table(result)
    assert "no BF16 column: this CPU has no native bf16" in table
    assert "each replica 1 CPU core" in table


def test_report_files_follow_the_columns(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = write_report(tmp_path, fake_result(bf16=True))
    page = Path(paths["html"]).read_text()
    assert "<th>FP32</th><th>BF16</th><th>INT8</th>" in page and "<td>int8 + f32</td>" in page
    assert Path(paths["png"]).stat().st_size > 0
