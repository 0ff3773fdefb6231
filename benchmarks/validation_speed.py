"""Is validation as fast as the model? ``qfleet validate`` vs ``qfleet benchmark`` on the same IR.

The issue asks that validating a model processes images at no less than 90% of the throughput
``qfleet benchmark`` measures for it. Both are measured here in one process on the same IR,
alternating (benchmark, validate, benchmark, validate, ...) so that load from other processes
hits both alike; the medians and their ratio are printed (and returned by :func:`measure`).
Validation counts model inputs, mirrored copies included (``images_per_second``), which is what
benchmark's ``fps`` counts, per second of inference; decoding the JPEGs (the same for every model)
is timed apart and also shown included (``ratio_overall``). Compilation is excluded from both.

Without ``--model`` an iResNet-shaped IR is built with random weights (speed does not depend on
the values): ``--units 3,4,14,3`` is iResNet-50 (the default), ``--units 1,1,1,1 --width 16`` a
small fast model, where decoding costs the most relative to inference.

    python benchmarks/validation_speed.py [--model XML] [--pairs 300] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import script_parser
from qfleet.lfw.dataset import PairSet, encode_image
from qfleet.model.benchmark import benchmark_model
from qfleet.model.embed import DEFAULT_BATCH, validate_model


def build_resnet_ir(
    directory: Path, *, units: Sequence[int] = (3, 4, 14, 3), width: int = 64, seed: int = 0
) -> Path:
    """An iResNet-shaped face model (BN folded into the convolutions) as an IR: 112x112 -> 512."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)

    def conv(data: Any, channels_in: int, channels_out: int, kernel: int, stride: int) -> Any:
        weights = rng.normal(
            0, np.sqrt(2 / (channels_in * kernel * kernel)), (channels_out, channels_in, kernel, kernel)
        )
        pad = kernel // 2
        out = ops.convolution(data, weights.astype(np.float32), [stride] * 2, [pad] * 2, [pad] * 2, [1, 1])
        bias = rng.normal(0, 0.01, (1, channels_out, 1, 1)).astype(np.float32)
        return ops.add(out, bias)

    def prelu(data: Any, channels: int) -> Any:
        return ops.prelu(data, np.full(channels, 0.25, dtype=np.float32))

    image = ops.parameter([-1, 3, 112, 112], np.float32, name="data")
    x = ops.multiply(ops.subtract(image, np.float32(127.5)), np.float32(1 / 128))
    x = prelu(conv(x, 3, width, 3, 1), width)
    channels = width
    for stage, count in enumerate(units):
        out_channels = width * 2**stage
        for unit in range(count):
            stride = 2 if unit == 0 else 1
            branch = prelu(conv(x, channels, out_channels, 3, 1), out_channels)
            branch = ops.multiply(conv(branch, out_channels, out_channels, 3, stride), np.float32(0.2))
            shortcut = x if unit else conv(x, channels, out_channels, 1, stride)
            x = ops.add(branch, shortcut)
            channels = out_channels
    flat = ops.reshape(x, np.array([0, -1], dtype=np.int64), special_zero=True)
    features = channels * 7 * 7
    projection = rng.normal(0, np.sqrt(1 / features), (features, 512)).astype(np.float32)
    embedding = ops.matmul(flat, projection, False, False)
    embedding.output(0).get_tensor().set_names({"fc1"})
    directory.mkdir(parents=True, exist_ok=True)
    xml = directory / "model.xml"
    ov.save_model(ov.Model([embedding], [image], "resnet_face"), xml, compress_to_fp16=False)
    return xml


def synthetic_pairs(pairs: int, *, seed: int = 0) -> PairSet:
    """112x112 JPEG crops (quality 95, like insightface's lfw.bin) of smooth noisy colour fields."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(2 * pairs):
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((112, 112))
        pixels = np.asarray(field, dtype=np.float64) + rng.normal(0, 12, (112, 112, 3))
        images.append(encode_image(np.clip(pixels, 0, 255).astype(np.uint8), "JPEG", quality=95))
    return PairSet(images=images, issame=np.arange(pairs) % 2 == 0, source=f"synthetic {pairs} pairs")


#: AsyncInferQueues created while benchmarking, kept alive until the process exits (see below).
_KEPT_QUEUES: list[Any] = []


@contextlib.contextmanager
def _queues_outlive_calls() -> Iterator[None]:
    """Keep every AsyncInferQueue created inside the block alive after it.

    pyopenvino's ``AsyncInferQueue.wait_all()`` can return before the last Python callback has
    run; a function that then drops its queue destroys it while holding the GIL, and the
    destructor joins the stream thread that waits for the GIL to run that callback: a deadlock.
    ``benchmark_model`` (which uses a Python callback) hits it on this OpenVINO version; keeping
    its queue referenced lets the pending callback finish later. The measurement itself is
    unchanged. (``qfleet validate`` uses no Python callback and does not need this.)
    """
    import openvino as ov

    original = ov.AsyncInferQueue

    class KeptQueue(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _KEPT_QUEUES.append(self)

    ov.AsyncInferQueue = KeptQueue
    try:
        yield
    finally:
        ov.AsyncInferQueue = original


def measure(
    model_xml: Path,
    *,
    pairs: int = 300,
    seconds: float = 10.0,
    rounds: int = 2,
    threads: int | None = None,
    batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Alternate benchmark and validation ``rounds`` times; medians and their ratio."""
    pairset = synthetic_pairs(pairs)
    benchmark_fps: list[float] = []
    validation_ips: list[float] = []
    validation_overall: list[float] = []
    for _ in range(rounds):
        with _queues_outlive_calls():
            bench = benchmark_model(model_xml, seconds=seconds, threads=threads, progress=False)
        benchmark_fps.append(float(bench["fps"]))
        result = validate_model(model_xml, pairset, threads=threads, progress=False, batch=batch)
        validation_ips.append(float(result["images_per_second"]))
        validation_overall.append(float(result["images_per_second_overall"]))
    fps = statistics.median(benchmark_fps)
    ips = statistics.median(validation_ips)
    # Each validation against the benchmark runs just before it: robust to load that drifts.
    paired = [
        ips_round / fps_round for ips_round, fps_round in zip(validation_ips, benchmark_fps, strict=True)
    ]
    return {
        "model": str(model_xml),
        "pairs": pairs,
        "batch": batch,
        "threads": threads,
        "isa": bench["isa"],
        "streams": bench["streams"],
        "infer_requests": bench["infer_requests"],
        "benchmark_fps": benchmark_fps,
        "validation_images_per_second": validation_ips,
        "benchmark_fps_median": fps,
        "validation_images_per_second_median": ips,
        "ratio": ips / fps,
        "validation_images_per_second_overall": validation_overall,
        "ratio_overall": statistics.median(validation_overall) / fps,
        "paired_ratios": paired,
        "paired_ratio_median": statistics.median(paired),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--model", type=Path, help="model.xml to measure (default: build an iResNet-shaped IR)"
    )
    parser.add_argument("--units", default="3,4,14,3", help="residual units per stage of the built model")
    parser.add_argument("--width", type=int, default=64, help="channels of the built model's first stage")
    parser.add_argument("--pairs", type=int, default=300, help="pairs validated per round")
    parser.add_argument("--seconds", type=float, default=10.0, help="benchmark duration per round")
    parser.add_argument("--rounds", type=int, default=2, help="benchmark/validate rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="validation inputs per request")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qfleet-speed-") as scratch:
        model = args.model
        if model is None:
            units = tuple(int(u) for u in args.units.split(","))
            model = build_resnet_ir(Path(scratch) / "model", units=units, width=args.width)
        result = measure(
            model,
            pairs=args.pairs,
            seconds=args.seconds,
            rounds=args.rounds,
            threads=args.threads,
            batch=args.batch,
        )
    if args.model is None:
        result["model"] = f"iResNet-shaped units={args.units} width={args.width} (random weights)"
    print(
        f"benchmark {result['benchmark_fps_median']:.1f} FPS, validation "
        f"{result['validation_images_per_second_median']:.1f} images/s (medians of {args.rounds} rounds): "
        f"ratio {result['ratio']:.3f}, median of paired ratios {result['paired_ratio_median']:.3f}; "
        f"decoding included {result['ratio_overall']:.3f}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
