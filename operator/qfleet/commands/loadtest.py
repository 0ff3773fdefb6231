"""``qfleet loadtest``: open-loop camera traffic against an inference server, with a latency report."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "simulate cameras sending face crops to a server (open loop) and report faces/s and latency"
DESCRIPTION = (
    "N cameras each send one request per frame with K face crops (random uint8 pixels), on their\n"
    "own schedule from a random start: open loop, so a slow server does not slow the cameras.\n"
    "Reports offered and achieved faces/s, latency p50/p95/p99 (from each frame's scheduled send\n"
    "time), errors by kind, late frames (sends that slipped more than one frame interval: the\n"
    "generator could not keep up) and frames answered slower than one frame interval.\n"
    "--grpc sends the frames to the protocol's gRPC service (--url host:port, --model NAME).\n"
    "Only the --url given is contacted."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        required=True,
        help="server base URL, e.g. http://127.0.0.1:8080 (with --grpc: host:port, e.g. 127.0.0.1:8081)",
    )
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="use the Open Inference Protocol's gRPC service (raw tensor contents; needs --model)",
    )
    parser.add_argument("--cameras", type=int, required=True, help="number of simulated cameras")
    parser.add_argument("--camera-fps", type=float, required=True, help="frames per second per camera")
    parser.add_argument("--faces-per-frame", type=int, required=True, help="face crops per frame (request)")
    parser.add_argument("--seconds", type=float, required=True, help="how long the cameras send")
    parser.add_argument(
        "--binary",
        action="store_true",
        help="REST: send and receive tensors with the binary extension (default JSON)",
    )
    parser.add_argument("--model", default=None, help="model name (default: the one model the server serves)")
    parser.add_argument(
        "--datatype", choices=("UINT8", "FP32"), default="UINT8", help="pixel datatype sent (default UINT8)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at most (default %(default)d; gRPC: channels, at most 8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and the camera phases")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qfleet import extras

    extras.require("loadtest", "numpy", "grpc" if args.grpc else "aiohttp")
    from qfleet.serving.loadtest import LoadSpec, loadtest

    spec = LoadSpec(
        url=args.url,
        cameras=args.cameras,
        camera_fps=args.camera_fps,
        faces_per_frame=args.faces_per_frame,
        seconds=args.seconds,
        binary=args.binary,
        model=args.model,
        datatype=args.datatype,
        timeout_s=args.timeout,
        max_connections=args.max_connections,
        seed=args.seed,
        grpc=args.grpc,
    )
    return loadtest(spec)


def _encoding(result: dict[str, Any]) -> str:
    if result.get("protocol") == "grpc":
        return "gRPC"
    return "binary" if result["binary"] else "JSON"


def render(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"{result['cameras']} camera(s) x {result['camera_fps']:g} fps x {result['faces_per_frame']} face(s) "
        f"-> {result['url']} model {result['model']!r} ({_encoding(result)})",
        f"offered {result['offered_fps']:.1f} faces/s, achieved {result['achieved_fps']:.1f} faces/s "
        f"({result['frames_ok']}/{result['frames_scheduled']} frames ok in {result['elapsed_s']:.1f} s)",
        f"latency ms: p50 {ms(latency['p50'])}  p95 {ms(latency['p95'])}  p99 {ms(latency['p99'])}  "
        f"max {ms(latency['max'])}",
        f"errors: {result['errors']} {result['errors_by_kind'] or ''}".rstrip(),
        f"late frames (send slipped > 1 interval): {result['late_frames']}; "
        f"answered slower than 1 interval: {result['frames_over_interval']}",
    ]
    return "\n".join(lines)
