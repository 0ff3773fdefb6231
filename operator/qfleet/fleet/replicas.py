"""How many inference replicas a camera load needs.

demand (faces/s) = cameras x camera FPS x faces per frame
replicas         = ceil(demand / (FPS per replica x target utilisation)), clamped to [min, max]

Target utilisation keeps headroom: a server run at 100% of its measured capacity queues
without bound on any burst, so by default we plan each replica to 80% of what it measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_UTILIZATION = 0.8


@dataclass(frozen=True)
class Demand:
    cameras: int
    camera_fps: float
    faces_per_frame: float

    def __post_init__(self) -> None:
        if self.cameras < 0:
            raise ValueError(f"cameras must be >= 0, got {self.cameras}")
        if self.camera_fps <= 0:
            raise ValueError(f"camera FPS must be > 0, got {self.camera_fps}")
        if self.faces_per_frame <= 0:
            raise ValueError(f"faces per frame must be > 0, got {self.faces_per_frame}")

    @property
    def faces_per_second(self) -> float:
        return self.cameras * self.camera_fps * self.faces_per_frame


def batching_fps(*, batch1_fps: float, batch_fps: float, batch: int, faces_per_request: float) -> float:
    """Faces/s per replica to plan with when replicas merge requests into batches of ``batch``.

    ``batch_fps`` is measured with full batches handed straight to OpenVINO. A replica is only
    sure of batches as full as one request: faces of several requests merge while a queue
    stands, and one-face requests cost the server per request what the benchmark never pays.
    Planned at the batch-4 FPS, 64 one-face cameras at 0.9x of it drew refusals, and the server
    levelled off at 78-91% of it, about its batch-1 FPS (``benchmarks/serving.py``, 2 cores). So
    the plan goes from the batch-1 FPS at one face per request (a frame's faces travel in one
    request) to ``batch_fps`` at ``batch`` faces or more, in proportion.
    """
    if batch <= 1 or faces_per_request >= batch:
        return batch_fps
    share = (max(faces_per_request, 1.0) - 1.0) / (batch - 1)
    return batch1_fps + (batch_fps - batch1_fps) * share


@dataclass(frozen=True)
class ReplicaPlan:
    demand_fps: float
    fps_per_replica: float
    utilization: float
    #: What one replica is planned to carry: measured FPS x utilisation.
    planned_fps_per_replica: float
    #: Replicas the demand needs before clamping.
    needed_replicas: int
    replicas: int
    #: What ``replicas`` replicas carry at the target utilisation.
    capacity_fps: float
    #: Demand not covered because ``max_replicas`` was reached (0 when covered).
    shortfall_fps: float

    @property
    def sufficient(self) -> bool:
        return self.shortfall_fps <= 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sufficient"] = self.sufficient
        return data


def needed_replicas(
    demand_fps: float, fps_per_replica: float, utilization: float = DEFAULT_UTILIZATION
) -> int:
    """Replicas needed to carry ``demand_fps`` with each replica at ``utilization`` of its FPS."""
    _check_capacity_inputs(fps_per_replica, utilization)
    if demand_fps <= 0:
        return 0
    planned = fps_per_replica * utilization
    # Guard against float noise turning an exact fit (e.g. 2304 / 288.0) into one extra replica.
    return math.ceil(round(demand_fps / planned, 9))


def plan_replicas(
    demand: Demand,
    fps_per_replica: float,
    *,
    utilization: float = DEFAULT_UTILIZATION,
    min_replicas: int = 0,
    max_replicas: int | None = None,
) -> ReplicaPlan:
    """Plan one pool's replicas for ``demand``; see the module docstring for the formula."""
    if min_replicas < 0:
        raise ValueError(f"min replicas must be >= 0, got {min_replicas}")
    if max_replicas is not None and max_replicas < min_replicas:
        raise ValueError(f"max replicas ({max_replicas}) must be >= min replicas ({min_replicas})")
    demand_fps = demand.faces_per_second
    needed = needed_replicas(demand_fps, fps_per_replica, utilization)
    replicas = max(needed, min_replicas)
    if max_replicas is not None:
        replicas = min(replicas, max_replicas)
    planned = fps_per_replica * utilization
    capacity = replicas * planned
    return ReplicaPlan(
        demand_fps=demand_fps,
        fps_per_replica=fps_per_replica,
        utilization=utilization,
        planned_fps_per_replica=planned,
        needed_replicas=needed,
        replicas=replicas,
        capacity_fps=capacity,
        shortfall_fps=max(0.0, demand_fps - capacity),
    )


def _check_capacity_inputs(fps_per_replica: float, utilization: float) -> None:
    if not fps_per_replica > 0 or math.isinf(fps_per_replica):
        raise ValueError(f"FPS per replica must be a positive finite number, got {fps_per_replica}")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
