"""``qfleet gate``: may the INT8 model roll out? Compares two ``qfleet validate --json`` results."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from qfleet.errors import InputError

HELP = "accuracy gate: pass when the INT8 model lost at most --max-drop accuracy against FP32"
DESCRIPTION = (
    "Reads the JSON results of `qfleet validate --json` for the FP32 and the INT8 model (measured\n"
    "on the same pairs on the same ISA tier) and decides. Exit status 0 when the gate passes, 1\n"
    "when it fails; reasons: Passed, AccuracyDropExceeded, BelowMinimumAccuracy."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fp32", required=True, help="JSON result of `qfleet validate --json` for FP32")
    parser.add_argument("--int8", required=True, help="JSON result of `qfleet validate --json` for INT8")
    parser.add_argument(
        "--max-drop", type=float, required=True, help="largest allowed accuracy drop, e.g. 0.001"
    )
    parser.add_argument("--min-accuracy", type=float, default=None, help="lowest allowed INT8 accuracy")


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A validation result: a JSON file, or captured stdout whose last JSON line is the result."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{target} does not exist", hint="write it with `qfleet validate --json > FILE`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{target} is not readable: {exc}") from None
    candidates = [text, *reversed([line for line in text.splitlines() if line.strip()])]
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            if "accuracy" not in data:
                raise InputError(
                    f"{target} holds no 'accuracy'", hint="is it a `qfleet validate --json` result?"
                )
            return data
    raise InputError(
        f"{target} is not a JSON validation result", hint="write it with `qfleet validate --json`"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qfleet.fleet.gate import gate

    fp32 = read_result(args.fp32)
    int8 = read_result(args.int8)
    try:
        decision = gate(fp32, int8, max_drop=args.max_drop, min_accuracy=args.min_accuracy)
    except ValueError as exc:
        raise InputError(f"cannot gate {args.int8} against {args.fp32}: {exc}") from None
    result = decision.as_dict()
    result["_exit_code"] = 0 if decision.passed else 1
    return result


def render(result: dict[str, Any]) -> str:
    verdict = "PASSED" if result["passed"] else f"FAILED ({result['reason']})"
    return f"gate {verdict}: {result['message']}"
