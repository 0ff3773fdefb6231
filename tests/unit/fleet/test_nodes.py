"""The node inventory: tiers from NFD labels, allocatable CPU; cordoned, unready and (for a target
without the tolerations) tainted nodes left out."""

from __future__ import annotations

from typing import Any

import pytest

from qfleet.fleet.nodes import Inventory, NodeInfo, Taint, node_info, parse_cpu, tolerates
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


READY = {"type": "Ready", "status": "True"}


def node(
    name: str,
    *features: str,
    cpu: str = "16",
    unschedulable: bool = False,
    conditions: list[dict[str, str]] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    labels = {NFD_PREFIX + feature: "true" for feature in features}
    spec: dict[str, Any] = {"unschedulable": unschedulable}
    if taints is not None:
        spec["taints"] = taints
    return {
        "metadata": {"name": name, "labels": {**labels, "pool": "a"}},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, READY]
            if conditions is None
            else conditions,
        },
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


@pytest.mark.parametrize(
    "conditions",
    [
        [],
        [{"type": "Ready", "status": "False"}],
        [{"type": "Ready", "status": "Unknown"}],
        [{"type": "MemoryPressure", "status": "True"}],
    ],
    ids=["no-conditions", "not-ready", "unknown", "no-ready-condition"],
)
def test_a_node_that_is_not_ready_is_not_counted(conditions: list[dict[str, str]]) -> None:
    assert node_info(node("n", "AVX2", conditions=conditions)) is None
    missing_status = node("n", "AVX2")
    del missing_status["status"]
    assert node_info(missing_status) is None
    assert node_info(node("n", "AVX2")) is not None


@pytest.mark.parametrize("value", ["false", "True", "", "1"])
def test_a_tier_label_counts_only_with_the_value_true(value: str) -> None:
    body = node("n")
    body["metadata"]["labels"][NFD_PREFIX + "AVX2"] = value
    assert node_info(body) is None
    body["metadata"]["labels"][NFD_PREFIX + "AVX2"] = "true"
    info = node_info(body)
    assert info is not None and info.tier == "avx2"


def test_taints_are_read_from_the_node() -> None:
    info = node_info(
        node(
            "n",
            "AVX2",
            taints=[
                {"key": "dedicated", "value": "faces", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
            ],
        )
    )
    assert info is not None
    assert info.taints == (
        Taint("dedicated", "faces", "NoSchedule"),
        Taint("node.kubernetes.io/unreachable", "", "NoExecute"),
    )


DEDICATED = Taint("dedicated", "faces", "NoSchedule")


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (
            {"key": "dedicated", "operator": "Equal", "value": "faces", "effect": "NoSchedule"},
            DEDICATED,
            True,
        ),
        ({"key": "dedicated", "value": "faces", "effect": "NoSchedule"}, DEDICATED, True),  # Equal by default
        ({"key": "dedicated", "value": "other", "effect": "NoSchedule"}, DEDICATED, False),
        ({"key": "dedicated", "effect": "NoSchedule"}, DEDICATED, False),  # Equal with an empty value
        ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, DEDICATED, True),
        ({"key": "dedicated", "operator": "Exists"}, DEDICATED, True),  # any effect
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, DEDICATED, False),
        ({"key": "other", "operator": "Exists"}, DEDICATED, False),
        ({"operator": "Exists"}, DEDICATED, True),  # empty key, Exists: everything
        ({"key": "", "operator": "Exists"}, Taint("x", "y", "NoExecute"), True),
        ({"operator": "Exists", "effect": "NoExecute"}, DEDICATED, False),
        ({"key": "dedicated", "operator": "Lt", "value": "faces"}, DEDICATED, False),
        ({"key": "gpu", "value": "", "effect": "NoSchedule"}, Taint("gpu", "", "NoSchedule"), True),
    ],
)
def test_tolerates_follows_kubernetes(toleration: dict[str, str], taint: Taint, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


def test_tainted_nodes_count_only_for_targets_that_tolerate_them() -> None:
    inventory = Inventory.of(
        node_info(n)
        for n in [
            node("plain", "AVX2", cpu="8"),
            node(
                "dedicated",
                "AVX2",
                cpu="16",
                taints=[{"key": "dedicated", "value": "faces", "effect": "NoSchedule"}],
            ),
            node("draining", "AVX2", cpu="32", taints=[{"key": "drain", "effect": "NoExecute"}]),
            node(
                "preferred",
                "AVX2",
                cpu="4",
                taints=[{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}],
            ),
        ]
    )
    assert [n.name for n in inventory.matching("avx2")] == ["plain", "preferred"]
    assert inventory.allocatable_cpu("avx2") == pytest.approx(12)
    faces = [{"key": "dedicated", "operator": "Equal", "value": "faces", "effect": "NoSchedule"}]
    assert [n.name for n in inventory.matching("avx2", tolerations=faces)] == [
        "dedicated",
        "plain",
        "preferred",
    ]
    assert inventory.allocatable_cpu("avx2", {"pool": "a"}, faces) == pytest.approx(28)
    assert inventory.matching("avx2", {"pool": "b"}, faces) == []
    everything = [{"operator": "Exists"}]
    assert len(inventory.matching("avx2", tolerations=everything)) == 4
    assert inventory.allocatable_cpu("avx2", tolerations=everything) == pytest.approx(60)


def test_a_node_needs_every_excluding_taint_tolerated() -> None:
    both = NodeInfo("n", "avx2", 8.0, taints=(Taint("a", "1", "NoSchedule"), Taint("b", "2", "NoExecute")))
    assert not both.admits([{"key": "a", "value": "1"}])
    assert both.admits([{"key": "a", "value": "1"}, {"key": "b", "operator": "Exists"}])
    assert not both.admits()


def test_signature_changes_with_taints() -> None:
    plain = Inventory.of([node_info(node("a", "AVX2"))])
    tainted = Inventory.of([node_info(node("a", "AVX2", taints=[{"key": "k", "effect": "NoSchedule"}]))])
    soft = Inventory.of([node_info(node("a", "AVX2", taints=[{"key": "k", "effect": "PreferNoSchedule"}]))])
    assert len({plain.signature(), tainted.signature(), soft.signature()}) == 3
