"""The ``qfleet`` command line: one subcommand per verb.

Each verb lives in ``qfleet.commands.<verb>`` and provides ``HELP`` (one line), ``configure(parser)``
and ``run(args) -> dict``; heavy libraries (OpenVINO, NNCF, MXNet) are imported inside ``run`` so
that ``qfleet --help`` stays fast and runs with none of them installed (each verb names the extra it
needs when a library is missing, see :mod:`qfleet.extras`). This module owns what every verb shares: ``--json`` (the result
as one JSON object on the last stdout line), ``--debug`` (tracebacks), logging, and turning a
:class:`~qfleet.errors.QfleetError` into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from qfleet import __version__, extras, logs
from qfleet.errors import QfleetError

#: Verbs in the order ``--help`` lists them.
VERBS: tuple[str, ...] = (
    "demo",
    "isa",
    "convert",
    "quantize",
    "validate",
    "gate",
    "benchmark",
    "plan",
    "pipeline",
    "fetch",
    "serve",
    "loadtest",
    "operator",
)

log = logging.getLogger("qfleet")

#: Libraries whose versions ``--version`` shows beside qfleet's when they are installed: they
#: decide what a quantized model computes.
VERSIONED_LIBRARIES: tuple[str, ...] = ("openvino", "nncf")


def version_text() -> str:
    """``qfleet X`` plus the installed OpenVINO and NNCF, read from metadata (nothing is imported)."""
    found = []
    for library in VERSIONED_LIBRARIES:
        try:
            found.append(f"{library} {importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"qfleet {__version__}" + (f" ({', '.join(found)})" if found else "")


class _VersionAction(argparse.Action):
    """``--version``, with the library versions looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        print(version_text())
        parser.exit()


def _load_verbs() -> dict[str, ModuleType]:
    modules: dict[str, ModuleType] = {}
    for verb in VERBS:
        name = f"qfleet.commands.{verb}"
        try:
            modules[verb] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
    return modules


def build_parser(modules: dict[str, ModuleType] | None = None) -> argparse.ArgumentParser:
    modules = _load_verbs() if modules is None else modules
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars or info logs (bars show only on a terminal)",
    )
    common.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=os.environ.get("QFLEET_LOG_FORMAT", "text"),
        help="text for people, json for log collectors: one object per line "
        "(default: $QFLEET_LOG_FORMAT or text)",
    )

    parser = argparse.ArgumentParser(
        prog="qfleet",
        description="Quantize a face-recognition model per CPU ISA tier, gate it on LFW accuracy, "
        "benchmark it, and size the inference fleet to the camera load.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show qfleet's version (and OpenVINO's and NNCF's) and exit"
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb, module in modules.items():
        sub = subparsers.add_parser(
            verb,
            parents=[common],
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def render_human(result: dict[str, Any], indent: str = "") -> str:
    """A plain ``key: value`` rendering of a result for people."""
    lines: list[str] = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(render_human(value, indent + "  "))
        elif isinstance(value, float):
            lines.append(f"{indent}{key}: {value:.6g}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(line for line in lines if line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logs.configure_logging(level=level, log_format=args.log_format)
    args.progress = logs.progress_wanted(quiet=args.quiet)
    if not args.progress:
        logs.disable_progress_bars()
    module = args._module
    try:
        with extras.missing_extra_as_error(args.verb):
            result = module.run(args)
    except QfleetError as exc:
        if args.debug:
            log.exception("%s failed", args.verb)
        if args.log_format == "json":
            log.error("qfleet %s: error: %s", args.verb, exc)
        else:
            print(f"qfleet {args.verb}: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": {"stage": args.verb, "message": str(exc)}}))
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"qfleet {args.verb}: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    exit_code = int(result.pop("_exit_code", 0)) if isinstance(result, dict) else 0
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        render = getattr(module, "render", render_human)
        print(render(result))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
