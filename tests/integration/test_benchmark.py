"""``qfleet benchmark`` on a tiny IR: the keys, the numbers' sanity, the options and the errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from qfleet.cli import main

KEYS = {
    "fps",
    "latency_ms_median",
    "streams",
    "infer_requests",
    "isa",
    "seconds",
    "batch",
    "dynamic_batch",
    "precision",
    "model",
    "threads",
    "inferences",
    "inference_precision",
    "runtime_isa",
}


def test_benchmark_reports_every_key(tiny_ir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from qfleet.model.benchmark import benchmark_model

    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    result = benchmark_model(tiny_ir(), seconds=0.3, progress=False)
    assert set(result) == KEYS
    assert result["fps"] > 0 and result["inferences"] > 0
    assert result["fps"] == pytest.approx(result["inferences"] / result["seconds"], rel=0.01)
    assert 0 < result["latency_ms_median"] < 1000 * result["seconds"]
    assert result["streams"] >= 1 and result["infer_requests"] >= 1
    assert result["isa"] == "avx2"
    assert result["precision"] == "fp32" and result["batch"] == 1
    assert result["seconds"] >= 0.3


def test_threads_and_batch_are_applied(tiny_ir: Callable[..., Path]) -> None:
    from qfleet.model.benchmark import benchmark_model

    result = benchmark_model(tiny_ir(), seconds=0.2, threads=1, batch=3, progress=False)
    assert result["threads"] == 1
    assert result["streams"] == 1  # one thread cannot feed more than one stream
    assert result["batch"] == 3
    assert result["fps"] == pytest.approx(3 * result["inferences"] / result["seconds"], rel=0.01)


def test_dynamic_batch_compiles_the_way_the_server_does(
    tiny_ir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--batch 4 --dynamic-batch: a 1..4 batch dimension (as `serve --max-batch 4`), full batches fed."""
    code = main(
        [
            *("benchmark", "--model", str(tiny_ir()), "--seconds", "0.2"),
            *("--batch", "4", "--dynamic-batch", "--json", "-q"),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["batch"] == 4 and result["dynamic_batch"] is True
    assert result["fps"] == pytest.approx(4 * result["inferences"] / result["seconds"], rel=0.01)


def test_precision_comes_from_the_graph_without_metadata(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    from qfleet.model.benchmark import benchmark_model
    from qfleet.model.quantize import quantize_model

    model = tiny_ir()
    calibration = [
        __import__("numpy").full((1, 3, 112, 112), value, dtype="float32") for value in (0, 128, 255)
    ]
    quantize_model(model, calibration=calibration, out_dir=tmp_path / "int8", progress=False)
    (tmp_path / "int8" / "qfleet.json").unlink()
    assert (
        benchmark_model(tmp_path / "int8" / "model.xml", seconds=0.1, progress=False)["precision"] == "int8"
    )
    (model.parent / "qfleet.json").unlink()
    assert benchmark_model(model, seconds=0.1, progress=False)["precision"] == "fp32"


def test_cli_json(tiny_ir: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["benchmark", "--model", str(tiny_ir()), "--seconds", "0.2", "--json", "-q"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert set(json.loads(out[-1])) == KEYS


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seconds", "0"], "--seconds"),
        (["--threads", "0"], "--threads"),
        (["--batch", "0"], "--batch"),
    ],
)
def test_bad_options_are_one_line_errors(
    tiny_ir: Callable[..., Path], capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    code = main(["benchmark", "--model", str(tiny_ir()), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and expected in err[0]


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["benchmark", "--model", str(tmp_path / "absent" / "model.xml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "absent" in err[0]
