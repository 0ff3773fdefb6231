"""Face embeddings for a whole pair set, as fast as the CPU allows; and ``validate_model``.

Validation must not be the slow part of a quantization Job, so the images go through the model
the way ``qfleet benchmark`` drives it: compiled with the THROUGHPUT hint, static input shapes,
the infer requests of an ``AsyncInferQueue`` kept busy. Images are decoded by a thread pool in
chunks of a few hundred; a chunk's requests are then fed from the decoded pixels. Decoding while
feeding requests was slower (measured on small models: about 0.75 of benchmark's FPS against
0.9 and more): the decoders hold the GIL (Pillow parses JPEG headers in Python) just when the
feeding thread needs it to start the next request, and streams sit idle. Decoding time is
measured apart: ``inferences_per_second`` is the inference throughput, comparable with
benchmark's FPS; decoding costs the same for every model and is reported as ``decode_seconds``.

What one request carries: the model inputs form a stream ``image 0, mirror 0, image 1, mirror 1,
...`` (without the flip just the images) cut into batches of ``batch`` rows; the last batch is
padded with zeros. An image's embedding is ``f(x) + f(mirror(x))``, L2-normalised afterwards
(insightface's test-time augmentation).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qfleet.errors import InputError
from qfleet.lfw.dataset import PairSet, decode_image, pairset_sha256
from qfleet.lfw.decoded import DecodedImages
from qfleet.lfw.protocol import DEFAULT_FAR_TARGET, DEFAULT_FOLDS, evaluate_interleaved, normalize
from qfleet.model.tensors import flip_horizontal, images_to_batch

if TYPE_CHECKING:
    import openvino as ov


#: Model inputs per infer request. With the flip, 2 = one image and its mirror per request: half
#: the Python work per inference of batch 1, while larger batches were slower for small models
#: whose activations then leave the CPU caches (benchmarks/validation_speed.py measures it).
DEFAULT_BATCH = 2
#: Decoder threads when ``threads`` is not given: decoding is far cheaper than inference.
MAX_DECODE_THREADS = 4
#: Infer requests per request the plugin calls optimal (one per stream on the CPU). Unlike
#: benchmark's loop, ours does Python work between a request finishing and the next starting
#: (collect results, build inputs); a second request queued per stream keeps it busy meanwhile.
REQUESTS_PER_OPTIMAL = 2
#: Model inputs decoded in one go (256 images with the flip: 38 MB of float32 pixels at 112x112).
CHUNK_INPUTS = 512
#: Images one decoder task decodes.
DECODE_TASK_IMAGES = 16

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EmbeddingRun:
    """Embeddings of every image of a pair set and what it took to compute them."""

    #: (2 x pairs, D) float64, L2-normalised; rows 2i and 2i + 1 are pair i.
    embeddings: FloatArray
    #: Model inputs run (images, plus their mirrors when ``flip``), padding excluded.
    inferences: int
    #: Wall time from the first decode to the last result (compilation excluded).
    seconds: float
    #: Part of ``seconds`` spent decoding images (no inference runs meanwhile).
    decode_seconds: float
    batch: int
    infer_requests: int
    decode_threads: int
    flip: bool
    #: The variant asked (fp32, int8, bf16; None for a model compiled elsewhere), what the plugin
    #: reports it computed in, and its kernels' ISA.
    precision: str | None = None
    inference_precision: str | None = None
    runtime_isa: str | None = None

    @property
    def inference_seconds(self) -> float:
        return self.seconds - self.decode_seconds

    @property
    def inferences_per_second(self) -> float:
        """Model inputs per second of inference: what ``qfleet benchmark`` calls FPS."""
        return self.inferences / self.inference_seconds if self.inference_seconds > 0 else float("nan")

    @property
    def overall_inferences_per_second(self) -> float:
        """Model inputs per second, decoding included."""
        return self.inferences / self.seconds if self.seconds > 0 else float("nan")


def _input_geometry(compiled: ov.CompiledModel, batch: int) -> tuple[int, int, int]:
    """(rows per request, height, width) of the compiled model's NCHW image input."""
    if len(compiled.inputs) != 1:
        raise InputError(f"a face model has one image input; this one has {len(compiled.inputs)}")
    shape = compiled.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise InputError(f"the model input {shape} is not an NCHW image batch")
    channels, height, width = shape[1], shape[2], shape[3]
    if channels.is_dynamic or channels.get_length() != 3 or height.is_dynamic or width.is_dynamic:
        raise InputError(
            f"the model input {shape} is not [N, 3, H, W] with a fixed H and W",
            hint="convert the model with a fixed --input-shape",
        )
    rows = batch if shape[0].is_dynamic else shape[0].get_length()
    return rows, height.get_length(), width.get_length()


def _check_decoded(decoded: DecodedImages | None, pairset: PairSet, size: tuple[int, int]) -> None:
    """Refuse shared pixels that are not this pair set's images at the model's input size."""
    if decoded is not None and (len(decoded) != len(pairset.images) or decoded.size != size):
        raise InputError(
            f"the decoded images ({len(decoded)} of {decoded.size}) are not {pairset.source}'s "
            f"{len(pairset.images)} at the model's {size}"
        )


def image_size(model_xml: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an IR's NCHW image input: the size to decode a pair set's images to."""
    from qfleet.model.runtime import read_model

    shape = read_model(Path(model_xml)).inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[2].is_dynamic or shape[3].is_dynamic:
        raise InputError(
            f"the input {shape} of {model_xml} is not [N, 3, H, W] with a fixed H and W",
            hint="convert the model with a fixed --input-shape",
        )
    return shape[2].get_length(), shape[3].get_length()


def _optimal_requests(compiled: ov.CompiledModel) -> int:
    try:
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except RuntimeError:
        return max(1, os.cpu_count() or 1)


def run_embedding(
    model: str | os.PathLike[str] | ov.CompiledModel,
    pairset: PairSet,
    *,
    flip: bool = True,
    threads: int | None = None,
    progress: bool = True,
    batch: int = DEFAULT_BATCH,
    infer_requests: int | None = None,
    precision: str | None = None,
    decoded: DecodedImages | None = None,
) -> EmbeddingRun:
    """Embed every image of ``pairset``, and report the timing.

    With ``decoded`` (the pair set's images decoded once, :func:`~qfleet.lfw.decoded.decode_pairset`)
    nothing is decoded here: batches are cut from the shared pixels, and ``decode_seconds`` is 0.

    ``embeddings`` holds L2-normalised ``f(x) + f(mirror(x))`` (or ``f(x)`` without ``flip``) per
    image: (2 x pairs, D). ``model`` is an IR's model.xml (compiled here with the THROUGHPUT hint,
    ``threads`` inference threads when given) or an already compiled model (used as it is). A
    corrupt image raises a :class:`~qfleet.errors.DatasetError` naming its pair.
    """
    import openvino as ov
    from tqdm import tqdm

    from qfleet.model.benchmark import compile_static
    from qfleet.model.runtime import runtime_isa

    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if isinstance(model, ov.CompiledModel):
        compiled = model
        name = compiled.get_runtime_model().get_friendly_name()
        how = {
            "precision": precision,
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "runtime_isa": runtime_isa(compiled),
        }
    else:
        variant = compile_static(model, batch=batch, threads=threads, precision=precision)
        compiled, how = variant.compiled, variant.describe()
        name = f"{variant.precision} {Path(model).parent.name or Path(model).stem}"
    rows, height, width = _input_geometry(compiled, batch)
    requests = infer_requests or REQUESTS_PER_OPTIMAL * _optimal_requests(compiled)
    decode_threads = max(1, min(threads or os.cpu_count() or 1, MAX_DECODE_THREADS))

    images = len(pairset.images)
    variants = 2 if flip else 1
    total = images * variants  # model inputs, in stream order: image-major, mirror second
    batches = (total + rows - 1) // rows
    port = compiled.inputs[0]
    input_dtype = port.get_element_type().to_dtype()

    def decode_into(chunk: npt.NDArray[np.float32], first_image: int, start: int, stop: int) -> None:
        """Decode images ``start``..``stop - 1`` into their rows of ``chunk`` (NCHW float32)."""
        pixels = [
            decode_image(pairset.images[i], (height, width), what=pairset.image_label(i))
            for i in range(start, stop)
        ]
        chunk[start - first_image : stop - first_image] = images_to_batch(pixels)

    _check_decoded(decoded, pairset, (height, width))

    def decode_chunk(pool: ThreadPoolExecutor, first_image: int, last_image: int) -> npt.NDArray[Any]:
        if decoded is not None:  # a view of the shared uint8 pixels: converted per batch below
            return decoded.pixels[first_image : last_image + 1]
        # Tasks of several images: one future per image costs more GIL time than it saves.
        chunk = np.empty((last_image - first_image + 1, 3, height, width), dtype=np.float32)
        bounds = range(first_image, last_image + 1, DECODE_TASK_IMAGES)
        tasks = [
            pool.submit(decode_into, chunk, first_image, b, min(b + DECODE_TASK_IMAGES, last_image + 1))
            for b in bounds
        ]
        for task in tasks:  # in order, so the first corrupt image is the one reported
            task.result()
        return chunk

    def batch_inputs(index: int, chunk: npt.NDArray[Any], first_image: int) -> npt.NDArray[Any]:
        """The model inputs of request batch ``index``, zero-padded to ``rows``."""
        first, stop = index * rows, min((index + 1) * rows, total)
        positions = np.arange(first, stop)
        pixels = chunk[positions // variants - first_image].astype(np.float32, copy=False)
        mirrored = positions % variants == 1
        if mirrored.any():
            pixels[mirrored] = flip_horizontal(pixels[mirrored])
        inputs = np.zeros((rows, 3, height, width), dtype=input_dtype)
        inputs[: stop - first] = pixels
        return inputs

    collected: dict[str, npt.NDArray[np.float32]] = {}  # "all": (variants, images, D), made on first result
    bar = tqdm(
        total=total,
        desc=f"embed {name}",
        unit="img",
        file=sys.stderr,
        disable=not progress,
        leave=False,
        mininterval=0.5,
    )

    def collect(request: ov.InferRequest, index: int) -> None:
        """Copy the results of batch ``index`` out of a finished request."""
        first, stop = index * rows, min((index + 1) * rows, total)
        result = request.get_output_tensor(0).data.reshape(rows, -1)
        if "all" not in collected:
            collected["all"] = np.zeros((variants, images, result.shape[-1]), dtype=np.float32)
        positions = np.arange(first, stop)
        collected["all"][positions % variants, positions // variants] = result[: stop - first]
        bar.update(stop - first)

    # No Python callback on the queue: pyopenvino's wait_all() can return before the last callback
    # ran, and destroying the queue while that callback waits for the GIL deadlocks. Results are
    # collected here instead, from each request when it is idle again and after wait_all().
    queue = ov.AsyncInferQueue(compiled, requests)
    in_flight: dict[int, int] = {}  # request id -> batch index whose results it holds
    started = time.perf_counter()
    decode_seconds = 0.0
    batches_per_chunk = max(1, CHUNK_INPUTS // rows)
    try:
        with ThreadPoolExecutor(decode_threads, thread_name_prefix="qfleet-decode") as pool:
            try:
                for chunk in range(0, batches, batches_per_chunk):
                    chunk_end = min(chunk + batches_per_chunk, batches)
                    first_image = chunk * rows // variants
                    last_image = (min(chunk_end * rows, total) - 1) // variants
                    # The previous chunk's requests finish first, so decoding and inference time
                    # are measured apart (inference throughput is what benchmark compares with).
                    queue.wait_all()
                    decode_started = time.perf_counter()
                    chunk_pixels = decode_chunk(pool, first_image, last_image)
                    decode_seconds += time.perf_counter() - decode_started
                    for index in range(chunk, chunk_end):
                        inputs = batch_inputs(index, chunk_pixels, first_image)
                        request_id = queue.get_idle_request_id()  # waits with the GIL released
                        if request_id in in_flight:
                            collect(queue[request_id], in_flight.pop(request_id))
                        # start_async takes that same idle request: only this thread starts requests.
                        queue.start_async({0: inputs}, userdata=index)
                        if queue.userdata[request_id] != index:
                            raise RuntimeError("AsyncInferQueue started another request than the idle one")
                        in_flight[request_id] = index
            finally:
                queue.wait_all()
        for request_id, index in sorted(in_flight.items(), key=lambda item: item[1]):
            collect(queue[request_id], index)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    result = collected.get("all")
    if result is None:
        raise InputError(f"{pairset.source} holds no images")
    summed = result.astype(np.float64).sum(axis=0)
    return EmbeddingRun(
        embeddings=normalize(summed),
        inferences=total,
        seconds=seconds,
        decode_seconds=decode_seconds,
        batch=rows,
        infer_requests=requests,
        decode_threads=decode_threads,
        flip=flip,
        **how,
    )


def validate_model(
    model_xml: str | os.PathLike[str] | ov.CompiledModel,
    pairset: PairSet,
    *,
    flip: bool = True,
    threads: int | None = None,
    progress: bool = True,
    batch: int = DEFAULT_BATCH,
    folds: int = DEFAULT_FOLDS,
    far_target: float = DEFAULT_FAR_TARGET,
    on_embedded: Callable[[EmbeddingRun], None] | None = None,
    precision: str | None = None,
    decoded: DecodedImages | None = None,
) -> dict[str, Any]:
    """Embed ``pairset`` with the model and run the LFW protocol; the result ``qfleet validate`` prints.

    Keys: ``accuracy``, ``accuracy_std``, ``threshold``, ``val_at_far``, ``val_std``, ``far``,
    ``far_target``, ``pairs``, ``folds``, ``fold_accuracies``; ``seconds`` (everything,
    compilation included), ``embed_seconds`` = ``decode_seconds`` + ``inference_seconds``,
    ``images`` (decoded), ``inferences`` (model inputs, mirrors included), ``images_per_second``
    (inferences per second of inference: comparable with ``qfleet benchmark``'s ``fps``; what it
    counts is spelled out in ``images_per_second_counts``), ``images_per_second_overall``
    (decoding included); ``flip``, ``batch``, ``infer_requests``, ``threads``, ``model``,
    ``precision`` (the variant asked: fp32, int8, bf16; by default what the artifact records),
    ``inference_precision`` and ``runtime_isa`` (what the plugin reports it ran),
    ``dataset``, ``dataset_sha256``, ``isa``.
    """
    from qfleet.isa import detect_host_tier

    started = time.perf_counter()
    if pairset.pairs < folds:
        raise InputError(
            f"{pairset.source} has {pairset.pairs} pairs; the protocol needs at least {folds} (one per fold)"
        )
    run = run_embedding(
        model_xml,
        pairset,
        flip=flip,
        threads=threads,
        progress=progress,
        batch=batch,
        precision=precision,
        decoded=decoded,
    )
    if on_embedded is not None:
        on_embedded(run)
    verification = evaluate_interleaved(run.embeddings, pairset.issame, folds=folds, far_target=far_target)
    seconds = time.perf_counter() - started
    model_name = str(model_xml) if isinstance(model_xml, (str, os.PathLike)) else "<compiled model>"
    return {
        "accuracy": verification.accuracy,
        "accuracy_std": verification.accuracy_std,
        "threshold": verification.threshold,
        "val_at_far": verification.val_at_far,
        "val_std": verification.val_std,
        "far": verification.far,
        "far_target": verification.far_target,
        "pairs": verification.pairs,
        "folds": verification.folds,
        "fold_accuracies": list(verification.fold_accuracies),
        "seconds": round(seconds, 3),
        "embed_seconds": round(run.seconds, 3),
        "decode_seconds": round(run.decode_seconds, 3),
        "inference_seconds": round(run.inference_seconds, 3),
        "images": len(pairset.images),
        "inferences": run.inferences,
        "images_per_second": run.inferences_per_second,
        "images_per_second_counts": (
            f"model inputs{', mirrored copies included,' if flip else ''} per second of inference "
            "(decode_seconds excluded)"
        ),
        "images_per_second_overall": run.overall_inferences_per_second,
        "flip": flip,
        "batch": run.batch,
        "infer_requests": run.infer_requests,
        "threads": threads,
        "model": model_name,
        "precision": run.precision,
        "inference_precision": run.inference_precision,
        "runtime_isa": run.runtime_isa,
        "dataset": pairset.source,
        "dataset_sha256": pairset_sha256(pairset),
        "isa": detect_host_tier(),
    }
