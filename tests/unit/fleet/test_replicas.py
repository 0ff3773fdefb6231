from __future__ import annotations

import json
import math

import pytest

from qfleet.cli import main
from qfleet.fleet.replicas import Demand, batching_fps, needed_replicas, plan_replicas


def test_users_case_int8() -> None:
    # 64 cameras x 6 FPS x 7 faces = 2688 faces/s; 579 faces/s per replica at 80% -> 463.2 planned.
    plan = plan_replicas(Demand(64, 6, 7), 579.0)
    assert plan.demand_fps == 2688
    assert plan.replicas == math.ceil(2688 / (579 * 0.8)) == 6
    assert plan.sufficient and plan.shortfall_fps == 0


def test_exact_fit_does_not_add_a_replica() -> None:
    # 2304 / (360 * 0.8) = 8 exactly, which float division can turn into 8.000000000000002.
    assert needed_replicas(2304.0, 360.0, 0.8) == 8
    assert needed_replicas(0.1 * 3, 0.1, 1.0) == 3


def test_clamping_and_shortfall() -> None:
    plan = plan_replicas(Demand(64, 6, 7), 100.0, utilization=1.0, min_replicas=1, max_replicas=10)
    assert plan.needed_replicas == 27 and plan.replicas == 10
    assert plan.capacity_fps == 1000 and plan.shortfall_fps == pytest.approx(1688)
    assert not plan.sufficient
    idle = plan_replicas(Demand(0, 6, 7), 100.0, min_replicas=2)
    assert idle.needed_replicas == 0 and idle.replicas == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps_per_replica": 0.0}, "FPS per replica"),
        ({"fps_per_replica": 10.0, "utilization": 1.5}, "utilization"),
        ({"fps_per_replica": 10.0, "min_replicas": 3, "max_replicas": 2}, "max replicas"),
    ],
)
def test_invalid_inputs(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_replicas(Demand(1, 1, 1), **kwargs)  # type: ignore[arg-type]


def test_invalid_demand() -> None:
    with pytest.raises(ValueError, match="cameras"):
        Demand(-1, 6, 7)


def test_cli_json_and_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "plan",
        "--fps-per-replica",
        "579",
        "--cameras",
        "64",
        "--camera-fps",
        "6",
        "--faces-per-frame",
        "7",
    ]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["replicas"] == 6 and result["demand_fps"] == 2688
    assert main([*argv, "--utilization", "0"]) == 2
    captured = capsys.readouterr()
    assert "utilization must be in (0, 1]" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("faces_per_request", "expected"),
    [(1, 100.0), (0.5, 100.0), (2, 110.0), (3, 120.0), (4, 130.0), (7, 130.0)],
)
def test_batching_fps_goes_from_batch_1_to_the_batch_by_faces_per_request(
    faces_per_request: float, expected: float
) -> None:
    fps = batching_fps(batch1_fps=100.0, batch_fps=130.0, batch=4, faces_per_request=faces_per_request)
    assert fps == pytest.approx(expected)


def test_batching_fps_at_batch_1_is_the_measured_fps() -> None:
    assert batching_fps(batch1_fps=100.0, batch_fps=100.0, batch=1, faces_per_request=1) == 100.0
