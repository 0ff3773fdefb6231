"""``qfleet plan``: replicas for a camera load, from a measured FPS per replica."""

from __future__ import annotations

import argparse
from typing import Any

from qfleet.errors import InputError
from qfleet.fleet.replicas import DEFAULT_UTILIZATION, Demand, plan_replicas

HELP = "replicas needed for a camera load, from the measured FPS per replica"
DESCRIPTION = (
    "replicas = ceil(cameras x camera-fps x faces-per-frame / (fps-per-replica x utilization)),\n"
    "clamped to [--min-replicas, --max-replicas]."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fps-per-replica", type=float, required=True, help="measured faces/s of one replica"
    )
    parser.add_argument("--cameras", type=int, required=True, help="number of cameras")
    parser.add_argument("--camera-fps", type=float, required=True, help="frames per second each camera sends")
    parser.add_argument("--faces-per-frame", type=float, required=True, help="average faces per frame")
    parser.add_argument(
        "--utilization",
        type=float,
        default=DEFAULT_UTILIZATION,
        help=f"target utilisation of each replica, in (0, 1] (default {DEFAULT_UTILIZATION})",
    )
    parser.add_argument("--min-replicas", type=int, default=0, help="lower bound (default 0)")
    parser.add_argument("--max-replicas", type=int, default=None, help="upper bound (default none)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        demand = Demand(
            cameras=args.cameras, camera_fps=args.camera_fps, faces_per_frame=args.faces_per_frame
        )
        plan = plan_replicas(
            demand,
            args.fps_per_replica,
            utilization=args.utilization,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return plan.as_dict()


def render(result: dict[str, Any]) -> str:
    line = (
        f"demand {result['demand_fps']:.1f} faces/s -> {result['replicas']} replica(s) "
        f"x {result['planned_fps_per_replica']:.1f} faces/s planned "
        f"({result['fps_per_replica']:.1f} measured x {result['utilization']:.0%}) "
        f"= {result['capacity_fps']:.1f} faces/s"
    )
    if result["shortfall_fps"] > 0:
        line += f"; SHORT by {result['shortfall_fps']:.1f} faces/s (max replicas reached)"
    return line
