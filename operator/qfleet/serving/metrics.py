"""Prometheus metrics of the inference server, in a registry of its own.

A registry per server (not the process-global default) keeps two servers in one process -- as
in the tests -- from sharing counters, and keeps Python process metrics out of the exposition
unless asked for.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: The gRPC status codes of ``qfleet_server_grpc_requests_total`` that count as server errors in
#: the chart's error-rate alert and dashboard panel (whose regular expressions a test compares with
#: this): the ones REST answers with a 5xx -- overload (RESOURCE_EXHAUSTED), draining
#: (UNAVAILABLE), a fault (INTERNAL, UNKNOWN) -- and those gRPC's runtime may report on its own.
GRPC_SERVER_ERROR_CODES: tuple[str, ...] = (
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "INTERNAL",
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "DATA_LOSS",
)

#: Latency buckets (seconds) from a one-face request on a small model to an overloaded queue.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: One face apart up to 4 (the batch most models are served at), so that a dashboard tells full
#: batches from partial ones; coarser above.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)

#: Window of the rolling faces/s gauge: long enough to smooth bursts of camera frames, short
#: enough that an autoscaler reading it sees load changes within a scrape or two.
DEFAULT_RATE_WINDOW_S = 10.0


class RollingRate:
    """Events per second over the last ``window_s`` seconds, in one-second buckets.

    ``clock`` is injectable so the arithmetic can be tested without sleeping.
    """

    def __init__(
        self, window_s: float = DEFAULT_RATE_WINDOW_S, *, clock: Callable[[], float] = time.monotonic
    ):
        if window_s < 1:
            raise ValueError("the rate window must be at least 1 second")
        # Whole seconds: the buckets are one second wide.
        self.window_s = int(window_s)
        self._clock = clock
        self._started = clock()
        # (second, count) pairs, oldest first.
        self._buckets: deque[list[int]] = deque()

    def add(self, count: int = 1) -> None:
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self._expire(second)

    def _expire(self, now_second: int) -> None:
        oldest_kept = now_second - self.window_s
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()

    def rate(self) -> float:
        """Events per second over the window (or over the uptime, while shorter than the window)."""
        now = self._clock()
        self._expire(int(now))
        total = sum(count for _, count in self._buckets)
        # The window reaches back window_s whole seconds plus the current partial second; a
        # server younger than that divides by its uptime instead, so the first scrape is not diluted.
        span = min(self.window_s + (now - int(now)), now - self._started)
        return total / span if span > 0 else 0.0


class ServerMetrics:
    """The server's counters, gauges and histograms, and their text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        *,
        model_name: str,
        model_kind: str,
        model_isa: str,
        model_precision: str | None = None,
        inference_precision: str = "f32",
        rate_window_s: float = DEFAULT_RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "qfleet_server_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "qfleet_server_grpc_requests",
            "gRPC calls answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.faces = Counter(
            "qfleet_server_faces_inferred",
            "Faces (batch items) inferred and answered",
            registry=self.registry,
        )
        self.latency = Histogram(
            "qfleet_server_request_latency_seconds",
            "Latency of successful inference requests (REST and gRPC), from arrival to response",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "qfleet_server_inflight_requests",
            "Inference requests being processed now",
            registry=self.registry,
        )
        self.batch = Histogram(
            "qfleet_server_inference_batch_faces",
            "Faces per OpenVINO inference call (dynamic batching merges requests)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.faces_total = 0
        self.face_rate = RollingRate(rate_window_s, clock=clock)
        rate_gauge = Gauge(
            "qfleet_server_faces_per_second",
            f"Faces inferred per second over the last {rate_window_s:g} s",
            registry=self.registry,
        )
        rate_gauge.set_function(self.face_rate.rate)
        self.ready = Gauge(
            "qfleet_server_ready", "1 while the server accepts inference requests", registry=self.registry
        )
        info = Gauge(
            "qfleet_server_model_info",
            "The served model (always 1): its graph kind, ISA tier, variant and the precision it computes in",
            ["model", "kind", "isa", "precision", "inference_precision"],
            registry=self.registry,
        )
        info.labels(
            model=model_name,
            kind=model_kind,
            isa=model_isa,
            precision=model_precision or model_kind,
            inference_precision=inference_precision,
        ).set(1)

    def answered(self, endpoint: str, code: int) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()

    def answered_grpc(self, method: str, code: str) -> None:
        self.grpc_requests.labels(method=method, code=code).inc()

    def inferred(self, faces: int, seconds: float) -> None:
        self.faces.inc(faces)
        self.faces_total += faces
        self.face_rate.add(faces)
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
