"""Operator settings come from QFLEET_* environment variables, with clear errors."""

from __future__ import annotations

import pytest

from qfleet.errors import InputError
from qfleet.fleet.config import FleetConfig
from qfleet.operator.settings import OperatorSettings


def test_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.fleet == FleetConfig()
    assert settings.peering is None and settings.metrics_port is None and settings.resync_seconds == 300


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
            "QFLEET_METRICS_PORT": "9090",
            "QFLEET_LOG_FORMAT": "json",
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
    assert fleet.log_format == "json"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("QFLEET_BENCHMARK_SECONDS", "soon", "not a number"),
        ("QFLEET_BENCHMARK_SECONDS", "0", ">= 0.1"),
        ("QFLEET_JOB_BACKOFF_LIMIT", "1.5", "not an integer"),
        ("QFLEET_IMAGE_PULL_POLICY", "Sometimes", "Always, IfNotPresent, Never"),
        ("QFLEET_RESYNC_SECONDS", "nan", ">= 1"),
        ("QFLEET_LOG_FORMAT", "xml", "text, json"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        OperatorSettings.from_env({name: value})
    assert name in str(caught.value) and words in str(caught.value)
