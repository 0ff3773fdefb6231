"""Inputs for the operator's integration tests: a tiny model, LFW pairs, calibration faces."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from qfleet.lfw.dataset import encode_image, write_lfw_bin
from tests.support.cluster import Cluster, Emulator, running_cluster

NAMESPACE = "faces"


def _face(index: int) -> np.ndarray:
    """A structured 112x112 "face": its own colour and stripes, so the tiny model tells them apart."""
    rng = np.random.default_rng(100 + index)
    colour = rng.integers(0, 255, 3)
    yy, xx = np.mgrid[0:112, 0:112]
    pattern = (np.sin(xx / (5 + index)) * 60 + np.cos(yy / (7 + 2 * index)) * 60)[..., None]
    return np.clip(colour[None, None, :] + pattern, 0, 255).astype(np.uint8)


def write_datasets(folder: Path) -> Path:
    """The "data" claim: model/ and model-v2/ (tiny IRs), lfw.bin (easy pairs), lfw-hard.bin, calib/."""
    from tests.support.tiny_ir import build_tiny_ir

    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_ir(folder / "model")
    # A second source model (the same weights under another name: a new pipeline key).
    build_tiny_ir(folder / "model-v2")
    rng = np.random.default_rng(0)
    faces = [_face(index) for index in range(12)]
    images: list[bytes] = []
    issame: list[bool] = []
    for pair in range(40):
        first = faces[pair % 12]
        same = pair % 2 == 0
        jitter = rng.integers(-8, 8, first.shape)
        second = (
            np.clip(first.astype(int) + jitter, 0, 255).astype(np.uint8) if same else faces[(pair + 5) % 12]
        )
        images += [encode_image(first), encode_image(second)]
        issame.append(same)
    write_lfw_bin(folder / "lfw.bin", images, issame)
    # Noise "faces": no model tells these pairs apart, so accuracy stays near chance (50%).
    noise = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(40)]
    write_lfw_bin(
        folder / "lfw-hard.bin", [encode_image(image) for image in noise], [i % 2 == 0 for i in range(20)]
    )
    calibration = folder / "calib"
    calibration.mkdir(exist_ok=True)
    for index, face in enumerate(faces[:8]):
        (calibration / f"face{index}.jpg").write_bytes(encode_image(face))
    return folder


def model_body(
    name: str,
    *,
    targets: tuple[str, ...] = ("avx2",),
    cameras: int = 8,
    namespace: str = NAMESPACE,
    **spec_overrides: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"format": "openvino", "uri": "pvc://data/model/model.xml"},
        "quantization": {"calibration": "pvc://data/calib", "subsetSize": 8},
        "validation": {"lfw": "pvc://data/lfw.bin", "maxDrop": 0.02},
        "targets": [{"isa": tier} for tier in targets],
        "serving": {"resources": {"limits": {"cpu": "1"}}, "minReplicas": 1, "maxReplicas": 6},
        # About 500 faces/s per camera: a few cameras fill a replica of the tiny model.
        "demand": {"cameras": cameras, "cameraFps": 25, "facesPerFrame": 40, "targetUtilization": 0.8},
        "artifacts": {"uri": "pvc://models/qfleet"},
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": "qfleet.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def expected_replicas(status: dict[str, Any], spec: dict[str, Any], isa: str) -> int:
    """Replicas for a single-target model, from the FPS the operator recorded (fill placement)."""
    demand = spec["demand"]
    faces = demand["cameras"] * demand["cameraFps"] * demand["facesPerFrame"]
    variant = next(v for v in status["variants"] if v["isa"] == isa)
    fps = variant["served"]["fpsPerReplica"] * demand.get("targetUtilization", 0.8)
    needed = math.ceil(round(faces / fps, 9)) if faces > 0 else 0
    serving = spec["serving"]
    return max(serving["minReplicas"], min(serving["maxReplicas"], needed))


@contextlib.asynccontextmanager
async def model_cluster(
    root: Path, data: Path, emulator_class: type[Emulator] | None = None
) -> AsyncIterator[Cluster]:
    """A running test cluster ready for QuantizedModels: the "data" claim is ``data`` (see
    :func:`write_datasets`), an empty "models" claim, and the namespace :data:`NAMESPACE`
    (``emulator_class``: as for :func:`~tests.support.cluster.running_cluster`)."""
    async with running_cluster(root, emulator_class) as cluster:
        cluster.claims["data"] = data
        cluster.add_claim("models")
        await cluster.add_namespace(NAMESPACE)
        yield cluster
