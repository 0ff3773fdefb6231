"""``qfleet quantize`` on a tiny IR: plain and accuracy-controlled, and every user error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qfleet.cli import main
from qfleet.lfw.dataset import encode_image, write_lfw_bin

pytest.importorskip("nncf")


def _write_images(folder: Path, count: int, *, low: float, high: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = rng.uniform(low, high, size=(112, 112, 3)).astype(np.uint8)
        (folder / f"face_{index:03d}.png").write_bytes(encode_image(image, "PNG"))
    return folder


@pytest.fixture
def calibration_folder(tmp_path: Path) -> Path:
    return _write_images(tmp_path / "calibration", 6, low=0, high=255)


def _bright_pairs(path: Path, pairs: int = 20, *, seed: int = 1) -> Path:
    """Pairs of bright flat colour crops: a same pair is one image twice, a different pair has
    another dominant channel.

    Every pixel is far above mid-grey. The tiny model tells the colours apart in FP32; calibrated
    on mid-grey crops, its input quantizer's range is tiny, every pixel saturates to the same
    INT8 value and all embeddings become one: only returning the first convolution to floating
    point restores the accuracy.
    """
    rng = np.random.default_rng(seed)

    def render(dominant: int) -> bytes:
        level = rng.uniform(135, 150, size=3)
        level[dominant] = 248
        image = np.broadcast_to(level, (112, 112, 3)) + rng.uniform(-3, 3, size=(112, 112, 3))
        return encode_image(np.clip(image, 0, 255).astype(np.uint8), "PNG")

    images: list[bytes] = []
    issame: list[bool] = []
    for index in range(pairs):
        first = render(index % 3)
        images += [first, first if index % 2 == 0 else render((index + 1) % 3)]
        issame.append(index % 2 == 0)
    write_lfw_bin(path, images, issame)
    return path


def _ops(xml: Path) -> list[str]:
    import openvino as ov

    return [op.get_type_name() for op in ov.Core().read_model(xml).get_ordered_ops()]


def test_quantize_writes_int8_ir_and_metadata(
    tiny_ir: Callable[..., Path], calibration_folder: Path, tmp_path: Path
) -> None:
    from qfleet.model.calibration import calibration_digest
    from qfleet.model.quantize import quantize_model

    out = tmp_path / "int8"
    metadata = quantize_model(
        tiny_ir(), calibration=calibration_folder, out_dir=out, subset_size=4, preset="mixed", progress=False
    )

    assert "FakeQuantize" in _ops(out / "model.xml")
    assert (out / "model.bin").stat().st_size > 0
    written = __import__("json").loads((out / "qfleet.json").read_text())
    assert written == metadata
    assert metadata["kind"] == "int8"
    assert metadata["input"]["name"] == "data"  # copied from the FP32 model's qfleet.json
    quantization = metadata["quantization"]
    assert quantization["isa"] == metadata["isa"]
    assert quantization["preset"] == "mixed"
    assert quantization["subset_size"] == 4
    assert quantization["calibration"] == {
        "path": str(calibration_folder),
        "sha256": calibration_digest(calibration_folder),
        "samples": 4,
    }
    assert quantization["nncf"] and quantization["openvino"]
    assert quantization["duration_s"] > 0
    assert quantization["reverted_layers"] == []


def test_quantize_from_lfw_bin_with_expected_isa(
    tiny_ir: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    lfw = _bright_pairs(tmp_path / "lfw.bin", pairs=5)
    out = tmp_path / "int8"
    code = main(
        [
            *("quantize", "--model", str(tiny_ir()), "--calibration", str(lfw), "--out", str(out)),
            *("--expect-isa", "avx2", "--json", "-q"),
        ]
    )
    assert code == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["isa"] == "avx2"
    assert result["calibration_samples"] == 10
    assert "FakeQuantize" in _ops(out / "model.xml")


def test_expect_isa_mismatch_is_refused_before_anything_is_written(
    tiny_ir: Callable[..., Path],
    calibration_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QFLEET_HOST_ISA", "avx2")
    out = tmp_path / "results" / "int8"
    code = main(
        [
            *("quantize", "--model", str(tiny_ir()), "--calibration", str(calibration_folder)),
            *("--out", str(out), "--expect-isa", "avx512_vnni"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "avx2" in err[0] and "avx512_vnni" in err[0]
    assert "Traceback" not in err[0]
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize(
    "problem", ["missing-model", "empty-folder", "unreadable-image", "missing-calibration"]
)
def test_user_errors_are_one_line_and_leave_no_output(
    problem: str,
    tiny_ir: Callable[..., Path],
    calibration_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tiny_ir()
    calibration = calibration_folder
    expected = ""
    if problem == "missing-model":
        model = tmp_path / "nowhere" / "model.xml"
        expected = str(model)
    elif problem == "empty-folder":
        calibration = tmp_path / "empty"
        calibration.mkdir()
        (calibration / "notes.txt").write_text("no images here")
        expected = "holds no images"
    elif problem == "unreadable-image":
        (calibration_folder / "face_002.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        expected = "face_002.png"
    else:
        calibration = tmp_path / "no-such-calibration"
        expected = str(calibration)
    out = tmp_path / "int8"
    code = main(["quantize", "--model", str(model), "--calibration", str(calibration), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert expected in err[0] and "Traceback" not in err[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".int8")]  # no partial directory


def test_already_quantized_model_is_refused(
    tiny_ir: Callable[..., Path],
    calibration_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qfleet.errors import InputError
    from qfleet.model.quantize import quantize_model

    first = tmp_path / "int8"
    quantize_model(tiny_ir(), calibration=calibration_folder, out_dir=first, progress=False)
    again = tmp_path / "again"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match="already quantized"):
        quantize_model(first / "model.xml", calibration=calibration_folder, out_dir=again, progress=False)
    capsys.readouterr()
    args = ["quantize", "--model", str(first / "model.xml"), "--calibration", str(calibration_folder)]
    code = main([*args, "--out", str(again)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "already quantized" in err[0], err
    # Nothing written by either refusal, not even a staging folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_accuracy_control_reverts_the_layer_that_costs_accuracy(
    tiny_ir: Callable[..., Path], tmp_path: Path
) -> None:
    from qfleet.lfw.dataset import load_lfw_bin
    from qfleet.model.accuracy_control import activation_quantized_ops
    from qfleet.model.embed import validate_model
    from qfleet.model.quantize import quantize_model

    model = tiny_ir()
    lfw = _bright_pairs(tmp_path / "lfw.bin")
    grey = _write_images(tmp_path / "grey", 6, low=126, high=130)
    pairset = load_lfw_bin(lfw)
    fp32_accuracy = validate_model(model, pairset, progress=False)["accuracy"]

    plain = quantize_model(model, calibration=grey, out_dir=tmp_path / "plain", progress=False)
    plain_accuracy = validate_model(tmp_path / "plain" / "model.xml", pairset, progress=False)["accuracy"]
    assert plain["quantization"]["reverted_layers"] == []
    assert fp32_accuracy == 1.0 and plain_accuracy == 0.5  # the set-up really hurts plain INT8

    controlled = quantize_model(
        model, calibration=grey, out_dir=tmp_path / "controlled", max_drop=0.02, lfw=lfw, progress=False
    )
    quantization = controlled["quantization"]
    reverted = quantization["reverted_layers"]
    assert reverted, "NNCF should have returned a layer to floating point"
    import openvino as ov

    plain_ops = activation_quantized_ops(ov.Core().read_model(tmp_path / "plain" / "model.xml"))
    kept_ops = activation_quantized_ops(ov.Core().read_model(tmp_path / "controlled" / "model.xml"))
    assert set(reverted) == plain_ops - kept_ops
    assert any(name.startswith("Convolution") for name in reverted)
    control = quantization["accuracy_control"]
    assert control["max_drop"] == 0.02 and control["pairs"] == 20
    assert control["fp32_accuracy"] == pytest.approx(fp32_accuracy)
    controlled_accuracy = validate_model(tmp_path / "controlled" / "model.xml", pairset, progress=False)[
        "accuracy"
    ]
    assert fp32_accuracy - controlled_accuracy <= 0.02
    assert control["int8_accuracy"] == pytest.approx(controlled_accuracy)


def test_max_drop_needs_lfw(
    tiny_ir: Callable[..., Path], calibration_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_ir()
    capsys.readouterr()
    code = main(
        [
            *("quantize", "--model", str(model), "--calibration", str(calibration_folder)),
            *("--out", str(tmp_path / "o"), "--max-drop", "0.01"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--max-drop and --lfw go together" in err[0], err
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]
