"""The pure planner, step by step through a model's life, with no cluster at all."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qfleet.fleet import conditions as c
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.nodes import Inventory, node_info
from qfleet.fleet.planner import Observed, Plan, plan
from qfleet.fleet.status import condition_to_dict, parse_status
from qfleet.isa import TIER_NAMES, TIERS

CONFIG = FleetConfig(toolkit_image="toolkit:1", server_image="server:1")
T0 = "2030-01-01T00:00:00Z"
T1 = "2030-01-01T00:05:00Z"
T2 = "2030-01-01T00:10:00Z"


def node(name: str, tier: str, cpu: str = "32", **labels: str) -> dict[str, Any]:
    nfd = {t.nfd_label: "true" for t in TIERS[TIER_NAMES.index(tier) :]}
    return {
        "metadata": {"name": name, "labels": {**nfd, **labels}},
        "status": {"allocatable": {"cpu": cpu}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def inventory(*nodes: dict[str, Any]) -> Inventory:
    return Inventory.of(node_info(n) for n in nodes)


def model(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"format": "onnx", "uri": "pvc://models/r100.onnx"},
        "quantization": {"calibration": "pvc://data/calib"},
        "validation": {"lfw": "pvc://data/lfw.bin", "maxDrop": 0.001},
        "targets": [{"isa": "avx512_vnni"}],
        "serving": {"minReplicas": 1, "maxReplicas": 10},
        "demand": {"cameras": 64, "cameraFps": 6, "facesPerFrame": 1, "targetUtilization": 0.8},
        "artifacts": {"uri": "pvc://models/qfleet"},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "qfleet.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "arcface", "namespace": "faces", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


def with_status(body: dict[str, Any], result: Plan) -> dict[str, Any]:
    updated = copy.deepcopy(body)
    updated["status"] = json.loads(json.dumps(result.status))
    return updated


def finished(
    job: dict[str, Any], message: str, *, exit_code: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Job as the Job controller leaves it, and its pod as the kubelet leaves it."""
    job = copy.deepcopy(job)
    name = job["metadata"]["name"]
    if exit_code == 0:
        job["status"] = {"succeeded": 1, "completionTime": T1,
                         "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": T1}]}  # fmt: skip
    else:
        job["status"] = {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": T1}]}  # fmt: skip
    pod = {
        "metadata": {"name": f"{name}-abc", "labels": {"batch.kubernetes.io/job-name": name}},
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message}}}]
        },
    }
    return job, pod


def result_of(job: dict[str, Any], *, int8_fps: float = 579.0, fp32_fps: float = 326.0, passed: bool = True,
              reason: str = "Passed", bf16_passed: bool | None = None, batch_fps: float = 0.0) -> str:  # fmt: skip
    """The Job's termination message; ``bf16_passed`` not None adds a BF16 variant (a bf16 host);
    with ``--benchmark-batch`` in its args INT8 was also measured at that batch (``batch_fps``)."""
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    batched: dict[str, Any] = {}
    if "--benchmark-batch" in args:
        batched = {"batch": int(args[args.index("--benchmark-batch") + 1]), "batch_fps": batch_fps,
                   "batch_latency_ms_median": 7.0}  # fmt: skip
    out = args[args.index("--out") + 1]
    assert out.startswith("/var/lib/qfleet/pvc/")
    bf16: dict[str, Any] = {}

    def asked(precision: str) -> dict[str, str]:  # newer pipelines say what each block computed in
        return {} if bf16_passed is None else {"precision": precision, "inference_precision": "f32"}

    if bf16_passed is not None:
        bf16 = {
            "bf16_artifact": f"{out}/bf16/model.xml",
            "bf16": {"precision": "bf16", "inference_precision": "bf16", "accuracy": 0.9961 if bf16_passed else 0.98,
                     "fps": 450.0, "gate": {"passed": bf16_passed, "drop": 0.0002 if bf16_passed else 0.0163,
                                            "reason": "Passed" if bf16_passed else "AccuracyDropExceeded"}},
            "runtime_isa": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
            "speedup": {"int8_vs_fp32": round(int8_fps / fp32_fps, 3), "int8_vs_bf16": round(int8_fps / 450.0, 3)},
        }  # fmt: skip
    return json.dumps(bf16 | {
        "isa": args[args.index("--expect-isa") + 1],
        "artifact": f"{out}/int8/model.xml",
        "fp32_artifact": f"{out}/fp32/model.xml",
        "fp32": {"accuracy": 0.9963, "fps": fp32_fps, **asked("fp32")},
        "int8": {"accuracy": 0.9960 if passed else 0.97, "fps": int8_fps, **asked("int8"), **batched},
        "gate": {"passed": passed, "drop": 0.0003 if passed else 0.0263, "reason": reason,
                 "message": "drop within 0.1 points" if passed else "drop 2.63 points exceeds 0.1"},
        "versions": {"openvino": "2026.4"},
        "seconds": 300.0,
    })  # fmt: skip


def ready(deployment: dict[str, Any]) -> dict[str, Any]:
    deployment = copy.deepcopy(deployment)
    replicas = deployment["spec"]["replicas"]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {"observedGeneration": 1, "readyReplicas": replicas, "updatedReplicas": replicas}
    return deployment


def condition(result: Plan, type_: str) -> dict[str, Any]:
    found = c.find(result.model_status.conditions, type_)
    assert found is not None
    return condition_to_dict(found)


def event_reasons(result: Plan) -> list[str]:
    return [event.reason for event in result.events]


VNNI = inventory(node("n1", "avx512_vnni"))


def first_pass_to_ready(
    body: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Create -> Job succeeds -> Deployment ready. Returns (model with status, job, deployment)."""
    body = body or model()
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    done_job, pod = finished(job, result_of(job))
    served = plan(body, Observed(jobs=[done_job], pods=[pod], inventory=VNNI), CONFIG, now=T1)
    (change,) = served.deployments
    body = with_status(body, served)
    deployment = ready(change.body)
    final = plan(
        body, Observed(jobs=[done_job], pods=[pod], deployments=[deployment], inventory=VNNI), CONFIG, now=T2
    )
    # Rolled out: the Deployment now also records the tier's last good model (metadata only).
    (update,) = final.deployments
    assert update.action == "update" and update.body["spec"] == change.body["spec"]
    deployment = applied(deployment, update.body)
    body = with_status(body, final)
    assert body["status"]["variants"][0]["lastGood"] == body["status"]["variants"][0]["served"]
    final = plan(
        body, Observed(jobs=[done_job], pods=[pod], deployments=[deployment], inventory=VNNI), CONFIG, now=T2
    )
    return with_status(body, final), done_job, deployment


def applied(deployment: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """``deployment`` after the operator's merge patch of ``desired``'s metadata and spec."""
    deployment = copy.deepcopy(deployment)
    deployment["metadata"]["annotations"] = copy.deepcopy(desired["metadata"]["annotations"])
    deployment["metadata"]["labels"] = copy.deepcopy(desired["metadata"]["labels"])
    deployment["spec"] = copy.deepcopy(desired["spec"])
    return deployment


def test_new_model_starts_one_job_per_tier_with_nodes() -> None:
    body = model(targets=[{"isa": "avx512_vnni"}, {"isa": "amx_int8"}])
    result = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    assert [job["metadata"]["labels"]["qfleet.dev/isa"] for job in result.create_jobs] == ["avx512-vnni"]
    assert result.status["phase"] == c.QUANTIZING
    states = {v["isa"]: v["state"] for v in result.status["variants"]}
    assert states == {"avx512_vnni": "Running", "amx_int8": "WaitingForNodes"}
    nodes = condition(result, c.TYPE_NODES_AVAILABLE)
    assert nodes["status"] == c.FALSE and "amx_int8" in nodes["message"]
    assert nodes["observedGeneration"] == 1 and nodes["lastTransitionTime"] == T0
    assert c.EVENT_NODES_MISSING in event_reasons(result)
    assert result.status["demand"] == {"cameras": 64, "facesPerSecond": 384.0}


def test_no_node_of_any_tier_is_pending_without_jobs() -> None:
    result = plan(model(), Observed(inventory=inventory(node("old", "avx2"))), CONFIG, now=T0)
    assert result.create_jobs == [] and result.status["phase"] == c.PENDING
    assert condition(result, c.TYPE_NODES_AVAILABLE)["reason"] == c.REASON_NODES_MISSING


def test_a_vnni_job_never_counts_an_amx_node() -> None:
    result = plan(model(), Observed(inventory=inventory(node("amx", "amx_int8"))), CONFIG, now=T0)
    assert result.create_jobs == []


def test_target_node_selector_must_match_too() -> None:
    body = model(targets=[{"isa": "avx512_vnni", "nodeSelector": {"pool": "edge"}}])
    assert plan(body, Observed(inventory=VNNI), CONFIG, now=T0).create_jobs == []
    edge = inventory(node("n2", "avx512_vnni", pool="edge"))
    assert len(plan(body, Observed(inventory=edge), CONFIG, now=T0).create_jobs) == 1


def test_a_running_job_is_not_created_again() -> None:
    body = model()
    (job,) = plan(body, Observed(inventory=VNNI), CONFIG, now=T0).create_jobs
    again = plan(body, Observed(jobs=[job], inventory=VNNI), CONFIG, now=T0)
    assert again.create_jobs == [] and again.status["variants"][0]["state"] == "Running"


def test_passed_gate_serves_int8_scaled_to_the_cameras() -> None:
    body = model()
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    done_job, pod = finished(job, result_of(job))
    result = plan(body, Observed(jobs=[done_job], pods=[pod], inventory=VNNI), CONFIG, now=T1)
    (variant,) = result.status["variants"]
    assert variant["state"] == "Succeeded"
    assert variant["served"]["precision"] == "int8" and variant["served"]["fpsPerReplica"] == 579.0
    assert variant["served"]["artifact"].startswith("pvc://models/qfleet/arcface/")
    assert "lastGood" not in variant  # a model becomes the one to go back to once it rolled out
    assert variant["result"]["gate"]["passed"] and variant["result"]["finishedAt"] == T1
    (change,) = result.deployments
    assert change.action == "create" and change.replicas == 1  # 384 faces/s / (579 x 0.8)
    assert condition(result, c.TYPE_ACCURACY_GATE)["status"] == c.TRUE
    assert result.status["phase"] == c.PENDING  # replicas not ready yet
    assert {"QuantizationSucceeded", "RolledOut", "Scaled"} <= set(event_reasons(result))
    assert set(result.new_results) == {"avx512_vnni"}


def test_ready_is_a_fixed_point() -> None:
    body, job, deployment = first_pass_to_ready()
    assert body["status"]["phase"] == c.READY
    assert condition_of(body, c.TYPE_READY)["status"] == c.TRUE
    again = plan(
        body, Observed(jobs=[job], pods=[], deployments=[deployment], inventory=VNNI), CONFIG, now=T2
    )
    assert json.loads(json.dumps(again.status)) == body["status"]
    assert again.events == [] and again.create_jobs == [] and again.deployments == []


def condition_of(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.find(parse_status(body["status"]).conditions, type_)
    assert found is not None
    return condition_to_dict(found)


def test_camera_change_only_rescales() -> None:
    body, job, deployment = first_pass_to_ready()
    body["spec"]["demand"]["cameras"] = 640
    body["metadata"]["generation"] = 2
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.create_jobs == [] and result.delete_jobs == []
    (change,) = result.deployments
    assert change.action == "scale" and change.replicas == 9  # 3840 / 463.2 = 8.3 -> 9
    assert result.status["demand"]["cameras"] == 640
    assert result.status["observedGeneration"] == 2
    assert event_reasons(result) == ["Scaled", "PhaseChanged"]  # Ready -> Pending until replicas are ready


def test_demand_beyond_max_replicas_is_reported() -> None:
    body, job, deployment = first_pass_to_ready()
    body["spec"]["demand"]["cameras"] = 6400
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.deployments[0].replicas == 10
    capacity = condition(result, c.TYPE_CAPACITY_INSUFFICIENT)
    assert capacity["status"] == c.TRUE and "short by 33768.0 faces/s" in capacity["message"]
    assert result.status["phase"] == c.DEGRADED
    assert c.EVENT_CAPACITY in event_reasons(result)


def new_source_job(body: dict[str, Any], observed: Observed) -> tuple[Plan, dict[str, Any]]:
    body["spec"]["source"] = {"format": "onnx", "uri": "pvc://models/r100-v2.onnx"}
    body["metadata"]["generation"] = 2
    result = plan(body, observed, CONFIG, now=T2)
    (job,) = result.create_jobs
    return result, job


def test_source_change_requantizes_while_the_old_model_serves() -> None:
    body, old_job, deployment = first_pass_to_ready()
    old_artifact = body["status"]["variants"][0]["served"]["artifact"]
    result, new_job = new_source_job(body, Observed(jobs=[old_job], deployments=[deployment], inventory=VNNI))
    assert result.delete_jobs == [old_job["metadata"]["name"]]
    assert new_job["metadata"]["name"] != old_job["metadata"]["name"]
    assert result.deployments == []  # the old model keeps serving, untouched
    assert result.status["variants"][0]["served"]["artifact"] == old_artifact
    assert result.status["phase"] == c.QUANTIZING
    # The new Job passes: the new artifact rolls out by a template change.
    body = with_status(body, result)
    done, pod = finished(new_job, result_of(new_job, int8_fps=600.0))
    rolled = plan(
        body, Observed(jobs=[done], pods=[pod], deployments=[deployment], inventory=VNNI), CONFIG, now=T2
    )
    (change,) = rolled.deployments
    assert change.action == "update"
    assert rolled.status["variants"][0]["served"]["artifact"] != old_artifact


def test_failed_gate_keeps_the_last_good_model_then_fp32_on_request() -> None:
    body, old_job, deployment = first_pass_to_ready()
    served_before = body["status"]["variants"][0]["served"]
    result, job = new_source_job(body, Observed(jobs=[old_job], deployments=[deployment], inventory=VNNI))
    body = with_status(body, result)
    done, pod = finished(job, result_of(job, passed=False, reason="AccuracyDropExceeded"))
    observed = Observed(jobs=[done], pods=[pod], deployments=[deployment], inventory=VNNI)
    kept = plan(body, observed, CONFIG, now=T2)
    (variant,) = kept.status["variants"]
    assert variant["state"] == "GateFailed" and variant["served"] == served_before
    assert kept.deployments == []
    gate = condition(kept, c.TYPE_ACCURACY_GATE)
    assert gate["status"] == c.FALSE and gate["reason"] == "AccuracyDropExceeded"
    assert kept.status["phase"] == c.DEGRADED
    warnings = [e for e in kept.events if e.reason == c.EVENT_GATE_FAILED]
    assert warnings and warnings[0].type == "Warning" and "keeping" in warnings[0].message
    # onGateFailure: fp32 -> the new FP32 model, planned with the FP32 FPS; no new Job.
    body = with_status(body, kept)
    body["spec"]["rollout"] = {"onGateFailure": "fp32"}
    fp32 = plan(body, observed, CONFIG, now=T2)
    (variant,) = fp32.status["variants"]
    assert fp32.create_jobs == []
    assert variant["served"]["precision"] == "fp32" and variant["served"]["fpsPerReplica"] == 326.0
    assert variant["served"]["artifact"].endswith("/fp32/model.xml")
    (change,) = fp32.deployments
    assert change.action == "update" and change.replicas == 2  # 384 / (326 x 0.8) = 1.47 -> 2
    # And back to keep: the last model that passed returns.
    body = with_status(body, fp32)
    body["spec"]["rollout"] = {"onGateFailure": "keep"}
    back = plan(body, observed, CONFIG, now=T2)
    assert back.status["variants"][0]["served"]["artifact"] == served_before["artifact"]


def test_failed_gate_with_nothing_to_keep_is_blocked() -> None:
    body = model()
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    done, pod = finished(job, result_of(job, passed=False, reason="BelowMinimumAccuracy"))
    result = plan(body, Observed(jobs=[done], pods=[pod], inventory=VNNI), CONFIG, now=T1)
    assert result.status["phase"] == c.BLOCKED and result.deployments == []
    assert condition(result, c.TYPE_ACCURACY_GATE)["reason"] == "BelowMinimumAccuracy"
    assert "served" not in result.status["variants"][0]


def test_failed_job_is_reported_with_its_reason_and_not_retried() -> None:
    body = model()
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    message = json.dumps({"error": {"stage": "convert", "message": "r100.onnx does not exist"}})
    done, pod = finished(job, message, exit_code=1)
    result = plan(body, Observed(jobs=[done], pods=[pod], inventory=VNNI), CONFIG, now=T1)
    (variant,) = result.status["variants"]
    assert variant["state"] == "Failed"
    assert variant["result"]["error"] == {
        "reason": "BackoffLimitExceeded", "stage": "convert", "exitCode": 1,
        "message": "r100.onnx does not exist (exit code 1)",
    }  # fmt: skip
    assert result.status["phase"] == c.FAILED
    degraded = condition(result, c.TYPE_DEGRADED)
    assert degraded["reason"] == c.REASON_JOB_FAILED and "r100.onnx does not exist" in degraded["message"]
    assert c.EVENT_JOB_FAILED in event_reasons(result)
    # The Job ages out (TTL): the recorded failure stays and nothing is re-run for the same spec.
    later = plan(with_status(body, result), Observed(inventory=VNNI), CONFIG, now=T2)
    assert later.create_jobs == [] and later.status["variants"][0]["state"] == "Failed"


def test_rerun_annotation_runs_the_pipeline_again() -> None:
    body, job, deployment = first_pass_to_ready()
    body["metadata"]["annotations"] = {"qfleet.dev/rerun": "2030-01-02"}
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert len(result.create_jobs) == 1 and result.delete_jobs == [job["metadata"]["name"]]


def test_removed_target_loses_its_deployment_and_jobs() -> None:
    body, job, deployment = first_pass_to_ready()
    body["spec"]["targets"] = [{"isa": "avx2"}]
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.delete_deployments == [deployment["metadata"]["name"]]
    assert result.delete_jobs == [job["metadata"]["name"]]


def test_two_tiers_fill_in_target_order() -> None:
    body = model(
        targets=[{"isa": "amx_int8"}, {"isa": "avx512_vnni"}],
        serving={"minReplicas": 1, "maxReplicas": 2},
        demand={"cameras": 400, "cameraFps": 6, "facesPerFrame": 1},
    )
    nodes = inventory(node("a", "amx_int8"), node("v", "avx512_vnni"))
    start = plan(body, Observed(inventory=nodes), CONFIG, now=T0)
    assert len(start.create_jobs) == 2
    body = with_status(body, start)
    jobs, pods = [], []
    for job, fps in zip(start.create_jobs, (1000.0, 579.0), strict=True):
        done, pod = finished(job, result_of(job, int8_fps=fps))
        jobs.append(done)
        pods.append(pod)
    result = plan(body, Observed(jobs=jobs, pods=pods, inventory=nodes), CONFIG, now=T1)
    replicas = {change.name: change.replicas for change in result.deployments}
    # 2400 faces/s: AMX takes 2 x 800; VNNI carries the remaining 800 with 2 x 463.2.
    assert replicas == {"arcface-amx-int8": 2, "arcface-avx512-vnni": 2}
    assert result.status["summary"] == {"fps": "1000/579", "drop": "0.03/0.03"}
    assert result.status["capacity"]["replicas"] == 4


def test_invalid_spec_is_a_condition_and_touches_nothing() -> None:
    body, job, deployment = first_pass_to_ready()
    body["spec"]["source"]["uri"] = "gs://bucket/r100.onnx"
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.invalid_spec is not None and "unsupported scheme 'gs'" in result.invalid_spec
    assert (result.create_jobs, result.delete_jobs, result.deployments, result.delete_deployments) == (
        [],
        [],
        [],
        [],
    )
    assert result.status["phase"] == c.FAILED
    ready_ = condition(result, c.TYPE_READY)
    assert ready_["reason"] == c.REASON_INVALID_SPEC and "spec.source.uri" in ready_["message"]
    assert result.status["variants"] == body["status"]["variants"]  # the memory is kept
    assert event_reasons(result) == [c.EVENT_INVALID_SPEC]
    again = plan(with_status(body, result), Observed(inventory=VNNI), CONFIG, now=T2)
    assert again.events == []  # said once


@pytest.mark.parametrize("broken", [None, {}, {"targets": "avx2"}])
def test_garbage_specs_do_not_crash(broken: Any) -> None:
    body = model()
    body["spec"] = broken
    result = plan(body, Observed(), CONFIG, now=T0)
    assert result.invalid_spec and result.status["phase"] == c.FAILED


BF16_NODES = inventory(node("b1", "avx512_bf16"))


def gate_failed_with(policy: str, **result: Any) -> tuple[Plan, dict[str, Any]]:
    """A first pass on a bf16 node whose INT8 gate fails, under ``policy``. Returns (plan, model)."""
    body = model(targets=[{"isa": "avx512_bf16"}], rollout={"onGateFailure": policy})
    start = plan(body, Observed(inventory=BF16_NODES), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    done, pod = finished(job, result_of(job, passed=False, reason="AccuracyDropExceeded", **result))
    return plan(body, Observed(jobs=[done], pods=[pod], inventory=BF16_NODES), CONFIG, now=T1), body


def test_bf16_policy_serves_the_validated_bf16_model_planned_with_its_fps() -> None:
    result, _ = gate_failed_with("bf16", bf16_passed=True)
    (variant,) = result.status["variants"]
    assert variant["state"] == "GateFailed"
    served = variant["served"]
    assert served["precision"] == "bf16" and served["fpsPerReplica"] == 450.0
    assert served["artifact"].endswith("/avx512_bf16/bf16/model.xml") and served["accuracy"] == 0.9961
    assert "lastGood" not in variant  # BF16 is a fallback, never the last INT8 model that passed
    (change,) = result.deployments
    assert change.action == "create" and change.replicas == 2  # 384 / (450 x 0.8) = 1.07 -> 2
    args = change.body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1].endswith("/bf16/model.xml")
    assert "serving the BF16 model instead" in variant["message"]
    warnings = [e for e in result.events if e.reason == c.EVENT_GATE_FAILED]
    assert warnings and "serving the BF16 model instead" in warnings[0].message
    assert any(e.reason == c.EVENT_ROLLED_OUT and "BF16" in e.message for e in result.events)
    # Served, but not the current INT8 model: Degraded, and the gate condition says why.
    assert result.status["phase"] == c.DEGRADED
    assert condition(result, c.TYPE_ACCURACY_GATE)["status"] == c.FALSE
    record = variant["result"]
    assert (record["bf16Accuracy"], record["bf16Fps"]) == (0.9961, 450.0)
    assert record["bf16Gate"] == {"passed": True, "reason": "Passed", "drop": 0.0002}
    assert record["runtimeIsa"].startswith("Intel AVX-512")
    assert record["inferencePrecision"] == {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
    assert record["speedup"] == {"int8VsFp32": 1.776, "int8VsBf16": 1.287}


def test_bf16_policy_without_a_bf16_result_keeps_and_says_so() -> None:
    """An older Job (or a node that computed no bf16) has no BF16 model: as keep, with the reason."""
    result, _ = gate_failed_with("bf16")
    (variant,) = result.status["variants"]
    assert "served" not in variant and result.deployments == []
    assert result.status["phase"] == c.BLOCKED
    assert (
        "no BF16 model" in variant["message"] and "keeping the last model that passed" in variant["message"]
    )
    assert "bf16Artifact" not in variant["result"]
    warnings = [e for e in result.events if e.reason == c.EVENT_GATE_FAILED]
    assert warnings and "no BF16 model" in warnings[0].message


def test_bf16_policy_with_a_failed_bf16_gate_keeps_the_last_good_model() -> None:
    body = model(targets=[{"isa": "avx512_bf16"}])
    start = plan(body, Observed(inventory=BF16_NODES), CONFIG, now=T0)
    (job,) = start.create_jobs
    body = with_status(body, start)
    done, pod = finished(job, result_of(job, bf16_passed=True))
    first = plan(body, Observed(jobs=[done], pods=[pod], inventory=BF16_NODES), CONFIG, now=T1)
    good = first.status["variants"][0]["served"]
    assert good["precision"] == "int8"  # a passed INT8 gate serves INT8 whatever the policy
    body = with_status(body, first)
    body["spec"]["rollout"] = {"onGateFailure": "bf16"}
    body["spec"]["source"] = {"format": "onnx", "uri": "pvc://models/r100-v2.onnx"}
    second = plan(body, Observed(jobs=[done], pods=[pod], inventory=BF16_NODES), CONFIG, now=T2)
    (new_job,) = second.create_jobs
    body = with_status(body, second)
    done, pod = finished(
        new_job, result_of(new_job, passed=False, reason="AccuracyDropExceeded", bf16_passed=False)
    )
    kept = plan(body, Observed(jobs=[done], pods=[pod], inventory=BF16_NODES), CONFIG, now=T2)
    (variant,) = kept.status["variants"]
    assert variant["served"]["artifact"] == good["artifact"] and variant["served"]["precision"] == "int8"
    assert "BF16 model failed the gate too (AccuracyDropExceeded)" in variant["message"]
    assert variant["result"]["bf16Gate"]["passed"] is False


def test_bf16_policy_on_a_tier_without_native_bf16_is_an_invalid_spec() -> None:
    """The whole spec is refused (nothing created, nothing served changes), naming the tier."""
    body, job, deployment = first_pass_to_ready()  # avx512_vnni, serving INT8
    served_before = body["status"]["variants"][0]["served"]
    body["spec"]["rollout"] = {"onGateFailure": "bf16"}
    body["metadata"]["generation"] = 2
    result = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.invalid_spec is not None
    assert "onGateFailure bf16" in result.invalid_spec and "avx512_vnni has none" in result.invalid_spec
    assert (result.create_jobs, result.delete_jobs, result.deployments) == ([], [], [])
    assert result.status["phase"] == c.FAILED
    for type_ in (c.TYPE_READY, c.TYPE_DEGRADED):
        found = condition(result, type_)
        assert found["reason"] == c.REASON_INVALID_SPEC and "avx512_vnni" in found["message"]
    assert result.status["variants"][0]["served"] == served_before
    assert event_reasons(result) == [c.EVENT_INVALID_SPEC]


def test_older_results_in_the_status_still_plan() -> None:
    """A status written before BF16 (no bf16 fields, precision int8/fp32) is read as it is."""
    body, job, deployment = first_pass_to_ready()
    record = body["status"]["variants"][0]["result"]
    assert not {"bf16Artifact", "bf16Gate", "runtimeIsa", "inferencePrecision", "speedup"} & set(record)
    again = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert again.status["phase"] == c.READY and again.events == []


def batching_model_served(faces_per_frame: int) -> dict[str, Any]:
    """A model with maxBatch 4 whose Job measured INT8 at 579 FPS (batch 1) and 1100 (batch 4), served."""
    body = model(serving={"minReplicas": 1, "maxReplicas": 10, "batching": {"maxBatch": 4, "timeoutMs": 3}},
                 demand={"cameras": 640 // faces_per_frame, "cameraFps": 6, "facesPerFrame": faces_per_frame})  # fmt: skip
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    done_job, pod = finished(job, result_of(job, batch_fps=1100.0))
    result = plan(
        with_status(body, start), Observed(jobs=[done_job], pods=[pod], inventory=VNNI), CONFIG, now=T1
    )
    served: dict[str, Any] = result.status["variants"][0]["served"]
    return served


def test_one_face_requests_are_planned_with_the_batch_1_fps() -> None:
    # Faces of one-face requests merge only while a queue stands: the replicas are sure of batch 1.
    served = batching_model_served(faces_per_frame=1)
    assert served["fpsPerReplica"] == 579.0 and served["batch"] == 4


def test_requests_of_fewer_faces_than_the_batch_are_planned_in_between() -> None:
    served = batching_model_served(faces_per_frame=2)
    assert served["fpsPerReplica"] == pytest.approx(579.0 + (1100.0 - 579.0) / 3)


def test_a_batching_model_is_planned_with_the_fps_measured_at_its_batch() -> None:
    # A frame's faces travel in one request: 4 faces fill a batch of 4 on their own.
    body = model(serving={"minReplicas": 1, "maxReplicas": 10, "batching": {"maxBatch": 4, "timeoutMs": 3}},
                 demand={"cameras": 160, "cameraFps": 6, "facesPerFrame": 4})  # fmt: skip
    start = plan(body, Observed(inventory=VNNI), CONFIG, now=T0)
    (job,) = start.create_jobs
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--benchmark-batch") + 1] == "4"
    body = with_status(body, start)
    done_job, pod = finished(job, result_of(job, batch_fps=1100.0))
    result = plan(body, Observed(jobs=[done_job], pods=[pod], inventory=VNNI), CONFIG, now=T1)
    (variant,) = result.status["variants"]
    assert variant["served"]["fpsPerReplica"] == 1100.0 and variant["served"]["batch"] == 4
    assert variant["result"]["int8Fps"] == 579.0 and variant["result"]["int8BatchFps"] == 1100.0
    (change,) = result.deployments
    assert change.replicas == 5  # 3840 faces/s / (1100 x 0.8) = 4.4; at batch 1 it would be 9
    server_args = change.body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert server_args[server_args.index("--max-batch") + 1] == "4"
    assert server_args[server_args.index("--batch-timeout-ms") + 1] == "3"


def test_served_records_of_older_operators_serve_at_batch_1() -> None:
    """A status written before batching (served without ``batch``) keeps its pods as they are."""
    body, job, deployment = first_pass_to_ready()
    assert body["status"]["variants"][0]["served"]["batch"] == 1
    for key in ("served", "lastGood"):
        del body["status"]["variants"][0][key]["batch"]
    again = plan(body, Observed(jobs=[job], deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert again.deployments == [] and again.create_jobs == []
    assert again.status["variants"][0]["served"]["batch"] == 1


# -- the fleet through changes ----------------------------------------------------------------------


def test_a_lost_status_is_rebuilt_from_the_deployment() -> None:
    body, _job, deployment = first_pass_to_ready()
    served = body["status"]["variants"][0]["served"]
    body.pop("status")
    body["spec"]["demand"]["cameras"] = 640
    result = plan(body, Observed(deployments=[deployment], inventory=VNNI), CONFIG, now=T2)
    assert result.create_jobs == []  # the result of the served key came back with the Deployment
    (variant,) = result.status["variants"]
    assert variant["served"]["artifact"] == served["artifact"] and variant["state"] == "Succeeded"
    (change,) = result.deployments
    assert change.action == "scale" and change.replicas == 9


def crash_looping_pod(
    deployment: dict[str, Any], artifact: str, statuses: str = "containerStatuses"
) -> dict[str, Any]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return {
        "metadata": {"name": "p1", "labels": labels, "annotations": {"qfleet.dev/artifact": artifact}},
        "status": {"phase": "Running", statuses: [{"ready": False, "restartCount": 4,
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
    }  # fmt: skip


# A crashing server, or a model fetch (the init container) that keeps refusing a damaged artifact.
@pytest.mark.parametrize("statuses", ["containerStatuses", "initContainerStatuses"])
def test_a_crash_looping_rollout_goes_back_to_the_last_good_model(statuses: str) -> None:
    body, old_job, deployment = first_pass_to_ready()
    good = body["status"]["variants"][0]["served"]["artifact"]
    result, job = new_source_job(body, Observed(jobs=[old_job], deployments=[deployment], inventory=VNNI))
    body = with_status(body, result)
    done, pod = finished(job, result_of(job, int8_fps=600.0))
    rolling = plan(
        body, Observed(jobs=[done], pods=[pod], deployments=[deployment], inventory=VNNI), CONFIG, now=T2
    )
    (update,) = rolling.deployments
    body = with_status(body, rolling)
    new = rolling.status["variants"][0]["served"]["artifact"]
    current = applied(deployment, update.body)
    current["metadata"]["generation"] = 2  # rolling: not all pods run the new template
    crashing = crash_looping_pod(current, new, statuses)
    back = plan(body, Observed(jobs=[done], pods=[pod, crashing], deployments=[current], inventory=VNNI),
                CONFIG, now=T2)  # fmt: skip
    (variant,) = back.status["variants"]
    assert variant["served"]["artifact"] == good
    assert variant["rolledBack"]["artifact"] == new and variant["rolledBack"]["reason"] == "CrashLoopBackOff"
    assert condition(back, c.TYPE_ROLLED_BACK)["status"] == c.TRUE
    assert c.EVENT_ROLLED_BACK in event_reasons(back)
    (change,) = back.deployments
    assert change.body["metadata"]["annotations"]["qfleet.dev/artifact"] == good
    # Not tried again while the key stays.
    body = with_status(body, back)
    again = plan(body, Observed(jobs=[done], pods=[pod], deployments=[applied(current, change.body)],
                                inventory=VNNI), CONFIG, now=T2)  # fmt: skip
    assert again.status["variants"][0]["served"]["artifact"] == good


def test_the_old_tier_shrinks_only_as_the_new_one_becomes_ready() -> None:
    body = model(targets=[{"isa": "amx_int8"}, {"isa": "avx512_vnni"}])
    body["spec"]["demand"]["cameras"] = 640  # 3840 faces/s: 9 VNNI replicas
    both = inventory(node("n1", "avx512_vnni"), node("n2", "amx_int8"))
    only_vnni = inventory(node("n1", "avx512_vnni"))
    (job,) = plan(body, Observed(inventory=only_vnni), CONFIG, now=T0).create_jobs
    body = with_status(body, plan(body, Observed(inventory=only_vnni), CONFIG, now=T0))
    done, pod = finished(job, result_of(job))
    served = plan(body, Observed(jobs=[done], pods=[pod], inventory=only_vnni), CONFIG, now=T1)
    body = with_status(body, served)
    (create,) = served.deployments
    vnni = ready(create.body)
    assert vnni["spec"]["replicas"] == 9
    # AMX arrives and passes (2000 faces/s per replica): fill moves the load there, but not yet.
    start = plan(body, Observed(jobs=[done], pods=[pod], deployments=[vnni], inventory=both), CONFIG, now=T1)
    (amx_job,) = start.create_jobs
    body = with_status(body, start)
    amx_done, amx_pod = finished(amx_job, result_of(amx_job, int8_fps=2000.0))
    jobs, pods = [done, amx_done], [pod, amx_pod]
    handover = plan(body, Observed(jobs=jobs, pods=pods, deployments=[vnni], inventory=both), CONFIG, now=T2)
    replicas = {change.name: change.replicas for change in handover.deployments}
    # VNNI keeps minReplicas 1 and the Service spreads evenly: 9 replicas in all (3840 / 463.2).
    assert replicas["arcface-amx-int8"] == 8
    assert replicas.get("arcface-avx512-vnni", 9) == 9  # kept: no AMX replica is ready yet
    amx = next(change.body for change in handover.deployments if change.name == "arcface-amx-int8")
    body = with_status(body, handover)
    # Two of three AMX replicas ready: VNNI keeps what the rest of the demand needs.
    partly = copy.deepcopy(amx)
    partly["status"] = {"readyReplicas": 2, "updatedReplicas": 8, "replicas": 8}
    step = plan(
        body, Observed(jobs=jobs, pods=pods, deployments=[vnni, partly], inventory=both), CONFIG, now=T2
    )
    replicas = {change.name: change.replicas for change in step.deployments}
    assert replicas["arcface-avx512-vnni"] == 2  # (3840 - 3200) / 463.2 -> 2
    assert step.status["capacity"]["shortfallFacesPerSecond"] == 0


def test_pending_pods_past_their_grace_spill_to_the_next_tier() -> None:
    body = model(targets=[{"isa": "avx512_vnni"}, {"isa": "avx2"}])
    # 1920 faces/s: 5 replicas of 463.2 (avx2 keeps its minReplicas 1, VNNI gets 4).
    body["spec"]["demand"].update(cameras=320, pendingGraceSeconds=60)
    both = inventory(node("n1", "avx512_vnni"), node("n2", "avx2"))
    start = plan(body, Observed(inventory=both), CONFIG, now=T0)
    body = with_status(body, start)
    finished_jobs = [finished(job, result_of(job)) for job in start.create_jobs]
    jobs, pods = [j for j, _ in finished_jobs], [p for _, p in finished_jobs]
    served = plan(body, Observed(jobs=jobs, pods=pods, inventory=both), CONFIG, now=T1)
    body = with_status(body, served)
    deployments = [ready(change.body) for change in served.deployments]
    vnni = next(d for d in deployments if d["metadata"]["name"] == "arcface-avx512-vnni")
    assert vnni["spec"]["replicas"] == 4
    labels = vnni["spec"]["template"]["metadata"]["labels"]
    pending = [
        {"metadata": {"name": f"p{i}", "labels": labels},
         "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "lastTransitionTime": T1}]}}
        for i in range(2)
    ]  # fmt: skip
    early = plan(body, Observed(jobs=jobs, pods=pods + pending, deployments=deployments, inventory=both),
                 CONFIG, now="2030-01-01T00:05:30Z")  # fmt: skip
    assert early.requeue_after == pytest.approx(31)  # the grace ends in 30 s
    late = plan(body, Observed(jobs=jobs, pods=pods + pending, deployments=deployments, inventory=both),
                CONFIG, now=T2)  # fmt: skip
    replicas = {change.name: change.replicas for change in late.deployments}
    assert replicas.get("arcface-avx512-vnni", 4) == 4  # the pending pods are the autoscaler's cue
    assert replicas["arcface-avx2"] == 3  # its own 1 and the 2 pending replicas' share
    covered = condition(late, c.TYPE_CAPACITY_INSUFFICIENT)
    assert covered["status"] == c.FALSE and "unschedulable" in covered["message"]


def test_all_tiers_switch_to_a_new_source_together() -> None:
    body = model(targets=[{"isa": "avx512_vnni"}, {"isa": "avx2"}])
    both = inventory(node("n1", "avx512_vnni"), node("n2", "avx2"))
    start = plan(body, Observed(inventory=both), CONFIG, now=T0)
    body = with_status(body, start)
    done = [finished(job, result_of(job)) for job in start.create_jobs]
    served = plan(body, Observed(jobs=[j for j, _ in done], pods=[p for _, p in done], inventory=both),
                  CONFIG, now=T1)  # fmt: skip
    body = with_status(body, served)
    deployments = [ready(change.body) for change in served.deployments]
    old = {v["isa"]: v["served"]["artifact"] for v in body["status"]["variants"]}
    body["spec"]["source"] = {"format": "onnx", "uri": "pvc://models/r100-v2.onnx"}
    only_vnni = inventory(node("n1", "avx512_vnni"))
    first = plan(body, Observed(deployments=deployments, inventory=only_vnni), CONFIG, now=T2)
    body = with_status(body, first)
    (job,) = first.create_jobs
    vnni_done, vnni_pod = finished(job, result_of(job))
    held = plan(body, Observed(jobs=[vnni_done], pods=[vnni_pod], deployments=deployments, inventory=only_vnni),
                CONFIG, now=T2)  # fmt: skip
    variants = {v["isa"]: v for v in held.status["variants"]}
    assert variants["avx512_vnni"]["served"]["artifact"] == old["avx512_vnni"]
    assert variants["avx512_vnni"]["reason"] == c.REASON_WAITING_FOR_TIERS
    served_now = {
        change.body["metadata"]["annotations"]["qfleet.dev/artifact"] for change in held.deployments
    }
    assert served_now <= set(old.values())  # no Deployment rolls to the new model
    # perTier lets it switch on its own.
    body["spec"]["rollout"] = {"consistency": "perTier"}
    free = plan(body, Observed(jobs=[vnni_done], pods=[vnni_pod], deployments=deployments, inventory=only_vnni),
                CONFIG, now=T2)  # fmt: skip
    switched = {v["isa"]: v["served"]["artifact"] for v in free.status["variants"]}
    assert switched["avx512_vnni"] != old["avx512_vnni"] and switched["avx2"] == old["avx2"]


def test_kstatus_reads_reconciling_and_stalled() -> None:
    """Flux's health checks (kstatus) read the abnormal-true pair Reconciling / Stalled."""
    quantizing = plan(model(), Observed(inventory=VNNI), CONFIG, now=T0)
    assert condition(quantizing, c.TYPE_RECONCILING)["status"] == c.TRUE
    assert condition(quantizing, c.TYPE_STALLED)["status"] == c.FALSE
    body, _job, _deployment = first_pass_to_ready()
    ready_status = parse_status(body["status"])
    assert c.find(ready_status.conditions, c.TYPE_RECONCILING).status == c.FALSE  # type: ignore[union-attr]
    invalid = plan(model(targets=[]), Observed(inventory=VNNI), CONFIG, now=T0)
    assert condition(invalid, c.TYPE_STALLED)["status"] == c.TRUE
    assert condition(invalid, c.TYPE_RECONCILING)["status"] == c.FALSE
