"""The serving fleet through every change, with the real operator on the test cluster.

The cluster's Deployment controller rolls pods as Kubernetes does (surge, readiness, old pods
removed only as new ones are ready), its scheduler leaves pods Pending where no node has room,
and it logs the ready capacity throughout: each change must keep the capacity at or above
``min(demand, capacity before the change)`` (see ``tests/support/transitions.py``).
"""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from qfleet.fleet import names
from tests.support.cluster import JOBS, PODS, Cluster
from tests.support.operator_fixtures import NAMESPACE, model_body
from tests.support.transitions import (
    condition,
    cpu_change,
    deployment,
    failed_rollout,
    new_source_all_tiers,
    status,
    status_lost,
    tier_handover,
    unschedulable_spill,
    variant,
    wait_settled,
    wait_steady,
)

pytestmark = pytest.mark.timeout(300)

SERVICES = kmock.resource("", "v1", "services")
BUDGETS = kmock.resource("policy", "v1", "poddisruptionbudgets")


async def start(cluster: Cluster, **env: str) -> None:
    await cluster.start_operator("--namespace", NAMESPACE, env=env)


async def test_the_model_is_reachable_through_one_service(cluster: Cluster) -> None:
    await cluster.add_node("vnni-1", "avx512_vnni", cpu="64")
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    await start(cluster)
    await cluster.apply_model(model_body("reach", targets=("avx512_vnni", "avx2"), cameras=6,
                                         demand={"placement": "spread"},
                                         serving={"service": {"type": "NodePort",
                                                              "annotations": {"team": "faces"}}}))  # fmt: skip
    await wait_settled(cluster, "reach", "first rollout")
    assert status(cluster, "reach")["address"]["url"] == f"http://reach.{NAMESPACE}.svc:8080"
    service = cluster.get(SERVICES, NAMESPACE, "reach")
    assert service is not None
    assert service["spec"]["type"] == "NodePort" and service["metadata"]["annotations"]["team"] == "faces"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8080,
        "grpc": 8081,
        "metrics": 9090,
    }
    # The selector picks every serving pod of the model, on both tiers, and nothing else.
    selector = service["spec"]["selector"]
    pods = cluster.serving_pods(NAMESPACE, "reach")
    tiers = {pod["metadata"]["labels"][names.LABEL_ISA] for pod in pods}
    assert tiers == {"avx512-vnni", "avx2"}
    assert all(selector.items() <= pod["metadata"]["labels"].items() for pod in pods)
    others = [p for p in cluster.objects(PODS, NAMESPACE) if p not in pods]
    assert not any(selector.items() <= (p["metadata"].get("labels") or {}).items() for p in others)
    # Each pod serves the model under the resource's name.
    for pod in pods:
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--name") + 1] == "reach"
    # A PodDisruptionBudget per serving Deployment keeps the demand covered through a drain.
    budgets = cluster.objects(BUDGETS, NAMESPACE)
    assert {b["metadata"]["name"] for b in budgets} == {"reach-avx512-vnni", "reach-avx2"}
    for budget in budgets:
        isa = "avx2" if budget["metadata"]["name"].endswith("avx2") else "avx512_vnni"
        assert 1 <= budget["spec"]["minAvailable"] <= variant(cluster, "reach", isa)["replicas"]


async def test_a_cpu_change_keeps_the_old_pods_until_the_new_fps_is_measured(cluster: Cluster) -> None:
    await start(cluster)
    result = await cpu_change(cluster)
    assert result.notes["cpu_while_measuring"] == "1"  # no roll before the new FPS is known
    assert result.notes["cpu_after"] == "2"
    assert result.ratio >= 1.0, result


async def test_a_tier_handover_scales_the_old_tier_down_only_as_the_new_one_is_ready(
    cluster: Cluster,
) -> None:
    await start(cluster)
    result = await tier_handover(cluster)
    assert result.notes["replicas"]["avx512_vnni"] >= 1
    assert result.notes["replicas"]["avx2"] == 1  # minReplicas: fill moved the load to vnni
    assert result.ratio >= 1.0, result


async def test_unschedulable_replicas_spill_over_and_are_reported(cluster: Cluster) -> None:
    await start(cluster)
    result = await unschedulable_spill(cluster)
    replicas = result.notes["replicas"]
    # The vnni Deployment keeps its pending replicas (the autoscaler's signal); avx2 covers them.
    pending = [
        pod for pod in cluster.serving_pods(NAMESPACE, "spill")
        if (pod.get("status") or {}).get("phase") == "Pending"
    ]  # fmt: skip
    assert pending and all(p["metadata"]["labels"][names.LABEL_ISA] == "avx512-vnni" for p in pending)
    assert replicas["avx2"] > 1
    covered = result.notes["capacity_condition"]
    assert covered["status"] == "False" and "unschedulable" in covered["message"]
    assert result.ratio >= 1.0, result
    # With nowhere to spill, the shortfall is reported as Unschedulable.
    await cluster.patch(
        cluster.model_path(NAMESPACE, "spill"), {"spec": {"targets": [{"isa": "avx512_vnni"}]}}
    )
    await cluster.wait_for(
        "CapacityInsufficient=True Unschedulable",
        lambda: condition(cluster, "spill", "CapacityInsufficient").get("reason") == "Unschedulable",
        timeout=60,
    )
    assert condition(cluster, "spill", "CapacityInsufficient")["status"] == "True"


async def test_a_failed_rollout_rolls_back_and_is_not_tried_again(cluster: Cluster) -> None:
    await start(cluster)
    result = await failed_rollout(cluster)
    rolled_back = result.notes["rolled_back"]
    assert rolled_back["reason"] == "CrashLoopBackOff"
    assert result.notes["condition"]["status"] == "True"
    events = [e for e in cluster.events(NAMESPACE, "rollback") if e.get("reason") == "RolledBack"]
    assert events and events[0]["type"] == "Warning"
    assert result.ratio >= 1.0, result
    # Not tried again while the spec stays: the Deployment keeps the good model.
    assert variant(cluster, "rollback", "avx2")["served"]["artifact"] != rolled_back["artifact"]
    await cluster.patch(cluster.model_path(NAMESPACE, "rollback"), {"spec": {"demand": {"cameras": 7}}})
    await cluster.wait_for("rescaled", lambda: status(cluster, "rollback")["demand"]["cameras"] == 7)
    await wait_steady(cluster, "rollback", "camera change after the rollback")
    found = deployment(cluster, "rollback", "avx2") or {}
    assert found["metadata"]["annotations"][names.ANNOTATION_ARTIFACT] != rolled_back["artifact"]


async def test_a_stalled_rollout_past_its_deadline_rolls_back(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    await start(cluster, QFLEET_PROGRESS_DEADLINE_SECONDS="2")
    await cluster.apply_model(model_body("stalled", cameras=3))
    await wait_settled(cluster, "stalled", "first rollout")
    good = variant(cluster, "stalled", "avx2")["served"]["artifact"]
    # New pods that never get ready (and never restart): only the deadline can tell.
    cluster.deployments_ready = False
    await cluster.patch(cluster.model_path(NAMESPACE, "stalled"),
                        {"metadata": {"annotations": {names.ANNOTATION_RERUN: "1"}}})  # fmt: skip
    await cluster.wait_for(
        "RolledBack ProgressDeadlineExceeded",
        lambda: condition(cluster, "stalled", "RolledBack").get("reason") == "ProgressDeadlineExceeded",
        timeout=120,
    )
    assert variant(cluster, "stalled", "avx2")["served"]["artifact"] == good


async def test_one_source_model_across_tiers(cluster: Cluster) -> None:
    await start(cluster)
    result = await new_source_all_tiers(cluster)
    assert result.notes["vnni_waiting"] == "WaitingForAllTiers"
    assert result.notes["vnni_source_while_waiting"] == result.notes["old"]["avx512_vnni"]
    assert result.ratio >= 1.0, result


async def test_a_lost_status_is_rebuilt_from_the_deployments(cluster: Cluster) -> None:
    await start(cluster)
    result = await status_lost(cluster)
    assert result.notes["jobs_after"] == result.notes["jobs_before"]  # nothing quantized again
    found = deployment(cluster, "amnesia", "avx2") or {}
    assert found["spec"]["replicas"] == variant(cluster, "amnesia", "avx2")["replicas"]
    assert result.ratio >= 1.0, result


async def test_running_jobs_are_capped_and_the_rest_queue_in_order(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    await start(cluster, QFLEET_MAX_RUNNING_JOBS="1")
    cluster.release_jobs.clear()  # finished Jobs wait: the first one holds the only slot
    for index in range(3):
        await cluster.apply_model(model_body(f"queued-{index}", cameras=1))
    await cluster.wait_for("one Job", lambda: len(cluster.created(JOBS)) == 1)
    await cluster.wait_for(
        "the others queued",
        lambda: all(
            condition(cluster, f"queued-{i}", "Progressing").get("reason") == "Queued" for i in (1, 2)
        ),
    )
    assert len(cluster.created(JOBS)) == 1
    most: list[int] = []

    def running() -> int:
        count = sum(1 for job in cluster.objects(JOBS, NAMESPACE) if not _finished(job))
        most.append(count)
        return count

    cluster.release_jobs.set()
    await cluster.wait_for(
        "all three Ready",
        lambda: (
            running() >= 0 and all(status(cluster, f"queued-{i}").get("phase") == "Ready" for i in range(3))
        ),
        timeout=240,
    )
    assert max(most) <= 1
    order = [job["metadata"]["annotations"][names.ANNOTATION_MODEL_NAME] for job in _by_creation(cluster)]
    assert order == ["queued-0", "queued-1", "queued-2"]


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _by_creation(cluster: Cluster) -> list[dict[str, Any]]:
    return sorted(cluster.objects(JOBS, NAMESPACE), key=lambda job: int(job["metadata"]["resourceVersion"]))


async def test_nodes_count_only_when_ready_and_their_taints_are_tolerated(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2", cpu="64")
    await cluster.taint_node("avx2-1", "dedicated", "faces", "NoSchedule")
    await cluster.add_node("avx2-2", "avx2", cpu="64")
    await cluster.set_node_ready("avx2-2", False)
    await start(cluster)
    await cluster.apply_model(model_body("tainted", cameras=1))
    await cluster.wait_for(
        "NodesAvailable=False",
        lambda: condition(cluster, "tainted", "NodesAvailable").get("status") == "False",
    )
    assert cluster.created(JOBS) == []
    toleration = {"key": "dedicated", "operator": "Equal", "value": "faces", "effect": "NoSchedule"}
    await cluster.patch(
        cluster.model_path(NAMESPACE, "tainted"),
        {"spec": {"targets": [{"isa": "avx2", "tolerations": [toleration]}]}},
    )
    await wait_settled(cluster, "tainted", "after the toleration")
    (job,) = cluster.objects(JOBS, NAMESPACE)
    assert toleration in job["spec"]["template"]["spec"]["tolerations"]
    pod = cluster.serving_pods(NAMESPACE, "tainted")[0]
    assert pod["spec"]["nodeName"] == "avx2-1" and toleration in pod["spec"]["tolerations"]
