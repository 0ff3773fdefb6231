"""Write an LFW-style ``pairs.txt`` tree from images in memory, for tests of the tree reader.

(The demo data writes its own tree, from its pair plan: ``qfleet.lfw.synthetic``.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from qfleet.lfw.dataset import IMAGE_EXTENSIONS, image_file_name


@dataclass(frozen=True)
class PairsTree:
    """Where :func:`write_pairs_tree` wrote a dataset, and its pairs in file order."""

    pairs_txt: Path
    images: Path
    #: (name1, n1, name2, n2) in the order pairs.txt lists them (and :func:`load_pairs_txt` loads).
    pairs: tuple[tuple[str, int, str, int], ...]


def write_pairs_tree(
    root: str | os.PathLike[str],
    identities: Mapping[str, Sequence[bytes]],
    pairs: Sequence[tuple[str, int, str, int]],
    *,
    folds: int = 10,
    ext: str = "jpg",
) -> PairsTree:
    """Write ``root/pairs.txt`` and ``root/images/<name>/<name>_<NNNN>.<ext>``.

    ``identities[name][k]`` is written as image number ``k + 1`` (LFW numbers from 1). A pair
    ``(name1, n1, name2, n2)`` is matched when the names are equal. pairs.txt lists, per fold,
    ``per_fold`` matched then ``per_fold`` mismatched pairs: the matched and the mismatched pairs
    are each dealt to the folds in the order given, so both counts must be equal and divisible by
    ``folds``.
    """
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"extension {ext!r} is not one of {IMAGE_EXTENSIONS}")
    matched = [(str(a), int(m), str(b), int(n)) for a, m, b, n in pairs if a == b]
    mismatched = [(str(a), int(m), str(b), int(n)) for a, m, b, n in pairs if a != b]
    if folds < 1 or len(matched) != len(mismatched) or len(matched) % folds:
        raise ValueError(
            f"{len(matched)} matched and {len(mismatched)} mismatched pairs cannot fill {folds} folds "
            "(they must be equal and divisible by the number of folds)"
        )
    for name in identities:
        # Names become path components and pairs.txt tokens: nothing that leaves the tree or splits a line.
        if name in (".", "..") or any(ch in name for ch in "/\\\0") or any(ch.isspace() for ch in name):
            raise ValueError(f"{name!r} is not a valid identity name")
    for name1, n1, name2, n2 in pairs:
        for name, number in ((name1, n1), (name2, n2)):
            if name not in identities or not 1 <= number <= len(identities[name]):
                raise ValueError(f"pair refers to image {name} #{number}, which is not among the identities")
    target = Path(root)
    images_dir = target / "images"
    for name, images in identities.items():
        folder = images_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for number, data in enumerate(images, start=1):
            (folder / image_file_name(name, number, ext)).write_bytes(bytes(data))
    per_fold = len(matched) // folds
    ordered: list[tuple[str, int, str, int]] = []
    lines = [f"{folds}\t{per_fold}"]
    for fold in range(folds):
        chunk = slice(fold * per_fold, (fold + 1) * per_fold)
        for name1, n1, _, n2 in matched[chunk]:
            lines.append(f"{name1}\t{n1}\t{n2}")
            ordered.append((name1, n1, name1, n2))
        for name1, n1, name2, n2 in mismatched[chunk]:
            lines.append(f"{name1}\t{n1}\t{name2}\t{n2}")
            ordered.append((name1, n1, name2, n2))
    pairs_txt = target / "pairs.txt"
    tmp = pairs_txt.with_name(f".{pairs_txt.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, pairs_txt)
    return PairsTree(pairs_txt=pairs_txt, images=images_dir, pairs=tuple(ordered))
