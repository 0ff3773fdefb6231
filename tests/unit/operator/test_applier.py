"""The reconciler's glue: triggers fold into one pass, the plan is applied once, 409 is fine."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from qfleet.fleet import names
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
    created = [path for method, path in api.calls if method == "POST"]
    # The Job, and the model's Service (its address exists before anything serves).
    assert created == ["/apis/batch/v1/namespaces/ns/jobs", "/api/v1/namespaces/ns/services"]
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
    calls = [(method, path) for method, path in api.calls[before:] if "/services" not in path]
    assert [method for method, _ in calls] == ["GET", "POST"]  # no status patch: nothing changed
    assert events == []  # and no second "started" event
    await reconciler.close()


async def test_a_new_node_tier_revisits_every_model() -> None:
    api = FakeApi()
    nodes: list[Any] = []
    reconciler, _ = make(api, nodes=nodes)
    await reconciler.reconcile("ns", "m")
    # No node, no Job (the Service is there at once).
    assert not [path for method, path in api.calls if method == "POST" and "/jobs" in path]
    nodes.append(node("n1"))
    reconciler.nodes_changed(delay=0.01)
    await asyncio.sleep(0.3)
    created = [path for method, path in api.calls if method == "POST" and "/services" not in path]
    assert created == ["/apis/batch/v1/namespaces/ns/jobs"]
    await reconciler.close()


async def test_a_deleted_model_is_left_alone() -> None:
    api = FakeApi()
    api.objects.clear()
    reconciler, events = make(api, nodes=[node("n1")])
    assert await reconciler.reconcile("ns", "m") is None
    assert [method for method, _ in api.calls] == ["GET"] and events == []
    await reconciler.close()


# -- the operator-wide cap on running quantization Jobs ----------------------------------------------

MODELS = "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels"
JOBS = "/apis/batch/v1/namespaces/ns/jobs"


def queued_setup(
    api: FakeApi, *, cap: int, created: dict[str, str], running: dict[str, list[str]]
) -> tuple[Reconciler, dict[Any, list[dict[str, Any]]]]:
    """Models named by ``created`` (their creation times) and, per model, unfinished Jobs."""
    api.objects.clear()
    for name, timestamp in created.items():
        body = copy.deepcopy(MODEL)
        body["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=timestamp)
        api.objects[f"{MODELS}/{name}"] = body
    jobs: dict[Any, list[dict[str, Any]]] = {
        ("ns", owner): [{"metadata": {"name": job}, "status": {"active": 1}} for job in names_]
        for owner, names_ in running.items()
    }
    reconciler = Reconciler(
        api,  # type: ignore[arg-type]
        OperatorSettings(max_running_jobs=cap),
        Metrics(),
        post_event=lambda model, event: None,
        clock=lambda: "2030-01-01T00:00:00Z",
    )
    known = {("ns", name): [True] for name in [*created, *running]}
    reconciler.caches = Caches(
        models=known, jobs=jobs, pods={}, deployments={}, nodes={NODES_KEY: [node("n1")]}
    )
    return reconciler, jobs


def created_for(api: FakeApi) -> list[str]:
    """The models whose Jobs were created, in order."""
    return [
        body["metadata"]["annotations"][names.ANNOTATION_MODEL_NAME]
        for path, body in api.objects.items()
        if path.startswith(JOBS + "/")
    ]


async def test_jobs_over_the_cap_wait_and_the_oldest_model_starts_when_a_slot_frees() -> None:
    api = FakeApi()
    reconciler, jobs = queued_setup(
        api,
        cap=1,
        created={"newer": "2030-01-02T00:00:00Z", "older": "2030-01-01T00:00:00Z"},
        running={"gone": ["gone-avx2-1"]},  # a Job of a model that is being deleted
    )
    newer = await reconciler.reconcile("ns", "newer")  # reconciled first, but younger
    older = await reconciler.reconcile("ns", "older")
    assert newer is not None and older is not None
    assert not newer.create_jobs and len(newer.queued_jobs) == 1
    assert not older.create_jobs and len(older.queued_jobs) == 1
    assert reconciler.job_queue.waiting_models() == [("ns", "older"), ("ns", "newer")]
    assert created_for(api) == []
    assert reconciler.metrics.registry.get_sample_value("qfleet_quantization_jobs_queued") == 2
    assert reconciler.metrics.registry.get_sample_value("qfleet_quantization_jobs_running") == 1

    jobs[("ns", "gone")][0]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    reconciler.trigger("ns", "gone", delay=0.01)  # what the Job's event does
    await asyncio.sleep(0.3)
    assert created_for(api) == ["older"]  # the head of the queue, woken; not the newer model
    assert reconciler.job_queue.waiting_models() == [("ns", "newer")]
    assert reconciler.job_queue.free_slots() == 0  # reserved until the Job shows up
    again = await reconciler.reconcile("ns", "newer")
    assert again is not None and again.queued_jobs and created_for(api) == ["older"]
    await reconciler.close()


async def test_a_deleted_model_gives_its_slot_to_the_next_in_line() -> None:
    api = FakeApi()
    reconciler, _ = queued_setup(
        api, cap=1, created={"a": "2030-01-01T00:00:00Z", "b": "2030-01-02T00:00:00Z"}, running={}
    )
    first = await reconciler.reconcile("ns", "a")
    # Just started: b, not planned yet, might be older than a. Nothing starts before it was planned.
    assert first is not None and first.queued_jobs and created_for(api) == []
    b = await reconciler.reconcile("ns", "b")
    assert b is not None and b.queued_jobs
    await asyncio.sleep(0.3)  # b's plan ended the start-up: a, at the head, is woken
    assert created_for(api) == ["a"]
    del api.objects[f"{MODELS}/a"]
    reconciler.forget("ns", "a")
    await asyncio.sleep(0.3)
    assert sorted(created_for(api)) == ["a", "b"]  # (a's Job goes with a: garbage collection)
    assert reconciler.job_queue.waiting_models() == []
    await reconciler.close()


async def test_a_plan_that_no_longer_wants_a_job_leaves_the_queue() -> None:
    api = FakeApi()
    reconciler, _ = queued_setup(
        api, cap=1, created={"a": "2030-01-01T00:00:00Z", "b": "2030-01-02T00:00:00Z"}, running={"x": ["x-1"]}
    )
    await reconciler.reconcile("ns", "a")
    await reconciler.reconcile("ns", "b")
    assert reconciler.job_queue.waiting_models() == [("ns", "a"), ("ns", "b")]
    api.objects[f"{MODELS}/a"]["spec"]["targets"] = [{"isa": "amx_int8"}]  # no such node: no Job
    await reconciler.reconcile("ns", "a")
    assert reconciler.job_queue.waiting_models() == [("ns", "b")]
    await reconciler.close()


async def test_without_a_cap_every_job_starts() -> None:
    api = FakeApi()
    created = {f"m{i}": f"2030-01-0{i + 1}T00:00:00Z" for i in range(3)}
    reconciler, _ = queued_setup(api, cap=0, created=created, running={"x": ["x-1"]})
    for name in created:
        await reconciler.reconcile("ns", name)
    assert sorted(created_for(api)) == ["m0", "m1", "m2"]
    assert reconciler.observed("ns", "m0").admit_job is None
    await reconciler.close()


async def test_a_grace_period_wakes_the_model_once_at_the_earliest_time() -> None:
    api = FakeApi()
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.wake_later(("ns", "m"), 30)
    reconciler.wake_later(("ns", "m"), 0.05)  # earlier: replaces the first
    reconciler.wake_later(("ns", "m"), 10)  # later: the earlier one stands
    (timer,) = reconciler._wakeups.values()
    assert timer.when() - asyncio.get_running_loop().time() < 1
    await asyncio.wait_for(_until(lambda: any(method == "GET" for method, _ in api.calls)), 5)
    assert not reconciler._wakeups
    await reconciler.close()


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.01)


async def test_a_reconcile_remembers_the_model_version_it_planned_for_kopf_update_handler() -> None:
    api = FakeApi()
    path = "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels/m"
    api.objects[path]["metadata"]["resourceVersion"] = "41"
    reconciler, _ = make(api, nodes=[node("n1")])
    assert reconciler.planned_version("ns", "m", "41") == (False, None)  # nothing planned yet
    await reconciler.reconcile("ns", "m")  # as the spec watch's trigger runs it
    assert reconciler.planned_version("ns", "m", "41") == (True, None)  # kopf's copy: done
    assert reconciler.planned_version("ns", "m", "40") == (True, None)  # an older copy too
    assert reconciler.planned_version("ns", "m", "42") == (False, None)  # a later change: not yet
    assert reconciler.planned_version("ns", "m", "opaque") == (False, None)  # not comparable
    api.objects[path]["spec"]["targets"] = "avx2"  # not a list: invalid
    api.objects[path]["metadata"]["resourceVersion"] = "43"
    await reconciler.reconcile("ns", "m")
    done, invalid = reconciler.planned_version("ns", "m", "43")
    assert done and invalid  # kopf's handler raises PermanentError with the same reason
    reconciler.forget("ns", "m")
    assert reconciler.planned_version("ns", "m", "43") == (False, None)
    await reconciler.close()


async def test_a_service_the_caches_hold_is_patched_without_a_create_first() -> None:
    api = FakeApi()
    reconciler, _ = make(api, nodes=[node("n1")])
    await reconciler.reconcile("ns", "m")
    service_path = "/api/v1/namespaces/ns/services/m"
    service = copy.deepcopy(api.objects[service_path])
    service["metadata"]["annotations"] = {}  # an older template (its hash is gone): patched
    assert reconciler.caches is not None
    reconciler.caches = Caches(**{**vars(reconciler.caches), "services": {("ns", "m"): [service]}})
    before = len(api.calls)
    await reconciler.reconcile("ns", "m")
    assert [call for call in api.calls[before:] if "/services" in call[1]] == [("PATCH", service_path)]
    # Gone meanwhile (the caches lag): the patch finds nothing, and it is created.
    del api.objects[service_path]
    before = len(api.calls)
    await reconciler.reconcile("ns", "m")
    assert [call for call in api.calls[before:] if "/services" in call[1]] == [
        ("PATCH", service_path),
        ("POST", "/api/v1/namespaces/ns/services"),
    ]
    assert service_path in api.objects
    await reconciler.close()


class VersionedApi(FakeApi):
    """Every write of the model moves its resourceVersion on, as the API server's do."""

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        target = await super().merge_patch(path, patch)
        if target is not None and "metadata" in target:
            target["metadata"]["resourceVersion"] = str(int(target["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(target)


async def test_the_status_write_of_a_reconcile_counts_as_planned_unless_the_spec_moved() -> None:
    api = VersionedApi()
    path = "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels/m"
    api.objects[path]["metadata"]["resourceVersion"] = "41"
    reconciler, _ = make(api, nodes=[node("n1")])
    await reconciler.reconcile("ns", "m")  # reads 41, its status write makes it 42
    assert api.objects[path]["metadata"]["resourceVersion"] == "42"
    # kopf hands its update handler the newest body: the one the status write made.
    assert reconciler.planned_version("ns", "m", "42") == (True, None)
    assert reconciler.planned_version("ns", "m", "43") == (False, None)

    class SpecMovedApi(VersionedApi):
        async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
            if path.endswith("/status"):  # someone changed the spec between the read and the write
                self.objects[path.removesuffix("/status")]["metadata"]["generation"] += 1
            return await super().merge_patch(path, patch)

    api = SpecMovedApi()
    api.objects[path]["metadata"]["resourceVersion"] = "41"
    other, _ = make(api, nodes=[node("n1")])
    await other.reconcile("ns", "m")
    assert other.planned_version("ns", "m", "41") == (True, None)
    assert other.planned_version("ns", "m", "42") == (False, None)  # a spec it did not plan
    await reconciler.close()
    await other.close()


async def test_a_reconcile_asked_unless_planned_is_skipped_when_one_that_ran_meanwhile_planned_it() -> None:
    api = FakeApi()
    path = "/apis/qfleet.dev/v1alpha1/namespaces/ns/quantizedmodels/m"
    api.objects[path]["metadata"]["resourceVersion"] = "41"
    reconciler, _ = make(api, nodes=[node("n1")])
    first = asyncio.create_task(reconciler.reconcile("ns", "m"))  # the takeover's, say
    await _until(lambda: api.calls)  # it holds the model's lock, reading the model
    second = await reconciler.reconcile("ns", "m", unless_planned="41")  # kopf's handler, meanwhile
    assert (await first) is not None and second is None
    assert [method for method, _ in api.calls].count("GET") == 1
    assert await reconciler.reconcile("ns", "m", unless_planned="40") is None  # no slot, no lock
    assert await reconciler.reconcile("ns", "m", unless_planned="42") is not None  # a newer change
    await reconciler.close()


async def test_no_reconcile_runs_before_the_caches_are_listed() -> None:
    api = FakeApi()
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.caches_ready.clear()  # a replica taking over, its LIST still in flight
    waiting = asyncio.create_task(reconciler.reconcile("ns", "m"))
    reconciler.trigger("ns", "m", delay=0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert api.calls == [] and not waiting.done()
    reconciler.caches_ready.set()
    assert await waiting is not None
    await _until(lambda: not reconciler._pending)
    await reconciler.close()


async def test_a_stopped_reconciler_starts_nothing_and_cancels_what_is_queued() -> None:
    api = FakeApi()
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.trigger("ns", "m", delay=5)
    reconciler.wake_later(("ns", "m"), 5)
    queued = list(reconciler._tasks)
    reconciler.stop()
    ended = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in ended) and not reconciler._wakeups
    reconciler.trigger("ns", "m", delay=0)
    assert all(task.done() for task in reconciler._tasks)  # no new one
    assert await reconciler.reconcile("ns", "m") is None
    assert api.calls == []
    await reconciler.close()


async def test_kopf_update_handler_does_not_wait_for_a_queued_reconcile_but_makes_it_urgent() -> None:
    """After a takeover every changed model has a queued reconcile (the resume's, the spec
    watch's): kopf's handler returns at once instead of holding its worker and the model's body
    until the queue reaches the model; the queued run reads the model afresh when it starts."""
    from qfleet.operator.handlers import reconcile_model
    from qfleet.operator.slots import BACKGROUND

    api = FakeApi()
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.trigger("ns", "m", delay=5, priority=BACKGROUND)  # the fleet's resume, far back
    memo = type("Memo", (), {"reconciler": reconciler})()
    await asyncio.wait_for(reconcile_model(name="m", namespace="ns", body=MODEL, memo=memo), 1)  # type: ignore[arg-type]

    def status_written() -> bool:
        return any(method == "PATCH" and path.endswith("/status") for method, path in api.calls)

    assert not status_written()  # returned before the reconcile was through
    # ... and the queued reconcile runs now, not after the background one's 5 s.
    await asyncio.wait_for(_until(status_written), 1)
    await reconciler.close()


def fail_the_first_get(api: FakeApi, error: Exception) -> list[Exception]:
    """Make the first GET of ``api`` raise ``error``; the list returned is empty once it has."""
    pending = [error]
    original_get = api.get

    async def get(path: str) -> dict[str, Any] | None:
        if pending:
            raise pending.pop()
        return await original_get(path)

    api.get = get  # type: ignore[method-assign]
    return pending


async def test_a_reconcile_refused_by_rbac_is_tried_again_later(monkeypatch: Any) -> None:
    from qfleet.operator import applier
    from qfleet.operator.kube import ApiError

    monkeypatch.setattr(applier, "REFUSED_RETRY_SECONDS", 0.05)
    api = FakeApi()
    refusals = fail_the_first_get(api, ApiError(403, "Forbidden", "jobs is forbidden"))
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.trigger("ns", "m", delay=0)
    await _until(lambda: any(method == "GET" for method, _ in api.calls))
    assert not refusals
    await reconciler.close()


async def test_a_crashed_reconcile_is_tried_again_after_a_pause(monkeypatch: Any) -> None:
    """No kopf handler stands behind the reconciler's own runs: a crash is retried, with backoff."""
    from qfleet.operator import applier

    monkeypatch.setattr(applier, "retry_delay", lambda failures: 0.05)
    api = FakeApi()
    crashes = fail_the_first_get(api, RuntimeError("a bug"))
    reconciler, _ = make(api, nodes=[node("n1")])
    reconciler.trigger("ns", "m", delay=0)
    await asyncio.wait_for(_until(lambda: any(method == "GET" for method, _ in api.calls)), 5)
    assert not crashes
    await reconciler.close()
