"""FP32, BF16 and INT8 throughput of the ArcFace backbones (iResNet-50 and iResNet-100) on this CPU.

For each model: build an iResNet-shaped MXNet checkpoint with random weights
(``benchmarks/iresnet.py``), convert it with ``qfleet convert``'s code path, quantize it with
``qfleet quantize``'s code path (calibration: generated face-like images), then measure, side by
side in one run and on the same IRs:

- **FP32**: the FP32 IR computed in f32 (``qfleet benchmark --precision fp32`` and
  ``benchmark_app -infer_precision f32``);
- **BF16**: the FP32 IR computed in bf16 (``--precision bf16`` / ``-infer_precision bf16``), only
  where the CPU plugin computes bf16 natively under the row's kernels (``runtime.native_bf16()``
  in the row's capped environment). Elsewhere the row says "no native bf16 here": OpenVINO would
  silently compute f32 under a bf16 request, and that is not a BF16 number;
- **INT8**: the quantized IR, its floating-point part in f32 (``--precision int8`` /
  ``-infer_precision f32``).

Both tools run as separate processes with the THROUGHPUT hint, the same static input shape, the
same measured duration, and the streams the hint picks (reported per row, so a difference shows).
Each repeat runs every (precision, tool) pair once; the order reverses between repeats. FPS are
medians over repeats; ratios (ours/benchmark_app, INT8/FP32, INT8/BF16) are medians of per-repeat
ratios of measurements taken in the same repeat.

ISA tiers: besides the host's own kernels ("native"), a lower tier is measured on the same machine
by capping OpenVINO's kernels (``ONEDNN_MAX_CPU_ISA``, ``qfleet.isa.kernel_cap_env``), e.g.
``--tiers native,avx512_vnni,avx2``. Each tier runs in its own process, quantization included.
Every row says which kernels really ran: ``runtime_isa`` from ``qfleet benchmark --json`` and the
``isa=`` of ``benchmark_app``'s ``RUNTIME_REQUIREMENTS``. Tiers above this host's are skipped (a
cap cannot raise the kernels), and so is a tier equal to the native one when both are asked.

Tuning experiment (off by default): ``--tune-batches 4,8`` and ``--tune-presets mixed`` add
``qfleet benchmark`` runs at larger batches (same hint, so the streams it picks are reported) and
with INT8 IRs quantized with other NNCF presets, compared with benchmark_app's defaults (batch 1).

The script prints a Markdown fragment (``--out FILE`` writes it too; ``--update-results``
replaces the marked block in ``benchmarks/RESULTS.md``) and can save every measurement
(``--json-out FILE``).

    python benchmarks/int8_vs_fp32.py                                   # full run, see --help
    python benchmarks/int8_vs_fp32.py --models 50 --seconds 3 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS,
    busy_cpu_seconds,
    children_cpu_seconds,
    cpu_model,
    replace_marked_block,
    script_parser,
)
from iresnet import UNITS, build_checkpoint

#: The block of RESULTS.md that ``--update-results`` replaces.
BEGIN_MARK = "<!-- int8_vs_fp32.py output: begin -->"
END_MARK = "<!-- int8_vs_fp32.py output: end -->"
NATIVE = "native"
PRECISIONS = ("fp32", "bf16", "int8")
TOOLS = ("qfleet", "benchmark_app")
#: benchmark_app's -infer_precision per variant (an INT8 IR's float part in f32).
BAPP_INFER_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: ours / benchmark_app must agree within this, per precision.
TARGET_TOOL_AGREEMENT = 0.02
#: The issue's targets for iResNet-50 on a CPU with native bf16.
TARGET_INT8_OVER_FP32_BF16_HOST = 3.1
TARGET_INT8_OVER_BF16 = 1.6
NO_BF16 = "no native bf16 here"


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


# --- the two tools, each in its own process ---------------------------------------------------


def _sibling(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _element_type(text: str | None) -> str | None:
    """OpenVINO's printed element type ("float32", "bf16", ...) as f32/bf16."""
    if text is None:
        return None
    return {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16"}.get(text, text)


def _milliseconds(value: str, unit: str) -> float:
    return float(value) / 1000 if unit == "us" else float(value)


def run_qfleet(model_xml: Path, *, precision: str, seconds: int, batch: int) -> dict[str, Any]:
    """``qfleet benchmark --json --precision ...``: FPS and what the plugin reports it ran."""
    command = [
        _sibling("qfleet"),
        "benchmark",
        "--model",
        str(model_xml),
        "--precision",
        precision,
        "--seconds",
        str(seconds),
        "--batch",
        str(batch),
        "--json",
        "--quiet",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = completed.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if completed.returncode != 0 or "fps" not in result:
        raise RuntimeError(
            f"qfleet benchmark failed ({completed.returncode}): {(completed.stdout + completed.stderr)[-1500:]}"
        )
    return {
        "fps": float(result["fps"]),
        "latency_ms_median": result.get("latency_ms_median"),
        "streams": result.get("streams"),
        "infer_requests": result.get("infer_requests"),
        "inference_precision": result.get("inference_precision"),
        "runtime_isa": result.get("runtime_isa"),
    }


def run_benchmark_app(model_xml: Path, *, precision: str, seconds: int, batch: int) -> dict[str, Any]:
    """OpenVINO's benchmark_app, THROUGHPUT hint, ``-infer_precision`` named, same static shape."""
    command = [
        _sibling("benchmark_app"),
        "-m",
        str(model_xml),
        "-d",
        "CPU",
        "-hint",
        "throughput",
        "-infer_precision",
        BAPP_INFER_PRECISION[precision],
        "-t",
        str(seconds),
        "-shape",
        f"[{batch},3,112,112]",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    throughput = re.search(r"Throughput:\s+([\d.]+)\s+FPS", output)
    if completed.returncode != 0 or throughput is None:
        raise RuntimeError(f"benchmark_app failed ({completed.returncode}): {output[-1500:]}")
    median = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", output)
    streams = re.search(r"NUM_STREAMS:\s+(\d+)", output)
    requests = re.search(r"OPTIMAL_NUMBER_OF_INFER_REQUESTS:\s+(\d+)", output)
    inference = re.search(r"INFERENCE_PRECISION_HINT:\s+<Type: '([^']+)'>", output)
    isa = re.search(r"isa=([^;\n]+)", output)
    return {
        "fps": float(throughput.group(1)),
        "latency_ms_median": _milliseconds(*median.groups()) if median else None,
        "streams": int(streams.group(1)) if streams else None,
        "infer_requests": int(requests.group(1)) if requests else None,
        "inference_precision": _element_type(inference.group(1) if inference else None),
        "runtime_isa": isa.group(1).strip() if isa else None,
    }


# --- measuring on a shared machine ------------------------------------------------------------


def measure(
    tool: str, model_xml: Path, *, precision: str, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement; retaken (up to ``--attempts``) when other processes took CPU meanwhile.

    "Others" = all busy CPU time of the machine (/proc/stat) minus this measurement's process,
    in cores over the measurement's wall time. The last attempt is kept whatever it shows.
    """
    run = run_qfleet if tool == "qfleet" else run_benchmark_app
    result: dict[str, Any] = {}
    for attempt in range(1, args.attempts + 1):
        wall, busy, children = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
        try:
            result = run(model_xml, precision=precision, seconds=args.seconds, batch=batch)
        except RuntimeError as exc:  # keep going: one failed measurement should not end the run
            result = {"fps": float("nan"), "error": str(exc)}
        elapsed = time.perf_counter() - wall
        others = (busy_cpu_seconds() - busy - (children_cpu_seconds() - children)) / elapsed
        result["others_cores"] = max(0.0, others) if not math.isnan(others) else others
        result["wall_s"] = round(elapsed, 1)
        result["tool_cpu_s"] = round(children_cpu_seconds() - children, 1)  # the tool's own CPU time
        result["attempts"] = attempt
        if "error" in result or not result["others_cores"] > args.max_others:
            break
        time.sleep(min(args.seconds, 5))
    return result


# --- one tier, in its own (possibly capped) process -------------------------------------------


def plan_configs(args: argparse.Namespace, bf16: bool) -> list[dict[str, Any]]:
    """Every (precision, tool, batch, preset) one repeat measures, in the forward order."""
    precisions = [p for p in PRECISIONS if p != "bf16" or bf16]
    configs = [
        {"precision": p, "tool": t, "batch": args.batch, "preset": args.preset if p == "int8" else None}
        for p in precisions
        for t in TOOLS
    ]
    for batch in dict.fromkeys([args.batch, *args.tune_batches]):
        for precision in precisions:
            presets = [args.preset, *args.tune_presets] if precision == "int8" else [None]
            for preset in dict.fromkeys(presets):
                if batch == args.batch and preset in (None, args.preset):
                    continue  # the default configuration, measured above with both tools
                configs.append({"precision": precision, "tool": "qfleet", "batch": batch, "preset": preset})
    return configs


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Quantize each FP32 IR under this process's kernels and measure every configuration."""
    from qfleet.isa import detect_host_tier
    from qfleet.model.quantize import quantize_model
    from qfleet.model.runtime import default_inference_precision, native_bf16

    bf16 = native_bf16()
    report: dict[str, Any] = {
        "tier": detect_host_tier(),
        "native_bf16": bf16,
        "default_inference_precision": default_inference_precision(),
        "cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "models": {},
    }
    configs = plan_configs(args, bf16)
    presets = list(dict.fromkeys([args.preset, *args.tune_presets]))
    for fp32_xml in args.fp32:
        fp32 = Path(fp32_xml)
        name = fp32.parent.parent.name
        int8: dict[str, Path] = {}
        quantize_seconds: dict[str, float] = {}
        for preset in presets:
            out_dir = fp32.parent.parent / f"int8-{preset}-{args.tier_label}"
            started = time.perf_counter()
            quantize_model(
                fp32,
                calibration=args.calibration,
                out_dir=out_dir,
                subset_size=args.calibration_samples,
                preset=preset,
                progress=False,
            )
            quantize_seconds[preset] = round(time.perf_counter() - started, 1)
            int8[preset] = out_dir / "model.xml"
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            for config in configs if repeat % 2 == 0 else configs[::-1]:
                xml = int8[config["preset"]] if config["precision"] == "int8" else fp32
                result = measure(
                    config["tool"], xml, precision=config["precision"], batch=config["batch"], args=args
                )
                runs.append({"repeat": repeat, **config, **result})
                preset = f" {config['preset']}" if config["preset"] else ""
                print(
                    f"  [{args.tier_label}] {name} {config['precision']}{preset} batch {config['batch']} "
                    f"{config['tool']:13s} repeat {repeat}: {result['fps']:7.2f} FPS "
                    f"({result.get('inference_precision')}, {result.get('runtime_isa')}, "
                    f"{result.get('streams')} streams), others {result['others_cores']:.2f} cores, "
                    f"{result['attempts']} attempt(s)"
                    + (f"\n    ERROR {result['error']}" if "error" in result else ""),
                    file=sys.stderr,
                    flush=True,
                )
        report["models"][name] = {"quantize_seconds": quantize_seconds, "runs": runs}
    return report


def tier_plan(labels: Iterable[str], host: str | None) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """(label, environment overrides) per tier to measure, and a note per tier skipped."""
    from qfleet.isa import TIER_NAMES, kernel_cap_env

    planned: list[tuple[str, dict[str, str]]] = []
    skipped: list[str] = []
    for label in labels:
        if label == NATIVE:
            planned.append((label, {}))
            continue
        if host is None or TIER_NAMES.index(label) < TIER_NAMES.index(host):
            skipped.append(f"{label}: above this host's tier ({host}); a kernel cap cannot raise it")
        elif label == host and NATIVE in labels:
            skipped.append(f"{label}: this host's own tier, measured as {NATIVE}")
        else:
            # QFLEET_HOST_ISA: the tier the capped kernels really are, so quantize records it.
            planned.append((label, kernel_cap_env(label) | {"QFLEET_HOST_ISA": label}))
    return planned, skipped


def run_tier(
    label: str,
    overrides: dict[str, str],
    fp32_models: list[Path],
    args: argparse.Namespace,
    calibration: Path,
) -> dict[str, Any]:
    env = dict(os.environ) | overrides
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
        "--tune-presets",
        ",".join(args.tune_presets),
        "--tune-batches",
        ",".join(map(str, args.tune_batches)),
        "--seconds",
        str(args.seconds),
        "--repeats",
        str(args.repeats),
        "--batch",
        str(args.batch),
        "--max-others",
        str(args.max_others),
        "--attempts",
        str(args.attempts),
        "--fp32",
        *map(str, fp32_models),
    ]
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    report["label"] = label
    return report


# --- report -----------------------------------------------------------------------------------


def _select(runs: list[dict[str, Any]], **key: Any) -> list[dict[str, Any]]:
    return [run for run in runs if all(run.get(k) == v for k, v in key.items())]


def median_fps(runs: list[dict[str, Any]], **key: Any) -> float:
    values = [run["fps"] for run in _select(runs, **key) if not math.isnan(run["fps"])]
    return statistics.median(values) if values else float("nan")


def paired_ratio(runs: list[dict[str, Any]], top: dict[str, Any], bottom: dict[str, Any]) -> float:
    """Median over repeats of fps(top) / fps(bottom), both measured in the same repeat.

    Pairing inside a repeat cancels slow changes of the machine's load, which a ratio of two
    medians taken over the whole run does not.
    """
    ratios = []
    for repeat in sorted({run["repeat"] for run in runs}):
        a = median_fps(runs, repeat=repeat, **top)
        b = median_fps(runs, repeat=repeat, **bottom)
        if not (math.isnan(a) or math.isnan(b)) and b > 0:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else float("nan")


def _reported(runs: list[dict[str, Any]], field: str, **key: Any) -> str:
    values = sorted({str(run.get(field)) for run in _select(runs, **key) if "error" not in run})
    return ", ".join(values) if values else "-"


def summarize(tiers: list[dict[str, Any]], cpu: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from qfleet.isa import tier_of_runtime_isa

    rows: list[dict[str, Any]] = []
    for report in tiers:
        for name, data in report["models"].items():
            runs = data["runs"]
            base = {"batch": args.batch}
            default = {
                p: {"precision": p, **base} | ({"preset": args.preset} if p == "int8" else {})
                for p in PRECISIONS
            }
            row: dict[str, Any] = {
                "cpu": cpu,
                "label": report["label"],
                "tier": report["tier"],
                "native_bf16": report["native_bf16"],
                "model": name,
                "quantize_seconds": data["quantize_seconds"],
            }
            for precision in PRECISIONS:
                for tool in TOOLS:
                    row[f"{precision}_{tool}"] = median_fps(runs, tool=tool, **default[precision])
                row[f"{precision}_agreement"] = paired_ratio(
                    runs,
                    {"tool": "qfleet", **default[precision]},
                    {"tool": "benchmark_app", **default[precision]},
                )
            for tool in TOOLS:
                int8 = {"tool": tool, **default["int8"]}
                row[f"int8_over_fp32_{tool}"] = paired_ratio(runs, int8, {"tool": tool, **default["fp32"]})
                row[f"int8_over_bf16_{tool}"] = paired_ratio(runs, int8, {"tool": tool, **default["bf16"]})
                row[f"isa_{tool}"] = _reported(runs, "runtime_isa", tool=tool)
                row[f"inference_{tool}"] = {
                    p: _reported(runs, "inference_precision", tool=tool, **default[p]) for p in PRECISIONS
                }
                row[f"streams_{tool}"] = _reported(runs, "streams", tool=tool, batch=args.batch)
            kernel_tiers = {
                tier_of_runtime_isa(run.get("runtime_isa")) for run in runs if run.get("runtime_isa")
            }
            row["kernel_tier"] = ", ".join(sorted(str(t) for t in kernel_tiers)) or "unknown"
            row["kernels_match_tier"] = kernel_tiers == {report["tier"]}
            others = [run["others_cores"] for run in runs if not math.isnan(run["others_cores"])]
            row["others_max"] = max(others) if others else float("nan")
            row["others_median"] = statistics.median(others) if others else float("nan")
            row["retaken"] = sum(run["attempts"] - 1 for run in runs)
            row["errors"] = [run["error"] for run in runs if "error" in run]
            row["repeats"] = max(run["repeat"] for run in runs) + 1
            row["tuning"] = summarize_tuning(runs, default, args)
            rows.append(row)
    return rows


def summarize_tuning(
    runs: list[dict[str, Any]], default: dict[str, dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Per (batch, INT8 preset) of the tuning experiment: ours vs benchmark_app's defaults."""
    if not args.tune_batches and not args.tune_presets:
        return []
    out = []
    bapp_int8 = {"tool": "benchmark_app", **default["int8"]}
    bapp_fp32 = {"tool": "benchmark_app", **default["fp32"]}
    for batch in dict.fromkeys([args.batch, *args.tune_batches]):
        for preset in dict.fromkeys([args.preset, *args.tune_presets]):
            int8 = {"tool": "qfleet", "precision": "int8", "batch": batch, "preset": preset}
            fp32 = {"tool": "qfleet", "precision": "fp32", "batch": batch}
            bf16 = {"tool": "qfleet", "precision": "bf16", "batch": batch}
            out.append(
                {
                    "batch": batch,
                    "preset": preset,
                    "fp32": median_fps(runs, **fp32),
                    "bf16": median_fps(runs, **bf16),
                    "int8": median_fps(runs, **int8),
                    "int8_over_fp32": paired_ratio(runs, int8, fp32),
                    "int8_over_bf16": paired_ratio(runs, int8, bf16),
                    "int8_over_bapp_int8": paired_ratio(runs, int8, bapp_int8),
                    "int8_over_bapp_fp32": paired_ratio(runs, int8, bapp_fp32),
                    "streams": _reported(runs, "streams", **int8),
                }
            )
    return out


def _pair(a: float, b: float, fmt: str = ".2f") -> str:
    return "-" if math.isnan(a) and math.isnan(b) else f"{a:{fmt}} / {b:{fmt}}"


def _ratio(value: float, fmt: str = ".3f") -> str:
    return "-" if math.isnan(value) else f"{value:{fmt}}"


def render_fragment(
    rows: list[dict[str, Any]], args: argparse.Namespace, skipped: list[str], minutes: float
) -> str:
    from qfleet.isa import detect_host_tier
    from qfleet.model.metadata import library_versions

    versions = library_versions("nncf")
    cpu = rows[0]["cpu"] if rows else cpu_model()
    lines = [
        f"Measured by `python benchmarks/int8_vs_fp32.py {' '.join(args.argv)}`".rstrip()
        + f" ({minutes:.1f} min).",
        "",
        f'- CPU: **{cpu}** (/proc/cpuinfo "model name"), {os.cpu_count()} vCPUs, host tier '
        f"**{detect_host_tier()}**; OpenVINO {versions.get('openvino')}, NNCF {versions.get('nncf')}, "
        f"Python {platform.python_version()}.",
        f"- THROUGHPUT hint, batch {args.batch}, {args.seconds} s per measurement, {args.repeats} repeat(s), "
        f"order reversed every other repeat; INT8 quantized per tier, preset {args.preset}, "
        f"{args.calibration_samples} calibration images; ours = `qfleet benchmark`, bapp = `benchmark_app`.",
    ]
    lines += [f"- Skipped tier {note}." for note in skipped]
    lines += [
        "",
        "| CPU | tier | bf16 native | kernels ran (ours; bapp) | model | FP32 FPS ours / bapp | BF16 FPS ours / bapp "
        "| INT8 FPS ours / bapp | ours/bapp FP32, BF16, INT8 | INT8/FP32 ours / bapp | INT8/BF16 ours / bapp "
        "| streams ours; bapp | others' CPU max / median |",
        "|" + "---|" * 13,
    ]
    for row in rows:
        bf16 = row["native_bf16"]
        kernels = f"{row['isa_qfleet']}; {row['isa_benchmark_app']}"
        if not row["kernels_match_tier"]:
            kernels += f" (**not {row['tier']}**: {row['kernel_tier']})"
        lines.append(
            f"| {row['cpu']} | {row['tier']}{'' if row['label'] == NATIVE else ' (capped)'} | {'yes' if bf16 else 'no'} "
            f"| {kernels} | {row['model']} "
            f"| {_pair(row['fp32_qfleet'], row['fp32_benchmark_app'])} "
            f"| {_pair(row['bf16_qfleet'], row['bf16_benchmark_app']) if bf16 else NO_BF16} "
            f"| {_pair(row['int8_qfleet'], row['int8_benchmark_app'])} "
            f"| {', '.join(_ratio(row[f'{p}_agreement']) for p in PRECISIONS)} "
            f"| **{_ratio(row['int8_over_fp32_qfleet'], '.2f')}** / {_ratio(row['int8_over_fp32_benchmark_app'], '.2f')} "
            f"| {_pair(row['int8_over_bf16_qfleet'], row['int8_over_bf16_benchmark_app']) if bf16 else NO_BF16} "
            f"| {row['streams_qfleet']}; {row['streams_benchmark_app']} "
            f"| {row['others_max']:.2f} / {row['others_median']:.2f} |"
        )
    lines += ["", *verdicts(rows)]
    tuning = [row for row in rows if row["tuning"]]
    if tuning:
        lines += [
            "",
            "Tuning experiment (`qfleet benchmark` only; bapp = benchmark_app's defaults, "
            f"batch {args.batch}, preset {args.preset}, from the table above):",
            "",
            "| CPU | tier | model | batch | INT8 preset | streams | FP32 / BF16 / INT8 FPS | INT8/FP32 | INT8/BF16 "
            "| INT8 ours / INT8 bapp | INT8 ours / FP32 bapp |",
            "|" + "---|" * 11,
        ]
        for row in tuning:
            for t in row["tuning"]:
                bf16 = f"{t['bf16']:.2f}" if row["native_bf16"] else "-"
                lines.append(
                    f"| {row['cpu']} | {row['tier']} | {row['model']} | {t['batch']} | {t['preset']} | {t['streams']} "
                    f"| {t['fp32']:.2f} / {bf16} / {t['int8']:.2f} | {_ratio(t['int8_over_fp32'], '.2f')} "
                    f"| {_ratio(t['int8_over_bf16'], '.2f') if row['native_bf16'] else NO_BF16} "
                    f"| {_ratio(t['int8_over_bapp_int8'])} | {_ratio(t['int8_over_bapp_fp32'], '.2f')} |"
                )
    return "\n".join(lines) + "\n"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        measured = [p for p in PRECISIONS if p != "bf16" or row["native_bf16"]]
        worst = max(abs(row[f"{p}_agreement"] - 1) for p in measured)
        if math.isnan(worst):
            out.append(f"- {row['tier']} {row['model']}: ours vs benchmark_app: not measured (errors).")
        else:
            within = "within" if worst <= TARGET_TOOL_AGREEMENT else "**outside**"
            out.append(
                f"- {row['tier']} {row['model']}: ours vs benchmark_app differ by at most {100 * worst:.1f}% "
                f"({within} {100 * TARGET_TOOL_AGREEMENT:.0f}%)."
            )
        wrong = [
            f"{tool} {p} computed {row[f'inference_{tool}'][p]}"
            for tool in TOOLS
            for p in measured
            if row[f"inference_{tool}"][p] not in ("-", "f32" if p != "bf16" else "bf16")
        ]
        if wrong:
            out.append(f"  - precision not as asked: {'; '.join(wrong)}.")
        if row["native_bf16"] and row["model"] == "iresnet50":
            fp32, bf16 = row["int8_over_fp32_qfleet"], row["int8_over_bf16_qfleet"]
            out.append(
                f"  - INT8/FP32 {fp32:.2f} (target >= {TARGET_INT8_OVER_FP32_BF16_HOST}), "
                f"INT8/BF16 {bf16:.2f} (target >= {TARGET_INT8_OVER_BF16})."
            )
        if row["errors"]:
            out.append(f"  - {len(row['errors'])} measurement(s) failed; first: {row['errors'][0][-300:]!r}")
    return out


# --- main -------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


#: Options left out of the command line the fragment records (local paths, output switches).
_LOCAL_OPTIONS = {"--workdir": 1, "--out": 1, "--json-out": 1, "--results": 1, "--update-results": 0}


def _shown_argv(argv: list[str]) -> list[str]:
    shown: list[str] = []
    skip = 0
    for word in argv:
        name = word.split("=", 1)[0]
        if skip:
            skip -= 1
        elif name in _LOCAL_OPTIONS:
            skip = 0 if "=" in word else _LOCAL_OPTIONS[name]
        else:
            shown.append(word)
    return shown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from qfleet.isa import TIER_NAMES

    parser = script_parser(__doc__)
    parser.add_argument("--models", type=_ints, default=[50, 100], help="iResNet depths (default 50,100)")
    parser.add_argument(
        "--tiers",
        type=_words,
        default=[NATIVE, "avx512_vnni", "avx2"],
        help=f"tiers to measure: {NATIVE} (no cap) and/or capped tiers {', '.join(TIER_NAMES)} "
        "(default native,avx512_vnni,avx2; tiers above this host's are skipped)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (default 3)")
    parser.add_argument("--batch", type=int, default=1, help="images per inference request (default 1)")
    parser.add_argument(
        "--preset", default="performance", choices=("performance", "mixed"), help="NNCF preset"
    )
    parser.add_argument(
        "--tune-batches",
        type=_ints,
        default=[],
        help="tuning experiment: also measure ours at these batches (e.g. 4,8)",
    )
    parser.add_argument(
        "--tune-presets",
        type=_words,
        default=[],
        help="tuning experiment: also quantize with these presets (e.g. mixed)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.15,
        help="retake a measurement during which other processes used more CPU, in cores (default 0.15)",
    )
    parser.add_argument("--attempts", type=int, default=3, help="attempts per measurement (default 3)")
    parser.add_argument("--calibration-samples", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--workdir", type=Path, help="keep models here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the Markdown fragment to this file")
    parser.add_argument("--json-out", type=Path, help="write every measurement as JSON to this file")
    parser.add_argument(
        "--update-results",
        action="store_true",
        help=f"replace the marked block of {RESULTS.name} with the fragment",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    # Internal: one tier's measurements in a child process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tier-label", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", help=argparse.SUPPRESS)
    parser.add_argument("--fp32", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = _shown_argv(list(sys.argv[1:] if argv is None else argv))
    for depth in args.models:
        if depth not in UNITS:
            parser.error(f"--models: no iResNet-{depth}; choose from {sorted(UNITS)}")
    for label in args.tiers:
        if label != NATIVE and label not in TIER_NAMES:
            parser.error(f"--tiers: unknown tier {label!r}; choose from {NATIVE}, {', '.join(TIER_NAMES)}")
    for preset in args.tune_presets:
        if preset not in ("performance", "mixed"):
            parser.error(f"--tune-presets: unknown preset {preset!r}")
    if args.seconds < 1 or args.repeats < 1 or args.batch < 1 or any(b < 1 for b in args.tune_batches):
        parser.error("--seconds, --repeats and batches must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        report = worker(args)
        print(json.dumps(report))
        return report

    from qfleet.isa import detect_host_tier
    from qfleet.model.convert import convert_model

    started = time.perf_counter()
    planned, skipped = tier_plan(args.tiers, detect_host_tier())
    for note in skipped:
        print(f"skipping tier {note}", file=sys.stderr)
    if not planned:
        raise SystemExit("no tier left to measure")
    with tempfile.TemporaryDirectory(prefix="int8-vs-fp32-") as scratch:
        workdir = args.workdir or Path(scratch)
        calibration = write_face_like_images(workdir / "calibration", args.calibration_samples)
        fp32_models: list[Path] = []
        for depth in args.models:
            name = f"iresnet{depth}"
            print(f"building and converting {name}", file=sys.stderr, flush=True)
            build_checkpoint(depth, workdir / name / "checkpoint" / "model")
            convert_model(
                workdir / name / "checkpoint" / "model", fmt="mxnet", out_dir=workdir / name / "fp32"
            )
            fp32_models.append(workdir / name / "fp32" / "model.xml")
        tiers = []
        for label, overrides in planned:
            print(f"tier {label} {overrides or ''}: quantizing and measuring", file=sys.stderr, flush=True)
            tiers.append(run_tier(label, overrides, fp32_models, args, calibration))
    rows = summarize(tiers, cpu_model(), args)
    fragment = render_fragment(rows, args, skipped, (time.perf_counter() - started) / 60)
    print(fragment)
    if args.out:
        args.out.write_text(fragment, encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"rows": rows, "tiers": tiers}, indent=1, default=str), encoding="utf-8"
        )
    if args.update_results:
        replace_marked_block(args.results, BEGIN_MARK, END_MARK, fragment)
        print(f"updated the marked block of {args.results}", file=sys.stderr)
    return {"rows": rows, "tiers": tiers}


if __name__ == "__main__":
    main()
