"""Calibration data for post-training quantization: face crops as model input tensors.

NNCF only needs representative inputs, no labels. They come from an insightface ``lfw.bin`` (the
images of its pairs) or from a folder of aligned face crops (jpg/jpeg/png, searched recursively).
When there are more images than ``subset_size`` we take evenly spaced ones, so the subset spans
the whole set (consecutive images in a dataset are often the same person) and is the same on
every run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from qfleet.errors import DatasetError
from qfleet.lfw.dataset import decode_image, load_lfw_bin
from qfleet.model.tensors import images_to_batch
from qfleet.outputs import sha256_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(folder: Path) -> list[Path]:
    """The face images under ``folder`` (recursively, hidden entries skipped), sorted by path."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def evenly_spaced(count: int, subset_size: int) -> list[int]:
    """``min(count, subset_size)`` distinct indices spread evenly over ``range(count)``."""
    if subset_size <= 0:
        raise ValueError(f"subset size must be positive, got {subset_size}")
    if count <= subset_size:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, subset_size).round().astype(int)]


def _encoded_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the image header, or None when the header is unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except Exception:  # decode_image reports the real error with the image's name
        return None


def _decode_all(
    sources: Sequence[tuple[str, Callable[[], bytes]]], input_hw: tuple[int, int]
) -> list[npt.NDArray[np.float32]]:
    batches: list[npt.NDArray[np.float32]] = []
    warned = False
    for label, read in sources:
        data = read()
        size = _encoded_size(data)
        if size is not None and size != tuple(input_hw) and not warned:
            log.warning(
                "calibration image %s is %dx%d, resizing calibration images to the model's %dx%d",
                label,
                size[1],
                size[0],
                input_hw[1],
                input_hw[0],
            )
            warned = True
        batches.append(images_to_batch(decode_image(data, input_hw, what=label)))
    return batches


def load_calibration(
    path: str | os.PathLike[str], *, input_hw: tuple[int, int] = (112, 112), subset_size: int = 300
) -> list[npt.NDArray[np.float32]]:
    """Calibration inputs: NCHW float32 batches of one raw 0..255 RGB crop each.

    ``path`` is an insightface ``lfw.bin`` or a folder of aligned face images. At most
    ``subset_size`` images are used. Missing paths, folders without images and unreadable
    images raise :class:`DatasetError` naming the input.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(
            f"calibration data {source} does not exist", hint="pass an lfw.bin or a folder of face images"
        )
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise DatasetError(
                f"calibration folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                hint="add aligned face crops or pass an lfw.bin",
            )
        chosen = [files[i] for i in evenly_spaced(len(files), subset_size)]
        sources = [(f"calibration image {file}", _reader(file)) for file in chosen]
    else:
        pairset = load_lfw_bin(source)
        if not pairset.images:
            raise DatasetError(f"calibration data {source} holds no images")
        indices = evenly_spaced(len(pairset.images), subset_size)
        sources = [(pairset.image_label(i), _constant(pairset.images[i])) for i in indices]
    return _decode_all(sources, input_hw)


def _reader(file: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise DatasetError(f"calibration image {file} is not readable: {exc.strerror}") from None

    return read


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def calibration_digest(path: str | os.PathLike[str]) -> str:
    """A sha256 that identifies the calibration data.

    For a file, the sha256 of its bytes (what ``sha256sum`` prints). For a folder, the sha256 over
    every image's relative path and bytes in sorted order, so renaming, adding or editing an
    image changes it and nothing else (timestamps, order on disk) does.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"calibration data {source} does not exist")
    if source.is_file():
        return sha256_file(source)
    digest = hashlib.sha256()
    for file in image_files(source):
        name = file.relative_to(source).as_posix().encode("utf-8")
        content = file.read_bytes()
        # Length-prefix both fields so that no two different folders hash the same stream.
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()
