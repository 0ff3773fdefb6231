"""Post-training INT8 quantization of an FP32 IR with NNCF, on the ISA tier that will serve it.

An INT8 model's accuracy and speed depend on the CPU's INT8 instructions (AVX2, VNNI, AMX), so a
model is quantized, validated and benchmarked on the tier that serves it. ``expect_isa`` makes
that explicit: a quantization Job that lands on the wrong node refuses before doing any work.

Two modes:

- plain: ``nncf.quantize`` over calibration crops;
- accuracy-controlled (``max_drop`` and ``lfw``): :mod:`qfleet.model.accuracy_control` returns the
  operations whose quantization costs the most LFW accuracy to floating point until the drop is
  within ``max_drop``, within a budget. Which operations it returned, and why it stopped, is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qfleet import defaults
from qfleet.errors import InputError, QfleetError, QuantizationError
from qfleet.model.metadata import (
    MODEL_XML,
    library_versions,
    read_metadata,
    require_model_xml,
    write_metadata,
)
from qfleet.outputs import atomic_output_dir, sha256_file

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import openvino as ov

    from qfleet.model.accuracy_control import ControlOptions

log = logging.getLogger(__name__)

PRESETS = defaults.PRESETS
DEFAULT_SUBSET_SIZE = defaults.SUBSET_SIZE


def _check_options(subset_size: int, preset: str, max_drop: float | None, lfw: object) -> None:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", hint=f"use one of {', '.join(PRESETS)}")
    if subset_size <= 0:
        raise InputError(f"--subset-size must be positive, got {subset_size}")
    if (max_drop is None) != (lfw is None):
        raise InputError(
            "--max-drop and --lfw go together", hint="give both for accuracy-controlled quantization"
        )
    if max_drop is not None and not 0 <= max_drop < 1:
        raise InputError(f"--max-drop must be in [0, 1), got {max_drop}")


def input_hw(model: ov.Model) -> tuple[int, int]:
    """(height, width) of the model's NCHW image input; 112x112 when they are dynamic."""
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape.rank.get_length() == 4 and shape[2].is_static and shape[3].is_static:
        return shape[2].get_length(), shape[3].get_length()
    return 112, 112


def is_quantized(model: ov.Model) -> bool:
    """Whether an IR carries quantization (FakeQuantize) operations."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


@functools.cache
def _devnull() -> TextIO:
    return open(os.devnull, "w")  # one per process, never closed (see nncf_output)


@contextlib.contextmanager
def nncf_output(*, progress: bool) -> Iterator[None]:
    """Keep NNCF's logs and progress bars off stdout (``--json`` owns it); silence them unless ``progress``.

    NNCF logs through a handler bound to ``sys.stdout`` and draws ``rich`` progress bars on
    ``sys.stdout``; both go to stderr here, or nowhere except warnings when ``progress`` is off.
    """
    from nncf.common.logging.logger import nncf_logger

    # NNCF binds its log handler to the sys.stdout of import time. Point it at stderr for good:
    # restoring it could hand back a stream that is closed by now (a test's capture, a pipe).
    for handler in nncf_logger.handlers:
        if type(handler) is logging.StreamHandler and handler.stream is not sys.stderr:  # not pytest's
            handler.stream = sys.stderr
    level = nncf_logger.level
    # NNCF's rich console keeps the stream it first saw, so the sink must outlive this call.
    sink = sys.stderr if progress else _devnull()
    try:
        if not progress:
            nncf_logger.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        nncf_logger.setLevel(level)


def quantize_model(
    model_xml: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str] | Sequence[npt.NDArray[np.float32]],
    out_dir: str | os.PathLike[str],
    subset_size: int = DEFAULT_SUBSET_SIZE,
    preset: str = defaults.PRESET,
    expect_isa: str | None = None,
    max_drop: float | None = None,
    lfw: str | os.PathLike[str] | None = None,
    progress: bool = True,
    control: ControlOptions | None = None,
) -> dict[str, Any]:
    """Quantize ``model_xml`` to INT8 into ``out_dir``; returns the ``qfleet.json`` it wrote.

    ``calibration`` is an ``lfw.bin``, a folder of aligned face crops, or ready NCHW tensors.
    With ``max_drop`` and ``lfw`` the quantization is accuracy-controlled on that LFW set
    (``control``: its budget, and what the caller has already decoded and embedded).
    """
    # The tier check comes first: a Job on the wrong node must not spend time, nor write anything.
    from qfleet.model.runtime import check_expected_tier

    host_isa = check_expected_tier(expect_isa)
    _check_options(subset_size, preset, max_drop, lfw)
    if control is not None:
        control.check()
    xml = require_model_xml(model_xml)
    fp32_metadata = read_metadata(xml)
    if fp32_metadata.get("kind") == "int8":
        raise InputError(
            f"model {xml} is already quantized", hint="pass the FP32 model written by qfleet convert"
        )

    started = time.perf_counter()
    import nncf
    import openvino as ov

    from qfleet.model.calibration import calibration_digest, load_calibration
    from qfleet.model.runtime import compile_model, read_model

    model = read_model(xml)
    if is_quantized(model):
        raise InputError(f"model {xml} already holds FakeQuantize operations", hint="pass the FP32 model")

    if isinstance(calibration, (str, os.PathLike)):
        tensors = load_calibration(calibration, input_hw=input_hw(model), subset_size=subset_size)
        calibration_info: dict[str, Any] = {
            "path": str(calibration),
            "sha256": calibration_digest(calibration),
            "samples": len(tensors),
        }
    else:
        tensors = list(calibration)[:subset_size]
        if not tensors:
            raise InputError("no calibration tensors given")
        calibration_info = {"path": None, "sha256": None, "samples": len(tensors)}

    nncf_preset = {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }[preset]
    calibration_dataset = nncf.Dataset(tensors)
    accuracy: dict[str, Any] | None = None
    reverted: list[str] = []
    with atomic_output_dir(out_dir) as staging:
        try:
            with nncf_output(progress=progress):
                if max_drop is None or lfw is None:
                    quantized = nncf.quantize(
                        model, calibration_dataset, preset=nncf_preset, subset_size=len(tensors)
                    )
                else:
                    from qfleet.model.accuracy_control import quantize_with_lfw_control

                    quantized, reverted, accuracy = quantize_with_lfw_control(
                        model,
                        tensors,
                        lfw=lfw,
                        max_drop=max_drop,
                        preset=nncf_preset,
                        subset_size=len(tensors),
                        input_hw=input_hw(model),
                        options=control,
                    )
        except QfleetError:
            raise
        except Exception as exc:  # NNCF raises many types; none of them is the user's to debug
            log.debug("NNCF failed", exc_info=True)
            raise QuantizationError(
                f"NNCF could not quantize {xml}: {type(exc).__name__}: {_first_line(exc)}",
                hint="rerun with --debug for the traceback",
            ) from exc
        ov.save_model(quantized, staging / MODEL_XML, compress_to_fp16=False)
        # Compile what was saved, as the server will (its float layers in f32, as accuracy control
        # evaluated them), so qfleet.json records what the plugin really runs here.
        runtime = compile_model(staging / MODEL_XML, precision="int8", hint="LATENCY").describe()
        duration = time.perf_counter() - started
        versions = library_versions("nncf")
        fp32_weights = xml.with_suffix(".bin")
        quantization: dict[str, Any] = {
            "isa": host_isa,
            "preset": preset,
            "subset_size": subset_size,
            "calibration": calibration_info,
            "nncf": versions.get("nncf"),
            "openvino": versions.get("openvino"),
            "duration_s": round(duration, 3),
            "reverted_layers": reverted,
        }
        if accuracy is not None:
            quantization["accuracy_control"] = accuracy
        metadata = dict(fp32_metadata)
        metadata.update(
            {
                "kind": "int8",
                **runtime,
                "isa": host_isa,
                "quantization": quantization,
                "fp32_model": {"path": str(xml), "weights_sha256": sha256_file(fp32_weights)},
                # Keep what converted the FP32 model (mxnet, onnx) beside what quantized it.
                "versions": {**fp32_metadata.get("versions", {}), **versions},
                "duration_s": round(duration, 3),
            }
        )
        write_metadata(staging, metadata)
    log.info("quantized %s -> %s in %.1f s", xml, Path(out_dir) / MODEL_XML, duration)
    return metadata


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
