"""The real operator (``qfleet operator``, kopf underneath) against the emulated cluster.

Every quantization Job the operator creates is executed by the test cluster as a kubelet would:
its own ``qfleet pipeline`` command line, on a tiny OpenVINO model, with the Job's volumes
mapped to folders (see ``cluster.py``). Nothing the operator reads is faked: results come from
the finished pods' termination messages.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from qfleet.fleet.uris import MOUNT_ROOT
from qfleet.isa import kernel_cap_env, tier_of_runtime_isa
from tests.support.cluster import DEPLOYMENTS, JOBS, Cluster
from tests.support.operator_fixtures import NAMESPACE, expected_replicas, model_body

pytestmark = pytest.mark.timeout(240)


# -- helpers ---------------------------------------------------------------------------------------


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    model = cluster.model(NAMESPACE, name)
    return (model or {}).get("status") or {}


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    for item in status(cluster, name).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return {}


def variant(cluster: Cluster, name: str, isa: str) -> dict[str, Any]:
    return next((v for v in status(cluster, name).get("variants") or [] if v["isa"] == isa), {})


def deployment(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return cluster.get(DEPLOYMENTS, NAMESPACE, name)


def served_artifact(cluster: Cluster, name: str) -> str | None:
    found = deployment(cluster, name)
    if found is None:
        return None
    args = found["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--model") + 1])


def event_reasons(cluster: Cluster, name: str) -> list[str]:
    return [event.get("reason", "") for event in cluster.events(NAMESPACE, name)]


async def wait_phase(cluster: Cluster, name: str, phase: str, *, timeout: float = 90) -> dict[str, Any]:
    await cluster.wait_for(
        f"{name} phase {phase}", lambda: status(cluster, name).get("phase") == phase, timeout=timeout
    )
    return status(cluster, name)


async def patch_spec(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    await cluster.patch(cluster.model_path(NAMESPACE, name), {"spec": spec})


async def start(cluster: Cluster, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await cluster.start_operator(*(args or ("--namespace", NAMESPACE)), env=env)


def models_folder(cluster: Cluster) -> Path:
    return cluster.claims["models"]


def as_seen_in_the_pod(cluster: Cluster, run: Any) -> list[str]:
    """The command line the kubelet ran, with the host's folders written as the pod's paths."""
    mounts = {str(folder): f"{MOUNT_ROOT}/{claim}" for claim, folder in cluster.claims.items()}
    mounts[str(run.log.parent / "termination-log")] = "/dev/termination-log"
    argv = [Path(run.argv[0]).name]
    for arg in run.argv[1:]:
        for host, pod in mounts.items():
            if arg == host or arg.startswith(host + "/"):
                arg = pod + arg[len(host) :]
        argv.append(arg)
    return argv


# -- scenarios -------------------------------------------------------------------------------------


async def test_two_tiers_end_to_end(cluster: Cluster, unused_tcp_port: int) -> None:
    await cluster.add_node("vnni-1", "avx512_vnni", cpu="32")
    await cluster.add_node("avx2-1", "avx2", cpu="16")
    await start(cluster, "--namespace", NAMESPACE, "--metrics-port", str(unused_tcp_port))
    body = model_body("faces-r100", targets=("avx512_vnni", "avx2"), cameras=12)
    await cluster.apply_model(body)

    final = await wait_phase(cluster, "faces-r100", "Ready")

    # One Job per tier, each run on a node of exactly that tier, with the Job's own command.
    jobs = {job["metadata"]["labels"]["qfleet.dev/isa"]: job for job in cluster.objects(JOBS, NAMESPACE)}
    assert set(jobs) == {"avx512-vnni", "avx2"}
    for tier, node in (("avx512-vnni", "vnni-1"), ("avx2", "avx2-1")):
        run = cluster.runs[jobs[tier]["metadata"]["name"]]
        assert run.node == node and run.exit_codes == [0]
        container = jobs[tier]["spec"]["template"]["spec"]["containers"][0]
        expected = [*container["command"], *container["args"]]
        assert as_seen_in_the_pod(cluster, run) == expected
        assert (
            "--benchmark-seconds" in expected
            and float(expected[expected.index("--benchmark-seconds") + 1]) == 1
        )

    # Each tier serves its own INT8 model, placed on its tier, scaled to the cameras.
    for isa, slug in (("avx512_vnni", "avx512-vnni"), ("avx2", "avx2")):
        served = variant(cluster, "faces-r100", isa)["served"]
        assert served["precision"] == "int8" and served["fpsPerReplica"] > 0
        artifact = served["artifact"]
        assert artifact.startswith(f"pvc://models/qfleet/faces-r100/{final['pipelineKey']}/{isa}/int8/")
        on_disk = models_folder(cluster) / artifact.removeprefix("pvc://models/")
        assert on_disk.is_file() and on_disk.with_suffix(".bin").is_file()
        dep = deployment(cluster, f"faces-r100-{slug}")
        assert dep is not None
        assert served_artifact(
            cluster, f"faces-r100-{slug}"
        ) == f"{MOUNT_ROOT}/models/" + artifact.removeprefix("pvc://models/")
        affinity = json.dumps(dep["spec"]["template"]["spec"]["affinity"])
        assert ("AVX512VNNI" in affinity) and ("DoesNotExist" in affinity)
    total = sum(v["replicas"] for v in final["variants"])
    assert total == final["capacity"]["replicas"] and final["capacity"]["shortfallFacesPerSecond"] == 0
    assert final["capacity"]["facesPerSecond"] >= final["demand"]["facesPerSecond"]

    for type_, value in (
        ("Ready", "True"),
        ("AccuracyGate", "True"),
        ("NodesAvailable", "True"),
        ("Degraded", "False"),
    ):
        found = condition(cluster, "faces-r100", type_)
        assert found["status"] == value, found
        assert found["observedGeneration"] == 1 and found["lastTransitionTime"]
    reasons = await cluster.wait_for(
        "the events of both tiers",
        lambda: (
            (r := event_reasons(cluster, "faces-r100")).count("QuantizationSucceeded") == 2
            and "RolledOut" in r
            and r
        ),
    )
    assert reasons.count("QuantizationStarted") == 2

    text = urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5).read().decode()
    assert 'qfleet_desired_replicas{isa="avx2",model="faces-r100",namespace="faces"}' in text
    assert (
        'qfleet_fps_per_replica{isa="avx512_vnni",model="faces-r100",namespace="faces",precision="int8"}'
        in text
    )
    assert 'qfleet_gate_outcomes_total{isa="avx2",passed="true",reason="Passed"} 1.0' in text
    assert 'qfleet_camera_demand{model="faces-r100",namespace="faces"} 12.0' in text
    assert 'qfleet_pipeline_duration_seconds_count{isa="avx512_vnni"} 1.0' in text
    assert 'qfleet_reconciles_total{result="ok"}' in text


async def test_a_job_runs_the_kernels_of_its_nodes_tier(cluster: Cluster) -> None:
    """Same ISA is real, not a label: the Job on an avx2 node computes with AVX2 kernels, as the
    plugin itself reports, on any host these tests run on (every x86 host has AVX2, and a higher
    one is capped down to it), and the result that says so reaches the status."""
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster)
    await cluster.apply_model(model_body("kernels"))
    await cluster.wait_for(
        "the avx2 result", lambda: variant(cluster, "kernels", "avx2").get("result", {}).get("succeeded")
    )
    result = variant(cluster, "kernels", "avx2")["result"]
    assert tier_of_runtime_isa(result["runtimeIsa"]) == "avx2", result["runtimeIsa"]
    assert result["inferencePrecision"]["fp32"] == "f32" and "bf16Artifact" not in result
    (job,) = cluster.created(JOBS)
    env = cluster.runs[job].env
    assert env["QFLEET_HOST_ISA"] == "avx2" and kernel_cap_env("avx2").items() <= env.items()


async def test_a_batching_model_is_measured_and_served_at_its_batch(cluster: Cluster) -> None:
    """``serving.batching.maxBatch``: the Job benchmarks INT8 at that batch too, the plan uses that
    FPS, the pods serve with it, and the status says which batch the FPS was measured at."""
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster)
    await cluster.apply_model(model_body("batched", serving={"batching": {"maxBatch": 4, "timeoutMs": 3}}))
    await wait_phase(cluster, "batched", "Ready")
    found = variant(cluster, "batched", "avx2")
    result, served = found["result"], found["served"]
    assert result["int8Batch"] == 4 and result["int8BatchFps"] > 0 and result["int8Fps"] > 0
    assert served["batch"] == 4 and served["fpsPerReplica"] == result["int8BatchFps"]
    dep = deployment(cluster, "batched-avx2")
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--max-batch") + 1] == "4" and args[args.index("--batch-timeout-ms") + 1] == "3"
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]


async def test_camera_change_and_scale_subresource_rescale_without_a_job(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster)
    body = model_body("lobby", cameras=2)
    await cluster.apply_model(body)
    await wait_phase(cluster, "lobby", "Ready")
    template = deployment(cluster, "lobby-avx2")["spec"]["template"]  # type: ignore[index]
    jobs_before = cluster.created(JOBS)

    # Camera counts from the FPS this host measured (1000 faces/s per camera), not fixed ones: a
    # few replicas' worth, then one replica's worth, so the ordering holds on any host's speed.
    fps = variant(cluster, "lobby", "avx2")["served"]["fpsPerReplica"]
    per_replica = fps * body["spec"]["demand"]["targetUtilization"] / 1000.0
    low = max(1, math.floor(per_replica))
    high = max(low + 1, math.ceil(2.5 * per_replica))
    replicas = {}
    for cameras in (high, low):
        body["spec"]["demand"]["cameras"] = cameras
        await patch_spec(cluster, "lobby", {"demand": {"cameras": cameras}})
        want = expected_replicas(status(cluster, "lobby"), body["spec"], "avx2")
        await cluster.wait_for(
            f"{want} replicas for {cameras} cameras",
            lambda want=want: (deployment(cluster, "lobby-avx2") or {})["spec"]["replicas"] == want,
        )
        replicas[cameras] = want
    assert replicas[high] > replicas[low] >= 1

    # `kubectl scale qm/lobby --replicas=40`: the scale subresource sets the cameras.
    scale_path = cluster.model_path(NAMESPACE, "lobby") + "/scale"
    await cluster.patch(scale_path, {"spec": {"replicas": 40}})
    assert cluster.model(NAMESPACE, "lobby")["spec"]["demand"]["cameras"] == 40  # type: ignore[index]
    body["spec"]["demand"]["cameras"] = 40
    want = expected_replicas(status(cluster, "lobby"), body["spec"], "avx2")
    await cluster.wait_for(
        "replicas after scale", lambda: (deployment(cluster, "lobby-avx2") or {})["spec"]["replicas"] == want
    )
    await cluster.wait_for(
        "status.demand.cameras", lambda: status(cluster, "lobby")["demand"]["cameras"] == 40
    )
    scale = await cluster.request("GET", scale_path)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 40 and scale["status"]["replicas"] == 40

    assert cluster.created(JOBS) == jobs_before  # rescaling never quantizes again
    assert deployment(cluster, "lobby-avx2")["spec"]["template"] == template  # type: ignore[index]
    await cluster.wait_for("a Scaled event", lambda: "Scaled" in event_reasons(cluster, "lobby"))


async def test_no_node_of_a_tier_then_one_appears(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster, "--all-namespaces")
    await cluster.apply_model(model_body("gate", targets=("avx512_vnni",)))

    await cluster.wait_for(
        "NodesAvailable=False", lambda: condition(cluster, "gate", "NodesAvailable").get("status") == "False"
    )
    assert "avx512_vnni" in condition(cluster, "gate", "NodesAvailable")["message"]
    assert status(cluster, "gate")["phase"] == "Pending"
    # The operator has said what it decided (the event comes with the plan), and created nothing.
    await cluster.wait_for("a NoNodesOfTier event", lambda: "NoNodesOfTier" in event_reasons(cluster, "gate"))
    assert cluster.created(JOBS) == []

    await cluster.add_node("vnni-1", "avx512_vnni")  # e.g. the cluster autoscaler adds one
    await wait_phase(cluster, "gate", "Ready")
    assert len(cluster.created(JOBS)) == 1
    assert cluster.runs[cluster.created(JOBS)[0]].node == "vnni-1"
    assert condition(cluster, "gate", "NodesAvailable")["status"] == "True"


async def test_gate_failure_keeps_the_old_model_and_fp32_mode_serves_fp32(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster)
    await cluster.apply_model(model_body("entry", cameras=4))
    await wait_phase(cluster, "entry", "Ready")
    good = served_artifact(cluster, "entry-avx2")
    good_fps = variant(cluster, "entry", "avx2")["served"]["fpsPerReplica"]

    # A stricter validation the model cannot meet: noise pairs, and at least 90% required.
    await patch_spec(cluster, "entry", {"validation": {"lfw": "pvc://data/lfw-hard.bin", "minAccuracy": 0.9}})
    await cluster.wait_for(
        "AccuracyGate=False", lambda: condition(cluster, "entry", "AccuracyGate").get("status") == "False"
    )
    gate = condition(cluster, "entry", "AccuracyGate")
    assert gate["reason"] == "BelowMinimumAccuracy", gate
    assert variant(cluster, "entry", "avx2")["state"] == "GateFailed"
    assert served_artifact(cluster, "entry-avx2") == good  # the old model keeps serving
    assert await wait_phase(cluster, "entry", "Degraded")
    # The operator posts its events after the status patch: await the event, do not read once.
    warnings = await cluster.wait_for(
        "an AccuracyGateFailed event",
        lambda: [e for e in cluster.events(NAMESPACE, "entry") if e.get("reason") == "AccuracyGateFailed"],
    )
    assert warnings[0]["type"] == "Warning" and "keeping the last model that passed" in warnings[0]["message"]
    jobs = cluster.created(JOBS)
    assert len(jobs) == 2

    # onGateFailure: fp32 -> serve the new FP32 model, sized with its FP32 FPS; no new Job.
    await patch_spec(cluster, "entry", {"rollout": {"onGateFailure": "fp32"}})
    await cluster.wait_for(
        "FP32 served", lambda: variant(cluster, "entry", "avx2")["served"]["precision"] == "fp32"
    )
    fp32 = variant(cluster, "entry", "avx2")
    assert fp32["served"]["fpsPerReplica"] == fp32["result"]["fp32Fps"] != good_fps
    await cluster.wait_for(
        "the Deployment serves FP32",
        lambda: (served_artifact(cluster, "entry-avx2") or "").endswith("/fp32/model.xml"),
    )
    assert status(cluster, "entry")["pipelineKey"] in (served_artifact(cluster, "entry-avx2") or "")
    assert cluster.created(JOBS) == jobs


async def test_source_change_requantizes_then_rolls_out_while_the_old_serves(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster)
    await cluster.apply_model(model_body("hall"))
    await wait_phase(cluster, "hall", "Ready")
    old = served_artifact(cluster, "hall-avx2")
    (old_job,) = cluster.created(JOBS)

    shutil.copytree(cluster.claims["data"] / "model", models_folder(cluster) / "retrained")
    cluster.release_jobs.clear()  # hold the new Job's result to look at the cluster meanwhile
    await patch_spec(
        cluster, "hall", {"source": {"format": "openvino", "uri": "pvc://models/retrained/model.xml"}}
    )
    await cluster.wait_for("a second Job", lambda: len(cluster.created(JOBS)) == 2)
    new_job = cluster.created(JOBS)[1]
    await cluster.wait_for("the old Job deleted", lambda: cluster.get(JOBS, NAMESPACE, old_job) is None)
    await wait_phase(cluster, "hall", "Quantizing")
    assert served_artifact(cluster, "hall-avx2") == old  # still serving while the new Job runs
    assert condition(cluster, "hall", "Progressing")["status"] == "True"

    cluster.release_jobs.set()
    await cluster.wait_for("the new model rolled out", lambda: served_artifact(cluster, "hall-avx2") != old)
    final = await wait_phase(cluster, "hall", "Ready")
    assert final["pipelineKey"] in (served_artifact(cluster, "hall-avx2") or "")
    assert (
        cluster.runs[new_job]
        .argv[cluster.runs[new_job].argv.index("--source") + 1]
        .endswith("retrained/model.xml")
    )
    assert deployment(cluster, "hall-avx2")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # type: ignore[index]


async def test_operator_restarted_while_a_job_runs(cluster: Cluster, unused_tcp_port: int) -> None:
    await cluster.add_node("avx2-1", "avx2")
    first = await start(cluster)
    cluster.release_jobs.clear()
    await cluster.apply_model(model_body("dock"))
    await cluster.wait_for("the Job", lambda: len(cluster.created(JOBS)) == 1)
    (job,) = cluster.created(JOBS)
    await cluster.wait_for(
        "the pipeline to run", lambda: cluster.runs.get(job) and cluster.runs[job].exit_codes
    )
    await cluster.stop_operator(first, kill=True)  # a crash, not a goodbye
    assert first.returncode == -signal.SIGKILL, f"not killed at this stage: exit {first.returncode}"

    second = await cluster.start_operator(
        "--namespace", NAMESPACE, "--metrics-port", str(unused_tcp_port), log_name="operator-2"
    )
    # The new operator has resumed the model (a finished reconcile) while the Job still runs.
    await cluster.wait_for(
        "a reconcile by the new operator", lambda: cluster.reconciles(unused_tcp_port) >= 1
    )
    assert cluster.created(JOBS) == [job]  # no duplicate, not even an attempt (409)
    cluster.release_jobs.set()
    await cluster.wait_for(
        "Ready after restart", lambda: status(cluster, "dock").get("phase") == "Ready", timeout=60
    )
    assert cluster.created(JOBS) == [job]
    assert variant(cluster, "dock", "avx2")["result"]["job"] == job
    assert second.returncode is None


async def test_job_failure_is_reported_with_its_reason(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    await start(cluster, QFLEET_JOB_BACKOFF_LIMIT="1")
    body = model_body("gone", source={"format": "openvino", "uri": "pvc://data/missing/model.xml"})
    await cluster.apply_model(body)
    await wait_phase(cluster, "gone", "Failed")

    (job,) = cluster.created(JOBS)
    # A missing source is bad input (exit 2): the Job's podFailurePolicy fails it at once, since
    # retrying cannot help, although backoffLimit would allow one more try.
    assert cluster.runs[job].exit_codes == [2]
    failed = variant(cluster, "gone", "avx2")
    error = failed["result"]["error"]
    assert failed["state"] == "Failed" and error["reason"] == "PodFailurePolicy"
    assert error["stage"] == "convert" and "missing" in error["message"] and error["exitCode"] == 2
    degraded = condition(cluster, "gone", "Degraded")
    assert (
        degraded["status"] == "True"
        and degraded["reason"] == "JobFailed"
        and "convert" in degraded["message"]
    )
    assert condition(cluster, "gone", "Ready")["status"] == "False"
    await cluster.wait_for(
        "a QuantizationFailed event", lambda: "QuantizationFailed" in event_reasons(cluster, "gone")
    )
    assert deployment(cluster, "gone-avx2") is None


async def test_invalid_spec_and_unknown_uri_scheme_give_conditions(cluster: Cluster) -> None:
    await cluster.add_node("avx2-1", "avx2")
    operator = await start(cluster)
    await cluster.apply_model(model_body("gcs", source={"format": "onnx", "uri": "gs://bucket/r100.onnx"}))
    await cluster.apply_model(model_body("bounds", serving={"minReplicas": 5, "maxReplicas": 2}))
    broken = model_body("shape")
    broken["spec"]["targets"] = "avx2"
    await cluster.apply_model(broken)

    for name, words in (
        ("gcs", "unsupported scheme 'gs'"),
        ("bounds", "maxReplicas (2) is below serving.minReplicas (5)"),
        ("shape", "spec.targets must list at least one ISA tier"),
    ):
        await wait_phase(cluster, name, "Failed")
        ready = condition(cluster, name, "Ready")
        assert ready["reason"] == "InvalidSpec" and words in ready["message"], ready
        await cluster.wait_for(
            f"InvalidSpec event of {name}", lambda n=name: "InvalidSpec" in event_reasons(cluster, n)
        )
    assert cluster.created(JOBS) == []
    assert operator.returncode is None

    # Fixed: the same resource proceeds.
    await patch_spec(cluster, "gcs", {"source": {"format": "openvino", "uri": "pvc://data/model/model.xml"}})
    await wait_phase(cluster, "gcs", "Ready")
    assert condition(cluster, "gcs", "Ready")["status"] == "True"
