"""The LFW verification protocol, computed the way insightface's ``verification.py`` does.

Given one embedding per image (already ``f(x) + f(mirror(x))`` when the flip is on):

1. L2-normalise each embedding; a pair's distance is the squared L2 distance (0..4).
2. A pair is predicted "same" when ``distance < threshold``.
3. Split the pairs into ``folds`` contiguous folds without shuffling (scikit-learn's ``KFold``:
   the first ``n % folds`` folds are one pair larger). For each fold, pick the threshold in
   0.00, 0.01, ..., 3.99 with the best accuracy on the other folds (the first one on ties) and
   measure the accuracy on the held-out fold.
4. Report the mean and the (population) standard deviation of the fold accuracies.
5. VAL at FAR: for each fold, find on the other folds the threshold in 0.000, 0.001, ..., 3.999
   whose false-accept rate is ``far_target``, by linear interpolation of FAR -> threshold; report
   the mean validation rate (true-accept rate) on the held-out folds at that threshold.

Counting is exact: accepted pairs per threshold come from ``searchsorted`` on sorted distances,
which equals insightface's ``np.less`` loop over thresholds.

Two places where insightface's code has no answer and we chose one:

- ``calculate_val`` divides by the number of same/different pairs of a fold; a fold without any
  (only possible in tiny sets) has a rate of 0 here instead of a ZeroDivisionError.
- The FAR -> threshold interpolation used ``scipy.interpolate.interp1d(kind="slinear")`` on FAR
  values with repeated entries, which scipy >= 1.9 refuses. We reproduce what it computed before:
  when ``far_target`` lies strictly between two FAR values, interpolate between the largest
  threshold of the lower value and the smallest threshold of the higher one; when it equals a FAR
  value, take the largest threshold with that FAR. (At the very top of the range, where old scipy
  evaluated a degenerate spline to 0, we take the smallest threshold reaching the maximum.)

This module is pure: numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: Candidate thresholds for the accuracy: 0.00, 0.01, ..., 3.99.
ACCURACY_THRESHOLDS: npt.NDArray[np.float64] = np.arange(0, 4, 0.01)
#: Candidate thresholds for VAL at FAR (insightface uses a finer grid here): 0.000 ... 3.999.
VAL_THRESHOLDS: npt.NDArray[np.float64] = np.arange(0, 4, 0.001)
DEFAULT_FOLDS = 10
DEFAULT_FAR_TARGET = 1e-3

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class VerificationResult:
    """What the protocol reports for one set of pairs."""

    #: Mean accuracy over the held-out folds.
    accuracy: float
    #: Population standard deviation of the fold accuracies (insightface's ``np.std``).
    accuracy_std: float
    #: Mean of the thresholds chosen on the training folds.
    threshold: float
    #: Mean validation rate (true-accept rate) at the target false-accept rate.
    val_at_far: float
    val_std: float
    #: Mean false-accept rate actually reached on the held-out folds.
    far: float
    #: The target false-accept rate.
    far_target: float
    pairs: int
    folds: int
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fold_accuracies"] = list(self.fold_accuracies)
        data["fold_thresholds"] = list(self.fold_thresholds)
        return data


def normalize(embeddings: npt.ArrayLike) -> FloatArray:
    """L2-normalise each row (float64); an all-zero row stays zero, as in scikit-learn."""
    matrix = np.array(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (rows, dimensions), got shape {matrix.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    norms[norms == 0.0] = 1.0
    matrix /= norms[:, None]
    return matrix


def squared_distances(embeddings_a: npt.ArrayLike, embeddings_b: npt.ArrayLike) -> FloatArray:
    """Squared L2 distance between the L2-normalised rows of ``a`` and ``b``."""
    a = normalize(embeddings_a)
    b = normalize(embeddings_b)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} and {b.shape}")
    diff = a - b
    distances: FloatArray = np.sum(np.square(diff), axis=1)
    return distances


def fold_bounds(n: int, folds: int = DEFAULT_FOLDS) -> list[tuple[int, int]]:
    """``[start, stop)`` of each contiguous fold; the first ``n % folds`` folds are one larger."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if n < folds:
        raise ValueError(f"{n} pairs cannot be split into {folds} folds (need at least {folds})")
    base, larger = divmod(n, folds)
    bounds: list[tuple[int, int]] = []
    start = 0
    for index in range(folds):
        stop = start + base + (1 if index < larger else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _split(n: int, folds: int) -> list[tuple[BoolArray, BoolArray]]:
    """(train mask, test mask) per fold. One fold trains and tests on everything, as insightface."""
    splits: list[tuple[BoolArray, BoolArray]] = []
    for start, stop in fold_bounds(n, folds):
        test = np.zeros(n, dtype=bool)
        test[start:stop] = True
        train = ~test if folds > 1 else test
        splits.append((train, test))
    return splits


def _accepted(distances: FloatArray, thresholds: FloatArray) -> npt.NDArray[np.intp]:
    """For each threshold, how many distances are strictly below it (NaN never counts)."""
    ordered = np.sort(distances)
    return np.searchsorted(ordered, thresholds, side="left")


def correct_counts(distances: FloatArray, issame: BoolArray, thresholds: FloatArray) -> npt.NDArray[np.intp]:
    """Correctly classified pairs at each threshold (true accepts + true rejects)."""
    true_accepts = _accepted(distances[issame], thresholds)
    false_accepts = _accepted(distances[~issame], thresholds)
    different = int(np.count_nonzero(~issame))
    counts: npt.NDArray[np.intp] = true_accepts + (different - false_accepts)
    return counts


def best_threshold_index(distances: FloatArray, issame: BoolArray, thresholds: FloatArray) -> int:
    """Index of the most accurate threshold; the first one when several tie (``np.argmax``)."""
    return int(np.argmax(correct_counts(distances, issame, thresholds)))


def accuracy_at(distances: FloatArray, issame: BoolArray, threshold: float) -> float:
    predicted_same = distances < threshold
    return float(np.count_nonzero(predicted_same == issame)) / distances.size


def _rate(numerator: int, denominator: int) -> float:
    return 0.0 if denominator == 0 else numerator / denominator


def val_far_at(distances: FloatArray, issame: BoolArray, threshold: float) -> tuple[float, float]:
    """(validation rate, false-accept rate) when pairs closer than ``threshold`` are accepted."""
    accepted = distances < threshold
    val = _rate(int(np.count_nonzero(accepted & issame)), int(np.count_nonzero(issame)))
    far = _rate(int(np.count_nonzero(accepted & ~issame)), int(np.count_nonzero(~issame)))
    return val, far


def threshold_for_far(
    distances: FloatArray, issame: BoolArray, far_target: float, thresholds: FloatArray = VAL_THRESHOLDS
) -> float:
    """The threshold at which the false-accept rate reaches ``far_target`` (interpolated).

    0.0 when no candidate threshold reaches the target (nothing is accepted then).
    """
    different = int(np.count_nonzero(~issame))
    false_accepts = _accepted(distances[~issame], thresholds)
    far = false_accepts / different if different else np.zeros(thresholds.size)
    if far[-1] < far_target:  # FAR never decreases with the threshold: the last one is the maximum
        return 0.0
    # Last candidate whose FAR is <= target: its largest threshold when the target sits on a plateau.
    below = int(np.searchsorted(far, far_target, side="right")) - 1
    if below >= far.size - 1:
        return float(thresholds[int(np.searchsorted(far, far[-1], side="left"))])
    low_far, high_far = float(far[below]), float(far[below + 1])
    low, high = float(thresholds[below]), float(thresholds[below + 1])
    return low + (far_target - low_far) * (high - low) / (high_far - low_far)


def evaluate(
    embeddings_a: npt.ArrayLike,
    embeddings_b: npt.ArrayLike,
    issame: npt.ArrayLike,
    *,
    folds: int = DEFAULT_FOLDS,
    far_target: float = DEFAULT_FAR_TARGET,
) -> VerificationResult:
    """Run the protocol on pair embeddings: row ``i`` of ``a`` and of ``b`` form pair ``i``."""
    labels = np.asarray(issame, dtype=bool).reshape(-1)
    distances = squared_distances(embeddings_a, embeddings_b)
    if distances.size != labels.size:
        raise ValueError(f"{distances.size} embedding pairs but {labels.size} labels")
    fold_accuracies: list[float] = []
    fold_thresholds: list[float] = []
    vals: list[float] = []
    fars: list[float] = []
    for train, test in _split(labels.size, folds):
        best = best_threshold_index(distances[train], labels[train], ACCURACY_THRESHOLDS)
        threshold = float(ACCURACY_THRESHOLDS[best])
        fold_thresholds.append(threshold)
        fold_accuracies.append(accuracy_at(distances[test], labels[test], threshold))
        far_threshold = threshold_for_far(distances[train], labels[train], far_target)
        val, far = val_far_at(distances[test], labels[test], far_threshold)
        vals.append(val)
        fars.append(far)
    return VerificationResult(
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        threshold=float(np.mean(fold_thresholds)),
        val_at_far=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far=float(np.mean(fars)),
        far_target=far_target,
        pairs=int(labels.size),
        folds=folds,
        fold_accuracies=tuple(fold_accuracies),
        fold_thresholds=tuple(fold_thresholds),
    )


def evaluate_interleaved(
    embeddings: npt.ArrayLike,
    issame: npt.ArrayLike,
    *,
    folds: int = DEFAULT_FOLDS,
    far_target: float = DEFAULT_FAR_TARGET,
) -> VerificationResult:
    """The protocol on ``lfw.bin`` order: rows ``2i`` and ``2i + 1`` form pair ``i``."""
    matrix = np.asarray(embeddings)
    if matrix.ndim != 2 or matrix.shape[0] % 2:
        raise ValueError(f"expected an even number of embedding rows, got shape {matrix.shape}")
    return evaluate(matrix[0::2], matrix[1::2], issame, folds=folds, far_target=far_target)
