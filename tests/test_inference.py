"""Honest inference: the permutation test of a cross-validated selection (and its calibration under the null)."""

import numpy as np
import pytest
from scipy import stats

from sklearn_ais import AISSelector
from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment


def _data(rng, n=18, K=6, effect=True):
    X = rng.normal(size=(n, K))
    if effect:  # people judge by the first two units (plus noise); the other units only blur the model
        H = np.corrcoef(X[:, :2] + 0.2 * rng.normal(size=(n, 2)))
    else:  # people judge by something the model does not see
        H = np.corrcoef(rng.normal(size=(n, 3)))
    return X, H


class _SlowSelector(AISSelector):
    """Overrides fit, so the permutation test takes the generic path (public fit/score/score_all)."""

    def fit(self, X, y):
        return super().fit(X, y)


def test_permutation_test_by_hand(rng):
    X, H = _data(rng)
    res = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=3, n_permutations=9, random_state=1)
    observed = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=3, random_state=1).table
    assert res.observed == pytest.approx((observed.test_score_selected - observed.test_score_full).mean())
    # each null value: the same cross-validation with the images' judgments permuted (same permutations)
    perm_rng = np.random.RandomState(1)  # the permutations of random_state=1, in order
    for b, value in enumerate(res.null[:3]):
        p = perm_rng.permutation(len(H))
        t = cross_validate_alignment(AISSelector(device="cpu"), X, H[np.ix_(p, p)], cv=3, random_state=1).table
        assert value == pytest.approx((t.test_score_selected - t.test_score_full).mean(), abs=1e-12), b
    assert res.p_value == (1 + np.sum(res.null >= res.observed)) / 10


def test_fast_path_generic_path_and_parallel_agree(rng):
    X, H = _data(rng)
    kw = dict(cv=3, n_permutations=6, random_state=2)
    fast = permutation_test_alignment(AISSelector(device="cpu"), X, H, **kw)
    generic = permutation_test_alignment(_SlowSelector(device="cpu"), X, H, **kw)
    parallel = permutation_test_alignment(AISSelector(device="cpu"), X, H, n_jobs=2, **kw)
    np.testing.assert_array_equal(fast.null, generic.null)
    np.testing.assert_array_equal(fast.null, parallel.null)
    assert fast.observed == generic.observed == parallel.observed


def test_planted_effect_is_detected():
    X, H = _data(np.random.default_rng(1), n=40, K=20, effect=True)
    res = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=4, n_permutations=99)
    assert res.observed > 0.1 and res.p_value < 0.05


@pytest.mark.slow
def test_null_p_values_are_uniform():
    """Under the null (the model sees nothing of what people judge) the p-value is uniform: a KS test over 50
    independent null datasets does not reject at 0.01."""
    ps = []
    for seed in range(50):
        X, H = _data(np.random.default_rng(1000 + seed), n=16, effect=False)
        ps.append(permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=3, n_permutations=19,
                                             random_state=seed).p_value)
    # p-values of a permutation test are discrete (multiples of 1/20): compare with the discrete uniform
    grid = np.arange(1, 21) / 20
    assert stats.kstest(ps, lambda q: np.searchsorted(grid, q, side="right") / 20).pvalue > 0.01
