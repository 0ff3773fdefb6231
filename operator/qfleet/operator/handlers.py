"""kopf handlers: thin. They keep indices, call the reconciler, and turn errors into kopf's.

Errors, on purpose:

- an invalid spec is written to the status first, then raised as ``kopf.PermanentError``: the
  same spec will never work, kopf stops retrying until the spec changes;
- an unavailable API (5xx, 429, connection, timeout) or a 409 Conflict is a
  ``kopf.TemporaryError`` whose delay backs off exponentially (0.5 s to a minute, see
  :func:`~qfleet.operator.applier.retry_delay`); a 403 one with a long delay (someone has to
  fix RBAC; the resource will not change);
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
import logging
import os
import random
import sys
from typing import Any

import kopf

from qfleet.fleet import names
from qfleet.fleet.nodes import node_info
from qfleet.fleet.planner import Event
from qfleet.operator.applier import NODES_KEY, Reconciler, retry_delay, retryable
from qfleet.operator.kube import ApiError, KubeApi, load_credentials
from qfleet.operator.metrics import Metrics
from qfleet.operator.settings import OperatorSettings

MODEL = (names.GROUP, names.VERSION, names.PLURAL)
OWNED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
#: Only the quantization Jobs' pods matter (serving pods are seen through their Deployment).
QUANTIZER_PODS = {**OWNED, names.LABEL_COMPONENT: names.COMPONENT_QUANTIZER}
MODEL_NAME = {names.ANNOTATION_MODEL_NAME: kopf.PRESENT}
#: Serving pods matter too: Pending as unschedulable, or crash-looping in a rollout.
SERVER_PODS = {**OWNED, names.LABEL_COMPONENT: names.COMPONENT_SERVER}
#: Kubernetes keeps event messages to 1 KiB.
EVENT_MESSAGE_LIMIT = 1000
#: Seconds kopf gets to stop cleanly after one of its core tasks failed, before the process exits.
KOPF_FAILURE_GRACE_SECONDS = 10.0
#: Exit status when kopf's core failed (any non-zero status makes Kubernetes restart the pod).
KOPF_FAILURE_EXIT_CODE = 70


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
        # kopf pauses a replica that sees a live peer of higher *or equal* priority, so replicas
        # of one Deployment need distinct priorities, or every one of them pauses.
        settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)
        settings.peering.mandatory = True
    settings.peering.clusterwide = bool(memo.get("clusterwide", False))
    # Re-open watches now and then, so a silently dropped connection does not go unnoticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330

    metrics = Metrics()
    port = memo.get("metrics_port")
    port = options.metrics_port if port is None else port
    if port:
        metrics.serve(int(port))
        logger.info("metrics on :%d/metrics", port)
    api = KubeApi(load_credentials(), reload=load_credentials)  # rotating service-account tokens
    reconciler = Reconciler(api, options, metrics, post_event=_post_event)
    memo.reconciler = reconciler
    memo.resync = asyncio.create_task(reconciler.resync_forever())
    fleet = options.fleet
    logger.info(
        "qfleet operator: toolkit %s, server %s, benchmark %gs",
        fleet.toolkit_image,
        fleet.server_image,
        fleet.benchmark_seconds,
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    resync = memo.get("resync")
    if resync is not None:
        resync.cancel()
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.close()


def _post_event(model: Any, event: Event) -> None:
    kopf.event(model, type=event.type, reason=event.reason, message=event.message[:EVENT_MESSAGE_LIMIT])


# -- indices: what the reconciler reads ---------------------------------------------------------


@kopf.index(*MODEL)
def qfleet_models(namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    return {(str(namespace), name): True}


@kopf.index("batch", "v1", "jobs", labels=OWNED, annotations=MODEL_NAME)
def qfleet_jobs(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): _summary(body)}


@kopf.index("v1", "pods", labels=QUANTIZER_PODS, annotations=MODEL_NAME)
def qfleet_pods(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): _summary(body)}


@kopf.index("v1", "pods", labels=SERVER_PODS, annotations=MODEL_NAME)
def qfleet_server_pods(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    status = body.get("status") or {}
    # Only what the planner reads: a ready pod's status is small, a failing one says why.
    summary = _summary(body)
    summary["status"] = {
        "phase": status.get("phase"),
        "conditions": [
            dict(item) for item in status.get("conditions") or [] if item.get("type") == "PodScheduled"
        ],
        "containerStatuses": [
            {"ready": item.get("ready"), "restartCount": item.get("restartCount"), "state": item.get("state")}
            for item in status.get("containerStatuses") or []
        ],
    }
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): summary}


@kopf.index("v1", "services", labels=OWNED, annotations=MODEL_NAME)
def qfleet_services(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): _summary(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=OWNED, annotations=MODEL_NAME)
def qfleet_pdbs(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): _summary(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED, annotations=MODEL_NAME)
def qfleet_deployments(
    namespace: str | None, annotations: kopf.Annotations, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    summary = _summary(body)
    summary["spec"] = {"replicas": (body.get("spec") or {}).get("replicas")}
    return {(str(namespace), annotations[names.ANNOTATION_MODEL_NAME]): summary}


@kopf.index("v1", "nodes")
def qfleet_nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    info = node_info(body)
    return {NODES_KEY: info} if info is not None else {}


def _summary(body: kopf.Body) -> dict[str, Any]:
    """What the planner reads of a child: its metadata and status (a Job's spec is not needed)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "status": dict(body.get("status") or {}),
    }


# -- the QuantizedModel --------------------------------------------------------------------------


@kopf.on.resume(*MODEL)
@kopf.on.create(*MODEL)
@kopf.on.update(*MODEL)
async def reconcile_model(name: str, namespace: str | None, memo: Any, **kwargs: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.bind(kwargs)
    try:
        plan = await reconciler.reconcile(str(namespace), name)
    except ApiError as exc:
        if retryable(exc) or exc.status == 404:
            delay = retry_delay(reconciler.note_failure((str(namespace), name)))
            raise kopf.TemporaryError(f"API: {exc}; retrying in {delay:.1f} s", delay=delay) from exc
        if exc.status == 401:
            raise kopf.TemporaryError(
                f"API refused the operator's credentials ({exc}): its token expired or was revoked, "
                "and reading it again did not help; check the service account and its token",
                delay=60,
            ) from exc
        if exc.status == 403:
            raise kopf.TemporaryError(f"API refused ({exc}); check the operator's RBAC", delay=60) from exc
        raise kopf.PermanentError(f"API rejected a request: {exc}") from exc
    if plan is not None and plan.invalid_spec:
        raise kopf.PermanentError(f"invalid spec: {plan.invalid_spec}")


@kopf.on.event(*MODEL)
async def model_event(type: str, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    if type == "DELETED":
        reconciler: Reconciler = memo.reconciler
        reconciler.forget(str(namespace), name)


# -- children and nodes: their changes trigger a reconcile of the owner ------------------------------


@kopf.on.event("batch", "v1", "jobs", labels=OWNED, annotations=MODEL_NAME)
@kopf.on.event("v1", "pods", labels=QUANTIZER_PODS, annotations=MODEL_NAME)
@kopf.on.event("v1", "pods", labels=SERVER_PODS, annotations=MODEL_NAME)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED, annotations=MODEL_NAME)
@kopf.on.event("v1", "services", labels=OWNED, annotations=MODEL_NAME)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED, annotations=MODEL_NAME)
async def child_event(namespace: str | None, annotations: kopf.Annotations, memo: Any, **kwargs: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.bind(kwargs)
    reconciler.trigger(str(namespace), annotations[names.ANNOTATION_MODEL_NAME])


@kopf.on.event("v1", "nodes")
async def node_event(memo: Any, **kwargs: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.bind(kwargs)
    reconciler.nodes_changed()
