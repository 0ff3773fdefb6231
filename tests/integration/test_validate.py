"""`qfleet validate` on the tiny IR: the fast path equals a plain synchronous re-computation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qfleet.cli import main
from qfleet.errors import DatasetError, InputError
from qfleet.lfw.dataset import (
    PairSet,
    decode_image,
    encode_image,
    load_lfw_bin,
    write_lfw_bin,
)
from qfleet.lfw.protocol import evaluate_interleaved, normalize
from qfleet.model import embed
from qfleet.model.embed import run_embedding, validate_model
from tests.support.pairs_tree import write_pairs_tree

PAIRS = 40

#: Numeric comparisons pin f32: OpenVINO defaults to bf16 on CPUs with native bf16.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def synthetic_faces(pairs: int, *, noise: float = 20.0, seed: int = 0) -> tuple[list[bytes], list[bool]]:
    """Identities are smooth random colour fields; each image adds noise. Every third image is a
    JPEG and every fifth is 100x100 (the model resizes it), so both decoders and resizing run."""
    rng = np.random.default_rng(seed)
    fields = [
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize(
                (112, 112), Image.Resampling.BILINEAR
            )
        ).astype(np.float64)
        for _ in range(8)
    ]
    images: list[bytes] = []
    issame: list[bool] = []
    for index in range(pairs):
        same = index % 2 == 0
        first = int(rng.integers(8))
        second = first if same else int((first + rng.integers(1, 8)) % 8)
        for who in (first, second):
            pixels = fields[who] + rng.normal(0, noise, (112, 112, 3)) + rng.normal(0, noise, (1, 1, 3))
            array = np.clip(pixels, 0, 255).astype(np.uint8)
            if len(images) % 5 == 4:
                array = np.asarray(Image.fromarray(array).resize((100, 100)))
            images.append(encode_image(array, "JPEG" if len(images) % 3 == 0 else "PNG"))
        issame.append(same)
    return images, issame


@pytest.fixture
def lfw_bin(tmp_path: Path) -> Path:
    images, issame = synthetic_faces(PAIRS)
    path = tmp_path / "lfw.bin"
    write_lfw_bin(path, images, issame)
    return path


def to_nchw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)


def direct_embeddings(model_xml: Path, pairset: PairSet, *, flip: bool) -> np.ndarray:
    """One image at a time through a plainly compiled model, synchronous inference."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(model_xml), "CPU", F32)
    rows = []
    for index in range(len(pairset.images)):
        rgb = decode_image(pairset.images[index], (112, 112))
        embedding = compiled(to_nchw(rgb))[0][0].astype(np.float64)
        if flip:
            embedding = embedding + compiled(to_nchw(rgb[:, ::-1]))[0][0].astype(np.float64)
        rows.append(embedding)
    return normalize(np.stack(rows))


def validate_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["validate", *argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_validate_equals_direct_recomputation(
    tiny_ir: Callable[..., Path], lfw_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_ir()
    result = validate_json(["--model", str(model), "--lfw", str(lfw_bin)], capsys)
    pairset = load_lfw_bin(lfw_bin)
    expected = evaluate_interleaved(direct_embeddings(model, pairset, flip=True), pairset.issame)
    assert 0.6 < expected.accuracy < 1.0  # thresholds matter in this data set
    for key in ("accuracy", "accuracy_std", "threshold", "val_at_far", "val_std", "far"):
        assert result[key] == pytest.approx(getattr(expected, key), abs=1e-9), key
    assert result["pairs"] == PAIRS and result["flip"] is True
    assert result["images"] == 2 * PAIRS and result["inferences"] == 4 * PAIRS
    assert result["images_per_second"] >= result["images_per_second_overall"] > 0
    assert result["seconds"] >= result["embed_seconds"] > 0
    assert result["embed_seconds"] == pytest.approx(
        result["decode_seconds"] + result["inference_seconds"], abs=0.002
    )
    assert result["precision"] == "fp32" and len(result["dataset_sha256"]) == 64


def test_no_flip(tiny_ir: Callable[..., Path], lfw_bin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_ir()
    pairset = load_lfw_bin(lfw_bin)
    plain = run_embedding(model, pairset, flip=False, progress=False).embeddings
    flipped = run_embedding(model, pairset, flip=True, progress=False).embeddings
    assert np.allclose(plain, direct_embeddings(model, pairset, flip=False), atol=1e-5)
    assert np.allclose(flipped, direct_embeddings(model, pairset, flip=True), atol=1e-5)
    assert not np.allclose(plain, flipped, atol=1e-3)  # the mirror changes the embedding
    result = validate_json(["--model", str(model), "--lfw", str(lfw_bin), "--no-flip"], capsys)
    assert result["flip"] is False and result["inferences"] == 2 * PAIRS
    assert result["accuracy"] == pytest.approx(evaluate_interleaved(plain, pairset.issame).accuracy)


@pytest.mark.parametrize(("batch", "chunk_inputs"), [(1, 512), (3, 512), (8, 512), (3, 7), (2, 10)])
def test_batching_does_not_change_embeddings(
    tiny_ir: Callable[..., Path],
    lfw_bin: Path,
    batch: int,
    chunk_inputs: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Odd batches split an image from its mirror; 8 does not divide 160 inputs: the last is padded.
    # Small chunks make images straddle chunks (decoded twice) and decoder tasks end mid-chunk.
    monkeypatch.setattr(embed, "CHUNK_INPUTS", chunk_inputs)
    monkeypatch.setattr(embed, "DECODE_TASK_IMAGES", 3)
    model = tiny_ir()
    pairset = load_lfw_bin(lfw_bin)
    run = run_embedding(model, pairset, batch=batch, progress=False)
    assert run.batch == batch and run.inferences == 4 * PAIRS
    assert np.allclose(run.embeddings, direct_embeddings(model, pairset, flip=True), atol=1e-5)


def test_compiled_model_is_used_as_given(tiny_ir: Callable[..., Path], lfw_bin: Path) -> None:
    import openvino as ov

    model = tiny_ir()
    pairset = load_lfw_bin(lfw_bin)
    compiled = ov.Core().compile_model(str(model), "CPU", F32)  # dynamic batch, default hint
    result = validate_model(compiled, pairset, progress=False)
    assert result["accuracy"] == pytest.approx(validate_model(model, pairset, progress=False)["accuracy"])
    assert result["model"] == "<compiled model>"


def test_pairs_txt_tree_gives_the_same_result(
    tiny_ir: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, issame = synthetic_faces(PAIRS)
    identities = {f"Person_{i:02d}": [images[2 * i], images[2 * i + 1]] for i in range(PAIRS)}
    # Pair i of the lfw.bin becomes (Person_i #1, Person_i #2) when it is a match; for a mismatch the
    # second image is written under a name of its own.
    pairs: list[tuple[str, int, str, int]] = []
    for i, same in enumerate(issame):
        if same:
            pairs.append((f"Person_{i:02d}", 1, f"Person_{i:02d}", 2))
        else:
            identities[f"Other_{i:02d}"] = [images[2 * i + 1]]
            pairs.append((f"Person_{i:02d}", 1, f"Other_{i:02d}", 1))
    tree = write_pairs_tree(tmp_path / "tree", identities, pairs, folds=2)
    # The tree lists pairs per fold (matched first), so build the lfw.bin in the tree's order.
    ordered = [identities[name][n - 1] for a, m, b, k in tree.pairs for name, n in ((a, m), (b, k))]
    write_lfw_bin(tmp_path / "lfw.bin", ordered, [a == b for a, _, b, _ in tree.pairs])

    model = tiny_ir()
    from_tree = validate_json(
        ["--model", str(model), "--pairs", str(tree.pairs_txt), "--images", str(tree.images)], capsys
    )
    from_bin = validate_json(["--model", str(model), "--lfw", str(tmp_path / "lfw.bin")], capsys)
    assert from_tree["dataset_sha256"] == from_bin["dataset_sha256"]
    for key in ("accuracy", "accuracy_std", "threshold", "val_at_far"):
        assert from_tree[key] == pytest.approx(from_bin[key], abs=1e-9), key


def test_corrupt_image_names_the_pair(
    tiny_ir: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, issame = synthetic_faces(PAIRS)
    images[27] = images[27][: len(images[27]) // 3]  # truncated PNG/JPEG
    write_lfw_bin(tmp_path / "lfw.bin", images, issame)
    model = tiny_ir()
    with pytest.raises(DatasetError, match=r"image 27 \(pair 13\) is not a readable image"):
        run_embedding(model, load_lfw_bin(tmp_path / "lfw.bin"), progress=False)
    assert main(["validate", "--model", str(model), "--lfw", str(tmp_path / "lfw.bin"), "--quiet"]) == 2
    assert "pair 13" in capsys.readouterr().err


def test_too_few_pairs_and_missing_model(tiny_ir: Callable[..., Path], tmp_path: Path) -> None:
    images, issame = synthetic_faces(5)
    pairset = PairSet(images, np.array(issame), "five.bin")
    with pytest.raises(InputError, match="has 5 pairs; the protocol needs at least 10"):
        validate_model(tiny_ir(), pairset, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        validate_model(tmp_path / "absent" / "model.xml", pairset, folds=5, progress=False)


@pytest.mark.parametrize("memory_limit", [1 << 30, 1], ids=["heap", "memmap"])
def test_decoded_once_gives_the_same_embeddings(
    tiny_ir: Callable[..., Path], tmp_path: Path, memory_limit: int
) -> None:
    """Embedding from the shared uint8 pixels equals decoding per run, for every variant fed."""
    from qfleet.lfw.decoded import decode_pairset

    images, issame = synthetic_faces(PAIRS)
    pairset = PairSet(images=images, issame=np.asarray(issame), source="synthetic")
    model = tiny_ir("tiny")
    assert embed.image_size(model) == (112, 112)
    with decode_pairset(pairset, (112, 112), memory_limit_bytes=memory_limit, directory=tmp_path) as decoded:
        assert (decoded.path is not None) == (memory_limit == 1)
        expected = decode_image(images[4], (112, 112)).transpose(2, 0, 1)
        np.testing.assert_array_equal(decoded.pixels[4], expected)
        plain = run_embedding(model, pairset, progress=False, precision="fp32")
        for _ in range(2):  # a second variant reads the same pixels
            shared = run_embedding(model, pairset, progress=False, precision="fp32", decoded=decoded)
            assert shared.decode_seconds < plain.decode_seconds or plain.decode_seconds == 0
            np.testing.assert_allclose(shared.embeddings, plain.embeddings, rtol=1e-5, atol=1e-6)
        path = decoded.path
    assert path is None or not path.exists()


def test_decoded_images_of_another_set_are_refused(tiny_ir: Callable[..., Path]) -> None:
    from qfleet.lfw.decoded import decode_pairset

    images, issame = synthetic_faces(PAIRS)
    pairset = PairSet(images=images, issame=np.asarray(issame), source="synthetic")
    smaller = PairSet(images=images[:20], issame=np.asarray(issame[:10]), source="smaller")
    with decode_pairset(smaller) as decoded, pytest.raises(InputError, match="not synthetic's"):
        run_embedding(tiny_ir("tiny"), pairset, progress=False, decoded=decoded)


def test_a_corrupt_image_names_its_pair_when_decoded_once() -> None:
    from qfleet.lfw.decoded import decode_pairset

    images, issame = synthetic_faces(10)
    images[7] = b"not an image"
    pairset = PairSet(images=images, issame=np.asarray(issame), source="broken")
    with pytest.raises(DatasetError, match="image 7 \\(pair 3\\)"):
        decode_pairset(pairset)
