"""Every way ``qfleet convert`` can be given a bad model: one line naming the input, exit 2, no output.

Each error runs the real command line in a subprocess (as a user would), so the test sees the exit
status, the whole of stderr (no traceback) and the file system afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qfleet.errors import InputError
from qfleet.model.convert import check_input_shape, convert_model, unconverted_operators
from qfleet.model.mxnet_io import import_mxnet, locate_checkpoint, split_source
from tests.support.mxnet_models import save_symbol_checkpoint


def convert_fails(tmp_path: Path, *args: str) -> str:
    """Run ``qfleet convert ARGS --out DIR -q``; assert a clean one-line failure; return that line."""
    out = tmp_path / "converted"
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "convert", *args, "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, f"exit {done.returncode} (a user error is 2): {done.stderr}"
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qfleet convert: error: ")
    assert done.stdout == ""
    assert not out.exists()
    assert not list(tmp_path.glob(".converted.*")), "a staging directory was left behind"
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid tiny checkpoint (epochs 1 and 2) to copy or break."""
    return save_symbol_checkpoint(tmp_path_factory.mktemp("good") / "model", epochs=(1, 2))


def copy_checkpoint(
    good: Path, directory: Path, *, symbol: bool = True, epochs: tuple[int, ...] = (1,)
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if symbol:
        shutil.copy(good.with_name("model-symbol.json"), directory)
    for epoch in epochs:
        shutil.copy(good.with_name(f"model-{epoch:04d}.params"), directory)
    return directory / "model"


# -- MXNet checkpoints --------------------------------------------------------------------------


def test_missing_symbol_file(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m", symbol=False)
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"{prefix}-symbol.json does not exist" in line


def test_missing_params_file(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m", epochs=())
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert "model-0001.params" in line
    assert f"{prefix}-symbol.json" in line


def test_epoch_not_found_lists_the_epochs_present(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m", epochs=(1, 2))
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet", "--epoch", "7")
    assert "epoch 7" in line
    assert "model-0007.params does not exist" in line
    assert "epochs present: 1, 2" in line


def test_corrupt_params(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m", epochs=())
    params = prefix.with_name("model-0001.params")
    params.write_bytes(np.random.default_rng(0).bytes(4096))
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"params file {params} is corrupt or truncated" in line


def test_truncated_params(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m")
    params = prefix.with_name("model-0001.params")
    content = params.read_bytes()
    params.write_bytes(content[: len(content) // 2])
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"params file {params} is corrupt or truncated" in line


def test_params_with_nan_weights(good: Path, tmp_path: Path) -> None:
    mx = import_mxnet()
    prefix = copy_checkpoint(good, tmp_path / "m")
    params = prefix.with_name("model-0001.params")
    loaded = mx.nd.load(str(params))
    loaded["arg:conv0_weight"][0, 0, 0, 0] = float("nan")
    mx.nd.save(str(params), loaded)
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert "'conv0_weight'" in line and str(params) in line and "NaN" in line


def test_params_of_another_model(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m", epochs=())
    other = save_symbol_checkpoint(tmp_path / "other" / "model", embedding=32)
    shutil.copy(other.with_name("model-0001.params"), prefix.parent)
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"params file {prefix}-0001.params does not match symbol {prefix}-symbol.json" in line
    assert "'pre_fc1_weight' has shape 32,6272 in the params but the symbol needs 16,6272" in line


def test_params_missing_a_weight(good: Path, tmp_path: Path) -> None:
    mx = import_mxnet()
    prefix = copy_checkpoint(good, tmp_path / "m")
    params = prefix.with_name("model-0001.params")
    loaded = mx.nd.load(str(params))
    del loaded["arg:conv0_weight"]
    mx.nd.save(str(params), loaded)
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"params file {params} does not match symbol" in line
    assert "lacks parameter 'conv0_weight' (shape 8,3,3,3)" in line


def test_symbol_file_that_is_not_json(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m")
    prefix.with_name("model-symbol.json").write_text("this is not a graph\n")
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert f"symbol file {prefix}-symbol.json is not a valid symbol JSON" in line


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("1,3,64,64", "'pre_fc1_weight' has shape 16,6272 in the params but the symbol needs 16,2048"),
        ("1,1,112,112", "'conv0_weight' has shape 8,3,3,3 in the params but the symbol needs 8,1,3,3"),
        ("1,3,2,2", "Error in operator pool0: kernel size (2) exceeds input"),
    ],
)
def test_wrong_input_shape_for_checkpoint(good: Path, tmp_path: Path, shape: str, expected: str) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m")
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet", "--input-shape", shape)
    assert f"input shape {shape} does not fit MXNet " in line
    assert str(prefix) in line
    assert expected in line
    assert "the weights fit --input-shape 1,3,112,112" in line


def test_malformed_input_shape(good: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(good, tmp_path / "m")
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet", "--input-shape", "1,3,112")
    assert "input shape 1,3,112 is not N,C,H,W" in line


def test_mxnet_operator_without_onnx_export_is_named(tmp_path: Path) -> None:
    prefix = save_symbol_checkpoint(tmp_path / "m" / "model", quadratic=True)
    line = convert_fails(tmp_path, "--source", str(prefix), "--format", "mxnet")
    assert "MXNet operator _contrib_quadratic (node 'odd_quadratic')" in line
    assert f"{prefix}-symbol.json" in line


# -- ONNX and OpenVINO sources -------------------------------------------------------------------


def onnx_with_custom_op(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["data"], ["r"]),
            helper.make_node("FrobnicateFaces", ["r"], ["out"], domain="com.example.faces"),
        ],
        "custom",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 112, 112])],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.example.faces", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_operator_openvino_cannot_convert_is_named(tmp_path: Path) -> None:
    source = onnx_with_custom_op(tmp_path / "custom.onnx")
    line = convert_fails(tmp_path, "--source", str(source), "--format", "onnx")
    assert (
        f"OpenVINO cannot convert operator com.example.faces.FrobnicateFaces in ONNX model {source}" in line
    )


def test_wrong_input_shape_for_onnx(good: Path, tmp_path: Path) -> None:
    from qfleet.model import mxnet_io

    files = mxnet_io.locate_checkpoint(good)
    checkpoint = mxnet_io.load_checkpoint(files, input_shape=(1, 3, 112, 112))
    source = mxnet_io.export_onnx(checkpoint, tmp_path / "face.onnx")
    line = convert_fails(tmp_path, "--source", str(source), "--format", "onnx", "--input-shape", "1,3,64,64")
    assert f"input shape 1,3,64,64 does not fit model {source} (its input is ?,3,112,112)" in line


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_file_that_is_not_a_model(tmp_path: Path, fmt: str) -> None:
    name = "face.onnx" if fmt == "onnx" else "model.xml"
    source = tmp_path / name
    source.write_text("not a model at all\n")
    if fmt == "openvino":
        source.with_suffix(".bin").write_bytes(b"\0" * 64)
    line = convert_fails(tmp_path, "--source", str(source), "--format", fmt)
    assert str(source) in line
    assert "is not an ONNX model" in line if fmt == "onnx" else "is not an OpenVINO IR" in line


def test_missing_onnx_file(tmp_path: Path) -> None:
    line = convert_fails(tmp_path, "--source", str(tmp_path / "nope.onnx"), "--format", "onnx")
    assert f"ONNX model {tmp_path / 'nope.onnx'} does not exist" in line


def test_out_dir_holding_the_source_is_refused(tiny_ir: Callable[..., Path]) -> None:
    source = tiny_ir("m")
    before = sorted(p.name for p in source.parent.iterdir())
    with pytest.raises(InputError, match=f"--out {source.parent} holds the source file {source}") as refused:
        convert_model(source, fmt="openvino", out_dir=source.parent)
    assert refused.value.exit_code == 2  # what `qfleet convert` exits with
    assert sorted(p.name for p in source.parent.iterdir()) == before


def test_preprocessing_is_not_baked_twice(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    convert_model(tiny_ir("m"), fmt="openvino", out_dir=tmp_path / "once", mean=[127.5], scale=[128])
    with pytest.raises(InputError, match="already has preprocessing baked in"):
        convert_model(tmp_path / "once" / "model.xml", fmt="openvino", out_dir=tmp_path / "twice", bgr=True)
    assert not (tmp_path / "twice").exists()
    # A plain copy keeps the record of what the first conversion baked in.
    copied = convert_model(tmp_path / "once", fmt="openvino", out_dir=tmp_path / "copy")
    assert copied["input"]["mean"] == [127.5] * 3 and copied["input"]["scale"] == [128.0] * 3


# -- Pure helpers --------------------------------------------------------------------------------


def test_split_source_accepts_prefix_files_and_directory(tmp_path: Path) -> None:
    (tmp_path / "arc-symbol.json").write_text("{}")
    assert split_source(tmp_path / "arc") == (tmp_path / "arc", None)
    assert split_source(tmp_path / "arc-symbol.json") == (tmp_path / "arc", None)
    assert split_source(tmp_path / "arc-0012.params") == (tmp_path / "arc", 12)
    assert split_source(tmp_path) == (tmp_path / "arc", None)
    (tmp_path / "other-symbol.json").write_text("{}")
    with pytest.raises(InputError, match=r"2 \*-symbol\.json files"):
        split_source(tmp_path)


def test_default_epoch_is_1_else_the_only_one(tmp_path: Path) -> None:
    (tmp_path / "m-symbol.json").write_text("{}")
    for epoch in (0, 3):
        (tmp_path / f"m-{epoch:04d}.params").write_bytes(b"x")
    (tmp_path / "m-extra-0001.params").write_bytes(b"x")  # another prefix's epoch: not ours
    with pytest.raises(InputError, match=r"several epochs \(0, 3\) and none is 1"):
        locate_checkpoint(tmp_path / "m")
    assert locate_checkpoint(tmp_path / "m", epoch=3).params == tmp_path / "m-0003.params"
    (tmp_path / "m-0001.params").write_bytes(b"x")
    assert locate_checkpoint(tmp_path / "m").epoch == 1
    (tmp_path / "n-symbol.json").write_text("{}")
    (tmp_path / "n-0000.params").write_bytes(b"x")
    assert locate_checkpoint(tmp_path / "n").epoch == 0


def test_unconverted_operators_are_parsed_from_openvino_summary() -> None:
    message = (
        "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\nSummary:\n"
        "-- No conversion rule found for operations: Frobnicate-13, com.example.Odd\n"
        "-- Conversion is failed for: Frobnicate-13\n"
    )
    assert unconverted_operators(message) == ["Frobnicate", "com.example.Odd"]
    assert unconverted_operators("something else entirely") == []


@pytest.mark.parametrize("shape", [(1, 3, 112), (1, 3, 0, 112), (1, 3, 112, 112, 1), (1.0, 3, 112, 112)])
def test_check_input_shape_rejects(shape: tuple[float, ...]) -> None:
    with pytest.raises(InputError, match="not N,C,H,W") as refused:
        check_input_shape(shape)  # type: ignore[arg-type]
    assert refused.value.exit_code == 2
    assert check_input_shape((2, 3, 112, 96)) == (2, 3, 112, 96)
