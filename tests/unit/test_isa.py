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
