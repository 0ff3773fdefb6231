"""Reading and writing face-verification datasets.

insightface's ``lfw.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds the encoded
images (JPEG or PNG bytes), pair ``i`` is images ``2i`` and ``2i + 1``. A pickle can run any code
it names, so we load it with :class:`RestrictedUnpickler`, which refuses every global: the format
needs only lists, tuples, bytes and bools. Files written by Python 2 need ``encoding="bytes"``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image, UnidentifiedImageError

from qfleet.errors import DatasetError, InputError

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
    issame: npt.NDArray[np.bool_]
    #: Where it came from, for error messages.
    source: str
    #: The file each image was read from (pairs.txt trees), for error messages; None for lfw.bin.
    image_files: Sequence[str] | None = None

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
        if self.image_files is not None:
            return f"{self.source}: image {index} (pair {index // 2}, {self.image_files[index]})"
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


#: JPEG colour spaces libjpeg-turbo turns into the same RGB pixels as Pillow does.
_FAST_JPEG_COLORSPACES = frozenset({"YCbCr", "Gray"})


def _decode_jpeg_fast(data: bytes) -> npt.NDArray[np.uint8] | None:
    """A JPEG decoded by libjpeg-turbo straight into numpy (simplejpeg), or None if not a JPEG.

    On 112x112 face crops this takes half of Pillow's time (most of Pillow's is per-image
    overhead around the same library) and gives identical pixels; decoding would otherwise cost
    more than a small face model's inference. It releases the GIL, so decoder threads run in
    parallel. Other colour spaces (CMYK, YCCK) are left to Pillow, whose conversion differs.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in _FAST_JPEG_COLORSPACES:
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB")  # type: ignore[no-any-return]
    except ValueError:
        return None  # corrupt or unusual: Pillow decides, and words the error


def decode_image(
    data: bytes, size: tuple[int, int] = (112, 112), *, what: str = "image"
) -> npt.NDArray[np.uint8]:
    """Decode JPEG/PNG bytes to an RGB ``uint8`` array of shape (height, width, 3).

    ``size`` is (height, width); other sizes are resized bilinearly. ``what`` names the image in
    the error raised for corrupt data.
    """
    rgb = _decode_jpeg_fast(bytes(data))
    if rgb is None:
        rgb = _decode_with_pillow(data, what)
    height, width = size
    if rgb.shape[:2] != (height, width):
        resized = Image.fromarray(rgb, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
        rgb = np.asarray(resized, dtype=np.uint8)
    return rgb


def _decode_with_pillow(data: bytes, what: str) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{what} is not a readable image ({exc})") from None


def encode_image(array: npt.NDArray[Any], fmt: str = "JPEG", quality: int = 95) -> bytes:
    """Encode an RGB ``uint8`` (H, W, 3) array as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="RGB")
    if fmt.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


# --- The original LFW protocol file: pairs.txt and a tree of aligned crops ----------------------

#: Image file extensions tried, in order, for ``<root>/<name>/<name>_<NNNN>.<ext>``.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "JPG", "JPEG", "PNG")


class ImageFiles(Sequence[bytes]):
    """Encoded images read from files on access, so a large tree is never held in memory at once.

    Pairs reuse images; reading on demand also lets decoder threads read files in parallel.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._read(path) for path in self._paths[index]]
        return self._read(self._paths[index])

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"image {path} is not readable: {exc.strerror or exc}") from None

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)


@dataclass(frozen=True)
class _PairLine:
    line: int
    first: tuple[str, int]
    second: tuple[str, int]
    same: bool


def _check_name(name: str, where: str) -> str:
    # Names become path components: refuse anything that could leave the image root.
    if name in (".", "..") or any(ch in name for ch in "/\\\0"):
        raise DatasetError(f"{where}: {name!r} is not a valid identity name")
    return name


def _image_number(token: str, where: str) -> int:
    if not token.isdigit():
        raise DatasetError(f"{where}: image number {token!r} is not a non-negative integer")
    return int(token)


def _parse_header(tokens: list[str], where: str) -> tuple[int, int]:
    """(folds, pairs per fold): ``"10 300"``, or ``"500"`` (one fold, as in pairsDevTest.txt)."""
    if len(tokens) not in (1, 2) or not all(t.isdigit() and int(t) > 0 for t in tokens):
        raise DatasetError(
            f"{where}: expected a header 'FOLDS PAIRS_PER_FOLD' (or 'PAIRS'), got {' '.join(tokens)!r}"
        )
    if len(tokens) == 1:
        return 1, int(tokens[0])
    return int(tokens[0]), int(tokens[1])


def _parse_pair_line(
    tokens: list[str], same: bool, where: str, fold: int
) -> tuple[tuple[str, int], tuple[str, int]]:
    """((name, number), (name, number)) of one pair line: 'name n1 n2' or 'name1 n1 name2 n2'."""
    if same and len(tokens) != 3:
        raise DatasetError(
            f"{where}: expected a matched pair 'name n1 n2' (fold {fold + 1}), got {' '.join(tokens)!r}"
        )
    if not same and len(tokens) != 4:
        raise DatasetError(
            f"{where}: expected a mismatched pair 'name1 n1 name2 n2' (fold {fold + 1}), "
            f"got {' '.join(tokens)!r}"
        )
    if same:
        name = _check_name(tokens[0], where)
        return (name, _image_number(tokens[1], where)), (name, _image_number(tokens[2], where))
    first = (_check_name(tokens[0], where), _image_number(tokens[1], where))
    return first, (_check_name(tokens[2], where), _image_number(tokens[3], where))


def _parse_pairs_txt(path: Path) -> tuple[int, list[_PairLine]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"pairs file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"pairs file {path} is not a readable text file ({exc})") from None
    numbered = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
    numbered = [(number, tokens) for number, tokens in numbered if tokens]
    if not numbered:
        raise DatasetError(f"pairs file {path} is empty")
    header_line, header = numbered[0]
    folds, per_fold = _parse_header(header, f"{path}, line {header_line}")
    body = iter(numbered[1:])
    expected = folds * 2 * per_fold
    pairs: list[_PairLine] = []
    for fold in range(folds):
        for same in (True, False):
            for _ in range(per_fold):
                try:
                    number, tokens = next(body)
                except StopIteration:
                    raise DatasetError(
                        f"{path}: has {len(pairs)} pair lines but its header promises {expected} "
                        f"({folds} folds x ({per_fold} matched + {per_fold} mismatched))"
                    ) from None
                first, second = _parse_pair_line(tokens, same, f"{path}, line {number}", fold)
                pairs.append(_PairLine(number, first, second, same))
    extra = next(body, None)
    if extra is not None:
        raise DatasetError(f"{path}, line {extra[0]}: more pair lines than the header promises ({expected})")
    return folds, pairs


def image_file_name(name: str, number: int, ext: str = "jpg") -> str:
    """``<name>_<NNNN>.<ext>``, LFW's file naming."""
    return f"{name}_{number:04d}.{ext}"


def load_pairs_txt(pairs_txt: str | os.PathLike[str], images_root: str | os.PathLike[str]) -> PairSet:
    """Load the LFW protocol file and resolve its images under ``images_root``.

    Pair order is the file's order (per fold: matched, then mismatched). Every image must exist
    (checked up front, with the pairs.txt line that needs it); the bytes are read on access.
    """
    path = Path(pairs_txt)
    root = Path(images_root)
    _, lines = _parse_pairs_txt(path)
    if not root.is_dir():
        raise DatasetError(f"image directory {root} does not exist", hint="pass the folder of aligned crops")
    listings: dict[str, set[str]] = {}
    resolved: dict[tuple[str, int], Path] = {}

    def find(name: str, number: int, line: int) -> Path:
        key = (name, number)
        if key in resolved:
            return resolved[key]
        if name not in listings:
            try:
                listings[name] = set(os.listdir(root / name))
            except OSError:
                listings[name] = set()
        for ext in IMAGE_EXTENSIONS:
            candidate = image_file_name(name, number, ext)
            if candidate in listings[name]:
                resolved[key] = root / name / candidate
                return resolved[key]
        missing = root / name / image_file_name(name, number, "jpg")
        raise DatasetError(
            f"{path}, line {line}: image {missing} does not exist (also tried .jpeg and .png)",
            hint="--images must be the folder that holds one sub-folder per identity",
        )

    files: list[Path] = []
    for pair in lines:
        files.append(find(*pair.first, pair.line))
        files.append(find(*pair.second, pair.line))
    return PairSet(
        images=ImageFiles(files),
        issame=np.array([pair.same for pair in lines], dtype=bool),
        source=str(path),
        image_files=[str(file) for file in files],
    )


def load_pairset(
    lfw: str | os.PathLike[str] | None = None,
    pairs: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
) -> PairSet:
    """The dataset the command line names: an ``lfw.bin``, or a ``pairs.txt`` with its image folder."""
    if lfw is not None and (pairs is not None or images is not None):
        raise InputError("give either --lfw PATH or --pairs pairs.txt with --images DIR, not both")
    if lfw is not None:
        return load_lfw_bin(lfw)
    if pairs is not None and images is not None:
        return load_pairs_txt(pairs, images)
    if pairs is not None:
        raise InputError("--pairs needs --images DIR (the folder of aligned face crops)")
    if images is not None:
        raise InputError("--images needs --pairs pairs.txt (the LFW protocol file)")
    raise InputError("no dataset given", hint="pass --lfw lfw.bin, or --pairs pairs.txt with --images DIR")


def pairset_sha256(pairset: PairSet) -> str:
    """A digest of the pairs' content (every image's bytes and every label), whatever the container.

    Two validation results are comparable only when measured on the same pairs; an ``lfw.bin``
    and a pairs.txt tree holding the same images in the same order have the same digest.
    """
    digest = hashlib.sha256()
    digest.update(f"qfleet-pairs-v1 {pairset.pairs}\n".encode())
    digest.update(np.asarray(pairset.issame, dtype=np.uint8).tobytes())
    for index in range(len(pairset.images)):
        data = pairset.images[index]
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
