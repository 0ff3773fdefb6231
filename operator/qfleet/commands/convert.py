"""``qfleet convert``: an MXNet checkpoint, ONNX model or OpenVINO IR -> FP32 IR with a dynamic batch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qfleet import defaults, extras
from qfleet.errors import InputError

HELP = "convert an MXNet checkpoint, ONNX model or OpenVINO IR into an FP32 OpenVINO IR"
DESCRIPTION = """\
Convert a face-recognition model into DIR/model.xml + model.bin (FP32 weights) and DIR/qfleet.json
(source file digests, input/output names and shapes, preprocessing, library versions, duration).

Sources (--format):
  mxnet     --source is the checkpoint prefix: PREFIX for PREFIX-symbol.json + PREFIX-0001.params
            (also accepted: either file, or a directory holding one *-symbol.json). The epoch is
            --epoch, else 1, else the only one present. Converted through ONNX.
  onnx      --source is a .onnx file.
  openvino  --source is a model.xml (or its directory); it is checked and copied.

The IR takes NCHW float32 RGB pixels in 0..255 with a dynamic batch ([-1,C,H,W]). The default
matches insightface models, which normalise inside the graph. For a model that expects another
convention, --mean/--scale/--bgr bake (pixel - mean) / scale and an RGB->BGR swap into the IR,
so callers always feed raw RGB.

examples:
  qfleet convert --source models/arcface-r100/model --format mxnet --out ir/r100
  qfleet convert --source face.onnx --format onnx --mean 127.5 --scale 128 --bgr --out ir/face
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not comma-separated integers, e.g. 1,3,112,112"
        ) from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated numbers") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", required=True, metavar="PATH", help="checkpoint prefix, .onnx file or .xml"
    )
    parser.add_argument("--format", required=True, choices=defaults.SOURCE_FORMATS, help="what --source is")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced on success)")
    parser.add_argument(
        "--epoch", type=int, default=None, help="MXNet checkpoint epoch (default 1, or the only one)"
    )
    parser.add_argument(
        "--input-shape",
        type=_ints,
        default=None,
        metavar="N,C,H,W",
        help="input shape (default 1,3,112,112 for MXNet, the model's own for ONNX/IR); the IR's batch is dynamic",
    )
    parser.add_argument(
        "--mean",
        type=_floats,
        default=None,
        metavar="R,G,B",
        help="mean the model subtracts (one or per channel)",
    )
    parser.add_argument(
        "--scale",
        type=_floats,
        default=None,
        metavar="S|R,G,B",
        help="value the model divides by after the mean (one or per channel)",
    )
    parser.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")


def run(args: argparse.Namespace) -> dict[str, Any]:
    # OpenVINO reads ONNX and IR itself; an MXNet checkpoint goes through mxnet.onnx's export.
    extras.require(
        "convert", "openvino", "numpy", "tqdm", *(("mxnet", "onnx") if args.format == "mxnet" else ())
    )
    from qfleet.model.convert import convert_model
    from qfleet.model.metadata import MODEL_XML

    if args.epoch is not None and args.epoch < 0:
        raise InputError(f"--epoch {args.epoch} is negative")
    metadata = convert_model(
        args.source,
        fmt=args.format,
        out_dir=args.out,
        epoch=args.epoch,
        input_shape=args.input_shape,
        mean=args.mean,
        scale=args.scale,
        bgr=args.bgr,
        progress=args.progress,
    )
    return {"model": str(Path(args.out) / MODEL_XML), **metadata}


def render(result: dict[str, Any]) -> str:
    inp, out, src = result["input"], result["output"], result["source"]
    baked = []
    if inp.get("mean"):
        baked.append(f"mean {inp['mean']}")
    if inp.get("scale"):
        baked.append(f"scale {inp['scale']}")
    if inp.get("model_color") == "BGR":
        baked.append("RGB->BGR")
    lines = [
        f"wrote {result['model']} (FP32) from {src['format']} in {result['duration_s']:.1f} s",
        f"  input  {inp['name']} {inp['shape']} {inp['layout']} RGB 0..255"
        + (f" (baked in: {', '.join(baked)})" if baked else ""),
        f"  output {out['name']} {out['shape']}",
    ]
    if src.get("epoch") is not None:
        lines.append(f"  epoch  {src['epoch']}, MXNet output {src.get('output')}")
    return "\n".join(lines)
