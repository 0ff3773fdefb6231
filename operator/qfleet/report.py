"""The demo's report: one table for the terminal, and JSON + HTML + PNG files for ``--out``."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from qfleet.outputs import write_json

#: Column titles, in table order.
TITLES: dict[str, str] = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}
#: Bar colours of the PNG, per precision.
COLOURS: dict[str, str] = {"fp32": "#7f7f7f", "bf16": "#ff7f0e", "int8": "#1f77b4"}


def precisions(result: dict[str, Any]) -> list[str]:
    """The variants the pipeline measured, in table order: FP32, BF16 (only on hosts with
    native bf16, where the result has a ``bf16`` block), INT8."""
    return [precision for precision in ("fp32", "bf16", "int8") if precision in result]


def computed_in(block: dict[str, Any]) -> str:
    """What a variant computed in, as the plugin reported it: f32, bf16, or int8 + its float part."""
    inference = str(block.get("inference_precision") or "f32")
    return f"int8 + {inference}" if block.get("precision") == "int8" else inference


def _gate_cell(gate: dict[str, Any] | None) -> str:
    return f"{gate['drop']:+.4f} ({gate['reason']})" if gate else ""


def _bf16_speedup_row(columns: list[str], fps: dict[str, float]) -> list[tuple[str, ...]]:
    """INT8 against BF16, where BF16 was measured (no row elsewhere)."""
    if "bf16" not in fps:
        return []
    return [
        (
            "INT8 speed-up vs BF16",
            *(f"{fps['int8'] / fps['bf16']:.2f}x" if p == "int8" else "" for p in columns),
        )
    ]


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """(metric, one cell per precision) rows of the demo table; the first row is the header."""
    columns = precisions(result)
    blocks = {p: result[p] for p in columns}
    fps = {p: float(blocks[p]["fps"]) for p in columns}
    gates = {"fp32": None, "int8": result["gate"], "bf16": result.get("bf16", {}).get("gate")}
    sizes = result.get("size_mb", {})
    plans = result["plan"]
    rows: list[tuple[str, ...]] = [
        ("", *(TITLES[p] for p in columns)),
        ("computed in", *(computed_in(blocks[p]) for p in columns)),
        ("LFW accuracy", *(f"{blocks[p]['accuracy']:.4f}" for p in columns)),
        ("accuracy drop vs FP32", *(_gate_cell(gates[p]) for p in columns)),
        ("faces/s per replica", *(f"{fps[p]:.1f}" for p in columns)),
        ("speed-up vs FP32", *(f"{fps[p] / fps['fp32']:.2f}x" for p in columns)),
    ]
    rows += _bf16_speedup_row(columns, fps)
    rows += [
        ("median latency (ms)", *(f"{blocks[p]['latency_ms_median']:.2f}" for p in columns)),
        ("model size (MB)", *(f"{sizes[p]:.2f}" if p in sizes else "" for p in columns)),
        ("replicas for demand", *(str(plans[p]["replicas"]) for p in columns)),
    ]
    return rows


def _per_replica(result: dict[str, Any]) -> str:
    threads = result.get("threads")
    if threads is None:
        return "each replica all of this machine's cores"
    return f"each replica {threads} CPU core{'s' if threads != 1 else ''} (INFERENCE_NUM_THREADS={threads})"


def render_table(result: dict[str, Any]) -> str:
    demand = result["demand"]
    rows = summary_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    kernels = result.get("runtime_isa") or "unreported kernels"
    lines = [
        f"qfleet demo on ISA tier {result['isa']} ({kernels}): {result['pairs']} LFW-protocol pairs",
        f"demand {demand['cameras']} cameras x {demand['camera_fps']:g} FPS x {demand['faces_per_frame']:g} faces "
        f"= {demand['faces_per_second']:.0f} faces/s at {demand['utilization']:.0%} target utilisation, "
        f"{_per_replica(result)}",
    ]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if "bf16" not in result:
        lines.append("no BF16 column: this CPU has no native bf16 (`qfleet isa` shows why)")
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike[str], result: dict[str, Any]) -> dict[str, str]:
    """Write demo.json, report.png and report.html into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "demo.json"), "png": str(out / "report.png"), "html": str(out / "report.html")}
    write_json(paths["json"], result)
    _plot(Path(paths["png"]), result)
    Path(paths["html"]).write_text(_html(result), encoding="utf-8")
    return paths


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    columns = precisions(result)
    labels = [f"{TITLES[p]}\n({computed_in(result[p])})" for p in columns]
    colours = [COLOURS[p] for p in columns]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = [
        ("faces/s per replica", [result[p]["fps"] for p in columns], "{:.0f}"),
        ("LFW accuracy", [result[p]["accuracy"] for p in columns], "{:.4f}"),
        ("replicas for the demand", [result["plan"][p]["replicas"] for p in columns], "{:d}"),
    ]
    for axis, (title, values, fmt) in zip(axes, panels, strict=True):
        bars = axis.bar(labels, values, color=colours)
        axis.set_title(title)
        for bar, value in zip(bars, values, strict=True):
            axis.annotate(
                fmt.format(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
            )
        if title == "LFW accuracy":
            axis.set_ylim(max(0.0, min(values) - 0.05), 1.005)
        else:  # headroom for the value labels
            axis.set_ylim(0, max(values) * 1.15 or 1)
        if title.startswith("replicas"):
            axis.yaxis.get_major_locator().set_params(integer=True)
    int8_fps = result["int8"]["fps"]
    ratios = ", ".join(f"{int8_fps / result[p]['fps']:.2f}x {TITLES[p]}" for p in columns if p != "int8")
    fig.suptitle(f"qfleet demo on {result['isa']}: INT8 is {ratios}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(result: dict[str, Any]) -> str:
    header, *body = summary_rows(result)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = "\n".join(
        f"<tr><th>{html.escape(metric)}</th>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
        + "</tr>"
        for metric, *cells in body
    )
    demand = result["demand"]
    names = " against ".join(TITLES[p] for p in precisions(result))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qfleet demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{text-align:left}}</style></head>
<body><h1>qfleet demo</h1>
<p>ISA tier <b>{html.escape(str(result["isa"]))}</b> ({html.escape(str(result.get("runtime_isa")))});
{result["pairs"]} LFW-protocol pairs;
demand {demand["cameras"]} cameras &times; {demand["camera_fps"]:g} FPS &times;
{demand["faces_per_frame"]:g} faces = {demand["faces_per_second"]:.0f} faces/s at
{demand["utilization"]:.0%} target utilisation, {html.escape(_per_replica(result))}.</p>
<table><tr>{head}</tr>
{rows}
</table>
<p><img src="report.png" alt="FPS, accuracy and replicas, {names}"></p>
</body></html>
"""
