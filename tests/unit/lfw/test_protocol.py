"""The LFW protocol against hand-computed cases and against insightface's own procedure."""

from __future__ import annotations

import numpy as np
import pytest

from qfleet.lfw.protocol import (
    ACCURACY_THRESHOLDS,
    best_threshold_index,
    evaluate,
    evaluate_interleaved,
    fold_bounds,
    normalize,
    squared_distances,
    threshold_for_far,
)


def pairs_at_distances(distances: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in 2-D whose squared L2 distances are exactly the given ones (up to float)."""
    d = np.asarray(distances, dtype=np.float64)
    cos = 1 - d / 2
    a = np.tile([1.0, 0.0], (d.size, 1))
    b = np.stack([cos, np.sqrt(1 - cos**2)], axis=1)
    return a, b


def test_pairs_at_distances_helper() -> None:
    a, b = pairs_at_distances([0.5, 1.5, 3.9])
    assert squared_distances(a, b) == pytest.approx([0.5, 1.5, 3.9])


def test_hand_computed_two_folds() -> None:
    # Pairs 0..4 with folds [0, 3) and [3, 5).
    #  fold 0 trains on {same 0.805, diff 1.205}: every threshold in (0.805, 1.205] is perfect,
    #    the first is 0.81; on {same 0.505, diff 1.505, same 1.005} it gets 2 of 3 right.
    #  fold 1 trains on {same 0.505, diff 1.505, same 1.005}: first perfect threshold 1.01;
    #    on {same 0.805, diff 1.205} it gets both right.
    a, b = pairs_at_distances([0.505, 1.505, 1.005, 0.805, 1.205])
    issame = [True, False, True, True, False]
    result = evaluate(a, b, issame, folds=2)
    assert result.fold_thresholds == pytest.approx((0.81, 1.01))
    assert result.fold_accuracies == pytest.approx((2 / 3, 1.0))
    assert result.accuracy == pytest.approx(5 / 6)
    assert result.accuracy_std == pytest.approx(1 / 6)
    assert result.threshold == pytest.approx(0.91)
    # VAL: fold 0's training FAR jumps 0 -> 1 between thresholds 1.205 and 1.206, so FAR 1e-3
    # interpolates to 1.205001: both same pairs of fold 0 accepted, its different pair rejected.
    # Fold 1: threshold 1.505001 accepts same 0.805 and also different 1.205.
    assert result.val_at_far == pytest.approx(1.0)
    assert result.far == pytest.approx(0.5)
    assert result.pairs == 5 and result.folds == 2


def test_first_best_threshold_wins_ties() -> None:
    a, b = pairs_at_distances([0.305, 1.705])
    distances = squared_distances(a, b)
    labels = np.array([True, False])
    index = best_threshold_index(distances, labels, ACCURACY_THRESHOLDS)
    assert ACCURACY_THRESHOLDS[index] == pytest.approx(0.31)  # 0.31 .. 1.70 all tie at 100%
    # When no threshold separates better than "reject all", threshold 0 (the first) is chosen.
    flipped = best_threshold_index(distances, ~labels, ACCURACY_THRESHOLDS)
    assert flipped == 0


def test_strictly_less_than_threshold_accepts() -> None:
    # A distance exactly on a threshold is not accepted by it (insightface uses np.less).
    distances = np.array([1.0, 2.5])
    labels = np.array([True, False])
    index = best_threshold_index(distances, labels, ACCURACY_THRESHOLDS)
    assert ACCURACY_THRESHOLDS[index] == pytest.approx(1.01)


def test_perfectly_separable_is_one() -> None:
    rng = np.random.default_rng(1)
    same = rng.uniform(0.1, 0.9, 300)
    different = rng.uniform(1.5, 3.5, 300)
    distances = np.empty(600)
    distances[0::2], distances[1::2] = same, different
    issame = np.tile([True, False], 300)
    a, b = pairs_at_distances(list(distances))
    result = evaluate(a, b, issame)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert 0.8 < result.threshold <= 1.5  # above every same-pair distance, at most the nearest different one
    assert result.val_at_far == 1.0


def test_indistinguishable_is_about_half() -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(2 * 3000, 64))
    issame = rng.random(3000) < 0.5
    result = evaluate_interleaved(embeddings, issame)
    assert abs(result.accuracy - 0.5) < 0.05
    assert result.val_at_far < 0.05


@pytest.mark.parametrize(("n", "folds"), [(10, 10), (23, 10), (6000, 10), (7, 2), (5, 1)])
def test_fold_bounds(n: int, folds: int) -> None:
    bounds = fold_bounds(n, folds)
    sizes = [stop - start for start, stop in bounds]
    assert len(bounds) == folds and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(folds - 1))
    larger = n % folds
    assert sizes == [n // folds + 1] * larger + [n // folds] * (folds - larger)


def test_fold_bounds_23_pairs_explicitly() -> None:
    assert fold_bounds(23, 10)[:4] == [(0, 3), (3, 6), (6, 9), (9, 11)]


def test_fold_bounds_need_one_pair_per_fold() -> None:
    with pytest.raises(ValueError, match="9 pairs cannot be split into 10 folds"):
        fold_bounds(9, 10)


def test_normalize_keeps_zero_rows() -> None:
    unit = normalize([[3.0, 4.0], [0.0, 0.0]])
    assert unit.tolist() == [[0.6, 0.8], [0.0, 0.0]]


def test_far_threshold_interpolation_on_plateaus() -> None:
    # Training different-pair distances 1.2 and 2.6: FAR is 0 up to 1.200, 0.5 from 1.201 to
    # 2.600, 1 from 2.601. FAR 0.25 lies between the last threshold with FAR 0 (1.200) and the
    # first with FAR 0.5 (1.201): 1.2005. A target on a plateau takes its largest threshold.
    distances = np.array([0.3, 1.2, 2.6])
    labels = np.array([True, False, False])
    assert threshold_for_far(distances, labels, 0.25) == pytest.approx(1.2005)
    assert threshold_for_far(distances, labels, 0.5) == pytest.approx(2.6)
    assert threshold_for_far(distances, labels, 0.75) == pytest.approx(2.6005)
    # Never reaching the target (all different pairs beyond 4): threshold 0, nothing accepted.
    assert threshold_for_far(np.array([0.3, 4.5]), np.array([True, False]), 1e-3) == 0.0


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        evaluate(np.ones((10, 4)), np.ones((10, 4)), [True] * 9)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate(np.ones((10, 4)), np.ones((10, 3)), [True] * 10)
    with pytest.raises(ValueError, match="even number"):
        evaluate_interleaved(np.ones((21, 4)), [True] * 10)


# --- Cross-check against insightface's procedure, written with scikit-learn and scipy ----------


def reference_insightface(embeddings: np.ndarray, issame: np.ndarray, far_target: float) -> tuple:
    """insightface's verification: sklearn KFold, a loop of np.less over thresholds, and the
    FAR -> threshold spline that scipy's interp1d(kind="slinear") built before it refused
    repeated x values (a degree-1 B-spline with knots [x0, x..., xn] and the thresholds as
    coefficients)."""
    from scipy.interpolate import BSpline
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import normalize as sk_normalize

    unit = sk_normalize(embeddings)
    dist = np.sum(np.square(unit[0::2] - unit[1::2]), 1)
    kfold = KFold(n_splits=10, shuffle=False)
    thresholds = np.arange(0, 4, 0.01)
    accuracies, chosen = [], []
    fine = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for train, test in kfold.split(np.arange(dist.size)):
        acc = [np.mean(np.less(dist[train], t) == issame[train]) for t in thresholds]
        best = int(np.argmax(acc))
        chosen.append(thresholds[best])
        accuracies.append(np.mean(np.less(dist[test], thresholds[best]) == issame[test]))
        far_train = np.array([np.sum(np.less(dist[train], t) & ~issame[train]) for t in fine])
        far_train = far_train / np.sum(~issame[train])
        if far_train.max() >= far_target:
            spline = BSpline.construct_fast(np.r_[far_train[0], far_train, far_train[-1]], fine, 1)
            threshold = float(spline(far_target))
        else:
            threshold = 0.0
        accepted = np.less(dist[test], threshold)
        vals.append(np.sum(accepted & issame[test]) / np.sum(issame[test]))
        fars.append(np.sum(accepted & ~issame[test]) / np.sum(~issame[test]))
    return (np.mean(accuracies), np.std(accuracies), chosen, np.mean(vals), np.std(vals), np.mean(fars))


@pytest.mark.parametrize(
    ("pairs", "noise", "far_target"), [(600, 0.9, 1e-3), (613, 1.3, 0.05), (400, 0.6, 0.02)]
)
def test_matches_insightface_procedure(pairs: int, noise: float, far_target: float) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    rng = np.random.default_rng(pairs)
    identities = rng.normal(size=(pairs, 32))
    issame = rng.random(pairs) < 0.5
    first = identities + noise * rng.normal(size=identities.shape)
    partner = np.where(issame[:, None], identities, rng.normal(size=identities.shape))
    second = partner + noise * rng.normal(size=identities.shape)
    embeddings = np.empty((2 * pairs, 32))
    embeddings[0::2], embeddings[1::2] = first, second

    accuracy, accuracy_std, chosen, val, val_std, far = reference_insightface(embeddings, issame, far_target)
    result = evaluate_interleaved(embeddings, issame, far_target=far_target)
    assert 0.6 < result.accuracy < 0.999  # a case where thresholds matter
    assert result.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert result.accuracy_std == pytest.approx(accuracy_std, abs=1e-12)
    assert result.fold_thresholds == pytest.approx(chosen, abs=1e-12)
    assert result.val_at_far == pytest.approx(val, abs=1e-12)
    assert result.val_std == pytest.approx(val_std, abs=1e-12)
    assert result.far == pytest.approx(far, abs=1e-12)
