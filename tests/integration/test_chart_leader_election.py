"""Leader election as the chart configures it: two operator replicas, one kopf peering object.

kopf peering is not a lease: every replica writes a keep-alive with its priority into the peering
object, and a replica pauses when it sees a live peer with a higher *or equal* priority. Two
replicas of one Deployment therefore need different priorities, or both pause and nothing is
reconciled. This runs two replicas of the real operator with the environment the chart renders
(distinct pod names, as the downward API gives them) against the emulated cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import JOBS
from tests.support.k8s_tools import find, render
from tests.support.operator_fixtures import NAMESPACE, model_body, model_cluster

pytestmark = pytest.mark.timeout(180)


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
