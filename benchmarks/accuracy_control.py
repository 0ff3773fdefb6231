"""Accuracy control against the plain pipeline, side by side, on models whose plain INT8 misses.

For each model, ``qfleet pipeline`` runs twice on the same checkpoint and pairs, one right after
the other: plain, then ``--accuracy-control``. Both gate at ``--max-drop``; plain INT8 misses it
by construction: the models carry outlier channels (``tests/support/sensitive_model.py``: FP32
computes the same function, per-tensor INT8 activations lose 1-3 points), at the shipped demo
model's four PReLU -> convolution sites, and in every unit of an iResNet-50-shaped checkpoint
(random weights, ``benchmarks/iresnet.py``; FP32 0.68 on the synthetic pairs).

Reported per model: wall time of each pipeline and their ratio, the validations accuracy control
ran, the operations it returned to float (of those quantized), plain and final drop, and the INT8
FPS each pipeline benchmarked. Then an estimate for iResNet-100 on LFW's 6000 pairs on a 16-core
node, scaled from the iResNet-50 run (stated assumptions below the table).

    python benchmarks/accuracy_control.py --write      # both models; writes RESULTS.md's section
    python benchmarks/accuracy_control.py --models demo
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package: the sensitive model

from _common import RESULTS, cpu_model, load_average, replace_section, script_parser, utc_stamp
from iresnet import UNITS, build_checkpoint, complexity, iresnet_symbol
from qfleet.isa import detect_host_tier, has_native_bf16
from tests.support.sensitive_model import DEMO_SITES, add_outlier_channels

TITLE = "## Accuracy control"
DEMO_SCALES = (80.0, 100.0, 100.0, 80.0)
#: Outlier channels in every iResNet-50 unit (BatchNorm before the PReLU, the convolution after
#: it): its residual branches are small next to the shortcuts, so a few sites barely show.
IRESNET_SCALE = 120.0
IRESNET_CHANNELS = 4


def iresnet_sites(scale: float) -> list[tuple[str, str, float]]:
    return [
        (f"stage{stage}_unit{unit}_bn2", f"stage{stage}_unit{unit}_conv2", scale)
        for stage, units in enumerate(UNITS[50], start=1)
        for unit in range(1, units + 1)
    ]


#: The node the estimate is for, and the pairs of the real LFW.
NODE_CORES = 16
LFW_PAIRS = 6000


def sensitive_checkpoint(name: str, root: Path, *, iresnet_scale: float | None = None) -> Path:
    """The MXNet checkpoint prefix of model ``name`` (demo, iresnet50) with its outlier channels."""
    from qfleet.lfw.synthetic import demo_model_prefix

    if name == "demo":
        sites = [(bn, conv, scale) for (bn, conv), scale in zip(DEMO_SITES, DEMO_SCALES, strict=True)]
        return add_outlier_channels(demo_model_prefix(), root / "demo" / "model", sites)
    base = root / "iresnet50-base" / "model"
    build_checkpoint(50, base)
    sites = iresnet_sites(iresnet_scale or IRESNET_SCALE)
    return add_outlier_channels(base, root / "iresnet50" / "model", sites, channels=IRESNET_CHANNELS)


def run_side_by_side(
    name: str, prefix: Path, data: dict[str, Path], out: Path, *, max_drop: float, seconds: float, rounds: int
) -> dict[str, Any]:
    """Plain, then controlled pipeline on the same inputs, ``rounds`` times; the row of the table
    (medians, and the paired ratio of each round), also saved as ``out/NAME.row.json``."""
    from qfleet.pipeline import PipelineSpec, run_pipeline

    runs: dict[str, dict[str, Any]] = {}
    walls: dict[str, list[float]] = {"plain": [], "controlled": []}
    loads: list[float] = []
    for _ in range(rounds):
        for mode in ("plain", "controlled"):
            loads.append(load_average())
            target = out / f"{name}-{mode}"
            shutil.rmtree(target, ignore_errors=True)
            spec = PipelineSpec(
                source=str(prefix),
                fmt="mxnet",
                calibration=str(data["calibration"]),
                lfw=str(data["lfw_bin"]),
                out=str(target),
                max_drop=max_drop,
                accuracy_control=mode == "controlled",
                benchmark_seconds=seconds,
                progress=False,
            )
            started = time.perf_counter()
            result = run_pipeline(spec)
            if "error" in result:
                raise SystemExit(f"{name} {mode}: {result['error']}")
            walls[mode].append(time.perf_counter() - started)
            runs[mode] = result
            print(
                f"{name} {mode}: {walls[mode][-1]:.1f} s, gate {result['gate']}", file=sys.stderr, flush=True
            )
    loads.append(load_average())
    plain, controlled = runs["plain"], runs["controlled"]
    report = json.loads((out / f"{name}-controlled" / "int8" / "qfleet.json").read_text())["quantization"][
        "accuracy_control"
    ]
    ratios = [c / p for p, c in zip(walls["plain"], walls["controlled"], strict=True)]
    row = {
        "model": name,
        "pairs": plain["pairs"],
        "plain_s": statistics.median(walls["plain"]),
        "controlled_s": statistics.median(walls["controlled"]),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "plain_timings": plain["timings"],
        "controlled_timings": controlled["timings"],
        "validations": report["iterations"],
        "trials": report["trials"],
        "outcome": report["outcome"],
        "reverted": len(report["reverted"]),
        "quantized_ops": report["quantized_ops"],
        "ranking_s": report["ranking"].get("seconds", 0.0),
        "control_s": report["seconds"],
        "plain_drop": plain["gate"]["drop"],
        "plain_passed": plain["gate"]["passed"],
        "final_drop": controlled["gate"]["drop"],
        "final_passed": controlled["gate"]["passed"],
        "fp32_accuracy": plain["fp32"]["accuracy"],
        "int8_fps_plain": plain["int8"]["fps"],
        "int8_fps_controlled": controlled["int8"]["fps"],
        "fp32_fps": plain["fp32"]["fps"],
        "loads": loads,
    }
    (out / f"{name}.row.json").write_text(json.dumps(row, indent=1))
    return row


def estimate_iresnet100(row: dict[str, Any], *, subset_pairs: int) -> dict[str, float]:
    """Seconds of the plain pipeline's validations and of accuracy control for iResNet-100 on
    ``LFW_PAIRS`` pairs on a ``NODE_CORES``-core node, scaled from the iResNet-50 row.

    Assumptions: inference time scales with the multiply-accumulates (iResNet-100 / iResNet-50)
    and inversely with the cores (16 / the cores measured on); NNCF's quantization and the
    ranking (calibration faces, a fixed number) scale the same way; accuracy control validates
    plain INT8 on all pairs, then as many candidates as measured on ``subset_pairs`` pairs each
    (worst case for ``RANK_CANDIDATES`` ranked operations: 2 log2 of it, plus one), and confirms
    one on all pairs; decoding and the benchmarks' fixed seconds are left out.
    """
    import os

    from qfleet.model.accuracy_control import RANK_CANDIDATES

    flops = complexity(iresnet_symbol(100)).macs / complexity(iresnet_symbol(50)).macs
    scale = flops * (os.cpu_count() or 1) / NODE_CORES
    pairs = row["pairs"]
    plain, controlled = row["plain_timings"], row["controlled_timings"]
    validations = sum(plain[f"validate-{p}"] for p in ("fp32", "int8", "bf16") if f"validate-{p}" in plain)
    per_pair_int8 = plain["validate-int8"] / pairs

    def control_validations(trials: int) -> float:
        return float((trials * min(subset_pairs, LFW_PAIRS) + 2 * LFW_PAIRS) * per_pair_int8)

    worst_trials = 2 * math.ceil(math.log2(RANK_CANDIDATES)) + 1
    quantize_plain = plain["quantize"]
    return {
        "worst_trials": worst_trials,
        "control_worst_s": (control_validations(worst_trials) + row["ranking_s"] + quantize_plain) * scale,
        "flops_ratio": flops,
        "scale": scale,
        "plain_validations_s": validations / pairs * LFW_PAIRS * scale,
        "plain_quantize_s": quantize_plain * scale,
        "control_validations_s": control_validations(row["validations"]) * scale,
        "ranking_s": row["ranking_s"] * scale,
        "control_total_s": (control_validations(row["validations"]) + row["ranking_s"] + quantize_plain)
        * scale,
        "controlled_quantize_measured_s": controlled["quantize"],
    }


def _rounds(row: dict[str, Any]) -> str:
    ratios = row.get("ratios", [])
    return f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""


def render(rows: list[dict[str, Any]], estimate: dict[str, float] | None, args: Any) -> str:
    tier = detect_host_tier()
    lines = [
        TITLE,
        "",
        f"`python benchmarks/accuracy_control.py --write`: plain `qfleet pipeline` then "
        f"`--accuracy-control`, side by side in one run, max drop {args.max_drop}, benchmarks "
        f"{args.benchmark_seconds:g} s. {cpu_model()}, ISA tier {tier}, native bf16 "
        f"{'yes' if has_native_bf16(tier) else 'no'}, {os.cpu_count()} cores, "
        f"{utc_stamp()}; 1-minute load average before, between and after each pair of runs: "
        + "; ".join(f"{row['model']} " + " / ".join(f"{x:.1f}" for x in row["loads"]) for row in rows)
        + " (ratios: median of the rounds, each round's in brackets)"
        + ". Models: outlier channels that cost plain INT8 its gate (see the script's docstring).",
        "",
        "| model | pairs | plain s | controlled s | ratio | validations | in float / quantized | "
        "plain drop | final drop | gate | INT8 FPS plain / controlled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['pairs']} | {row['plain_s']:.1f} | {row['controlled_s']:.1f} | "
            f"{row['ratio']:.2f}x{_rounds(row)} | {row['validations']} | {row['reverted']} / {row['quantized_ops']} | "
            f"{row['plain_drop']:+.4f} | {row['final_drop']:+.4f} | "
            f"{'passed' if row['final_passed'] else 'FAILED'} ({row['outcome']}) | "
            f"{row['int8_fps_plain']:.0f} / {row['int8_fps_controlled']:.0f} |"
        )
    lines.append("")
    for row in rows:
        trials = ", ".join(f"{t['reverted']}: {t['drop']:+.4f}" for t in row["trials"])
        lines.append(
            f"- {row['model']}: accuracy control took {row['control_s']:.1f} s of the quantize stage "
            f"(ranking {row['ranking_s']:.1f} s) against plain quantization's "
            f"{row['plain_timings']['quantize']:.1f} s; trials (operations in float: drop) {trials}."
        )
    if estimate is not None:
        lines += [
            "",
            f"Estimate, iResNet-100 on {LFW_PAIRS} pairs on a {NODE_CORES}-core node (scaled from the "
            f"iResNet-50 row: x{estimate['flops_ratio']:.2f} the multiply-accumulates, "
            f"{NODE_CORES} cores instead of {__import__('os').cpu_count()}; quantization, ranking and "
            "inference assumed to scale alike; decoding left out): the plain pipeline's three "
            f"validations {estimate['plain_validations_s'] / 60:.1f} min and its quantization "
            f"{estimate['plain_quantize_s'] / 60:.1f} min; accuracy control "
            f"{estimate['control_total_s'] / 60:.1f} min in all (ranking "
            f"{estimate['ranking_s'] / 60:.1f} min; plain INT8 and one confirmation on all pairs, "
            f"candidates on {args.subset_pairs}-pair subsets: {estimate['control_validations_s'] / 60:.1f} min),"
            f" {estimate['control_worst_s'] / 60:.1f} min with the worst case of "
            f"{estimate['worst_trials']} candidate validations. The pipeline with accuracy control: about "
            f"{(estimate['plain_validations_s'] + estimate['control_total_s']) / 60:.0f} min, "
            f"{(estimate['plain_validations_s'] + estimate['control_worst_s']) / 60:.0f} at worst.",
        ]
    lines += [
        "",
        "Plain INT8 misses max drop 0.005 on both; one operation in float meets it (on the random "
        "iResNet-50 the drop even turns negative: its 0.68 accuracy is noise-prone).",
        "",
        "Before: NNCF's `quantize_with_accuracy_control` (ranking by per-pair margins, one "
        "synchronous request per pair, a validation on all pairs per reverted layer) took 53 s for "
        "`qfleet quantize --max-drop 0.005` on the same demo-size model and 600 pairs, where plain "
        "`qfleet quantize` takes 5-6 s (same CPU, load average about 5); the rewrite took 11 s there. "
        "The operation returned to float costs INT8 speed where it is a large one: the demo's first "
        "3x3 convolution at the highest resolution, about a fifth of its INT8 FPS.",
    ]
    return "\n".join(lines) + "\n"


def wait_for_quiet(limit_s: float, threshold: float) -> float:
    """Wait (up to ``limit_s``) for the 1-minute load average to fall below ``threshold``."""
    deadline = time.monotonic() + limit_s
    while load_average() > threshold and time.monotonic() < deadline:
        time.sleep(15)
    return load_average()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = script_parser(__doc__)
    parser.add_argument("--models", default="demo,iresnet50", help="comma-separated: demo, iresnet50")
    parser.add_argument("--max-drop", type=float, default=0.005)
    parser.add_argument("--demo-pairs", type=int, default=600)
    parser.add_argument(
        "--iresnet-pairs", type=int, default=300, help="pairs for iResNet-50 (2 cores are slow)"
    )
    parser.add_argument(
        "--iresnet-scale", type=float, default=None, help="outlier scale at every iResNet site"
    )
    parser.add_argument("--benchmark-seconds", type=float, default=5.0)
    parser.add_argument(
        "--subset-pairs", type=int, default=None, help="(for the estimate) default: accuracy control's"
    )
    parser.add_argument(
        "--wait-quiet-s", type=float, default=600.0, help="wait this long for a load below 1.5"
    )
    parser.add_argument("--rounds", type=int, default=1, help="plain/controlled pairs per model (medians)")
    parser.add_argument(
        "--reuse",
        default="",
        help="comma-separated models whose WORKDIR/runs/NAME.row.json is reported, not rerun",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help=f"write the section of {RESULTS.name}")
    args = parser.parse_args(argv)
    from qfleet.lfw.synthetic import generate_demo_data
    from qfleet.model.accuracy_control import SUBSET_PAIRS

    args.subset_pairs = args.subset_pairs or SUBSET_PAIRS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qfleet-ac-") as tmp:
        root = args.workdir or Path(tmp)
        for name in args.models.split(","):
            if name in args.reuse.split(","):
                rows.append(json.loads((root / "runs" / f"{name}.row.json").read_text()))
                continue
            pairs = args.demo_pairs if name == "demo" else args.iresnet_pairs
            data = generate_demo_data(root / f"data-{pairs}", pairs=pairs)
            prefix = sensitive_checkpoint(name, root / "checkpoints", iresnet_scale=args.iresnet_scale)
            print(f"{name}: load {wait_for_quiet(args.wait_quiet_s, 1.5):.1f}", file=sys.stderr, flush=True)
            rows.append(
                run_side_by_side(
                    name,
                    prefix,
                    data,
                    root / "runs",
                    max_drop=args.max_drop,
                    seconds=args.benchmark_seconds,
                    rounds=args.rounds,
                )
            )
    iresnet = [row for row in rows if row["model"] == "iresnet50"]
    estimate = estimate_iresnet100(iresnet[0], subset_pairs=args.subset_pairs) if iresnet else None
    section = render(rows, estimate, args)
    print(section)
    if args.write:
        replace_section(RESULTS, TITLE, section)
    return {"rows": rows, "estimate": estimate}


if __name__ == "__main__":
    main()
