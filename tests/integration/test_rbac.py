"""Least privilege, recorded: the chart grants the operator exactly the API calls it makes.

The real operator (``qfleet operator`` as the chart runs it: its command line and environment
rendered by ``helm template``) runs against the emulated API server, which records every request,
while a QuantizedModel is created, quantized on two ISA tiers, served, rescaled, narrowed to one
tier (a Deployment deleted) and re-quantized after a spec change (obsolete Jobs deleted), while
kopf peering keeps its keep-alives in the peering object the chart creates.

Then every request must be allowed by the rendered roles bound to the operator's ServiceAccount,
and every permission in those roles must have been used. Both for the cluster-wide install (one
ClusterRole) and for a namespaced one (a Role per namespace plus a ClusterRole for nodes). The
static checks of the roles, against kopf's registry of handlers, are
``tests/unit/deploy/test_rbac.py``.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from qfleet.fleet import names
from tests.support.cluster import DEPLOYMENTS, JOBS, Cluster, Emulator
from tests.support.k8s_tools import find, render
from tests.support.operator_fixtures import NAMESPACE, model_body, model_cluster
from tests.support.rbac import (
    CLUSTER_WIDE,
    NAMESPACED,
    Call,
    allowed,
    call_from_request,
    kopf_registry_calls,
    operator_grants,
    used,
)

pytestmark = pytest.mark.timeout(300)


class RecordingEmulator(Emulator):
    """Records every HTTP request (method, path, query, user agent) before it is served."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.recorded: list[tuple[str, str, dict[str, str], str]] = []

    async def __call__(self, raw_request: Any) -> Any:
        agent = raw_request.headers.get("User-Agent", "")
        self.recorded.append((raw_request.method, raw_request.path, dict(raw_request.query), agent))
        return await super().__call__(raw_request)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chart_invocation(objects: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The operator's arguments and environment exactly as the chart renders them (free local ports)."""
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = []
    for arg in container["args"]:
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={free_port()}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        args.append(arg)
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    env["POD_ID"] = "qfleet-operator-0"  # the downward API's metadata.name
    env["QFLEET_BENCHMARK_SECONDS"] = "1"  # keep the tiny pipelines short
    return args, env


def operator_calls(cluster: Cluster) -> list[Call]:
    emulator: RecordingEmulator = cluster.emulator  # type: ignore[assignment]
    calls = []
    for method, path, query, agent in emulator.recorded:
        if agent.startswith("kmock/"):
            continue  # the test cluster's own controllers and set-up
        assert agent.startswith(("kopf/", "qfleet-operator")), f"unexpected client {agent!r}"
        call = call_from_request(method, path, query)
        if call is not None:
            calls.append(call)
    return calls


def seen(cluster: Cluster, verb: str, resource: str) -> bool:
    return any(c.verb == verb and c.resource == resource for c in operator_calls(cluster))


def new_key_job(cluster: Cluster, name: str, old_key: str | None) -> bool:
    """The model's status holds a pipeline key other than ``old_key``, and the avx2 Job of that key
    exists."""
    key = ((cluster.model(NAMESPACE, name) or {}).get("status") or {}).get("pipelineKey")
    return (
        key not in (None, old_key)
        and cluster.get(JOBS, NAMESPACE, names.job_name(name, "avx2", key)) is not None
    )


def settled(cluster: Cluster, name: str) -> bool:
    """Every target served by the current pipeline (Degraded: at maxReplicas, which is fine here)."""
    status = (cluster.model(NAMESPACE, name) or {}).get("status") or {}
    progressing = [c for c in status.get("conditions") or [] if c["type"] == "Progressing"]
    return (
        status.get("phase") in ("Ready", "Degraded")
        and bool(progressing)
        and progressing[0]["status"] == "False"
    )


async def exercise_the_operator(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    """Install what the chart installs for peering, run the operator as the chart does, use it."""
    for crd in find(objects, "CustomResourceDefinition"):
        cluster.emulator.install_crd(crd)
    for peering in [*find(objects, "ClusterKopfPeering"), *find(objects, "KopfPeering")]:
        group_version, plural = peering["apiVersion"], peering["kind"].lower() + "s"
        namespace = peering["metadata"].get("namespace")
        where = f"/namespaces/{namespace}" if namespace else ""
        await cluster.create(f"/apis/{group_version}{where}/{plural}", peering)
    await cluster.add_node("avx512-1", "avx512")
    await cluster.add_node("avx2-1", "avx2")

    args, env = chart_invocation(objects)
    process = await cluster.start_operator(*args, env=env)
    name = "rbac"
    path = cluster.model_path(NAMESPACE, name)
    await cluster.apply_model(model_body(name, targets=("avx512", "avx2"), cameras=1))
    await cluster.wait_for("served", lambda: settled(cluster, name), timeout=120)
    # Cameras change (1000 -> 20000 faces/s): the Deployments are patched.
    await cluster.patch(path, {"spec": {"demand": {"cameras": 20}}})
    await cluster.wait_for("a Deployment patched", lambda: seen(cluster, "patch", "deployments"), timeout=30)
    # The Service's annotations change (say, a load balancer's settings): the Service is patched.
    await cluster.patch(path, {"spec": {"serving": {"service": {"annotations": {"lb": "internal"}}}}})
    await cluster.wait_for("the Service patched", lambda: seen(cluster, "patch", "services"), timeout=30)
    # One tier fewer: its Deployment is deleted.
    await cluster.patch(path, {"spec": {"targets": [{"isa": "avx2"}]}})
    await cluster.wait_for("a Deployment deleted", lambda: seen(cluster, "delete", "deployments"), timeout=60)
    # Quantization change: a new pipeline key, a new Job, the obsolete ones deleted at once.
    old_key = ((cluster.model(NAMESPACE, name) or {}).get("status") or {}).get("pipelineKey")
    await cluster.patch(path, {"spec": {"quantization": {"subsetSize": 6}}})
    await cluster.wait_for("an obsolete Job deleted", lambda: seen(cluster, "delete", "jobs"), timeout=60)
    # The same reconcile creates the new key's Job after the deletions and then writes the key to
    # the status: await both, or the stop below may cancel that reconcile in between (a stopping
    # operator leaves the rest to the next leader).
    await cluster.wait_for("the new key's Job", lambda: new_key_job(cluster, name, old_key), timeout=30)
    await cluster.wait_for("an event posted", lambda: seen(cluster, "create", "events"), timeout=30)
    # A clean stop: kopf removes its keep-alive from the peering object.
    await cluster.stop_operator(process)
    assert cluster.objects(JOBS, NAMESPACE) and cluster.objects(DEPLOYMENTS, NAMESPACE)


async def recorded_calls(
    values: dict[str, Any], root: Path, datasets: Path
) -> tuple[list[Call], list[dict[str, Any]]]:
    objects = render(values)
    async with model_cluster(root, datasets, RecordingEmulator) as cluster:
        try:
            await exercise_the_operator(cluster, objects)
        except BaseException:
            print(cluster.diagnostics())
            raise
        # The operator's LISTs and kopf's come in chunks: never a whole collection at once.
        assert not cluster.emulator.whole_lists, (
            f"LISTs without a limit: {dict(cluster.emulator.whole_lists)}"
        )
        return operator_calls(cluster), objects


def assert_exact_privileges(calls: list[Call], objects: list[dict[str, Any]]) -> None:
    grants = operator_grants(objects)
    refused = sorted({str(call) for call in calls if not allowed(call, grants)})
    assert not refused, "the operator made calls its roles do not allow:\n" + "\n".join(refused)
    unused = sorted(
        f"{g.verb} {g.resource}.{g.group or 'core'} ({g.namespace or 'cluster role'})"
        for g in grants
        if not used(g, calls)
    )
    assert not unused, "the roles grant permissions the operator never used:\n" + "\n".join(unused)
    # The run covered what kopf's registry says the handlers need.
    observed = {(c.group, c.resource, c.verb) for c in calls}
    assert kopf_registry_calls() <= observed


async def test_cluster_wide_install_grants_exactly_what_the_operator_uses(
    tmp_path: Path, datasets: Path
) -> None:
    calls, objects = await recorded_calls(CLUSTER_WIDE, tmp_path, datasets)
    assert_exact_privileges(calls, objects)
    assert any(c.resource == "clusterkopfpeerings" and c.verb == "patch" for c in calls)
    # Serving every namespace, kopf watches cluster-wide: no request names a namespace for watches.
    assert all(c.namespace is None for c in calls if c.verb in ("list", "watch"))


async def test_namespaced_install_grants_exactly_what_the_operator_uses(
    tmp_path: Path, datasets: Path
) -> None:
    calls, objects = await recorded_calls(NAMESPACED, tmp_path, datasets)
    assert_exact_privileges(calls, objects)
    grants = operator_grants(objects)
    # Namespaced resources only through the Role of the watched namespace; nodes cluster-wide.
    cluster_wide = {(g.group, g.resource) for g in grants if g.namespace is None}
    assert ("", "nodes") in cluster_wide
    assert not cluster_wide & {
        ("batch", "jobs"),
        ("", "pods"),
        ("apps", "deployments"),
        ("qfleet.dev", "quantizedmodels"),
    }
    assert any(c.resource == "kopfpeerings" and c.namespace == NAMESPACE and c.verb == "patch" for c in calls)


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(recorded_calls(CLUSTER_WIDE, Path("/tmp/rbac"), Path("/tmp/rbac-data")))
