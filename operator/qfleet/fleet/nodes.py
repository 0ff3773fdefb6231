"""The node inventory: which nodes of which ISA tier exist, and how much CPU they offer.

A node's tier comes from its Node Feature Discovery labels (:func:`qfleet.isa.tier_from_labels`).
Cordoned nodes (``spec.unschedulable``) are left out: no new Job or replica can land there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qfleet.isa import tier_from_labels

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*)$")
_CPU_SUFFIX = {"": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9, "k": 1e3}


def parse_cpu(quantity: object) -> float:
    """CPU cores of a Kubernetes quantity: ``"500m"`` -> 0.5, ``"8"`` -> 8.0."""
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if not match or match[2] not in _CPU_SUFFIX:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return float(match[1]) * _CPU_SUFFIX[match[2]]


@dataclass(frozen=True)
class NodeInfo:
    name: str
    tier: str
    allocatable_cpu: float
    labels: Mapping[str, str] = field(default_factory=dict)


def node_info(node: Mapping[str, Any]) -> NodeInfo | None:
    """What planning needs of a Node object; None for nodes without a tier or cordoned."""
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    tier = tier_from_labels(labels)
    if tier is None or (node.get("spec") or {}).get("unschedulable"):
        return None
    allocatable = ((node.get("status") or {}).get("allocatable") or {}).get("cpu", "0")
    try:
        cpu = parse_cpu(allocatable)
    except ValueError:
        cpu = 0.0
    return NodeInfo(name=str(metadata.get("name", "")), tier=tier, allocatable_cpu=cpu, labels=dict(labels))


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[NodeInfo, ...] = ()

    @classmethod
    def of(cls, nodes: Iterable[NodeInfo | None]) -> Inventory:
        return cls(tuple(sorted((node for node in nodes if node is not None), key=lambda node: node.name)))

    def matching(self, tier: str, selector: Mapping[str, str] | None = None) -> list[NodeInfo]:
        """Nodes of exactly ``tier`` whose labels include ``selector``."""
        wanted = dict(selector or {})
        return [
            node
            for node in self.nodes
            if node.tier == tier and all(node.labels.get(key) == value for key, value in wanted.items())
        ]

    def allocatable_cpu(self, tier: str, selector: Mapping[str, str] | None = None) -> float:
        return math.fsum(node.allocatable_cpu for node in self.matching(tier, selector))

    def signature(self) -> tuple[tuple[str, str, float, tuple[tuple[str, str], ...]], ...]:
        """Everything planning reads of the nodes: when it changes, every model is worth a reconcile."""
        return tuple(
            (node.name, node.tier, node.allocatable_cpu, tuple(sorted(node.labels.items())))
            for node in self.nodes
        )
