"""Turning decoded face crops into model input tensors.

IRs written by qfleet take NCHW float32 in the model's colour order-independent convention:
the caller always passes RGB ``uint8`` crops (raw 0..255); any mean/scale/BGR conversion the
source model expects was baked into the IR at conversion time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def images_to_batch(images: Sequence[npt.NDArray[Any]] | npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Stack RGB ``uint8`` (H, W, 3) crops into an NCHW float32 batch."""
    batch = np.asarray(images)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {batch.shape}")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def flip_horizontal(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Mirror an NCHW batch left-right (the LFW protocol's test-time augmentation)."""
    return np.ascontiguousarray(batch[..., ::-1])
