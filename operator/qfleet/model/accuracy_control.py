"""Accuracy-controlled quantization: NNCF keeps layers in floating point until LFW accuracy holds.

``nncf.quantize_with_accuracy_control`` needs a validation dataset and a validation function.
Ours are the LFW pairs and the LFW protocol itself (``f(x) + f(mirror(x))``, 10 folds), so the
drop NNCF controls is the drop the rollout gate will measure.

How NNCF uses the function shapes the design:

- Items are pair indices. NNCF calls the function on the whole set (the FP32, the quantized and
  each restored model) and on subsets of pairs it picks for ranking layers; with fewer pairs
  than folds (NNCF probes with a single item first) the fold count shrinks to the pair count.
- Besides the accuracy it returns one value per pair, the pair's margin to the chosen
  threshold (positive = classified right). That puts NNCF in its "metric" mode: it ranks the
  layers by the protocol accuracy on a subset of the pairs whose margin quantization hurt most.

NNCF does not return the layers it reverted, so we ask it to save the fully quantized model and
compare which operations take an activation through a FakeQuantize before and after: the
difference is exactly the set of operations it returned to floating point.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qfleet.errors import DatasetError
from qfleet.lfw.dataset import PairSet, decode_image, load_lfw_bin
from qfleet.lfw.protocol import DEFAULT_FOLDS, evaluate_interleaved, squared_distances
from qfleet.model.runtime import PrecisionError
from qfleet.model.tensors import flip_horizontal, images_to_batch
from qfleet.outputs import sha256_file

if TYPE_CHECKING:
    import nncf
    import openvino as ov

log = logging.getLogger(__name__)

INTERMEDIATE_XML = "intermediate_model.xml"


class LfwMetric:
    """NNCF validation function: LFW-protocol accuracy of a compiled model on a set of pair indices."""

    def __init__(
        self, pairset: PairSet, *, flip: bool = True, input_hw: tuple[int, int] = (112, 112)
    ) -> None:
        self.pairset = pairset
        self.flip = flip
        self.input_hw = input_hw
        #: Accuracy of every evaluation on the whole set, in call order (FP32 model first).
        self.full_set_accuracies: list[float] = []

    def subset(self, indices: list[int]) -> PairSet:
        if indices == list(range(self.pairset.pairs)):
            return self.pairset  # keeps the original image numbers in error messages
        images = [self.pairset.images[2 * i + side] for i in indices for side in (0, 1)]
        return PairSet(images=images, issame=self.pairset.issame[indices], source=self.pairset.source)

    def embed(self, compiled_model: ov.CompiledModel, pairs: PairSet) -> npt.NDArray[np.float64]:
        """``f(x) + f(mirror(x))`` per image, one synchronous request per image.

        NNCF compiles each candidate model itself and drops it right after validating; with a
        Python callback on an ``AsyncInferQueue`` the interpreter hung here now and then (a
        plugin thread waiting for the GIL while the main thread, holding it, joined that
        thread in the compiled model's destructor). Synchronous requests involve no callback.
        NNCF compiles for latency, so one request already uses every core.
        """
        request = compiled_model.create_infer_request()
        rows: list[npt.NDArray[np.float64]] = []
        for index, data in enumerate(pairs.images):
            image = decode_image(data, self.input_hw, what=pairs.image_label(index))
            batch = images_to_batch(image)
            if self.flip:
                batch = np.concatenate([batch, flip_horizontal(batch)])
            output = request.infer({0: batch})[0]
            rows.append(np.asarray(output, dtype=np.float64).reshape(len(batch), -1).sum(axis=0))
        return np.stack(rows)

    def __call__(self, compiled_model: ov.CompiledModel, items: Iterable[Any]) -> tuple[float, list[float]]:
        # The layers NNCF reverts are kept "in floating point": that means f32 only if every
        # candidate is measured in f32, which is what the int8 variant is then compiled with.
        used = compiled_model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if used != "f32":
            raise PrecisionError(
                f"accuracy control must measure candidates in f32, but NNCF compiled one in {used}"
            )
        indices = [int(item) for item in items]
        pairs = self.subset(indices)
        embeddings = self.embed(compiled_model, pairs)
        result = evaluate_interleaved(embeddings, pairs.issame, folds=min(DEFAULT_FOLDS, len(indices)))
        distances = squared_distances(embeddings[0::2], embeddings[1::2])
        margins = np.where(pairs.issame, result.threshold - distances, distances - result.threshold)
        if len(indices) == self.pairset.pairs:
            self.full_set_accuracies.append(result.accuracy)
        return result.accuracy, [float(margin) for margin in margins]

    def pair_inputs(self, item: Any) -> npt.NDArray[np.float32]:
        """A pair as one NCHW batch of its two images (NNCF's inference view of an item)."""
        index = int(item)
        images = [
            decode_image(self.pairset.images[i], self.input_hw, what=self.pairset.image_label(i))
            for i in (2 * index, 2 * index + 1)
        ]
        return images_to_batch(images)


def activation_quantized_ops(model: ov.Model) -> set[str]:
    """Names of the operations that take an input through an activation FakeQuantize.

    Weight quantizers are left out on purpose: NNCF may fold them into INT8 constants, while
    activation FakeQuantize nodes survive in every form of the IR, so this set is comparable
    between a model NNCF returned in memory and one it saved.
    """
    names: set[str] = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            continue
        for port in op.inputs():
            producer = port.get_source_output().get_node()
            if producer.get_type_name() != "FakeQuantize":
                continue
            if producer.input_value(0).get_node().get_type_name() != "Constant":
                names.add(op.get_friendly_name())
    return names


def quantize_with_lfw_control(
    model: ov.Model,
    calibration_dataset: nncf.Dataset,
    *,
    lfw: str | os.PathLike[str],
    max_drop: float,
    preset: nncf.QuantizationPreset,
    subset_size: int,
    input_hw: tuple[int, int] = (112, 112),
    scratch_dir: str | os.PathLike[str] | None = None,
) -> tuple[ov.Model, list[str], dict[str, Any]]:
    """Quantize with ``max_drop`` (absolute) of LFW accuracy; returns (model, reverted ops, report)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from qfleet.model.runtime import read_model

    pairset = load_lfw_bin(lfw)
    if pairset.pairs < DEFAULT_FOLDS:
        raise DatasetError(
            f"{lfw} has {pairset.pairs} pairs; accuracy control needs at least {DEFAULT_FOLDS} (one per fold)"
        )
    metric = LfwMetric(pairset, input_hw=input_hw)
    validation_dataset = nncf.Dataset(list(range(pairset.pairs)), metric.pair_inputs)
    with tempfile.TemporaryDirectory(prefix="nncf-", dir=scratch_dir) as intermediate_dir:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration_dataset,
            validation_dataset,
            validation_fn=metric,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=subset_size,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                intermediate_model_dir=intermediate_dir
            ),
        )
        fully_quantized = read_model(Path(intermediate_dir) / INTERMEDIATE_XML)
        reverted = sorted(activation_quantized_ops(fully_quantized) - activation_quantized_ops(quantized))
    accuracies = metric.full_set_accuracies
    report: dict[str, Any] = {
        "lfw": str(lfw),
        "lfw_sha256": sha256_file(lfw),
        "pairs": pairset.pairs,
        "max_drop": max_drop,
        "drop_type": "absolute",
        "quantized_ops": len(activation_quantized_ops(quantized)),
        # NNCF validates the FP32 model first, the fully quantized one second, and the model it
        # returns last (every restoring step validates the model it keeps).
        "fp32_accuracy": accuracies[0] if accuracies else None,
        "fully_quantized_accuracy": accuracies[1] if len(accuracies) > 1 else None,
        "int8_accuracy": accuracies[-1] if len(accuracies) > 1 else None,
    }
    if reverted:
        log.info("NNCF kept %d operation(s) in floating point: %s", len(reverted), ", ".join(reverted))
    return quantized, reverted, report
