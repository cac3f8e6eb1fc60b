"""Pair heatmaps: the exact decomposition of the 2OI into pair terms, a naive loop, and the planted pair task."""

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata

from sklearn_ais import FeatureMaps
from sklearn_ais.backbones import PoolingHead
from sklearn_ais.evaluation import pair_heatmaps
from sklearn_ais.metrics import relative_risk

from .conftest import human, planted_colour_transformer


@pytest.mark.parametrize("similarity, comparison", [("pearson", "pearson"), ("cosine", "spearman")])
def test_terms_sum_to_the_correlation_and_match_a_naive_loop(rng, similarity, comparison):
    maps = rng.random((9, 5, 3, 4))
    H = human(rng, 9, nan_frac=0.2)
    X = FeatureMaps(maps, PoolingHead())
    iu = np.triu_indices(9, 1)
    pairs = np.array([(a, b) for a, b in zip(*iu) if not np.isnan(H[a, b])])
    res = pair_heatmaps(X, H, pairs, similarity=similarity, comparison=comparison)
    # Naive: the model RSM, the observed upper triangle, Pearson's r on (ranks of) the human side.
    E = maps.mean(axis=(2, 3))
    Z = np.corrcoef(E) if similarity == "pearson" else (E / np.linalg.norm(E, axis=1)[:, None]) @ (
        E / np.linalg.norm(E, axis=1)[:, None]).T
    z, h = Z[pairs[:, 0], pairs[:, 1]], H[pairs[:, 0], pairs[:, 1]]
    h = rankdata(h) if comparison == "spearman" else h
    r = pearsonr(z, h).statistic
    assert np.isclose(res.correlation, r) and np.isclose(res.terms.sum(), r)
    terms = (z - z.mean()) * (h - h.mean()) / (len(z) * z.std() * h.std())
    np.testing.assert_allclose(res.terms, terms, atol=1e-12)
    np.testing.assert_allclose(res.map_contributions.sum(axis=1), terms, atol=1e-12)
    np.testing.assert_allclose(res.first.sum(axis=(1, 2)), terms, atol=1e-12)
    np.testing.assert_allclose(res.second.sum(axis=(1, 2)), terms, atol=1e-12)
    # The pair (j, i) draws the same maps swapped.
    swapped = pair_heatmaps(X, H, pairs[:3, ::-1], similarity=similarity, comparison=comparison)
    np.testing.assert_allclose(swapped.first, res.second[:3], atol=1e-12)


def test_one_location_naive(rng):
    """M^(i)(x) by hand for one pair, average pooling, Pearson similarity."""
    maps = rng.random((6, 3, 2, 2))
    H = human(rng, 6)
    res = pair_heatmaps(FeatureMaps(maps, PoolingHead()), H, (1, 4), comparison="pearson")
    E = maps.mean(axis=(2, 3))
    iu = np.triu_indices(6, 1)
    Et = (E - E.mean(1, keepdims=True)) / np.linalg.norm(E - E.mean(1, keepdims=True), axis=1, keepdims=True)
    z, h = (Et @ Et.T)[iu], H[iu]
    s = (H[1, 4] - h.mean()) / (len(z) * z.std() * h.std())
    cbar = np.array([np.mean(Et[iu[0], k] * Et[iu[1], k]) for k in range(3)])
    norm = np.linalg.norm(E[1] - E[1].mean())
    for x in range(2):
        for yy in range(2):
            m = s * sum((maps[1, k, x, yy] / 4 - E[1].mean() / 4) / norm * Et[4, k] - cbar[k] / 4 for k in range(3))
            assert np.isclose(res.first[0, x, yy], m)


def test_planted_pair_region_carries_the_mass():
    """Acceptance: images 0 and 1 are similar to people only through a shared planted region (a red square,
    at different places); that region carries the pair heatmap's mass (relative risk > 2) in both images."""
    rng = np.random.default_rng(0)
    n, size = 14, 48
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):  # muted textures: stripes of two low-saturation colours
        c1, c2 = rng.uniform(0.2, 0.6, 3), rng.uniform(0.2, 0.6, 3)
        stripe = ((xx * np.cos(t) + yy * np.sin(t)) // rng.integers(3, 8)) % 2
        images[t] = np.round(255 * np.where(stripe[..., None] == 1, c1, c2))
    masks = np.zeros((n, size, size), bool)
    colours = {0: (255, 0, 0), 1: (255, 0, 0)}
    colours.update({t: [(0, 255, 0), (0, 0, 255), (255, 255, 0)][t % 3] for t in range(2, n) if t % 2 == 0})
    for t, c in colours.items():  # a 14 x 14 square, ~8.5 % of the image
        r0, c0 = rng.integers(2, size - 16, 2)
        masks[t, r0:r0 + 14, c0:c0 + 14] = True
        images[t][masks[t]] = c
    A = rng.normal(size=(n, n))
    H = (A + A.T) / 2 * 0.3
    H[0, 1] = H[1, 0] = 3.0  # people find 0 and 1 alike, and nothing else structures their judgments
    np.fill_diagonal(H, 3.0)
    tr = planted_colour_transformer(size, gain=16.0)
    res = pair_heatmaps(tr.transform(images), H, (0, 1), output="original")
    assert res.terms[0] > 0
    rr_first = relative_risk(np.maximum(res.first, 0), masks[[0]], top=10)
    rr_second = relative_risk(np.maximum(res.second, 0), masks[[1]], top=10)
    assert rr_first > 2 and rr_second > 2, (rr_first, rr_second)
    # The red map carries the largest positive contribution.
    assert np.argmax(res.map_contributions[0]) == 0


def test_bad_input(rng):
    X = FeatureMaps(rng.random((5, 2, 2, 2)), PoolingHead())
    H = human(rng, 5)
    with pytest.raises(ValueError, match="different image indices"):
        pair_heatmaps(X, H, [(1, 1)])
    with pytest.raises(ValueError, match="shape"):
        pair_heatmaps(X, H, [1, 2, 3])
    with pytest.raises(TypeError, match="FeatureMaps"):
        pair_heatmaps(rng.random((5, 2)), H, [(0, 1)])
    H[0, 1] = H[1, 0] = np.nan
    with pytest.raises(ValueError, match="not judged"):
        pair_heatmaps(X, H, [(0, 1)])
