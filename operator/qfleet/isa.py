"""CPU instruction-set (ISA) tiers: host detection, Node Feature Discovery labels, node affinity.

An INT8 model must be quantized, validated and benchmarked on the tier that will serve it. A
host's (or node's) tier is the highest one whose features it has. "Same ISA" means the same
tier, so affinity to a tier requires its label *and* the absence of every higher tier's label.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class IsaTier:
    name: str
    #: The /proc/cpuinfo flag that marks this tier.
    cpuinfo_flag: str
    #: The Node Feature Discovery label that marks this tier (value "true").
    nfd_label: str
    #: oneDNN's ``ONEDNN_MAX_CPU_ISA`` value that caps OpenVINO's CPU kernels at this tier, so a
    #: higher host can run (and test) exactly this tier's kernels.
    onednn_cap: str
    #: Whether the tier computes bfloat16 natively (OpenVINO then defaults to bf16 inference).
    native_bf16: bool = False
    #: Further cpuinfo flags the tier needs besides ``cpuinfo_flag`` (all present).
    also_requires: tuple[str, ...] = ()

    @property
    def cpuinfo_flags(self) -> tuple[str, ...]:
        return (self.cpuinfo_flag, *self.also_requires)


NFD_PREFIX = "feature.node.kubernetes.io/cpu-cpuid."

#: Highest first. The order matters: a host's tier is the first whose flag it has.
#: ``avx512_bf16`` sits between AMX and VNNI: Cooper Lake and AMD Zen 4/5 have VNNI *and* native
#: bf16, so OpenVINO's kernels and default precision there differ from a VNNI-only Xeon's.
TIERS: tuple[IsaTier, ...] = (
    IsaTier("amx_int8", "amx_int8", NFD_PREFIX + "AMXINT8", "AVX512_CORE_AMX", native_bf16=True),
    IsaTier(
        "avx512_bf16",
        "avx512_bf16",
        NFD_PREFIX + "AVX512BF16",
        "AVX512_CORE_BF16",
        native_bf16=True,
        also_requires=("avx512_vnni",),
    ),
    IsaTier("avx512_vnni", "avx512_vnni", NFD_PREFIX + "AVX512VNNI", "AVX512_CORE_VNNI"),
    IsaTier("avx512", "avx512f", NFD_PREFIX + "AVX512F", "AVX512_CORE"),
    IsaTier("avx_vnni", "avx_vnni", NFD_PREFIX + "AVXVNNI", "AVX2_VNNI"),
    IsaTier("avx2", "avx2", NFD_PREFIX + "AVX2", "AVX2"),
)
TIER_NAMES: tuple[str, ...] = tuple(tier.name for tier in TIERS)
_BY_NAME: dict[str, IsaTier] = {tier.name: tier for tier in TIERS}

#: Environment variable that overrides host detection (for tests and for hosts whose
#: /proc/cpuinfo is hidden, e.g. some sandboxes). Never set by the operator.
OVERRIDE_ENV = "QFLEET_HOST_ISA"


def tier(name: str) -> IsaTier:
    """Look up a tier by name, with an error that lists the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown ISA tier {name!r}; expected one of {', '.join(TIER_NAMES)}") from None


def tier_from_flags(flags: Iterable[str]) -> str | None:
    """The highest tier whose cpuinfo flag is in ``flags``; None below AVX2."""
    present = set(flags)
    for candidate in TIERS:
        if present.issuperset(candidate.cpuinfo_flags):
            return candidate.name
    return None


def deciding_flags(flags: Iterable[str]) -> list[str]:
    """The cpuinfo flags among ``flags`` that tier detection looks at, highest tier first."""
    present = set(flags)
    wanted = dict.fromkeys(flag for candidate in TIERS for flag in candidate.cpuinfo_flags)
    return [flag for flag in wanted if flag in present]


def cpuinfo_flags(cpuinfo_text: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def detect_host_tier(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> str | None:
    """The ISA tier of this host, from /proc/cpuinfo (or the QFLEET_HOST_ISA override)."""
    override = os.environ.get(OVERRIDE_ENV)
    if override:
        return tier(override).name
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return tier_from_flags(cpuinfo_flags(text))


def tier_from_labels(labels: Mapping[str, str] | None) -> str | None:
    """A node's tier from its Node Feature Discovery labels; None when it has none of them."""
    if not labels:
        return None
    for candidate in TIERS:
        if labels.get(candidate.nfd_label) == "true":
            return candidate.name
    return None


def has_native_bf16(name: str | None) -> bool:
    """Whether tier ``name`` computes bf16 natively (False for None: below AVX2 or unknown)."""
    return name is not None and tier(name).native_bf16


#: Words of oneDNN's ISA names (the CPU plugin's ``RUNTIME_REQUIREMENTS`` ``isa=``), highest
#: tier first, e.g. "Intel AVX-512 with Intel DL Boost and bfloat16 support" -> avx512_bf16.
_RUNTIME_ISA_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("amx_int8", ("AMX",)),
    ("avx512_bf16", ("AVX-512", "bfloat16")),
    ("avx512_vnni", ("AVX-512", "DL Boost")),
    ("avx512", ("AVX-512",)),
    ("avx_vnni", ("AVX2", "DL Boost")),
    ("avx2", ("AVX2",)),
)


def tier_of_runtime_isa(runtime_isa: str | None) -> str | None:
    """The tier whose kernels OpenVINO reports it compiled for; None below AVX2 or unknown."""
    if not runtime_isa:
        return None
    for name, words in _RUNTIME_ISA_WORDS:
        if all(word in runtime_isa for word in words):
            return name
    return None


def kernel_cap_env(name: str) -> dict[str, str]:
    """Environment that makes OpenVINO's CPU plugin use exactly tier ``name``'s kernels.

    Only caps: on a host below ``name`` the kernels stay the host's (a lower tier cannot be
    raised), which :func:`tier_of_runtime_isa` of the compiled model then shows.
    """
    return {"ONEDNN_MAX_CPU_ISA": tier(name).onednn_cap}


def kernel_cap_forbids_bf16(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` caps the kernels at a tier without bf16 ones.

    OpenVINO's CPU plugin reads the CPU's flags, not the cap: on a bf16 host capped at AVX2 it
    still reports BF16 and defaults to bf16, and then fails to compile. Under such a cap qfleet
    treats the host as the capped tier: no bf16.
    """
    value = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    capped = next((tier for tier in TIERS if tier.onednn_cap == value), None)
    return capped is not None and not capped.native_bf16


def higher_tiers(name: str) -> tuple[IsaTier, ...]:
    """The tiers above ``name`` (empty for the highest)."""
    index = TIER_NAMES.index(tier(name).name)
    return TIERS[:index]


def node_affinity(name: str, extra_selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A required node affinity that matches nodes of exactly tier ``name``.

    The node must carry the tier's NFD label and none of the higher tiers' labels; extra
    ``key: value`` pairs (a target's nodeSelector) are ANDed in.
    """
    expressions: list[dict[str, Any]] = [
        {"key": tier(name).nfd_label, "operator": "In", "values": ["true"]},
    ]
    expressions += [{"key": higher.nfd_label, "operator": "DoesNotExist"} for higher in higher_tiers(name)]
    for key, value in sorted((extra_selector or {}).items()):
        expressions.append({"key": key, "operator": "In", "values": [value]})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}],
            }
        }
    }
