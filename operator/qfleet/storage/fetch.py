"""Fetching a model (or one file) into a local directory, verified: the storage initializer.

- A model directory (``s3://`` prefix, ``pvc://`` or local path holding ``qfleet.json``): every
  file that ``qfleet.json``'s ``files`` record lists is downloaded and its sha256 checked; the
  ``qfleet.json`` itself is written last. ``sha256`` (optional) pins ``qfleet.json``'s own digest,
  and with it every file it lists. A local directory written before ``files`` existed is copied
  (its IR files) without per-file verification, and the result says ``verified: false``.
- One file (``https://``, an ``s3://`` object, a local file): streamed, checked against ``sha256``
  when given.

Everything lands in a staging directory first (in ``DIR``'s parent, or inside ``DIR`` when it is
a mount point such as an emptyDir volume) and moves into ``DIR`` only when every check passed:
a failed fetch leaves ``DIR`` as it was. ``DIR`` must be absent or empty, or already hold the
same ``qfleet.json`` (a restarted init container): then its files are verified and kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from qfleet.errors import InputError
from qfleet.model.metadata import METADATA_FILE, MODEL_BIN, MODEL_XML
from qfleet.outputs import sha256_file
from qfleet.storage.publish import FILES_KEY, UPLOAD_KEY
from qfleet.storage.s3 import ObjectMissingError, S3Store
from qfleet.storage.transfer import (
    IntegrityError,
    Progress,
    checked_sha256,
    copy_file,
    download_http,
    verify,
)
from qfleet.storage.uris import HttpUri, LocalPath, S3Uri, checked_key, parse_location

_SHA256_LENGTH = 64


def fetch(
    source: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: bool = False,
    allow_http: bool = False,
    store: S3Store | None = None,
) -> dict[str, Any]:
    """Fetch ``source`` into ``dest``; return ``{source, dest, files, bytes, seconds, mb_per_s, ...}``."""
    started = time.perf_counter()
    location = parse_location(source, allow_http=allow_http)
    pinned = checked_sha256(sha256, what="--sha256")
    target = Path(dest)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a directory")
    if isinstance(location, S3Uri):
        fetcher: _Fetcher = _S3Fetcher(location, store or S3Store())
    elif isinstance(location, HttpUri):
        fetcher = _HttpFetcher(location)
    else:
        fetcher = _LocalFetcher(location)
    plan = fetcher.plan(pinned)
    result: dict[str, Any] = {"source": str(location), "dest": str(target), "kind": plan.kind}
    if _already_there(target, plan):
        size = sum((target / name).stat().st_size for name in plan.files)
        return result | _numbers(len(plan.files), size, started) | {"already_fetched": True}
    if target.exists() and any(target.iterdir()):
        raise InputError(
            f"{target} is not empty and holds no copy of {location}",
            hint="fetch into an empty or new directory",
        )
    total = sum(plan.sizes.values()) if plan.sizes else None
    bar = Progress(total, enabled=progress, label=target.name or str(target))
    staging = _staging_dir(target)
    try:
        size = 0
        for name, expected in plan.files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            written, digest = fetcher.get(name, path, bar)
            verify(digest, expected, what=f"{fetcher.describe(name)}")
            size += written
        if plan.metadata is not None:
            (staging / METADATA_FILE).write_bytes(plan.metadata)
            size += len(plan.metadata)
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    count = len(plan.files) + (plan.metadata is not None)
    return result | _numbers(count, size, started) | {"already_fetched": False, "verified": plan.verified}


class _Plan:
    def __init__(
        self,
        kind: str,
        files: dict[str, str | None],
        *,
        metadata: bytes | None = None,
        sizes: dict[str, int] | None = None,
        verified: bool = True,
        upload: str = "",
    ) -> None:
        self.kind = kind
        #: The sub-prefix (or folder) the files are in ("" for the model's own).
        self.upload = upload
        #: relative name -> expected sha256 (None: not known; only for unpinned single files).
        self.files = files
        #: qfleet.json's bytes, written last (None for a single file).
        self.metadata = metadata
        self.sizes = sizes or {}
        self.verified = verified


class _Fetcher:
    def plan(self, pinned: str | None) -> _Plan:
        raise NotImplementedError

    def get(self, name: str, target: Path, bar: Progress) -> tuple[int, str]:
        raise NotImplementedError

    def describe(self, name: str) -> str:
        raise NotImplementedError


def _model_plan(raw: bytes, *, where: str, pinned: str | None) -> _Plan:
    """The files a published ``qfleet.json`` lists, each with its sha256."""
    if pinned is not None:
        verify(hashlib.sha256(raw).hexdigest(), pinned, what=f"{where}/{METADATA_FILE}")
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}/{METADATA_FILE} is not JSON: {exc}") from None
    files = metadata.get(FILES_KEY) if isinstance(metadata, dict) else None
    if not isinstance(files, dict) or not files:
        raise InputError(
            f"{where}/{METADATA_FILE} lists no files with their sha256",
            hint="publish the model with qfleet pipeline --out s3://...",
        )
    checked: dict[str, str | None] = {}
    for name, digest in files.items():
        key = checked_key(str(name), uri=f"{where}/{name}")
        if key == METADATA_FILE or not isinstance(digest, str) or len(digest) != _SHA256_LENGTH:
            raise InputError(f"{where}/{METADATA_FILE}: bad files entry {name!r}: {digest!r}")
        checked[key] = checked_sha256(digest, what=f"{where}/{name}")
    upload = metadata.get(UPLOAD_KEY, "")
    if not isinstance(upload, str) or (upload and "/" in checked_key(upload, uri=f"{where}/{upload}")):
        raise InputError(f"{where}/{METADATA_FILE}: bad {UPLOAD_KEY} entry {upload!r}")
    return _Plan("model", checked, metadata=raw, upload=upload)


class _S3Fetcher(_Fetcher):
    def __init__(self, uri: S3Uri, store: S3Store) -> None:
        self.uri, self.store = uri, store
        self.files = uri  # where the model's files are (its upload prefix, once planned)
        self.single = False

    def plan(self, pinned: str | None) -> _Plan:
        marker = self.uri.join(METADATA_FILE)
        try:
            raw = self.store.read_bytes(marker)
        except ObjectMissingError:
            if self.uri.key and self.store.exists(self.uri):
                self.single = True
                return _Plan(
                    "file", {self.uri.name: pinned}, sizes={self.uri.name: self.store.size(self.uri)}
                )
            raise ObjectMissingError(
                f"{self.uri}: NoSuchKey: no {METADATA_FILE} below it (not a published model) "
                "and no object of that name",
                code="NoSuchKey",
            ) from None
        plan = _model_plan(raw, where=str(self.uri), pinned=pinned)
        self.files = self.uri.join(plan.upload) if plan.upload else self.uri
        plan.sizes = {key.removeprefix(self.files.prefix): size for key, size in self.store.list(self.files)}
        return plan

    def get(self, name: str, target: Path, bar: Progress) -> tuple[int, str]:
        uri = self.uri if self.single else self.files.join(name)
        with target.open("wb") as handle:
            return self.store.download(uri, handle, progress=bar)

    def describe(self, name: str) -> str:
        return str(self.uri if self.single else self.files.join(name))


class _HttpFetcher(_Fetcher):
    def __init__(self, uri: HttpUri) -> None:
        self.uri = uri
        self.pinned: str | None = None

    def plan(self, pinned: str | None) -> _Plan:
        self.pinned = pinned
        return _Plan("file", {self.uri.name: pinned}, verified=pinned is not None)

    def get(self, name: str, target: Path, bar: Progress) -> tuple[int, str]:
        return download_http(self.uri, target, sha256=self.pinned, progress=bar)

    def describe(self, name: str) -> str:
        return str(self.uri)


class _LocalFetcher(_Fetcher):
    def __init__(self, location: LocalPath) -> None:
        self.path = Path(location.path)
        self.files = self.path
        self.single = False

    def plan(self, pinned: str | None) -> _Plan:
        if self.path.is_file():
            self.single = True
            return _Plan("file", {self.path.name: pinned}, verified=pinned is not None)
        marker = self.path / METADATA_FILE
        if not marker.is_file():
            raise InputError(f"{self.path} is neither a file nor a model directory with {METADATA_FILE}")
        raw = marker.read_bytes()
        try:
            plan = _model_plan(raw, where=str(self.path), pinned=pinned)
            self.files = self.path / plan.upload if plan.upload else self.path  # an S3 prefix copied here
            return plan
        except InputError:
            metadata = json.loads(raw)
            if isinstance(metadata, dict) and FILES_KEY in metadata:
                raise
        # Written before artifacts recorded their files: copy the IR as it is, unverified.
        if pinned is not None:
            verify(hashlib.sha256(raw).hexdigest(), pinned, what=str(marker))
        names = [name for name in (MODEL_XML, MODEL_BIN) if (self.path / name).is_file()]
        return _Plan("model", dict.fromkeys(names), metadata=raw, verified=False)

    def get(self, name: str, target: Path, bar: Progress) -> tuple[int, str]:
        return copy_file(self.path if self.single else self.files / name, target, progress=bar)

    def describe(self, name: str) -> str:
        return str(self.path if self.single else self.files / name)


def _already_there(target: Path, plan: _Plan) -> bool:
    """Whether ``target`` already holds this exact model (a restarted init container)."""
    if plan.metadata is None or not (target / METADATA_FILE).is_file():
        return False
    if (target / METADATA_FILE).read_bytes() != plan.metadata:
        return False
    for name, expected in plan.files.items():
        path = target / name
        if not path.is_file():
            return False
        digest = sha256_file(path)
        if expected is not None and digest != expected:
            raise IntegrityError(f"{path}: sha256 {digest} does not match {METADATA_FILE}'s {expected}")
    return True


def _staging_dir(target: Path) -> Path:
    """A fresh directory on ``target``'s filesystem: inside it when it is a mount point."""
    if target.is_dir() and os.path.ismount(target):
        return Path(tempfile.mkdtemp(prefix=".qfleet-partial-", dir=target))
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def _commit(staging: Path, target: Path) -> None:
    """Move the verified files into ``target`` (``qfleet.json`` last when moved one by one)."""
    if staging.parent != target:
        os.replace(staging, target)  # a new or empty directory is replaced in one step
        target.chmod(0o755)
        return
    entries = sorted(staging.iterdir(), key=lambda path: path.name == METADATA_FILE)
    for entry in entries:
        os.replace(entry, target / entry.name)
    staging.rmdir()


def _numbers(files: int, size: int, started: float) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    return {
        "files": files,
        "bytes": size,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / seconds, 1) if seconds > 0 else None,
    }
