"""Changes a serving fleet goes through, played on the test cluster with the real operator.

Each scenario brings one QuantizedModel to Ready (its quantization Jobs run for real on the tiny
model), then makes one change and waits until the fleet has settled again. Throughout, the
cluster's controllers log the ready capacity (the sum over Ready serving pods of their model's
measured FPS x targetUtilization, see :meth:`Cluster.min_capacity_since`); a scenario reports the
lowest capacity seen during the change as a ratio to ``min(demand, capacity just before)``:
the fleet kept the demand covered through the change when the ratio is at least 1.

The integration tests (``tests/integration/test_fleet_changes.py``) assert what each change must
do; ``benchmarks/transitions.py`` runs them all and prints the table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qfleet.fleet import names
from tests.support.cluster import DEPLOYMENTS, JOBS, Cluster
from tests.support.operator_fixtures import NAMESPACE, model_body

#: Seconds a scenario waits for the fleet to settle.
SETTLE_TIMEOUT = 180.0


@dataclass
class Transition:
    """What one change did to the fleet's ready capacity."""

    name: str
    demand: float
    capacity_before: float
    min_capacity: float
    settle_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Lowest ready capacity during the change / min(demand, ready capacity before it)."""
        floor = min(self.demand, self.capacity_before)
        return math.inf if floor <= 0 else self.min_capacity / floor


# -- reading the cluster ------------------------------------------------------------------------


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return ((cluster.model(NAMESPACE, name) or {}).get("status")) or {}


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    return next((dict(c) for c in status(cluster, name).get("conditions") or [] if c["type"] == type_), {})


def variant(cluster: Cluster, name: str, isa: str) -> dict[str, Any]:
    return next((v for v in status(cluster, name).get("variants") or [] if v["isa"] == isa), {})


def deployment(cluster: Cluster, name: str, isa: str) -> dict[str, Any] | None:
    return cluster.get(DEPLOYMENTS, NAMESPACE, names.deployment_name(name, isa))


def demand_of(body: Mapping[str, Any]) -> float:
    demand = body["spec"]["demand"]
    return float(demand["cameras"] * demand["cameraFps"] * demand["facesPerFrame"])


def settled(cluster: Cluster, name: str) -> bool:
    """Ready, and every Deployment of the model runs only ready pods of its template."""
    return status(cluster, name).get("phase") == "Ready" and steady(cluster, name)


def steady(cluster: Cluster, name: str) -> bool:
    """Every Deployment of the model runs only ready pods of its template (whatever the phase)."""
    if not status(cluster, name).get("variants"):
        return False
    for found in cluster.objects(DEPLOYMENTS, NAMESPACE):
        if (found["metadata"].get("annotations") or {}).get(names.ANNOTATION_MODEL_NAME) != name:
            continue
        wanted = int(found["spec"].get("replicas") or 0)
        counts = found.get("status") or {}
        if not (
            counts.get("observedGeneration") == found["metadata"].get("generation")
            and counts.get("replicas", 0) == counts.get("updatedReplicas", 0) == wanted
            and counts.get("readyReplicas", 0) == wanted
        ):
            return False
    pods = cluster.serving_pods(NAMESPACE, name)
    return all((pod.get("status") or {}).get("phase") == "Running" for pod in pods)


async def wait_settled(cluster: Cluster, name: str, what: str, *, timeout: float = SETTLE_TIMEOUT) -> None:
    await cluster.wait_for(f"{name} settled: {what}", lambda: settled(cluster, name), timeout=timeout)


async def wait_steady(cluster: Cluster, name: str, what: str, *, timeout: float = SETTLE_TIMEOUT) -> None:
    await cluster.wait_for(f"{name} steady: {what}", lambda: steady(cluster, name), timeout=timeout)


async def patch_spec(cluster: Cluster, name: str, spec: Mapping[str, Any]) -> None:
    await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": spec})


async def rerun(cluster: Cluster, name: str, value: str) -> None:
    """A new pipeline key with the same inputs (the rerun annotation): a new artifact."""
    await cluster.patch(
        cluster.model_path(NAMESPACE, name), {"metadata": {"annotations": {names.ANNOTATION_RERUN: value}}}
    )


async def untaint_node(cluster: Cluster, node: str) -> None:
    await cluster.patch(f"/api/v1/nodes/{node}", {"spec": {"taints": None}})


async def measure(
    cluster: Cluster,
    name: str,
    body: Mapping[str, Any],
    change: Callable[[], Awaitable[None]],
    done: Callable[[], Awaitable[None]],
) -> Transition:
    """Run ``change`` from a steady fleet that covers its demand, wait with ``done``, and report
    the capacity."""
    await cluster.wait_for(
        f"{name} steady and covered before the change",
        lambda: steady(cluster, name) and cluster.ready_capacity(NAMESPACE, name) >= demand_of(body),
        timeout=SETTLE_TIMEOUT,
    )
    before = cluster.ready_capacity(NAMESPACE, name)
    mark = cluster.capacity_mark()
    started = time.monotonic()
    await change()
    await done()
    seconds = time.monotonic() - started
    lowest = cluster.min_capacity_since(mark, NAMESPACE, name)
    current = cluster.model(NAMESPACE, name) or body
    return Transition(name, demand_of(current), before, lowest, seconds)


# -- the scenarios ----------------------------------------------------------------------------------
# Each takes a running cluster (claims "data" and "models", namespace NAMESPACE) with the operator
# started by the caller, and returns its Transition.


async def cpu_change(cluster: Cluster) -> Transition:
    """serving CPU 1 -> 2: the old pods serve at their size until a Job measured the new one."""
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    body = model_body("cpu-change", cameras=24)
    await cluster.apply_model(body)
    name = "cpu-change"
    old_key: dict[str, str] = {}

    async def change() -> None:
        old_key["key"] = status(cluster, name)["pipelineKey"]
        await patch_spec(cluster, name, {"serving": {"resources": {"limits": {"cpu": "2"}}}})
        # Until the new Job's result, the Deployment keeps the old CPU (no roll at once).
        await cluster.wait_for(
            "the new key", lambda: status(cluster, name).get("pipelineKey") != old_key["key"]
        )
        found = deployment(cluster, name, "avx2") or {}
        cpu = found["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        old_key["cpu_while_measuring"] = cpu

    async def done() -> None:
        await cluster.wait_for(
            "served at 2 CPU", lambda: variant(cluster, name, "avx2").get("served", {}).get("cpu") == "2"
        )
        await wait_settled(cluster, name, "after the CPU change")

    result = await measure(cluster, name, body, change, done)
    result.notes["cpu_while_measuring"] = old_key.get("cpu_while_measuring")
    found = deployment(cluster, name, "avx2") or {}
    result.notes["cpu_after"] = found["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"
    ]
    result.notes["replicas_after"] = found["spec"]["replicas"]
    return result


async def tier_handover(cluster: Cluster) -> Transition:
    """fill over [avx512_vnni, avx2]: avx2 serves first; a vnni node arrives and takes over."""
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    name = "handover"
    body = model_body(name, targets=("avx512_vnni", "avx2"), cameras=24)
    await cluster.apply_model(body)

    async def change() -> None:
        await cluster.add_node("vnni-1", "avx512_vnni", cpu="64")

    async def done() -> None:
        await cluster.wait_for(
            "vnni serving", lambda: bool(variant(cluster, name, "avx512_vnni").get("served"))
        )
        await wait_settled(cluster, name, "after the handover")

    result = await measure(cluster, name, body, change, done)
    result.notes["replicas"] = {
        isa: variant(cluster, name, isa).get("replicas") for isa in ("avx512_vnni", "avx2")
    }
    return result


async def unschedulable_spill(cluster: Cluster) -> Transition:
    """More cameras than the vnni pool has room for: the pending replicas' share spills to avx2
    after the grace period."""
    await cluster.add_node("vnni-1", "avx512_vnni", cpu="2")
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    name = "spill"
    body = model_body(name, targets=("avx512_vnni", "avx2"), cameras=1, demand={"pendingGraceSeconds": 2})
    await cluster.apply_model(body)

    async def change() -> None:
        # The quantization Job's CPU is free again once it finished; the vnni node holds 2 pods.
        await patch_spec(cluster, name, {"demand": {"cameras": 24}})

    async def done() -> None:
        await cluster.wait_for(
            "avx2 carries the spill", lambda: (variant(cluster, name, "avx2").get("replicas") or 0) > 1
        )
        await wait_settled_or_pending(cluster, name)

    result = await measure(cluster, name, body, change, done)
    result.notes["replicas"] = {
        isa: variant(cluster, name, isa).get("replicas") for isa in ("avx512_vnni", "avx2")
    }
    result.notes["capacity_condition"] = condition(cluster, name, "CapacityInsufficient")
    return result


async def wait_settled_or_pending(cluster: Cluster, name: str) -> None:
    """Settled but for the pods that wait for room (the autoscaler's signal)."""

    def ok() -> bool:
        state = status(cluster, name)
        if state.get("phase") not in ("Ready", "Pending", "Degraded"):
            return False
        covered = condition(cluster, name, "CapacityInsufficient").get("status") == "False"
        return covered and cluster.ready_capacity(NAMESPACE, name) >= demand_of(
            cluster.model(NAMESPACE, name) or {}
        )

    await cluster.wait_for(f"{name}: demand covered by ready pods", ok, timeout=SETTLE_TIMEOUT)


async def failed_rollout(cluster: Cluster) -> Transition:
    """A new model whose pods crash-loop: the tier goes back to its last good model."""
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    name = "rollback"
    body = model_body(name, cameras=6)
    await cluster.apply_model(body)
    first: dict[str, str] = {}

    async def change() -> None:
        first["artifact"] = variant(cluster, name, "avx2")["served"]["artifact"]
        good = first["artifact"]
        cluster.serving_fault = lambda annotations: (
            annotations.get(names.ANNOTATION_ARTIFACT) not in (None, good)
        )
        await rerun(cluster, name, "1")

    async def done() -> None:
        await cluster.wait_for(
            "RolledBack", lambda: condition(cluster, name, "RolledBack").get("status") == "True"
        )
        await cluster.wait_for(
            "the last good model served again",
            lambda: (
                (deployment(cluster, name, "avx2") or {})
                .get("metadata", {})
                .get("annotations", {})
                .get(names.ANNOTATION_ARTIFACT)
                == first["artifact"]
            ),
        )
        await cluster.wait_for("old pods only", lambda: _only_artifact(cluster, name, first["artifact"]))

    result = await measure(cluster, name, body, change, done)
    result.notes["rolled_back"] = variant(cluster, name, "avx2").get("rolledBack")
    result.notes["condition"] = condition(cluster, name, "RolledBack")
    return result


def _only_artifact(cluster: Cluster, name: str, artifact: str) -> bool:
    """Every serving pod of the model runs ``artifact`` and the Deployments are steady."""
    pods = cluster.serving_pods(NAMESPACE, name)
    return (
        bool(pods)
        and all(
            (pod["metadata"].get("annotations") or {}).get(names.ANNOTATION_ARTIFACT) == artifact
            for pod in pods
        )
        and steady(cluster, name)
    )


async def new_source_all_tiers(cluster: Cluster) -> Transition:
    """A new source model on two tiers: no tier switches before both gates passed."""
    await cluster.add_node("vnni-1", "avx512_vnni", cpu="64")
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    name = "consistent"
    body = model_body(name, targets=("avx512_vnni", "avx2"), cameras=6, demand={"placement": "spread"})
    await cluster.apply_model(body)
    seen: dict[str, Any] = {}

    async def change() -> None:
        seen["old"] = {
            isa: variant(cluster, name, isa)["served"]["sourceKey"] for isa in ("avx512_vnni", "avx2")
        }
        # avx2 cannot run its Job for now (a taint nothing tolerates): vnni must wait for it.
        await cluster.taint_node("avx2-1", "maintenance", "true", "NoSchedule")
        await cluster.wait_for(
            "the operator sees the taint",
            lambda: condition(cluster, name, "NodesAvailable").get("status") == "False",
        )
        old_key = status(cluster, name)["pipelineKey"]
        await patch_spec(cluster, name, {"source": {"uri": "pvc://data/model-v2/model.xml"}})
        await cluster.wait_for("the new key", lambda: status(cluster, name)["pipelineKey"] != old_key)
        await cluster.wait_for(
            "vnni's new result",
            lambda: (
                variant(cluster, name, "avx512_vnni").get("result", {}).get("pipelineKey")
                == status(cluster, name).get("pipelineKey")
            ),
        )
        seen["vnni_waiting"] = variant(cluster, name, "avx512_vnni").get("reason")
        seen["vnni_source_while_waiting"] = variant(cluster, name, "avx512_vnni")["served"]["sourceKey"]
        await untaint_node(cluster, "avx2-1")

    async def done() -> None:
        def both_switched() -> bool:
            keys = {
                variant(cluster, name, isa).get("served", {}).get("sourceKey")
                for isa in ("avx512_vnni", "avx2")
            }
            return len(keys) == 1 and keys != set(seen["old"].values())

        await cluster.wait_for("both tiers on the new source", both_switched, timeout=SETTLE_TIMEOUT)
        await wait_settled(cluster, name, "after the new source")

    result = await measure(cluster, name, body, change, done)
    result.notes.update(seen)
    return result


async def status_lost(cluster: Cluster) -> Transition:
    """The status is wiped (a restored backup): rebuilt from the Deployment, no Job runs again,
    and a camera change is applied."""
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    name = "amnesia"
    body = model_body(name, cameras=3)
    await cluster.apply_model(body)
    seen: dict[str, Any] = {}

    async def change() -> None:
        seen["jobs_before"] = len(cluster.created(JOBS))
        seen["artifact"] = variant(cluster, name, "avx2")["served"]["artifact"]
        await cluster.patch(cluster.model_path(NAMESPACE, name) + "/status", {"status": None})
        await patch_spec(cluster, name, {"demand": {"cameras": 6}})

    async def done() -> None:
        await cluster.wait_for(
            "the status rebuilt",
            lambda: variant(cluster, name, "avx2").get("served", {}).get("artifact") == seen["artifact"],
        )
        await cluster.wait_for(
            "rescaled", lambda: status(cluster, name).get("demand", {}).get("cameras") == 6
        )
        await wait_settled(cluster, name, "after the status loss")

    result = await measure(cluster, name, body, change, done)
    seen["jobs_after"] = len(cluster.created(JOBS))
    result.notes.update(seen)
    return result


SCENARIOS: dict[str, Callable[[Cluster], Awaitable[Transition]]] = {
    "serving CPU 1 -> 2": cpu_change,
    "tier handover (avx2 -> avx512_vnni, fill)": tier_handover,
    "unschedulable replicas spill over": unschedulable_spill,
    "failed rollout rolls back": failed_rollout,
    "new source on two tiers (allTiers)": new_source_all_tiers,
    "status lost, then a camera change": status_lost,
}
