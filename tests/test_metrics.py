"""Similarity-matrix metrics (``sklearn_ais.metrics``): the noise ceiling against rsatoolbox and by hand."""

import warnings

import numpy as np
import pytest

from sklearn_ais.metrics import noise_ceiling


def _subjects(rng, n_subjects=6, n=14, noise=0.5):
    truth = np.corrcoef(rng.normal(size=(n, 5)))
    out = []
    for s in range(n_subjects):
        A = rng.normal(size=(n, n))
        out.append((1 + s) * (truth + noise * (A + A.T)))  # subjects differ in scale
    return np.stack(out)


def _by_hand(S, comparison, pooling):
    """Leave-one-subject-out, written out with scipy (no missing pairs)."""
    from scipy import stats

    iu = np.triu_indices(S.shape[1], 1)
    U = S[:, iu[0], iu[1]]
    if pooling == "nili":
        U_pool = np.array([stats.rankdata(u) for u in U]) if comparison == "spearman" else stats.zscore(U, axis=1)
    else:
        U_pool = U
    corr = (lambda a, b: stats.spearmanr(a, b)[0]) if comparison == "spearman" else (lambda a, b: stats.pearsonr(a, b)[0])
    upper = np.mean([corr(U_pool.mean(axis=0), U[s]) for s in range(len(U))])
    lower = np.mean([corr(np.delete(U_pool, s, axis=0).mean(axis=0), U[s]) for s in range(len(U))])
    return lower, upper


@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
@pytest.mark.parametrize("pooling", ["nili", "mean"])
def test_noise_ceiling_by_hand(rng, comparison, pooling):
    S = _subjects(rng)
    np.testing.assert_allclose(noise_ceiling(S, comparison, pooling=pooling), _by_hand(S, comparison, pooling),
                               atol=1e-12)


def test_nili_pooling_differs_from_raw_means_when_scales_differ(rng):
    S = _subjects(rng)
    assert abs(noise_ceiling(S)[0] - noise_ceiling(S, pooling="mean")[0]) > 1e-4


def test_pair_judged_by_one_subject_does_not_raise(rng):
    S = _subjects(rng)
    S[1:, 0, 1] = S[1:, 1, 0] = np.nan  # only subject 0 judged pair (0, 1)
    S[2, 3, 4] = S[2, 4, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = noise_ceiling(S)
    assert np.isfinite([lo, hi]).all() and lo < hi


def test_constant_subject_is_left_out_with_a_warning(rng):
    S = _subjects(rng)
    S[2] = 1.0
    with pytest.warns(UserWarning, match="left out of the noise ceiling"):
        lo, hi = noise_ceiling(S)
    assert np.isfinite([lo, hi]).all()


@pytest.mark.slow
@pytest.mark.parametrize("comparison, method", [("spearman", "spearman"), ("pearson", "corr")])
def test_noise_ceiling_equals_rsatoolbox_on_the_92_photos(data_home, comparison, method):
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from sklearn_ais.datasets import load_kriegeskorte92

    R = load_kriegeskorte92(data_home=data_home).subject_dissimilarities
    rdms = rsatoolbox.rdm.RDMs(np.stack([r[np.triu_indices(92, 1)] for r in R]))
    want = rsatoolbox.inference.boot_noise_ceiling(rdms, method=method)
    np.testing.assert_allclose(noise_ceiling(R, comparison), want, atol=1e-9)
    raw = noise_ceiling(R, comparison, pooling="mean")
    assert np.abs(np.subtract(raw, want)).max() > 1e-4  # the raw mean is a different (the old) number
