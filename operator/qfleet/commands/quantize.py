"""``qfleet quantize``: NNCF post-training INT8 quantization of an FP32 IR on this host's ISA tier."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qfleet import defaults, extras
from qfleet.isa import TIER_NAMES

HELP = "quantize an FP32 IR to INT8 with NNCF on this host's ISA tier"
DESCRIPTION = (
    "Post-training quantization (nncf.quantize) with calibration crops from an insightface lfw.bin or a\n"
    "folder of aligned face images. With --max-drop and --lfw it is accuracy-controlled: the operations\n"
    "whose quantization costs the most LFW accuracy go back to floating point until the drop is within\n"
    "--max-drop, within a budget (--accuracy-control-max-iterations validations, --accuracy-control-timeout\n"
    "seconds); when the budget runs out the best model so far is written and the result says why.\n"
    "--expect-isa refuses to run on a host of another ISA tier: an INT8 model belongs to one tier."
)


def configure(parser: argparse.ArgumentParser) -> None:
    from qfleet.model.quantize import DEFAULT_SUBSET_SIZE, PRESETS

    parser.add_argument("--model", required=True, help="model.xml of the FP32 IR (from qfleet convert)")
    parser.add_argument(
        "--calibration", required=True, help="insightface lfw.bin or folder of aligned face images (jpg/png)"
    )
    parser.add_argument("--out", required=True, help="output directory (model.xml, model.bin, qfleet.json)")
    parser.add_argument(
        "--subset-size",
        type=int,
        default=DEFAULT_SUBSET_SIZE,
        help=f"calibration images to use (default {DEFAULT_SUBSET_SIZE})",
    )
    parser.add_argument(
        "--preset", choices=PRESETS, default=defaults.PRESET, help="NNCF preset (default %(default)s)"
    )
    parser.add_argument(
        "--expect-isa", choices=TIER_NAMES, help="refuse to quantize on a host of another ISA tier"
    )
    parser.add_argument(
        "--max-drop", type=float, help="largest LFW accuracy drop allowed (absolute, e.g. 0.001)"
    )
    parser.add_argument("--lfw", help="lfw.bin that measures the accuracy drop (with --max-drop)")
    add_budget_arguments(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for accuracy control's validations"
    )


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Accuracy control's budget flags (``qfleet quantize`` and ``qfleet pipeline``)."""
    parser.add_argument(
        "--accuracy-control-max-iterations",
        type=int,
        default=defaults.ACCURACY_CONTROL_MAX_ITERATIONS,
        metavar="N",
        help="accuracy control validates at most N candidates (default %(default)s)",
    )
    parser.add_argument(
        "--accuracy-control-timeout",
        type=float,
        default=defaults.ACCURACY_CONTROL_TIMEOUT_S,
        metavar="SECONDS",
        help="accuracy control stops after this many seconds with the best model so far (default %(default)s)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    extras.require("quantize", "openvino", "nncf", "numpy", "PIL", "tqdm")
    from qfleet.model.accuracy_control import ControlOptions
    from qfleet.model.quantize import quantize_model

    metadata = quantize_model(
        args.model,
        calibration=args.calibration,
        out_dir=args.out,
        subset_size=args.subset_size,
        preset=args.preset,
        expect_isa=args.expect_isa,
        max_drop=args.max_drop,
        lfw=args.lfw,
        progress=args.progress,
        control=ControlOptions(
            max_iterations=args.accuracy_control_max_iterations,
            timeout_s=args.accuracy_control_timeout,
            threads=args.threads,
        ),
    )
    quantization = metadata["quantization"]
    result: dict[str, Any] = {
        "model": str(Path(args.out) / "model.xml"),
        "kind": metadata["kind"],
        "isa": metadata["isa"],
        "preset": quantization["preset"],
        "calibration_samples": quantization["calibration"]["samples"],
        "calibration_sha256": quantization["calibration"]["sha256"],
        "reverted_layers": quantization["reverted_layers"],
        "duration_s": quantization["duration_s"],
    }
    if "accuracy_control" in quantization:
        result["accuracy_control"] = quantization["accuracy_control"]
    return result


def render(result: dict[str, Any]) -> str:
    line = (
        f"INT8 model for {result['isa']} -> {result['model']} ({result['preset']} preset, "
        f"{result['calibration_samples']} calibration images, {result['duration_s']:.1f} s)"
    )
    reverted = result["reverted_layers"]
    if "accuracy_control" in result or reverted:
        line += f"\n{len(reverted)} layer(s) kept in floating point" + (
            f": {', '.join(reverted)}" if reverted else ""
        )
    control = result.get("accuracy_control")
    if control:
        line += (
            f"\naccuracy control: {control['outcome']}, drop {control['drop']} on {control['drop_on']} pairs"
            f" (max {control['max_drop']}), {control['iterations']} validation(s), {control['seconds']:.1f} s"
        )
    return line
