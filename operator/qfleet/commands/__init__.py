"""One module per ``qfleet`` verb: ``HELP``, ``configure(parser)``, ``run(args) -> dict``."""

from __future__ import annotations

import argparse

from qfleet.model.runtime import PRECISIONS


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision``, shared by the verbs that compile a model for measuring it."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="variant to compile: fp32 (computed in f32), int8, bf16 (needs native bf16); "
        "default: what the model's qfleet.json records",
    )
