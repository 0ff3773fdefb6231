"""Reading and writing face-verification datasets.

insightface's ``lfw.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds the encoded
images (JPEG or PNG bytes), pair ``i`` is images ``2i`` and ``2i + 1``. A pickle can run any code
it names, so we load it with :class:`RestrictedUnpickler`, which refuses every global: the format
needs only lists, tuples, bytes and bools. Files written by Python 2 need ``encoding="bytes"``.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from qfleet.errors import DatasetError

NOT_LFW_BIN = "not an insightface lfw.bin"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and scalars.

    Any global (a class, a function such as ``os.system``) is refused before it is looked up,
    so a malicious payload is never executed. The one exception is ``_codecs.encode``, which
    Python 3 uses to pickle ``bytes`` at protocol 2; we map it to a function that only turns a
    latin-1 string back into bytes.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"{NOT_LFW_BIN}: it references {module}.{name}, which is not allowed")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"{NOT_LFW_BIN}: unexpected _codecs.encode call")
    return text.encode("latin1")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only builtin containers and scalars."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass(frozen=True)
class PairSet:
    """Encoded images and pair labels: pair ``i`` is ``images[2i]`` and ``images[2i + 1]``."""

    images: Sequence[bytes]
    issame: np.ndarray
    #: Where it came from, for error messages.
    source: str

    def __post_init__(self) -> None:
        if len(self.images) != 2 * len(self.issame):
            raise DatasetError(
                f"{self.source}: {len(self.images)} images for {len(self.issame)} pairs "
                f"(expected {2 * len(self.issame)})"
            )

    @property
    def pairs(self) -> int:
        return len(self.issame)

    def image_label(self, index: int) -> str:
        """Human description of image ``index`` for error messages."""
        return f"{self.source}: image {index} (pair {index // 2})"


def load_lfw_bin(path: str | os.PathLike[str]) -> PairSet:
    """Load an insightface ``lfw.bin`` safely; malformed files raise :class:`DatasetError`."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{target} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{target} is not readable: {exc.strerror}") from None
    try:
        payload = restricted_loads(data)
    except pickle.UnpicklingError as exc:
        message = str(exc) if NOT_LFW_BIN in str(exc) else f"{NOT_LFW_BIN} ({exc})"
        raise DatasetError(f"{target}: {message}") from None
    except Exception as exc:  # truncated or garbage bytes raise many different errors
        raise DatasetError(f"{target}: {NOT_LFW_BIN} ({type(exc).__name__}: {exc})") from None
    if not (isinstance(payload, (tuple, list)) and len(payload) == 2):
        raise DatasetError(f"{target}: {NOT_LFW_BIN} (expected a pair (bins, issame_list))")
    bins, issame = payload
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise DatasetError(f"{target}: {NOT_LFW_BIN} (bins must be a list of encoded images)")
    if not isinstance(issame, (list, tuple)) or not all(isinstance(s, (bool, int)) for s in issame):
        raise DatasetError(f"{target}: {NOT_LFW_BIN} (issame_list must be a list of booleans)")
    return PairSet(images=[bytes(b) for b in bins], issame=np.asarray(issame, dtype=bool), source=str(target))


def write_lfw_bin(path: str | os.PathLike[str], images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write an insightface-compatible ``lfw.bin`` (protocol 4, bytes and bools only)."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs")
    payload = ([bytes(b) for b in images], [bool(s) for s in issame])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(payload, handle, protocol=4)
    os.replace(tmp, target)


def decode_image(data: bytes, size: tuple[int, int] = (112, 112), *, what: str = "image") -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB ``uint8`` array of shape (height, width, 3).

    ``size`` is (height, width); other sizes are resized bilinearly. ``what`` names the image in
    the error raised for corrupt data.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
            height, width = size
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{what} is not a readable image ({exc})") from None


def encode_image(array: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """Encode an RGB ``uint8`` (H, W, 3) array as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="RGB")
    if fmt.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()
