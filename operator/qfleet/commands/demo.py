"""``qfleet demo``: the whole chain on embedded defaults, on this machine, with no cluster.

It regenerates the synthetic face set the shipped demo model was evaluated on (identities unseen
in training), then runs exactly what a quantization Job runs -- convert the MXNet checkpoint,
quantize with NNCF, validate FP32 and INT8 with the LFW protocol, gate, benchmark both -- and
plans the fleet for the camera load.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from qfleet.errors import QfleetError
from qfleet.fleet.plan import DEFAULT_UTILIZATION, Demand, plan_replicas

HELP = "run convert -> quantize -> LFW gate -> benchmark -> fleet plan on a built-in model and data"
DESCRIPTION = (
    __doc__.strip().split("\n\n", 1)[1].replace("\n", " ")
    + "\n\nThe camera load defaults to the user's case: 64 cameras x 6 FPS x 7 faces per frame."
)

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default=None, help="keep artifacts here and write demo.json, report.html, report.png"
    )
    parser.add_argument("--cameras", type=int, default=64, help="cameras to plan for (default 64)")
    parser.add_argument(
        "--camera-fps", type=float, default=6.0, help="frames per second per camera (default 6)"
    )
    parser.add_argument("--faces-per-frame", type=float, default=7.0, help="faces per frame (default 7)")
    parser.add_argument(
        "--utilization", type=float, default=DEFAULT_UTILIZATION, help="target utilisation (default 0.8)"
    )
    parser.add_argument("--max-drop", type=float, default=0.01, help="accuracy gate: largest allowed drop")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all)")
    parser.add_argument(
        "--benchmark-seconds", type=float, default=5.0, help="seconds per benchmark (default 5)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        demand = Demand(
            cameras=args.cameras, camera_fps=args.camera_fps, faces_per_frame=args.faces_per_frame
        )
    except ValueError as exc:
        raise QfleetError(str(exc)) from None
    if args.out:
        return _demo(Path(args.out), args, demand)
    with tempfile.TemporaryDirectory(prefix="qfleet-demo-") as workdir:
        return _demo(Path(workdir), args, demand)


def _demo(workdir: Path, args: argparse.Namespace, demand: Demand) -> dict[str, Any]:
    from qfleet.lfw.synthetic import DEMO_DATA, demo_model_prefix, generate_demo_data
    from qfleet.model.metadata import MODEL_BIN
    from qfleet.pipeline import PipelineSpec, run_pipeline
    from qfleet.report import render_table, write_report

    started = time.perf_counter()
    log.info("generating the synthetic face set (seed %d) in %s", DEMO_DATA.seed, workdir / "data")
    data = generate_demo_data(workdir / "data")
    spec = PipelineSpec(
        source=str(demo_model_prefix()),
        fmt="mxnet",
        calibration=str(data["calibration"]),
        lfw=str(data["lfw_bin"]),
        out=str(workdir / "models"),
        max_drop=args.max_drop,
        threads=args.threads,
        benchmark_seconds=args.benchmark_seconds,
        progress=not args.quiet,
    )
    result = run_pipeline(spec)
    if "error" in result:
        error = result["error"]
        raise QfleetError(f"demo failed in stage {error['stage']}: {error['message']}")
    plans = {
        precision: plan_replicas(demand, result[precision]["fps"], utilization=args.utilization).as_dict()
        for precision in ("fp32", "int8")
    }
    models = workdir / "models"
    result |= {
        "demand": {
            "cameras": demand.cameras,
            "camera_fps": demand.camera_fps,
            "faces_per_frame": demand.faces_per_frame,
            "faces_per_second": demand.faces_per_second,
            "utilization": args.utilization,
        },
        "plan": plans,
        "speedup": round(result["int8"]["fps"] / result["fp32"]["fps"], 3),
        "size_mb": {p: round((models / p / MODEL_BIN).stat().st_size / 1e6, 3) for p in ("fp32", "int8")},
        "data": {"seed": DEMO_DATA.seed, "pairs": result["pairs"]},
        "demo_seconds": round(time.perf_counter() - started, 1),
    }
    if args.out:
        result["report"] = write_report(workdir, result)
    else:  # the artifacts lived in a temporary folder that is about to go
        for key in ("artifact", "fp32_artifact"):
            result.pop(key, None)
    result["table"] = render_table(result)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [result["table"]]
    if "report" in result:
        lines.append(f"report: {result['report']['html']}  (data: {result['report']['json']})")
    lines.append(f"done in {result['demo_seconds']:.0f} s")
    return "\n".join(lines)
