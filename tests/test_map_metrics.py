import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from sklearn_ais import metrics
from sklearn_ais.metrics import (
    heatmap_match,
    ks_test,
    match_entropy_correlation,
    mean_absolute_deviation,
    precision_recall,
    precision_recall_auc,
    prediction_entropy,
    relative_risk,
    top_mask,
)


def naive_top(m, p):
    """Top p % pixel indices by a plain sort on (-value, raster index)."""
    flat = list(np.asarray(m, dtype=float).ravel())
    k = math.ceil(round(p * len(flat) / 100, 9))
    return set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k])


def naive_rr(pred, target, p):
    N = pred.size
    P = naive_top(pred, p)
    T = set(np.flatnonzero(target.ravel())) if target.dtype == bool else naive_top(target, p)
    return (len(P & T) / len(P)) / (len(T) / N)


def test_reexported_from_metrics():
    for name in ["relative_risk", "precision_recall", "precision_recall_auc", "heatmap_match", "ks_test",
                 "match_entropy_correlation", "mean_absolute_deviation", "prediction_entropy", "top_mask"]:
        assert name in metrics.__all__ and callable(getattr(metrics, name))


def test_top_mask_count_and_ties():
    m = np.zeros((7, 9))  # all tied: the first pixels in raster order win
    mask = top_mask(m, 10)
    assert mask.sum() == math.ceil(0.1 * 63) == 7
    assert mask.ravel()[:7].all() and not mask.ravel()[7:].any()
    rng = np.random.default_rng(0)
    stack = rng.random((3, 10, 10))
    masks = top_mask(stack, 15)
    assert masks.shape == stack.shape and (masks.sum(axis=(1, 2)) == 15).all()
    # float noise must not add a pixel: 10 % of 30 is exactly 3
    assert top_mask(rng.random((3, 10)), 10).sum() == 3


def test_relative_risk_planted():
    rng = np.random.default_rng(1)
    m = rng.random((20, 20))
    rr = relative_risk(m, m, top=(5, 10, 15))
    np.testing.assert_allclose(rr, [100 / 5, 100 / 10, 400 / 60])  # N / ceil(p % of N)
    assert relative_risk(m, -m, top=(5, 10, 15)).tolist() == [0.0, 0.0, 0.0]
    assert relative_risk(m, m) == 10.0
    # boolean target: the mask is T as is
    mask = np.zeros((20, 20), dtype=bool)
    mask[:10] = True  # half of the image
    top_half = np.zeros((20, 20))
    top_half[:10] = 1 + rng.random((10, 20))
    assert relative_risk(top_half, mask, top=10) == pytest.approx(2.0)


def test_relative_risk_matches_naive_loop():
    rng = np.random.default_rng(2)
    pred = rng.random((4, 12, 11))
    target = 0.5 * pred + rng.random((4, 12, 11))
    target[1] = np.round(target[1], 1)  # ties
    mask = rng.random((4, 12, 11)) < 0.2
    tops = (5, 10, 15, 33.3)
    got = relative_risk(pred, target, top=tops)
    got_mask = relative_risk(pred, mask, top=tops)
    assert got.shape == (4, 4)
    for i in range(4):
        for j, p in enumerate(tops):
            assert got[i, j] == pytest.approx(naive_rr(pred[i], target[i], p))
            assert got_mask[i, j] == pytest.approx(naive_rr(pred[i], mask[i], p))
    assert relative_risk(pred, target, top=10).shape == (4,)
    assert isinstance(relative_risk(pred[0], target[0], top=10), float)


def test_precision_recall_matches_naive_loop():
    rng = np.random.default_rng(3)
    pred = rng.random((3, 9, 13))
    target = pred + rng.normal(0, 0.3, size=pred.shape)
    qs = [1, 10, 37.5, 80, 100]
    precision, recall = precision_recall(pred, target, target_top=20, percentiles=qs)
    assert precision.shape == recall.shape == (3, len(qs))
    for i in range(3):
        T = naive_top(target[i], 20)
        for j, q in enumerate(qs):
            P = naive_top(pred[i], q)
            assert precision[i, j] == pytest.approx(len(P & T) / len(P))
            assert recall[i, j] == pytest.approx(len(P & T) / len(T))
    assert (np.diff(recall, axis=1) >= 0).all() and np.allclose(recall[:, -1], 1)
    p0, r0 = precision_recall(pred[0], target[0], target_top=20, percentiles=qs)
    np.testing.assert_array_equal(p0, precision[0])
    np.testing.assert_array_equal(r0, recall[0])
    # default sweep and boolean target
    p, r = precision_recall(pred[0], target[0] > 0.8)
    assert p.shape == r.shape == (50,)


def test_precision_recall_auc():
    p, r = np.array([1.0, 0.8, 0.5]), np.array([0.2, 0.6, 1.0])
    assert precision_recall_auc(p, r) == pytest.approx(0.4 * 0.9 + 0.4 * 0.65)
    assert precision_recall_auc(p[::-1], r[::-1]) == pytest.approx(precision_recall_auc(p, r))
    both = precision_recall_auc(np.stack([p, p]), np.stack([r, r]))
    np.testing.assert_allclose(both, [precision_recall_auc(p, r)] * 2)
    with pytest.raises(ValueError, match="same shape"):
        precision_recall_auc(p, r[:2])


def test_heatmap_match():
    rng = np.random.default_rng(4)
    a, b = rng.random((5, 6, 7)), rng.random((5, 6, 7))
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(5)]
    np.testing.assert_allclose(heatmap_match(a, b), expected)
    assert heatmap_match(a[0], -a[0]) == pytest.approx(-1.0)
    b[2] = 0.3
    assert np.isnan(heatmap_match(a, b)[2])


def test_entropy_and_correlation():
    rng = np.random.default_rng(5)
    la, lb = rng.normal(size=(30, 10)) * 3, rng.normal(size=(30, 7))
    pa, pb = softmax(la, axis=1), softmax(lb, axis=1)
    np.testing.assert_allclose(prediction_entropy(pa), stats.entropy(pa, axis=1))
    match = rng.random(30)
    h = np.maximum(stats.entropy(pa, axis=1), stats.entropy(pb, axis=1))
    rho, pval = match_entropy_correlation(match, pa, pb)
    ref = stats.spearmanr(match, h)
    assert rho == pytest.approx(ref.statistic) and pval == pytest.approx(ref.pvalue)
    match[[3, 7]] = np.nan  # undefined matches are left out
    rho, _ = match_entropy_correlation(match, pa, pb)
    keep = ~np.isnan(match)
    assert rho == pytest.approx(stats.spearmanr(match[keep], h[keep]).statistic)
    with pytest.raises(ValueError, match="probs_a.*not logits"):
        match_entropy_correlation(match, la, pb)
    with pytest.raises(ValueError, match="probs_b has 29 rows"):
        match_entropy_correlation(match, pa, pb[:29])


def test_ks_and_mad():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(10, 20)), rng.normal(0.5, 1, size=150)
    res = ks_test(a, b)
    ref = stats.ks_2samp(a.ravel(), b)
    assert res.statistic == ref.statistic and res.pvalue == ref.pvalue
    assert mean_absolute_deviation([1.0, -1.0], [0.0, 1.0]) == 1.5
    with pytest.raises(ValueError, match="same shape"):
        mean_absolute_deviation([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="ais_b contains NaN"):
        ks_test(a, [0.0, np.nan])
    with pytest.raises(ValueError, match="ais_a is empty"):
        ks_test([], b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: relative_risk(m, m[:, :-1]), "predictor and target must have the same shape"),
        (lambda m: relative_risk(np.full_like(m, np.nan), m), "predictor holds a map of nothing but NaN"),
        (lambda m: relative_risk(m, np.where(m > 0.5, np.inf, m)), "target contains inf"),
        (lambda m: relative_risk(np.zeros((0, 4)), np.zeros((0, 4))), "predictor is empty"),
        (lambda m: relative_risk(m, m, top=0), "top must lie in"),
        (lambda m: relative_risk(m, m, top=(5, 150)), "top must lie in"),
        (lambda m: relative_risk(m, np.zeros(m.shape, dtype=bool)), "target mask of image 0 is empty"),
        (lambda m: relative_risk(m > 0.5, m), "predictor must be a real-valued map"),
        (lambda m: relative_risk(m.ravel(), m.ravel()), "predictor must have shape"),
        (lambda m: precision_recall(m, m, target_top=(5, 10)), "target_top must be a single"),
        (lambda m: precision_recall(m, m, percentiles=[]), "percentiles must be"),
        (lambda m: heatmap_match(m, m[None]), "maps_a and maps_b must have the same shape"),
        (lambda m: top_mask(m, (5, 10)), "top must be a single"),
    ],
)
def test_validation(call, match):
    m = np.random.default_rng(7).random((8, 8))
    with pytest.raises(ValueError, match=match):
        call(m)
