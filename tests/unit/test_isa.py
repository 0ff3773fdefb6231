from __future__ import annotations

from pathlib import Path

import pytest

from qfleet import isa

CPUINFO_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t\t: fpu\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "amx_int8"),
        ({"avx2", "avx512f", "avx512_vnni"}, "avx512_vnni"),
        ({"avx2", "avx512f"}, "avx512"),
        ({"avx2", "avx_vnni"}, "avx_vnni"),
        ({"avx2"}, "avx2"),
        ({"sse4_2"}, None),
    ],
)
def test_tier_is_the_highest_flag(flags: set[str], expected: str | None) -> None:
    assert isa.tier_from_flags(flags) == expected


def test_detect_host_tier_reads_the_first_processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(isa.OVERRIDE_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_ZEN3)
    assert isa.detect_host_tier(cpuinfo) == "avx2"
    assert isa.detect_host_tier(tmp_path / "missing") is None


def test_override_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isa.OVERRIDE_ENV, "avx512_vnni")
    assert isa.detect_host_tier("/nonexistent") == "avx512_vnni"
    monkeypatch.setenv(isa.OVERRIDE_ENV, "sse9")
    with pytest.raises(ValueError, match="unknown ISA tier 'sse9'"):
        isa.detect_host_tier()


def test_tier_from_nfd_labels() -> None:
    prefix = isa.NFD_PREFIX
    assert isa.tier_from_labels({prefix + "AVX2": "true", prefix + "AVX512F": "true"}) == "avx512"
    assert isa.tier_from_labels({prefix + "AVX2": "true", prefix + "AMXINT8": "false"}) == "avx2"
    assert isa.tier_from_labels({"kubernetes.io/os": "linux"}) is None
    assert isa.tier_from_labels(None) is None


def test_affinity_requires_tier_and_excludes_every_higher_tier() -> None:
    affinity = isa.node_affinity("avx512_vnni", {"pool": "vnni"})
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1
    expressions = {(e["key"], e["operator"]) for e in terms[0]["matchExpressions"]}
    assert expressions == {
        (isa.NFD_PREFIX + "AVX512VNNI", "In"),
        (isa.NFD_PREFIX + "AMXINT8", "DoesNotExist"),
        (isa.NFD_PREFIX + "AVX512BF16", "DoesNotExist"),
        ("pool", "In"),
    }


def test_affinity_matches_exactly_one_tier_for_every_node_kind() -> None:
    """Evaluate the affinity against nodes of every tier: each tier's affinity admits only its own."""

    def matches(expressions: list[dict[str, object]], labels: dict[str, str]) -> bool:
        for e in expressions:
            key = str(e["key"])
            if e["operator"] == "In" and labels.get(key) not in e["values"]:  # type: ignore[operator]
                return False
            if e["operator"] == "DoesNotExist" and key in labels:
                return False
        return True

    # NFD labels a node with every feature it has, so an AMX node also carries AVX512VNNI etc.
    nodes = {
        name: {
            t.nfd_label: "true"
            for t in isa.TIERS[index:]
            if not (name == "avx_vnni" and t.name.startswith("avx512"))
        }
        for index, name in enumerate(isa.TIER_NAMES)
    }
    for tier_name in isa.TIER_NAMES:
        expressions = isa.node_affinity(tier_name)["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchExpressions"]
        admitted = [node for node, labels in nodes.items() if matches(expressions, labels)]
        assert admitted == [tier_name]
        assert isa.tier_from_labels(nodes[tier_name]) == tier_name


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "avx512_bf16"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}, "amx_int8"),
        # avx512_bf16 without VNNI is no CPU anyone sells; the tier needs both.
        ({"avx2", "avx512f", "avx512_bf16"}, "avx512"),
    ],
)
def test_bf16_tier_needs_bf16_and_vnni(flags: set[str], expected: str) -> None:
    assert isa.tier_from_flags(flags) == expected


def test_bf16_tier_sits_between_amx_and_vnni_and_computes_bf16() -> None:
    names = list(isa.TIER_NAMES)
    assert names.index("amx_int8") + 1 == names.index("avx512_bf16") == names.index("avx512_vnni") - 1
    bf16 = isa.tier("avx512_bf16")
    assert bf16.nfd_label == isa.NFD_PREFIX + "AVX512BF16"
    assert bf16.cpuinfo_flags == ("avx512_bf16", "avx512_vnni")
    assert [t.name for t in isa.TIERS if t.native_bf16] == ["amx_int8", "avx512_bf16"]
    assert isa.has_native_bf16("amx_int8") and isa.has_native_bf16("avx512_bf16")
    assert not any(isa.has_native_bf16(name) for name in ("avx512_vnni", "avx512", "avx_vnni", "avx2", None))
    assert [t.name for t in isa.higher_tiers("avx512_vnni")] == ["amx_int8", "avx512_bf16"]


def test_deciding_flags_are_the_tier_flags_present_highest_first() -> None:
    flags = {"fpu", "sse4_2", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16"}
    assert isa.deciding_flags(flags) == ["avx512_bf16", "avx512_vnni", "avx512f", "avx2"]
    assert isa.deciding_flags({"sse2"}) == []
    assert isa.cpuinfo_flags(CPUINFO_ZEN3) == {"fpu", "sse", "sse2", "avx", "avx2", "fma", "bmi2"}
    assert isa.cpuinfo_flags("processor : 0\n") == set()


@pytest.mark.parametrize(
    ("runtime_isa", "expected"),
    [
        # oneDNN's names, as OpenVINO's CPU plugin reports them (RUNTIME_REQUIREMENTS isa=).
        ("Intel AVX2", "avx2"),
        ("Intel AVX2 with Intel DL Boost", "avx_vnni"),
        ("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions", "avx512"),
        ("Intel AVX-512 with Intel DL Boost", "avx512_vnni"),
        ("Intel AVX-512 with Intel DL Boost and bfloat16 support", "avx512_bf16"),
        (
            "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 "
            "and 8-bit integer support",
            "amx_int8",
        ),
        ("Intel SSE4.1", None),
        ("Intel AVX", None),
        ("", None),
        (None, None),
    ],
)
def test_tier_of_runtime_isa(runtime_isa: str | None, expected: str | None) -> None:
    assert isa.tier_of_runtime_isa(runtime_isa) == expected


def test_kernel_cap_env_names_onednn_cap_per_tier() -> None:
    assert isa.kernel_cap_env("avx2") == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert isa.kernel_cap_env("avx512_vnni") == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    assert isa.kernel_cap_env("avx512_bf16") == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert isa.kernel_cap_env("amx_int8") == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}
    caps = [isa.kernel_cap_env(name)["ONEDNN_MAX_CPU_ISA"] for name in isa.TIER_NAMES]
    assert len(set(caps)) == len(caps)  # every tier runs distinct kernels
    with pytest.raises(ValueError, match="unknown ISA tier"):
        isa.kernel_cap_env("sse4")


def _admits(name: str, labels: dict[str, str]) -> bool:
    terms = isa.node_affinity(name)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    for e in terms[0]["matchExpressions"]:
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def test_bf16_and_vnni_models_never_share_a_node() -> None:
    """A model validated with bf16 kernels never lands on a VNNI node without bf16, and a VNNI
    model never lands on a bf16 node (its FPS and precision would be another tier's)."""
    label = {t.name: t.nfd_label for t in isa.TIERS}
    ice_lake = dict.fromkeys((label["avx512_vnni"], label["avx512"], label["avx2"]), "true")
    zen4 = ice_lake | {label["avx512_bf16"]: "true"}
    sapphire_rapids = zen4 | {label["amx_int8"]: "true", label["avx_vnni"]: "true"}
    assert _admits("avx512_bf16", zen4) and not _admits("avx512_bf16", ice_lake)
    assert _admits("avx512_vnni", ice_lake) and not _admits("avx512_vnni", zen4)
    assert not _admits("avx512_bf16", sapphire_rapids) and not _admits("avx512_vnni", sapphire_rapids)
    assert _admits("amx_int8", sapphire_rapids) and not _admits("amx_int8", zen4)
    expressions = isa.node_affinity("avx512_vnni")["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": label["avx512_bf16"], "operator": "DoesNotExist"} in expressions
