"""Operator settings come from QFLEET_* environment variables, with clear errors."""

from __future__ import annotations

import json

import pytest

from qfleet.errors import InputError
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.pods import PodKnobs
from qfleet.operator.settings import OperatorSettings


def test_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.fleet == FleetConfig()
    assert settings.peering is None and settings.metrics_port is None and settings.resync_seconds == 300
    assert settings.max_running_jobs == 4
    assert settings.peering_lifetime == 15  # a standby waits 15 s at most, not kopf's 60
    assert settings.fleet.pod_defaults == PodKnobs()
    assert settings.fleet.progress_deadline_seconds == 600


def test_environment_overrides() -> None:
    settings = OperatorSettings.from_env(
        {
            "QFLEET_TOOLKIT_IMAGE": "reg/toolkit@sha256:abc",
            "QFLEET_SERVER_IMAGE": "reg/server:2",
            "QFLEET_IMAGE_PULL_POLICY": "Always",
            "QFLEET_BENCHMARK_SECONDS": "1.5",
            "QFLEET_JOB_BACKOFF_LIMIT": "0",
            "QFLEET_JOB_TTL_SECONDS": "600",
            "QFLEET_JOB_SERVICE_ACCOUNT": "quantizer",
            "QFLEET_RUN_AS_USER": "1000",
            "QFLEET_RESYNC_SECONDS": "30",
            "QFLEET_PEERING": "qfleet",
            "QFLEET_PEERING_LIFETIME": "30",
            "QFLEET_METRICS_PORT": "9090",
            "QFLEET_LOG_FORMAT": "json",
            "QFLEET_MAX_RUNNING_JOBS": "0",
            "QFLEET_PROGRESS_DEADLINE_SECONDS": "120",
            "UNRELATED": "x",
        }
    )
    fleet = settings.fleet
    assert (fleet.toolkit_image, fleet.server_image, fleet.image_pull_policy) == (
        "reg/toolkit@sha256:abc", "reg/server:2", "Always",
    )  # fmt: skip
    assert (fleet.benchmark_seconds, fleet.job_backoff_limit, fleet.job_ttl_seconds) == (1.5, 0, 600)
    assert fleet.job_service_account == "quantizer" and fleet.run_as_user == 1000
    assert (settings.resync_seconds, settings.peering, settings.metrics_port) == (30, "qfleet", 9090)
    assert fleet.log_format == "json" and settings.peering_lifetime == 30
    assert settings.max_running_jobs == 0  # no limit
    assert fleet.progress_deadline_seconds == 120


def test_a_peering_lifetime_below_kopf_renewal_margin_is_refused() -> None:
    with pytest.raises(InputError, match="QFLEET_PEERING_LIFETIME=5 must be >= 10"):
        OperatorSettings.from_env({"QFLEET_PEERING_LIFETIME": "5"})


def test_pod_defaults_from_json() -> None:
    toleration = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    document = {
        "tolerations": [toleration],
        "imagePullSecrets": [{"name": "registry"}],
        "priorityClassName": "inference",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "podLabels": {"example.com/team": "vision"},
        "podAnnotations": {"example.com/owner": "cctv"},
        "serviceAccountName": "qfleet-pods",
    }
    knobs = OperatorSettings.from_env({"QFLEET_POD_DEFAULTS": json.dumps(document)}).fleet.pod_defaults
    assert knobs.tolerations == (toleration,)
    assert knobs.image_pull_secrets == ("registry",)
    assert knobs.priority_class_name == "inference"
    assert knobs.topology_spread_constraints is not None and len(knobs.topology_spread_constraints) == 1
    assert knobs.labels == {"example.com/team": "vision"}
    assert knobs.annotations == {"example.com/owner": "cctv"}
    assert knobs.service_account_name == "qfleet-pods"
    for empty in ("", "  ", "{}"):
        assert OperatorSettings.from_env({"QFLEET_POD_DEFAULTS": empty}).fleet.pod_defaults == PodKnobs()


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("QFLEET_BENCHMARK_SECONDS", "soon", "not a number"),
        ("QFLEET_BENCHMARK_SECONDS", "0", ">= 0.1"),
        ("QFLEET_JOB_BACKOFF_LIMIT", "1.5", "not an integer"),
        ("QFLEET_IMAGE_PULL_POLICY", "Sometimes", "Always, IfNotPresent, Never"),
        ("QFLEET_RESYNC_SECONDS", "nan", ">= 1"),
        ("QFLEET_LOG_FORMAT", "xml", "text, json"),
        ("QFLEET_MAX_RUNNING_JOBS", "-1", ">= 0"),
        ("QFLEET_MAX_RUNNING_JOBS", "many", "not an integer"),
        ("QFLEET_PROGRESS_DEADLINE_SECONDS", "0", ">= 1"),
        ("QFLEET_POD_DEFAULTS", "{tolerations: []}", "not valid JSON"),
        ("QFLEET_POD_DEFAULTS", "[]", "must be a JSON object"),
        ("QFLEET_POD_DEFAULTS", '{"toleration": []}', "unknown key(s) toleration"),
        ("QFLEET_POD_DEFAULTS", '{"tolerations": [{"operator": "Maybe"}]}', "tolerations[0].operator"),
        ("QFLEET_POD_DEFAULTS", '{"podLabels": {"qfleet.dev/model": "x"}}', "operator's own"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        OperatorSettings.from_env({name: value})
    assert name in str(caught.value) and words in str(caught.value)


def test_run_as_user_auto_leaves_the_uid_to_the_platform() -> None:
    from qfleet.fleet.manifests import Owner, job_for
    from qfleet.fleet.spec import parse_spec

    settings = OperatorSettings.from_env({"QFLEET_RUN_AS_USER": "auto"})
    assert settings.fleet.run_as_user is None
    spec = parse_spec({
        "source": {"format": "onnx", "uri": "pvc://models/m.onnx"},
        "quantization": {"calibration": "pvc://data/calib"},
        "validation": {"lfw": "pvc://data/lfw.bin"},
        "targets": [{"isa": "avx2"}],
        "artifacts": {"uri": "pvc://models/qfleet"},
    })  # fmt: skip
    job = job_for(Owner("m", "ns", "uid"), spec, "avx2", "k", settings.fleet)
    security = job["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and "runAsUser" not in security and "fsGroup" not in security
    assert OperatorSettings.from_env({"QFLEET_RUN_AS_USER": "1000"}).fleet.run_as_user == 1000
