"""The one place qfleet compiles a model: explicit precision, the THROUGHPUT hint, clear errors.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with native bf16 (AVX-512 BF16, AMX):
a model compiled without ``INFERENCE_PRECISION_HINT`` is not FP32 there. A number measured
under one precision does not carry to another, just as one measured under one ISA's kernels does
not, so every compile here names its precision and checks what the plugin reports it used:

- ``fp32``: an FP32 IR computed in f32 (the accuracy gate's baseline, always);
- ``int8``: a quantized IR; its non-quantized layers (those NNCF kept in floating point, the
  embedding head) in f32, as NNCF evaluated them, unless the variant asks for bf16;
- ``bf16``: an FP32 IR computed in bf16, only on hosts with native bf16.

A compiled model whose reported inference precision differs from the one asked is an error
(:class:`PrecisionError`), never a footnote. Every other module goes through :func:`compile_model`
(a test scans the code for ``compile_model`` calls elsewhere).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qfleet.errors import InputError, IsaMismatchError
from qfleet.isa import detect_host_tier, has_native_bf16, kernel_cap_forbids_bf16, tier

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

#: The variants qfleet measures and serves, and the plugin precision each computes in.
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "bf16")
#: OpenVINO's element-type names for the floating-point part of each variant.
INFERENCE_PRECISIONS: dict[str, str] = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
FLOAT_PRECISIONS: tuple[str, ...] = ("f32", "bf16")

THROUGHPUT = "THROUGHPUT"
LATENCY = "LATENCY"


class PrecisionError(InputError):
    """The plugin cannot (or did not) compute in the precision asked for."""


@dataclass(frozen=True)
class CompiledVariant:
    """A compiled model and what it really runs: the precision asked and the one reported."""

    compiled: ov.CompiledModel
    #: The variant asked for: fp32, int8 or bf16.
    precision: str
    #: What the plugin reports it computes floating-point layers in (f32 or bf16).
    inference_precision: str
    #: The kernels' instruction set as OpenVINO names it, e.g. "Intel AVX2" (None if not reported).
    runtime_isa: str | None

    def describe(self) -> dict[str, Any]:
        """The keys every validate/benchmark JSON carries about how the model ran."""
        return {
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            "runtime_isa": self.runtime_isa,
        }


def inference_precision_of(precision: str, *, float_precision: str | None = None) -> str:
    """The plugin precision for a variant (``float_precision`` overrides int8's float part)."""
    if precision not in INFERENCE_PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if float_precision is None:
        return INFERENCE_PRECISIONS[precision]
    if float_precision not in FLOAT_PRECISIONS:
        raise InputError(
            f"unknown inference precision {float_precision!r}; expected one of {', '.join(FLOAT_PRECISIONS)}"
        )
    if precision != "int8" and float_precision != INFERENCE_PRECISIONS[precision]:
        raise InputError(
            f"a {precision} model computes in {INFERENCE_PRECISIONS[precision]}, not {float_precision}"
        )
    return float_precision


def openvino_reason(exc: BaseException) -> str:
    """The informative line of an OpenVINO error: the last one, after 'Exception from src/...' headers."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Exception from ", "Check '")) and not line.endswith(("Failure:", "Summary:"))
    ]
    return (useful or lines or [type(exc).__name__])[-1]


def core() -> ov.Core:
    import openvino as ov

    return ov.Core()


def read_model(model_xml: str | os.PathLike[str], *, ov_core: ov.Core | None = None) -> ov.Model:
    """Read an IR, with a one-line :class:`InputError` when it is missing or corrupt."""
    from qfleet.model.metadata import require_model_xml

    xml = require_model_xml(model_xml)
    try:
        return (ov_core or core()).read_model(xml)
    except RuntimeError as exc:
        raise InputError(f"model {xml} is not a readable OpenVINO IR: {openvino_reason(exc)}") from None


def native_bf16(ov_core: ov.Core | None = None) -> bool:
    """Whether the CPU plugin can compute bf16 on this host, its kernels capped or not.

    The plugin's BF16 capability comes from the CPU's flags and ignores ``ONEDNN_MAX_CPU_ISA``;
    a cap below the bf16 tiers takes bf16 away (see :func:`qfleet.isa.kernel_cap_forbids_bf16`).
    """
    if kernel_cap_forbids_bf16():
        return False
    capabilities = (ov_core or core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in {str(capability) for capability in capabilities}


def default_inference_precision(ov_core: ov.Core | None = None) -> str:
    """What the plugin computes in when nobody says: bf16 on bf16-capable hosts, else f32.

    Under a kernel cap without bf16 the plugin still says bf16 (and cannot compile it): f32 is
    what runs there, since qfleet always names the precision it compiles for.
    """
    if kernel_cap_forbids_bf16():
        return "f32"
    return str((ov_core or core()).get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name())


def runtime_isa(compiled: ov.CompiledModel) -> str | None:
    """The instruction set the CPU plugin compiled for, e.g. "Intel AVX2" (None if not reported).

    It is below the host's best when the plugin is capped (``ONEDNN_MAX_CPU_ISA``), so a result
    says which kernels really ran.
    """
    try:
        requirements = str(compiled.get_property("RUNTIME_REQUIREMENTS"))
    except RuntimeError:
        return None
    for field in requirements.split(";"):
        key, _, value = field.partition("=")
        if key.strip() == "isa":
            return value.strip()
    return None


_BF16_HINT = "bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); run `qfleet isa` to see this host's"


def compile_model(
    model: ov.Model | str | os.PathLike[str],
    *,
    precision: str,
    float_precision: str | None = None,
    hint: str = THROUGHPUT,
    threads: int | None = None,
    device: str = "CPU",
    what: str | None = None,
    ov_core: ov.Core | None = None,
) -> CompiledVariant:
    """Compile ``model`` (an ``ov.Model`` or an IR path) as variant ``precision`` on the CPU.

    Raises :class:`PrecisionError` when the plugin reports another inference precision than the
    one asked (bf16 on a host without native bf16 compiles silently as f32 otherwise) and
    :class:`InputError` when OpenVINO cannot compile the model.
    """
    asked = inference_precision_of(precision, float_precision=float_precision)
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    ov_core = ov_core or core()
    if isinstance(model, (str, os.PathLike)):
        what = what or str(model)
        model = read_model(model, ov_core=ov_core)
    what = what or f"model {model.get_friendly_name()}"
    if asked == "bf16" and not native_bf16(ov_core):
        # Refused before compiling: a plain host compiles it silently as f32, a bf16 host with its
        # kernels capped below bf16 fails to compile at all. Either way, bf16 is not what runs.
        raise PrecisionError(
            f"{what} was asked to compute in bf16 ({precision}) but this host cannot (its kernels "
            f"{'are capped below bf16' if kernel_cap_forbids_bf16() else 'have no native bf16'}): "
            "OpenVINO would compute f32",
            hint=_BF16_HINT,
        )
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": asked}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov_core.compile_model(model, device, config)
    except RuntimeError as exc:
        raise InputError(f"{what} cannot be compiled for the {device}: {openvino_reason(exc)}") from None
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    kernels = runtime_isa(compiled)
    if used != asked:
        raise PrecisionError(
            f"{what} was asked to compute in {asked} ({precision}) but OpenVINO compiled it in {used}"
            f" on this host ({kernels or 'unknown kernels'})",
            hint=_BF16_HINT,
        )
    return CompiledVariant(
        compiled=compiled, precision=precision, inference_precision=used, runtime_isa=kernels
    )


def recorded_variant(
    metadata: Mapping[str, Any], model_xml: str | os.PathLike[str] = ""
) -> tuple[str, str, bool]:
    """(precision, inference precision, recorded) of an artifact from its ``qfleet.json``.

    Artifacts written before precisions were recorded have only ``kind`` (fp32 or int8): they
    were meant as f32 (``recorded`` is False then, and a log line says so).
    """
    precision = metadata.get("precision")
    if precision in PRECISIONS:
        inference = metadata.get("inference_precision")
        float_precision = str(inference) if inference in FLOAT_PRECISIONS else None
        return str(precision), inference_precision_of(str(precision), float_precision=float_precision), True
    fallback = "int8" if metadata.get("kind") == "int8" else "fp32"
    log.warning(
        "%s records no precision (written by an older qfleet): treating it as %s computed in f32",
        Path(model_xml).with_name("qfleet.json") if model_xml else "the model's qfleet.json",
        fallback,
    )
    return fallback, "f32", False


def check_expected_tier(
    expect_isa: str | None, *, expecting: str = "the model is for", ov_core: ov.Core | None = None
) -> str | None:
    """This host's ISA tier; :class:`IsaMismatchError` when it is not ``expect_isa``.

    A bf16 tier also needs the plugin to compute bf16 here (a node labelled AVX512BF16 whose
    kernels are capped, or a wrong ``QFLEET_HOST_ISA``, would otherwise measure f32 as bf16).
    """
    expected = None
    if expect_isa is not None:
        try:
            expected = tier(expect_isa).name
        except ValueError as exc:
            raise InputError(f"--expect-isa: {exc}") from None
    host = detect_host_tier()
    if expected is None:
        return host
    if host != expected:
        raise IsaMismatchError(
            f"this host's ISA tier is {host or 'below avx2'}, but {expecting} {expected}",
            hint=f"run on a {expected} node (its NFD labels decide where a Job lands): "
            "INT8 accuracy and speed depend on the tier",
        )
    if has_native_bf16(expected) and not native_bf16(ov_core):
        raise IsaMismatchError(
            f"ISA tier {expected} computes bf16 natively, but OpenVINO cannot compute bf16 on this host",
            hint="check the CPU flags with `qfleet isa` (and that ONEDNN_MAX_CPU_ISA does not cap the kernels)",
        )
    return host
