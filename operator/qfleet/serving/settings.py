"""Server defaults, in a module light enough for ``qfleet --help`` to import."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: About 100 FP32 faces of 112x112 as binary data, or ~10 as JSON numbers.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_SHUTDOWN_GRACE_S = 30.0
#: A request body must arrive within this many seconds (a slow client cannot hold the server).
DEFAULT_BODY_TIMEOUT_S = 10.0
#: With dynamic batching, the longest a face waits for its batch to fill.
DEFAULT_BATCH_TIMEOUT_S = 0.002
#: The Open Inference Protocol's gRPC service listens here, next to the REST port.
DEFAULT_GRPC_PORT = 8081
