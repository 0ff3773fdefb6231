"""Prometheus metrics: results counted once, gauges follow the status and go with the model."""

from __future__ import annotations

from prometheus_client import generate_latest

from qfleet.fleet.status import GateRecord, ResultRecord, parse_status
from qfleet.operator.metrics import Metrics

STATUS = {
    "demand": {"cameras": 64, "facesPerSecond": 384.0},
    "capacity": {"replicas": 1, "facesPerSecond": 463.2, "shortfallFacesPerSecond": 0.0},
    "variants": [
        {
            "isa": "avx512_vnni",
            "replicas": 1,
            "served": {"precision": "int8", "fpsPerReplica": 579.0},
            "result": {"succeeded": True, "fp32Accuracy": 0.9963, "int8Accuracy": 0.996},
        }
    ],
}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_model_gauges_follow_the_status_and_are_removed_with_it() -> None:
    metrics = Metrics()
    metrics.model_status("faces", "arcface", parse_status(STATUS))
    key = {"namespace": "faces", "model": "arcface"}
    assert sample(metrics, "qfleet_camera_demand", **key) == 64
    assert sample(metrics, "qfleet_demand_faces_per_second", **key) == 384
    assert sample(metrics, "qfleet_desired_replicas", **key, isa="avx512_vnni") == 1
    assert sample(metrics, "qfleet_fps_per_replica", **key, isa="avx512_vnni", precision="int8") == 579
    assert sample(metrics, "qfleet_lfw_accuracy", **key, isa="avx512_vnni", precision="fp32") == 0.9963
    # The served model changes precision: the old series goes away.
    fp32 = {
        **STATUS,
        "variants": [{**STATUS["variants"][0], "served": {"precision": "fp32", "fpsPerReplica": 326.0}}],
    }
    metrics.model_status("faces", "arcface", parse_status(fp32))
    assert sample(metrics, "qfleet_fps_per_replica", **key, isa="avx512_vnni", precision="int8") is None
    assert sample(metrics, "qfleet_fps_per_replica", **key, isa="avx512_vnni", precision="fp32") == 326
    metrics.forget("faces", "arcface")
    assert sample(metrics, "qfleet_camera_demand", **key) is None
    assert b"qfleet_fps_per_replica{" not in generate_latest(metrics.registry)


def test_results_and_reconciles_are_counted() -> None:
    metrics = Metrics()
    gate = GateRecord(passed=False, reason="BelowMinimumAccuracy")
    metrics.new_result("avx2", ResultRecord("key", "job", True, "t1", gate=gate, seconds=95.0))
    metrics.new_result("avx2", ResultRecord("key", "job", False, "t1"))
    metrics.reconciled("ok", 0.01)
    assert sample(metrics, "qfleet_pipelines_total", isa="avx2", outcome="succeeded") == 1
    assert sample(metrics, "qfleet_pipelines_total", isa="avx2", outcome="failed") == 1
    assert (
        sample(
            metrics, "qfleet_gate_outcomes_total", isa="avx2", passed="false", reason="BelowMinimumAccuracy"
        )
        == 1
    )
    assert sample(metrics, "qfleet_pipeline_duration_seconds_sum", isa="avx2") == 95
    assert sample(metrics, "qfleet_reconciles_total", result="ok") == 1


def test_two_instances_do_not_collide() -> None:
    Metrics()
    Metrics()  # separate registries: tests and restarts can build them freely


def test_capacity_ready_replicas_conditions_and_states_follow_the_status() -> None:
    metrics = Metrics()
    status = {
        **STATUS,
        "conditions": [
            {"type": "CapacityInsufficient", "status": "False", "reason": "DemandCovered"},
            {"type": "RolledBack", "status": "False", "reason": "NoRollback"},
        ],
        "variants": [{**STATUS["variants"][0], "state": "Succeeded", "readyReplicas": 0}],
    }
    metrics.model_status("faces", "arcface", parse_status(status))
    key = {"namespace": "faces", "model": "arcface"}
    tier = {**key, "isa": "avx512_vnni"}
    assert sample(metrics, "qfleet_capacity_faces_per_second", **key) == 463.2
    assert sample(metrics, "qfleet_ready_replicas", **tier) == 0
    assert sample(metrics, "qfleet_condition", **key, type="CapacityInsufficient", status="False") == 1
    assert sample(metrics, "qfleet_target_state", **tier, state="Succeeded") == 1
    # A condition changes status and a tier its state: one series each, the old ones go away.
    changed = {
        **status,
        "conditions": [
            {"type": "CapacityInsufficient", "status": "True", "reason": "ReplicasAtMaximum"},
            {"type": "RolledBack", "status": "True", "reason": "CrashLoop"},
        ],
        "variants": [{**status["variants"][0], "state": "GateFailed", "readyReplicas": 1}],
    }
    metrics.model_status("faces", "arcface", parse_status(changed))
    assert sample(metrics, "qfleet_condition", **key, type="CapacityInsufficient", status="False") is None
    assert sample(metrics, "qfleet_condition", **key, type="RolledBack", status="True") == 1
    assert sample(metrics, "qfleet_target_state", **tier, state="Succeeded") is None
    assert sample(metrics, "qfleet_target_state", **tier, state="GateFailed") == 1
    assert sample(metrics, "qfleet_ready_replicas", **tier) == 1
    metrics.forget("faces", "arcface")
    exposition = generate_latest(metrics.registry)
    for name in ("qfleet_condition{", "qfleet_target_state{", "qfleet_ready_replicas{"):
        assert name.encode() not in exposition


def test_model_gauges_are_exposed_as_gauges_with_their_help_for_every_model() -> None:
    metrics = Metrics()
    exposition = generate_latest(metrics.registry).decode()
    # Declared before any model exists, as a labelled Gauge was.
    assert "# HELP qfleet_desired_replicas Replicas the operator asks for, per tier" in exposition
    assert "# TYPE qfleet_desired_replicas gauge" in exposition
    metrics.model_status("faces", "a", parse_status(STATUS))
    metrics.model_status("cams", "b", parse_status(STATUS))
    exposition = generate_latest(metrics.registry).decode()
    for namespace, model in (("faces", "a"), ("cams", "b")):
        assert (
            f'qfleet_desired_replicas{{isa="avx512_vnni",model="{model}",namespace="{namespace}"}} 1.0'
            in exposition
        )
