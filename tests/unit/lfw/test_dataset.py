"""Dataset readers: the restricted lfw.bin unpickler and the LFW pairs.txt tree."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qfleet.errors import DatasetError, InputError
from qfleet.lfw.dataset import (
    decode_image,
    encode_image,
    load_lfw_bin,
    load_pairs_txt,
    load_pairset,
    pairset_sha256,
    write_lfw_bin,
)
from tests.support.pairs_tree import write_pairs_tree


def tiny_image(value: int, fmt: str = "PNG") -> bytes:
    return encode_image(np.full((8, 8, 3), value, dtype=np.uint8), fmt)


# --- lfw.bin ------------------------------------------------------------------------------------


class CreatesFile:
    """A pickle payload that, if unpickled by ``pickle.load``, opens (creates) a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


class RunsCommand:
    """A payload that would run a shell command creating a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload_type", [CreatesFile, RunsCommand])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, payload_type: type) -> None:
    victim = tmp_path / "pwned"
    malicious = tmp_path / "lfw.bin"
    malicious.write_bytes(pickle.dumps(([payload_type(victim), b"x"], [True])))
    with pytest.raises(DatasetError, match=r"not an insightface lfw\.bin") as caught:
        load_lfw_bin(malicious)
    assert str(malicious) in str(caught.value)
    assert not victim.exists()
    # The same bytes through the unrestricted unpickler do create it: the test can fail.
    pickle.loads(malicious.read_bytes())
    assert victim.exists()


def test_round_trip(tmp_path: Path) -> None:
    images = [tiny_image(v) for v in (0, 50, 100, 150)]
    write_lfw_bin(tmp_path / "lfw.bin", images, [True, False])
    pairset = load_lfw_bin(tmp_path / "lfw.bin")
    assert list(pairset.images) == images and pairset.issame.tolist() == [True, False]


def test_python2_style_pickle_loads(tmp_path: Path) -> None:
    # What Python 2 wrote: protocol 2, images as str (SHORT_BINSTRING), labels as bools.
    data = (
        b"\x80\x02"
        + b"](U\x03abcU\x03defe"  # ['abc', 'def'] as Python 2 str
        + b"](\x88e"  # [True]
        + b"\x86."
    )
    target = tmp_path / "py2.bin"
    target.write_bytes(data)
    pairset = load_lfw_bin(target)
    assert list(pairset.images) == [b"abc", b"def"] and pairset.issame.tolist() == [True]


def test_python3_protocol2_bytes_load(tmp_path: Path) -> None:
    target = tmp_path / "p2.bin"
    target.write_bytes(pickle.dumps(([b"\xff\x00a", b"b"], [False]), protocol=2))
    assert list(load_lfw_bin(target).images) == [b"\xff\x00a", b"b"]


def test_length_mismatch(tmp_path: Path) -> None:
    target = tmp_path / "lfw.bin"
    target.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(DatasetError, match="3 images for 1 pairs"):
        load_lfw_bin(target)


def test_truncated_file(tmp_path: Path) -> None:
    target = tmp_path / "lfw.bin"
    write_lfw_bin(target, [tiny_image(1), tiny_image(2)], [True])
    target.write_bytes(target.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=r"not an insightface lfw\.bin"):
        load_lfw_bin(target)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_lfw_bin(tmp_path / "absent.bin")


def test_corrupt_image_names_the_pair(tmp_path: Path) -> None:
    write_lfw_bin(
        tmp_path / "lfw.bin", [tiny_image(1), tiny_image(2), b"garbage", tiny_image(3)], [True, False]
    )
    pairset = load_lfw_bin(tmp_path / "lfw.bin")
    decode_image(pairset.images[1], (8, 8), what=pairset.image_label(1))
    with pytest.raises(DatasetError, match=r"image 2 \(pair 1\) is not a readable image"):
        decode_image(pairset.images[2], (8, 8), what=pairset.image_label(2))


def test_decode_resizes_and_converts_to_rgb() -> None:
    gray = encode_image(np.full((20, 30, 3), 77, dtype=np.uint8), "PNG")
    array = decode_image(gray, (112, 96))
    assert array.shape == (112, 96, 3) and array.dtype == np.uint8 and int(array[5, 5, 0]) == 77


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_pixels_are_pillows_whichever_decoder_runs(mode: str) -> None:
    # RGB and grayscale JPEGs take the libjpeg-turbo fast path, CMYK goes to Pillow: the pixels
    # must not depend on which one decoded them (a validation would drift between versions).
    pixels = np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").convert(mode).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    decoded = decode_image(data)
    assert decoded.shape == (112, 112, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, _pillow_pixels(data))
    resized = decode_image(data, (56, 64))
    assert resized.shape == (56, 64, 3)


def test_truncated_jpeg_is_a_dataset_error_naming_the_image() -> None:
    data = encode_image(np.random.default_rng(4).integers(0, 256, (112, 112, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(DatasetError, match=r"image 7 \(pair 3\) is not a readable image"):
        decode_image(data[: len(data) // 2], what="image 7 (pair 3)")


# --- pairs.txt ----------------------------------------------------------------------------------

IDENTITIES = {
    "Ann_A": [tiny_image(10), tiny_image(20)],
    "Bob_B": [tiny_image(30), tiny_image(40), tiny_image(50)],
    "Cy": [tiny_image(60)],
}
PAIRS = [
    ("Ann_A", 1, "Ann_A", 2),
    ("Ann_A", 1, "Bob_B", 3),
    ("Bob_B", 1, "Bob_B", 3),
    ("Bob_B", 2, "Cy", 1),
]


def test_pairs_tree_round_trip(tmp_path: Path) -> None:
    tree = write_pairs_tree(tmp_path, IDENTITIES, PAIRS, folds=2)
    assert tree.pairs_txt.read_text().splitlines() == [
        "2\t1",
        "Ann_A\t1\t2",
        "Ann_A\t1\tBob_B\t3",
        "Bob_B\t1\t3",
        "Bob_B\t2\tCy\t1",
    ]
    assert (tree.images / "Bob_B" / "Bob_B_0003.jpg").read_bytes() == IDENTITIES["Bob_B"][2]
    pairset = load_pairs_txt(tree.pairs_txt, tree.images)
    assert pairset.issame.tolist() == [True, False, True, False]
    expected = [IDENTITIES[name][n - 1] for a, m, b, n in tree.pairs for name, n in ((a, m), (b, n))]
    assert list(pairset.images) == expected
    assert pairset.image_label(3).endswith(f"image 3 (pair 1, {tree.images / 'Bob_B' / 'Bob_B_0003.jpg'})")


def test_pairs_tree_and_lfw_bin_have_the_same_digest(tmp_path: Path) -> None:
    tree = write_pairs_tree(tmp_path / "tree", IDENTITIES, PAIRS, folds=1, ext="png")
    from_tree = load_pairs_txt(tree.pairs_txt, tree.images)
    write_lfw_bin(tmp_path / "lfw.bin", list(from_tree.images), list(from_tree.issame))
    from_bin = load_lfw_bin(tmp_path / "lfw.bin")
    assert pairset_sha256(from_tree) == pairset_sha256(from_bin)
    relabelled = load_lfw_bin(tmp_path / "lfw.bin")
    relabelled.issame[0] = not relabelled.issame[0]
    assert pairset_sha256(relabelled) != pairset_sha256(from_bin)


def test_writer_needs_balanced_folds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot fill 3 folds"):
        write_pairs_tree(tmp_path, IDENTITIES, PAIRS, folds=3)
    with pytest.raises(ValueError, match="not among the identities"):
        write_pairs_tree(tmp_path, IDENTITIES, [("Cy", 1, "Cy", 2), ("Cy", 1, "Ann_A", 1)], folds=1)


def make_images(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_single_number_header_and_other_extensions(tmp_path: Path) -> None:
    # pairsDevTest.txt style: one number = pairs of each kind, one fold.
    images = make_images(
        tmp_path / "img",
        {
            "X/X_0001.jpeg": tiny_image(1, "JPEG"),
            "X/X_0012.png": tiny_image(2),
            "Y/Y_0003.jpg": tiny_image(3, "JPEG"),
        },
    )
    pairs = tmp_path / "pairsDevTest.txt"
    pairs.write_text("1\nX\t1\t12\n\nX 12 Y 3\n")  # blank lines and spaces are tolerated
    pairset = load_pairs_txt(pairs, images)
    assert pairset.pairs == 2 and pairset.issame.tolist() == [True, False]
    assert pairset.images[1] == tiny_image(2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1 2\nA 1 2\nA 1\n",
            r"pairs.txt, line 3: expected a matched pair 'name n1 n2' \(fold 1\), got 'A 1'",
        ),
        ("1 1\nA 1 2\nA 1 B\n", r"line 3: expected a mismatched pair 'name1 n1 name2 n2'"),
        ("1 1\nA 1 x\nA 1 B 1\n", r"line 2: image number 'x' is not a non-negative integer"),
        ("ten 300\n", r"line 1: expected a header 'FOLDS PAIRS_PER_FOLD'"),
        ("2 1\nA 1 2\nA 1 B 1\n", r"has 2 pair lines but its header promises 4"),
        ("1 1\nA 1 2\nA 1 B 1\nA 2 3\n", r"line 4: more pair lines than the header promises"),
        ("1 1\n.. 1 2\nA 1 B 1\n", r"line 2: '\.\.' is not a valid identity name"),
        ("", r"is empty"),
    ],
)
def test_malformed_pairs_txt_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    images = make_images(tmp_path / "img", {"A/A_0001.jpg": tiny_image(1)})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_pairs_txt(pairs, images)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", {"A/A_0001.jpg": tiny_image(1), "A/A_0002.jpg": tiny_image(2)})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 1\nA 1 2\nA 2 B 7\n")
    with pytest.raises(DatasetError) as caught:
        load_pairs_txt(pairs, images)
    assert "line 3" in str(caught.value)
    assert str(images / "B" / "B_0007.jpg") in str(caught.value)


def test_missing_pairs_file_and_image_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_pairs_txt(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "pairs.txt").write_text("1 1\nA 1 2\nA 1 B 1\n")
    with pytest.raises(DatasetError, match=r"image directory .* does not exist"):
        load_pairs_txt(tmp_path / "pairs.txt", tmp_path / "no-images")


def test_image_deleted_after_loading_names_the_file(tmp_path: Path) -> None:
    tree = write_pairs_tree(tmp_path, IDENTITIES, PAIRS, folds=1)
    pairset = load_pairs_txt(tree.pairs_txt, tree.images)
    (tree.images / "Ann_A" / "Ann_A_0002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"Ann_A_0002\.jpg is not readable"):
        pairset.images[1]


def test_load_pairset_arguments(tmp_path: Path) -> None:
    write_lfw_bin(tmp_path / "lfw.bin", [tiny_image(1), tiny_image(2)], [True])
    assert load_pairset(lfw=tmp_path / "lfw.bin").pairs == 1
    tree = write_pairs_tree(tmp_path / "t", IDENTITIES, PAIRS, folds=1)
    assert load_pairset(pairs=tree.pairs_txt, images=tree.images).pairs == 4
    with pytest.raises(InputError, match="not both"):
        load_pairset(lfw=tmp_path / "lfw.bin", pairs=tree.pairs_txt, images=tree.images)
    with pytest.raises(InputError, match="--pairs needs --images"):
        load_pairset(pairs=tree.pairs_txt)
    with pytest.raises(InputError, match="no dataset given"):
        load_pairset()
