"""``qfleet benchmark``: throughput of an IR on this CPU, measured as OpenVINO's benchmark_app does."""

from __future__ import annotations

import argparse
from typing import Any

from qfleet.commands import add_precision_argument

HELP = "measure an IR's throughput (FPS) and latency on this CPU"
DESCRIPTION = (
    "THROUGHPUT hint, the plugin's optimal number of infer requests kept busy through an\n"
    "AsyncInferQueue, warm-up excluded; FPS = completed inferences x batch / wall time.\n"
    "--threads limits the CPU threads to what a serving pod's CPU limit gives it."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.xml of an OpenVINO IR")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration (default 10)")
    parser.add_argument("--threads", type=int, help="CPU threads for inference (default: all)")
    add_precision_argument(parser)
    parser.add_argument("--batch", type=int, default=1, help="images per inference request (default 1)")
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="compile the batch dimension as 1..BATCH, as `qfleet serve --max-batch BATCH` does "
        "(default: a static batch, as benchmark_app)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qfleet import extras

    extras.require("benchmark", "openvino", "numpy", "tqdm")
    from qfleet.model.benchmark import benchmark_model

    return benchmark_model(
        args.model,
        seconds=args.seconds,
        threads=args.threads,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        precision=args.precision,
        progress=args.progress,
    )


def render(result: dict[str, Any]) -> str:
    return (
        f"{result['precision']} ({result['inference_precision']}, {result['runtime_isa']}) {result['model']} "
        f"on {result['isa']}: {result['fps']:.1f} FPS, "
        f"median latency {result['latency_ms_median']:.2f} ms ({result['streams']} streams, "
        f"{result['infer_requests']} infer requests, {result['threads']} threads, batch {result['batch']}{' dynamic' if result.get('dynamic_batch') else ''}, "
        f"{result['seconds']:.1f} s)"
    )
