"""``qfleet isa``: what this host is to qfleet -- run it first on a new node type.

It reports the host's ISA tier and the /proc/cpuinfo flags that decided it (or that
QFLEET_HOST_ISA overrides it), whether bf16 is native here (the CPU flags *and* OpenVINO's CPU
plugin must both say so), the precision the plugin computes in when nobody names one, the
kernels OpenVINO really compiles for (a tiny probe model, compiled through qfleet's runtime) and
whether ONEDNN_MAX_CPU_ISA caps them, and the Node Feature Discovery labels a node like this
carries, which is what a QuantizedModel's node affinity for this tier matches.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qfleet import extras, isa
from qfleet.errors import InputError

HELP = "show this host's ISA tier, deciding CPU flags, bf16 support, OpenVINO kernels and NFD labels"
DESCRIPTION = __doc__.strip().split("\n\n", 1)[1].replace("\n", " ")

CPUINFO = "/proc/cpuinfo"
#: oneDNN's variable that caps OpenVINO's CPU kernels (DNNL_MAX_CPU_ISA is its older name).
KERNEL_CAP_ENVS: tuple[str, ...] = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def configure(parser: argparse.ArgumentParser) -> None:
    del parser  # no options besides the common ones


def cpu_model(cpuinfo_text: str) -> str | None:
    """The first processor's model name in a /proc/cpuinfo text (None when it has none)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip() or None
    return None


def nfd_labels(tier_name: str | None, flags: set[str]) -> dict[str, str]:
    """The NFD labels (value "true") of a node of tier ``tier_name`` with cpuinfo ``flags``.

    The tier's own label, and the label of every lower tier whose flags are present (NFD labels
    a node with every feature it has). Higher tiers' labels are left out even when the flags
    have them (a QFLEET_HOST_ISA override below the CPU), so the labels always read back as
    ``tier_name`` (:func:`qfleet.isa.tier_from_labels`).
    """
    if tier_name is None:
        return {}
    lower = isa.TIERS[isa.TIER_NAMES.index(isa.tier(tier_name).name) :]
    labels = {lower[0].nfd_label: "true"}
    labels |= {t.nfd_label: "true" for t in lower[1:] if flags.issuperset(t.cpuinfo_flags)}
    return labels


def kernel_cap(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, value) of the oneDNN ISA cap set in ``environ``, or None."""
    for name in KERNEL_CAP_ENVS:
        if environ.get(name):
            return name, environ[name]
    return None


def _rank(tier_name: str | None) -> int:
    """Higher is better; -1 below AVX2 or unknown."""
    return len(isa.TIER_NAMES) - isa.TIER_NAMES.index(tier_name) if tier_name else -1


def describe_host(
    cpuinfo_text: str | None,
    *,
    host_tier: str | None,
    override: str | None,
    plugin_bf16: bool,
    default_precision: str,
    runtime_isa: str | None,
    cap: tuple[str, str] | None,
) -> dict[str, Any]:
    """The ``qfleet isa`` result from what was read on the host (pure: the tests feed it)."""
    flags = isa.cpuinfo_flags(cpuinfo_text) if cpuinfo_text is not None else set()
    cpuinfo_tier = isa.tier_from_flags(flags) if cpuinfo_text is not None else None
    cpu_bf16 = isa.has_native_bf16(cpuinfo_tier)
    kernel_tier = isa.tier_of_runtime_isa(runtime_isa)
    return {
        "tier": host_tier,
        "source": "override" if override else ("cpuinfo" if cpuinfo_text is not None else "unknown"),
        "override": override or None,
        "cpuinfo_tier": cpuinfo_tier,
        "cpu": cpu_model(cpuinfo_text) if cpuinfo_text is not None else None,
        "flags": isa.deciding_flags(flags),
        "native_bf16": cpu_bf16 and plugin_bf16,
        "bf16": {"cpu": cpu_bf16, "openvino": plugin_bf16},
        "default_inference_precision": default_precision,
        "runtime_isa": runtime_isa,
        "kernel_tier": kernel_tier,
        "kernel_cap": {
            "variable": cap[0] if cap else None,
            "value": cap[1] if cap else None,
            # Capped: a cap is set and the kernels are below what the CPU flags offer.
            "capped": cap is not None and _rank(kernel_tier) < _rank(cpuinfo_tier),
        },
        "nfd_labels": nfd_labels(host_tier, flags),
    }


def _probe_model() -> Any:
    """A tiny conv -> relu model, enough for the plugin to pick (and report) its kernels."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    data = ops.parameter([1, 3, 8, 8], np.float32, name="data")
    conv = ops.convolution(data, np.ones((4, 3, 3, 3), np.float32), [1, 1], [0, 0], [0, 0], [1, 1])
    return ov.Model([ops.relu(conv)], [data], "qfleet_isa_probe")


def run(args: argparse.Namespace) -> dict[str, Any]:
    del args
    extras.require("isa", "openvino", "numpy")
    from qfleet.model import runtime

    try:
        cpuinfo_text: str | None = Path(CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo_text = None
    try:
        host_tier = isa.detect_host_tier(CPUINFO)
    except ValueError as exc:  # a QFLEET_HOST_ISA that names no tier
        raise InputError(f"{isa.OVERRIDE_ENV}: {exc}") from None
    ov_core = runtime.core()
    probe = runtime.compile_model(
        _probe_model(), precision="fp32", hint=runtime.LATENCY, threads=1, ov_core=ov_core
    )
    return describe_host(
        cpuinfo_text,
        host_tier=host_tier,
        override=os.environ.get(isa.OVERRIDE_ENV) or None,
        plugin_bf16=runtime.native_bf16(ov_core),
        default_precision=runtime.default_inference_precision(ov_core),
        runtime_isa=probe.runtime_isa,
        cap=kernel_cap(os.environ),
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def render(result: dict[str, Any]) -> str:
    tier = result["tier"] or "below avx2 (no qfleet tier)"
    if result["source"] == "override":
        origin = f"{isa.OVERRIDE_ENV}={result['override']} overrides /proc/cpuinfo's {result['cpuinfo_tier']}"
    elif result["source"] == "cpuinfo":
        origin = "from /proc/cpuinfo"
    else:
        origin = "/proc/cpuinfo is unreadable"
    cap = result["kernel_cap"]
    if cap["variable"] is None:
        kernels_note = "not capped"
    else:
        kernels_note = f"{cap['variable']}={cap['value']}" + (
            ", capped below the CPU" if cap["capped"] else ", not below the CPU"
        )
    precision = result["default_inference_precision"]
    lines = [
        f"ISA tier: {tier} ({origin})",
        f"CPU: {result['cpu'] or 'unknown'}",
        f"deciding flags: {' '.join(result['flags']) or 'none'}",
        f"native bf16: {_yes(result['native_bf16'])} (CPU flags: {_yes(result['bf16']['cpu'])}, "
        f"OpenVINO: {_yes(result['bf16']['openvino'])})",
        f"OpenVINO default inference precision: {precision}"
        + (" (qfleet always names the precision: FP32 is computed in f32)" if precision != "f32" else ""),
        f"OpenVINO kernels: {result['runtime_isa'] or 'not reported'} "
        f"(tier {result['kernel_tier'] or 'below avx2'}; {kernels_note})",
        "NFD labels of a node like this:",
        *(f"  {label}={value}" for label, value in result["nfd_labels"].items()),
    ]
    if not result["nfd_labels"]:
        lines.append("  none (qfleet needs AVX2 at least)")
    return "\n".join(lines)
