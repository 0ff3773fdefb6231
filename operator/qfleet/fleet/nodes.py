"""The node inventory: which nodes of which ISA tier exist, and how much CPU they offer.

A node's tier comes from its Node Feature Discovery labels (:func:`qfleet.isa.tier_from_labels`,
a label counts only with the value ``"true"``). Only nodes that can take a new pod count: nodes
that are not Ready (no ``Ready`` condition with status ``"True"``) and cordoned nodes
(``spec.unschedulable``) are left out. A node's NoSchedule and NoExecute taints keep it out of a
target's pools unless the target tolerates them (Kubernetes' toleration rules,
:func:`tolerates`); PreferNoSchedule taints never keep a pod away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
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


#: Taint effects that keep a pod without a matching toleration off a node.
EXCLUDING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


def tolerates(toleration: Mapping[str, Any], taint: Taint) -> bool:
    """Whether a Kubernetes Toleration (a dict, as in a pod spec) tolerates ``taint``.

    An empty or missing effect matches every effect, an empty key (with ``Exists``) every key;
    ``Exists`` ignores the value, ``Equal`` (the default operator) requires the same value.
    """
    effect = str(toleration.get("effect") or "")
    if effect and effect != taint.effect:
        return False
    key = str(toleration.get("key") or "")
    if key and key != taint.key:
        return False
    operator = str(toleration.get("operator") or "Equal")
    if operator == "Exists":
        return True
    if operator == "Equal":
        return str(toleration.get("value") or "") == taint.value
    return False


@dataclass(frozen=True)
class NodeInfo:
    name: str
    tier: str
    allocatable_cpu: float
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    def admits(self, tolerations: Sequence[Mapping[str, Any]] = ()) -> bool:
        """Whether a pod with ``tolerations`` may be scheduled here, as far as taints go."""
        return all(
            any(tolerates(toleration, taint) for toleration in tolerations)
            for taint in self.taints
            if taint.effect in EXCLUDING_EFFECTS
        )


def is_ready(node: Mapping[str, Any]) -> bool:
    """The node's ``Ready`` condition says ``"True"`` (a node without one is not ready)."""
    conditions = (node.get("status") or {}).get("conditions") or ()
    return any(
        isinstance(item, Mapping) and item.get("type") == "Ready" and item.get("status") == "True"
        for item in conditions
    )


def _taints(spec: Mapping[str, Any]) -> tuple[Taint, ...]:
    taints = []
    for item in spec.get("taints") or ():
        if isinstance(item, Mapping) and item.get("key"):
            taints.append(
                Taint(
                    key=str(item["key"]),
                    value=str(item.get("value") or ""),
                    effect=str(item.get("effect") or ""),
                )
            )
    return tuple(sorted(taints, key=lambda taint: (taint.key, taint.value, taint.effect)))


def node_info(node: Mapping[str, Any]) -> NodeInfo | None:
    """What planning needs of a Node object; None for nodes without a tier, not Ready or cordoned."""
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    tier = tier_from_labels(labels)
    spec = node.get("spec") or {}
    if tier is None or spec.get("unschedulable") or not is_ready(node):
        return None
    allocatable = ((node.get("status") or {}).get("allocatable") or {}).get("cpu", "0")
    try:
        cpu = parse_cpu(allocatable)
    except ValueError:
        cpu = 0.0
    return NodeInfo(
        name=str(metadata.get("name", "")),
        tier=tier,
        allocatable_cpu=cpu,
        labels=dict(labels),
        taints=_taints(spec),
    )


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[NodeInfo, ...] = ()

    @classmethod
    def of(cls, nodes: Iterable[NodeInfo | None]) -> Inventory:
        return cls(tuple(sorted((node for node in nodes if node is not None), key=lambda node: node.name)))

    def matching(
        self,
        tier: str,
        selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
    ) -> list[NodeInfo]:
        """Nodes of exactly ``tier`` whose labels include ``selector`` and whose NoSchedule and
        NoExecute taints ``tolerations`` all tolerate."""
        wanted = dict(selector or {})
        return [
            node
            for node in self.nodes
            if node.tier == tier
            and all(node.labels.get(key) == value for key, value in wanted.items())
            and node.admits(tolerations)
        ]

    def allocatable_cpu(
        self,
        tier: str,
        selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
    ) -> float:
        return math.fsum(node.allocatable_cpu for node in self.matching(tier, selector, tolerations))

    def signature(self) -> tuple[NodeSignature, ...]:
        """Everything planning reads of the nodes: when it changes, every model is worth a reconcile.
        (Readiness and cordons decide which nodes are here at all.)"""
        return tuple(
            (node.name, node.tier, node.allocatable_cpu, tuple(sorted(node.labels.items())), node.taints)
            for node in self.nodes
        )


#: One node's part of :meth:`Inventory.signature`: name, tier, CPU, labels, taints.
NodeSignature = tuple[str, str, float, tuple[tuple[str, str], ...], tuple[Taint, ...]]
