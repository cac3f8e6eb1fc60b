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


# ---------------------------------------------------------------------------
# Bootstrap over stimuli (and subjects) for comparing backbones and methods
# ---------------------------------------------------------------------------
def _two_backbones(rng, n=20):
    from sklearn_ais import FeatureMaps
    from sklearn_ais.backbones import PoolingHead

    maps = rng.random((n, 8, 2, 2)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    A = rng.normal(size=(n, n))
    H = np.corrcoef(E[:, :3]) + 0.2 * (A + A.T)
    np.fill_diagonal(H, 2.0)
    other = FeatureMaps(rng.random((n, 8, 2, 2)).astype(np.float32), PoolingHead())
    return [("aligned", FeatureMaps(maps, PoolingHead())), ("unrelated", other)], H


def test_bootstrap_drops_the_pairs_of_copies_and_keeps_copies_in_one_fold():
    from sklearn_ais.alignment._bootstrap import bootstrap_folds, bootstrap_target

    H = np.arange(25, dtype=float).reshape(5, 5)
    H = H + H.T
    np.fill_diagonal(H, np.nan)
    idx = np.array([3, 1, 3, 0, 3])
    Hb = bootstrap_target(H, idx)
    copies = idx[:, None] == idx[None, :]
    assert np.isnan(Hb[copies]).all() and not np.isnan(Hb[~copies]).any()
    np.testing.assert_array_equal(Hb[~copies], H[np.ix_(idx, idx)][~copies])
    for train, test in bootstrap_folds(idx, 2, 0):
        assert not set(idx[train]) & set(idx[test])  # no image on both sides
        assert sorted(np.r_[train, test]) == list(range(5))


def test_bootstrap_replicate_by_hand(rng):
    from sklearn.utils import check_random_state

    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.alignment._bootstrap import bootstrap_folds, bootstrap_target
    from sklearn_ais.metrics import alignment_score

    Xs, H = _two_backbones(rng)
    res = compare_alignment(Xs, None, H, methods=("none",), cv=3, inference="bootstrap", n_bootstrap=5,
                            random_state=4)
    assert res.bootstrap.shape == (5, 2)
    seed = check_random_state(4).randint(np.iinfo(np.int32).max, size=5)[2]
    r = np.random.RandomState(seed)
    idx = r.randint(20, size=20)
    Hv = H.copy()
    np.fill_diagonal(Hv, np.nan)
    Hb = bootstrap_target(Hv, idx)
    E = Xs[0][1].embed()[idx]
    want = np.mean([alignment_score(E[te], Hb[np.ix_(te, te)]) for _, te in bootstrap_folds(idx, 3, r)])
    assert res.bootstrap[("aligned", "none")].iloc[2] == pytest.approx(want, abs=1e-12)
    s = res.bootstrap_summary.set_index(["backbone", "method"])
    assert s.loc[("aligned", "none"), "ci_low"] <= s.loc[("aligned", "none"), "ci_high"]


def test_bootstrap_with_subjects_resamples_them_and_bounds_the_ceiling(rng):
    from sklearn_ais.alignment import compare_alignment

    Xs, H = _two_backbones(rng)
    subjects = np.stack([-(H + 0.3 * (lambda a: a + a.T)(rng.normal(size=H.shape))) for _ in range(4)])  # RDMs
    kw = dict(methods=("none", "ais"), cv=3, subject_similarities=subjects, inference="bootstrap", n_bootstrap=8,
              random_state=0)
    res = compare_alignment(Xs, None, H, **kw)
    assert ("noise ceiling", "lower") in res.bootstrap.columns
    s = res.bootstrap_summary
    assert {"delta_ci_low", "delta_p", "below_ceiling_ci_low"} <= set(s.columns)
    np.testing.assert_array_equal(compare_alignment(Xs, None, H, n_jobs=2, **kw).bootstrap.to_numpy(),
                                  res.bootstrap.to_numpy())
    with pytest.raises(ValueError, match="do not describe the same judgments"):
        unrelated = np.stack([(lambda a: a + a.T)(rng.normal(size=H.shape)) for _ in range(4)])
        compare_alignment(Xs, None, H, **{**kw, "subject_similarities": unrelated})
