"""``qfleet validate``: LFW face-verification accuracy of an OpenVINO IR."""

from __future__ import annotations

import argparse
from typing import Any

from qfleet.commands import add_precision_argument

HELP = "LFW verification accuracy of a model (insightface's 10-fold protocol)"
DESCRIPTION = (
    "Embeds every image of an insightface lfw.bin (or an LFW pairs.txt with its folder of aligned\n"
    "crops) as f(x) + f(mirror(x)), L2-normalised, and reports the 10-fold accuracy, its standard\n"
    "deviation, the mean threshold on the squared L2 distance and VAL at FAR=1e-3.\n"
    "images_per_second counts model inputs (mirrors included) per second of inference, comparable\n"
    "with `qfleet benchmark`'s fps; decoding the images is timed apart (decode_seconds)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.xml of an OpenVINO IR (or its directory)")
    parser.add_argument("--lfw", help="insightface lfw.bin")
    parser.add_argument("--pairs", help="LFW protocol file pairs.txt (with --images)")
    parser.add_argument("--images", help="folder of aligned crops <name>/<name>_<NNNN>.jpg (with --pairs)")
    parser.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: all)")
    add_precision_argument(parser)
    parser.add_argument("--batch", type=int, default=None, help="model inputs per infer request (default 2)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qfleet import extras

    extras.require("validate", "openvino", "numpy", "PIL", "tqdm")
    from qfleet.lfw.dataset import load_pairset
    from qfleet.model.embed import DEFAULT_BATCH, validate_model
    from qfleet.model.metadata import require_model_xml

    model_xml = require_model_xml(args.model)
    pairset = load_pairset(lfw=args.lfw, pairs=args.pairs, images=args.images)
    return validate_model(
        model_xml,
        pairset,
        flip=not args.no_flip,
        threads=args.threads,
        progress=args.progress,
        batch=args.batch or DEFAULT_BATCH,
        precision=args.precision,
    )


def render(result: dict[str, Any]) -> str:
    return (
        f"{result['precision']} ({result['inference_precision']}, {result['runtime_isa']}): "
        f"accuracy {result['accuracy']:.4%} ± {result['accuracy_std']:.4%} on {result['pairs']} pairs "
        f"(threshold {result['threshold']:.3f}, VAL {result['val_at_far']:.4%} @ FAR {result['far_target']:g}, "
        f"flip {'on' if result['flip'] else 'off'}) in {result['seconds']:.1f} s: "
        f"{result['images_per_second']:.1f} images/s of inference, {result['decode_seconds']:.1f} s decoding"
    )
