"""``qfleet pipeline`` with ``s3://`` or ``https://`` inputs and an ``s3://`` output: download,
run locally, publish.

The pipeline itself only reads and writes local paths. Here its ``https://`` inputs (one file
each, checked against the sha256 pinned for it) and its ``s3://`` inputs are downloaded
into a temporary directory first (an MXNet source prefix brings its ``-symbol.json`` and
``-NNNN.params``; an IR ``.xml`` its ``.bin``; a calibration prefix every object below it), the
pipeline writes into a local temporary output, and each model directory of that output
(``fp32``, ``int8``, ``bf16``) is then published below ``--out`` with ``qfleet.json`` last (see
:mod:`qfleet.storage.publish`), followed by the JSON reports. The result names the ``s3://``
artifacts. A failure to download or publish is reported like a failed stage (``fetch-inputs``,
``publish``), with exit status 2 for what the user must fix (AccessDenied, NoSuchBucket, NoSuchKey).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qfleet.errors import InputError, QfleetError
from qfleet.model.metadata import MODEL_XML
from qfleet.outputs import write_json
from qfleet.storage.publish import publish
from qfleet.storage.s3 import S3Store
from qfleet.storage.transfer import checked_sha256, download_http
from qfleet.storage.uris import S3Uri, is_http, is_s3, parse_http_uri, parse_s3_uri

log = logging.getLogger(__name__)

MODEL_DIRS = ("fp32", "bf16", "int8")
_PARAMS = re.compile(r"-(\d{4})\.params$")
ARTIFACT_KEYS = {"artifact": "int8", "fp32_artifact": "fp32", "bf16_artifact": "bf16"}


INPUTS = ("source", "calibration", "lfw")


def uses_object_storage(*values: str | None) -> bool:
    """Whether any of ``values`` is remote (``s3://``, ``https://``, ``http://``)."""
    return any(is_s3(value) or is_http(value) for value in values)


def check_pins(spec: Any) -> None:
    """A sha256 pin belongs to an https:// input, and a plain http:// input needs one."""
    for name in INPUTS:
        value, pin = getattr(spec, name), getattr(spec, f"{name}_sha256", None)
        flag = f"--{name}-sha256"
        if pin is not None and not is_http(value):
            raise InputError(f"{flag} pins an https:// download, but --{name} is {value!r}")
        checked_sha256(pin, what=flag)
        if is_http(value):
            parse_http_uri(value, allow_http=getattr(spec, "allow_http", False))
            if value.strip().lower().startswith("http://") and pin is None:
                raise InputError(f"--{name} {value!r} is plain http: pin its content with {flag}")


def download_object(store: S3Store, uri: S3Uri, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        store.download(uri, handle)
    return target


def download_source(store: S3Store, uri: S3Uri, fmt: str, epoch: int | None, folder: Path) -> Path:
    """The source model, local: an MXNet prefix's symbol and params, an IR's .xml and .bin, an .onnx."""
    if fmt == "mxnet":
        parent = S3Uri(uri.bucket, uri.key.rsplit("/", 1)[0] if "/" in uri.key else "")
        wanted = f"{uri.key}-"
        names = [key for key, _ in store.list(parent) if key.startswith(wanted)]
        params = [key for key in names if _PARAMS.search(key)]
        if epoch is not None:
            params = [key for key in params if key.endswith(f"-{epoch:04d}.params")]
        symbol = f"{uri.key}-symbol.json"
        if symbol not in names or not params:
            raise InputError(
                f"{uri}: no {uri.name}-symbol.json and {uri.name}-NNNN.params below it",
                hint="--source is the checkpoint prefix, e.g. s3://bucket/models/arcface/model",
            )
        for key in [symbol, *params]:
            download_object(store, S3Uri(uri.bucket, key), folder / key.rsplit("/", 1)[-1])
        return folder / uri.name
    local = download_object(store, uri, folder / uri.name)
    if fmt == "openvino" and local.suffix == ".xml":
        download_object(store, S3Uri(uri.bucket, uri.key[: -len(".xml")] + ".bin"), local.with_suffix(".bin"))
    return local


def download_file_or_prefix(store: S3Store, uri: S3Uri, folder: Path) -> Path:
    """One object, or (when no object has that key) every object below the prefix."""
    if uri.key and store.exists(uri):
        return download_object(store, uri, folder / uri.name)
    objects = store.list(uri)
    if not objects:
        raise InputError(f"{uri}: NoSuchKey: no object of that name and none below it")
    root = folder / (uri.name or uri.bucket)
    for key, _ in objects:
        relative = key.removeprefix(uri.prefix)
        S3Uri(uri.bucket, uri.key).join(relative)  # refuses '..' and other unsafe keys
        download_object(store, S3Uri(uri.bucket, key), root / relative)
    return root


def _stage_failed(result: dict[str, Any], stage: str, exc: QfleetError) -> dict[str, Any]:
    result["error"] = {"stage": stage, "message": str(exc), "exit_code": exc.exit_code}
    return result


def run_with_object_storage(
    spec: Any, run: Callable[[Any], dict[str, Any]], *, store: S3Store | None = None
) -> dict[str, Any]:
    """Run ``run(spec)`` (the pipeline) with its ``s3://`` inputs local and its output published.

    The pins were checked by the caller (:func:`check_pins`, before any work)."""
    work = Path(tempfile.mkdtemp(prefix="qfleet-pipeline-"))
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        try:
            needs_store = any(is_s3(v) for v in (spec.source, spec.calibration, spec.lfw, spec.out))
            store = store or (S3Store() if needs_store else None)
            local = _local_inputs(spec, store, work)
        except QfleetError as exc:
            return _stage_failed({"timings": {"fetch-inputs": _since(started)}}, "fetch-inputs", exc)
        timings["fetch-inputs"] = _since(started)
        out_uri = parse_s3_uri(spec.out) if is_s3(spec.out) else None
        if out_uri is not None:
            local = dataclasses.replace(local, out=str(work / "out"))
        result = run(local)
        result.setdefault("timings", {}).update(timings)
        if out_uri is None or "error" in result:
            return result
        assert store is not None
        started = time.perf_counter()
        try:
            result["published"] = _publish_all(result, Path(local.out), out_uri, store)
        except QfleetError as exc:
            return _stage_failed(result, "publish", exc)
        finally:
            result["timings"]["publish"] = _since(started)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _local_inputs(spec: Any, store: S3Store | None, work: Path) -> Any:
    changes: dict[str, str] = {}
    for field in INPUTS:
        value = getattr(spec, field)
        if is_http(value):
            uri = parse_http_uri(value, allow_http=getattr(spec, "allow_http", False))
            target = work / field / uri.name
            target.parent.mkdir(parents=True)
            download_http(uri, target, sha256=getattr(spec, f"{field}_sha256", None))
            changes[field] = str(target)
    if is_s3(spec.source):
        assert store is not None
        source = parse_s3_uri(spec.source)
        changes["source"] = str(download_source(store, source, spec.fmt, spec.epoch, work / "source"))
    for field in ("calibration", "lfw"):
        value = getattr(spec, field)
        if is_s3(value):
            assert store is not None
            changes[field] = str(download_file_or_prefix(store, parse_s3_uri(value), work / field))
    if is_s3(spec.out):
        parse_s3_uri(spec.out)  # a bad --out is refused before the work, not after it
    return dataclasses.replace(spec, **changes)


def _publish_all(result: dict[str, Any], out: Path, out_uri: S3Uri, store: S3Store) -> dict[str, Any]:
    """Each model directory below ``out_uri`` (int8 last), then the reports; artifact paths -> URIs."""
    for key, name in ARTIFACT_KEYS.items():
        if key in result:
            result[key] = str(out_uri.join(name, MODEL_XML))
    published: dict[str, Any] = {}
    for name in MODEL_DIRS:
        if (out / name).is_dir():
            outcome = publish(out / name, out_uri.join(name), store=store)
            published[name] = "already published" if outcome["already_published"] else "published"
    write_json(out / "result.json", {k: v for k, v in result.items() if k != "published"})
    for report in sorted(out.glob("*.json")):
        target = out_uri.join(report.name)
        if not store.exists(target):
            store.upload(report, target)
    if any(state == "already published" for state in published.values()):
        log.warning("%s was already published: kept as it was (a re-run never replaces a model)", out_uri)
    return published


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
