"""Writing results: atomic output directories and JSON files.

A command that fails half-way must not leave a half-written output directory behind, or a later
run (or the operator) could mistake it for a finished artifact. Commands therefore build their
output in a temporary sibling directory and rename it into place only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qfleet.errors import InputError


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds.

    On an exception the temporary directory is removed and ``out`` is left as it was (a previous
    good result stays). With ``overwrite`` an existing ``out`` is replaced on success.
    """
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise InputError(f"output path {target} exists and is not a directory", hint="choose another --out")
    if target.exists() and not overwrite:
        raise InputError(
            f"output directory {target} already exists", hint="remove it or choose another --out"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup: Path | None = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (write to a temp file, then rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning the usual failures into an :class:`InputError` naming the file."""
    target = Path(path)
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{target} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{target} is not readable JSON: {exc}") from None


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
