"""INT8 vs FP32 throughput of the ArcFace backbones (iResNet-50 and iResNet-100) on this CPU.

For each model: build an iResNet-shaped MXNet checkpoint with random weights
(``benchmarks/iresnet.py``), convert it with ``qfleet convert``'s code path, quantize it with
``qfleet quantize``'s code path (calibration: generated face-like images), then measure FP32 and
INT8 with ``qfleet benchmark``'s code path *and* with OpenVINO's ``benchmark_app`` on the same
IRs, in one run, with the order of precisions and tools alternating between repeats. Medians
are reported, and the section "INT8 vs FP32" of ``benchmarks/RESULTS.md`` is rewritten.

ISA tiers: besides the host's own tier, the script can measure a lower tier on the same machine
by capping OpenVINO's CPU kernels with ``ONEDNN_MAX_CPU_ISA`` (e.g. ``--tiers native,avx2``):
each tier runs in its own process, quantization included, and the kernels' ISA that the CPU
plugin reports is recorded, so a capped run is visibly what it claims to be.

    python benchmarks/int8_vs_fp32.py                      # both models, native + avx2, 10 s
    python benchmarks/int8_vs_fp32.py --models 50 --tiers avx2 --seconds 5 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iresnet import UNITS, build_checkpoint

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "INT8 vs FP32"
#: ONEDNN_MAX_CPU_ISA value per tier we can emulate by capping the kernels ("native": no cap).
KERNEL_CAPS: dict[str, str | None] = {"native": None, "avx2": "AVX2", "avx512": "AVX512_CORE"}
#: FP32 FLOP per cycle per core: 2 FMA units x lanes x 2 (multiply + add).
FP32_FLOP_PER_CYCLE = {"avx2": 2 * 8 * 2, "avx512": 2 * 16 * 2}
#: Theoretical INT8 MAC throughput over FP32: AVX2 needs vpmaddubsw+vpmaddwd+vpaddd for 32 u8 MACs
#: per 256-bit register (about 2x FP32 FMA); VNNI's vpdpbusd does 4 MACs per 32-bit lane (4x).
INT8_OVER_FP32_PEAK = {"avx2": 2.0, "avx512": 2.0, "avx_vnni": 4.0, "avx512_vnni": 4.0, "amx_int8": 16.0}
TARGET_RATIO_R50 = 1.95
TARGET_TOOL_AGREEMENT = 0.05


# --- calibration data --------------------------------------------------------------------------


def write_face_like_images(folder: Path, count: int, *, seed: int = 0) -> Path:
    """Smooth random RGB crops with a bright face-shaped ellipse: image statistics, not faces."""
    from PIL import Image

    from qfleet.lfw.dataset import encode_image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((112, 112), Image.Resampling.BICUBIC), np.float32)
        cy, cx = rng.normal(56, 4, size=2)
        ellipse = ((yy - cy) / 46) ** 2 + ((xx - cx) / 36) ** 2 < 1
        skin = rng.uniform(120, 230, size=3).astype(np.float32)
        field[ellipse] = 0.35 * field[ellipse] + 0.65 * skin
        noisy = field + rng.normal(0, 4, field.shape)
        (folder / f"face_{index:04d}.png").write_bytes(
            encode_image(np.clip(noisy, 0, 255).astype(np.uint8), "PNG")
        )
    return folder


# --- benchmark_app ----------------------------------------------------------------------------


def benchmark_app_binary() -> str:
    candidate = Path(sys.executable).parent / "benchmark_app"
    return str(candidate) if candidate.exists() else "benchmark_app"


def run_benchmark_app(model_xml: Path, *, seconds: float, batch: int) -> dict[str, Any]:
    """OpenVINO's benchmark_app with the THROUGHPUT hint on the same static input shape as ours."""
    command = [
        benchmark_app_binary(),
        "-m",
        str(model_xml),
        "-d",
        "CPU",
        "-hint",
        "throughput",
        "-t",
        str(max(1, round(seconds))),
        "-shape",
        f"[{batch},3,112,112]",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    throughput = re.search(r"Throughput:\s+([\d.]+)\s+FPS", output)
    if completed.returncode != 0 or throughput is None:
        raise RuntimeError(f"benchmark_app failed ({completed.returncode}):\n{output[-2000:]}")
    median = re.search(r"Median:\s+([\d.]+)\s+ms", output)
    streams = re.search(r"NUM_STREAMS:\s+(\d+)", output)
    isa = re.search(r"isa=([^;\n]+)", output)
    return {
        "fps": float(throughput.group(1)),
        "latency_ms_median": float(median.group(1)) if median else None,
        "streams": int(streams.group(1)) if streams else None,
        "runtime_isa": isa.group(1).strip() if isa else None,
    }


# --- one tier, in its own process -----------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(tool: str, model_xml: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement with ``tool``; repeated (up to ``--attempts``) when the machine was busy.

    The CPU plugin's threads keep every vCPU busy, so the share of the machine's CPU time the
    measuring process got tells whether other processes took part of it. A disturbed
    measurement says nothing about the model, so it is taken again after a pause; the last
    attempt is kept whatever its share, and the share is reported.
    """
    from qfleet.model.benchmark import benchmark_model

    result: dict[str, Any] = {}
    for attempt in range(1, args.attempts + 1):
        wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
        if tool == "qfleet":
            result = benchmark_model(model_xml, seconds=args.seconds, batch=args.batch, progress=False)
        else:
            result = run_benchmark_app(model_xml, seconds=args.seconds, batch=args.batch)
        used = time.process_time() - cpu + _children_cpu() - children
        result["cpu_share"] = used / ((time.perf_counter() - wall) * (os.cpu_count() or 1))
        result["attempts"] = attempt
        if result["cpu_share"] >= args.min_cpu_share:
            break
        time.sleep(args.seconds)
    return result


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Quantize each FP32 IR on this process's (possibly capped) tier and measure both precisions."""
    from qfleet.isa import detect_host_tier
    from qfleet.model.quantize import quantize_model

    report: dict[str, Any] = {"tier": detect_host_tier(), "models": {}}
    for fp32_xml in args.fp32:
        fp32 = Path(fp32_xml)
        name = fp32.parent.parent.name
        int8_dir = fp32.parent.parent / f"int8-{args.tier_label}"
        started = time.perf_counter()
        metadata = quantize_model(
            fp32,
            calibration=args.calibration,
            out_dir=int8_dir,
            subset_size=args.calibration_samples,
            preset=args.preset,
            progress=False,
        )
        quantize_seconds = time.perf_counter() - started
        models = {"fp32": fp32, "int8": int8_dir / "model.xml"}
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            precisions = ("fp32", "int8") if repeat % 2 == 0 else ("int8", "fp32")
            tools = ("qfleet", "benchmark_app") if repeat % 2 == 0 else ("benchmark_app", "qfleet")
            for precision in precisions:
                for tool in tools:
                    result = measure(tool, models[precision], args)
                    runs.append({"repeat": repeat, "precision": precision, "tool": tool} | result)
                    print(
                        f"  [{args.tier_label}] {name} {precision:4s} {tool:13s} repeat {repeat}: "
                        f"{result['fps']:7.2f} FPS, CPU share {result['cpu_share']:.2f}, "
                        f"{result['attempts']} attempt(s) ({result.get('runtime_isa')})",
                        file=sys.stderr,
                        flush=True,
                    )
        report["models"][name] = {
            "quantize_seconds": round(quantize_seconds, 1),
            "quantized_isa": metadata["isa"],
            "runs": runs,
        }
    return report


def run_tier(
    label: str, fp32_models: list[Path], args: argparse.Namespace, calibration: Path
) -> dict[str, Any]:
    env = dict(os.environ)
    cap = KERNEL_CAPS[label]
    if cap is not None:
        env["ONEDNN_MAX_CPU_ISA"] = cap
        env["QFLEET_HOST_ISA"] = label  # the tier the kernels really run at
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--tier-label",
        label,
        "--calibration",
        str(calibration),
        "--calibration-samples",
        str(args.calibration_samples),
        "--preset",
        args.preset,
        "--seconds",
        str(args.seconds),
        "--repeats",
        str(args.repeats),
        "--batch",
        str(args.batch),
        "--min-cpu-share",
        str(args.min_cpu_share),
        "--attempts",
        str(args.attempts),
        "--fp32",
        *map(str, fp32_models),
    ]
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


# --- the machine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    ghz: float
    flags: frozenset[str]

    @staticmethod
    def read() -> Machine:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        return Machine(
            cpu=fields.get("model name", platform.processor() or "unknown"),
            cores=os.cpu_count() or 1,
            ghz=float(fields.get("cpu MHz", "0") or 0) / 1000,
            flags=frozenset(fields.get("flags", "").split()),
        )

    def fp32_peak_gflops(self, tier: str) -> float:
        flop_per_cycle = FP32_FLOP_PER_CYCLE["avx2" if tier in ("avx2", "avx_vnni") else "avx512"]
        return self.cores * self.ghz * flop_per_cycle


# --- report -----------------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]], precision: str, tool: str, key: str = "fps") -> float:
    values = [run[key] for run in runs if run["precision"] == precision and run["tool"] == tool and run[key]]
    return statistics.median(values) if values else float("nan")


def paired_ratio(runs: list[dict[str, Any]], top: tuple[str, str], bottom: tuple[str, str]) -> float:
    """Median over repeats of fps(top) / fps(bottom), both measured back to back in one repeat.

    Pairing inside a repeat cancels slow changes of the machine's load, which a ratio of two
    medians taken over the whole run does not.
    """
    by_key = {(run["repeat"], run["precision"], run["tool"]): run["fps"] for run in runs}
    repeats = sorted({run["repeat"] for run in runs})
    ratios = [
        by_key[(r, *top)] / by_key[(r, *bottom)]
        for r in repeats
        if (r, *top) in by_key and (r, *bottom) in by_key
    ]
    return statistics.median(ratios) if ratios else float("nan")


def summarize(
    tiers: dict[str, dict[str, Any]], gflops: dict[str, float], machine: Machine
) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    for label, report in tiers.items():
        tier = report["tier"]
        peak = machine.fp32_peak_gflops(tier)
        for name, data in report["models"].items():
            runs = data["runs"]
            row: dict[str, Any] = {"tier": tier, "tier_label": label, "model": name}
            for precision in ("fp32", "int8"):
                for tool in ("qfleet", "benchmark_app"):
                    row[f"{precision}_{tool}"] = medians(runs, precision, tool)
                row[f"{precision}_latency_ms"] = medians(runs, precision, "qfleet", "latency_ms_median")
                row[f"{precision}_agreement"] = paired_ratio(
                    runs, (precision, "qfleet"), (precision, "benchmark_app")
                )
                row[f"{precision}_gflops"] = row[f"{precision}_qfleet"] * gflops[name]
            row["ratio_qfleet"] = paired_ratio(runs, ("int8", "qfleet"), ("fp32", "qfleet"))
            row["ratio_benchmark_app"] = paired_ratio(
                runs, ("int8", "benchmark_app"), ("fp32", "benchmark_app")
            )
            row["cpu_share_min"] = min(run["cpu_share"] for run in runs)
            row["retaken"] = sum(run["attempts"] - 1 for run in runs)
            row["cpu_share_median"] = statistics.median(run["cpu_share"] for run in runs)
            row["fp32_peak_gflops"] = peak
            row["int8_peak_gops"] = peak * INT8_OVER_FP32_PEAK.get(tier, 2.0)
            row["runtime_isa"] = sorted({str(run.get("runtime_isa")) for run in runs})
            row["repeats"] = max(run["repeat"] for run in runs) + 1
            row["quantize_seconds"] = data["quantize_seconds"]
            rows.append(row)
    header = (
        "| tier (kernels) | model | FP32 FPS qfleet / bapp | INT8 FPS qfleet / bapp | INT8/FP32 qfleet / bapp "
        "| qfleet/bapp FP32, INT8 | FP32 GFLOP/s (% of peak) | INT8 GOP/s (% of INT8 peak) | CPU share min / median |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['tier']} ({', '.join(row['runtime_isa'])}) | {row['model']} "
            f"| {row['fp32_qfleet']:.2f} / {row['fp32_benchmark_app']:.2f} "
            f"| {row['int8_qfleet']:.2f} / {row['int8_benchmark_app']:.2f} "
            f"| **{row['ratio_qfleet']:.2f}** / {row['ratio_benchmark_app']:.2f} "
            f"| {row['fp32_agreement']:.3f}, {row['int8_agreement']:.3f} "
            f"| {row['fp32_gflops']:.0f} ({100 * row['fp32_gflops'] / row['fp32_peak_gflops']:.0f}% of "
            f"{row['fp32_peak_gflops']:.0f}) "
            f"| {row['int8_gflops']:.0f} ({100 * row['int8_gflops'] / row['int8_peak_gops']:.0f}% of "
            f"{row['int8_peak_gops']:.0f}) "
            f"| {row['cpu_share_min']:.2f} / {row['cpu_share_median']:.2f} |"
        )
    return rows, "\n".join(lines)


def update_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a Markdown file, leaving the others alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    section = f"## {title}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n", encoding="utf-8")


def render_section(
    table: str,
    rows: list[dict[str, Any]],
    machine: Machine,
    complexity: dict[str, tuple[float, float]],
    args: argparse.Namespace,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    seconds: float,
) -> str:
    from qfleet.isa import detect_host_tier
    from qfleet.model.metadata import library_versions

    versions = library_versions("nncf")
    retaken = sum(row["retaken"] for row in rows)
    models = ", ".join(
        f"{name}: {params:.1f} M parameters, {gflops:.2f} GFLOPs/image"
        for name, (params, gflops) in complexity.items()
    )
    verdicts = []
    for row in rows:
        if row["model"] == "iresnet50":
            met = "meets" if row["ratio_qfleet"] >= TARGET_RATIO_R50 else "misses"
            verdicts.append(
                f"- {row['tier']}: iResNet-50 INT8/FP32 = {row['ratio_qfleet']:.2f} ({met} the {TARGET_RATIO_R50} target)."
            )
        worst = max(abs(row["fp32_agreement"] - 1), abs(row["int8_agreement"] - 1))
        within = "within" if worst <= TARGET_TOOL_AGREEMENT else "OUTSIDE"
        verdicts.append(
            f"- {row['tier']} {row['model']}: qfleet benchmark vs benchmark_app differ by at most "
            f"{100 * worst:.1f}% ({within} 5%)."
        )
    return f"""
Written by `python benchmarks/int8_vs_fp32.py` (do not edit by hand; rerun it).

- CPU: {machine.cpu}, {machine.cores} vCPUs at {machine.ghz:.2f} GHz (/proc/cpuinfo "cpu MHz"),
  host ISA tier **{detect_host_tier()}**; OpenVINO {versions.get("openvino")}, NNCF {versions.get("nncf")},
  Python {platform.python_version()}.
- Models: iResNet-shaped MXNet checkpoints with random weights, {models}; converted by
  `qfleet convert`, quantized by `qfleet quantize` (preset {args.preset}, {args.calibration_samples}
  generated face-like calibration images) separately on each tier.
- Measurement: THROUGHPUT hint, batch {args.batch}, {args.seconds:g} s per measurement, {args.repeats} repeats;
  each repeat measures FP32 and INT8 with both tools back to back, in an order that alternates between
  repeats. FPS are medians over repeats; ratios are medians of the per-repeat back-to-back ratios.
  "qfleet" is `qfleet benchmark`'s code; "bapp" is OpenVINO's
  `benchmark_app -hint throughput -shape [{args.batch},3,112,112]` on the same IR.
- CPU share: CPU time the measuring process used / (wall time x vCPUs). The plugin's threads keep
  every vCPU busy, so a share well below 1 means other processes took part of the machine during
  that measurement (this machine is shared). A measurement with a share below {args.min_cpu_share:g} is taken
  again after a pause, up to {args.attempts} attempts, and the last attempt is kept whatever its share
  ({retaken} measurements were retaken in this run).
- Lower tiers are measured on this machine by capping OpenVINO's kernels (`ONEDNN_MAX_CPU_ISA`);
  "kernels" is the ISA the CPU plugin reports it compiled for.
- Peak: FP32 = vCPUs x GHz x FLOP/cycle, assuming 2 FMA units per core (AVX2: 2 x 8 lanes x 2 =
  32 FLOP/cycle; AVX-512: 64). INT8 peak = FP32 peak x {INT8_OVER_FP32_PEAK["avx2"]:g} on AVX2
  (vpmaddubsw + vpmaddwd), x {INT8_OVER_FP32_PEAK["avx512_vnni"]:g} with VNNI (vpdpbusd); INT8 GOP/s count 2
  operations per multiply-accumulate, like FLOPs. GHz is the nominal clock /proc/cpuinfo shows; the
  clock under load (turbo) is unknown, so the percentages are indicative (above 100% means the
  cores ran faster than nominal).
- Machine load (1/5/15-min load average) before: {"/".join(f"{x:.2f}" for x in load[0])}, after:
  {"/".join(f"{x:.2f}" for x in load[1])}; other jobs shared these {machine.cores} vCPUs, so absolute
  FPS are noisy; ratios are measured back to back. Script run time {seconds / 60:.1f} min.

{table}

{chr(10).join(verdicts)}
"""


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="50,100", help="iResNet depths (default 50,100)")
    parser.add_argument("--tiers", default="native,avx2", help=f"tiers to measure: {', '.join(KERNEL_CAPS)}")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (default 3)")
    parser.add_argument("--batch", type=int, default=1, help="images per inference request (default 1)")
    parser.add_argument("--preset", default="performance", choices=("performance", "mixed"))
    parser.add_argument(
        "--min-cpu-share",
        type=float,
        default=0.8,
        help="retake a measurement during which this process got less of the CPU (default 0.8; 0: never)",
    )
    parser.add_argument("--attempts", type=int, default=3, help="attempts per measurement (default 3)")
    parser.add_argument("--calibration-samples", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--workdir", type=Path, help="keep models here (default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    # Internal: one tier's measurements in a child process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tier-label", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", help=argparse.SUPPRESS)
    parser.add_argument("--fp32", nargs="*", default=[], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        report = worker(args)
        print(json.dumps(report))
        return report

    from qfleet.model.convert import convert_model

    started = time.perf_counter()
    load_before = os.getloadavg()
    depths = [int(depth) for depth in args.models.split(",")]
    labels = [label.strip() for label in args.tiers.split(",")]
    for depth in depths:
        if depth not in UNITS:
            raise SystemExit(f"--models: no iResNet-{depth}; choose from {sorted(UNITS)}")
    for label in labels:
        if label not in KERNEL_CAPS:
            raise SystemExit(f"--tiers: unknown tier {label!r}; choose from {', '.join(KERNEL_CAPS)}")
    machine = Machine.read()
    with tempfile.TemporaryDirectory(prefix="int8-vs-fp32-") as scratch:
        workdir = args.workdir or Path(scratch)
        calibration = write_face_like_images(workdir / "calibration", args.calibration_samples)
        fp32_models: list[Path] = []
        complexity: dict[str, tuple[float, float]] = {}
        for depth in depths:
            name = f"iresnet{depth}"
            print(f"building and converting {name}", file=sys.stderr, flush=True)
            counted = build_checkpoint(depth, workdir / name / "checkpoint" / "model")
            complexity[name] = (counted.params / 1e6, counted.gflops)
            convert_model(
                workdir / name / "checkpoint" / "model", fmt="mxnet", out_dir=workdir / name / "fp32"
            )
            fp32_models.append(workdir / name / "fp32" / "model.xml")
        tiers = {}
        for label in labels:
            print(f"tier {label}: quantizing and measuring", file=sys.stderr, flush=True)
            tiers[label] = run_tier(label, fp32_models, args, calibration)
    gflops = {name: value[1] for name, value in complexity.items()}
    rows, table = summarize(tiers, gflops, machine)
    load_after = os.getloadavg()
    print(table)
    body = render_section(
        table, rows, machine, complexity, args, (load_before, load_after), time.perf_counter() - started
    )
    print(body.split(table)[1])
    if not args.no_write:
        update_section(args.results, SECTION, body)
        print(f"wrote section {SECTION!r} of {args.results}", file=sys.stderr)
    return {"rows": rows, "tiers": tiers}


if __name__ == "__main__":
    main()
