"""Operator-wide settings that shape the objects the planner builds.

The operator fills this from environment variables (``qfleet.operator.settings``), which the
Helm chart sets; tests build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qfleet import __version__
from qfleet.fleet.pods import PodKnobs


@dataclass(frozen=True)
class FleetConfig:
    #: Image that runs ``qfleet pipeline`` in quantization Jobs.
    toolkit_image: str = f"qfleet/toolkit:{__version__}"
    #: Image that runs ``qfleet serve`` (a QuantizedModel's ``serving.image`` overrides it).
    server_image: str = f"qfleet/server:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    #: Seconds each benchmark (FP32 and INT8) of a pipeline runs.
    benchmark_seconds: float = 30.0
    #: Pod retries of a quantization Job (exit codes 2 and 3, user errors, are never retried).
    job_backoff_limit: int = 1
    job_deadline_seconds: int = 3 * 3600
    #: Finished Jobs are kept this long for `kubectl logs`; their results live on in the status.
    job_ttl_seconds: int = 24 * 3600
    #: Memory of a quantization Job (calibration and two models in memory).
    job_memory: str = "8Gi"
    #: CPU of one replica (and of the Job that measures it) when serving.resources names none.
    default_cpu: str = "4"
    #: UID/GID the pods run as (the images' non-root user).
    #: None: the pods name no uid and the platform assigns one (OpenShift's restricted-v2).
    run_as_user: int | None = 65532
    server_port: int = 8080
    #: Service account of the quantization Jobs; None uses the namespace's default.
    job_service_account: str | None = None
    #: Log format of the Jobs and servers (``text`` or ``json``), the operator's own.
    log_format: str = "text"
    #: Pod knobs of every Job and serving replica; a target's own knobs win over them.
    pod_defaults: PodKnobs = field(default_factory=PodKnobs)
    #: progressDeadlineSeconds of the serving Deployments: a rollout that makes no progress for
    #: this long is reported as stalled.
    progress_deadline_seconds: int = 600
