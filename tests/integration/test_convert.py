"""Real conversions: MXNet (Symbol API and Gluon), ONNX and IR sources -> FP32 IR, checked numerically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qfleet.model import mxnet_io
from qfleet.model.convert import convert_model
from qfleet.model.mxnet_io import import_mxnet
from qfleet.outputs import sha256_file
from tests.support.mxnet_models import (
    mxnet_forward,
    mxnet_reference,
    save_mobilefacenet,
    save_symbol_checkpoint,
)

#: Numeric comparisons pin f32: OpenVINO defaults to bf16 on CPUs with native bf16.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def faces(batch: int, *, seed: int = 1, size: int = 112) -> np.ndarray:
    """Raw 0..255 RGB NCHW float32, the input every qfleet IR takes."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)


def infer(xml: Path, batch: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", F32)  # a numeric comparison: f32 on any host
    return np.asarray(compiled(batch)[0])


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    # Relative to the output's magnitude: single elements near zero make plain rtol meaningless.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def assert_fp32_weights(xml: Path) -> None:
    text = xml.read_text()
    assert 'element_type="f16"' not in text, "weights were compressed to FP16"
    assert 'element_type="f32"' in text


@pytest.fixture(scope="module")
def symbol_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A training symbol: softmax head + label input beside the fc1 embedding, as insightface saves.
    return save_symbol_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", softmax_head=True)


def test_symbol_api_checkpoint_matches_mxnet(symbol_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ir"
    metadata = convert_model(symbol_checkpoint, fmt="mxnet", out_dir=out)

    xml = out / "model.xml"
    checkpoint = mxnet_io.load_checkpoint(
        mxnet_io.locate_checkpoint(symbol_checkpoint), input_shape=(1, 3, 112, 112)
    )
    for batch in (1, 4):
        data = faces(batch)
        expected = mxnet_reference(symbol_checkpoint, data)
        assert_close(infer(xml, data), expected)
        np.testing.assert_allclose(mxnet_forward(checkpoint, data), expected, rtol=1e-6)
    assert_fp32_weights(xml)

    assert metadata == json.loads((out / "qfleet.json").read_text())
    assert metadata["kind"] == "fp32"
    assert metadata["input"] == {
        "name": "data",
        "shape": [-1, 3, 112, 112],
        "layout": "NCHW",
        "color": "RGB",
        "mean": [],
        "scale": [],
        "model_color": "RGB",
    }
    assert metadata["output"]["shape"] == [-1, 16]
    source = metadata["source"]
    assert source["format"] == "mxnet"
    assert source["epoch"] == 1
    assert source["output"] == "fc1_output"
    assert source["dropped_outputs"] == ["softmax_output", "fc1_grad_output"]
    symbol_file = symbol_checkpoint.with_name("model-symbol.json")
    params_file = symbol_checkpoint.with_name("model-0001.params")
    assert source["files"] == {
        "model-symbol.json": sha256_file(symbol_file),
        "model-0001.params": sha256_file(params_file),
    }
    assert {"mxnet", "onnx", "openvino", "numpy"} <= set(metadata["versions"])
    assert metadata["duration_s"] > 0
    assert metadata["created"].endswith("+00:00")
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml", "qfleet.json"]


def test_independent_gluon_mobilefacenet_matches_mxnet(tmp_path: Path) -> None:
    prefix = tmp_path / "gluon" / "mobilefacenet"
    net = save_mobilefacenet(prefix)
    assert prefix.with_name("mobilefacenet-0000.params").is_file()  # HybridBlock.export's epoch 0

    metadata = convert_model(prefix, fmt="mxnet", out_dir=tmp_path / "ir")

    mx = import_mxnet()
    xml = tmp_path / "ir" / "model.xml"
    for batch in (1, 4):
        data = faces(batch, seed=batch)
        expected = net(mx.nd.array(data)).asnumpy()
        assert_close(infer(xml, data), expected)
    assert metadata["source"]["epoch"] == 0  # the only epoch present
    assert metadata["output"]["shape"] == [-1, 128]
    assert metadata["input"]["shape"] == [-1, 3, 112, 112]
    assert_fp32_weights(xml)


def tiny_onnx(path: Path, *, seed: int = 0, batch: int | str = "N") -> Path:
    """conv -> relu -> global average pool -> flatten -> gemm, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["face", "conv_w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["embedding"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_onnx",
        [helper.make_tensor_value_info("face", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 16])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch_dim", ["N", 1])
def test_onnx_direct_gets_dynamic_batch(tmp_path: Path, batch_dim: int | str) -> None:
    from onnx.reference import ReferenceEvaluator

    source = tiny_onnx(tmp_path / "face.onnx", batch=batch_dim)
    metadata = convert_model(source, fmt="onnx", out_dir=tmp_path / "ir")

    assert metadata["input"]["name"] == "face"
    assert metadata["input"]["shape"] == [-1, 3, 112, 112]
    assert metadata["output"] == {"name": "embedding", "shape": [-1, 16]}
    assert metadata["source"]["files"] == {"face.onnx": sha256_file(source)}
    reference = ReferenceEvaluator(str(source))
    data = faces(4)
    expected = np.concatenate([reference.run(None, {"face": data[i : i + 1]})[0] for i in range(4)])
    assert_close(infer(tmp_path / "ir" / "model.xml", data), expected)


def test_ir_copy_keeps_outputs_and_metadata(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    source = tiny_ir("src", kind="fp32")
    metadata = convert_model(source, fmt="openvino", out_dir=tmp_path / "copy")

    data = faces(3)
    np.testing.assert_array_equal(infer(tmp_path / "copy" / "model.xml", data), infer(source, data))
    assert metadata["kind"] == "fp32"
    assert metadata["source"]["format"] == "openvino"
    assert metadata["source"]["files"] == {
        "model.xml": sha256_file(source),
        "model.bin": sha256_file(source.with_suffix(".bin")),
    }
    assert metadata["source"]["origin"]["format"] == "openvino"  # what the old qfleet.json said
    assert metadata["output"] == {"name": "fc1", "shape": [-1, 16]}
    assert_fp32_weights(tmp_path / "copy" / "model.xml")


def test_mean_scale_bgr_are_baked_in(tmp_path: Path) -> None:
    source = tiny_onnx(tmp_path / "face.onnx")
    plain = convert_model(source, fmt="onnx", out_dir=tmp_path / "plain")
    mean, scale = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    baked = convert_model(source, fmt="onnx", out_dir=tmp_path / "baked", mean=mean, scale=scale, bgr=True)

    assert plain["input"]["model_color"] == "RGB"
    assert baked["input"]["mean"] == list(mean)
    assert baked["input"]["scale"] == list(scale)
    assert baked["input"]["model_color"] == "BGR"
    assert baked["input"]["color"] == "RGB"  # what callers feed
    rgb = faces(2)
    by_hand = (rgb - np.array(mean, np.float32)[:, None, None]) / np.array(scale, np.float32)[:, None, None]
    by_hand = np.ascontiguousarray(by_hand[:, ::-1])  # RGB -> BGR
    assert_close(
        infer(tmp_path / "baked" / "model.xml", rgb), infer(tmp_path / "plain" / "model.xml", by_hand)
    )


def test_cli_convert_with_single_scale(tmp_path: Path) -> None:
    source = tiny_onnx(tmp_path / "face.onnx")
    out = tmp_path / "ir"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "qfleet.cli", "convert", "--source", str(source), "--format", "onnx"),
            *("--mean", "127.5", "--scale", "128", "--out", str(out), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == str(out / "model.xml")
    assert result["input"]["mean"] == [127.5, 127.5, 127.5]
    assert result["input"]["scale"] == [128.0, 128.0, 128.0]
    assert "convert: save" not in done.stderr  # no progress bar off a terminal (a pod's log)
    rgb = faces(1)
    plain = tmp_path / "plain"
    convert_model(source, fmt="onnx", out_dir=plain)
    assert_close(infer(out / "model.xml", rgb), infer(plain / "model.xml", (rgb - 127.5) / 128))


def test_cli_convert_draws_its_stages_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the progress bar names each conversion stage."""
    source = tiny_onnx(tmp_path / "face.onnx")
    primary, secondary = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and a 0-column bar draws nothing.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(primary, 4096):
                chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    env = {key: value for key, value in os.environ.items() if key != "TQDM_DISABLE"}
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "qfleet.cli", "convert", "--source", str(source)),
                *("--format", "onnx"),
                "--out",
                str(tmp_path / "ir"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=secondary,
            env=env,
            timeout=120,
        )
    finally:
        os.close(secondary)
        reader.join(timeout=30)
        os.close(primary)
    assert done.returncode == 0
    assert "convert: save" in b"".join(chunks).decode(errors="replace")


def test_cli_help_lists_formats() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", "convert", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for word in ("--source", "--format", "mxnet", "onnx", "openvino", "--input-shape", "--bgr", "--out"):
        assert word in done.stdout
