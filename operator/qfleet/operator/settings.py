"""Operator settings from environment variables (the Helm chart sets them).

====================================  ===========================================================
``QFLEET_TOOLKIT_IMAGE``              image of the quantization Jobs (``qfleet pipeline``)
``QFLEET_SERVER_IMAGE``               image of the serving Deployments (``qfleet serve``)
``QFLEET_IMAGE_PULL_POLICY``          imagePullPolicy of both (IfNotPresent)
``QFLEET_BENCHMARK_SECONDS``          seconds per benchmark in a Job (30)
``QFLEET_JOB_BACKOFF_LIMIT``          pod retries of a Job (1)
``QFLEET_JOB_DEADLINE_SECONDS``       activeDeadlineSeconds of a Job (10800)
``QFLEET_JOB_TTL_SECONDS``            ttlSecondsAfterFinished of a Job (86400)
``QFLEET_JOB_MEMORY``                 memory of a Job (8Gi)
``QFLEET_JOB_SERVICE_ACCOUNT``        service account of the Jobs (the namespace's default)
``QFLEET_DEFAULT_CPU``                CPU per replica when serving.resources names none (4)
``QFLEET_RUN_AS_USER``                uid/gid of the pods (65532, the images' user; ``auto``: none, the platform assigns it)
``QFLEET_RESYNC_SECONDS``             how often every model is reconciled regardless of events (300)
``QFLEET_PEERING``                    kopf peering name for leader election (none: standalone)
``QFLEET_PEERING_LIFETIME``           seconds a replica's peering keep-alive stays valid: how long a
                                      standby waits after the leader died (15; kopf's own is 60)
``QFLEET_METRICS_PORT``               port of /metrics (the --metrics-port option wins)
``QFLEET_LOG_FORMAT``                 text or json: the operator's logs and those of its Jobs and servers
``QFLEET_POD_DEFAULTS``               JSON object: pod knobs of every Job and replica (tolerations,
                                      imagePullSecrets, priorityClassName, topologySpreadConstraints,
                                      podLabels, podAnnotations, serviceAccountName); a target's own
                                      knobs win ({})
``QFLEET_PROGRESS_DEADLINE_SECONDS``  progressDeadlineSeconds of the serving Deployments (600)
``QFLEET_MAX_RUNNING_JOBS``           most quantization Jobs running at once, operator-wide; 0 means
                                      no limit (4)
``QFLEET_CONCURRENT_RECONCILES``      most reconciles at once, the most urgent first (8)
====================================  ===========================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from qfleet.errors import InputError
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.pods import KNOB_KEYS, KnobError, PodKnobs, parse_pod_knobs

PREFIX = "QFLEET_"
#: kopf renews a keep-alive 5-10 s before its lifetime ends (at least every second): below this,
#: a renewal that is a little late lets a healthy leader look dead.
MIN_PEERING_LIFETIME = 10


@dataclass(frozen=True)
class OperatorSettings:
    fleet: FleetConfig = field(default_factory=FleetConfig)
    resync_seconds: float = 300.0
    peering: str | None = None
    #: Seconds a peering keep-alive stays valid (kopf renews it 5-10 s before it lapses). A
    #: standby takes over only once the dead leader's has lapsed: kopf's 60 s doubled a failover
    #: at 1000 models (issue 16). Shorter means more keep-alive writes, and less tolerance of
    #: clock skew between the replicas' nodes (the peers compare each other's timestamps).
    peering_lifetime: int = 15
    metrics_port: int | None = None
    #: Most quantization Jobs running at once across every model (0: no limit): each one holds
    #: a whole replica's CPU for the benchmark, so a burst of new models cannot crowd out serving.
    max_running_jobs: int = 4
    #: Most reconciles at once. Each waits on the API server most of the time; a few keep it busy,
    #: more only lengthen the line in front of an urgent change (a user's edit during start-up).
    concurrent_reconciles: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        defaults = FleetConfig()
        reader = _Reader(env)
        fleet = FleetConfig(
            toolkit_image=reader.text("TOOLKIT_IMAGE", defaults.toolkit_image),
            server_image=reader.text("SERVER_IMAGE", defaults.server_image),
            image_pull_policy=reader.choice(
                "IMAGE_PULL_POLICY", defaults.image_pull_policy, ("Always", "IfNotPresent", "Never")
            ),
            benchmark_seconds=reader.number("BENCHMARK_SECONDS", defaults.benchmark_seconds, minimum=0.1),
            job_backoff_limit=reader.integer("JOB_BACKOFF_LIMIT", defaults.job_backoff_limit, minimum=0),
            job_deadline_seconds=reader.integer(
                "JOB_DEADLINE_SECONDS", defaults.job_deadline_seconds, minimum=60
            ),
            job_ttl_seconds=reader.integer("JOB_TTL_SECONDS", defaults.job_ttl_seconds, minimum=0),
            job_memory=reader.text("JOB_MEMORY", defaults.job_memory),
            default_cpu=reader.text("DEFAULT_CPU", defaults.default_cpu),
            run_as_user=reader.user("RUN_AS_USER", defaults.run_as_user),
            job_service_account=reader.text("JOB_SERVICE_ACCOUNT", "") or None,
            log_format=reader.choice("LOG_FORMAT", defaults.log_format, ("text", "json")),
            pod_defaults=reader.pod_knobs("POD_DEFAULTS"),
            progress_deadline_seconds=reader.integer(
                "PROGRESS_DEADLINE_SECONDS", defaults.progress_deadline_seconds, minimum=1
            ),
        )
        port = reader.text("METRICS_PORT", "")
        return cls(
            fleet=fleet,
            resync_seconds=reader.number("RESYNC_SECONDS", 300.0, minimum=1.0),
            peering=reader.text("PEERING", "") or None,
            peering_lifetime=reader.integer(
                "PEERING_LIFETIME", cls.peering_lifetime, minimum=MIN_PEERING_LIFETIME
            ),
            metrics_port=reader.integer("METRICS_PORT", 0, minimum=0) if port else None,
            max_running_jobs=reader.integer("MAX_RUNNING_JOBS", cls.max_running_jobs, minimum=0),
            concurrent_reconciles=reader.integer(
                "CONCURRENT_RECONCILES", cls.concurrent_reconciles, minimum=1
            ),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        value = self.env.get(PREFIX + name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.text(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise InputError(f"{PREFIX}{name}={raw!r} is not an integer") from None
        if value < minimum:
            raise InputError(f"{PREFIX}{name}={value} must be >= {minimum}")
        return value

    def user(self, name: str, default: int | None) -> int | None:
        """A uid, or ``auto``: the platform assigns one (OpenShift's restricted-v2 SCC)."""
        if self.text(name, "").strip().lower() == "auto":
            return None
        return self.integer(name, default if default is not None else 65532, minimum=1)

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.text(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{PREFIX}{name}={raw!r} is not a number") from None
        if not math.isfinite(value) or value < minimum:
            raise InputError(f"{PREFIX}{name}={raw} must be a number >= {minimum}")
        return value

    def pod_knobs(self, name: str) -> PodKnobs:
        """A JSON object with the keys of a target's pod knobs; empty or unset: none."""
        raw = self.text(name, "{}")
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{PREFIX}{name} is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(document, dict):
            raise InputError(f"{PREFIX}{name} must be a JSON object, got {type(document).__name__}")
        unknown = sorted(set(document) - set(KNOB_KEYS))
        if unknown:
            raise InputError(
                f"{PREFIX}{name} has unknown key(s) {', '.join(unknown)}; known: {', '.join(KNOB_KEYS)}"
            )
        try:
            return parse_pod_knobs(document, PREFIX + name)
        except KnobError as exc:
            raise InputError(str(exc)) from None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise InputError(f"{PREFIX}{name}={value!r} must be one of {', '.join(choices)}")
        return value
