"""The node inventory: tiers from NFD labels, allocatable CPU, cordoned nodes left out."""

from __future__ import annotations

import pytest

from qfleet.fleet.nodes import Inventory, node_info, parse_cpu
from qfleet.isa import NFD_PREFIX


@pytest.mark.parametrize(
    ("text", "cores"), [("8", 8.0), ("500m", 0.5), ("1.5", 1.5), (4, 4.0), ("250000u", 0.25)]
)
def test_parse_cpu(text: object, cores: float) -> None:
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize("text", ["", "eight", "1Gi", "-1"])
def test_parse_cpu_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu(text)


def node(name: str, *features: str, cpu: str = "16", unschedulable: bool = False) -> dict[str, object]:
    labels = {NFD_PREFIX + feature: "true" for feature in features}
    return {
        "metadata": {"name": name, "labels": {**labels, "pool": "a"}},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": cpu}},
    }


def test_inventory_by_exact_tier() -> None:
    inventory = Inventory.of(
        node_info(n)
        for n in [
            node("amx", "AMXINT8", "AVX512VNNI", "AVX512F", "AVX2", cpu="64"),
            node("vnni-1", "AVX512VNNI", "AVX512F", "AVX2", cpu="32"),
            node("vnni-2", "AVX512VNNI", "AVX512F", "AVX2", cpu="7500m"),
            node("cordoned", "AVX512VNNI", "AVX2", unschedulable=True),
            node("old", "SSE4"),
        ]
    )
    assert [n.name for n in inventory.matching("avx512_vnni")] == ["vnni-1", "vnni-2"]
    assert inventory.allocatable_cpu("avx512_vnni") == pytest.approx(39.5)
    assert [n.name for n in inventory.matching("amx_int8", {"pool": "a"})] == ["amx"]
    assert inventory.matching("amx_int8", {"pool": "b"}) == []
    assert inventory.matching("avx2") == []


def test_signature_changes_with_what_planning_reads() -> None:
    one = Inventory.of([node_info(node("a", "AVX2"))])
    same = Inventory.of([node_info(node("a", "AVX2"))])
    more_cpu = Inventory.of([node_info(node("a", "AVX2", cpu="32"))])
    assert one.signature() == same.signature() != more_cpu.signature()
