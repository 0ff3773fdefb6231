"""Publishing a model directory to ``s3://.../<key>/<tier>``: every file, ``qfleet.json`` last.

Readers treat a prefix without ``qfleet.json`` as not there, so uploading it last makes a
publication appear whole or not at all. Before the upload, ``qfleet.json`` gets a ``files`` record
(``{relative name: sha256}`` of every other file in the directory), which is what
:func:`qfleet.storage.fetch.fetch` verifies. A prefix that already has a ``qfleet.json`` is never
overwritten: a re-run reports "already published" (the check is repeated atomically with
``If-None-Match: *`` where the store supports conditional writes).

The files go below a temporary prefix of their own, ``<prefix>/.upload-<random>/``, which
``qfleet.json`` names (``upload``). Two publishers of the same prefix (a Job's pod retried while
the first still runs) thus never overwrite each other's files: the one whose ``qfleet.json``
lands first is the publication, with exactly its own files, and the other removes its upload.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from qfleet.errors import InputError
from qfleet.model.metadata import METADATA_FILE
from qfleet.outputs import read_json, sha256_file, write_json
from qfleet.storage.s3 import S3Store
from qfleet.storage.uris import S3Uri, checked_key

#: The ``qfleet.json`` key that lists an artifact's files and their sha256.
FILES_KEY = "files"
#: The ``qfleet.json`` key that names the sub-prefix holding those files (absent: the prefix itself).
UPLOAD_KEY = "upload"

log = logging.getLogger(__name__)


def artifact_files(directory: Path) -> dict[str, str]:
    """``{relative posix name: sha256}`` of every file below ``directory`` except qfleet.json."""
    files: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(directory).as_posix()
        if name == METADATA_FILE or path.name.startswith("."):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
            raise InputError(f"{path} links outside {directory}; publish real files")
        files[checked_key(name, uri=str(path))] = sha256_file(path)
    return files


def record_files(directory: Path) -> dict[str, Any]:
    """Add (or refresh) the ``files`` record in ``directory/qfleet.json``; return the metadata."""
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise InputError(f"{directory} has no {METADATA_FILE}: not a qfleet model directory")
    metadata = read_json(meta_path)
    if not isinstance(metadata, dict):
        raise InputError(f"{meta_path} does not hold a JSON object")
    metadata[FILES_KEY] = artifact_files(directory)
    write_json(meta_path, metadata)
    return metadata


def publish(directory: Path, destination: S3Uri, *, store: S3Store | None = None) -> dict[str, Any]:
    """Upload ``directory`` below ``destination``; qfleet.json last, never over an existing one."""
    started = time.perf_counter()
    store = store or S3Store()
    marker = destination.join(METADATA_FILE)
    metadata = record_files(directory)
    result: dict[str, Any] = {"uri": str(destination), "files": len(metadata[FILES_KEY]) + 1}
    if store.exists(marker):
        return result | {"already_published": True, "bytes": 0, "seconds": _since(started)}
    upload = f".upload-{uuid.uuid4().hex[:16]}"
    size = 0
    for name in metadata[FILES_KEY]:
        path = directory / name
        store.upload(path, destination.join(upload, name))
        size += path.stat().st_size
    published = metadata | {UPLOAD_KEY: upload}
    body = (json.dumps(published, indent=2, sort_keys=True) + "\n").encode()
    if not store.put_if_absent(body, marker):
        _remove_upload(store, destination.join(upload), metadata[FILES_KEY])
        return result | {"already_published": True, "bytes": size, "seconds": _since(started)}
    return result | {"already_published": False, "bytes": size + len(body), "seconds": _since(started)}


def _remove_upload(store: S3Store, upload: S3Uri, names: dict[str, str]) -> None:
    """Another publisher won: its qfleet.json names its own files, ours are litter."""
    for name in names:
        try:
            store.delete(upload.join(name))
        except InputError as exc:  # litter stays; the publication is right either way
            log.warning("could not remove %s after losing the publication race: %s", upload.join(name), exc)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
