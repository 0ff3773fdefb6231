"""A pair set's images decoded once into one shared ``uint8`` array, for every model variant.

The pipeline validates FP32, INT8 (and BF16 on bf16 tiers) on the same images. Decoding a JPEG
costs as much as inferring a small face model, so decoding it once per variant spent most of a
small model's validation in Pillow. :func:`decode_pairset` decodes every image once, by a thread
pool, into an (N, 3, H, W) ``uint8`` array (a quarter of the float32 pixels' size); every
validation then reads its batches from it. Sets over ``memory_limit_bytes`` are decoded into a
file mapped into memory (``numpy.memmap`` in ``directory``, deleted with the object), so the page
cache, not the heap, holds LFW's 13,000 crops.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qfleet.lfw.dataset import PairSet, decode_image

#: Decoded sets larger than this go to a memory-mapped file instead of the heap (LFW at 112x112
#: is 490 MB of uint8 pixels).
DEFAULT_MEMORY_LIMIT_BYTES = 256 * 1024 * 1024
#: Images one decoder task decodes (one future per image costs more GIL time than it saves).
TASK_IMAGES = 16
MAX_DECODE_THREADS = 4


@dataclass
class DecodedImages:
    """Every image of a pair set as NCHW ``uint8`` pixels, in pair set order."""

    pixels: npt.NDArray[np.uint8]
    #: Wall time the decoding took.
    seconds: float
    threads: int
    #: The memory-mapped file behind ``pixels``, None when they are on the heap.
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[2]), int(self.pixels.shape[3])

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def close(self) -> None:
        """Drop the pixels and the file behind them (if any; the mapping ends with the last view)."""
        self.pixels = np.empty((0, 3, *self.size), dtype=np.uint8)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def __enter__(self) -> DecodedImages:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def decode_pairset(
    pairset: PairSet,
    size: tuple[int, int] = (112, 112),
    *,
    threads: int | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    directory: str | os.PathLike[str] | None = None,
) -> DecodedImages:
    """Decode every image of ``pairset`` once (resized to ``size`` = (height, width) if needed).

    A corrupt image raises :class:`~qfleet.errors.DatasetError` naming its pair (the first one,
    in pair set order).
    """
    height, width = size
    count = len(pairset.images)
    shape = (count, 3, height, width)
    path: Path | None = None
    if count * 3 * height * width > memory_limit_bytes:
        handle, name = tempfile.mkstemp(prefix="qfleet-decoded-", suffix=".u8", dir=directory)
        os.close(handle)
        path = Path(name)
        pixels: npt.NDArray[np.uint8] = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    else:
        pixels = np.empty(shape, dtype=np.uint8)

    def decode_range(start: int, stop: int) -> None:
        for index in range(start, stop):
            rgb = decode_image(pairset.images[index], size, what=pairset.image_label(index))
            pixels[index] = rgb.transpose(2, 0, 1)

    workers = max(1, min(threads or os.cpu_count() or 1, MAX_DECODE_THREADS))
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="qfleet-decode") as pool:
            tasks = [
                pool.submit(decode_range, start, min(start + TASK_IMAGES, count))
                for start in range(0, count, TASK_IMAGES)
            ]
            for task in tasks:  # in order, so the first corrupt image is the one reported
                task.result()
    except BaseException:
        if path is not None:
            del pixels
            path.unlink(missing_ok=True)
        raise
    return DecodedImages(pixels=pixels, seconds=time.perf_counter() - started, threads=workers, path=path)
