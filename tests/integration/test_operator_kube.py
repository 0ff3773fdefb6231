"""The operator's API client against the emulated API server: 409 is "already there", 404 is
"gone", server errors are transient, credentials come from a kubeconfig."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qfleet.operator.kube import ApiError, Credentials, KubeApi, load_credentials, namespaced
from tests.support.cluster import DEPLOYMENTS, Cluster, Fault, running_cluster

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
    unreachable = KubeApi(Credentials(server="http://127.0.0.1:9"), timeout=2)
    with pytest.raises(ApiError) as caught:
        await unreachable.get("/api/v1/namespaces/x/pods/y")
    await unreachable.close()
    assert caught.value.status == 0 and caught.value.transient
    assert ApiError(503, "ServiceUnavailable", "").transient and ApiError(429, "TooMany", "").transient
    assert not ApiError(403, "Forbidden", "").transient and not ApiError(422, "Invalid", "").transient


async def test_a_rotated_token_is_read_again_on_401(tmp_path: Path) -> None:
    """Bound service-account tokens expire: after the kubelet rewrote the token file, a 401 makes
    the client read its credentials again and retry once; with an unchanged token the 401 stands."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    accepted = {"token": "first"}
    seen: list[str] = []

    async def namespace(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {accepted['token']}":
            body = {"kind": "Status", "code": 401, "reason": "Unauthorized", "message": "token has expired"}
            return web.json_response(body, status=401)
        return web.json_response({"kind": "Namespace", "metadata": {"name": "faces"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/faces", namespace)
    server = TestServer(app)
    await server.start_server()
    token_file = tmp_path / "token"
    token_file.write_text("first")

    def read_credentials() -> Credentials:  # what load_credentials does with a projected token
        return Credentials(server=str(server.make_url("")).rstrip("/"), token=token_file.read_text())

    api = KubeApi(read_credentials(), reload=read_credentials)
    try:
        assert (await api.get("/api/v1/namespaces/faces") or {})["metadata"]["name"] == "faces"
        accepted["token"] = "second"  # the API server expired the first token
        with pytest.raises(ApiError) as refused:  # the file still holds it: nothing new to try
            await api.get("/api/v1/namespaces/faces")
        assert refused.value.status == 401 and "expired" in refused.value.message
        token_file.write_text("second")  # the kubelet rotated the token
        assert (await api.get("/api/v1/namespaces/faces") or {})["metadata"]["name"] == "faces"
        assert seen == ["Bearer first", "Bearer first", "Bearer first", "Bearer second"]
        # Requests refused together: the first renews, the others try the renewed token too.
        accepted["token"] = "third"
        token_file.write_text("third")
        answers = await asyncio.gather(*(api.get("/api/v1/namespaces/faces") for _ in range(3)))
        assert [(answer or {})["metadata"]["name"] for answer in answers] == ["faces"] * 3
        assert seen[4:] == ["Bearer second"] * 3 + ["Bearer third"] * 3
    finally:
        await api.close()
        await server.close()


async def test_a_watch_from_a_list_streams_only_what_changed_after_it(api: KubeApi, cluster: Cluster) -> None:
    collection = namespaced("apps/v1", "deployments", "faces")
    await api.create(collection, DEPLOYMENT)
    items, version = await api.list_collection(collection)
    assert [item["metadata"]["name"] for item in items] == ["web"] and version is not None
    await api.merge_patch(f"{collection}/web", {"spec": {"replicas": 3}})
    stream = api.watch(collection, version).__aiter__()
    event = await asyncio.wait_for(stream.__anext__(), timeout=10)
    assert event["object"]["spec"]["replicas"] == 3  # the change, not the listed object again
    await stream.aclose()


async def test_a_watch_open_when_the_token_rotates_goes_on_streaming(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server checked a watch's token when the watch began: a rotation under it (the old
    token refused from then on, a write renewing the client's credentials) must not cut it. The
    old session used to be closed at once, and the watch then waited, silent, until its read
    timeout (minutes): every change meanwhile unseen."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig()))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = KubeApi(load_credentials(), reload=load_credentials)
    collection = namespaced("apps/v1", "deployments", "faces")
    try:
        await api.create(collection, DEPLOYMENT)
        _, version = await api.list_collection(collection)
        assert version is not None
        stream = api.watch(collection, version).__aiter__()
        first = asyncio.ensure_future(stream.__anext__())  # the watch request goes out now
        await cluster.wait_for("the watch to open", lambda: cluster.emulator.tokens["test-token"] >= 3)
        cluster.write_kubeconfig(token="rotated-token")
        expired = cluster.emulator.inject(Fault(".", status=401, token="test-token"))
        await api.merge_patch(f"{collection}/web", {"spec": {"replicas": 2}})  # renews, after a 401
        assert expired.hits == 1 and api.credentials.token == "rotated-token"
        await asyncio.wait_for(first, timeout=10)
        await api.merge_patch(f"{collection}/web", {"spec": {"replicas": 3}})

        async def scaled_to_three() -> None:  # the emulated controller's status writes come too
            async for event in stream:
                if event["object"]["spec"]["replicas"] == 3:
                    return

        await asyncio.wait_for(scaled_to_three(), timeout=10)  # the open watch still streams
        await stream.aclose()
        assert expired.hits == 1  # nothing new went out with the old token
    finally:
        await api.close()


async def test_a_list_comes_page_by_page_with_its_version_on_the_last(api: KubeApi, cluster: Cluster) -> None:
    collection = namespaced("apps/v1", "deployments", "faces")
    for index in range(5):
        await api.create(
            collection, {**DEPLOYMENT, "metadata": {"name": f"web-{index}", "namespace": "faces"}}
        )
    pages = [page async for page in api.list_pages(collection, page=2)]
    assert [len(items) for items, _ in pages] == [2, 2, 1]
    assert [version is None for _, version in pages] == [True, True, False]
    items, version = await api.list_collection(collection, page=2)
    assert sorted(item["metadata"]["name"] for item in items) == [f"web-{index}" for index in range(5)]
    assert version is not None  # the whole list, from its pages, with the last one's version
