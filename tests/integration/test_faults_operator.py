"""Faults injected into the real operator's world: it is killed mid-pipeline, the API server
answers 500, 409, 410 Gone or slowly, pods are OOM-killed or run past their deadline, results go
missing, nodes disappear, the resource is deleted while its Job runs.

The operator is the real ``qfleet operator`` process; the API server is the KMock emulator with
the faults of :class:`cluster.Fault`; Jobs run their own ``qfleet pipeline`` on a tiny model (see
``cluster.py``). Promises checked throughout: no duplicate Job, no lost result, the served model
changes only when a gate passes, failures are bounded and reported with their reason, and the
operator process stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DEPLOYMENTS, JOBS, NODES, PODS, Cluster, Fault, PodFault
from tests.support.operator_fixtures import NAMESPACE, model_body

pytestmark = pytest.mark.timeout(180)

MODELS = "/quantizedmodels"
OPERATOR_UA = "qfleet-operator"


@pytest.fixture
async def cluster(cluster: Cluster) -> Cluster:
    """The integration tests' cluster with one avx2 node."""
    await cluster.add_node("avx2-1", "avx2")
    return cluster


# -- helpers ---------------------------------------------------------------------------------------


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.model(NAMESPACE, name) or {}).get("status") or {}


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == type_), {})


def variant(cluster: Cluster, name: str, isa: str = "avx2") -> dict[str, Any]:
    return next((v for v in status(cluster, name).get("variants") or [] if v["isa"] == isa), {})


def served_artifact(cluster: Cluster, deployment: str) -> str | None:
    found = cluster.get(DEPLOYMENTS, NAMESPACE, deployment)
    if found is None:
        return None
    args = found["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--model") + 1])


async def wait_phase(cluster: Cluster, name: str, phase: str, *, timeout: float = 90) -> dict[str, Any]:
    await cluster.wait_for(
        f"{name} phase {phase}", lambda: status(cluster, name).get("phase") == phase, timeout=timeout
    )
    return status(cluster, name)


async def start(
    cluster: Cluster, *, log_name: str = "operator", metrics_port: int | None = None, **env: str
) -> asyncio.subprocess.Process:
    metrics = ("--metrics-port", str(metrics_port)) if metrics_port is not None else ()
    return await cluster.start_operator("--namespace", NAMESPACE, *metrics, env=env, log_name=log_name)


def job_names(cluster: Cluster) -> set[str]:
    return {job["metadata"]["name"] for job in cluster.objects(JOBS, NAMESPACE)}


async def ready_model(cluster: Cluster, name: str, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    """A model quantized, gated and served; returns the operator and the served artifact."""
    operator = await start(cluster, **env)
    await cluster.apply_model(model_body(name))
    await wait_phase(cluster, name, "Ready")
    served = served_artifact(cluster, f"{name}-avx2")
    assert served is not None
    return operator, served


async def change_source(cluster: Cluster, name: str) -> None:
    """A retrained model at a new path: a new pipeline key, so a new Job."""
    target = cluster.claims["models"] / f"retrained-{name}"
    if not target.exists():
        shutil.copytree(cluster.claims["data"] / "model", target)
    source = {"format": "openvino", "uri": f"pvc://models/retrained-{name}/model.xml"}
    await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": {"source": source}})


@contextlib.contextmanager
def watching_served(cluster: Cluster, deployment: str) -> Iterator[list[str | None]]:
    """Every artifact the Deployment served while the block ran, sampled every 20 ms."""
    seen: list[str | None] = []

    async def sample() -> None:
        while True:
            current = served_artifact(cluster, deployment)
            if not seen or seen[-1] != current:
                seen.append(current)
            await asyncio.sleep(0.02)

    task = asyncio.get_running_loop().create_task(sample())
    try:
        yield seen
    finally:
        task.cancel()


def retry_delays(log: str) -> list[float]:
    return [float(value) for value in re.findall(r"retrying in ([0-9.]+) ?s", log)]


# -- the operator killed at each stage of a pipeline -------------------------------------------------


async def test_killed_while_creating_the_job_then_one_job_on_restart(cluster: Cluster) -> None:
    first = await start(cluster)
    # The Job's creation never reaches the API server's store: held, then answered 504.
    held = cluster.emulator.inject(
        Fault(r"/jobs$", method="POST", delay=120, hold=True, status=504, user_agent=OPERATOR_UA)
    )
    await cluster.apply_model(model_body("kill-create"))
    await cluster.wait_for("the Job creation in flight", lambda: held.hits >= 1)
    await cluster.stop_operator(first, kill=True)
    assert first.returncode == -signal.SIGKILL, f"not killed at this stage: exit {first.returncode}"
    cluster.emulator.heal()
    await asyncio.sleep(0.3)
    assert job_names(cluster) == set()

    second = await start(cluster, log_name="operator-2")
    await wait_phase(cluster, "kill-create", "Ready")
    (job,) = job_names(cluster)
    assert cluster.runs[job].exit_codes == [0]
    assert variant(cluster, "kill-create")["result"]["job"] == job
    assert second.returncode is None


async def test_killed_after_the_job_was_created_but_before_it_heard_so(
    cluster: Cluster, unused_tcp_port: int
) -> None:
    first = await start(cluster)
    # The Job is stored (and runs), but the answer never reaches the operator.
    held = cluster.emulator.inject(
        Fault(r"/jobs$", method="POST", delay_response=120, hold=True, user_agent=OPERATOR_UA)
    )
    cluster.release_jobs.clear()
    await cluster.apply_model(model_body("kill-created"))
    await cluster.wait_for("the Job stored", lambda: held.hits >= 1 and len(job_names(cluster)) == 1)
    await cluster.stop_operator(first, kill=True)
    assert first.returncode == -signal.SIGKILL, f"not killed at this stage: exit {first.returncode}"
    cluster.emulator.heal()

    second = await start(cluster, log_name="operator-2", metrics_port=unused_tcp_port)
    # The new operator has resumed the model (a finished reconcile) before the Job's result comes.
    await cluster.wait_for(
        "a reconcile by the new operator", lambda: cluster.reconciles(unused_tcp_port) >= 1
    )
    cluster.release_jobs.set()
    await wait_phase(cluster, "kill-created", "Ready")
    (job,) = job_names(cluster)
    assert set(cluster.created(JOBS)) == {job}  # a second attempt, if any, was a 409 no-op
    assert cluster.runs[job].exit_codes == [0]  # the pipeline ran once
    assert second.returncode is None


@pytest.mark.parametrize("gate", ["passes", "fails"])
async def test_killed_after_the_job_finished_before_its_result_was_recorded(
    cluster: Cluster, gate: str
) -> None:
    """The result lives in the finished pod until the status holds it: a restart picks it up,
    and the served model changes only if the new model passed its gate."""
    name = f"kill-{gate}"
    first, old = await ready_model(cluster, name)
    (old_job,) = job_names(cluster)
    blocked = cluster.emulator.inject(
        Fault(rf"{MODELS}/{name}/status$", method="PATCH", status=500, user_agent=OPERATOR_UA)
    )
    with watching_served(cluster, f"{name}-avx2") as served:
        if gate == "fails":
            validation = {"lfw": "pvc://data/lfw-hard.bin", "minAccuracy": 0.9}
            await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": {"validation": validation}})
        else:
            await change_source(cluster, name)
        await cluster.wait_for("the new Job", lambda: len(set(cluster.created(JOBS))) == 2)
        new_job = next(job for job in cluster.created(JOBS) if job != old_job)
        await cluster.wait_for("the new Job finished", lambda: cluster.runs.get(new_job) and
                               cluster.runs[new_job].finished.is_set(), timeout=90)  # fmt: skip
        await cluster.wait_for("the status patch refused", lambda: blocked.hits >= 2)
        assert variant(cluster, name)["result"]["job"] == old_job  # not recorded yet
        await cluster.stop_operator(first, kill=True)
        assert first.returncode == -signal.SIGKILL, f"not killed at this stage: exit {first.returncode}"
        cluster.emulator.heal()

        second = await start(cluster, log_name="operator-2")
        await cluster.wait_for(
            "the result recorded", lambda: variant(cluster, name).get("result", {}).get("job") == new_job
        )
        if gate == "passes":
            await wait_phase(cluster, name, "Ready")
            assert served_artifact(cluster, f"{name}-avx2") != old
            assert variant(cluster, name)["served"]["pipelineKey"] == status(cluster, name)["pipelineKey"]
        else:
            await wait_phase(cluster, name, "Degraded")
            assert variant(cluster, name)["state"] == "GateFailed"
            await asyncio.sleep(1.0)
    if gate == "fails":
        assert served == [old]  # never anything else, not for a moment
    else:
        assert served[0] == old and len(served) == 2
    assert set(cluster.created(JOBS)) == {old_job, new_job}
    assert cluster.runs[new_job].exit_codes == [0]  # not run again
    assert second.returncode is None


# -- API errors, watch expiry, slow and dropped requests ----------------------------------------------


async def test_server_errors_500_are_retried_with_backoff(cluster: Cluster) -> None:
    faults = [
        cluster.emulator.inject(
            Fault(rf"{MODELS}/m500$", method="GET", status=503, times=1, user_agent=OPERATOR_UA)
        ),
        cluster.emulator.inject(Fault(r"/jobs$", method="POST", status=500, times=2, user_agent=OPERATOR_UA)),
        cluster.emulator.inject(Fault(r"/deployments$", method="POST", status=500, times=1)),
        cluster.emulator.inject(Fault(rf"{MODELS}/m500/status$", method="PATCH", status=500, times=1)),
    ]
    operator = await start(cluster)
    await cluster.apply_model(model_body("m500"))
    await wait_phase(cluster, "m500", "Ready", timeout=120)
    assert all(fault.hits == fault.times for fault in faults), [(f.path, f.hits) for f in faults]
    assert len(job_names(cluster)) == 1 and len(cluster.objects(DEPLOYMENTS, NAMESPACE)) == 1
    delays = retry_delays(cluster.operator_log())
    assert len(delays) >= 4, cluster.operator_log()[-3000:]
    assert max(delays) >= 2.5 * min(delays)  # backing off, not hammering at a fixed pace
    assert operator.returncode is None


def test_retry_delays_double_from_half_a_second_to_a_minute_with_jitter() -> None:
    from qfleet.operator.applier import retry_delay

    assert [retry_delay(n, jitter=0) for n in (1, 2, 3, 4, 8, 20, 5000)] == [0.5, 1, 2, 4, 60, 60, 60]
    assert (retry_delay(3, jitter=-1), retry_delay(3, jitter=1)) == (1.6, 2.4)  # +-20%
    spread = {retry_delay(5) for _ in range(50)}
    assert len(spread) > 10 and all(6.4 <= delay <= 9.6 for delay in spread)  # models do not retry in step


async def test_conflicts_409_are_retried(cluster: Cluster) -> None:
    conflicts = [
        cluster.emulator.inject(Fault(rf"{MODELS}/m409/status$", method="PATCH", status=409, times=3)),
        cluster.emulator.inject(Fault(r"/deployments/m409-avx2$", method="PATCH", status=409, times=2)),
    ]
    operator = await start(cluster)
    await cluster.apply_model(model_body("m409", cameras=2))
    await wait_phase(cluster, "m409", "Ready", timeout=120)
    # A camera change whose Deployment patch conflicts twice still lands.
    await cluster.patch(cluster.model_path(NAMESPACE, "m409"), {"spec": {"demand": {"cameras": 30}}})
    await cluster.wait_for(
        "rescaled",
        lambda: (cluster.get(DEPLOYMENTS, NAMESPACE, "m409-avx2") or {})["spec"]["replicas"] > 1,
        timeout=60,
    )
    assert [fault.hits for fault in conflicts] == [3, 2]
    assert len(job_names(cluster)) == 1
    assert operator.returncode is None


async def test_watch_expired_410_event_relists_and_misses_nothing(cluster: Cluster) -> None:
    """The API server's usual answer to a too-old resourceVersion: an ERROR event with code 410
    in the watch stream. kopf lists again and watches on."""
    gone = [
        cluster.emulator.inject(Fault(path, method="GET", watch=True, times=2, watch_error=410))
        for path in (MODELS + "$", r"/jobs$", r"/deployments$")
    ]
    operator = await start(cluster)
    await cluster.apply_model(model_body("expired", cameras=2))
    await wait_phase(cluster, "expired", "Ready")
    assert all(fault.hits == 2 for fault in gone)
    assert cluster.emulator.request_counts["LIST", "quantizedmodels", ""] >= 3  # listed again twice
    await cluster.patch(cluster.model_path(NAMESPACE, "expired"), {"spec": {"demand": {"cameras": 30}}})
    await cluster.wait_for(
        "the change seen",
        lambda: (cluster.get(DEPLOYMENTS, NAMESPACE, "expired-avx2") or {})["spec"]["replicas"] > 1,
    )
    assert operator.returncode is None


async def test_watch_refused_with_http_410_exits_and_a_restart_recovers(cluster: Cluster) -> None:
    """A watch request answered with HTTP status 410 (as the API server's watch cache does for an
    expired resourceVersion) is fatal to kopf's watcher, and kopf's shutdown can hang. The
    operator exits instead of hanging (crash-only); Kubernetes restarts it, and the new process
    catches up."""
    gone = cluster.emulator.inject(
        Fault(MODELS + "$", method="GET", watch=True, times=1, status=410, user_agent="kopf")
    )
    await cluster.apply_model(model_body("refused", cameras=2))
    first = await start(cluster)
    await cluster.wait_for("the watch refused", lambda: gone.hits == 1)
    await asyncio.wait_for(first.wait(), 40)  # not a hang
    assert first.returncode != 0
    assert "exiting so that the operator is restarted" in cluster.operator_log() or first.returncode == 1

    second = await start(cluster, log_name="operator-2")  # what the Deployment's restart does
    await wait_phase(cluster, "refused", "Ready")
    assert len(job_names(cluster)) == 1 and second.returncode is None


async def test_credentials_refused_with_401_exit_and_a_restart_recovers(cluster: Cluster) -> None:
    """A 401 makes kopf drop its credentials; re-reading the same token gives nothing new, so
    kopf stops. The operator exits (it does not hang); a restart (a rotated token, in a cluster)
    carries on."""
    refused = cluster.emulator.inject(
        Fault(MODELS + "$", method="GET", status=401, times=1, user_agent="kopf")
    )
    await cluster.apply_model(model_body("unauthorised", cameras=2))
    first = await start(cluster)
    await cluster.wait_for("the request refused", lambda: refused.hits == 1)
    await asyncio.wait_for(first.wait(), 40)
    assert first.returncode != 0

    second = await start(cluster, log_name="operator-2")
    await wait_phase(cluster, "unauthorised", "Ready")
    assert len(job_names(cluster)) == 1 and second.returncode is None


async def test_a_rotated_token_keeps_the_operator_reconciling(cluster: Cluster) -> None:
    """Bound service-account tokens rotate: the old one starts being refused (401) and the file
    holds a new one. The operator's own writes read the credentials again and carry on, so do
    kopf's watches (its login reads them again), and the spec watch open on the old token goes on
    streaming (it used to hang once its session was closed): a camera change still rescales, and
    so does the next one, no restart."""
    operator, _ = await ready_model(cluster, "rotated")
    cluster.write_kubeconfig(token="rotated-token")
    expired = cluster.emulator.inject(Fault(".", status=401, token="test-token"))
    await cluster.patch(cluster.model_path(NAMESPACE, "rotated"), {"spec": {"demand": {"cameras": 12}}})
    await cluster.wait_for(
        "the camera change applied with the new token",
        lambda: status(cluster, "rotated").get("demand", {}).get("cameras") == 12,
        timeout=90,
    )
    found = cluster.get(DEPLOYMENTS, NAMESPACE, "rotated-avx2") or {}
    assert found["spec"]["replicas"] == variant(cluster, "rotated")["replicas"]
    assert expired.hits > 0 and cluster.emulator.tokens["rotated-token"] > 0  # refused, then rotated
    assert operator.returncode is None  # no restart was needed
    log = cluster.operator_log()
    assert "RBAC" not in log  # a 401 is a credentials problem, never reported as RBAC
    expired.hits = 0
    # Later changes go out with the new token only.
    await cluster.patch(cluster.model_path(NAMESPACE, "rotated"), {"spec": {"demand": {"cameras": 4}}})
    await cluster.wait_for(
        "a second change",
        lambda: status(cluster, "rotated").get("demand", {}).get("cameras") == 4,
        timeout=60,
    )
    assert operator.returncode is None


def test_the_exit_on_kopf_failure_fires_once_kopf_reports_a_failed_core_task() -> None:
    """The guard behind the crash-only exits above, alone: kopf's "... has failed: ..." error on
    its reactor loggers ends a process whose event loop would otherwise run on (a hung stop)."""
    script = textwrap.dedent(
        """
        import asyncio, logging
        from qfleet.operator.handlers import ExitWhenKopfFails
        logging.basicConfig(level=logging.INFO)
        async def main():
            logging.getLogger("kopf._core.reactor").addHandler(
                ExitWhenKopfFails(asyncio.get_running_loop(), grace=0.2))
            logging.getLogger("kopf._core.reactor.running").error("Something else went wrong")
            await asyncio.sleep(0.5)
            print("still up", flush=True)
            logging.getLogger("kopf._core.reactor.orchestration").error(
                "Watcher for quantizedmodels has failed: 410 Gone")
            await asyncio.sleep(30)  # a hung shutdown
            print("the hang ended", flush=True)
        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    # Ordering, not speed: it exited (70) during the hang, after the harmless error was ignored.
    assert done.returncode == 70 and "still up" in done.stdout and "the hang ended" not in done.stdout
    assert "exiting so that the operator is restarted" in done.stderr


async def test_slow_api_responses_slow_the_operator_down_but_nothing_fails(cluster: Cluster) -> None:
    slow = cluster.emulator.inject(Fault(r".", watch=False, delay=0.4))
    operator = await start(cluster)
    await cluster.apply_model(model_body("slow", cameras=2))
    await wait_phase(cluster, "slow", "Ready", timeout=120)
    await cluster.patch(cluster.model_path(NAMESPACE, "slow"), {"spec": {"demand": {"cameras": 30}}})
    await cluster.wait_for(
        "rescaled under a slow API",
        lambda: (cluster.get(DEPLOYMENTS, NAMESPACE, "slow-avx2") or {})["spec"]["replicas"] > 1,
        timeout=30,
    )
    assert slow.hits > 10 and len(job_names(cluster)) == 1
    assert "Traceback" not in cluster.operator_log()
    assert operator.returncode is None


@pytest.mark.slow
async def test_a_request_that_never_answers_times_out_and_is_retried(cluster: Cluster) -> None:
    # The operator's API client gives up after 30 s (kopf's own requests after 5 minutes).
    hang = cluster.emulator.inject(
        Fault(
            rf"{MODELS}/hang$",
            method="GET",
            delay=600,
            hold=True,
            status=504,
            times=1,
            user_agent=OPERATOR_UA,
        )
    )
    operator = await start(cluster)
    await cluster.apply_model(model_body("hang"))
    await wait_phase(cluster, "hang", "Ready", timeout=150)
    assert hang.hits == 1
    assert re.search(r"TimeoutError.*retrying|retrying.*TimeoutError", cluster.operator_log()), (
        cluster.operator_log()[-3000:]
    )
    assert operator.returncode is None


# -- Jobs that fail: exit codes, the OOM killer, deadlines, results that never arrive -----------------


async def test_oom_killed_job_fails_with_the_reason_and_the_old_model_serves(cluster: Cluster) -> None:
    _, old = await ready_model(cluster, "oom", QFLEET_JOB_BACKOFF_LIMIT="1")
    (old_job,) = job_names(cluster)
    cluster.pod_fault = lambda job, attempt: PodFault("oom", after=0.5) if job != old_job else None
    with watching_served(cluster, "oom-avx2") as served:
        await change_source(cluster, "oom")
        await wait_phase(cluster, "oom", "Degraded")
        await asyncio.sleep(2.0)  # time for a retry that must not come
    new_job = next(job for job in cluster.created(JOBS) if job != old_job)
    run = cluster.runs[new_job]
    assert run.exit_codes == [137, 137] and run.reasons == ["OOMKilled", "OOMKilled"]  # backoffLimit 1
    failed = variant(cluster, "oom")
    assert failed["state"] == "Failed" and failed["result"]["error"]["reason"] == "BackoffLimitExceeded"
    assert "OOMKilled" in failed["message"] and "137" in failed["message"]
    assert condition(cluster, "oom", "Degraded")["reason"] == "JobFailed"
    assert served == [old] and variant(cluster, "oom")["served"]["pipelineKey"] in old
    assert set(cluster.created(JOBS)) == {old_job, new_job}  # bounded: no new Job for this key


async def test_job_past_its_deadline_fails_with_deadline_exceeded(cluster: Cluster) -> None:
    _, old = await ready_model(cluster, "late")
    (old_job,) = job_names(cluster)
    cluster.release_jobs.clear()  # the new pod runs "forever"
    with watching_served(cluster, "late-avx2") as served:
        await change_source(cluster, "late")
        await cluster.wait_for("the new Job", lambda: len(job_names(cluster) - {old_job}) == 1)
        (new_job,) = job_names(cluster) - {old_job}
        # A cluster admin tightens the deadline (activeDeadlineSeconds is mutable on a Job).
        await cluster.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{new_job}",
                            {"spec": {"activeDeadlineSeconds": 2}})  # fmt: skip
        await wait_phase(cluster, "late", "Degraded")
        await asyncio.sleep(1.5)
    cluster.release_jobs.set()
    assert cluster.runs[new_job].deadline_exceeded
    failed = variant(cluster, "late")
    assert failed["state"] == "Failed" and failed["result"]["error"]["reason"] == "DeadlineExceeded"
    assert "deadline" in failed["message"]
    assert served == [old]
    assert set(cluster.created(JOBS)) == {old_job, new_job}
    job_pods = [pod for pod in cluster.objects(PODS, NAMESPACE) if "job-name" in pod["metadata"]["labels"]]
    assert not [pod for pod in job_pods if pod["status"]["phase"] == "Running"]  # serving pods run on


@pytest.mark.parametrize("message", ["missing", "garbled"])
async def test_success_without_a_readable_result_is_a_failure_not_a_rollout(
    cluster: Cluster, message: str
) -> None:
    _, old = await ready_model(cluster, f"msg-{message}")
    (old_job,) = job_names(cluster)
    text = "" if message == "missing" else '{"isa": "avx2", "artifact": "/mnt/qfleet/models/qf'
    cluster.pod_fault = lambda job, attempt: PodFault("message", message=text) if job != old_job else None
    with watching_served(cluster, f"msg-{message}-avx2") as served:
        await change_source(cluster, f"msg-{message}")
        await wait_phase(cluster, f"msg-{message}", "Degraded")
        await asyncio.sleep(1.0)
    failed = variant(cluster, f"msg-{message}")
    assert failed["state"] == "Failed" and failed["result"]["error"]["reason"] == "ResultUnreadable", failed
    assert served == [old]
    assert len(set(cluster.created(JOBS))) == 2


# -- the cluster changes under the operator -----------------------------------------------------------


async def test_a_tiers_nodes_disappearing_keeps_the_deployment_and_says_so(cluster: Cluster) -> None:
    operator, old = await ready_model(cluster, "vanish")
    jobs = set(cluster.created(JOBS))
    await cluster.request("DELETE", "/api/v1/nodes/avx2-1")
    await cluster.wait_for(
        "NodesAvailable=False",
        lambda: condition(cluster, "vanish", "NodesAvailable").get("status") == "False",
    )
    assert "avx2" in condition(cluster, "vanish", "NodesAvailable")["message"]
    assert status(cluster, "vanish")["phase"] != "Ready"
    assert served_artifact(cluster, "vanish-avx2") == old  # pods wait for nodes; nothing is torn down
    await asyncio.sleep(1.0)
    assert set(cluster.created(JOBS)) == jobs  # and nothing is quantized again

    await cluster.add_node("avx2-2", "avx2")  # nodes come back (e.g. the autoscaler)
    await wait_phase(cluster, "vanish", "Ready")
    assert served_artifact(cluster, "vanish-avx2") == old
    assert set(cluster.created(JOBS)) == jobs
    assert operator.returncode is None


async def test_resource_deleted_mid_pipeline_leaves_no_job_running(cluster: Cluster) -> None:
    """With ownerReferences, Kubernetes' garbage collector deletes the Job (and through it the
    pod) once the QuantizedModel is gone; the harness plays that collector here. The operator
    must create nothing for the deleted resource afterwards."""
    cluster.garbage_collector = True
    operator = await start(cluster)
    cluster.release_jobs.clear()
    created = await cluster.apply_model(model_body("doomed"))
    uid = created["metadata"]["uid"]
    await cluster.wait_for("the Job", lambda: len(job_names(cluster)) == 1)
    (job,) = job_names(cluster)
    await cluster.wait_for("its pod running", lambda: cluster.runs.get(job) and cluster.runs[job].process)
    owners = cluster.get(JOBS, NAMESPACE, job)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert owners == [
        {"apiVersion": "qfleet.dev/v1alpha1", "kind": "QuantizedModel", "name": "doomed", "uid": uid,
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip

    await cluster.request("DELETE", cluster.model_path(NAMESPACE, "doomed"))
    await cluster.wait_for("the Job collected", lambda: not job_names(cluster))
    await cluster.wait_for("its process stopped", lambda: cluster.runs[job].process.returncode is not None)  # type: ignore[union-attr]
    await cluster.wait_for("its pod deleted", lambda: not cluster.objects(PODS, NAMESPACE))
    creations = len(cluster.emulator.creations)
    await asyncio.sleep(2.0)
    assert not job_names(cluster) and not cluster.objects(DEPLOYMENTS, NAMESPACE)
    assert [c for c in cluster.emulator.creations[creations:] if c[0] in (JOBS, DEPLOYMENTS)] == []
    assert operator.returncode is None
    cluster.release_jobs.set()


async def test_nodes_fault_free_baseline_has_no_retries(cluster: Cluster) -> None:
    """The control for the retry tests: without faults, no retry is ever logged."""
    operator, _ = await ready_model(cluster, "calm")
    assert retry_delays(cluster.operator_log()) == []
    assert len(cluster.objects(NODES)) == 1 and operator.returncode is None
