"""``qfleet serve``: the Open Inference Protocol (KServe v2) REST server for one OpenVINO model."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

HELP = "serve a model over the Open Inference Protocol (KServe v2 REST and gRPC)"
DESCRIPTION = (
    "Serve an OpenVINO IR face model over HTTP with the Open Inference Protocol (KServe v2 REST),\n"
    "JSON tensors and the binary tensor data extension, so KServe/Triton/OVMS clients work.\n"
    "Endpoints: /v2, /v2/health/{live,ready}, /v2/models/NAME[/ready|/infer], /metrics.\n"
    "The protocol's gRPC service (inference.GRPCInferenceService) listens on --grpc-port, sharing\n"
    "the model, the limits, the metrics and the drain with REST.\n"
    "The model computes in the precision its qfleet.json records (fp32 always in f32; int8; bf16).\n"
    "An INT8 or BF16 model only starts on the ISA tier it was validated on, and a bf16 one only\n"
    "where the CPU computes bf16 natively (see --allow-isa-mismatch).\n"
    "Overload (over --max-concurrency requests in flight) is answered 503 with Retry-After.\n"
    "SIGTERM: readiness goes false, in-flight requests are answered, then the process exits 0."
)


def configure(parser: argparse.ArgumentParser) -> None:
    from qfleet.serving import settings as server

    parser.add_argument("--model", required=True, type=Path, help="the model.xml of an OpenVINO IR")
    parser.add_argument(
        "--name", default=None, help="model name in URLs (default: qfleet.json name or the model dir)"
    )
    parser.add_argument(
        "--host",
        default=server.DEFAULT_HOST,
        help=f"address to listen on (default {server.DEFAULT_HOST}; 0.0.0.0 in pods)",
    )
    parser.add_argument(
        "--port", type=int, default=server.DEFAULT_PORT, help=f"port (default {server.DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=server.DEFAULT_GRPC_PORT,
        help=f"gRPC port (default {server.DEFAULT_GRPC_PORT}; 0: any)",
    )
    parser.add_argument("--no-grpc", action="store_true", help="serve REST only (no gRPC port)")
    parser.add_argument(
        "--threads", type=int, default=None, help="OpenVINO inference threads (default: all cores)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="faces per inference; > 1 merges faces of concurrent requests (dynamic batching, default 1)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=server.DEFAULT_BATCH_TIMEOUT_S * 1000,
        help="with --max-batch > 1: longest a face waits for a batch to fill (default %(default)g ms)",
    )
    parser.add_argument(
        "--allow-isa-mismatch",
        action="store_true",
        help="serve an INT8/BF16 model on a host of another ISA tier than it was validated on, "
        "a bf16 one in f32 where bf16 is not native (a warning)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=server.DEFAULT_MAX_BODY_BYTES,
        help="largest request body; bigger ones get 413 (default %(default)d)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=server.DEFAULT_MAX_CONCURRENCY,
        help="inference requests in flight before new ones get 503 (default %(default)d)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=server.DEFAULT_BODY_TIMEOUT_S,
        help="seconds a request body may take to arrive before a 408 (default %(default)g)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=server.DEFAULT_SHUTDOWN_GRACE_S,
        help="seconds to finish in-flight requests after SIGTERM (default %(default)g)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qfleet import extras
    from qfleet.errors import InputError

    extras.require("serve")
    from qfleet.serving.server import ServerConfig, serve

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.grpc_port <= 65535:
        raise InputError(f"--grpc-port must be in 0..65535, got {args.grpc_port}")
    if args.grpc_port and args.grpc_port == args.port:
        raise InputError(f"--grpc-port and --port are both {args.port}", hint="give gRPC a port of its own")
    if args.body_timeout <= 0:
        raise InputError(f"--body-timeout must be positive, got {args.body_timeout}")
    if args.batch_timeout_ms < 0:
        raise InputError(f"--batch-timeout-ms must not be negative, got {args.batch_timeout_ms}")
    config = ServerConfig(
        model_xml=args.model,
        name=args.name,
        host=args.host,
        port=args.port,
        grpc_port=None if args.no_grpc else args.grpc_port,
        threads=args.threads,
        max_batch=args.max_batch,
        batch_timeout_s=args.batch_timeout_ms / 1000,
        allow_isa_mismatch=args.allow_isa_mismatch,
        max_body_bytes=args.max_body_bytes,
        max_concurrency=args.max_concurrency,
        shutdown_grace_s=args.shutdown_grace,
        body_timeout_s=args.body_timeout,
    )
    return asyncio.run(serve(config))
