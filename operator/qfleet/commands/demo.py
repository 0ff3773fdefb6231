"""``qfleet demo``: the whole chain on embedded defaults, on this machine, with no cluster.

It regenerates the synthetic face set the shipped demo model was evaluated on (identities unseen
in training), then runs exactly what a quantization Job runs -- convert the MXNet checkpoint,
quantize with NNCF, validate FP32 and INT8 with the LFW protocol, gate, benchmark both -- and
plans the fleet for the camera load. On a CPU with native bf16 (AVX-512 BF16, AMX) the pipeline
also measures the FP32 model computed in bf16, and the table gets a BF16 column; FP32 is always
computed in f32.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from qfleet import defaults, extras
from qfleet.errors import InputError, QfleetError
from qfleet.fleet.replicas import DEFAULT_UTILIZATION, Demand, plan_replicas

HELP = "run convert -> quantize -> LFW gate -> benchmark -> fleet plan on a built-in model and data"
DESCRIPTION = (
    __doc__.strip().split("\n\n", 1)[1].replace("\n", " ")
    + "\n\nThe plan gives each replica one CPU core (--threads 1, a serving pod with `cpu: 1`) and"
    " defaults to 500 cameras x 6 FPS x 7 faces per frame (21000 faces/s): the demo model is small"
    " (hundreds to a few thousand FP32 faces/s per core), so a few dozen cameras would fit in one or two replicas of"
    " any precision and hide what INT8 saves. --cameras and --threads size it to your case."
)

#: The demo's camera load: enough that even a fast core needs a dozen FP32 replicas of the small
#: demo model, so the replicas row shows what INT8 (and BF16) save on any host.
DEFAULT_CAMERAS = 500
#: CPU threads per replica: one core, what a serving pod with ``cpu: 1`` gets; it also makes the
#: plan independent of how many cores the machine running the demo has.
DEFAULT_THREADS = 1

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default=None, help="keep artifacts here and write demo.json, report.html, report.png"
    )
    parser.add_argument(
        "--cameras",
        type=int,
        default=DEFAULT_CAMERAS,
        help=f"cameras to plan for (default {DEFAULT_CAMERAS})",
    )
    parser.add_argument(
        "--camera-fps", type=float, default=6.0, help="frames per second per camera (default 6)"
    )
    parser.add_argument("--faces-per-frame", type=float, default=7.0, help="faces per frame (default 7)")
    parser.add_argument(
        "--utilization", type=float, default=DEFAULT_UTILIZATION, help="target utilisation (default 0.8)"
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=defaults.MAX_DROP,
        help="accuracy gate: largest allowed drop (default %(default)s, as the operator's)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"CPU threads (cores) per replica, for validation and benchmark (default {DEFAULT_THREADS}); "
        "0: all of this machine's cores",
    )
    parser.add_argument(
        "--benchmark-seconds", type=float, default=5.0, help="seconds per benchmark (default 5)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        demand = Demand(
            cameras=args.cameras, camera_fps=args.camera_fps, faces_per_frame=args.faces_per_frame
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.threads < 0:
        raise InputError(f"--threads must be 0 (all cores) or more, got {args.threads}")
    extras.require("demo")
    if args.out:
        return _demo(Path(args.out), args, demand)
    with tempfile.TemporaryDirectory(prefix="qfleet-demo-") as workdir:
        return _demo(Path(workdir), args, demand)


def _demo(workdir: Path, args: argparse.Namespace, demand: Demand) -> dict[str, Any]:
    from qfleet.lfw.synthetic import DEMO_DATA, demo_model_prefix, generate_demo_data
    from qfleet.model.metadata import MODEL_BIN
    from qfleet.pipeline import PipelineSpec, run_pipeline
    from qfleet.report import precisions, render_table, write_report

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
        threads=args.threads or None,
        benchmark_seconds=args.benchmark_seconds,
        progress=args.progress,
    )
    result = run_pipeline(spec)
    if "error" in result:
        error = result["error"]
        raise QfleetError(f"demo failed in stage {error['stage']}: {error['message']}")
    # The pipeline measured BF16 too where the CPU computes it natively (its result has a bf16 block).
    measured = precisions(result)
    plans = {
        precision: plan_replicas(demand, result[precision]["fps"], utilization=args.utilization).as_dict()
        for precision in measured
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
        # The BF16 artifact is the FP32 IR's files (computed in bf16 when compiled).
        "size_mb": {p: round((models / p / MODEL_BIN).stat().st_size / 1e6, 3) for p in measured},
        "data": {"seed": DEMO_DATA.seed, "pairs": result["pairs"]},
        "demo_seconds": round(time.perf_counter() - started, 1),
    }
    if args.out:
        result["report"] = write_report(workdir, result)
    else:  # the artifacts lived in a temporary folder that is about to go
        for key in ("artifact", "fp32_artifact", "bf16_artifact"):
            result.pop(key, None)
    result["table"] = render_table(result)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [result["table"]]
    if "report" in result:
        lines.append(f"report: {result['report']['html']}  (data: {result['report']['json']})")
    lines.append(f"done in {result['demo_seconds']:.0f} s")
    return "\n".join(lines)
