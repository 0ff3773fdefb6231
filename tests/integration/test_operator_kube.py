"""The operator's API client against the emulated API server: 409 is "already there", 404 is
"gone", server errors are transient, credentials come from a kubeconfig."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qfleet.operator.kube import ApiError, KubeApi, load_credentials, namespaced
from tests.support.cluster import DEPLOYMENTS, Cluster, running_cluster

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "faces"},
    "spec": {"replicas": 1},
}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture
async def api(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApi]:
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig()))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client = KubeApi(load_credentials())
    yield client
    await client.close()


async def test_credentials_come_from_the_kubeconfig(api: KubeApi, cluster: Cluster) -> None:
    assert api.credentials.server == str(cluster.server.url).rstrip("/")
    assert api.credentials.token == "test-token"


async def test_create_twice_is_a_no_op(api: KubeApi, cluster: Cluster) -> None:
    path = namespaced("apps/v1", "deployments", "faces")
    assert path == "/apis/apps/v1/namespaces/faces/deployments"
    assert await api.create(path, DEPLOYMENT) is True
    assert await api.create(path, DEPLOYMENT) is False  # 409: already there
    assert cluster.created(DEPLOYMENTS) == ["web", "web"]


async def test_patch_get_delete_and_gone_objects(api: KubeApi, cluster: Cluster) -> None:
    collection = namespaced("apps/v1", "deployments", "faces")
    path = namespaced("apps/v1", "deployments", "faces", "web")
    await api.create(collection, DEPLOYMENT)
    patched = await api.merge_patch(path, {"spec": {"replicas": 4}})
    assert patched is not None and patched["spec"]["replicas"] == 4
    fetched = await api.get(path)
    assert fetched is not None and fetched["spec"]["replicas"] == 4
    assert fetched["metadata"]["resourceVersion"]  # stamped by the emulated server
    assert await api.delete(path) is True
    assert await api.get(path) is None
    assert await api.merge_patch(path, {"spec": {"replicas": 1}}) is None
    assert await api.delete(path) is False


async def test_errors_say_whether_to_retry(cluster: Cluster) -> None:
    from qfleet.operator.kube import Credentials

    unreachable = KubeApi(Credentials(server="http://127.0.0.1:9"), timeout=2)
    with pytest.raises(ApiError) as caught:
        await unreachable.get("/api/v1/namespaces/x/pods/y")
    await unreachable.close()
    assert caught.value.status == 0 and caught.value.transient
    assert ApiError(503, "ServiceUnavailable", "").transient and ApiError(429, "TooMany", "").transient
    assert not ApiError(403, "Forbidden", "").transient and not ApiError(422, "Invalid", "").transient
