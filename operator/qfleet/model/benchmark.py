"""Throughput of an IR on this CPU, measured the way OpenVINO's ``benchmark_app`` measures it.

The number feeds replica planning, so it must be the number a serving pod reaches, not a best
case: the model is compiled with the THROUGHPUT hint (as the server compiles it), the plugin's
optimal number of infer requests is kept busy through an ``AsyncInferQueue``, the warm-up is
excluded, and FPS = completed inferences x batch / wall time of the measured period.
``threads`` caps the CPU threads at what a serving pod's CPU limit gives it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qfleet.errors import InputError
from qfleet.isa import detect_host_tier
from qfleet.model.metadata import read_metadata, require_model_xml
from qfleet.model.runtime import CompiledVariant, compile_model, read_model, recorded_variant

if TYPE_CHECKING:
    import openvino as ov

#: Warm-up rounds: each round runs every infer request once, outside the measured period.
DEFAULT_WARMUP_ROUNDS = 1


def static_batch(model: ov.Model, batch: int, *, dynamic: bool = False) -> None:
    """Give the model's input a static batch (OpenVINO runs static shapes faster); with
    ``dynamic`` a batch dimension bounded to 1..``batch``, as ``qfleet serve --max-batch`` compiles it."""
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic:
        raise InputError(
            f"model {model.get_friendly_name()} has an input of unknown rank; cannot benchmark it"
        )
    dims = [batch] + [shape[i] for i in range(1, shape.rank.get_length())]
    if any(dim.is_dynamic for dim in dims[1:]):
        raise InputError(
            f"model input shape {shape} has dynamic dimensions besides the batch",
            hint="convert the model with a fixed --input-shape",
        )
    import openvino as ov

    first = ov.Dimension(1, batch) if dynamic and batch > 1 else ov.Dimension(batch)
    model.reshape({model.inputs[0]: ov.PartialShape([first, *(dim.get_length() for dim in dims[1:])])})


def model_precision(model: ov.Model, model_xml: Path, asked: str | None = None) -> tuple[str, str | None]:
    """(variant, float precision) to compile ``model`` as.

    ``asked`` (fp32, int8 or bf16) wins; else what ``qfleet.json`` records; else the graph
    itself decides (FakeQuantize operations: int8, computed in f32; otherwise fp32).
    """
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    if asked is not None:
        if asked == "int8" and not quantized:
            raise InputError(f"model {model_xml} is not quantized; it cannot run as int8")
        if asked != "int8" and quantized:
            raise InputError(f"model {model_xml} is quantized; it runs as int8, not {asked}")
        return asked, None
    metadata = read_metadata(model_xml)
    if metadata.get("precision") or metadata.get("kind"):
        precision, inference, _ = recorded_variant(metadata, model_xml)
        return precision, inference
    return ("int8" if quantized else "fp32"), None


def compile_static(
    model_xml: str | os.PathLike[str],
    *,
    batch: int,
    threads: int | None = None,
    precision: str | None = None,
    dynamic: bool = False,
) -> CompiledVariant:
    """Read an IR, give it a static batch of ``batch`` (``dynamic``: 1..``batch``, see
    :func:`static_batch`) and compile it with the THROUGHPUT hint, as the variant ``precision``
    (default: what the artifact records, see :func:`model_precision`)."""
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    xml = require_model_xml(model_xml)
    model = read_model(xml)
    variant, float_precision = model_precision(model, xml, precision)
    static_batch(model, batch, dynamic=dynamic)
    return compile_model(
        model, precision=variant, float_precision=float_precision, threads=threads, what=f"model {xml}"
    )


def _check(seconds: float, threads: int | None, batch: int, warmup: int) -> None:
    if not seconds > 0:
        raise InputError(f"--seconds must be positive, got {seconds}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    if warmup < 0:
        raise InputError(f"warm-up rounds must be >= 0, got {warmup}")


def benchmark_model(
    model_xml: str | os.PathLike[str],
    *,
    seconds: float = 10.0,
    threads: int | None = None,
    batch: int = 1,
    warmup: int = DEFAULT_WARMUP_ROUNDS,
    precision: str | None = None,
    progress: bool = True,
    dynamic_batch: bool = False,
) -> dict[str, Any]:
    """Measure throughput and latency of ``model_xml`` on the CPU for about ``seconds``.

    ``batch`` images go into every inference. With ``dynamic_batch`` the model is compiled the
    way ``qfleet serve --max-batch BATCH`` compiles it (a batch dimension bounded to 1..batch)
    and fed full batches: the FPS a saturated server with dynamic batching can reach.

    Returns ``fps`` (images/s), ``latency_ms_median`` (submit to completion of one request),
    ``streams``, ``infer_requests``, ``isa`` (host tier), ``seconds`` (measured wall time),
    ``batch``, ``precision`` (the variant asked: fp32, int8 or bf16; by default what the
    artifact's ``qfleet.json`` records), ``model``, ``threads``, ``inferences`` and
    ``inference_precision`` (what the plugin reports it computes in) and ``runtime_isa`` (the
    kernels' ISA).
    """
    _check(seconds, threads, batch, warmup)
    xml = require_model_xml(model_xml)

    import openvino as ov
    from tqdm import tqdm

    compiled_variant = compile_static(
        xml, batch=batch, threads=threads, precision=precision, dynamic=dynamic_batch
    )
    variant, compiled = compiled_variant.precision, compiled_variant.compiled
    infer_requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    streams = int(compiled.get_property("NUM_STREAMS"))

    queue = ov.AsyncInferQueue(compiled, infer_requests)
    rng = np.random.default_rng(0)
    for index in range(len(queue)):
        for port in compiled.inputs:
            # Raw pixel values, like the crops the server feeds; set once, as benchmark_app does.
            shape = port.get_partial_shape()
            size = (batch, *(shape[i].get_length() for i in range(1, shape.rank.get_length())))
            data = rng.uniform(0, 255, size=size).astype(port.get_element_type().to_dtype())
            queue[index].set_tensor(port, ov.Tensor(data))

    # No Python callback: OpenVINO's own callbacks record each request's start and end time
    # (``InferRequest.latency``) without touching the interpreter, so a plugin thread never waits
    # for the GIL (a Python callback can deadlock against the compiled model's destructor).
    for _ in range(warmup * infer_requests):
        queue.start_async()
    queue.wait_all()

    bar = tqdm(
        total=round(seconds, 1),
        desc=f"benchmark {variant} {xml.parent.name}",
        unit="s",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s",
        disable=not progress,
        leave=False,
    )
    latencies_ms: list[float] = []
    used: set[int] = set()
    completed = 0
    started = time.perf_counter()
    deadline = started + seconds
    last_shown = started
    while (now := time.perf_counter()) < deadline:
        idle = queue.get_idle_request_id()
        if idle in used:  # the request finished a measured inference: keep its latency
            latencies_ms.append(queue[idle].latency)
        used.add(idle)
        queue.start_async()
        completed += 1
        if now - last_shown >= 0.25:
            bar.n = round(min(now - started, seconds), 1)
            bar.refresh()
            last_shown = now
    queue.wait_all()
    elapsed = time.perf_counter() - started
    bar.close()
    latencies_ms += [queue[index].latency for index in used]

    return {
        "fps": completed * batch / elapsed,
        "latency_ms_median": statistics.median(latencies_ms) if latencies_ms else float("nan"),
        "streams": streams,
        "infer_requests": infer_requests,
        "isa": detect_host_tier(),
        "seconds": round(elapsed, 3),
        "batch": batch,
        "dynamic_batch": dynamic_batch,
        "model": str(xml),
        "threads": threads if threads is not None else int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "inferences": completed,
        **compiled_variant.describe(),
    }
