"""Prometheus metrics of the operator, served on ``/metrics`` (``--metrics-port``).

Counters count what this operator process saw (they restart at zero with it, as Prometheus
expects); gauges describe each model's current state and are dropped when the model goes.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from qfleet.fleet.status import DemandStatus, ModelStatus, ResultRecord

_DURATION_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "qfleet_reconciles", "Reconciles of QuantizedModels by result", ["result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "qfleet_reconcile_duration_seconds", "Time to plan and apply one reconcile", registry=r
        )
        self.pipeline_seconds = Histogram(
            "qfleet_pipeline_duration_seconds",
            "Duration of finished quantization pipelines (convert to benchmark) by ISA tier",
            ["isa"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pipelines = Counter(
            "qfleet_pipelines",
            "Finished quantization Jobs by ISA tier and outcome",
            ["isa", "outcome"],
            registry=r,
        )
        self.gate_outcomes = Counter(
            "qfleet_gate_outcomes",
            "Accuracy gate decisions by ISA tier and reason",
            ["isa", "passed", "reason"],
            registry=r,
        )
        model_labels = ["namespace", "model"]
        self.desired_replicas = Gauge(
            "qfleet_desired_replicas",
            "Replicas the operator asks for, per tier",
            [*model_labels, "isa"],
            registry=r,
        )
        self.fps_per_replica = Gauge(
            "qfleet_fps_per_replica",
            "Measured faces/s per replica of the served model, per tier",
            [*model_labels, "isa", "precision"],
            registry=r,
        )
        self.accuracy = Gauge(
            "qfleet_lfw_accuracy", "LFW accuracy of the latest result, per tier and precision",
            [*model_labels, "isa", "precision"], registry=r,
        )  # fmt: skip
        self.cameras = Gauge("qfleet_camera_demand", "Cameras a model is sized for", model_labels, registry=r)
        self.demand_fps = Gauge(
            "qfleet_demand_faces_per_second", "Faces/s the cameras send", model_labels, registry=r
        )
        self.shortfall_fps = Gauge(
            "qfleet_capacity_shortfall_faces_per_second",
            "Demand not covered because maxReplicas was reached",
            model_labels,
            registry=r,
        )
        self.capacity_fps = Gauge(
            "qfleet_capacity_faces_per_second",
            "Faces/s the planned replicas of every tier carry together",
            model_labels,
            registry=r,
        )
        self.ready_replicas = Gauge(
            "qfleet_ready_replicas",
            "Ready replicas of the inference Deployment, per tier",
            [*model_labels, "isa"],
            registry=r,
        )
        self.condition = Gauge(
            "qfleet_condition",
            "1 for each status condition of a model at its current status (True, False or Unknown)",
            [*model_labels, "type", "status"],
            registry=r,
        )
        self.target_state = Gauge(
            "qfleet_target_state",
            "1 for the state of each target tier (Queued, Running, Succeeded, GateFailed, Failed, ...)",
            [*model_labels, "isa", "state"],
            registry=r,
        )
        self.jobs_queued = Gauge(
            "qfleet_quantization_jobs_queued",
            "Quantization Jobs waiting for a slot under the operator's cap on running Jobs",
            registry=r,
        )
        self.jobs_running = Gauge(
            "qfleet_quantization_jobs_running",
            "Unfinished quantization Jobs in the cluster (those the operator watches)",
            registry=r,
        )
        self._series: dict[tuple[str, str], set[tuple[Gauge, tuple[str, ...]]]] = {}

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def reconciled(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result=result).inc()
        self.reconcile_seconds.observe(seconds)

    def job_queue(self, *, queued: int, running: int) -> None:
        """The operator-wide queue of quantization Jobs: how many wait, how many run."""
        self.jobs_queued.set(queued)
        self.jobs_running.set(running)

    def new_result(self, isa: str, result: ResultRecord) -> None:
        """Count a Job's result the first time the operator records it."""
        if not result.succeeded:
            self.pipelines.labels(isa=isa, outcome="failed").inc()
            return
        self.pipelines.labels(isa=isa, outcome="succeeded").inc()
        if result.seconds is not None:
            self.pipeline_seconds.labels(isa=isa).observe(result.seconds)
        self.gate_outcomes.labels(
            isa=isa, passed=str(result.gate.passed).lower(), reason=result.gate.reason
        ).inc()

    def model_status(self, namespace: str, model: str, status: ModelStatus) -> None:
        """Set the gauges of one model from its new status (and drop series that went away)."""
        key = (namespace, model)
        old = self._series.get(key, set())
        new: set[tuple[Gauge, tuple[str, ...]]] = set()

        def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
            gauge.labels(*labels).set(value)
            new.add((gauge, labels))

        demand = status.demand or DemandStatus(cameras=0, faces_per_second=0.0)
        put(self.cameras, key, float(demand.cameras))
        put(self.demand_fps, key, demand.faces_per_second)
        put(self.shortfall_fps, key, status.capacity.shortfall_faces_per_second if status.capacity else 0.0)
        put(self.capacity_fps, key, status.capacity.faces_per_second if status.capacity else 0.0)
        for condition in status.conditions:
            put(self.condition, (*key, condition.type, condition.status), 1.0)
        for variant in status.variants:
            isa = variant.isa
            if variant.state:
                put(self.target_state, (*key, isa, variant.state), 1.0)
            if variant.replicas is not None:
                put(self.desired_replicas, (*key, isa), float(variant.replicas))
            if variant.ready_replicas is not None:
                put(self.ready_replicas, (*key, isa), float(variant.ready_replicas))
            if variant.served is not None:
                put(
                    self.fps_per_replica,
                    (*key, isa, variant.served.precision),
                    variant.served.fps_per_replica,
                )
            result = variant.result
            if result is not None and result.succeeded:
                put(self.accuracy, (*key, isa, "fp32"), result.fp32_accuracy)
                put(self.accuracy, (*key, isa, "int8"), result.int8_accuracy)
                if result.bf16 is not None:
                    put(self.accuracy, (*key, isa, "bf16"), result.bf16.accuracy)
        for gauge, labels in old - new:
            _remove(gauge, labels)
        self._series[key] = new

    def forget(self, namespace: str, model: str) -> None:
        for gauge, labels in self._series.pop((namespace, model), set()):
            _remove(gauge, labels)


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
