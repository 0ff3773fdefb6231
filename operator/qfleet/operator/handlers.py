"""kopf handlers: thin. They keep the operator's caches, call the reconciler, and turn errors
into kopf's.

No ``@kopf.index``: kopf holds every handler back until its indices are filled, at a cost that
grows with the square of the objects (see :mod:`qfleet.operator.cache`). The caches are filled by
one LIST per kind at start-up and kept by event handlers, so the operator handles events -- a
camera change included -- while the rest of the fleet is still being resumed. Whenever the
replica starts leading (start-up, or a failover: kopf's peering resumes it), the operator resumes
the fleet itself from that LIST -- listed afresh if it was standing by -- with a background
reconcile of every model (see :func:`_resume_fleet`). A created or changed model is reconciled
at once, ahead of the queue: the operator's own watch of the models' specs sees it (see the
spec_watch module), and the reconciler retries a failed reconcile on its own.

kopf's create, update and resume handlers of the models are selected only where the operator
cannot list the models itself (a scope of namespace patterns). A
selected update handler cost every change a kopf handler cycle, a PATCH of kopf's diff base on
the model, and one more event of the model for kopf to process: a third of the model events of a
failover in which every model changed, each with a deep copy of the model (issue 16).

Errors, on purpose:

- an invalid spec is written to the status first, then raised as ``kopf.PermanentError``: the
  same spec will never work, kopf stops retrying until the spec changes;
- an unavailable API (5xx, 429, connection, timeout) or a 409 Conflict is a
  ``kopf.TemporaryError`` whose delay backs off exponentially (0.5 s to a minute, see
  :func:`~qfleet.operator.applier.retry_delay`); a 403 one with a long delay (someone has to
  fix RBAC; the resource will not change); the reconciler's own queued runs do the same;
- kopf itself gives up when one of its watchers fails (a watch answered with HTTP 410 Gone, for
  one) and its shutdown can then hang, leaving a process that looks alive and does nothing: the
  operator exits instead (see :class:`ExitWhenKopfFails`), and Kubernetes restarts it;
- waiting is not an error: a running Job, a missing node, an unready rollout are reported as
  conditions, and the Job, node and Deployment events trigger the next reconcile. (A change
  handler that raised TemporaryError to wait would hold back every later change of the same
  resource -- a camera change must rescale within seconds even while a Job runs.)
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import kopf

from qfleet.fleet import names
from qfleet.fleet.planner import Event
from qfleet.operator.applier import REFUSED_RETRY_SECONDS, Reconciler, retry_delay, retryable
from qfleet.operator.cache import NODES_KEY, OWNED, QUANTIZER_PODS, SERVER_PODS, ClusterCache
from qfleet.operator.kube import LIST_PAGE, ApiError, KubeApi, load_credentials
from qfleet.operator.metrics import Metrics
from qfleet.operator.settings import OperatorSettings
from qfleet.operator.slots import BACKGROUND, URGENT
from qfleet.operator.spec_watch import Generations, SpecWatch

log = logging.getLogger("qfleet.operator")

MODEL = (names.GROUP, names.VERSION, names.PLURAL)
MODEL_NAME = {names.ANNOTATION_MODEL_NAME: kopf.PRESENT}
#: Characters of kopf's namespace patterns: such a scope is not listed up front.
GLOB_CHARACTERS = set("*?[]!")
#: Events held until kopf's first handler call lends its event queue (beyond: logged, dropped).
EVENTS_HELD_LIMIT = 10_000
#: Kubernetes keeps event messages to 1 KiB.
EVENT_MESSAGE_LIMIT = 1000
#: Seconds kopf gets to stop cleanly after one of its core tasks failed, before the process exits.
KOPF_FAILURE_GRACE_SECONDS = 10.0
#: Exit status when kopf's core failed (any non-zero status makes Kubernetes restart the pod).
KOPF_FAILURE_EXIT_CODE = 70
#: A LIST younger than this is fresh enough to resume the fleet from: a standalone replica's
#: start-up LIST, made just before kopf watched anything.
FRESH_LIST_SECONDS = 5.0
#: The logger of kopf's peering (its pauses and resumptions).
KOPF_PEERING_LOGGER = "kopf._core.engines.peering"
#: The logger of kopf's reactor (it says when the operator begins to stop).
KOPF_RUNNING_LOGGER = "kopf._core.reactor.running"


class ExitWhenKopfFails(logging.Handler):
    """Exit the process soon after kopf reports that one of its core tasks failed.

    kopf treats a failed watcher (or peering, or root) task as fatal and stops the operator, but
    the stop can hang on a watch stream that does not cancel, and then nothing is watched any
    more while the process stays up. This handler sees kopf's "... has failed: ..." error and
    gives kopf a grace period to finish, then ends the process: crash-only, Kubernetes restarts
    the pod and the new process lists everything afresh.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, grace: float = KOPF_FAILURE_GRACE_SECONDS) -> None:
        super().__init__(level=logging.ERROR)
        self.loop = loop
        self.grace = grace
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.fired or " has failed: " not in record.getMessage():
            return
        self.fired = True
        self.loop.call_soon_threadsafe(self.loop.call_later, self.grace, self._exit, record.getMessage())

    @staticmethod
    def _exit(reason: str) -> None:
        logging.getLogger("qfleet.operator").critical(
            "kopf stopped working (%s); exiting so that the operator is restarted", reason[:300]
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(KOPF_FAILURE_EXIT_CODE)


class FollowKopfPeering(logging.Handler):
    """Whether kopf lets this replica work, read from kopf's log.

    kopf has no API that says whether it paused the operator in favour of a peer, and the
    operator's own work -- its watch of the models' specs (:mod:`~qfleet.operator.spec_watch`),
    its queued reconciles -- must stay idle while it is. kopf logs each pause and each
    resumption; with mandatory peering it starts paused and logs the resumption once no peer
    outranks it. It also logs when it begins to stop (SIGTERM): it withdraws its keep-alive at
    once, so the standby leads within a second, while kopf's own shutdown takes seconds more
    (6 s at 1000 models) before the cleanup handler runs. The operator stops working then too,
    rather than work beside the new leader.
    """

    PAUSED = ("Pausing operations", "Pausing all operators")
    RESUMED = ("Resuming operations",)
    STOPPING = "Operator is stopping"  #: after the signal or stop flag kopf received

    def __init__(
        self,
        *,
        leading: bool,
        on_resumed: Callable[[], None] = lambda: None,
        on_stopping: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(level=logging.INFO)
        self.leading = leading
        self.stopping = False
        self.on_resumed = on_resumed
        self.on_stopping = on_stopping

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PAUSED):
            self.leading = False
        elif message.startswith(self.RESUMED) and not self.stopping:
            self.leading = True
            self.on_resumed()
        elif self.STOPPING in message:
            self.leading = False
            self.stopping = True
            self.on_stopping()


#: Priorities fall by this much per millisecond of start time (the rest is a random tie-break).
PRIORITY_TIE_BREAKS = 1024
#: Milliseconds since 1970 stay below this until the year 2109; times the tie-breaks, a priority
#: stays below 2**53, exact in any JSON client.
PRIORITY_CEILING = 2**42


def peering_priority(started: float) -> int:
    """kopf's peering priority for a replica started at ``started`` (Unix seconds): the older
    replica ranks higher.

    kopf pauses a replica that sees a live peer of higher *or equal* priority. With random
    priorities, a standby that had just started outranked the leader half of the time and took
    over from it: a needless takeover (the whole fleet resumed again) at every restart of a
    standby. Older first keeps the working leader; the random part keeps two replicas started
    in the same millisecond apart (equal priorities would pause both).
    """
    milliseconds = int(started * 1000)
    tie_break = random.SystemRandom().randrange(PRIORITY_TIE_BREAKS)
    return (PRIORITY_CEILING - milliseconds) * PRIORITY_TIE_BREAKS + tie_break


def _follow_peering(
    peering: str | None,
    on_resumed: Callable[[], None] = lambda: None,
    on_stopping: Callable[[], None] = lambda: None,
) -> FollowKopfPeering:
    follower = FollowKopfPeering(leading=peering is None, on_resumed=on_resumed, on_stopping=on_stopping)
    for name in (KOPF_PEERING_LOGGER, KOPF_RUNNING_LOGGER):
        logger = logging.getLogger(name)
        for handler in [item for item in logger.handlers if isinstance(item, FollowKopfPeering)]:
            logger.removeHandler(handler)  # a previous start in the same process
        logger.addHandler(follower)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # kopf logs pauses and its stop at INFO (worth a line each)
    return follower


# -- settings (the one place) -------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    options = OperatorSettings.from_env(os.environ)
    kopf_core = logging.getLogger("kopf._core.reactor")
    if not any(isinstance(handler, ExitWhenKopfFails) for handler in kopf_core.handlers):
        kopf_core.addHandler(ExitWhenKopfFails(asyncio.get_running_loop()))
    # Handler progress and the last handled spec live in annotations, not in the status (whose
    # schema is structural and would prune unknown fields).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # Events are for users: only warnings from kopf itself; qfleet posts its own transitions.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "qfleet-operator"
    settings.peering.standalone = options.peering is None
    if options.peering is not None:
        settings.peering.name = options.peering
        settings.peering.priority = peering_priority(time.time())
        settings.peering.mandatory = True
        # How long a standby waits for a dead leader's keep-alive to lapse (kopf's default: 60 s).
        settings.peering.lifetime = options.peering_lifetime
    settings.peering.clusterwide = bool(memo.get("clusterwide", False))
    # Re-open watches now and then, so a silently dropped connection does not go unnoticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf lists a whole collection in one response unless told otherwise.
    settings.watching.chunk_size = LIST_PAGE

    metrics = Metrics()
    port = memo.get("metrics_port")
    port = options.metrics_port if port is None else port
    if port:
        metrics.serve(int(port))
        logger.info("metrics on :%d/metrics", port)
    api = KubeApi(load_credentials(), reload=load_credentials)  # rotating service-account tokens
    cache = ClusterCache()
    api.written = cache.written
    events = KopfEvents()
    reconciler = Reconciler(api, options, metrics, post_event=events, cache=cache)
    memo.events = events
    memo.cache = cache
    memo.reconciler = reconciler
    memo.reruns = {}
    memo.resync = asyncio.create_task(reconciler.resync_forever())
    memo.takeovers = set()
    memo.spec_watches = []
    memo.lists_the_fleet = await _list_at_start_up(
        cache, api, memo, logger, standalone=options.peering is None
    )
    if not memo.lists_the_fleet:  # the watches fill the caches: nothing to wait for
        reconciler.caches_ready.set()

    def caches_listed() -> None:
        reconciler.caches_ready.set()
        if not memo.spec_watches:  # from the first LIST on
            memo.spec_watches = _watch_specs(cache, api, reconciler, active=lambda: peering.leading)

    def resume_fleet() -> None:
        if memo.lists_the_fleet:
            resuming = _resume_fleet(
                cache, api, reconciler, memo, logger, leading=lambda: peering.leading, on_listed=caches_listed
            )
            task = asyncio.create_task(resuming)
            memo.takeovers.add(task)
            task.add_done_callback(memo.takeovers.discard)

    # kopf logs its resumptions from its own tasks, in this event loop: the callback runs there.
    peering = _follow_peering(options.peering, on_resumed=resume_fleet, on_stopping=reconciler.stop)
    if peering.leading:  # standalone: this replica leads from the start
        resume_fleet()
    fleet = options.fleet
    logger.info(
        "qfleet operator: toolkit %s, server %s, benchmark %gs",
        fleet.toolkit_image,
        fleet.server_image,
        fleet.benchmark_seconds,
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    for task in [memo.get("resync"), *memo.get("spec_watches", ()), *memo.get("takeovers", ())]:
        if task is not None:
            task.cancel()
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.close()


class KopfEvents:
    """Posts the reconciler's Kubernetes events through kopf, from any task.

    kopf finds its event queue in context variables that it sets only inside its own workers; a
    reconcile started by one of the operator's own tasks (the spec watch, the resync) runs
    outside them, where ``kopf.event`` raises LookupError -- after the status was written, so
    the reconcile crashed and its events were lost. The poster keeps a copy of a worker's
    context, taken in the first handler kopf calls, and posts within it. The operator resumes
    the fleet before kopf has called any handler: events until then wait for that first call.
    """

    def __init__(self, *, limit: int = EVENTS_HELD_LIMIT) -> None:
        self.context: contextvars.Context | None = None
        self.limit = limit
        self._held: list[Callable[[], Any]] = []

    def remember_context(self) -> None:
        """Called from kopf's handlers: the first one lends its context (one queue for all)."""
        if self.context is None:
            self.context = contextvars.copy_context()
            held, self._held = self._held, []
            for post in held:
                self._post(post, "")

    def __call__(self, model: Any, event: Event) -> None:
        post = functools.partial(
            kopf.event,
            model,
            type=event.type,
            reason=event.reason,
            message=event.message[:EVENT_MESSAGE_LIMIT],
        )
        if self.context is None:  # kopf has called no handler yet: no queue to post to
            if len(self._held) < self.limit:
                self._held.append(post)
            else:
                log.warning("event %s not posted: kopf's event queue is not known yet", event.reason)
            return
        self._post(post, event.reason)

    def _post(self, post: Callable[[], Any], reason: str) -> None:
        try:
            if self.context is not None:
                self.context.run(post)
            else:
                post()
        except LookupError:  # a context without kopf's queue (not one of its workers)
            log.warning("event %s not posted: kopf's event queue is not known", reason or "(held)")


def _listed_namespaces(memo: kopf.Memo) -> list[str] | None:
    """The namespaces to list (None: the whole cluster)."""
    return None if memo.get("clusterwide", False) else list(memo.get("namespaces") or ())


async def _list_at_start_up(
    cache: ClusterCache, api: KubeApi, memo: kopf.Memo, logger: kopf.Logger, *, standalone: bool
) -> bool:
    """True when the operator itself knows the fleet, and so resumes it (see :func:`_resume_fleet`).

    A standalone replica fills the caches with one LIST per kind here, before kopf watches
    anything (see the cache module). A replica with peering lists when it starts leading: as a
    standby it would list for nothing (its caches age while it waits, and are listed afresh on
    taking over), and kopf writes its first keep-alive only after this start-up handler -- the
    LIST of a large fleet would delay the moment a restarted leader hands over to its standby.

    A scope given as kopf's glob patterns is not listed (which namespaces match is kopf's to
    find out): the caches then fill from the events alone, as fast as kopf delivers them, and
    kopf's resume handler resumes each model as it lists it.
    """
    namespaces = _listed_namespaces(memo)
    if namespaces is not None and (
        not namespaces or any(GLOB_CHARACTERS & set(namespace) for namespace in namespaces)
    ):
        logger.info("namespaces given as patterns: the caches fill from the watch events only")
        return False
    if not standalone:
        return True
    try:
        count = await cache.snapshot(api, namespaces)
    except ApiError as exc:  # the resume of the fleet lists again, until it can (see _resume_fleet)
        logger.warning("could not list the cluster's objects at start-up (%s); listing again", exc)
        return True
    logger.info("start-up: %d objects listed", count)
    return True


async def _list_afresh(
    cache: ClusterCache, api: KubeApi, memo: kopf.Memo, logger: kopf.Logger, leading: Callable[[], bool]
) -> bool:
    """List the cluster on taking over, again and again while the API fails (no reconcile runs
    before the caches are listed once); False when this replica stopped leading meanwhile."""
    failures = 0
    while leading():
        try:
            count = await cache.snapshot(api, _listed_namespaces(memo), refresh=True)
        except ApiError as exc:
            failures += 1
            delay = retry_delay(failures)
            logger.warning(
                "could not list the cluster's objects on taking over (%s); again in %.1f s", exc, delay
            )
            await asyncio.sleep(delay)
            continue
        logger.info("taking over: %d objects listed", count)
        return True
    return False


async def _resume_fleet(
    cache: ClusterCache,
    api: KubeApi,
    reconciler: Reconciler,
    memo: kopf.Memo,
    logger: kopf.Logger,
    *,
    leading: Callable[[], bool] = lambda: True,
    on_listed: Callable[[], None] = lambda: None,
) -> None:
    """This replica starts leading (the start-up, or kopf's peering resumed it after a leader
    died): reconcile every model, a few at a time in priority order, from the operator's own
    LIST -- not one by one as kopf lists them again.

    A standalone replica listed at start-up; one with peering lists now, and again each time it
    takes over (its caches are as old as its pause: kopf's watches stop while paused).
    ``on_listed`` runs once the caches are listed. kopf then lists every model and child again
    too; the reconciles that its handlers ask for find the work done. Its listing took 9.6 s at
    1000 models, and a model whose spec changed while no one led went through three of kopf's
    handler cycles (a resume handler's progress, then the update handler, then kopf's diff base,
    one PATCH of the model each): a failover at 1000 models took 35 s, 27 s after the takeover
    (issue 16).
    """
    if cache.listed_seconds_ago() > FRESH_LIST_SECONDS and not await _list_afresh(
        cache, api, memo, logger, leading
    ):
        return  # paused again while it listed: the new leader resumes the fleet
    on_listed()
    if not leading():
        return
    changed = cache.models_changed_since_reconciled
    for key in cache.listed_models():
        # A spec change that no replica reconciled (made while no one led) goes first.
        reconciler.trigger(*key, delay=0, priority=URGENT if key in changed else BACKGROUND)


def _watch_specs(
    cache: ClusterCache, api: KubeApi, reconciler: Reconciler, *, active: Callable[[], bool]
) -> list[asyncio.Task[None]]:
    """Watch each collection of models listed at start-up for spec changes, from that list on;
    a change is reconciled at once, ahead of the fleet's resume (see the spec_watch module)."""
    generations = Generations()
    models = cache["models"]
    for key in models:
        generations.advanced(key, max(models[key]))

    def changed(key: tuple[str, str]) -> None:
        reconciler.trigger(*key, delay=0, priority=URGENT)

    return [
        asyncio.create_task(SpecWatch(api, path, since, generations, changed, active=active).run_forever())
        for path, since in cache.models_listed.items()
    ]


# -- the QuantizedModel --------------------------------------------------------------------------


def kopf_drives_the_models(memo: Any, **_: Any) -> bool:
    """Whether kopf's resume, create and update handlers are needed: only when the operator could
    not list the models itself (then it has no watch of their specs either). Otherwise they are
    not even selected -- a selected handler costs kopf a handler cycle and a PATCH of its progress
    or diff base on every model it handles."""
    return not memo.get("lists_the_fleet", False)


@kopf.on.resume(*MODEL, when=kopf_drives_the_models)
async def resume_model(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Start-up (or a new leader), for a scope the operator did not list: every model is
    revisited, in the background and a few at a time, so that kopf goes on handling events -- a
    user's change overtakes the queue."""
    reconciler: Reconciler = memo.reconciler
    reconciler.trigger(str(namespace), name, delay=0, priority=BACKGROUND)


@kopf.on.create(*MODEL, when=kopf_drives_the_models)
@kopf.on.update(*MODEL, when=kopf_drives_the_models)
async def reconcile_model(name: str, namespace: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A created or changed model, where kopf drives the models: reconciled at once, and the
    handler waits for it, so that kopf retries it when it fails."""
    reconciler: Reconciler = memo.reconciler
    if reconciler.queued(str(namespace), name) and not reconciler.stopped:
        # A reconcile is queued that has not started (a revisit of every model, say): it reads
        # the model when it starts, so it covers this change, and it retries on its own when the
        # API fails. Waiting for it here would hold kopf's worker and this body for as long as
        # the queue is long.
        reconciler.trigger(str(namespace), name, delay=0, priority=URGENT)
        return
    # A reconcile that ran while this handler waited for the model's lock may have planned this
    # version already: then only its verdict on the spec matters.
    version = body.get("metadata", {}).get("resourceVersion")
    try:
        plan = await reconciler.reconcile(str(namespace), name, unless_planned=version)
    except ApiError as exc:
        if retryable(exc) or exc.status == 404:
            delay = retry_delay(reconciler.note_failure((str(namespace), name)))
            raise kopf.TemporaryError(f"API: {exc}; retrying in {delay:.1f} s", delay=delay) from exc
        if exc.status == 401:
            raise kopf.TemporaryError(
                f"API refused the operator's credentials ({exc}): its token expired or was revoked, "
                "and reading it again did not help; check the service account and its token",
                delay=REFUSED_RETRY_SECONDS,
            ) from exc
        if exc.status == 403:
            raise kopf.TemporaryError(
                f"API refused ({exc}); check the operator's RBAC", delay=REFUSED_RETRY_SECONDS
            ) from exc
        raise kopf.PermanentError(f"API rejected a request: {exc}") from exc
    if reconciler.stopped:  # not reconciled: kopf must not count the change as handled
        raise kopf.TemporaryError(
            "the operator is stopping; the next leader reconciles this change", delay=60
        )
    invalid = (
        plan.invalid_spec
        if plan is not None
        else reconciler.planned_version(str(namespace), name, version)[1]
    )
    if invalid:
        raise kopf.PermanentError(f"invalid spec: {invalid}")


@kopf.on.event(*MODEL)
async def model_event(
    type: str, body: kopf.Body, name: str, namespace: str | None, memo: Any, **_: Any
) -> None:
    memo.events.remember_context()
    cache: ClusterCache = memo.cache
    cache.observe("models", type, body)
    reconciler: Reconciler = memo.reconciler
    key = (str(namespace), name)
    reruns: dict[tuple[str, str], str | None] = memo.reruns
    if type == "DELETED":
        reconciler.forget(*key)
        reruns.pop(key, None)
        return
    # kopf counts every qfleet.dev/ annotation as its own (its diff base and progress live
    # there), so a new qfleet.dev/rerun value reaches no update handler: it is caught here.
    rerun = (body.get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_RERUN)
    if key in reruns and reruns[key] != rerun:
        reconciler.trigger(*key, priority=URGENT)
    reruns[key] = rerun


# -- children and nodes: their changes trigger a reconcile of the owner ------------------------------


def _child_changed(memo: Any, index: str, type: str | None, body: kopf.Body) -> None:
    memo.events.remember_context()
    cache: ClusterCache = memo.cache
    key = cache.observe(index, type, body)
    if key is not None:  # the start-up LIST saw it as it is: nothing new for the planner
        reconciler: Reconciler = memo.reconciler
        reconciler.trigger(*key)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED, annotations=MODEL_NAME)
async def job_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "jobs", type, body)


@kopf.on.event("v1", "pods", labels=QUANTIZER_PODS, annotations=MODEL_NAME)
async def quantizer_pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "pods", type, body)


@kopf.on.event("v1", "pods", labels=SERVER_PODS, annotations=MODEL_NAME)
async def server_pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "server_pods", type, body)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED, annotations=MODEL_NAME)
async def deployment_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "deployments", type, body)


@kopf.on.event("v1", "services", labels=OWNED, annotations=MODEL_NAME)
async def service_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "services", type, body)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED, annotations=MODEL_NAME)
async def pdb_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    _child_changed(memo, "pdbs", type, body)


@kopf.on.event("v1", "nodes")
async def node_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.events.remember_context()
    cache: ClusterCache = memo.cache
    if cache.observe("nodes", type, body) == NODES_KEY:
        reconciler: Reconciler = memo.reconciler
        reconciler.nodes_changed()
