"""Deterministic synthetic face data for the demo, the tests and the demo model's training.

Real face sets cannot be shipped, so qfleet draws its own (see :mod:`qfleet.lfw.synthetic_faces`
for how a face is made). Every random choice comes from a ``numpy.random.Generator`` keyed by
(seed, purpose, split, index): a split never depends on the size of another, identities of
different splits are different people by construction, and the same seed gives the same bytes.

The files are what a real data set comes as, so they go through the readers a real set takes:

- ``lfw.bin``: insightface's verification pairs. Like LFW, 10 folds, each with its own people,
  and in each fold the matched pairs first, then the mismatched ones; every image is a new
  rendering (new pose, light, noise), none is reused.
- ``calibration/``: aligned JPEG crops of other people, for post-training quantization.
- optionally ``pairs.txt`` with an ``images/<name>/<name>_<NNNN>.jpg`` tree, and ``train.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfleet.lfw.dataset import encode_image, write_lfw_bin
from qfleet.lfw.synthetic_faces import CANONICAL_SIZE, Array, Identity, render_batch, sample_identity

__all__ = [
    "CANONICAL_SIZE",
    "DEMO_DATA",
    "DEMO_SEED",
    "DemoData",
    "Identity",
    "PairPlan",
    "demo_model_prefix",
    "describe",
    "generate_demo_data",
    "image_rng",
    "make_identities",
    "make_training_set",
    "make_verification_pairs",
    "render_face",
    "render_faces",
    "render_pairs",
]

FOLDS = 10
#: Images are rendered in chunks: enough to vectorise, small enough for the cache (results do not depend on it).
RENDER_CHUNK = 16
JPEG_QUALITY = 95

# What a generator is for: the first key after the seed, so the streams never overlap.
_IDENTITY_STREAM, _IMAGE_STREAM, _PAIRING_STREAM = 1, 2, 3
_SPLITS = {"train": 1, "test": 2, "calibration": 3}


@dataclass(frozen=True)
class DemoData:
    """Data parameters of the shipped demo model: it was trained and evaluated on exactly these."""

    seed: int = 20240607
    train_identities: int = 500
    train_images_per_identity: int = 20
    test_identities: int = 200
    pairs: int = 600
    calibration_identities: int = 60
    calibration_images: int = 300

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


#: What ``qfleet demo`` regenerates; the shipped model's TRAINING.json records the same values.
DEMO_DATA = DemoData()
DEMO_SEED = DEMO_DATA.seed


def demo_model_prefix() -> Path:
    """Checkpoint prefix of the shipped demo model (``<prefix>-symbol.json``, ``<prefix>-0001.params``)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo-model" / "model"


def _split_key(split: str) -> int:
    try:
        return _SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}") from None


def make_identities(count: int, seed: int, *, split: str = "train", start: int = 0) -> list[Identity]:
    """Identities ``start .. start + count - 1`` of ``split``, named ``<split>-<index>``."""
    key = _split_key(split)
    return [
        sample_identity(np.random.default_rng([seed, _IDENTITY_STREAM, key, index]), f"{split}-{index:05d}")
        for index in range(start, start + count)
    ]


def image_rng(seed: int, split: str, *key: int) -> np.random.Generator:
    """The generator that draws the variation of one image, keyed by its place in a split."""
    return np.random.default_rng([seed, _IMAGE_STREAM, _split_key(split), *key])


def render_faces(
    identities: Sequence[Identity], rngs: Sequence[np.random.Generator], *, size: int = CANONICAL_SIZE
) -> Array:
    """Render ``identities[i]`` with a variation drawn from ``rngs[i]``: (N, size, size, 3) uint8 RGB."""
    if len(identities) != len(rngs):
        raise ValueError(f"{len(identities)} identities but {len(rngs)} generators")
    images = np.empty((len(identities), size, size, 3), dtype=np.uint8)
    for start in range(0, len(identities), RENDER_CHUNK):
        stop = start + RENDER_CHUNK
        images[start:stop] = render_batch(identities[start:stop], rngs[start:stop], size=size)
    return images


def render_face(identity: Identity, variation_rng: np.random.Generator, size: int = CANONICAL_SIZE) -> Array:
    """One image of ``identity``: (size, size, 3) uint8 RGB."""
    image: Array = render_batch([identity], [variation_rng], size=size)[0]
    return image


def make_training_set(
    seed: int, *, identities: int, images_per_identity: int, size: int = CANONICAL_SIZE
) -> tuple[Array, Array]:
    """Training images (N, size, size, 3) uint8 and labels (N,) int32, identity-major order."""
    people = make_identities(identities, seed, split="train")
    chosen = [person for person in people for _ in range(images_per_identity)]
    rngs = [
        image_rng(seed, "train", index, k) for index in range(identities) for k in range(images_per_identity)
    ]
    labels = np.repeat(np.arange(identities, dtype=np.int32), images_per_identity)
    return render_faces(chosen, rngs, size=size), labels


@dataclass(frozen=True)
class PairPlan:
    """Which identities form each verification pair (before any image is rendered)."""

    #: (pairs, 2) indices into the identity list.
    identity_index: Array
    issame: Array


def make_verification_pairs(identity_count: int, *, pairs: int, seed: int, folds: int = FOLDS) -> PairPlan:
    """LFW-shaped pairs: ``folds`` contiguous folds, each with its own identities (identity ``i`` is
    in fold ``i % folds``) and each holding its matched pairs first, then as many mismatched ones.
    """
    if pairs <= 0 or pairs % (2 * folds):
        raise ValueError(f"pairs must be a positive multiple of {2 * folds} (equal halves in {folds} folds)")
    if identity_count < 2 * folds:
        raise ValueError(f"need at least {2 * folds} identities for {folds} folds, got {identity_count}")
    per_half = pairs // (2 * folds)
    rng = np.random.default_rng([seed, _PAIRING_STREAM])
    index = np.empty((pairs, 2), dtype=np.int64)
    issame = np.empty(pairs, dtype=bool)
    row = 0
    for fold in range(folds):
        members = np.arange(fold, identity_count, folds)
        # Matched: go through the fold's people in a shuffled cycle so each one appears evenly.
        cycle = np.concatenate([rng.permutation(members) for _ in range(-(-per_half // members.size))])
        for person in cycle[:per_half]:
            index[row], issame[row] = (person, person), True
            row += 1
        for _ in range(per_half):
            index[row], issame[row] = rng.choice(members, size=2, replace=False), False
            row += 1
    return PairPlan(identity_index=index, issame=issame)


def render_pairs(identities: Sequence[Identity], plan: PairPlan, *, seed: int) -> Array:
    """Images of a pair plan in ``lfw.bin`` order: (2 * pairs, 112, 112, 3); each one freshly posed."""
    people = [identities[i] for i in plan.identity_index.reshape(-1)]
    rngs = [image_rng(seed, "test", pair, member) for pair in range(len(plan.issame)) for member in (0, 1)]
    return render_faces(people, rngs)


def generate_demo_data(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = DEMO_DATA.seed,
    test_identities: int = DEMO_DATA.test_identities,
    pairs: int = DEMO_DATA.pairs,
    calibration_identities: int = DEMO_DATA.calibration_identities,
    calibration_images: int = DEMO_DATA.calibration_images,
    train_identities: int = 0,
    train_images_per_identity: int = 0,
    pairs_txt: bool = False,
) -> dict[str, Path]:
    """Write the demo data set under ``out_dir`` and return the paths it wrote.

    Keys: ``lfw_bin``, ``calibration`` (a folder of JPEG crops), and when asked ``pairs_txt`` with
    ``images`` (an LFW-style tree of the same pairs) and ``train`` (``train.npz``: images, labels).
    """
    if calibration_images and calibration_identities < 1:
        raise ValueError("calibration images need at least one calibration identity")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    people = make_identities(test_identities, seed, split="test")
    plan = make_verification_pairs(test_identities, pairs=pairs, seed=seed)
    images = render_pairs(people, plan, seed=seed)
    encoded = [encode_image(image, "JPEG", quality=JPEG_QUALITY) for image in images]
    paths = {"lfw_bin": root / "lfw.bin", "calibration": root / "calibration"}
    write_lfw_bin(paths["lfw_bin"], encoded, plan.issame.tolist())
    if pairs_txt:
        paths["pairs_txt"], paths["images"] = _write_pairs_tree(root, people, plan, encoded)

    paths["calibration"].mkdir(exist_ok=True)
    calibration_people = make_identities(calibration_identities, seed, split="calibration")
    chosen = [calibration_people[k % calibration_identities] for k in range(calibration_images)]
    rngs = [image_rng(seed, "calibration", k) for k in range(calibration_images)]
    for k, (person, image) in enumerate(zip(chosen, render_faces(chosen, rngs), strict=True)):
        (paths["calibration"] / f"{person.name}_{k:04d}.jpg").write_bytes(
            encode_image(image, "JPEG", JPEG_QUALITY)
        )

    if train_identities and train_images_per_identity:
        train_images, labels = make_training_set(
            seed, identities=train_identities, images_per_identity=train_images_per_identity
        )
        paths["train"] = root / "train.npz"
        np.savez(paths["train"], images=train_images, labels=labels)
    return paths


def _write_pairs_tree(
    root: Path, people: Sequence[Identity], plan: PairPlan, encoded: Sequence[bytes]
) -> tuple[Path, Path]:
    """The same pairs as LFW's ``pairs.txt`` plus ``images/<name>/<name>_<NNNN>.jpg`` (1-based)."""
    image_root = root / "images"
    counts: dict[str, int] = {}
    lines = [f"{FOLDS}\t{len(plan.issame) // (2 * FOLDS)}"]
    for pair, (first, second) in enumerate(plan.identity_index):
        numbered: list[tuple[str, int]] = []
        for member, person_index in enumerate((first, second)):
            name = people[int(person_index)].name
            counts[name] = counts.get(name, 0) + 1
            folder = image_root / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}_{counts[name]:04d}.jpg").write_bytes(encoded[2 * pair + member])
            numbered.append((name, counts[name]))
        (name_a, n_a), (name_b, n_b) = numbered
        lines.append(f"{name_a}\t{n_a}\t{n_b}" if plan.issame[pair] else f"{name_a}\t{n_a}\t{name_b}\t{n_b}")
    pairs_txt = root / "pairs.txt"
    pairs_txt.write_text("\n".join(lines) + "\n")
    return pairs_txt, image_root


def describe(data: DemoData = DEMO_DATA) -> dict[str, Any]:
    """The data parameters as recorded next to a trained model."""
    return {"generator": "qfleet.lfw.synthetic", **data.as_dict()}
