"""Gather what the cluster holds, run the pure planner, apply its plan.

One reconcile of a model at a time (a lock per model); triggers that arrive while one is
queued are folded into it, and a trigger whose model was reconciled since is dropped, so a burst
of Job, pod and Deployment events costs one pass. At most ``concurrent_reconciles`` run at once,
the most urgent first (:mod:`~qfleet.operator.slots`): a user's change is not held up by the
start-up's resume of every model. Reads come from the operator's caches (kept current by
kopf's events, see :mod:`~qfleet.operator.cache`) plus one fresh GET of the model (its status is
the operator's memory), writes go through :class:`~qfleet.operator.kube.KubeApi`.

Quantization Jobs of all models share one cap (``max_running_jobs``, see
:class:`~qfleet.fleet.job_queue.JobQueue`): the planner asks the queue before it creates a Job
(``Observed.admit_job``). Each reconcile first refreshes its model's unfinished Jobs in the
queue's running set (a Job event triggers the reconcile of its model, so the set follows the
cluster without a scan of every Job per reconcile), afterwards withdraws what the plan no longer
asks for, and, when slots are free, triggers the models at the head of the queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qfleet.fleet import conditions as c
from qfleet.fleet import names
from qfleet.fleet.job_queue import SETTLE_SECONDS, STALE_SECONDS, JobQueue, job_finished
from qfleet.fleet.nodes import Inventory, NodeInfo
from qfleet.fleet.planner import Event, Observed, Plan, plan
from qfleet.operator.cache import NODES_KEY, ClusterCache
from qfleet.operator.kube import ApiError, KubeApi, namespaced
from qfleet.operator.metrics import Metrics
from qfleet.operator.settings import OperatorSettings
from qfleet.operator.slots import BACKGROUND, NORMAL, URGENT, PrioritySlots

log = logging.getLogger("qfleet.operator")

ModelKey = tuple[str, str]
EventPoster = Callable[[Mapping[str, Any], Event], None]

__all__ = ["NODES_KEY", "REFUSED_RETRY_SECONDS", "Caches", "Reconciler", "retry_delay", "retryable"]


#: Retries after an API error back off exponentially, from half a second up to a minute (a busy or
#: restarting API server is not hammered by every model at a fixed pace).
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 60.0
#: A request refused for the operator's credentials or RBAC (401, 403) is tried again this late.
REFUSED_RETRY_SECONDS = 60.0


def retry_delay(failures: int, *, jitter: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 0.5, 1, 2, 4, ... 60, each +-20%
    (random unless ``jitter`` in [-1, 1] is given), so that many models do not retry in step."""
    doublings = min(max(0, failures - 1), 32)  # the cap is reached long before; no float overflow
    base = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * float(2**doublings))
    spread = random.uniform(-1.0, 1.0) if jitter is None else jitter
    return float(round(base * (1 + 0.2 * spread), 2))


def retryable(exc: ApiError) -> bool:
    """Worth another try: the server was unavailable (5xx, 429, no answer) or the object changed
    under the request (409 Conflict); the next reconcile reads it afresh."""
    return exc.transient or exc.status == 409


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Caches:
    """The operator's caches: live, read-only mappings from a key to the objects under it."""

    models: Mapping[Any, Iterable[Any]]
    jobs: Mapping[Any, Iterable[dict[str, Any]]]
    pods: Mapping[Any, Iterable[dict[str, Any]]]
    deployments: Mapping[Any, Iterable[dict[str, Any]]]
    nodes: Mapping[Any, Iterable[NodeInfo]]
    server_pods: Mapping[Any, Iterable[dict[str, Any]]] = field(default_factory=dict)
    services: Mapping[Any, Iterable[dict[str, Any]]] = field(default_factory=dict)
    pdbs: Mapping[Any, Iterable[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, cache: ClusterCache) -> Caches:
        return cls(
            models=cache["models"],
            jobs=cache["jobs"],
            pods=cache["pods"],
            deployments=cache["deployments"],
            nodes=cache["nodes"],
            server_pods=cache["server_pods"],
            services=cache["services"],
            pdbs=cache["pdbs"],
        )


class _ModelLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['key']}] {msg}", kwargs  # type: ignore[index]


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        metrics: Metrics,
        *,
        post_event: EventPoster,
        clock: Callable[[], str] = utc_now,
        cache: ClusterCache | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.post_event = post_event
        self.clock = clock
        self.cache = cache
        self.caches: Caches | None = Caches.of(cache) if cache is not None else None
        self.slots = PrioritySlots(settings.concurrent_reconciles)
        #: Set once the caches hold a LIST of the cluster (at once without caches): a reconcile
        #: waits for it, so that a replica taking over never plans from half-filled caches (no
        #: nodes yet, say) while kopf's first events already ask for reconciles.
        self.caches_ready = asyncio.Event()
        if cache is None:
            self.caches_ready.set()
        #: The operator began to stop (see :meth:`stop`).
        self.stopped = False
        self._locks: dict[ModelKey, asyncio.Lock] = {}
        #: Per model, the trigger that is queued: its priority and its number.
        self._pending: dict[ModelKey, tuple[int, int]] = {}
        #: Triggers and reconcile starts share one count: a trigger older than the last start of
        #: its model's reconcile has nothing left to do (that reconcile read the caches after it).
        self._sequence = 0
        self._started: dict[ModelKey, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inventory: Inventory | None = None
        self._inventory_signature: object = None
        self._sweep_scheduled = False
        #: Consecutive failed reconciles per model (for the retry backoff); cleared on success.
        self._failures: dict[ModelKey, int] = {}
        #: Per model: a timer that reconciles it when a grace period ends.
        self._wakeups: dict[ModelKey, asyncio.TimerHandle] = {}
        # A waiting request is repeated at least at every resync: give it three before it is stale.
        self.job_queue = JobQueue(
            settings.max_running_jobs, stale_seconds=max(STALE_SECONDS, 3 * settings.resync_seconds)
        )
        #: Unfinished quantization Jobs per model ("namespace/job"), from the Jobs cache.
        self._running_jobs: dict[ModelKey, frozenset[str]] = {}
        self._jobs_scanned = False
        #: Per model, the resourceVersion (where it is a number, as etcd's are) of the model its
        #: last finished reconcile planned, and why that spec was invalid (None: valid): where
        #: kopf's update handler is selected, a change reconciled meanwhile needs no second one.
        self._planned: dict[ModelKey, tuple[int, str | None]] = {}

    # -- triggers ------------------------------------------------------------------------------

    def trigger(self, namespace: str, name: str, *, delay: float = 0.05, priority: int = NORMAL) -> None:
        """Reconcile soon; triggers that arrive before that run starts are folded into it (a more
        urgent one queues a run of its own, and the other finds nothing left to do)."""
        key = (namespace, name)
        queued = self._pending.get(key)
        if self.stopped or (queued is not None and queued[0] <= priority):
            return
        self._sequence += 1
        self._pending[key] = (priority, self._sequence)
        self._spawn(self._run_later(key, delay, priority, self._sequence))

    def queued(self, namespace: str, name: str) -> bool:
        """Whether a reconcile of the model is queued and not started: it reads the model when it
        starts, so it covers every change made until then."""
        return (namespace, name) in self._pending

    def trigger_all(self, *, delay: float = 0.05, priority: int = NORMAL) -> None:
        for namespace, name in self.known_models():
            self.trigger(namespace, name, delay=delay, priority=priority)

    def known_models(self) -> list[ModelKey]:
        """The models kopf has reported: a standby replica (kopf's peering pauses its watches)
        knows the models only from its start-up LIST, and must not reconcile them."""
        if self.caches is None:
            return []
        models = self.cache["models"] if self.cache is not None else None
        return [
            key
            for key in self.caches.models
            if isinstance(key, tuple) and (models is None or models.confirmed(key))
        ]

    def nodes_changed(self, *, delay: float = 0.5) -> None:
        """A node changed: rebuild the inventory and, if planning sees a difference, revisit all."""
        self._inventory = None
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            self._spawn(self._sweep_after(delay))

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._failures.pop(key, None)
        self._started.pop(key, None)
        self._planned.pop(key, None)
        timer = self._wakeups.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.metrics.forget(namespace, name)
        # Its Jobs stay counted until their deletion events (garbage collection) refresh them.
        self.job_queue.withdraw(key)
        self.job_queue.planned(key)
        self._wake_waiting()

    async def resync_forever(self) -> None:
        """Revisit every model now and then: a safety net for missed events."""
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            if self.cache is not None and NODES_KEY in self.cache.drop_unconfirmed():
                self.nodes_changed()
            self.trigger_all(priority=BACKGROUND)

    def stop(self) -> None:
        """The operator begins to stop (and a standby may lead already): no reconcile starts from
        now on, and the queued ones and those in flight are cancelled (each write is whole, and
        the next leader reconciles every model)."""
        self.stopped = True
        for timer in self._wakeups.values():
            timer.cancel()
        self._wakeups.clear()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        for timer in self._wakeups.values():
            timer.cancel()
        self._wakeups.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.api.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_later(self, key: ModelKey, delay: float, priority: int, number: int) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self.reconcile(*key, priority=priority, _trigger=number)
        except ApiError as exc:
            logger = _ModelLogger(log, {"key": f"{key[0]}/{key[1]}"})
            if retryable(exc):
                delay = retry_delay(self.note_failure(key))
                logger.warning("API request failed (%s); retrying in %.1f s", exc, delay)
                self.trigger(*key, delay=delay)
            elif exc.status in (401, 403):  # someone has to fix the credentials or RBAC
                logger.error("API refused (%s); retrying in %.0f s", exc, REFUSED_RETRY_SECONDS)
                self.trigger(*key, delay=REFUSED_RETRY_SECONDS)
            else:
                logger.error("reconcile failed: %s", exc)
        except Exception:
            # No handler of kopf's stands behind this reconcile (see the handlers module): retry
            # it as kopf retries a handler that raised, with the same growing pause.
            delay = retry_delay(self.note_failure(key))
            log.exception("[%s/%s] reconcile crashed; retrying in %.1f s", *key, delay)
            self.trigger(*key, delay=delay)

    def note_failure(self, key: ModelKey) -> int:
        """Count one more failed reconcile of ``key``; returns how many in a row."""
        self._failures[key] = self._failures.get(key, 0) + 1
        return self._failures[key]

    async def _sweep_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._sweep_scheduled = False
        before = self._inventory_signature
        signature = self.inventory().signature()
        if before is not None and signature != before:
            self._inventory_signature = signature
            self.trigger_all()

    def planned_version(self, namespace: str, name: str, version: Any) -> tuple[bool, str | None]:
        """Whether a finished reconcile already planned the model as of resourceVersion
        ``version`` or later, and if so, why that spec was invalid (None: it was valid). A
        version that is not a number is never taken as planned."""
        done = self._planned.get((namespace, name))
        version = str(version or "")
        if done is None or not version.isdigit() or done[0] < int(version):
            return False, None
        return True, done[1]

    # -- one reconcile -------------------------------------------------------------------------

    def inventory(self) -> Inventory:
        if self._inventory is None:
            nodes = self.caches.nodes.get(NODES_KEY, ()) if self.caches is not None else ()
            self._inventory = Inventory.of(nodes)
            if self._inventory_signature is None:
                # The first look (at start-up): every model is resumed anyway, no sweep needed.
                self._inventory_signature = self._inventory.signature()
        return self._inventory

    def observed(self, namespace: str, name: str) -> Observed:
        key = (namespace, name)
        admit_job = self.admitter(key) if self.job_queue.limited else None
        if self.caches is None:
            return Observed(inventory=self.inventory(), admit_job=admit_job)
        return Observed(
            jobs=list(self.caches.jobs.get(key, ())),
            pods=[*self.caches.pods.get(key, ()), *self.caches.server_pods.get(key, ())],
            deployments=list(self.caches.deployments.get(key, ())),
            services=list(self.caches.services.get(key, ())),
            pdbs=list(self.caches.pdbs.get(key, ())),
            inventory=self.inventory(),
            admit_job=admit_job,
        )

    # -- the queue of quantization Jobs ------------------------------------------------------------

    def admitter(self, key: ModelKey) -> Callable[[str, tuple[str, ...]], int]:
        """The planner's ``admit_job`` for one model: 0 to create the Job now, else its place."""
        namespace = key[0]
        return lambda job, order: self.job_queue.request(f"{namespace}/{job}", model=key, order=order)

    def _unfinished_jobs(self, key: Any) -> frozenset[str]:
        jobs = self.caches.jobs.get(key, ()) if self.caches is not None else ()
        return frozenset(
            f"{key[0]}/{(job.get('metadata') or {}).get('name')}" for job in jobs if not job_finished(job)
        )

    def refresh_running(self, key: ModelKey) -> None:
        """Tell the queue which Jobs run: ``key``'s afresh, every model's on the first call (after
        a start-up, when every model known then may want a Job ahead of anyone)."""
        if self.caches is None:
            return
        if not self._jobs_scanned:
            self._jobs_scanned = True
            for other in list(self.caches.jobs):
                if isinstance(other, tuple) and (running := self._unfinished_jobs(other)):
                    self._running_jobs[other] = running
            self.job_queue.expect(self.known_models(), within=SETTLE_SECONDS)
            self._spawn(self._wake_after(SETTLE_SECONDS))
        running = self._unfinished_jobs(key)
        if running:
            self._running_jobs[key] = running
        else:
            self._running_jobs.pop(key, None)
        self.job_queue.sync_running(self._all_running())

    def _all_running(self) -> Iterator[str]:
        for jobs in self._running_jobs.values():
            yield from jobs

    def _keep_queued(self, key: ModelKey, result: Plan) -> None:
        """Withdraw the requests of ``key`` that its plan neither created nor queued."""
        namespace = key[0]
        keep = {f"{namespace}/{job['metadata']['name']}" for job in result.create_jobs}
        keep.update(f"{namespace}/{job}" for job in result.queued_jobs)
        self.job_queue.withdraw(key, keep)

    def _wake_waiting(self, exclude: ModelKey | None = None) -> None:
        """Free slots: trigger the models at the head of the queue (they take the slots)."""
        free = self.job_queue.free_slots()
        if free and not self.job_queue.settling:
            heads = [model for model in self.job_queue.waiting_models(limit=free + 1) if model != exclude]
            for namespace, name in heads[:free]:
                self.trigger(namespace, name)
        self.metrics.job_queue(queued=self.job_queue.queued, running=self.job_queue.running)

    async def _wake_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._wake_waiting()

    async def reconcile(
        self,
        namespace: str,
        name: str,
        *,
        priority: int = URGENT,
        unless_planned: Any = None,
        _trigger: int | None = None,
    ) -> Plan | None:
        """Plan and apply one reconcile of a model; None when the model is gone (or, for a
        trigger, when a reconcile that started after it made it needless; or when a reconcile
        that finished while this one waited planned the model's resourceVersion
        ``unless_planned``: see :meth:`planned_version`)."""
        key = (namespace, name)

        def planned_already() -> bool:
            return unless_planned is not None and self.planned_version(namespace, name, unless_planned)[0]

        if self.stopped or planned_already():
            return None
        if not self.caches_ready.is_set():
            await self.caches_ready.wait()
        async with self.slots.hold(priority):
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                if self.stopped or planned_already():
                    return None
                if _trigger is not None:
                    if self._pending.get(key, (0, None))[1] == _trigger:
                        # From here on, a new trigger needs a new run: this one may read too early.
                        del self._pending[key]
                    if self._started.get(key, -1) > _trigger:
                        return None
                self._sequence += 1
                self._started[key] = self._sequence
                return await self._reconcile_started(key)

    async def _reconcile_started(self, key: ModelKey) -> Plan | None:
        namespace, name = key
        started = time.perf_counter()
        try:
            result = await self._reconcile_locked(namespace, name)
        except Exception:
            self.metrics.reconciled("error", time.perf_counter() - started)
            raise
        finally:
            self.job_queue.planned(key)
            self._wake_waiting(exclude=key)
        self._failures.pop(key, None)
        outcome = "gone" if result is None else "invalid" if result.invalid_spec else "ok"
        self.metrics.reconciled(outcome, time.perf_counter() - started)
        return result

    async def _reconcile_locked(self, namespace: str, name: str) -> Plan | None:
        logger = _ModelLogger(log, {"key": f"{namespace}/{name}"})
        key = (namespace, name)
        self.refresh_running(key)
        model = await self.api.get(namespaced(names.API_VERSION, names.PLURAL, namespace, name))
        if model is None or (model.get("metadata") or {}).get("deletionTimestamp"):
            self.job_queue.withdraw(key)
            return None
        result = plan(model, self.observed(namespace, name), self.settings.fleet, now=self.clock())
        self._keep_queued(key, result)
        written = await self._apply(model, result, logger)
        version = str(((written or model).get("metadata") or {}).get("resourceVersion") or "")
        if version.isdigit():
            self._planned[key] = (int(version), result.invalid_spec or None)
        return result

    async def _apply(
        self, model: Mapping[str, Any], result: Plan, logger: _ModelLogger
    ) -> Mapping[str, Any] | None:
        """Apply ``result``; the model as its status write left it, when that changed nothing
        else of it (see :meth:`_apply_status`)."""
        metadata = model.get("metadata") or {}
        namespace = str(metadata["namespace"])
        await self._apply_jobs(model, result, namespace, logger)
        await self._apply_deployments(result, namespace, logger)
        await self._apply_serving_objects(result, namespace, logger)
        if result.requeue_after is not None:
            # A grace period ends (pods pending as unschedulable): look again then, event or not.
            name = str(metadata["name"])
            self.wake_later((namespace, name), result.requeue_after)
        for tier, record in result.new_results.items():
            self.metrics.new_result(tier, record)
        written = await self._apply_status(model, result, logger)
        for event in result.events:
            self.post_event(model, event)
        self.metrics.model_status(namespace, str(metadata["name"]), result.model_status)
        return written

    async def _apply_jobs(
        self,
        model: Mapping[str, Any],
        result: Plan,
        namespace: str,
        logger: _ModelLogger,
    ) -> None:
        jobs = namespaced("batch/v1", "jobs", namespace)
        for job_name in result.delete_jobs:
            if await self.api.delete(f"{jobs}/{job_name}"):
                logger.info("deleted obsolete Job %s", job_name)
                self.post_event(
                    model, Event("Normal", c.EVENT_JOB_DELETED, f"deleted obsolete Job {job_name}")
                )
        for job in result.create_jobs:
            job_name = job["metadata"]["name"]
            if await self.api.create(jobs, job):
                tier = job["metadata"]["labels"][names.LABEL_ISA]
                logger.info("created quantization Job %s", job_name)
                self.post_event(
                    model,
                    Event("Normal", c.EVENT_JOB_CREATED, f"{tier}: started quantization Job {job_name}"),
                )

    async def _apply_deployments(self, result: Plan, namespace: str, logger: _ModelLogger) -> None:
        deployments = namespaced("apps/v1", "deployments", namespace)
        for change in result.deployments:
            path = f"{deployments}/{change.name}"
            if change.action == "create" and await self.api.create(deployments, change.body):
                logger.info("created Deployment %s with %d replica(s)", change.name, change.replicas)
            elif change.action == "scale":
                await self.api.merge_patch(path, {"spec": {"replicas": change.replicas}})
                logger.info("scaled Deployment %s to %d replica(s)", change.name, change.replicas)
            else:  # an update, or a create that found the Deployment already there
                body = change.body
                patch = {
                    "metadata": {
                        "labels": body["metadata"]["labels"],
                        "annotations": body["metadata"]["annotations"],
                    },
                    "spec": body["spec"],
                }
                await self.api.merge_patch(path, patch)
                logger.info("updated Deployment %s", change.name)
        for deployment_name in result.delete_deployments:
            if await self.api.delete(f"{deployments}/{deployment_name}"):
                logger.info("deleted Deployment %s of a removed target", deployment_name)

    def wake_later(self, key: ModelKey, delay: float) -> None:
        """Reconcile ``key`` after ``delay`` seconds; one timer per model, the earliest wins."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        current = self._wakeups.get(key)
        if current is not None and not current.cancelled() and current.when() <= due:
            return
        if current is not None:
            current.cancel()
        self._wakeups[key] = loop.call_at(due, self._wake, key)

    def _wake(self, key: ModelKey) -> None:
        self._wakeups.pop(key, None)
        self.trigger(*key)

    async def _apply_serving_objects(self, result: Plan, namespace: str, logger: _ModelLogger) -> None:
        """The model's Service and its PodDisruptionBudgets: create, else patch what qfleet sets.
        One the caches hold is patched first (created when the patch finds it gone)."""
        for collection, objects in (
            (namespaced("v1", "services", namespace), result.services),
            (namespaced("policy/v1", "poddisruptionbudgets", namespace), result.pdbs),
        ):
            for body in objects:
                known = (body["kind"], body["metadata"]["name"]) in result.existing
                await self._write_serving_object(collection, body, known=known, logger=logger)
        budgets = namespaced("policy/v1", "poddisruptionbudgets", namespace)
        for name in result.delete_pdbs:
            if await self.api.delete(f"{budgets}/{name}"):
                logger.info("deleted PodDisruptionBudget %s of a removed target", name)

    async def _write_serving_object(
        self, collection: str, body: dict[str, Any], *, known: bool, logger: _ModelLogger
    ) -> None:
        """Patch the object when the caches hold it (create it when the patch finds it gone),
        else create it (patch it when the create finds it there)."""
        path = f"{collection}/{body['metadata']['name']}"
        what = f"{body['kind']} {body['metadata']['name']}"
        if known and await self.api.merge_patch(path, _owned_fields(body)) is not None:
            logger.info("updated %s", what)
        elif await self.api.create(collection, body):
            logger.info("created %s", what)
        elif not known:  # created meanwhile (by a replica that led before this one)
            await self.api.merge_patch(path, _owned_fields(body))
            logger.info("updated %s", what)

    async def _apply_status(
        self, model: Mapping[str, Any], result: Plan, logger: _ModelLogger
    ) -> Mapping[str, Any] | None:
        """Patch the status when it changed (fields no longer written are removed). Returns the
        model the patch answered when only its status moved since ``model`` was read: what this
        reconcile planned is then that newer resourceVersion too. (kopf hands its handlers the
        newest body it has seen, often this very write: compared with the version read, the
        change the reconcile had planned looked new, and was reconciled a second time.)"""
        metadata = model.get("metadata") or {}
        old_status = model.get("status") or {}
        new_status = result.status
        if new_status == old_status:
            return None
        patch = {key: None for key in old_status if key not in new_status}
        patch.update(new_status)
        path = namespaced(
            names.API_VERSION, names.PLURAL, str(metadata["namespace"]), str(metadata["name"]), "status"
        )
        written = await self.api.merge_patch(path, {"status": patch})
        if new_status.get("phase") != old_status.get("phase"):
            logger.info("phase %s -> %s", old_status.get("phase") or "New", new_status.get("phase"))
        if written is None or _planned_fields(written) != _planned_fields(model):
            return None
        return written


def _planned_fields(model: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a model, besides its status, a plan depends on: its spec (counted by the
    generation), labels and annotations."""
    metadata = model.get("metadata") or {}
    return metadata.get("generation"), metadata.get("labels"), metadata.get("annotations")


def _owned_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a Service or PodDisruptionBudget that qfleet sets: its merge patch."""
    metadata = body["metadata"]
    return {
        "metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]},
        "spec": body["spec"],
    }
