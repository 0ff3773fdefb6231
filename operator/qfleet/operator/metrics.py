"""Prometheus metrics of the operator, served on ``/metrics`` (``--metrics-port``).

Counters count what this operator process saw (they restart at zero with it, as Prometheus
expects); gauges describe each model's current state and are dropped when the model goes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
        self.models = ModelGauges()
        r.register(self.models)
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
        """Set the gauges of one model from its new status (series it no longer has go away)."""
        demand = status.demand or DemandStatus(cameras=0, faces_per_second=0.0)
        rows: list[Row] = [
            ("cameras", (), float(demand.cameras)),
            ("demand_fps", (), demand.faces_per_second),
            ("shortfall_fps", (), status.capacity.shortfall_faces_per_second if status.capacity else 0.0),
            ("capacity_fps", (), status.capacity.faces_per_second if status.capacity else 0.0),
        ]
        rows += [("condition", (item.type, item.status), 1.0) for item in status.conditions]
        for variant in status.variants:
            isa = variant.isa
            if variant.state:
                rows.append(("target_state", (isa, variant.state), 1.0))
            if variant.replicas is not None:
                rows.append(("desired_replicas", (isa,), float(variant.replicas)))
            if variant.ready_replicas is not None:
                rows.append(("ready_replicas", (isa,), float(variant.ready_replicas)))
            if variant.served is not None:
                rows.append(
                    ("fps_per_replica", (isa, variant.served.precision), variant.served.fps_per_replica)
                )
            result = variant.result
            if result is not None and result.succeeded:
                rows.append(("accuracy", (isa, "fp32"), result.fp32_accuracy))
                rows.append(("accuracy", (isa, "int8"), result.int8_accuracy))
                if result.bf16 is not None:
                    rows.append(("accuracy", (isa, "bf16"), result.bf16.accuracy))
        self.models.put((namespace, model), rows)

    def forget(self, namespace: str, model: str) -> None:
        self.models.forget((namespace, model))


#: One series of a model: which gauge (a key of :data:`MODEL_GAUGES`), its labels after
#: ``namespace`` and ``model``, and its value.
Row = tuple[str, tuple[str, ...], float]

#: The per-model gauges: key -> (metric name, help, the labels after namespace and model).
MODEL_GAUGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "desired_replicas": ("qfleet_desired_replicas", "Replicas the operator asks for, per tier", ("isa",)),
    "fps_per_replica": (
        "qfleet_fps_per_replica",
        "Measured faces/s per replica of the served model, per tier",
        ("isa", "precision"),
    ),
    "accuracy": (
        "qfleet_lfw_accuracy",
        "LFW accuracy of the latest result, per tier and precision",
        ("isa", "precision"),
    ),
    "cameras": ("qfleet_camera_demand", "Cameras a model is sized for", ()),
    "demand_fps": ("qfleet_demand_faces_per_second", "Faces/s the cameras send", ()),
    "shortfall_fps": (
        "qfleet_capacity_shortfall_faces_per_second",
        "Demand not covered because maxReplicas was reached",
        (),
    ),
    "capacity_fps": (
        "qfleet_capacity_faces_per_second",
        "Faces/s the planned replicas of every tier carry together",
        (),
    ),
    "ready_replicas": (
        "qfleet_ready_replicas",
        "Ready replicas of the inference Deployment, per tier",
        ("isa",),
    ),
    "condition": (
        "qfleet_condition",
        "1 for each status condition of a model at its current status (True, False or Unknown)",
        ("type", "status"),
    ),
    "target_state": (
        "qfleet_target_state",
        "1 for the state of each target tier (Queued, Running, Succeeded, GateFailed, Failed, ...)",
        ("isa", "state"),
    ),
}


class ModelGauges(Collector):
    """Every model's gauges, kept as plain rows per model and turned into metric families only
    when Prometheus scrapes.

    Not one prometheus_client ``Gauge`` child per series: each child is an object with two locks,
    about 19 series per model (50 MiB at 3000 models by tracemalloc); with the rows, an operator's
    cold start at 10,000 models peaked at 323 MiB against 478 MiB. Rows are replaced whole, so a
    scrape (on the metrics server's thread) sees each model's old or new series, never a mix.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[Row, ...]] = {}

    def put(self, key: tuple[str, str], rows: list[Row]) -> None:
        self._rows[key] = tuple(rows)

    def forget(self, key: tuple[str, str]) -> None:
        self._rows.pop(key, None)

    def describe(self) -> list[Metric]:
        return list(self._families().values())

    def collect(self) -> list[Metric]:
        families = self._families()
        for (namespace, model), rows in list(self._rows.items()):
            for gauge, labels, value in rows:
                families[gauge].add_metric([namespace, model, *labels], value)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            gauge: GaugeMetricFamily(name, doc, labels=["namespace", "model", *labels])
            for gauge, (name, doc, labels) in MODEL_GAUGES.items()
        }
