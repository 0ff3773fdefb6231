"""Pure parts of the load generator (schedule, report) and of the server metrics (rolling rate)."""

from __future__ import annotations

import numpy as np
import pytest

from qfleet.errors import InputError
from qfleet.serving.loadtest import (
    FrameResult,
    LoadSpec,
    camera_offsets,
    frames_in,
    parse_target,
    percentiles_ms,
    summarize,
)
from qfleet.serving.metrics import RollingRate, ServerMetrics


def spec(**overrides: object) -> LoadSpec:
    values: dict[str, object] = {
        "url": "http://127.0.0.1:8080",
        "cameras": 2,
        "camera_fps": 10.0,
        "faces_per_frame": 3,
        "seconds": 1.0,
    }
    values.update(overrides)
    return LoadSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "model", "base", "named"),
    [
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080", None),
        ("http://127.0.0.1:8080/", "m", "http://127.0.0.1:8080", "m"),
        ("http://h:1/v2/models/arc/infer", None, "http://h:1", "arc"),
        ("https://h/prefix/v2/models/arc", "arc", "https://h/prefix", "arc"),
    ],
)
def test_parse_target(url: str, model: str | None, base: str, named: str | None) -> None:
    target = parse_target(url, model)
    assert (target.base_url, target.model) == (base, named)


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://h/x", "http://"])
def test_parse_target_refuses_non_http(url: str) -> None:
    with pytest.raises(InputError, match="not an http"):
        parse_target(url)


def test_parse_target_refuses_conflicting_model() -> None:
    with pytest.raises(InputError, match="names model 'a'"):
        parse_target("http://h/v2/models/a/infer", "b")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cameras": 0}, "--cameras"),
        ({"camera_fps": 0.0}, "--camera-fps"),
        ({"faces_per_frame": 0}, "--faces-per-frame"),
        ({"seconds": -1.0}, "--seconds"),
        ({"datatype": "INT8"}, "--datatype"),
    ],
)
def test_spec_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        spec(**overrides).validate()


def test_frames_in_counts_sends_before_the_end() -> None:
    assert frames_in(0.0, 0.1, 1.0) == 10  # 0.0 .. 0.9
    assert frames_in(0.05, 0.1, 1.0) == 10  # 0.05 .. 0.95
    assert frames_in(0.1, 0.1, 1.0) == 9  # 0.1 .. 0.9 (1.0 is not before the end)
    assert frames_in(2.0, 0.1, 1.0) == 0


def test_camera_offsets_spread_inside_one_interval() -> None:
    offsets = camera_offsets(200, 0.25, np.random.default_rng(1))
    assert offsets.min() >= 0 and offsets.max() < 0.25
    assert offsets.std() > 0.05  # not all in phase


def test_percentiles() -> None:
    result = percentiles_ms([i / 1000 for i in range(1, 101)])
    assert result["p50"] == pytest.approx(50.5)
    assert result["p99"] == pytest.approx(99.01)
    assert result["max"] == pytest.approx(100.0)
    assert percentiles_ms([])["p95"] is None


def test_summary_counts_errors_late_and_slow_frames() -> None:
    load = spec()  # interval 0.1 s
    results = [
        FrameResult(0, scheduled=10.0, sent=10.0, done=10.02, ok=True),
        FrameResult(1, scheduled=10.05, sent=10.06, done=10.30, ok=True),  # answered after > 1 interval
        FrameResult(0, scheduled=10.1, sent=10.25, done=10.4, ok=False, error="http_503"),  # sent late
        FrameResult(1, scheduled=10.15, sent=10.15, done=10.5, ok=False, error="timeout"),
    ]
    report = summarize(load, results, started=10.0, frames_scheduled=4)
    assert report["frames_ok"] == 2
    assert report["errors"] == 2
    assert report["errors_by_kind"] == {"http_503": 1, "timeout": 1}
    assert report["late_frames"] == 1
    assert report["frames_over_interval"] == 1
    assert report["offered_fps"] == pytest.approx(60.0)
    assert report["offered_fps_actual"] == pytest.approx(12.0)
    assert report["achieved_fps"] == pytest.approx(2 * 3 / 0.5)
    assert report["latency_ms"]["max"] == pytest.approx(250.0)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rolling_rate_over_the_window() -> None:
    clock = FakeClock()
    rate = RollingRate(10, clock=clock)
    for _ in range(20):  # 5 events per second for 20 s
        rate.add(5)
        clock.now += 1.0
    assert rate.rate() == pytest.approx(5.0, rel=0.1)
    clock.now += 30.0  # idle: the window empties
    assert rate.rate() == 0.0


def test_rolling_rate_of_a_young_server_uses_uptime() -> None:
    clock = FakeClock(1000.5)
    rate = RollingRate(10, clock=clock)
    rate.add(10)
    clock.now += 2.0
    assert rate.rate() == pytest.approx(5.0)


def test_server_metrics_exposition() -> None:
    metrics = ServerMetrics(model_name="m", model_kind="int8", model_isa="avx2")
    metrics.answered("infer", 200)
    metrics.answered("infer", 400)
    metrics.inferred(7, 0.02)
    text = metrics.exposition().decode()
    assert 'qfleet_server_requests_total{code="400",endpoint="infer"} 1.0' in text
    assert "qfleet_server_faces_inferred_total 7.0" in text
    assert "qfleet_server_request_latency_seconds_count 1.0" in text
    assert (
        'qfleet_server_model_info{inference_precision="f32",isa="avx2",kind="int8",model="m",precision="int8"} 1.0'
        in text
    )
    bf16 = ServerMetrics(
        model_name="m",
        model_kind="fp32",
        model_isa="avx512_bf16",
        model_precision="bf16",
        inference_precision="bf16",
    )
    assert 'inference_precision="bf16",isa="avx512_bf16"' in bf16.exposition().decode()
    # A second server in the same process has counters of its own.
    assert (
        "qfleet_server_faces_inferred_total 0.0"
        in ServerMetrics(model_name="m", model_kind="int8", model_isa="avx2").exposition().decode()
    )


@pytest.mark.parametrize(
    ("url", "target"),
    [("127.0.0.1:8081", "127.0.0.1:8081"), ("grpc://h:1", "h:1"), ("[::1]:9", "[::1]:9")],
)
def test_parse_grpc_target(url: str, target: str) -> None:
    from qfleet.serving.loadtest import parse_grpc_target

    assert parse_grpc_target(url) == target


@pytest.mark.parametrize("url", ["http://h:1", "h", "grpc://h:1/v2/models/m", "h:x"])
def test_parse_grpc_target_refuses_what_is_not_host_port(url: str) -> None:
    from qfleet.serving.loadtest import parse_grpc_target

    with pytest.raises(InputError, match="not a gRPC address"):
        parse_grpc_target(url)
