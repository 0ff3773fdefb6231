"""The demo's report: one table for the terminal, and JSON + HTML + PNG files for ``--out``."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from qfleet.outputs import write_json


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, FP32, INT8) rows of the demo table."""
    fp32, int8, plans = result["fp32"], result["int8"], result["plan"]
    return [
        ("LFW accuracy", f"{fp32['accuracy']:.4f}", f"{int8['accuracy']:.4f}"),
        ("accuracy drop", "", f"{result['gate']['drop']:+.4f} ({result['gate']['reason']})"),
        ("faces/s per replica", f"{fp32['fps']:.1f}", f"{int8['fps']:.1f}"),
        ("INT8/FP32 speed-up", "", f"{int8['fps'] / fp32['fps']:.2f}x"),
        ("median latency (ms)", f"{fp32['latency_ms_median']:.2f}", f"{int8['latency_ms_median']:.2f}"),
        ("model size (MB)", f"{result['size_mb']['fp32']:.2f}", f"{result['size_mb']['int8']:.2f}"),
        ("replicas for demand", str(plans["fp32"]["replicas"]), str(plans["int8"]["replicas"])),
    ]


def render_table(result: dict[str, Any]) -> str:
    demand = result["demand"]
    rows = [("", "FP32", "INT8"), *summary_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"qfleet demo on ISA tier {result['isa']}: {result['pairs']} LFW-protocol pairs, demand "
        f"{demand['cameras']} cameras x {demand['camera_fps']:g} FPS x {demand['faces_per_frame']:g} faces "
        f"= {demand['faces_per_second']:.0f} faces/s at {demand['utilization']:.0%} target utilisation",
    ]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
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

    labels = ["FP32", "INT8"]
    colours = ["#7f7f7f", "#1f77b4"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = [
        ("faces/s per replica", [result["fp32"]["fps"], result["int8"]["fps"]], "{:.0f}"),
        ("LFW accuracy", [result["fp32"]["accuracy"], result["int8"]["accuracy"]], "{:.4f}"),
        (
            "replicas for the demand",
            [result["plan"]["fp32"]["replicas"], result["plan"]["int8"]["replicas"]],
            "{:d}",
        ),
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
    fig.suptitle(
        f"qfleet demo on {result['isa']}: INT8 is {result['int8']['fps'] / result['fp32']['fps']:.2f}x FP32"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(result: dict[str, Any]) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(m)}</th><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
        for m, a, b in summary_rows(result)
    )
    demand = result["demand"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qfleet demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{text-align:left}}</style></head>
<body><h1>qfleet demo</h1>
<p>ISA tier <b>{html.escape(str(result["isa"]))}</b>; {result["pairs"]} LFW-protocol pairs;
demand {demand["cameras"]} cameras &times; {demand["camera_fps"]:g} FPS &times;
{demand["faces_per_frame"]:g} faces = {demand["faces_per_second"]:.0f} faces/s.</p>
<table><tr><th></th><th>FP32</th><th>INT8</th></tr>
{rows}
</table>
<p><img src="report.png" alt="FPS, accuracy and replicas, FP32 against INT8"></p>
</body></html>
"""
