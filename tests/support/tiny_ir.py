"""A tiny OpenVINO IR face model built in-process, with the qfleet.json a converted model carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_tiny_ir(directory: Path, *, embedding_size: int = 16, seed: int = 0, kind: str = "fp32") -> Path:
    """A small conv -> relu -> global pool -> matmul embedding model, saved as an IR with qfleet.json.

    Input ``data`` [-1, 3, 112, 112] float32 (raw 0..255 RGB), output ``[-1, embedding_size]``.
    """
    import openvino as ov
    from openvino import opset13 as ops

    from qfleet.model.metadata import library_versions, write_metadata

    rng = np.random.default_rng(seed)
    data = ops.parameter([-1, 3, 112, 112], np.float32, name="data")
    scaled = ops.multiply(ops.subtract(data, np.float32(127.5)), np.float32(1 / 128))
    weights = rng.normal(0, 0.2, size=(8, 3, 3, 3)).astype(np.float32)
    conv = ops.convolution(scaled, weights, [2, 2], [1, 1], [1, 1], [1, 1])
    relu = ops.relu(conv)
    pooled = ops.reduce_mean(relu, np.array([2, 3], dtype=np.int64), keep_dims=False)
    projection = rng.normal(0, 0.5, size=(8, embedding_size)).astype(np.float32)
    embedding = ops.matmul(pooled, projection, False, False)
    embedding.output(0).get_tensor().set_names({"fc1"})
    model = ov.Model([embedding], [data], "tiny_face")
    directory.mkdir(parents=True, exist_ok=True)
    xml = directory / "model.xml"
    ov.save_model(model, xml, compress_to_fp16=False)
    write_metadata(
        directory,
        {
            "kind": kind,
            "precision": kind,
            "inference_precision": "f32",
            "source": {"format": "openvino", "files": {}},
            "input": {"name": "data", "shape": [-1, 3, 112, 112], "layout": "NCHW", "color": "RGB"},
            "output": {"name": "fc1", "shape": [-1, embedding_size]},
            "versions": library_versions(),
        },
    )
    return xml
