"""`qfleet demo`: the main job on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qfleet.cli import main


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
    assert result["demand"]["faces_per_second"] == 64 * 6 * 7
    for precision in ("fp32", "int8"):
        plan = result["plan"][precision]
        assert plan["replicas"] >= 1 and plan["capacity_fps"] >= plan["demand_fps"]
    for path in result["report"].values():
        assert Path(path).stat().st_size > 0
    assert json.loads((out / "demo.json").read_text())["speedup"] == result["speedup"]
    assert "LFW accuracy" in result["table"] and "replicas for demand" in result["table"]
