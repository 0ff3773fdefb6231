"""``qfleet pipeline``: what one quantization Job runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from qfleet import defaults, extras, isa
from qfleet.commands.quantize import add_budget_arguments
from qfleet.pipeline import (
    PipelineSpec,
    default_termination_log,
    run_pipeline_anywhere,
    termination_message,
    write_termination_log,
)
from qfleet.storage.staging import check_pins
from qfleet.storage.uris import is_s3

HELP = "convert -> quantize -> validate FP32 and INT8 on LFW -> gate -> benchmark (one Job's work)"
DESCRIPTION = (
    HELP + "\n\n"
    "Writes DIR/fp32/, DIR/int8/ (OpenVINO IR + qfleet.json), validation-*.json, benchmark-*.json and\n"
    "result.json, prints the result, and writes it (<= 4096 bytes) to the termination-log file so the\n"
    "operator can read it from the finished pod. A failed stage exits non-zero with error.stage and\n"
    "error.message: 2 for bad input, 3 for the wrong ISA tier (retrying cannot help), 1 otherwise;\n"
    "a failed accuracy gate exits 0 with gate.passed=false."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help="model: MXNet checkpoint prefix, .onnx file or IR .xml (a path, s3://BUCKET/KEY, or an "
        "https:// .onnx)",
    )
    parser.add_argument("--format", dest="fmt", required=True, choices=defaults.SOURCE_FORMATS)
    parser.add_argument(
        "--epoch", type=int, default=None, help="MXNet checkpoint epoch (default: 1 or the only one)"
    )
    parser.add_argument(
        "--calibration",
        required=True,
        help="lfw.bin or folder of aligned face crops (or s3://, or an https:// lfw.bin)",
    )
    parser.add_argument(
        "--lfw", required=True, help="insightface lfw.bin to validate FP32 and INT8 on (or s3://, https://)"
    )
    for name in ("source", "calibration", "lfw"):
        parser.add_argument(
            f"--{name}-sha256",
            default=None,
            metavar="HEX",
            help=f"expected sha256 of an https:// --{name} (a download that differs is refused)",
        )
    parser.add_argument(
        "--allow-http", action="store_true", help="accept plain http:// inputs (each needs its --*-sha256)"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output directory (replaced only when every stage succeeds), or s3://BUCKET/PREFIX to "
        "publish to (never over an existing model)",
    )
    parser.add_argument(
        "--expect-isa", choices=isa.TIER_NAMES, default=None, help="refuse to run on another tier"
    )
    parser.add_argument(
        "--preset",
        choices=defaults.PRESETS,
        default=defaults.PRESET,
        help="NNCF preset (default %(default)s)",
    )
    parser.add_argument(
        "--subset-size",
        type=int,
        default=defaults.SUBSET_SIZE,
        help="calibration samples (default %(default)s)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=defaults.MAX_DROP,
        help="largest allowed LFW accuracy drop, absolute (default %(default)s, as the CRD's maxDrop)",
    )
    parser.add_argument("--min-accuracy", type=float, default=None, help="lowest allowed INT8 LFW accuracy")
    parser.add_argument(
        "--accuracy-control",
        action="store_true",
        help="accuracy-controlled quantization: return the operations that cost the most accuracy to "
        "float until the drop <= --max-drop (result: accuracy_control)",
    )
    add_budget_arguments(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (the serving pod's CPU budget)"
    )
    parser.add_argument(
        "--benchmark-seconds",
        type=float,
        default=defaults.BENCHMARK_SECONDS,
        help="seconds per benchmark (default %(default)s)",
    )
    parser.add_argument(
        "--benchmark-batch",
        type=int,
        default=1,
        help="also benchmark INT8 at this batch, compiled as `qfleet serve --max-batch` does "
        "(result: int8.batch, int8.batch_fps; default 1: batch 1 only)",
    )
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip test-time augmentation")
    parser.add_argument(
        "--termination-log",
        default=None,
        help=f"file for the JSON result (default {defaults.TERMINATION_LOG} when it exists)",
    )


def spec_from_args(args: argparse.Namespace) -> PipelineSpec:
    """The parsed command line as a :class:`PipelineSpec` (the inverse of ``to_args``)."""
    return PipelineSpec(
        source=args.source,
        fmt=args.fmt,
        epoch=args.epoch,
        calibration=args.calibration,
        lfw=args.lfw,
        out=args.out,
        expect_isa=args.expect_isa,
        preset=args.preset,
        subset_size=args.subset_size,
        max_drop=args.max_drop,
        min_accuracy=args.min_accuracy,
        accuracy_control=args.accuracy_control,
        accuracy_control_max_iterations=args.accuracy_control_max_iterations,
        accuracy_control_timeout=args.accuracy_control_timeout,
        threads=args.threads,
        benchmark_seconds=args.benchmark_seconds,
        benchmark_batch=args.benchmark_batch,
        flip=not args.no_flip,
        progress=not args.quiet,
        termination_log=args.termination_log,
        source_sha256=args.source_sha256,
        calibration_sha256=args.calibration_sha256,
        lfw_sha256=args.lfw_sha256,
        allow_http=args.allow_http,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Bars only on a terminal (a Job's log is no terminal), whatever -q says.
    spec = dataclasses.replace(spec_from_args(args), progress=args.progress)
    # Checked before any stage runs: a toolkit without NNCF should not fail after the conversion.
    mxnet = ("mxnet", "onnx") if spec.fmt == "mxnet" else ()
    check_pins(spec)  # before any download or stage: a pin on a local input is a mistake
    s3 = (
        ("boto3",)
        if any(is_s3(value) for value in (spec.source, spec.calibration, spec.lfw, spec.out))
        else ()
    )
    extras.require("pipeline", "openvino", "nncf", "numpy", "PIL", "tqdm", *mxnet, *s3)
    result = run_pipeline_anywhere(spec)
    message = termination_message(result)
    write_termination_log(spec.termination_log or default_termination_log(), message)
    if "error" in result:
        error = result["error"]
        print(f"qfleet pipeline: error in stage {error['stage']}: {error['message']}", file=sys.stderr)
        result["_exit_code"] = error["exit_code"]
    return result


def render(result: dict[str, Any]) -> str:
    if "error" in result:
        return json.dumps(result, indent=2, default=str)
    gate = result["gate"]
    lines = [f"ISA tier       {result['isa']} ({result.get('runtime_isa')})"]
    for precision in ("fp32", "bf16", "int8"):
        if precision in result:
            block = result[precision]
            lines.append(
                f"{precision.upper()} LFW       {block['accuracy']:.4f}   {block['fps']:.1f} faces/s"
                f"   (computed in {block.get('inference_precision', '?')})"
            )
    for name, ratio in sorted((result.get("speedup") or {}).items()):
        lines.append(f"{name.replace('_vs_', '/').upper():<15}{ratio:.2f}x")
    lines += [
        f"gate           {'passed' if gate['passed'] else 'FAILED'} ({gate['reason']}, drop {gate['drop']:+.4f})",
        f"artifact       {result['artifact']}",
    ]
    control = result.get("accuracy_control")
    if control:
        reverted = control["reverted_layers"]
        lines.append(
            f"accuracy ctrl  {control['outcome']}: {len(reverted)} operation(s) in float"
            f" ({control['iterations']} validations, {control['seconds']:.1f} s)"
        )
    return "\n".join(lines)
