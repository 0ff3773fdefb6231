"""The test cluster's API emulator at scale: its store keeps only current objects (no past
versions, no deleted objects), indexed by resource, and still answers as an API server does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import EVENTS, JOBS, PODS, Cluster, running_cluster

NAMESPACE = "store"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cluster:
        await cluster.add_namespace(NAMESPACE)
        yield cluster


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {}}


async def test_a_patched_object_keeps_only_its_current_version(cluster: Cluster) -> None:
    created = await cluster.create(PODS_PATH, pod("p", app="a"))
    for index in range(5):
        await cluster.patch(f"{PODS_PATH}/p", {"metadata": {"labels": {"step": str(index)}}})
    stored = cluster.emulator.objects[PODS, NAMESPACE, "p"]
    assert len(stored.history) == 1
    assert stored["metadata"]["labels"] == {"app": "a", "step": "4"}
    assert int(stored["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


async def test_a_patch_leaves_what_was_read_before_unchanged(cluster: Cluster) -> None:
    """Patches are copy-on-write: an object read (or streamed) earlier keeps its content."""
    await cluster.create(PODS_PATH, pod("p", app="a"))
    (before,) = cluster.emulator.live(PODS, NAMESPACE)
    snapshot = json.dumps(before, sort_keys=True)
    await cluster.patch(f"{PODS_PATH}/p", {"metadata": {"labels": {"app": "b"}}, "spec": {"nodeName": "n"}})
    await cluster.patch(f"{PODS_PATH}/p", [{"op": "replace", "path": "/metadata/labels/app", "value": "c"}])
    assert json.dumps(before, sort_keys=True) == snapshot
    assert cluster.get(PODS, NAMESPACE, "p")["metadata"]["labels"] == {"app": "c"}  # type: ignore[index]


async def test_a_deleted_object_is_forgotten_and_its_name_reusable(cluster: Cluster) -> None:
    first = await cluster.create(PODS_PATH, pod("p"))
    deleted = await cluster.request("DELETE", f"{PODS_PATH}/p")
    assert deleted["metadata"]["uid"] == first["metadata"]["uid"]  # the DELETE answers with its last state
    assert (PODS, NAMESPACE, "p") not in cluster.emulator.objects
    with pytest.raises(RuntimeError, match="404"):
        await cluster.request("GET", f"{PODS_PATH}/p")
    second = await cluster.create(PODS_PATH, pod("p"))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert [item["metadata"]["uid"] for item in cluster.emulator.live(PODS)] == [second["metadata"]["uid"]]


async def test_lists_and_watches_read_their_own_resource(cluster: Cluster) -> None:
    await cluster.create(PODS_PATH, pod("p1"))
    await cluster.create(PODS_PATH, pod("p2"))
    await cluster.create(
        f"/api/v1/namespaces/{NAMESPACE}/events",
        {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"name": "p1"}},
    )
    await cluster.request("DELETE", f"{PODS_PATH}/p2")
    listed = await cluster.request("GET", PODS_PATH)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["p1"]
    assert [item["metadata"]["name"] for item in cluster.emulator.live(EVENTS, NAMESPACE)] == ["e"]

    # A watch from the LIST's revision streams what changed after it, and only that.
    revision = listed["metadata"]["resourceVersion"]
    url = f"{PODS_PATH}?watch=true&resourceVersion={revision}"
    async with cluster.server.client.get(url) as response:
        await cluster.patch(f"{PODS_PATH}/p1", {"metadata": {"labels": {"x": "1"}}})
        line = await asyncio.wait_for(response.content.readline(), 5)
    event = json.loads(line)
    assert (event["type"], event["object"]["metadata"]["labels"]) == ("MODIFIED", {"x": "1"})


async def test_a_list_in_chunks_pages_through_every_object_at_one_revision(cluster: Cluster) -> None:
    """``limit`` and ``continue`` as the API server serves them (kopf and the operator list in
    chunks): every object once, in key order, each page at the first page's revision."""
    for index in range(7):
        await cluster.create(PODS_PATH, pod(f"p{index}"))
    first = await cluster.request("GET", f"{PODS_PATH}?limit=3")
    revision = first["metadata"]["resourceVersion"]
    await cluster.request("DELETE", f"{PODS_PATH}/p5")  # between pages: listed as it was then
    pages, token = [first], first["metadata"]["continue"]
    while token:
        pages.append(await cluster.request("GET", f"{PODS_PATH}?limit=3&continue={token}"))
        token = pages[-1]["metadata"].get("continue")
    names = [[item["metadata"]["name"] for item in page["items"]] for page in pages]
    assert names == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert {page["metadata"]["resourceVersion"] for page in pages} == {revision}
    whole = await cluster.request("GET", PODS_PATH)
    assert "continue" not in whole["metadata"] and len(whole["items"]) == 6
    with pytest.raises(RuntimeError, match="410"):  # a token used up (or too old) is refused
        await cluster.request("GET", f"{PODS_PATH}?limit=3&continue={first['metadata']['continue']}")


async def test_a_watch_from_a_version_streams_the_deletions_after_it(cluster: Cluster) -> None:
    """A watch that resumes from a version learns of what was deleted since, as from an API
    server (the store itself forgets deleted objects at once)."""
    await cluster.create(PODS_PATH, pod("kept"))
    await cluster.create(PODS_PATH, pod("gone"))
    revision = (await cluster.request("GET", PODS_PATH))["metadata"]["resourceVersion"]
    await cluster.request("DELETE", f"{PODS_PATH}/gone")
    await cluster.patch(f"{PODS_PATH}/kept", {"metadata": {"labels": {"x": "1"}}})
    url = f"{PODS_PATH}?watch=true&resourceVersion={revision}"
    async with cluster.server.client.get(url) as response:
        lines = [await asyncio.wait_for(response.content.readline(), 5) for _ in range(2)]
    events = [(event["type"], event["object"]["metadata"]["name"]) for event in map(json.loads, lines)]
    assert events == [("DELETED", "gone"), ("MODIFIED", "kept")]  # in the order they happened


async def test_a_write_while_a_watch_streams_its_first_objects_is_streamed_too(cluster: Cluster) -> None:
    """The watch's place in the event stream is taken with the objects it starts from: a write
    made while those are still being sent (the client reads slowly) comes after them, not lost."""
    padding = "x" * 64 * 1024  # enough objects to fill the connection's buffers: the server waits
    for index in range(200):
        await cluster.create(PODS_PATH, {**pod(f"p{index:03}"), "spec": {"padding": padding}})
    async with cluster.server.client.get(f"{PODS_PATH}?watch=true") as response:
        first = json.loads(await asyncio.wait_for(response.content.readline(), 5))
        await cluster.patch(f"{PODS_PATH}/p000", {"metadata": {"labels": {"late": "1"}}})
        seen = [first]
        while (seen[-1]["object"]["metadata"].get("labels") or {}).get("late") != "1":
            seen.append(json.loads(await asyncio.wait_for(response.content.readline(), 5)))
    assert [event["type"] for event in seen[:200]] == ["ADDED"] * 200
    assert (seen[-1]["type"], seen[-1]["object"]["metadata"]["name"], len(seen)) == ("MODIFIED", "p000", 201)


async def test_the_garbage_collector_deletes_what_a_deleted_owner_owned(cluster: Cluster) -> None:
    cluster.garbage_collector = True
    owners = {}
    for name in ("kept", "gone"):
        owners[name] = await cluster.create(
            f"/api/v1/namespaces/{NAMESPACE}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}},
        )
        reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": name,
                     "uid": owners[name]["metadata"]["uid"], "controller": True}  # fmt: skip
        job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": []}}},
               "metadata": {"name": f"job-{name}", "ownerReferences": [reference]}}  # fmt: skip
        await cluster.create(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", job)
    await cluster.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/gone")
    await cluster.wait_for("the orphan Job deleted", lambda: cluster.get(JOBS, NAMESPACE, "job-gone") is None)
    await asyncio.sleep(0.3)  # a few more passes
    assert cluster.get(JOBS, NAMESPACE, "job-kept") is not None
