"""What one quantization Job runs: convert -> quantize -> validate FP32 and INT8 -> gate -> benchmark.

On hosts whose CPU computes bf16 natively (AVX-512 BF16, AMX) the FP32 model is also validated
and benchmarked computed in bf16: the ``bf16`` variant, gated against FP32 like INT8 and written
as its own artifact directory (the FP32 IR's files, hard-linked, with a ``qfleet.json`` that says
``precision: bf16``), so that ``onGateFailure: bf16`` can serve it. The FP32 baseline is always
computed in f32.

The result is one JSON object small enough for a Kubernetes termination message (4096 bytes),
which is how the operator learns what the Job found. A stage that fails yields the same shape
with ``error: {stage, message}``; a failed accuracy gate is *not* a failure (the operator decides
what to serve), so it exits 0 with ``gate.passed = false``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfleet import defaults, isa
from qfleet.errors import QfleetError
from qfleet.model.metadata import MODEL_XML, library_versions
from qfleet.outputs import atomic_output_dir, write_json

log = logging.getLogger(__name__)

#: Kubernetes truncates termination messages beyond this many bytes.
TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_LOG = defaults.TERMINATION_LOG
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class PipelineSpec:
    """What one pipeline run does; ``qfleet pipeline``'s arguments and a Job's ``args`` are its
    two spellings (:meth:`to_args` writes the second, the CLI parser reads it back)."""

    source: str
    fmt: str
    calibration: str
    lfw: str
    out: str
    expect_isa: str | None = None
    epoch: int | None = None
    preset: str = defaults.PRESET
    subset_size: int = defaults.SUBSET_SIZE
    max_drop: float = defaults.MAX_DROP
    min_accuracy: float | None = None
    accuracy_control: bool = False
    #: Accuracy control's budget: candidate validations, and seconds (ranking included).
    accuracy_control_max_iterations: int = defaults.ACCURACY_CONTROL_MAX_ITERATIONS
    accuracy_control_timeout: float = defaults.ACCURACY_CONTROL_TIMEOUT_S
    threads: int | None = None
    benchmark_seconds: float = defaults.BENCHMARK_SECONDS
    #: > 1: INT8 is also benchmarked at this batch, compiled as ``qfleet serve --max-batch`` does.
    benchmark_batch: int = 1
    flip: bool = True
    progress: bool = True
    #: Where the result goes besides stdout (None: the pod's termination-log file when it exists).
    termination_log: str | None = None
    #: sha256 pins of https:// inputs (a download that differs is refused).
    source_sha256: str | None = None
    calibration_sha256: str | None = None
    lfw_sha256: str | None = None
    #: Plain http:// inputs are accepted (only pinned ones).
    allow_http: bool = False

    def to_args(self) -> list[str]:
        """The ``qfleet pipeline`` arguments that run this spec (every value spelled out, so a
        Job never depends on the defaults of the image it happens to run)."""
        args = ["--source", self.source, "--format", self.fmt]
        if self.epoch is not None:
            args += ["--epoch", str(self.epoch)]
        args += ["--calibration", self.calibration, "--lfw", self.lfw, "--out", self.out]
        for flag, pin in (
            ("--source-sha256", self.source_sha256),
            ("--calibration-sha256", self.calibration_sha256),
            ("--lfw-sha256", self.lfw_sha256),
        ):
            if pin is not None:
                args += [flag, pin]
        if self.allow_http:
            args.append("--allow-http")
        if self.expect_isa is not None:
            args += ["--expect-isa", self.expect_isa]
        args += ["--preset", self.preset, "--subset-size", str(self.subset_size)]
        args += ["--max-drop", _number(self.max_drop)]
        if self.min_accuracy is not None:
            args += ["--min-accuracy", _number(self.min_accuracy)]
        if self.accuracy_control:
            args.append("--accuracy-control")
            args += ["--accuracy-control-max-iterations", str(self.accuracy_control_max_iterations)]
            args += ["--accuracy-control-timeout", _number(self.accuracy_control_timeout)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        args += ["--benchmark-seconds", _number(self.benchmark_seconds)]
        if self.benchmark_batch != 1:
            args += ["--benchmark-batch", str(self.benchmark_batch)]
        if not self.flip:
            args.append("--no-flip")
        if self.termination_log is not None:
            args += ["--termination-log", self.termination_log]
        args.append("--json")
        if not self.progress:
            args.append("-q")
        return args


def _number(value: float) -> str:
    """A float as the shortest text that reads back to the same value (0.001, not 1e-03)."""
    return repr(float(value))


class StageFailed(Exception):
    """A pipeline stage failed; carries the stage name for the result's ``error``."""

    def __init__(self, stage: str, message: str, *, exit_code: int = 1) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        #: 2 for bad input, 3 for the wrong ISA tier (retrying cannot help), 1 for anything else.
        self.exit_code = exit_code


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("stage %s: started", name)
    started = time.perf_counter()
    try:
        yield
    except QfleetError as exc:
        raise StageFailed(name, str(exc), exit_code=exc.exit_code) from exc
    except Exception as exc:  # a bug or a library failure: still report which stage
        log.debug("stage %s crashed", name, exc_info=True)
        raise StageFailed(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        timings[name] = round(time.perf_counter() - started, 3)
    log.info("stage %s: done in %.1f s", name, timings[name])


def run_pipeline(spec: PipelineSpec) -> dict[str, Any]:
    """Run every stage; return the result (with ``error`` when a stage failed)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(spec.out)
    host_tier = isa.detect_host_tier()
    result: dict[str, Any] = {"isa": host_tier}
    try:
        with _stage("isa", timings):
            from qfleet.model.runtime import check_expected_tier

            check_expected_tier(spec.expect_isa, expecting="the Job expects")
        with atomic_output_dir(out) as staging:
            result.update(_run_stages(spec, staging, final=out, timings=timings))
            write_json(staging / RESULT_FILE, result | {"seconds": round(time.perf_counter() - started, 3)})
    except StageFailed as failure:
        result["error"] = {"stage": failure.stage, "message": failure.message, "exit_code": failure.exit_code}
    result["timings"] = timings
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["versions"] = library_versions("nncf", "mxnet", "onnx")
    return result


def run_pipeline_anywhere(spec: PipelineSpec) -> dict[str, Any]:
    """:func:`run_pipeline`, with ``s3://`` inputs downloaded first and an ``s3://`` ``--out``
    published after (see :mod:`qfleet.storage.staging`); local paths run it as they are."""
    from qfleet.storage.staging import run_with_object_storage, uses_object_storage

    if not uses_object_storage(spec.source, spec.calibration, spec.lfw, spec.out):
        return run_pipeline(spec)
    return run_with_object_storage(spec, run_pipeline)


def _run_stages(
    spec: PipelineSpec, staging: Path, *, final: Path, timings: dict[str, float]
) -> dict[str, Any]:
    # Heavy imports here, so `qfleet pipeline --help` stays fast.
    from qfleet.fleet.gate import gate
    from qfleet.lfw.dataset import load_lfw_bin
    from qfleet.lfw.decoded import decode_pairset
    from qfleet.model.benchmark import benchmark_model
    from qfleet.model.convert import convert_model
    from qfleet.model.embed import image_size, validate_model
    from qfleet.model.runtime import native_bf16

    fp32_dir, int8_dir = staging / "fp32", staging / "int8"
    with _stage("load-lfw", timings):
        pairset = load_lfw_bin(spec.lfw)
    with _stage("convert", timings):
        convert_model(spec.source, fmt=spec.fmt, out_dir=fp32_dir, epoch=spec.epoch)
    # On a tier that computes bf16 natively, BF16 is what users would otherwise serve: measure it.
    # Both the tier (what the node is labelled and planned as) and the plugin must say so.
    variants = {"fp32": fp32_dir, "int8": int8_dir}
    if isa.has_native_bf16(isa.detect_host_tier()) and native_bf16():
        variants["bf16"] = fp32_dir
    # Every variant validates on the same images, and accuracy control on them too: decode them
    # once, into one shared uint8 array.
    with _stage("decode-lfw", timings):
        decoded = decode_pairset(
            pairset, image_size(fp32_dir / MODEL_XML), threads=spec.threads, directory=staging
        )
    validations: dict[str, dict[str, Any]] = {}
    with decoded:
        int8_meta = _quantize(spec, staging, pairset, decoded, validations, timings)
        for precision, directory in variants.items():
            if precision in validations:  # FP32, validated before accuracy control
                continue
            with _stage(f"validate-{precision}", timings):
                validations[precision] = validate_model(
                    directory / MODEL_XML,
                    pairset,
                    flip=spec.flip,
                    threads=spec.threads,
                    progress=spec.progress,
                    precision=precision,
                    decoded=decoded,
                )
                write_json(staging / f"validation-{precision}.json", validations[precision])
    with _stage("gate", timings):
        decisions = {
            precision: gate(
                validations["fp32"],
                validations[precision],
                max_drop=spec.max_drop,
                min_accuracy=spec.min_accuracy,
                candidate=precision.upper(),
            )
            for precision in variants
            if precision != "fp32"
        }
    benchmarks: dict[str, dict[str, Any]] = {}
    for precision in ("int8", *(p for p in variants if p != "int8")):
        with _stage(f"benchmark-{precision}", timings):
            benchmarks[precision] = benchmark_model(
                variants[precision] / MODEL_XML,
                seconds=spec.benchmark_seconds,
                threads=spec.threads,
                progress=spec.progress,
                precision=precision,
            )
            write_json(staging / f"benchmark-{precision}.json", benchmarks[precision])
    batched = _benchmark_serving_batch(spec, int8_dir / MODEL_XML, staging, timings)

    def summary(precision: str) -> dict[str, Any]:
        validation, bench = validations[precision], benchmarks[precision]
        return {
            "precision": precision,
            "inference_precision": bench["inference_precision"],
            "accuracy": round(float(validation["accuracy"]), 6),
            "accuracy_std": round(float(validation["accuracy_std"]), 6),
            "threshold": round(float(validation["threshold"]), 4),
            "fps": round(float(bench["fps"]), 2),
            "latency_ms_median": round(float(bench["latency_ms_median"]), 3),
        }

    reverted = int8_meta.get("quantization", {}).get("reverted_layers", [])
    fps = {precision: float(bench["fps"]) for precision, bench in benchmarks.items()}
    result: dict[str, Any] = {
        "artifact": str(final / "int8" / MODEL_XML),
        "fp32_artifact": str(final / "fp32" / MODEL_XML),
        "fp32": summary("fp32"),
        "int8": summary("int8") | {"reverted_layers": len(reverted)} | _batched(batched),
        "gate": decisions["int8"].as_dict(),
        "speedup": {
            f"int8_vs_{other}": round(fps["int8"] / fps[other], 3) for other in variants if other != "int8"
        },
        "runtime_isa": benchmarks["int8"]["runtime_isa"],
        "pairs": int(validations["fp32"]["pairs"]),
        "threads": spec.threads,
    }
    result |= control_summary(int8_meta)
    if "bf16" in variants:
        with _stage("bf16-artifact", timings):
            write_bf16_artifact(
                fp32_dir, staging / "bf16", validations["bf16"], isa_tier=isa.detect_host_tier()
            )
        bf16_gate = decisions["bf16"]
        result["bf16_artifact"] = str(final / "bf16" / MODEL_XML)
        result["bf16"] = summary("bf16") | {
            "gate": {"passed": bf16_gate.passed, "drop": bf16_gate.drop, "reason": bf16_gate.reason}
        }
    return result


def _quantize(
    spec: PipelineSpec,
    staging: Path,
    pairset: Any,
    decoded: Any,
    validations: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The quantize stage; under accuracy control FP32 is validated first (its embeddings are
    accuracy control's reference) and the decoded images are shared."""
    from qfleet.model.quantize import quantize_model

    control = None
    if spec.accuracy_control:
        control = _validate_fp32_first(spec, pairset, decoded, staging, validations, timings)
    with _stage("quantize", timings):
        return quantize_model(
            staging / "fp32" / MODEL_XML,
            calibration=spec.calibration,
            out_dir=staging / "int8",
            subset_size=spec.subset_size,
            preset=spec.preset,
            expect_isa=spec.expect_isa,
            max_drop=spec.max_drop if control else None,
            lfw=spec.lfw if control else None,
            progress=spec.progress,
            control=control,
        )


def _validate_fp32_first(
    spec: PipelineSpec,
    pairset: Any,
    decoded: Any,
    staging: Path,
    validations: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> Any:
    """Validate FP32 (into ``validations``) and return accuracy control's options: the spec's
    budget, the decoded images and FP32's embeddings of them (nothing decoded or embedded twice)."""
    from qfleet.model.accuracy_control import ControlOptions
    from qfleet.model.embed import validate_model

    embedded: list[Any] = []
    with _stage("validate-fp32", timings):
        validations["fp32"] = validate_model(
            staging / "fp32" / MODEL_XML,
            pairset,
            flip=spec.flip,
            threads=spec.threads,
            progress=spec.progress,
            precision="fp32",
            decoded=decoded,
            on_embedded=embedded.append,
        )
        write_json(staging / "validation-fp32.json", validations["fp32"])
    fp32_embeddings = embedded[0].embeddings
    return ControlOptions(
        max_iterations=spec.accuracy_control_max_iterations,
        timeout_s=spec.accuracy_control_timeout,
        flip=spec.flip,
        threads=spec.threads,
        pairset=pairset,
        decoded=decoded,
        fp32_embeddings=fp32_embeddings,
    )


def control_summary(int8_metadata: dict[str, Any]) -> dict[str, Any]:
    """The result's ``accuracy_control`` (for the operator's status): why it stopped, what it
    cost, and which operations went back to float; nothing without accuracy control."""
    report = int8_metadata.get("quantization", {}).get("accuracy_control")
    if not report:
        return {}
    return {
        "accuracy_control": {
            "outcome": report["outcome"],
            "met": report["met"],
            "drop": report["drop"],
            "fully_quantized_drop": report["fully_quantized_drop"],
            "iterations": report["iterations"],
            "seconds": report["seconds"],
            "reverted_layers": [op["name"] for op in report["reverted"]],
        }
    }


def _benchmark_serving_batch(
    spec: PipelineSpec, int8_xml: Path, staging: Path, timings: dict[str, float]
) -> dict[str, Any] | None:
    """INT8 at ``spec.benchmark_batch``, compiled as ``qfleet serve --max-batch`` does (None at 1)."""
    from qfleet.model.benchmark import benchmark_model

    if spec.benchmark_batch == 1:
        return None
    with _stage("benchmark-int8-batch", timings):
        batched = benchmark_model(
            int8_xml,
            seconds=spec.benchmark_seconds,
            threads=spec.threads,
            progress=spec.progress,
            precision="int8",
            batch=spec.benchmark_batch,
            dynamic_batch=True,
        )
        write_json(staging / f"benchmark-int8-batch{spec.benchmark_batch}.json", batched)
    return batched


def _batched(bench: dict[str, Any] | None) -> dict[str, Any]:
    """The INT8 benchmark at the serving batch, for the result's ``int8`` (nothing at batch 1)."""
    if bench is None:
        return {}
    return {
        "batch": int(bench["batch"]),
        "batch_fps": round(float(bench["fps"]), 2),
        "batch_latency_ms_median": round(float(bench["latency_ms_median"]), 3),
    }


def write_bf16_artifact(
    fp32_dir: Path, bf16_dir: Path, validation: dict[str, Any], *, isa_tier: str | None
) -> None:
    """The BF16 variant as an artifact of its own: the FP32 IR's files and a ``qfleet.json``
    saying it computes in bf16 on ``isa_tier``, so a server compiles it exactly as validated."""
    from qfleet.model.metadata import MODEL_BIN, read_metadata, write_metadata

    bf16_dir.mkdir(parents=True, exist_ok=False)
    for name in (MODEL_XML, MODEL_BIN):
        try:  # no second copy of the weights where the filesystem can link
            os.link(fp32_dir / name, bf16_dir / name)
        except OSError:
            shutil.copy2(fp32_dir / name, bf16_dir / name)
    metadata = read_metadata(fp32_dir / MODEL_XML)
    metadata.update(
        {
            "precision": "bf16",
            "inference_precision": validation["inference_precision"],
            "runtime_isa": validation["runtime_isa"],
            "isa": isa_tier,
        }
    )
    write_metadata(bf16_dir, metadata)


def termination_message(result: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of ``result`` that fits in ``limit`` bytes (dropping detail if needed)."""
    trimmed = dict(result)
    for drop in ("timings", "versions"):
        if _size(trimmed) <= limit:
            return _dumps(trimmed)
        trimmed.pop(drop, None)
    if "error" in trimmed and _size(trimmed) > limit:
        error = dict(trimmed["error"])
        message = str(error["message"])
        budget = limit - _size(trimmed | {"error": error | {"message": ""}})
        # Escaping (quotes, control characters) can grow the text, so shrink until it fits.
        while budget > 0 and _size(trimmed | {"error": error | {"message": message}}) > limit:
            message = _truncate_utf8(message, budget)
            budget -= max(16, budget // 4)
        trimmed["error"] = error | {"message": message}
    if _size(trimmed) > limit:  # still too big: keep only what the operator cannot do without
        keep: tuple[str, ...] = (
            "isa",
            "runtime_isa",
            "artifact",
            "fp32_artifact",
            "bf16_artifact",
            "fp32",
            "int8",
            "bf16",
        )
        keep += ("gate", "speedup", "error", "accuracy_control")
        trimmed = {key: trimmed[key] for key in keep if key in trimmed}
    return _dumps(trimmed)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


def _size(data: dict[str, Any]) -> int:
    return len(_dumps(data).encode())


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(0, max_bytes - 3)].decode(errors="ignore") + "..."


def default_termination_log() -> str | None:
    """Kubernetes' termination-message file when we run in a pod, else None."""
    path = Path(DEFAULT_TERMINATION_LOG)
    return str(path) if path.exists() and os.access(path, os.W_OK) else None


def write_termination_log(
    path: str | None, message: str, *, warn: Callable[[str], None] = log.warning
) -> None:
    if not path:
        return
    try:
        Path(path).write_text(message, encoding="utf-8")
    except OSError as exc:
        warn(f"could not write the termination message to {path}: {exc}")
