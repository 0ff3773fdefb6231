#!/usr/bin/env python3
"""Write the Helm chart's README from its values schema: one table row per value (path, type,
default, description), the default as values.yaml sets it.

values.schema.json is the one place a value is described; this keeps charts/qfleet/README.md from
drifting from it. ``--check`` writes nothing and exits 1 when the README is out of date, and
either mode exits 2 when a value of the schema has no description.

    python scripts/chart_readme.py            # regenerate charts/qfleet/README.md
    python scripts/chart_readme.py --check    # CI: fail on drift
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "qfleet"
README = CHART / "README.md"
REGENERATE = "python scripts/chart_readme.py"
#: Defaults longer than this (as JSON) are shown after their row's description.
INLINE_DEFAULT = 60


@dataclass(frozen=True)
class Value:
    """One value of the chart, as the schema describes it."""

    path: str
    type: str
    default: Any
    description: str
    enum: tuple[Any, ...] = ()


class MissingDescriptionError(ValueError):
    """Values of the schema without a description."""


def _type_name(node: Mapping[str, Any]) -> str:
    kind = node.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


_MISSING = object()


def _lookup(values: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(values, Mapping) or key not in values:
            return _MISSING
        values = values[key]
    return values


def walk(schema: Mapping[str, Any], values: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[Value]:
    """Every value below ``schema`` (objects with described keys first, then their keys)."""
    for key, node in schema.get("properties", {}).items():
        here = (*path, key)
        default = _lookup(values, here)
        yield Value(
            path=".".join(here),
            type=_type_name(node),
            default=node.get("default") if default is _MISSING else default,
            description=" ".join(str(node.get("description", "")).split()),
            enum=tuple(node.get("enum", ())),
        )
        yield from walk(node, values, here)


def _cell(text: str) -> str:
    """Markdown table cell text: no pipes, and no angle brackets taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return "`" + text.replace("|", "\\|") + "`"


def _row(value: Value, has_keys: bool) -> str:
    description = _cell(value.description)
    if value.enum:
        description += " One of: " + ", ".join(_code(choice) for choice in value.enum) + "."
    if has_keys:
        default = "its keys below"
    elif len(json.dumps(value.default)) > INLINE_DEFAULT:
        default = "see description"
        description += "<br>Default: " + _code(value.default)
    else:
        default = _code(value.default)
    return f"| `{value.path}` | {_cell(value.type)} | {default} | {description} |"


def render(schema: Mapping[str, Any], values: Mapping[str, Any], chart: Mapping[str, Any]) -> str:
    """The README's text."""
    rows = list(walk(schema, values))
    missing = [value.path for value in rows if not value.description]
    if missing:
        raise MissingDescriptionError(
            "values.schema.json: give these values a description: " + ", ".join(missing)
        )
    parents = {value.path.rpartition(".")[0] for value in rows}
    lines = [
        f"# {chart['name']}",
        "",
        "<!-- Generated from values.schema.json and values.yaml by scripts/chart_readme.py: edit those",
        f"     and run `{REGENERATE}`. -->",
        "",
        " ".join(str(chart.get("description", "")).split()),
        "",
        f"Chart version {chart['version']}, qfleet {chart['appVersion']}, Kubernetes {chart.get('kubeVersion', 'any')}.",
        "",
        "```sh",
        "helm install qfleet charts/qfleet --namespace qfleet-system --create-namespace",
        "helm test qfleet --namespace qfleet-system",
        "```",
        "",
        'How the operator works, its CRD and upgrades: the repository\'s README, "Install on a cluster".',
        "",
        "## Values",
        "",
        "A value set to `null` (`--set podSecurityContext.runAsUser=null`) removes a default key.",
    ]
    for top in schema.get("properties", {}):
        section = [value for value in rows if value.path == top or value.path.startswith(top + ".")]
        head, has_keys = section[0], top in parents
        lines += ["", f"### `{top}`", ""]
        if has_keys:
            lines += [_cell(head.description), ""]
        lines += ["| Value | Type | Default | Description |", "|---|---|---|---|"]
        lines += [_row(value, value.path in parents) for value in (section[1:] if has_keys else section)]
    return "\n".join(lines) + "\n"


def generate(chart_dir: Path = CHART) -> str:
    schema = json.loads((chart_dir / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8")) or {}
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    return render(schema, values, chart)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    args = parser.parse_args(argv)
    try:
        text = generate()
    except MissingDescriptionError as exc:
        print(exc, file=sys.stderr)
        return 2
    current = README.read_text(encoding="utf-8") if README.exists() else ""
    if args.check:
        if current != text:
            print(f"{README.relative_to(REPO)} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        README.write_text(text, encoding="utf-8")
        print(f"wrote {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
