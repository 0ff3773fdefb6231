"""``qfleet operator``: run the QuantizedModel operator (kopf underneath)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

HELP = "run the QuantizedModel operator (quantization Jobs, gated rollout, camera-driven scaling)"
DESCRIPTION = (
    HELP + "\n\n"
    "Watches QuantizedModels (qfleet.dev/v1alpha1) in the given namespaces, or in all of them.\n"
    "Credentials: the in-cluster service account, else the kubeconfig ($KUBECONFIG).\n"
    "Images and defaults come from QFLEET_* environment variables (see qfleet.operator.settings):\n"
    "QFLEET_TOOLKIT_IMAGE, QFLEET_SERVER_IMAGE, QFLEET_BENCHMARK_SECONDS, QFLEET_JOB_*, ..."
)


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help="watch this namespace (repeat for several; glob patterns as kopf accepts them)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (default: off)"
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8081/healthz",
    )


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    from qfleet import extras

    extras.require("operator")
    import kopf

    import qfleet.operator.handlers  # noqa: F401  (registers the handlers)

    # The command line has configured logging already (kopf.configure would add a second handler).
    if not args.debug:
        # kopf logs every handler call at INFO; qfleet's own lines say what matters.
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("qfleet").setLevel(logging.WARNING if args.quiet else logging.INFO)
    memo = kopf.Memo(
        metrics_port=args.metrics_port,
        clusterwide=bool(args.all_namespaces),
        namespaces=list(args.namespaces or ()),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            kopf.operator(
                clusterwide=bool(args.all_namespaces),
                namespaces=args.namespaces or (),
                liveness_endpoint=args.liveness,
                memo=memo,
            )
        )
    return None
