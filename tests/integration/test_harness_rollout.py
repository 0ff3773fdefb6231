"""The test cluster's serving side: Deployment rollouts, the scheduler and the kubelet of serving
pods, and the capacity log. No operator runs here: the Deployments are created directly."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from qfleet.isa import tier
from tests.support.cluster import (
    DEPLOYMENTS,
    POD_TEMPLATE_HASH,
    Cluster,
    rolling_limits,
    running_cluster,
    template_hash,
    tolerates,
    unfit_reason,
)
from tests.support.operator_fixtures import NAMESPACE, model_body

FPS = 100.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cluster:
        await cluster.add_namespace(NAMESPACE)
        yield cluster


def deployment_body(
    name: str,
    *,
    replicas: int = 3,
    cpu: str = "1",
    version: str = "v1",
    model: str = "m",
    tolerations: list[dict[str, str]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A serving Deployment shaped like the operator's: AVX2 nodes only, maxSurge 1, maxUnavailable 0."""
    labels = {"app.kubernetes.io/component": "server", "app": name}
    pod_spec: dict[str, Any] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": tier("avx2").nfd_label, "operator": "In", "values": ["true"]}
                            ]
                        }
                    ]
                }
            }
        },
        "containers": [
            {
                "name": "server",
                "image": "qfleet/server:test",
                "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}},
            }
        ],
    }
    if tolerations is not None:
        pod_spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "qfleet.dev/model-name": model,
                        "qfleet.dev/fps-per-replica": str(FPS),
                        "version": version,
                    },
                },
                "spec": pod_spec,
            },
            **spec,
        },
    }


def path(name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments" + (f"/{name}" if name else "")


async def create(cluster: Cluster, body: Mapping[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = await cluster.create(path(), body)
    return created


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(DEPLOYMENTS, NAMESPACE, name) or {}).get("status") or {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


def pods(cluster: Cluster, name: str, model: str = "m") -> list[dict[str, Any]]:
    return [
        pod
        for pod in cluster.serving_pods(NAMESPACE, model)
        if pod["metadata"]["name"].startswith(name + "-")
    ]


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def pod_scheduled(pod: Mapping[str, Any]) -> dict[str, Any]:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})


def rolled_out(cluster: Cluster, name: str, replicas: int) -> bool:
    found = status(cluster, name)
    deployment = cluster.get(DEPLOYMENTS, NAMESPACE, name) or {}
    return (
        found.get("observedGeneration") == deployment.get("metadata", {}).get("generation")
        and found.get("replicas") == found.get("updatedReplicas") == found.get("readyReplicas") == replicas
        and condition(cluster, name, "Progressing").get("reason") == "NewReplicaSetAvailable"
    )


async def wait_rolled_out(cluster: Cluster, name: str, replicas: int, timeout: float = 30) -> None:
    await cluster.wait_for(
        f"{name} rolled out at {replicas}", lambda: rolled_out(cluster, name, replicas), timeout=timeout
    )


async def set_version(cluster: Cluster, name: str, version: str) -> None:
    await cluster.patch(
        path(name), {"spec": {"template": {"metadata": {"annotations": {"version": version}}}}}
    )


# -- rollouts ------------------------------------------------------------------------------------------


async def test_pods_are_real_objects_named_after_their_template(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2")
    created = await create(cluster, deployment_body("web", replicas=2))
    await wait_rolled_out(cluster, "web", 2)
    digest = template_hash(created["spec"]["template"])
    for pod in pods(cluster, "web"):
        meta = pod["metadata"]
        assert re.fullmatch(rf"web-{digest}-[0-9a-z]{{5}}", meta["name"]), meta["name"]
        assert meta["labels"][POD_TEMPLATE_HASH] == digest and meta["labels"]["app"] == "web"
        assert meta["annotations"]["qfleet.dev/fps-per-replica"] == str(FPS)
        assert meta["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        assert pod["spec"]["nodeName"] == "n1" and pod["status"]["phase"] == "Running"
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    found = status(cluster, "web")
    assert found["availableReplicas"] == 2 and found["unavailableReplicas"] == 0
    assert condition(cluster, "web", "Available")["status"] == "True"


async def test_a_rolling_update_never_drops_below_the_replicas(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2")
    await create(cluster, deployment_body("web", replicas=3))
    await wait_rolled_out(cluster, "web", 3)
    before = {pod["metadata"]["name"] for pod in pods(cluster, "web")}
    most_pods = 0

    async def count() -> None:  # the surge: never more than replicas + 1 pods at once
        nonlocal most_pods
        while True:
            most_pods = max(most_pods, len(pods(cluster, "web")))
            await asyncio.sleep(0.02)

    counter = asyncio.create_task(count())
    mark = cluster.capacity_mark()
    await set_version(cluster, "web", "v2")
    await cluster.wait_for(
        "Progressing=ReplicaSetUpdated",
        lambda: condition(cluster, "web", "Progressing").get("reason") == "ReplicaSetUpdated",
    )
    await wait_rolled_out(cluster, "web", 3)
    counter.cancel()
    after = pods(cluster, "web")
    assert not before & {pod["metadata"]["name"] for pod in after}  # every pod replaced
    assert {pod["metadata"]["annotations"]["version"] for pod in after} == {"v2"}
    assert cluster.min_capacity_since(mark, NAMESPACE, "m") == pytest.approx(3 * FPS * 0.8)
    assert most_pods == 4


async def test_a_plain_scale_changes_pods_not_templates(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2")
    await create(cluster, deployment_body("web", replicas=2))
    await wait_rolled_out(cluster, "web", 2)
    first = {pod["metadata"]["name"] for pod in pods(cluster, "web")}
    await cluster.patch(path("web"), {"spec": {"replicas": 4}})
    await wait_rolled_out(cluster, "web", 4)
    assert first < {pod["metadata"]["name"] for pod in pods(cluster, "web")}
    await cluster.patch(path("web"), {"spec": {"replicas": 1}})
    await wait_rolled_out(cluster, "web", 1)
    assert {pod["metadata"]["name"] for pod in pods(cluster, "web")} <= first  # the newest went first
    await cluster.request("DELETE", path("web"))
    await cluster.wait_for("pods of the deleted Deployment gone", lambda: not pods(cluster, "web"))


# -- the scheduler -------------------------------------------------------------------------------------


async def test_pods_wait_unschedulable_when_cpu_runs_out_until_a_node_comes(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2", cpu="4")
    await create(cluster, deployment_body("web", replicas=3, cpu="1500m"))

    def pending() -> list[dict[str, Any]]:
        return [pod for pod in pods(cluster, "web") if pod_scheduled(pod).get("reason") == "Unschedulable"]

    await cluster.wait_for(
        "one pod unschedulable",
        lambda: len(pending()) == 1 and status(cluster, "web").get("readyReplicas") == 2,
    )
    stuck = pending()[0]
    scheduled = pod_scheduled(stuck)
    assert stuck["status"]["phase"] == "Pending" and "nodeName" not in stuck["spec"]
    assert scheduled["status"] == "False" and scheduled["lastTransitionTime"]
    assert scheduled["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    assert condition(cluster, "web", "Available")["status"] == "False"  # maxUnavailable 0: 2 of 3 is too few

    await cluster.add_node("n2", "avx2", cpu="4")
    await wait_rolled_out(cluster, "web", 3)
    placed = {pod["metadata"]["name"]: pod["spec"]["nodeName"] for pod in pods(cluster, "web")}
    assert placed[stuck["metadata"]["name"]] == "n2" and sorted(placed.values()) == ["n1", "n1", "n2"]


async def test_a_scale_down_removes_the_pending_pod_first(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2", cpu="2")
    await create(cluster, deployment_body("web", replicas=3))
    await cluster.wait_for("two ready, one pending", lambda: status(cluster, "web").get("readyReplicas") == 2
                           and any(pod_scheduled(pod).get("reason") == "Unschedulable" for pod in pods(cluster, "web")))  # fmt: skip
    ready = {pod["metadata"]["name"] for pod in pods(cluster, "web") if is_ready(pod)}
    await cluster.patch(path("web"), {"spec": {"replicas": 2}})
    await wait_rolled_out(cluster, "web", 2)
    assert {pod["metadata"]["name"] for pod in pods(cluster, "web")} == ready


async def test_a_taint_without_toleration_keeps_pods_pending(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2")
    await cluster.taint_node("n1", "dedicated", "serving", "NoSchedule")
    await create(cluster, deployment_body("plain", replicas=1, model="a"))
    toleration = {"key": "dedicated", "operator": "Equal", "value": "serving", "effect": "NoSchedule"}
    await create(cluster, deployment_body("tolerant", replicas=1, model="b", tolerations=[toleration]))
    await wait_rolled_out(cluster, "tolerant", 1)
    await cluster.wait_for("plain unschedulable", lambda: pod_scheduled(pods(cluster, "plain", "a")[0]).get("reason") == "Unschedulable")  # fmt: skip
    message = pod_scheduled(pods(cluster, "plain", "a")[0])["message"]
    assert message == "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: serving}."


async def test_cordoned_and_not_ready_nodes_take_no_new_pods(cluster: Cluster) -> None:
    await cluster.add_node("n1", "avx2")
    await cluster.add_node("n2", "avx2")
    await cluster.cordon_node("n1")
    await cluster.set_node_ready("n2", False)
    await create(cluster, deployment_body("web", replicas=1))

    def reason() -> str:
        found = pods(cluster, "web")
        return str(pod_scheduled(found[0]).get("message")) if found else ""

    await cluster.wait_for("unschedulable", lambda: "were unschedulable" in reason())
    assert "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }" in reason()
    await cluster.cordon_node("n1", cordoned=False)
    await wait_rolled_out(cluster, "web", 1)
    assert pods(cluster, "web")[0]["spec"]["nodeName"] == "n1"


def test_tolerations_follow_kubernetes_rules() -> None:
    taint = {"key": "dedicated", "value": "serving", "effect": "NoSchedule"}
    assert tolerates([{"operator": "Exists"}], taint)  # no key + Exists: everything
    assert tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert tolerates([{"key": "dedicated", "value": "serving"}], taint)  # Equal, every effect
    assert not tolerates([{"key": "dedicated", "value": "other"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert not tolerates([], taint)
    node = {
        "metadata": {"labels": {}},
        "spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "2"}},
    }
    pod = {"spec": {"containers": []}}
    assert unfit_reason(pod, node, 1.0, 0.5) is None  # PreferNoSchedule only prefers
    assert unfit_reason(pod, node, 1.0, 1.5) == "Insufficient cpu"


def test_rolling_limits_as_kubernetes_rounds_them() -> None:
    assert rolling_limits({}, 10) == (3, 2)  # 25% each: surge up, unavailable down
    strategy = {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}
    assert rolling_limits(strategy, 10) == (1, 0)
    assert rolling_limits(
        {"strategy": {"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "50%"}}}, 3
    ) == (2, 1)
    assert rolling_limits({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}}, 3) == (
        0,
        1,
    )


# -- the kubelet: crashes and stuck rollouts -------------------------------------------------------------


async def test_a_crashing_rollout_stalls_keeps_the_old_pods_and_exceeds_its_deadline(
    cluster: Cluster,
) -> None:
    await cluster.add_node("n1", "avx2")
    cluster.serving_fault = lambda annotations: annotations.get("version") == "bad"
    await create(cluster, deployment_body("web", replicas=2, progressDeadlineSeconds=2))
    await wait_rolled_out(cluster, "web", 2)
    old = {pod["metadata"]["name"] for pod in pods(cluster, "web")}
    mark = cluster.capacity_mark()
    await set_version(cluster, "web", "bad")

    def crashing() -> list[dict[str, Any]]:
        return [pod for pod in pods(cluster, "web") if pod["metadata"]["name"] not in old]

    def restarts() -> int:
        found = crashing()
        container = (found[0]["status"].get("containerStatuses") or [{}])[0] if found else {}
        waiting = (container.get("state") or {}).get("waiting") or {}
        return int(container.get("restartCount") or 0) if waiting.get("reason") == "CrashLoopBackOff" else -1

    await cluster.wait_for("the new pod crash-looping", lambda: restarts() >= 1)
    first = restarts()
    await cluster.wait_for("more restarts", lambda: restarts() > first)
    await cluster.wait_for(
        "ProgressDeadlineExceeded",
        lambda: condition(cluster, "web", "Progressing").get("reason") == "ProgressDeadlineExceeded",
        timeout=15,
    )
    assert condition(cluster, "web", "Progressing")["status"] == "False"
    assert len(crashing()) == 1 and not is_ready(crashing()[0])  # the surge pod alone: no more
    assert old <= {pod["metadata"]["name"] for pod in pods(cluster, "web")}  # the old ones keep serving
    assert status(cluster, "web")["readyReplicas"] == 2 and status(cluster, "web")["updatedReplicas"] == 1
    assert cluster.min_capacity_since(mark, NAMESPACE, "m") == pytest.approx(2 * FPS * 0.8)

    await set_version(cluster, "web", "v1")  # rolled back: the crashing pod goes, the old ones stay
    await wait_rolled_out(cluster, "web", 2)
    assert {pod["metadata"]["name"] for pod in pods(cluster, "web")} == old


async def test_pods_never_become_ready_while_deployments_are_not_ready(cluster: Cluster) -> None:
    cluster.deployments_ready = False
    await cluster.add_node("n1", "avx2")
    await create(cluster, deployment_body("web", replicas=2))
    await cluster.wait_for("two running pods", lambda: status(cluster, "web").get("replicas") == 2
                           and all(pod["status"]["phase"] == "Running" for pod in pods(cluster, "web")))  # fmt: skip
    assert status(cluster, "web")["readyReplicas"] == 0
    cluster.deployments_ready = True
    await wait_rolled_out(cluster, "web", 2)


# -- the capacity log -----------------------------------------------------------------------------------


async def test_the_capacity_log_keeps_the_minimum_since_a_mark(cluster: Cluster) -> None:
    await cluster.apply_model(model_body("m", demand={"targetUtilization": 0.5}))
    await cluster.add_node("n1", "avx2")
    await create(cluster, deployment_body("web", replicas=2))
    await wait_rolled_out(cluster, "web", 2)
    assert cluster.ready_capacity(NAMESPACE, "m") == pytest.approx(2 * FPS * 0.5)
    assert cluster.ready_capacity(NAMESPACE, "other") == 0.0
    mark = cluster.capacity_mark()
    assert cluster.min_capacity_since(mark, NAMESPACE, "m") == pytest.approx(2 * FPS * 0.5)

    await cluster.patch(path("web"), {"spec": {"replicas": 1}})
    await wait_rolled_out(cluster, "web", 1)
    await cluster.patch(path("web"), {"spec": {"replicas": 3}})
    await wait_rolled_out(cluster, "web", 3)
    assert cluster.ready_capacity(NAMESPACE, "m") == pytest.approx(3 * FPS * 0.5)
    assert cluster.min_capacity_since(mark, NAMESPACE, "m") == pytest.approx(1 * FPS * 0.5)
    assert cluster.min_capacity_since(cluster.capacity_mark(), NAMESPACE, "m") == pytest.approx(3 * FPS * 0.5)
    assert "Running ready=True node=n1" in "\n".join(cluster.serving_diagnostics())
