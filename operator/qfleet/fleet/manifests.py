"""Builders of the children a QuantizedModel owns: quantization Jobs and serving Deployments.

Pure functions from the spec to plain dicts, ready to send to the API server. Every pod they
describe meets the "restricted" Pod Security Standard: non-root, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, a read-only root filesystem (``/tmp`` is an
emptyDir) and no service-account token (neither the pipeline nor the server talks to the API).

Models and data on claims are mounted; those in object storage (``s3://``, ``https://``) are
read by the pods themselves: the Job's pipeline downloads its inputs and publishes its artifacts,
and a serving pod's init container (``qfleet fetch``) copies its model, verified, into an
emptyDir that the server reads. Credentials reach only those containers, by reference to the
spec's Secret (``envFrom``): the operator never reads a Secret.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qfleet import defaults
from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.nodes import parse_cpu
from qfleet.fleet.pods import PodKnobs, apply_pod_knobs, merged
from qfleet.fleet.spec import DEFAULTS, ModelSpec, StorageSpec
from qfleet.fleet.uris import ArtifactUri, InputUri, PvcUri, S3Uri, claims_of, in_pod
from qfleet.isa import node_affinity
from qfleet.pipeline import PipelineSpec
from qfleet.serving.settings import DEFAULT_GRPC_PORT

TERMINATION_LOG = defaults.TERMINATION_LOG
#: Exit codes of ``qfleet`` for user errors (bad input, wrong ISA): retrying cannot help.
USER_ERROR_EXIT_CODES = (2, 3)
PIPELINE_CONTAINER = "pipeline"
SERVER_CONTAINER = "server"
#: The serving container's gRPC port (the Open Inference Protocol's GRPCInferenceService), named
#: ``grpc`` in the pod and in the Service; REST stays on ``config.server_port`` (``http``).
GRPC_PORT = DEFAULT_GRPC_PORT
GRPC_PORT_NAME = "grpc"
FETCH_CONTAINER = "fetch-model"
TMP_VOLUME = "tmp"
#: The emptyDir a serving pod's init container fetches an object-storage model into.
MODEL_VOLUME = "model"
MODEL_DIR = "/var/lib/qfleet/model"
#: Where the store's CA bundle (``spec.storage.caBundle``) is mounted.
CA_VOLUME = "storage-ca"
CA_DIR = "/etc/qfleet/storage-ca"


@dataclass(frozen=True)
class Owner:
    """The QuantizedModel that owns the children (for names, labels and ownerReferences)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def cpu_budget(spec: ModelSpec, config: FleetConfig) -> str:
    """The CPU of one replica: its limit, else its request, else the operator's default."""
    return (
        spec.resources.get("limits", {}).get("cpu")
        or spec.resources.get("requests", {}).get("cpu")
        or (config.default_cpu)
    )


def threads_for(spec: ModelSpec, config: FleetConfig) -> int:
    """Inference threads: as many as whole CPUs in the budget (at least one)."""
    if spec.serving_threads is not None:
        return spec.serving_threads
    return threads_of_cpu(cpu_budget(spec, config))


def threads_of_cpu(cpu: str) -> int:
    try:
        return max(1, math.floor(parse_cpu(cpu)))
    except ValueError:
        return 1


def knobs_for(spec: ModelSpec, tier: str, config: FleetConfig) -> PodKnobs:
    """The pod knobs of ``tier``'s pods: the target's over the operator's defaults."""
    return merged(config.pod_defaults, spec.target(tier).pod)


def artifacts_dir(owner: Owner, spec: ModelSpec, tier: str, key: str) -> ArtifactUri:
    """Where a pipeline writes: ``<artifacts>/<model>/<pipeline key>/<tier>``."""
    return spec.artifacts.join(owner.name, key, tier)


def pipeline_inputs(spec: ModelSpec, config: FleetConfig, *, rerun: str | None = None) -> dict[str, Any]:
    """Everything that changes a pipeline's artifacts or measured FPS: the pipeline key's input.

    A sha256 pin is part of it only when set, and the serving batch only when it is not the
    default, so models without pins or batching keep the keys they had.
    """
    source: dict[str, Any] = {"format": spec.source_format, "uri": str(spec.source), "epoch": spec.epoch}
    quantization: dict[str, Any] = {
        "preset": spec.preset,
        "subsetSize": spec.subset_size,
        "calibration": str(spec.calibration),
    }
    validation: dict[str, Any] = {
        "lfw": str(spec.lfw),
        "maxDrop": spec.max_drop,
        "minAccuracy": spec.min_accuracy,
    }
    control = spec.accuracy_control
    if control.enabled:  # part of the key only when on: other models keep the keys they had
        quantization["accuracyControl"] = {
            "maxIterations": control.max_iterations,
            "timeoutSeconds": control.timeout_s,
        }
    for section, key, pin in (
        (source, "sha256", spec.source_sha256),
        (quantization, "calibrationSha256", spec.calibration_sha256),
        (validation, "lfwSha256", spec.lfw_sha256),
    ):
        if pin is not None:
            section[key] = pin
    inputs: dict[str, Any] = {
        "source": source,
        "quantization": quantization,
        "validation": validation,
        "image": config.toolkit_image,
        # The benchmark runs with the serving CPU budget: another budget, another FPS per replica.
        "cpu": cpu_budget(spec, config),
        "threads": threads_for(spec, config),
        "rerun": rerun,
    }
    # The Job benchmarks at the batch the servers will run: another batch, another FPS. The
    # timeout is not here: it changes no artifact and no benchmark.
    if spec.max_batch != DEFAULTS["serving.batching.maxBatch"]:
        inputs["batch"] = spec.max_batch
    return inputs


def _claim_volumes(
    uris: Iterable[InputUri], *, writable: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    for claim in sorted({uri.claim for uri in claims_of(uris)}):
        read_only = claim not in writable
        volume = f"pvc-{names.short_hash(claim)}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}},
        )
        mounts.append({"name": volume, "mountPath": PvcUri(claim, "").mount_path, "readOnly": read_only})
    return volumes, mounts


def _pod_security(config: FleetConfig) -> dict[str, Any]:
    if config.run_as_user is None:  # the platform assigns the uid and the fsGroup
        return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    return {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_user,
        # Files written to the artifacts claim belong to this group, so the server can read them.
        "fsGroup": config.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _env(threads: int, config: FleetConfig) -> list[dict[str, str]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "TQDM_DISABLE", "value": "1"},
        {"name": "OMP_NUM_THREADS", "value": str(threads)},
        # Read by the command line as its --log-format default: the pods log as the operator does.
        {"name": "QFLEET_LOG_FORMAT", "value": config.log_format},
    ]


def _reach_storage(container: dict[str, Any], storage: StorageSpec) -> list[dict[str, Any]]:
    """Let ``container`` read and write object storage: ``envFrom`` the spec's Secret, the
    connection settings as the standard variables and the CA bundle's mount; returns the
    volumes the pod needs for that (the CA bundle's, or none)."""
    container["env"] = [
        *container.get("env", []),
        *(
            {"name": name, "value": value}
            for name, value in (
                ("AWS_ENDPOINT_URL", storage.endpoint),
                ("AWS_REGION", storage.region),
                ("QFLEET_S3_ADDRESSING", storage.addressing),
                ("AWS_CA_BUNDLE", f"{CA_DIR}/{storage.ca_bundle.key}" if storage.ca_bundle else None),
            )
            if value is not None
        ),
    ]
    if storage.secret_name:
        container["envFrom"] = [{"secretRef": {"name": storage.secret_name}}]
    if storage.ca_bundle is None:
        return []
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True},
    ]
    key = storage.ca_bundle.key
    return [
        {
            "name": CA_VOLUME,
            "configMap": {"name": storage.ca_bundle.name, "items": [{"key": key, "path": key}]},
        }
    ]


def _resources(
    spec: ModelSpec, config: FleetConfig, *, memory: str | None, cpu: str | None = None
) -> dict[str, dict[str, str]]:
    """Requests equal to limits for CPU: a Guaranteed pod measures (and serves) stable FPS."""
    cpu = cpu or cpu_budget(spec, config)
    requests = dict(spec.resources.get("requests", {}))
    limits = dict(spec.resources.get("limits", {}))
    requests["cpu"] = limits["cpu"] = cpu
    if memory is not None:
        requests["memory"] = limits["memory"] = memory
    return {"requests": requests, "limits": limits}


def job_for(owner: Owner, spec: ModelSpec, tier: str, key: str, config: FleetConfig) -> dict[str, Any]:
    """The quantization Job of ``owner`` for ``tier`` and pipeline ``key``."""
    name = names.job_name(owner.name, tier, key)
    labels = {
        **names.model_labels(owner.name),
        names.LABEL_ISA: names.tier_slug(tier),
        names.LABEL_PIPELINE_KEY: key,
        names.LABEL_COMPONENT: names.COMPONENT_QUANTIZER,
        names.LABEL_NAME: "qfleet-pipeline",
    }
    annotations = {names.ANNOTATION_MODEL_NAME: owner.name}
    out = artifacts_dir(owner, spec, tier, key)
    threads = threads_for(spec, config)
    args = PipelineSpec(
        source=in_pod(spec.source),
        fmt=spec.source_format,
        epoch=spec.epoch,
        calibration=in_pod(spec.calibration),
        lfw=in_pod(spec.lfw),
        out=in_pod(out),
        expect_isa=tier,
        preset=spec.preset,
        subset_size=spec.subset_size,
        max_drop=spec.max_drop,
        min_accuracy=spec.min_accuracy,
        threads=threads,
        benchmark_seconds=config.benchmark_seconds,
        termination_log=TERMINATION_LOG,
        source_sha256=spec.source_sha256,
        calibration_sha256=spec.calibration_sha256,
        lfw_sha256=spec.lfw_sha256,
        allow_http=spec.storage.allow_http,
        accuracy_control=spec.accuracy_control.enabled,
        accuracy_control_max_iterations=spec.accuracy_control.max_iterations,
        accuracy_control_timeout=spec.accuracy_control.timeout_s,
        benchmark_batch=spec.max_batch,
    ).to_args()
    writable = {spec.artifacts.claim} if isinstance(spec.artifacts, PvcUri) else set()
    volumes, mounts = _claim_volumes(list(spec.claims), writable=writable)
    container: dict[str, Any] = {
        "name": PIPELINE_CONTAINER,
        "image": config.toolkit_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["qfleet", "pipeline"],
        "args": args,
        "env": _env(threads, config),
        "resources": _resources(spec, config, memory=config.job_memory),
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    if spec.uses_object_storage:
        volumes += _reach_storage(container, spec.storage)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "affinity": node_affinity(tier, spec.target(tier).node_selector),
        "securityContext": _pod_security(config),
        "volumes": volumes,
        "containers": [container],
    }
    if config.job_service_account:
        pod_spec["serviceAccountName"] = config.job_service_account
    template = {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}
    apply_pod_knobs(template, knobs_for(spec, tier, config), spread_selector=None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "backoffLimit": config.job_backoff_limit,
            "activeDeadlineSeconds": config.job_deadline_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            # User errors (bad input, wrong ISA) fail the Job at once instead of being retried.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": PIPELINE_CONTAINER,
                            "operator": "In",
                            "values": list(USER_ERROR_EXIT_CODES),
                        },
                    }
                ]
            },
            "template": template,
        },
    }


def serving_labels(owner: Owner, tier: str) -> dict[str, str]:
    """The labels that select one tier's serving pods."""
    return {names.LABEL_MODEL: names.label_value(owner.name), names.LABEL_ISA: names.tier_slug(tier)}


def model_selector(owner: Owner) -> dict[str, str]:
    """The labels that select every serving pod of a model (all tiers)."""
    return {
        names.LABEL_MODEL: names.label_value(owner.name),
        names.LABEL_COMPONENT: names.COMPONENT_SERVER,
    }


#: Seconds a serving pod keeps answering after it is told to stop, before the server drains:
#: time for every kube-proxy and load balancer to take it out of the Service's endpoints.
PRESTOP_SECONDS = 5
#: Seconds the server takes to answer the requests in flight after SIGTERM (``--shutdown-grace``).
SERVER_DRAIN_SECONDS = 30


@dataclass(frozen=True)
class ServingModel:
    """What one tier's pods serve: the artifact, and the CPU budget its FPS was measured with."""

    artifact: ArtifactUri
    pipeline_key: str
    fps_per_replica: float
    #: CPU per replica; None: the spec's budget now.
    cpu: str | None = None
    threads: int | None = None
    #: The batch the FPS was measured at: the servers merge up to this many faces per inference.
    batch: int = 1


def deployment_for(
    owner: Owner,
    spec: ModelSpec,
    tier: str,
    *,
    model: ServingModel,
    replicas: int,
    config: FleetConfig,
    records: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment that serves ``model`` on ``tier`` with ``replicas`` replicas.

    Only the model (and the serving settings) shape the pod template, so a camera change
    alters ``spec.replicas`` alone and restarts nothing; a new model rolls out with
    maxUnavailable 0. The pods run with the CPU budget and the batch the model's FPS was measured
    with: a new budget or batch in the spec takes effect with the model a Job measured at it
    (``spec.serving.batching.timeoutMs`` at once: it changes no FPS). ``records`` are
    annotations of the Deployment (the status records it carries, see :mod:`qfleet.fleet.names`).
    """
    artifact, pipeline_key = model.artifact, model.pipeline_key
    port = config.server_port
    cpu = model.cpu or cpu_budget(spec, config)
    threads = model.threads or (threads_of_cpu(cpu) if model.cpu else threads_for(spec, config))
    selector = serving_labels(owner, tier)
    labels = {
        **names.model_labels(owner.name),
        **selector,
        names.LABEL_COMPONENT: names.COMPONENT_SERVER,
        names.LABEL_NAME: "qfleet-server",
    }
    volumes, mounts = _claim_volumes([artifact], writable=set())
    init_containers: list[dict[str, Any]] = []
    model_path = artifact.pod_path if isinstance(artifact, PvcUri) else f"{MODEL_DIR}/{artifact.name}"
    if isinstance(artifact, S3Uri):
        fetch, fetch_volumes = _fetch_container(spec, config, artifact, cpu=cpu)
        init_containers.append(fetch)
        volumes += [{"name": MODEL_VOLUME, "emptyDir": {}}, *fetch_volumes]
        mounts.append({"name": MODEL_VOLUME, "mountPath": MODEL_DIR, "readOnly": True})
    args = [
        "--model",
        model_path,
        "--name",
        owner.name,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--grpc-port",
        str(GRPC_PORT),
        "--shutdown-grace",
        str(SERVER_DRAIN_SECONDS),
    ]
    if model.batch > 1:
        # The timeout only matters with batching: at batch 1 it stays out of the template, so
        # changing it restarts no pod that does not batch.
        args += ["--max-batch", str(model.batch), "--batch-timeout-ms", f"{spec.batch_timeout_ms:g}"]
    template: dict[str, Any] = {
        "metadata": {
            "labels": labels,
            "annotations": {
                names.ANNOTATION_MODEL_NAME: owner.name,
                names.ANNOTATION_ARTIFACT: str(artifact),
                names.LABEL_PIPELINE_KEY: pipeline_key,
                names.ANNOTATION_FPS: f"{model.fps_per_replica:g}",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "affinity": node_affinity(tier, spec.target(tier).node_selector),
            "securityContext": _pod_security(config),
            # Longer than the endpoints' removal plus the server's drain: a frame in flight when
            # a rollout or a node drain stops the pod is still answered.
            "terminationGracePeriodSeconds": PRESTOP_SECONDS + SERVER_DRAIN_SECONDS + 5,
            "volumes": volumes,
            **({"initContainers": init_containers} if init_containers else {}),
            "containers": [
                {
                    "name": SERVER_CONTAINER,
                    "image": spec.serving_image or config.server_image,
                    "imagePullPolicy": config.image_pull_policy,
                    "command": ["qfleet", "serve"],
                    "args": args,
                    "env": _env(threads, config),
                    "ports": [
                        {"name": "http", "containerPort": port, "protocol": "TCP"},
                        {"name": GRPC_PORT_NAME, "containerPort": GRPC_PORT, "protocol": "TCP"},
                    ],
                    "resources": _resources(spec, config, memory=None, cpu=cpu),
                    "securityContext": _container_security(),
                    "volumeMounts": mounts,
                    "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
                    # Loading and compiling a large IR can take a while: the startup probe
                    # holds off liveness checks until the server answers at all.
                    "startupProbe": _probe("/v2/health/live", port, period=5, failures=60),
                    "livenessProbe": _probe("/v2/health/live", port, period=10, failures=3),
                    "readinessProbe": _probe("/v2/health/ready", port, period=5, failures=2),
                }
            ],
        },
    }
    apply_pod_knobs(template, knobs_for(spec, tier, config), spread_selector=selector)
    template_hash = names.short_hash(json.dumps(template, sort_keys=True), 16)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.deployment_name(owner.name, tier),
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": {
                **(records or {}),
                names.ANNOTATION_MODEL_NAME: owner.name,
                names.ANNOTATION_ARTIFACT: str(artifact),
                names.ANNOTATION_TEMPLATE_HASH: template_hash,
            },
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "revisionHistoryLimit": 3,
            # A rollout without progress for this long is marked failed; the operator then serves
            # the tier's last good model again.
            "progressDeadlineSeconds": config.progress_deadline_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }


def _fetch_container(
    spec: ModelSpec, config: FleetConfig, artifact: S3Uri, *, cpu: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The storage initializer: ``qfleet fetch`` of the artifact's model directory into the
    pod's emptyDir, every file checked against the sha256 its ``qfleet.json`` records. A
    mismatch fails the init container, so the pod never becomes ready and the rollout keeps the
    previous pods serving. Only this container gets the store's credentials."""
    directory = S3Uri(artifact.bucket, artifact.key.rsplit("/", 1)[0] if "/" in artifact.key else "")
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": spec.serving_image or config.server_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["qfleet", "fetch"],
        "args": [str(directory), MODEL_DIR],
        "env": _env(1, config),
        # As much CPU as the server (an init container's resources do not add to the pod's).
        "resources": _resources(spec, config, memory=None, cpu=cpu),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            {"name": MODEL_VOLUME, "mountPath": MODEL_DIR},
        ],
    }
    return container, _reach_storage(container, spec.storage)


def _probe(path: str, port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def template_hash(deployment: Mapping[str, Any]) -> str | None:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_TEMPLATE_HASH)
    return str(value) if value is not None else None
