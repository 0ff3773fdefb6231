"""Convert a face model (MXNet checkpoint, ONNX, OpenVINO IR) into an FP32 OpenVINO IR.

Every IR written here takes the same input -- RGB, raw 0..255, NCHW float32 with a dynamic batch
-- so servers can batch and callers never need to know the source model's convention: a mean,
a scale and an RGB->BGR swap that the source expects are baked into the graph with OpenVINO's
PrePostProcessor. Weights stay FP32 (``compress_to_fp16=False``): the FP16 default would shift
the baseline that the INT8 accuracy gate compares against.

MXNet goes MXNet -> ONNX (a temporary file) -> ``openvino.convert_model``; OpenVINO no longer
reads MXNet itself. The output directory is written atomically: a failure leaves nothing.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfleet import defaults
from qfleet.errors import ConversionError, InputError
from qfleet.model.metadata import (
    MODEL_XML,
    library_versions,
    read_metadata,
    require_model_xml,
    write_metadata,
)
from qfleet.model.runtime import openvino_reason
from qfleet.outputs import atomic_output_dir, sha256_file

log = logging.getLogger(__name__)

FORMATS = defaults.SOURCE_FORMATS
#: insightface's input: one 112x112 RGB face crop.
DEFAULT_INPUT_SHAPE = (1, 3, 112, 112)
_STAGES = {
    "mxnet": (
        "locate checkpoint",
        "check checkpoint",
        "export ONNX",
        "convert",
        "reshape",
        "compile",
        "save",
    ),
    "onnx": ("read ONNX", "convert", "reshape", "compile", "save"),
    "openvino": ("read IR", "reshape", "compile", "save"),
}


def convert_model(
    source: str | os.PathLike[str],
    *,
    fmt: str,
    out_dir: str | os.PathLike[str],
    epoch: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    bgr: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/model.xml``, ``model.bin`` and ``qfleet.json``; return the metadata written.

    ``input_shape`` is N,C,H,W (N only matters for checking; the IR's batch is dynamic). It
    defaults to 1,3,112,112 for MXNet and to the model's own C,H,W for ONNX and IR when static.
    ``mean``/``scale`` (one value or one per channel, in RGB order) mean the source model wants
    ``(pixel - mean) / scale``; ``bgr`` means it wants BGR channel order.
    """
    import openvino as ov

    started = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown source format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if epoch is not None and fmt != "mxnet":
        raise InputError(f"--epoch applies to MXNet checkpoints, not to the {fmt} source {source}")
    shape = None if input_shape is None else check_input_shape(input_shape)
    source_path = Path(source)
    with (
        _Stages(fmt, enabled=progress) as stage,
        tempfile.TemporaryDirectory(prefix="qfleet-convert-") as work,
    ):
        if fmt == "mxnet":
            loaded = _from_mxnet(source_path, epoch, shape, Path(work), stage)
        elif fmt == "onnx":
            loaded = _from_onnx(source_path, stage)
        else:
            loaded = _from_ir(source_path, stage)
        _refuse_out_dir_holding_source(Path(out_dir), loaded.files)
        stage("reshape")
        input_name, shape, own_dims = _set_dynamic_batch(loaded.model, shape or loaded.shape, source_path)
        preprocessing = _bake_preprocessing(loaded.model, shape, mean=mean, scale=scale, bgr=bgr)
        if _has_baking(preprocessing) and _has_baking(loaded.previous.get("input") or {}):
            raise InputError(
                f"IR {source} already has preprocessing baked in (see its qfleet.json)",
                hint="convert from the original model instead of adding --mean/--scale/--bgr again",
            )
        stage("compile")
        precision = "int8" if loaded.previous.get("kind") == "int8" else "fp32"
        runtime = _check_runs(loaded.model, shape, own_dims, source_path, precision=precision)
        stage("save")
        with atomic_output_dir(out_dir) as staging:
            ov.save_model(loaded.model, staging / MODEL_XML, compress_to_fp16=False)
            metadata = _metadata(
                loaded,
                fmt=fmt,
                input_name=input_name,
                preprocessing=preprocessing,
                duration_s=time.perf_counter() - started,
            )
            metadata.update(runtime)
            write_metadata(staging, metadata)
    log.info(
        "converted %s (%s) to %s in %.1f s", source, fmt, Path(out_dir) / MODEL_XML, metadata["duration_s"]
    )
    return metadata


class _Stages:
    """A tqdm bar over the named stages of one conversion (on stderr)."""

    def __init__(self, fmt: str, *, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=len(_STAGES[fmt]), desc="convert", unit="step", disable=not enabled)
        self._started = False

    def __call__(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(f"convert: {name}")

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._bar.update(1)
        else:
            self._bar.leave = False  # erase the bar: the error is the one line left
        self._bar.close()


@dataclass
class _Loaded:
    """A source read into an OpenVINO model, with what the metadata needs to know about it."""

    model: Any
    files: list[Path]
    shape: tuple[int, int, int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)  # an IR's existing qfleet.json


def check_input_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """An N,C,H,W shape of positive ints, or an :class:`InputError` naming it."""
    dims = tuple(shape)
    text = ",".join(str(d) for d in dims)
    if len(dims) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise InputError(
            f"input shape {text} is not N,C,H,W with four positive integers", hint="e.g. 1,3,112,112"
        )
    return (dims[0], dims[1], dims[2], dims[3])


# --------------------------------------------------------------------------------------------
# Reading each source format


def _from_mxnet(
    source: Path,
    epoch: int | None,
    shape: tuple[int, int, int, int] | None,
    work: Path,
    stage: Callable[[str], None],
) -> _Loaded:
    from qfleet.model import mxnet_io

    stage("locate checkpoint")
    files = mxnet_io.locate_checkpoint(source, epoch=epoch)
    stage("check checkpoint")
    shape = shape or DEFAULT_INPUT_SHAPE
    checkpoint = mxnet_io.load_checkpoint(files, input_shape=shape)
    stage("export ONNX")
    onnx_path = mxnet_io.export_onnx(checkpoint, work / "model.onnx")
    stage("convert")
    model = _convert_onnx(onnx_path, what=f"MXNet checkpoint {files.prefix} (exported to ONNX)")
    info: dict[str, Any] = {"epoch": files.epoch, "output": checkpoint.output_name}
    if checkpoint.dropped_outputs:
        info["dropped_outputs"] = checkpoint.dropped_outputs
    return _Loaded(model=model, files=[files.symbol, files.params], shape=shape, info=info)


def _from_onnx(source: Path, stage: Callable[[str], None]) -> _Loaded:
    from openvino.frontend import FrontEndManager

    stage("read ONNX")
    if not source.is_file():
        raise InputError(f"ONNX model {source} does not exist or is not a file")
    # Asking the ONNX frontend first keeps OpenVINO from trying every other framework's reader
    # on a file that is not ONNX at all (and from their noisy logs).
    if not FrontEndManager().load_by_framework("onnx").supported(str(source)):
        raise InputError(
            f"{source} is not an ONNX model, or it is truncated", hint="check --source and --format"
        )
    stage("convert")
    return _Loaded(model=_convert_onnx(source, what=f"ONNX model {source}"), files=[source])


def _convert_onnx(onnx_path: Path, *, what: str) -> Any:
    import openvino as ov
    from openvino.frontend import OpConversionFailure

    try:
        return ov.convert_model(str(onnx_path))
    except OpConversionFailure as exc:
        ops = unconverted_operators(str(exc))
        if ops:
            raise ConversionError(
                f"OpenVINO cannot convert operator {', '.join(ops)} in {what}",
                hint="replace it with standard operators, or give OpenVINO an extension for it",
            ) from None
        raise ConversionError(f"OpenVINO could not convert {what}: {openvino_reason(exc)}") from None
    except Exception as exc:  # OpenVINO raises plain RuntimeError/its own Error for unreadable files
        raise InputError(f"{what} is not a readable ONNX model: {openvino_reason(exc)}") from None


def _from_ir(source: Path, stage: Callable[[str], None]) -> _Loaded:
    import openvino as ov

    stage("read IR")
    from openvino.frontend import FrontEndManager

    xml = require_model_xml(source)
    # As for ONNX: ask the IR reader first, so other frameworks' readers do not try (and log).
    if not FrontEndManager().load_by_framework("ir").supported(str(xml)):
        raise InputError(f"{xml} is not an OpenVINO IR .xml file", hint="check --source and --format")
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:
        raise InputError(f"{xml} is not a readable OpenVINO IR: {openvino_reason(exc)}") from None
    try:
        previous = read_metadata(xml)
    except InputError as exc:
        log.warning("ignoring unreadable metadata beside %s: %s", xml, exc)
        previous = {}
    return _Loaded(model=model, files=[xml, xml.with_suffix(".bin")], previous=previous)


_UNCONVERTED_RE = re.compile(r"(?:No conversion rule found for operations|Conversion is failed for):\s*(.+)")


def unconverted_operators(message: str) -> list[str]:
    """Operator types named in an OpenVINO ``OpConversionFailure`` summary, without opset suffixes."""
    ops: list[str] = []
    for match in _UNCONVERTED_RE.finditer(message):
        for item in match.group(1).split(","):
            name = re.sub(r"-\d+$", "", item.strip())
            if name and name not in ops:
                ops.append(name)
    return ops


# --------------------------------------------------------------------------------------------
# Shaping and preprocessing


def _dims(partial_shape: Any) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in partial_shape]


def _set_dynamic_batch(
    model: Any, shape: tuple[int, int, int, int] | None, source: Path
) -> tuple[str, tuple[int, int, int, int], list[int]]:
    """Reshape the one input to [-1,C,H,W]; returns its name, the N,C,H,W used, and its own dims."""
    import openvino as ov

    if len(model.inputs) != 1:
        names = ", ".join(i.get_any_name() for i in model.inputs)
        raise ConversionError(
            f"model {source} has {len(model.inputs)} inputs ({names}); qfleet expects one image"
        )
    port = model.input(0)
    name = port.get_any_name()
    own = _dims(port.get_partial_shape()) if port.get_partial_shape().rank.is_static else []
    if shape is None:
        static_chw = len(own) == 4 and all(d > 0 for d in own[1:])
        shape = (1, own[1], own[2], own[3]) if static_chw else DEFAULT_INPUT_SHAPE
    try:
        model.reshape({name: ov.PartialShape([-1, *shape[1:]])})
    except Exception as exc:
        own_text = ",".join("?" if d < 0 else str(d) for d in own) or "unknown"
        raise InputError(
            f"input shape {','.join(map(str, shape))} does not fit model {source} (its input is {own_text}): "
            f"{openvino_reason(exc)}",
            hint="pass the shape the model was trained for with --input-shape N,C,H,W",
        ) from None
    for output in model.outputs:
        dims = _dims(output.get_partial_shape())
        if dims and dims[0] != -1:
            raise ConversionError(
                f"model {source} fixes its output batch to {dims[0]} (output shape {dims}); "
                "it cannot serve batches",
                hint="export it with a batch dimension that flows through (no hard-coded reshapes)",
            )
    return name, shape, own


def _per_channel(values: Sequence[float] | None, channels: int, what: str) -> list[float]:
    if values is None:
        return []
    listed = [float(v) for v in values]
    if len(listed) == 1:
        listed *= channels
    if len(listed) != channels:
        raise InputError(
            f"--{what} has {len(listed)} values; give 1 or {channels} (one per channel, RGB order)"
        )
    return listed


def _bake_preprocessing(
    model: Any,
    shape: tuple[int, int, int, int],
    *,
    mean: Sequence[float] | None,
    scale: Sequence[float] | None,
    bgr: bool,
) -> dict[str, Any]:
    """Make the model take RGB raw pixels: (x - mean) / scale, then RGB->BGR, inside the graph."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    channels = shape[1]
    means = _per_channel(mean, channels, "mean")
    scales = _per_channel(scale, channels, "scale")
    if any(s == 0 for s in scales):
        raise InputError("--scale must not contain 0 (the input is divided by it)")
    if bgr and channels != 3:
        raise InputError(f"--bgr needs a 3-channel input, but the input shape has {channels} channels")
    if means or scales or bgr:
        ppp = PrePostProcessor(model)
        port = ppp.input()
        port.tensor().set_layout(ov.Layout("NCHW"))
        port.model().set_layout(ov.Layout("NCHW"))
        if bgr:
            port.tensor().set_color_format(ColorFormat.RGB)
        steps = port.preprocess()
        # Mean and scale come in RGB order, so they apply before the channel swap.
        if means:
            steps.mean(means)
        if scales:
            steps.scale(scales)
        if bgr:
            steps.convert_color(ColorFormat.BGR)
        ppp.build()
    return {"mean": means, "scale": scales, "model_color": "BGR" if bgr else "RGB"}


def _check_runs(
    model: Any, shape: tuple[int, int, int, int], own: list[int], source: Path, *, precision: str
) -> dict[str, Any]:
    """Compile for CPU (in f32) and run a batch of two, which catches what shape inference cannot.

    Exporters often bake a flatten size or a batch of 1 into Reshape constants: the IR then
    compiles for any shape and fails only on the first request, in a server. Returns how it ran
    (``precision``, ``inference_precision``, ``runtime_isa``) for ``qfleet.json``.
    """
    import numpy as np

    from qfleet.model.runtime import PrecisionError, compile_model

    try:
        variant = compile_model(model, precision=precision, hint="LATENCY", what=f"model {source}")
    except PrecisionError:
        raise
    except InputError as exc:  # compile_model's own message already names the model
        raise ConversionError(str(exc)) from None
    compiled = variant.compiled
    batch = np.random.default_rng(0).uniform(0, 255, size=(2, *shape[1:])).astype(np.float32)
    try:
        result = compiled(batch)[0]
    except Exception as exc:
        text = ",".join(map(str, shape))
        if own and own[1:] != list(shape[1:]):
            raise InputError(
                f"input shape {text} does not fit model {source} (its input is "
                f"{','.join('?' if d < 0 else str(d) for d in own)}): {openvino_reason(exc)}",
                hint="pass the shape the model was trained for with --input-shape N,C,H,W",
            ) from None
        raise ConversionError(
            f"model {source} fails on a batch of 2 at {text}: {openvino_reason(exc)}"
        ) from None
    if result.shape[:1] != (2,):
        raise ConversionError(
            f"model {source} returns shape {result.shape} for a batch of 2; it cannot batch"
        )
    if not np.isfinite(result).all():
        raise ConversionError(
            f"model {source} returns NaN or infinite values", hint="its weights may be corrupt"
        )
    return variant.describe()


def _has_baking(input_spec: dict[str, Any]) -> bool:
    return bool(input_spec.get("mean") or input_spec.get("scale")) or input_spec.get("model_color") == "BGR"


def _refuse_out_dir_holding_source(out_dir: Path, source_files: list[Path]) -> None:
    # The output directory is replaced as a whole; it must not take the source with it.
    out = out_dir.resolve()
    for path in source_files:
        if out in path.resolve().parents:
            raise InputError(f"--out {out_dir} holds the source file {path}", hint="choose another --out")


# --------------------------------------------------------------------------------------------
# Metadata


def _metadata(
    loaded: _Loaded, *, fmt: str, input_name: str, preprocessing: dict[str, Any], duration_s: float
) -> dict[str, Any]:
    model = loaded.model
    output = model.output(0)
    source: dict[str, Any] = {
        "format": fmt,
        "files": {p.name: sha256_file(p) for p in loaded.files},
        "epoch": loaded.info.get("epoch"),
        **loaded.info,
    }
    input_spec: dict[str, Any] = {
        "name": input_name,
        "shape": _dims(model.input(0).get_partial_shape()),
        "layout": "NCHW",
        "color": "RGB",
        **preprocessing,
    }
    previous = loaded.previous
    old_input = previous.get("input") if isinstance(previous.get("input"), dict) else None
    if old_input and not _has_baking(preprocessing):
        # A copied IR keeps whatever preprocessing its first conversion baked in.
        input_spec.update({k: old_input[k] for k in ("mean", "scale", "model_color") if k in old_input})
    metadata: dict[str, Any] = dict(previous)  # keep what earlier stages recorded (quantization, isa)
    if isinstance(previous.get("source"), dict):
        source["origin"] = previous["source"]
    metadata.update(
        {
            "kind": previous.get("kind", "fp32"),
            "source": source,
            "input": input_spec,
            "output": {"name": output.get_any_name(), "shape": _dims(output.get_partial_shape())},
            "versions": library_versions("mxnet", "onnx", "openvino"),
            "duration_s": round(duration_s, 3),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    return metadata
