"""Accuracy-controlled quantization: the fewest operations back in float that keep LFW accuracy.

When plain INT8 misses ``max_drop``, some quantized operations go back to floating point. Which
and how many, in minutes rather than hours:

1. **Quantize once** with NNCF, weights left as ``Constant -> FakeQuantize``; every candidate is
   that model with some quantizers bypassed (:mod:`qfleet.model.quantizers`), built in memory.
2. **Rank once, by a smooth signal**: how much closer to FP32 the embeddings of calibration faces
   get (mean ``1 - cosine``) when one operation alone goes back to float. No LFW protocol per
   candidate: the protocol's accuracy moves in steps of one pair and up and down, the embedding
   error does not. With many quantized operations, a single pass that measures each activation
   quantizer's own noise (noise-to-signal ratio) picks the ones worth that test.
3. **Search** (:mod:`qfleet.model.accuracy_search`): revert the top 1, 2, 4, ... until the drop
   holds on a subset of the pairs, bisect to the fewest, confirm that one on every pair.
4. Every validation is the LFW protocol exactly as the gate runs it (``f(x) + f(mirror(x))``,
   10 folds), batched on an ``AsyncInferQueue`` over images decoded once, and each candidate is
   computed in the precision it will be served in (the ``int8`` variant: float layers in f32).

The budget (validations, seconds) bounds the search; when it runs out, or when even every ranked
operation in float misses ``max_drop``, the best candidate measured is returned and the report
says so (``outcome``), with every trial.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qfleet import defaults
from qfleet.errors import DatasetError, InputError
from qfleet.fleet.gate import PRECISION_DIGITS
from qfleet.lfw.dataset import PairSet, load_lfw_bin, pairset_sha256
from qfleet.lfw.decoded import DecodedImages, decode_pairset
from qfleet.lfw.protocol import DEFAULT_FOLDS, evaluate_interleaved
from qfleet.model.accuracy_search import NOT_NEEDED, SearchResult, search_reverts
from qfleet.model.quantizers import (
    FAKE_QUANTIZE,
    QuantizedOp,
    activation_quantized_ops,
    quantized_ops,
    revert_ops,
)

if TYPE_CHECKING:
    import nncf
    import openvino as ov

__all__ = ["ControlOptions", "activation_quantized_ops", "quantize_with_lfw_control"]

log = logging.getLogger(__name__)

#: Calibration faces whose embeddings rank the operations (one batch per candidate).
RANK_IMAGES = 32
#: Operations ranked by their embedding error; beyond this many, the quantizers' own noise picks
#: which (one inference pass for all of them, against one compile per ranked operation).
RANK_CANDIDATES = 24
#: Pairs a candidate is validated on before the one chosen is confirmed on every pair.
SUBSET_PAIRS = 1200


@dataclass(frozen=True)
class ControlOptions:
    """How accuracy control validates, its budget, and what the caller already has."""

    max_iterations: int = defaults.ACCURACY_CONTROL_MAX_ITERATIONS
    #: Seconds for the whole control (ranking included); None: no limit.
    timeout_s: float | None = defaults.ACCURACY_CONTROL_TIMEOUT_S
    subset_pairs: int = SUBSET_PAIRS
    rank_candidates: int = RANK_CANDIDATES
    flip: bool = True
    threads: int | None = None
    #: The pair set (read from ``lfw`` when None), its images decoded at the model's input size,
    #: and the FP32 model's embeddings of them: the pipeline has all three already.
    pairset: PairSet | None = None
    decoded: DecodedImages | None = None
    fp32_embeddings: npt.NDArray[np.float64] | None = None

    def check(self) -> None:
        if self.max_iterations < 1:
            raise InputError(
                f"--accuracy-control-max-iterations must be at least 1, got {self.max_iterations}"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InputError(f"--accuracy-control-timeout must be positive, got {self.timeout_s}")
        if self.subset_pairs < DEFAULT_FOLDS or self.rank_candidates < 1:
            raise InputError("accuracy control needs a subset of at least 10 pairs and one ranked operation")


class _Validator:
    """LFW-protocol drop of a model against FP32, on every pair or on the fixed subset."""

    def __init__(
        self, pairset: PairSet, decoded: DecodedImages, fp32: npt.NDArray[np.float64], options: ControlOptions
    ) -> None:
        self.options = options
        self.sets: dict[bool, tuple[PairSet, DecodedImages, npt.NDArray[np.int64]]] = {
            True: (pairset, decoded, np.arange(pairset.pairs))
        }
        if pairset.pairs > options.subset_pairs:
            # Fixed and spread over the whole set (LFW's pairs come fold by fold).
            rng = np.random.default_rng(0)
            chosen = np.sort(rng.choice(pairset.pairs, options.subset_pairs, replace=False))
            rows = np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1)
            subset = PairSet(
                images=[pairset.images[i] for i in rows],
                issame=pairset.issame[chosen],
                source=f"{pairset.source} ({options.subset_pairs} of {pairset.pairs} pairs)",
            )
            sub_decoded = DecodedImages(pixels=decoded.pixels[rows], seconds=0.0, threads=decoded.threads)
            self.sets[False] = (subset, sub_decoded, chosen)
        self.fp32_embeddings = fp32
        self.fp32_accuracy = {key: self._accuracy(fp32, key) for key in self.sets}

    @property
    def subset_is_all(self) -> bool:
        return False not in self.sets

    def _accuracy(self, embeddings: npt.NDArray[np.float64], all_pairs: bool) -> float:
        pairs, _, chosen = self.sets[all_pairs]
        rows = np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1)
        selected = embeddings if len(embeddings) == 2 * pairs.pairs else embeddings[rows]
        return float(evaluate_interleaved(selected, pairs.issame, folds=DEFAULT_FOLDS).accuracy)

    def accuracy(self, model: ov.Model, all_pairs: bool) -> float:
        pairs, decoded, _ = self.sets[all_pairs or self.subset_is_all]
        embeddings = embed_pairs(model, "int8", pairs, decoded, self.options)
        return self._accuracy(embeddings, all_pairs or self.subset_is_all)

    def drop(self, model: ov.Model, all_pairs: bool) -> float:
        key = all_pairs or self.subset_is_all
        # Rounded as the gate rounds, so "within max_drop" means here what it means there.
        return round(self.fp32_accuracy[key] - self.accuracy(model, key), PRECISION_DIGITS) + 0.0


def embed_pairs(
    model: ov.Model, precision: str, pairs: PairSet, decoded: DecodedImages, options: ControlOptions
) -> npt.NDArray[np.float64]:
    """Embeddings of every image of ``pairs`` as validation computes them (batched, asynchronous)."""
    from qfleet.model.benchmark import static_batch
    from qfleet.model.embed import DEFAULT_BATCH, run_embedding
    from qfleet.model.runtime import compile_model

    copy = model.clone()
    static_batch(copy, DEFAULT_BATCH)
    variant = compile_model(copy, precision=precision, threads=options.threads, what=f"{precision} candidate")
    run = run_embedding(
        variant.compiled, pairs, flip=options.flip, progress=False, precision=precision, decoded=decoded
    )
    return run.embeddings


def _calibration_outputs(
    model: ov.Model, images: npt.NDArray[np.float32], precision: str, threads: int | None
) -> list[npt.NDArray[np.float32]]:
    """Every output of ``model`` for one batch of calibration images (one synchronous request)."""
    from qfleet.model.benchmark import static_batch
    from qfleet.model.runtime import LATENCY, compile_model

    copy = model.clone()
    static_batch(copy, len(images))
    # One request over the whole batch: the latency hint gives it every core.
    variant = compile_model(
        copy, precision=precision, hint=LATENCY, threads=threads, what=f"{precision} ranking"
    )
    request = variant.compiled.create_infer_request()
    request.infer({0: images})
    return [np.array(request.get_output_tensor(i).data) for i in range(len(copy.outputs))]


def _embedding_error(reference: npt.NDArray[np.float32], embeddings: npt.NDArray[np.float32]) -> float:
    """Mean ``1 - cosine`` between rows: how far from FP32 a model's embeddings are."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    cosine = np.einsum("ij,ij->i", a, b) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
    return float(np.mean(1.0 - cosine))


def _quantizer_noise(
    quantized: ov.Model, images: npt.NDArray[np.float32], threads: int | None
) -> dict[str, float]:
    """Noise-to-signal ratio of every activation quantizer on ``images``: one inference pass."""
    probe = quantized.clone()
    names: list[str] = []
    for op in probe.get_ordered_ops():
        if op.get_type_name() == FAKE_QUANTIZE and op.input_value(0).get_node().get_type_name() != "Constant":
            probe.add_outputs([op.output(0), op.input_value(0)])
            names.append(op.get_friendly_name())
    outputs = _calibration_outputs(probe, images, "int8", threads)[1:]
    noise: dict[str, float] = {}
    for index, name in enumerate(names):
        quantized_values, values = outputs[2 * index], outputs[2 * index + 1]
        signal = float(np.sum(np.square(values, dtype=np.float64)))
        noise[name] = float(np.sum(np.square(quantized_values - values, dtype=np.float64))) / max(
            signal, 1e-30
        )
    return noise


def rank_ops(
    fp32_model: ov.Model,
    quantized: ov.Model,
    images: npt.NDArray[np.float32],
    *,
    candidates: int = RANK_CANDIDATES,
    threads: int | None = None,
) -> tuple[list[QuantizedOp], dict[str, Any]]:
    """The quantized operations, most harmful first, and how they were ranked."""
    started = time.perf_counter()
    ops = quantized_ops(quantized)
    reference = _calibration_outputs(fp32_model, images, "fp32", threads)[0]
    baseline = _embedding_error(reference, _calibration_outputs(quantized, images, "int8", threads)[0])
    prefiltered = len(ops) > candidates
    if prefiltered:
        noise = _quantizer_noise(quantized, images, threads)
        ops = sorted(ops, key=lambda op: -max(noise.get(fq, 0.0) for fq in op.quantizers))[:candidates]
    gains: dict[str, float] = {}
    for op in ops:
        candidate = revert_ops(quantized, [op.name])
        error = _embedding_error(reference, _calibration_outputs(candidate, images, "int8", threads)[0])
        gains[op.name] = baseline - error
    ranked = sorted(ops, key=lambda op: -gains[op.name])
    info = {
        "signal": "embedding 1-cosine vs FP32 on calibration faces, one operation in float at a time",
        "images": len(images),
        "quantized_ops": len(quantized_ops(quantized)),
        "ranked_ops": len(ranked),
        "prefiltered_by_quantizer_noise": prefiltered,
        "embedding_error_int8": round(baseline, 6),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ranked, info


def _rank_images(calibration: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    batch = np.concatenate([np.asarray(tensor, dtype=np.float32) for tensor in calibration[:RANK_IMAGES]])
    if batch.ndim != 4:
        raise InputError(f"calibration tensors must be NCHW images, got shape {batch.shape}")
    return batch


def quantize_with_lfw_control(
    model: ov.Model,
    calibration: list[npt.NDArray[np.float32]],
    *,
    lfw: str | os.PathLike[str],
    max_drop: float,
    preset: nncf.QuantizationPreset,
    subset_size: int,
    input_hw: tuple[int, int] = (112, 112),
    options: ControlOptions | None = None,
) -> tuple[ov.Model, list[str], dict[str, Any]]:
    """Quantize with ``max_drop`` (absolute) of LFW accuracy; returns (model, reverted ops, report)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from openvino._offline_transformations import compress_quantize_weights_transformation

    options = options or ControlOptions()
    options.check()
    started = time.perf_counter()
    pairset = options.pairset or load_lfw_bin(lfw)
    if pairset.pairs < DEFAULT_FOLDS:
        raise DatasetError(
            f"{lfw} has {pairset.pairs} pairs; accuracy control needs at least {DEFAULT_FOLDS} (one per fold)"
        )
    # Weights stay Constant -> FakeQuantize, so bypassing a quantizer is all a candidate needs.
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration),
        preset=preset,
        subset_size=subset_size,
        advanced_parameters=AdvancedQuantizationParameters(backend_params={"compress_weights": False}),
    )
    quantize_seconds = time.perf_counter() - started
    decoded = options.decoded or decode_pairset(pairset, input_hw, threads=options.threads)
    try:
        fp32 = options.fp32_embeddings
        if fp32 is None:
            fp32 = embed_pairs(model, "fp32", pairset, decoded, options)
        validator = _Validator(pairset, decoded, fp32, options)
        plain_drop = validator.drop(quantized, True)
        log.info("accuracy control: plain INT8 drop %.4f (max %.4f)", plain_drop, max_drop)
        ranked, ranking, result = _search(
            model,
            quantized,
            calibration,
            validator,
            plain_drop,
            max_drop=max_drop,
            options=options,
            started=started,
        )
    finally:
        if options.decoded is None:
            decoded.close()
    reverted_ops = ranked[: result.reverted]
    final = revert_ops(quantized, [op.name for op in reverted_ops])
    compress_quantize_weights_transformation(final)
    report = _report(
        lfw, pairset, max_drop, options, validator, plain_drop, result, quantized, reverted_ops, ranking
    )
    report["quantize_seconds"] = round(quantize_seconds, 3)
    report["seconds"] = round(time.perf_counter() - started, 3)
    if reverted_ops:
        log.info(
            "accuracy control (%s): %d operation(s) in float: %s",
            result.outcome,
            len(reverted_ops),
            ", ".join(op.name for op in reverted_ops),
        )
    if result.outcome not in ("met", NOT_NEEDED):
        log.warning(
            "accuracy control stopped (%s) after %d validation(s): best drop %s with %d operation(s) in float",
            result.outcome,
            result.iterations,
            report["drop"],
            len(reverted_ops),
        )
    return final, [op.name for op in reverted_ops], report


def _search(
    model: ov.Model,
    quantized: ov.Model,
    calibration: list[npt.NDArray[np.float32]],
    validator: _Validator,
    plain_drop: float,
    *,
    max_drop: float,
    options: ControlOptions,
    started: float,
) -> tuple[list[QuantizedOp], dict[str, Any], SearchResult]:
    """Rank the quantized operations and search how many of them go back to float."""
    ranking: dict[str, Any] = {}
    ranked: list[QuantizedOp] = []
    if plain_drop <= max_drop:
        result = SearchResult(NOT_NEEDED, 0, plain_drop, True)
    else:
        ranked, ranking = rank_ops(
            model,
            quantized,
            _rank_images(calibration),
            candidates=options.rank_candidates,
            threads=options.threads,
        )

        def evaluate(count: int, all_pairs: bool) -> float:
            drop = validator.drop(revert_ops(quantized, [op.name for op in ranked[:count]]), all_pairs)
            log.info(
                "accuracy control: %d in float -> drop %.4f (%s pairs)",
                count,
                drop,
                "all" if all_pairs else "subset",
            )
            return drop

        result = search_reverts(
            len(ranked),
            evaluate,
            max_drop=max_drop,
            subset_is_all=validator.subset_is_all,
            max_iterations=options.max_iterations,
            timeout_s=options.timeout_s,
            clock=time.perf_counter,
            started=started,
        )
        if result.drop is None:  # the budget ran out before any validation: plain INT8 it is
            result.drop, result.all_pairs = plain_drop, True
    return ranked, ranking, result


def _report(
    lfw: str | os.PathLike[str],
    pairset: PairSet,
    max_drop: float,
    options: ControlOptions,
    validator: _Validator,
    plain_drop: float,
    result: SearchResult,
    quantized: ov.Model,
    reverted_ops: list[QuantizedOp],
    ranking: dict[str, Any],
) -> dict[str, Any]:
    """The ``accuracy_control`` block of ``qfleet.json``: why the control stopped, at what drop,
    which operations went back to float, and every validation it ran."""
    fp32_accuracy = validator.fp32_accuracy[True]
    confirmed = result.drop is not None and result.all_pairs
    report: dict[str, Any] = {
        "lfw": str(lfw),
        "lfw_sha256": pairset_sha256(pairset),
        "pairs": pairset.pairs,
        "subset_pairs": min(pairset.pairs, options.subset_pairs),
        "max_drop": max_drop,
        "drop_type": "absolute",
        "outcome": result.outcome,
        "met": confirmed and result.drop is not None and result.drop <= max_drop,
        "iterations": result.iterations,
        "max_iterations": options.max_iterations,
        "timeout_s": options.timeout_s,
        "fp32_accuracy": fp32_accuracy,
        "fully_quantized_accuracy": fp32_accuracy - plain_drop,
        "fully_quantized_drop": round(plain_drop, 6),
        "drop": None if result.drop is None else round(result.drop, 6),
        "drop_on": "all" if result.all_pairs else "subset",
        "int8_accuracy": None if result.drop is None or not result.all_pairs else fp32_accuracy - result.drop,
        "quantized_ops": len(quantized_ops(quantized)),
        "reverted": [op.as_dict() for op in reverted_ops],
        "ranking": ranking,
        "trials": [trial.as_dict() for trial in result.trials],
    }
    return report
