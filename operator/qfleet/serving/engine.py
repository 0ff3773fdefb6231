"""OpenVINO inference for the server: a THROUGHPUT-compiled model fed by a pool of infer requests.

The event loop never waits on inference. Each request's faces are cut into inference batches of
at most ``max_batch`` faces and queued; a batch starts as soon as one of the compiled model's
infer requests is idle: a worker thread of the engine's own pool runs it synchronously
(``InferRequest.infer`` releases the GIL while the plugin works) and the loop gets the outputs
back as the worker's future completes. No Python callback runs on OpenVINO's threads: such a
callback waits for the GIL on a plugin thread, and at shutdown the compiled model's destructor
(holding the GIL) joins that thread -- a deadlock ``qfleet benchmark`` and validation avoid the
same way. Idle requests are counted on the loop, so a batch only starts when one is free; the
rest wait in a FIFO on the loop. The thread hop costs tens of microseconds per inference: nothing
measurable on an iResNet-50 (HTTP delivered 98% of ``qfleet benchmark``'s FPS), up to a fifth of
the throughput of a sub-millisecond model whose serving is bound by HTTP anyway
(``benchmarks/serving.py``).

With ``max_batch`` 1 (the default) every face is its own inference, spread over the streams
exactly like ``benchmark_app`` and ``qfleet benchmark`` measure it (batch 1, one infer request per
stream). With ``max_batch`` > 1 faces of concurrent requests are merged (dynamic batching): a
batch starts when ``max_batch`` faces are waiting, or when the oldest waiting face has waited
``batch_timeout_s``, whichever comes first. A partial batch may then wait in the plugin behind a
running one instead of filling further on the loop; holding it back until a stream was free was
tried: batches filled better (3.96 faces per inference against 3.63, one-face cameras at 0.9x of
the batch-4 FPS) but the streams then waited for the loop, and the refusals rose (79 and 92
against 0 and 6 at 0.8x and 0.9x; open loop as in ``benchmarks/serving.py``'s plan phase, 2 cores).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qfleet.errors import InputError, IsaMismatchError
from qfleet.isa import detect_host_tier
from qfleet.serving.protocol import ModelSignature, TensorSpec
from qfleet.serving.settings import DEFAULT_BATCH_TIMEOUT_S

log = logging.getLogger(__name__)


#: Infer requests kept per request the plugin finds optimal (see InferenceEngine.__init__).
INFER_REQUESTS_PER_OPTIMAL = 2

#: OpenVINO element type names -> protocol datatypes.
_OV_DATATYPES = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
}


@dataclass(frozen=True)
class ServingPlan:
    """How a model is served here: its tier ("any" for FP32) and the precision it computes in."""

    isa: str
    precision: str
    float_precision: str


def check_serving_isa(
    model_xml: str | os.PathLike[str],
    metadata: dict[str, Any],
    *,
    allow_mismatch: bool,
    host_native_bf16: Callable[[], bool] | None = None,
) -> ServingPlan:
    """Refuse a model this host cannot run as it was validated, unless ``allow_mismatch``.

    An INT8 or BF16 model is only as accurate and as fast as measured on the tier it was
    validated on (AVX2 int8 kernels can saturate where VNNI does not; bf16 needs native bf16),
    so it serves on that tier only. An FP32 model computes in f32 anywhere ("any" tier).
    With ``allow_mismatch`` a bf16 model on a host without bf16 is served in f32, with a warning.
    """
    from qfleet.model.runtime import native_bf16, recorded_variant

    precision, float_precision, _ = recorded_variant(metadata, model_xml)
    if precision == "fp32":
        return ServingPlan("any", precision, float_precision)
    model_tier = metadata.get("isa") or (metadata.get("quantization") or {}).get("isa")
    host_tier = detect_host_tier()
    if not model_tier:
        log.warning(
            "%s model %s records no ISA tier; cannot check it matches this host (%s)",
            precision.upper(),
            model_xml,
            host_tier,
        )
        model_tier = "unknown"
    elif model_tier != host_tier:
        _mismatch(
            f"{precision.upper()} model {model_xml} was validated on ISA tier {model_tier} "
            f"but this host is {host_tier or 'below avx2'}",
            hint=f"serve it on a {model_tier} node, or pass --allow-isa-mismatch to serve it anyway",
            allow=allow_mismatch,
        )
    if float_precision == "bf16" and not (host_native_bf16 or native_bf16)():
        _mismatch(
            f"{precision.upper()} model {model_xml} was validated computing in bf16 on {model_tier} "
            f"but this host ({host_tier or 'below avx2'}) has no native bf16",
            hint="serve it on a node with AVX-512 BF16 or AMX, or pass --allow-isa-mismatch to serve it in f32",
            allow=allow_mismatch,
        )
        float_precision = "f32"
        if precision == "bf16":
            precision = "fp32"
    return ServingPlan(str(model_tier), precision, float_precision)


def _mismatch(message: str, *, hint: str, allow: bool) -> None:
    if not allow:
        raise IsaMismatchError(message, hint=hint)
    log.warning(
        "%s; serving anyway (--allow-isa-mismatch): accuracy and speed were not measured here", message
    )


def _datatype(element_type: Any) -> str:
    name = element_type.get_type_name()
    try:
        return _OV_DATATYPES[name]
    except KeyError:
        raise InputError(f"model tensor type {name} cannot be served over the inference protocol") from None


def _static_tail(partial_shape: Any, what: str) -> tuple[int, ...]:
    """The dimensions after the batch, which must be known (a face crop has a fixed size)."""
    dims = list(partial_shape)
    if not dims:
        raise InputError(f"model {what} is a scalar; a face model takes a batch of crops")
    tail: list[int] = []
    for dim in dims[1:]:
        if dim.is_dynamic:
            raise InputError(
                f"model {what} has shape {partial_shape}: only the batch (first) dimension may be dynamic"
            )
        tail.append(dim.get_length())
    return tuple(tail)


@dataclass
class _Job:
    """One request's faces on their way through the queue."""

    faces: npt.NDArray[Any]
    future: asyncio.Future[dict[str, npt.NDArray[Any]]]
    arrived: float
    next_face: int = 0
    remaining: int = 0
    outputs: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


#: (job, first face, end face) of a job's faces inside one inference batch.
_Piece = tuple[_Job, int, int]


class InferenceEngine:
    """A compiled face model that answers ``await engine.infer(faces)`` without blocking the loop."""

    def __init__(
        self,
        model_xml: str | os.PathLike[str],
        *,
        name: str,
        threads: int | None = None,
        max_batch: int = 1,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        device: str = "CPU",
        on_batch: Callable[[int], None] | None = None,
        precision: str = "fp32",
        float_precision: str | None = None,
    ) -> None:
        import openvino as ov

        from qfleet.model.runtime import compile_model, read_model

        if max_batch < 1:
            raise InputError(f"--max-batch must be at least 1, got {max_batch}")
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be at least 1, got {threads}")
        self.max_batch = max_batch
        self.batch_timeout_s = batch_timeout_s
        self._on_batch = on_batch
        model = read_model(Path(model_xml))
        if len(model.inputs) != 1:
            raise InputError(
                f"model {model_xml} has {len(model.inputs)} inputs; a face model takes one (the crops)"
            )
        source_input = model.inputs[0]
        input_tail = _static_tail(source_input.get_partial_shape(), "input")
        self.signature = ModelSignature(
            name=name,
            version="1",
            platform="openvino_ir",
            input=TensorSpec(
                source_input.get_any_name(), _datatype(source_input.get_element_type()), (-1, *input_tail)
            ),
            outputs=tuple(
                TensorSpec(
                    self._output_name(output, index),
                    _datatype(output.get_element_type()),
                    (-1, *_static_tail(output.get_partial_shape(), f"output {index}")),
                )
                for index, output in enumerate(model.outputs)
            ),
        )
        # Batch 1 compiles static (what benchmark_app measures); larger batches need a bounded
        # dynamic batch dimension so that partial batches need no padding.
        batch_dim = ov.Dimension(1) if max_batch == 1 else ov.Dimension(1, max_batch)
        model.reshape({source_input.get_any_name(): ov.PartialShape([batch_dim, *input_tail])})
        started = time.perf_counter()
        self.variant = compile_model(
            model,
            precision=precision,
            float_precision=float_precision,
            threads=threads,
            device=device,
            what=f"model {model_xml}",
        )
        self._compiled = self.variant.compiled
        self.compile_seconds = time.perf_counter() - started
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        # Twice the plugin's optimum: a request waits queued behind each running one, so a stream
        # that finishes starts its next face at once instead of waiting for the event loop (a
        # thread that competes for the same cores) to hand it one.
        self.infer_requests = INFER_REQUESTS_PER_OPTIMAL * int(
            self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        )
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._requests = [self._compiled.create_infer_request() for _ in range(self.infer_requests)]
        self._idle_requests = list(range(self.infer_requests))
        self._workers = ThreadPoolExecutor(self.infer_requests, thread_name_prefix="qfleet-infer")
        self._waiting: deque[_Job] = deque()
        self._waiting_faces = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_names = self.signature.output_names()
        self._warm_up(source_input.get_element_type(), input_tail)

    def _warm_up(self, element_type: Any, input_tail: tuple[int, ...]) -> None:
        """One inference on this thread before any worker runs one.

        The first ``Tensor.data`` access in a process initialises a function-local static inside
        OpenVINO's Python binding, which releases the GIL halfway: two worker threads making that
        first access at once deadlock (one holds the static's guard and waits for the GIL, the
        other holds the GIL and waits for the guard), and the whole server freezes, signals
        included. Seen when the first two requests after start arrived together.
        """
        dtype = element_type.to_dtype()
        self._run(0, np.zeros((1, *input_tail), dtype=dtype))

    @staticmethod
    def _output_name(output: Any, index: int) -> str:
        try:
            return str(output.get_any_name())
        except RuntimeError:  # an output without tensor names
            return f"output{index}"

    def describe(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "infer_requests": self.infer_requests,
            "threads": self.threads,
            "max_batch": self.max_batch,
            "compile_seconds": round(self.compile_seconds, 3),
            **self.variant.describe(),
        }

    async def infer(self, faces: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """The model's outputs for a batch of faces (first dimension), by output name."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an InferenceEngine serves one event loop")
        count = int(faces.shape[0])
        if count == 0:
            raise ValueError("infer() needs at least one face")
        future: asyncio.Future[dict[str, npt.NDArray[Any]]] = loop.create_future()
        self._waiting.append(_Job(faces=faces, future=future, arrived=loop.time(), remaining=count))
        self._waiting_faces += count
        self._dispatch()
        return await future

    # --- scheduling, all on the event loop thread ----------------------------------------------

    def _dispatch(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._idle_requests and self._waiting_faces:
            self._drop_abandoned()
            if not self._waiting:
                return
            if self._waiting_faces < self.max_batch:
                deadline = self._waiting[0].arrived + self.batch_timeout_s
                if loop.time() < deadline:
                    self._arm_timer(deadline)
                    return
            self._start(self._take_batch())

    def _drop_abandoned(self) -> None:
        # A request whose client went away (its future cancelled) needs no more inference.
        while self._waiting and self._waiting[0].future.done():
            job = self._waiting.popleft()
            self._waiting_faces -= job.faces.shape[0] - job.next_face

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is not None:
            return
        assert self._loop is not None

        def fire() -> None:
            self._timer = None
            self._dispatch()

        self._timer = self._loop.call_at(deadline, fire)

    def _take_batch(self) -> list[_Piece]:
        pieces: list[_Piece] = []
        room = self.max_batch
        while room and self._waiting:
            job = self._waiting[0]
            if job.future.done():
                self._drop_abandoned()
                continue
            end = min(job.faces.shape[0], job.next_face + room)
            pieces.append((job, job.next_face, end))
            room -= end - job.next_face
            self._waiting_faces -= end - job.next_face
            job.next_face = end
            if end == job.faces.shape[0]:
                self._waiting.popleft()
        return pieces

    def _start(self, pieces: list[_Piece]) -> None:
        if not pieces:
            return
        assert self._loop is not None
        arrays = [job.faces[first:end] for job, first, end in pieces]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        index = self._idle_requests.pop()
        done = self._loop.run_in_executor(self._workers, self._run, index, batch)
        done.add_done_callback(lambda finished: self._complete(index, pieces, finished))
        if self._on_batch is not None:
            self._on_batch(int(batch.shape[0]))

    def _run(self, index: int, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """A worker thread: one inference; copies the outputs (the request is reused)."""
        request = self._requests[index]
        request.infer({0: batch})
        return [request.get_output_tensor(i).data.copy() for i in range(len(self._output_names))]

    def _complete(
        self, index: int, pieces: list[_Piece], finished: asyncio.Future[list[npt.NDArray[Any]]]
    ) -> None:
        self._idle_requests.append(index)
        outputs: list[npt.NDArray[Any]] | None = None
        error: BaseException | None = None
        if finished.cancelled():
            error = RuntimeError("inference was cancelled")
        elif finished.exception() is not None:
            # An OpenVINO refusal is a server bug: fail these requests, keep serving.
            error = finished.exception()
            log.error("OpenVINO failed a batch: %s", error)
        else:
            outputs = finished.result()
        offset = 0
        for job, first, end in pieces:
            count = end - first
            if job.future.done():
                offset += count
                continue
            if outputs is None:
                job.future.set_exception(error or RuntimeError("inference failed"))
                continue
            for name, array in zip(self._output_names, outputs, strict=True):
                if name not in job.outputs:
                    job.outputs[name] = np.empty((job.faces.shape[0], *array.shape[1:]), dtype=array.dtype)
                job.outputs[name][first:end] = array[offset : offset + count]
            offset += count
            job.remaining -= count
            if job.remaining == 0:
                job.future.set_result(job.outputs)
        self._dispatch()

    def close(self) -> None:
        """Wait for running inferences (call after the server stopped taking requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._workers.shutdown(wait=True)
