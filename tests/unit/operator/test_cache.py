"""The operator's own caches: kept from events, filled by a LIST at start-up, echo-proof."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from qfleet.fleet import names
from qfleet.isa import NFD_PREFIX
from qfleet.operator.cache import NODES_KEY, OWNED, SERVER_PODS, ClusterCache, Index


def child(
    kind: str, name: str, model: str, *, labels: dict[str, str] | None = None, **status: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "generation": 1,
            "labels": dict(labels if labels is not None else OWNED),
            "annotations": {names.ANNOTATION_MODEL_NAME: model},
        },
        "spec": {"replicas": 2},
        "status": status,
    }


def node(name: str, *, ready: str = "True") -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {NFD_PREFIX + "AVX2": "true"}},
        "status": {"allocatable": {"cpu": "8"}, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_an_index_groups_objects_under_their_model_and_forgets_deleted_ones() -> None:
    index = Index()
    assert index.put(("ns", "a"), ("ns", "m"), 1) is True
    assert index.put(("ns", "b"), ("ns", "m"), 2) is True
    assert index.put(("ns", "b"), ("ns", "m"), 2) is False  # the same again: no change
    assert sorted(index[("ns", "m")]) == [1, 2] and index.get(("ns", "x"), ()) == ()
    assert index.remove(("ns", "a")) == ("ns", "m")
    assert index.remove(("ns", "b")) == ("ns", "m")
    assert ("ns", "m") not in index and len(index) == 0 and index.objects() == 0


def test_an_object_that_changes_its_key_moves() -> None:
    index = Index()
    index.put(("ns", "a"), ("ns", "m1"), 1)
    assert index.put(("ns", "a"), ("ns", "m2"), 1) is True
    assert list(index) == [("ns", "m2")]


def test_events_report_the_model_whose_view_changed_and_only_then() -> None:
    cache = ClusterCache()
    deployment = child("Deployment", "m-avx2", "m")
    assert cache.observe("deployments", None, deployment) == ("ns", "m")
    assert cache.observe("deployments", "MODIFIED", deployment) is None  # nothing new
    deployment["status"] = {"readyReplicas": 2}
    assert cache.observe("deployments", "MODIFIED", deployment) == ("ns", "m")
    assert cache["deployments"][("ns", "m")][0]["spec"] == {"replicas": 2}
    assert cache.observe("deployments", "DELETED", deployment) == ("ns", "m")
    assert ("ns", "m") not in cache["deployments"]


def test_objects_qfleet_does_not_own_are_not_cached() -> None:
    cache = ClusterCache()
    assert cache.observe("services", None, child("Service", "other", "m", labels={})) is None
    assert len(cache["services"]) == 0


def test_server_pods_keep_only_what_the_planner_reads() -> None:
    cache = ClusterCache()
    pod = child("Pod", "m-avx2-1", "m", labels=SERVER_PODS, phase="Running", podIP="10.0.0.1")
    pod["status"]["containerStatuses"] = [{"ready": True, "restartCount": 0, "state": {}, "image": "x"}]
    cache.observe("server_pods", None, pod)
    (cached,) = cache["server_pods"][("ns", "m")]
    assert cached["status"] == {
        "phase": "Running",
        "conditions": [],
        "initContainerStatuses": [],
        "containerStatuses": [{"ready": True, "restartCount": 0, "state": {}}],
    }


def test_nodes_are_one_key_and_an_unusable_node_leaves_it() -> None:
    cache = ClusterCache()
    assert cache.observe("nodes", None, node("n1")) == NODES_KEY
    assert cache.observe("nodes", None, node("n1")) is None
    assert len(cache["nodes"][NODES_KEY]) == 1
    assert cache.observe("nodes", "MODIFIED", node("n1", ready="False")) == NODES_KEY
    assert NODES_KEY not in cache["nodes"]


def test_the_operators_own_writes_make_the_watch_echo_a_no_op() -> None:
    cache = ClusterCache()
    answer = child("Deployment", "m-avx2", "m")
    cache.written(answer)
    assert cache.observe("deployments", "ADDED", answer) is None  # no second reconcile
    cache.written({"kind": "QuantizedModel", "metadata": {"name": "m", "namespace": "ns"}})  # ignored


def test_what_only_the_start_up_list_saw_is_dropped_at_the_first_resync() -> None:
    cache = ClusterCache()
    cache.observe("deployments", None, child("Deployment", "gone-avx2", "gone"), confirmed=False)
    cache.observe("deployments", None, child("Deployment", "kept-avx2", "kept"), confirmed=False)
    cache.observe("deployments", None, child("Deployment", "kept-avx2", "kept"))  # kopf's event
    assert cache.drop_unconfirmed() == {("ns", "gone")}
    assert list(cache["deployments"]) == [("ns", "kept")]


class ListingApi:
    def __init__(self, collections: dict[str, list[dict[str, Any]]], *, version: int | None = None) -> None:
        self.collections = collections
        self.paths: list[str] = []
        self.version = version  #: of every LIST (None: the LIST's number)

    async def list_pages(self, path: str) -> AsyncIterator[tuple[list[dict[str, Any]], str | None]]:
        """One item per page (the list's version comes with the last one, as the server sends it)."""
        self.paths.append(path)
        items = self.collections.get(path, [])
        for item in items[:-1]:
            yield [item], None
        yield items[-1:], str(self.version or len(self.paths))


async def test_the_start_up_snapshot_lists_each_collection_once_per_namespace() -> None:
    api = ListingApi(
        {
            "/apis/apps/v1/namespaces/a/deployments": [child("Deployment", "m-avx2", "m")],
            "/api/v1/namespaces/b/pods": [child("Pod", "m-avx2-1", "m", labels=SERVER_PODS)],
            "/api/v1/nodes": [node("n1")],
        }
    )
    cache = ClusterCache()
    assert await cache.snapshot(api, ["a", "b"]) == 3  # type: ignore[arg-type]
    assert api.paths.count("/api/v1/namespaces/a/pods") == 1  # both pod kinds, one LIST
    assert api.paths.count("/api/v1/nodes") == 1  # nodes are cluster-scoped
    assert len(api.paths) == 6 * 2 + 1  # six namespaced collections, and the nodes
    assert ("ns", "m") in cache["deployments"] and ("ns", "m") in cache["server_pods"]
    # Where a watch of the models picks up: each namespace's list of them, at its version.
    models = f"/apis/{names.API_VERSION}/namespaces/a/{names.PLURAL}"
    assert cache.models_listed[models] == str(api.paths.index(models) + 1)
    assert len(cache.models_listed) == 2


def test_a_model_only_listed_at_start_up_is_not_confirmed_until_kopf_reports_it() -> None:
    cache = ClusterCache()
    model = {"kind": names.KIND, "metadata": {"name": "m", "namespace": "ns"}}
    cache.observe("models", None, model, confirmed=False)  # a standby's start-up LIST
    assert not cache["models"].confirmed(("ns", "m"))
    cache.observe("models", None, model)  # kopf lists it: this replica leads
    assert cache["models"].confirmed(("ns", "m"))


def test_the_answer_to_an_own_write_never_puts_back_an_older_object() -> None:
    """The answer to a PATCH can arrive after the watch event of a later change (the Deployment
    became ready meanwhile): the older object must not replace the newer one."""
    cache = ClusterCache()
    written = child("Deployment", "m-avx2", "m", readyReplicas=0)
    written["metadata"]["resourceVersion"] = "41"
    ready = child("Deployment", "m-avx2", "m", readyReplicas=1)
    ready["metadata"]["resourceVersion"] = "42"
    assert cache.observe("deployments", "MODIFIED", ready) == ("ns", "m")
    cache.written(written)
    (cached,) = cache.indices["deployments"][("ns", "m")]
    assert cached["status"]["readyReplicas"] == 1
    # A later version still replaces it, and a deletion forgets the version with the object.
    written["metadata"]["resourceVersion"] = "43"
    cache.written(written)
    (cached,) = cache.indices["deployments"][("ns", "m")]
    assert cached["status"]["readyReplicas"] == 0
    assert cache.observe("deployments", "DELETED", written) == ("ns", "m")
    assert cache.observe("deployments", "ADDED", ready) == ("ns", "m")


def versioned(body: dict[str, Any], version: int) -> dict[str, Any]:
    body["metadata"]["resourceVersion"] = str(version)
    return body


async def test_a_refreshing_list_forgets_what_is_gone_but_keeps_what_came_after_it() -> None:
    """A standby's caches are as old as its pause: the LIST on taking over replaces them, except
    an object that a watch event cached at a version past the LIST (created after it)."""
    deployments = "/apis/apps/v1/namespaces/ns/deployments"
    cache = ClusterCache()
    cache.observe("deployments", None, versioned(child("Deployment", "gone-avx2", "gone"), 5))
    cache.observe("deployments", "ADDED", versioned(child("Deployment", "new-avx2", "new"), 99))
    kept = versioned(child("Deployment", "kept-avx2", "kept", readyReplicas=0), 6)
    cache.observe("deployments", None, kept)
    listed = versioned(child("Deployment", "kept-avx2", "kept", readyReplicas=2), 7)
    api = ListingApi({deployments: [listed]}, version=50)
    await cache.snapshot(api, ["ns"], refresh=True)  # type: ignore[arg-type]
    assert sorted(cache["deployments"]) == [("ns", "kept"), ("ns", "new")]
    (cached,) = cache["deployments"][("ns", "kept")]
    assert cached["status"]["readyReplicas"] == 2
    # A plain (start-up) snapshot forgets nothing.
    cache.observe("deployments", None, versioned(child("Deployment", "gone-avx2", "gone"), 5))
    await cache.snapshot(api, ["ns"])  # type: ignore[arg-type]
    assert ("ns", "gone") in cache["deployments"]


async def test_the_list_tells_which_models_changed_since_the_operator_reconciled_them() -> None:
    def model(name: str, generation: int, observed: int | None) -> dict[str, Any]:
        status = {} if observed is None else {"observedGeneration": observed}
        return {"metadata": {"name": name, "namespace": "ns", "generation": generation}, "status": status}

    models = f"/apis/{names.API_VERSION}/namespaces/ns/{names.PLURAL}"
    api = ListingApi({models: [model("changed", 3, 2), model("handled", 3, 3), model("old", 3, None)]})
    cache = ClusterCache()
    assert cache.listed_seconds_ago() == float("inf")
    await cache.snapshot(api, ["ns"])  # type: ignore[arg-type]
    assert cache.models_changed_since_reconciled == {("ns", "changed")}
    assert sorted(cache.listed_models()) == [("ns", "changed"), ("ns", "handled"), ("ns", "old")]
    assert cache.listed_seconds_ago() < 60
