"""The operator never writes its credentials anywhere: not in its log (even with ``--debug``, even
on the error paths that print failed requests), not in Events, not in the resources' status.

The real ``qfleet operator`` runs against the emulated API server with a kubeconfig that holds a
bearer token (and, in the second case, a username and password), while the API server answers
some requests with 500, 503 and 403 (a 401 makes kopf drop the credentials and exit:
``tests/integration/test_faults_operator.py`` covers it), so that kopf's and qfleet's error reporting runs too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import EVENTS, Cluster, Fault, running_cluster
from tests.support.operator_fixtures import NAMESPACE, model_body

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cluster:
        await cluster.add_namespace(NAMESPACE)
        yield cluster


def use_credentials(cluster: Cluster, user: dict[str, str]) -> None:
    """Make the operator's kubeconfig carry ``user`` (instead of the harness's test token)."""

    def write() -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": str(cluster.server.url).rstrip("/")}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
        cluster.kubeconfig.write_text(yaml.safe_dump(config))
        return cluster.kubeconfig

    cluster.write_kubeconfig = write  # type: ignore[method-assign]


def everything_the_operator_wrote(cluster: Cluster) -> str:
    stored = [obj.raw for obj in list(cluster.emulator.objects.values()) if not obj.deleted]
    return cluster.operator_log() + "\n" + json.dumps(stored)


async def exercise(cluster: Cluster) -> asyncio.subprocess.Process:
    """Start the operator with --debug through errors, a valid and an invalid model."""
    for fault in (
        Fault(r"/quantizedmodels/calm$", method="GET", status=500, times=2, user_agent="qfleet-operator"),
        Fault(r"/quantizedmodels/calm/status$", method="PATCH", status=503, times=1),
        # kopf's own request (its LIST of the models), which kopf retries and logs.
        Fault(r"/quantizedmodels$", method="GET", status=500, times=2, user_agent="kopf", watch=False),
        Fault(r"/events$", method="POST", status=403, times=1),
    ):
        cluster.emulator.inject(fault)
    operator = await cluster.start_operator("--namespace", NAMESPACE, "--debug")
    await cluster.apply_model(model_body("calm"))  # no node of its tier: it waits, with conditions
    broken = model_body("broken")
    broken["spec"]["targets"] = "avx2"
    await cluster.apply_model(broken)

    def settled() -> bool:
        phases = [
            ((cluster.model(NAMESPACE, n) or {}).get("status") or {}).get("phase") for n in ("calm", "broken")
        ]
        return phases == ["Pending", "Failed"] and bool(cluster.objects(EVENTS, NAMESPACE))

    await cluster.wait_for("both models handled", settled, timeout=60)
    await asyncio.sleep(1.0)
    assert operator.returncode is None
    await cluster.stop_operator(operator)
    return operator


async def test_a_bearer_token_is_never_written(cluster: Cluster) -> None:
    token = f"qfleet-secret-{uuid.uuid4().hex}"
    use_credentials(cluster, {"token": token})
    await exercise(cluster)
    written = everything_the_operator_wrote(cluster)
    assert "injected fault" in written and "Request attempt" in written  # the error paths ran
    assert token not in written
    assert token[-16:] not in written  # not even a part of it
    assert "Bearer" not in written


async def test_a_password_is_never_written(cluster: Cluster) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    use_credentials(cluster, {"username": "operator", "password": password})
    await exercise(cluster)
    written = everything_the_operator_wrote(cluster)
    encoded = base64.b64encode(f"operator:{password}".encode()).decode()
    for secret in (password, encoded, "Basic "):
        assert secret not in written, secret


def test_the_check_would_see_a_leak(tmp_path: Path) -> None:
    """The control: the log file the checks read is the operator's own, written as it runs."""
    cluster: Any = Cluster.__new__(Cluster)
    cluster.root = tmp_path
    (tmp_path / "operator.log").write_text("GET /api -> Authorization: Bearer qfleet-secret-x\n")
    cluster.emulator = type("E", (), {"objects": {}})()
    assert "qfleet-secret-x" in everything_the_operator_wrote(cluster)
