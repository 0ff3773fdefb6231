"""The reconciler's glue: triggers fold into one pass, the plan is applied once, 409 is fine."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from qfleet.fleet.nodes import node_info
from qfleet.fleet.planner import Event
from qfleet.isa import NFD_PREFIX
from qfleet.operator.applier import NODES_KEY, Caches, Reconciler
from qfleet.operator.metrics import Metrics
from qfleet.operator.settings import OperatorSettings

MODEL: dict[str, Any] = {
    "apiVersion": "qfleet.dev/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1},
    "spec": {
        "source": {"format": "onnx", "uri": "pvc://models/m.onnx"},
        "quantization": {"calibration": "pvc://data/calib"},
        "validation": {"lfw": "pvc://data/lfw.bin"},
        "targets": [{"isa": "avx2"}],
        "artifacts": {"uri": "pvc://models/out"},
    },
}


class FakeApi:
    """Records the requests; objects live in a dict by path."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {
            "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels/m": copy.deepcopy(MODEL)
        }
        self.calls: list[tuple[str, str]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET", path))
        await asyncio.sleep(0.01)
        found = self.objects.get(path)
        return copy.deepcopy(found) if found else None

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        self.calls.append(("POST", path))
        key = f"{path}/{body['metadata']['name']}"
        if key in self.objects:
            return False
        self.objects[key] = body
        return True

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("PATCH", path))
        target = self.objects.get(path.removesuffix("/status"))
        if target is None:
            return None
        target.update(copy.deepcopy(patch))
        return target

    async def delete(self, path: str) -> bool:
        self.calls.append(("DELETE", path))
        return self.objects.pop(path, None) is not None

    async def close(self) -> None:
        pass


def node(name: str) -> Any:
    return node_info(
        {
            "metadata": {"name": name, "labels": {NFD_PREFIX + "AVX2": "true"}},
            "status": {"allocatable": {"cpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )


def make(api: FakeApi, *, nodes: list[Any]) -> tuple[Reconciler, list[Event]]:
    events: list[Event] = []
    reconciler = Reconciler(
        api,  # type: ignore[arg-type]
        OperatorSettings(),
        Metrics(),
        post_event=lambda model, event: events.append(event),
        clock=lambda: "2030-01-01T00:00:00Z",
    )
    reconciler.caches = Caches(
        models={("ns", "m"): [True]}, jobs={}, pods={}, deployments={}, nodes={NODES_KEY: nodes}
    )
    return reconciler, events


async def test_a_burst_of_triggers_is_one_reconcile() -> None:
    api = FakeApi()
    reconciler, events = make(api, nodes=[node("n1")])
    for _ in range(10):
        reconciler.trigger("ns", "m", delay=0.01)
    await asyncio.sleep(0.3)
    assert [method for method, _ in api.calls].count("GET") == 1
    jobs = [path for method, path in api.calls if method == "POST"]
    assert jobs == ["/apis/batch/v1/namespaces/ns/jobs"]
    status = api.objects["/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels/m"]["status"]
    assert status["phase"] == "Quantizing"
    assert [e.reason for e in events] == ["QuantizationStarted", "PhaseChanged"]
    await reconciler.close()


async def test_running_it_again_changes_nothing_and_409_is_not_an_error() -> None:
    api = FakeApi()
    reconciler, events = make(api, nodes=[node("n1")])
    await reconciler.reconcile("ns", "m")
    events.clear()
    before = len(api.calls)
    # The Jobs index has not caught up yet: the Job is created again, the API answers 409.
    await reconciler.reconcile("ns", "m")
    calls = api.calls[before:]
    assert [method for method, _ in calls] == ["GET", "POST"]  # no status patch: nothing changed
    assert events == []  # and no second "started" event
    await reconciler.close()


async def test_a_new_node_tier_revisits_every_model() -> None:
    api = FakeApi()
    nodes: list[Any] = []
    reconciler, _ = make(api, nodes=nodes)
    await reconciler.reconcile("ns", "m")
    assert not [path for method, path in api.calls if method == "POST"]  # no node, no Job
    nodes.append(node("n1"))
    reconciler.nodes_changed(delay=0.01)
    await asyncio.sleep(0.3)
    assert [path for method, path in api.calls if method == "POST"] == ["/apis/batch/v1/namespaces/ns/jobs"]
    await reconciler.close()


async def test_a_deleted_model_is_left_alone() -> None:
    api = FakeApi()
    api.objects.clear()
    reconciler, events = make(api, nodes=[node("n1")])
    assert await reconciler.reconcile("ns", "m") is None
    assert [method for method, _ in api.calls] == ["GET"] and events == []
    await reconciler.close()
