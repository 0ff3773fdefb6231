"""Leader election as the chart configures it: two operator replicas, one kopf peering object.

kopf peering is not a lease: every replica writes a keep-alive with its priority into the peering
object, and a replica pauses when it sees a live peer with a higher *or equal* priority. Two
replicas of one Deployment therefore need different priorities, or both pause and nothing is
reconciled. This runs two replicas of the real operator with the environment the chart renders
(distinct pod names, as the downward API gives them) against the emulated cluster.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import JOBS
from tests.support.k8s_tools import find, render
from tests.support.operator_fixtures import NAMESPACE, model_body, model_cluster

pytestmark = pytest.mark.timeout(300)


def replica_env(objects: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    env["POD_ID"] = pod_name
    env["QFLEET_BENCHMARK_SECONDS"] = "1"
    return env


async def test_two_replicas_one_works(tmp_path: Path, datasets: Path) -> None:
    objects = render({"leaderElection": {"enabled": True, "replicas": 2}})
    async with model_cluster(tmp_path, datasets) as cluster:
        for crd in find(objects, "CustomResourceDefinition"):
            cluster.emulator.install_crd(crd)
        (peering,) = find(objects, "ClusterKopfPeering")
        await cluster.create(f"/apis/{peering['apiVersion']}/clusterkopfpeerings", peering)
        await cluster.add_node("avx2-1", "avx2")
        for replica in ("qfleet-7d9f-a", "qfleet-7d9f-b"):
            await cluster.start_operator(
                "--all-namespaces", env=replica_env(objects, replica), log_name=replica
            )
        peering_path = f"/apis/{peering['apiVersion']}/clusterkopfpeerings/{peering['metadata']['name']}"

        async def peers() -> dict[str, Any]:
            return dict((await cluster.request("GET", peering_path)).get("status") or {})

        found: dict[str, Any] = {}

        async def both_registered() -> bool:
            found.update(await peers())
            return len(found) == 2

        await _poll(both_registered, timeout=30)
        priorities = {peer["priority"] for peer in found.values()}
        assert len(priorities) == 2, f"the replicas share a priority: {found}"

        await cluster.apply_model(model_body("elected"))
        await cluster.wait_for(
            "a quantization Job", lambda: bool(cluster.objects(JOBS, NAMESPACE)), timeout=60
        )
        logs = [cluster.operator_log(name) for name in ("qfleet-7d9f-a", "qfleet-7d9f-b")]
        assert sum("created quantization Job" in log for log in logs) == 1, "exactly one replica works"


async def _poll(check: Any, *, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.2)


async def test_a_stopped_or_restarted_leader_hands_over_before_its_keep_alive_lapses(
    tmp_path: Path, datasets: Path
) -> None:
    """SIGTERM: kopf withdraws the leader's keep-alive on its way out. SIGKILL and a restart in
    the same pod: the new process (same pod name, kopf's identity) replaces the dead one's
    keep-alive with its own younger priority. Either way the standby resumes at once; with a
    lifetime of 10 minutes, nothing else could have let it resume within the test's timeout."""
    objects = render({"leaderElection": {"enabled": True, "replicas": 2, "lifetimeSeconds": 600}})
    async with model_cluster(tmp_path, datasets) as cluster:
        for crd in find(objects, "CustomResourceDefinition"):
            cluster.emulator.install_crd(crd)
        (peering,) = find(objects, "ClusterKopfPeering")
        await cluster.create(f"/apis/{peering['apiVersion']}/clusterkopfpeerings", peering)
        peering_path = f"/apis/{peering['apiVersion']}/clusterkopfpeerings/{peering['metadata']['name']}"

        async def keep_alives() -> dict[str, Any]:
            return dict((await cluster.request("GET", peering_path)).get("status") or {})

        async def start(replica: str, log_name: str | None = None) -> Any:
            process = await cluster.start_operator(
                "--all-namespaces", env=replica_env(objects, replica), log_name=log_name or replica
            )
            await _poll(lambda: _has(keep_alives, replica), timeout=60)
            return process

        def resumed(log_name: str) -> bool:
            return "Resuming operations" in cluster.operator_log(log_name)

        leader = await start("qfleet-7d9f-a")  # the older replica leads
        await _poll(_async(lambda: resumed("qfleet-7d9f-a")), timeout=60)
        standby = await start("qfleet-7d9f-b")
        assert not resumed("qfleet-7d9f-b")

        leader.send_signal(signal.SIGTERM)  # an upgrade, a drain, a deleted pod
        await _poll(_async(lambda: resumed("qfleet-7d9f-b")), timeout=90)
        await cluster.stop_operator(leader)
        assert "qfleet-7d9f-a" not in await keep_alives()

        # Now b leads; c stands by. b crashes and the kubelet restarts it in the same pod.
        await start("qfleet-7d9f-c")
        dead = (await keep_alives())["qfleet-7d9f-b"]["priority"]
        assert not resumed("qfleet-7d9f-c")
        await cluster.stop_operator(standby, kill=True)
        await cluster.start_operator(
            "--all-namespaces", env=replica_env(objects, "qfleet-7d9f-b"), log_name="qfleet-7d9f-b-again"
        )
        await _poll(_async(lambda: resumed("qfleet-7d9f-c")), timeout=90)
        assert (await keep_alives())["qfleet-7d9f-b"]["priority"] != dead  # the restarted process's
        assert not resumed("qfleet-7d9f-b-again")  # younger than c: it stands by


async def _has(keep_alives: Any, replica: str) -> bool:
    return replica in await keep_alives()


def _async(check: Any) -> Any:
    async def checked() -> bool:
        return bool(check())

    return checked
