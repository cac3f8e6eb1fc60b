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


def _subject_rdms(rng, H, n_subjects=4, noise=0.3):
    return np.stack([-(H + noise * (lambda a: a + a.T)(rng.normal(size=H.shape))) for _ in range(n_subjects)])


def _replicate_draws(random_state, b, n, n_subjects, n_splits):
    """The draws of replicate ``b`` of compare_alignment(random_state=...), in the order _replicate makes them."""
    from sklearn.utils import check_random_state

    from sklearn_ais.alignment._bootstrap import bootstrap_folds

    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max, size=b + 1)[b]
    r = np.random.RandomState(seed)
    idx = r.randint(n, size=n)
    drawn = r.randint(n_subjects, size=n_subjects)
    return idx, drawn, bootstrap_folds(idx, n_splits, r)


def test_bootstrap_subject_copies_are_one_person_and_models_are_scored_per_subject(rng):
    """One replicate by hand: the noise ceiling of the drawn subjects with every copy of a subject left out of its
    pool together (rsatoolbox's grouped boot_noise_ceiling), and the model's score the mean over drawn subjects of its
    held-out 2OI against each (not against the mean of the drawn matrices)."""
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.alignment._bootstrap import bootstrap_target
    from sklearn_ais.metrics import alignment_score, noise_ceiling

    Xs, H = _two_backbones(rng)
    subjects = _subject_rdms(rng, H)
    res = compare_alignment(Xs[:1], None, H, methods=("none",), cv=3, subject_similarities=subjects,
                            inference="bootstrap", n_bootstrap=6, random_state=3)
    oriented = -subjects  # RDMs: the package turns them into similarities
    E = Xs[0][1].embed()
    checked_duplicates = False
    for b in range(6):
        idx, drawn, folds = _replicate_draws(3, b, 20, 4, 3)
        targets = np.stack([bootstrap_target(np.where(np.eye(20, dtype=bool), np.nan, oriented[d]), idx) for d in drawn])
        want_score = np.mean([np.mean([alignment_score(E[idx][te], T[np.ix_(te, te)]) for T in targets])
                              for _, te in folds])
        assert res.bootstrap[("aligned", "none")].iloc[b] == pytest.approx(want_score, abs=1e-12)
        ceilings = [noise_ceiling(targets[:, te][:, :, te], groups=drawn) for _, te in folds]
        want_lower = np.mean([c[0] for c in ceilings])
        assert res.bootstrap[("noise ceiling", "lower")].iloc[b] == pytest.approx(want_lower, abs=1e-12)
        if len(set(drawn)) < len(drawn):  # copies counted as people would raise the lower bound
            ungrouped = np.mean([noise_ceiling(targets[:, te][:, :, te])[0] for _, te in folds])
            assert ungrouped > res.bootstrap[("noise ceiling", "lower")].iloc[b] + 1e-3
            checked_duplicates = True
    assert checked_duplicates


def test_bootstrap_estimate_is_the_replicated_statistic_on_the_original_sample(rng):
    """The intervals are centred on the point estimate of what the replicates resample: without subjects, the
    summary's held-out 2OI; with subjects, the mean over subjects of each one's held-out 2OI (the comparison's folds),
    and the noise ceiling of the comparison."""
    from sklearn.model_selection import KFold

    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.metrics import alignment_score

    Xs, H = _two_backbones(rng)
    cv = KFold(3, shuffle=True, random_state=0)
    plain = compare_alignment(Xs, None, H, methods=("none", "ais"), cv=cv, inference="bootstrap", n_bootstrap=4)
    s = plain.bootstrap_summary
    np.testing.assert_allclose(s["estimate"], s["test_2oi"], atol=1e-12)
    subjects = _subject_rdms(rng, H)
    res = compare_alignment(Xs, None, H, methods=("none",), cv=cv, subject_similarities=subjects,
                            inference="bootstrap", n_bootstrap=4)
    E = Xs[0][1].embed()
    oriented = -subjects
    for S in oriented:
        np.fill_diagonal(S, np.nan)
    want = np.mean([np.mean([alignment_score(E[te], S[np.ix_(te, te)]) for S in oriented]) for _, te in cv.split(E)])
    row = res.bootstrap_summary.set_index(["backbone", "method"]).loc[("aligned", "none")]
    assert row["estimate"] == pytest.approx(want, abs=1e-12)
    assert row["below_ceiling"] == pytest.approx(res.noise_ceiling[0] - want, abs=1e-12)


def test_bootstrap_intervals_say_how_they_are_built(rng):
    from scipy.stats import norm

    from sklearn_ais.alignment import compare_alignment

    Xs, H = _two_backbones(rng)
    kw = dict(methods=("none",), cv=3, inference="bootstrap", n_bootstrap=9, random_state=1)
    normal = compare_alignment(Xs, None, H, **kw)
    pct = compare_alignment(Xs, None, H, interval="percentile", **kw)
    v = normal.bootstrap[("aligned", "none")].to_numpy()
    row = normal.bootstrap_summary.iloc[0]
    half = norm.ppf(0.975) * np.std(v, ddof=1)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["estimate"] - half, row["estimate"] + half))
    assert row["interval"] == "normal 95 %"
    row = pct.bootstrap_summary.iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])))
    assert row["interval"] == "percentile 95 %"
    with pytest.raises(ValueError, match="interval must be one of"):
        compare_alignment(Xs, None, H, **{**kw, "interval": "bca"})


def test_bootstrap_folds_too_small_to_score_are_left_out():
    """With few images a fold of a resample's distinct images can hold one image three times and another once:
    no correlation is defined there, and the fold is left out of the replicate (every model alike)."""
    from sklearn_ais.alignment._bootstrap import _scorable, bootstrap_target

    H = np.corrcoef(np.random.default_rng(0).normal(size=(5, 3)))
    np.fill_diagonal(H, np.nan)
    for images, ok in (([0, 0, 0, 1], False), ([0, 1, 2], False), ([0, 0, 1, 2], True)):
        images = np.array(images)
        assert _scorable(images, bootstrap_target(H, images)) is ok


def test_bootstrap_fast_path_equals_fitting_fold_by_fold(rng):
    """The bootstrap scores an AISSelector through its fold_results fast path: the same values as fitting and
    scoring each fold (a subclass that overrides fit takes that generic path), with and without subjects."""
    from sklearn_ais.alignment._bootstrap import bootstrap_comparison

    Xs, H = _two_backbones(rng)
    Hv = H.copy()
    np.fill_diagonal(Hv, np.nan)
    subjects = _subject_rdms(rng, H)
    for subj in (None, subjects):
        kw = dict(n_splits=3, subjects=subj, n_bootstrap=3, random_state=5)
        fast, fast_est = bootstrap_comparison(Xs[:1], Hv, {"ais": AISSelector(device="cpu")}, **kw)
        slow, slow_est = bootstrap_comparison(Xs[:1], Hv, {"ais": _SlowSelector(device="cpu")}, **kw)
        np.testing.assert_allclose(fast.to_numpy(), slow.to_numpy(), atol=1e-12)
        assert fast_est == pytest.approx(slow_est, abs=1e-12)


def test_sequential_permutation_test_stops_as_besag_and_clifford(rng):
    """Stopped after h null gains reached the observed one: the null is the first permutations of the full run and
    p = h / (permutations run); a gain no permutation reaches runs them all, with the full run's p."""
    X, H = _data(rng, effect=False)
    full = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=3, n_permutations=40, random_state=0)
    seq = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=3, n_permutations=40, stop_after=3,
                                     random_state=0)
    reached = np.cumsum(full.null >= full.observed)
    stop = int(np.argmax(reached >= 3)) + 1
    assert reached[-1] >= 3 and seq.stopped_early and seq.n_permutations == stop
    np.testing.assert_array_equal(seq.null, full.null[:stop])
    assert seq.p_value == 3 / stop
    X, H = _data(np.random.default_rng(1), n=40, K=20, effect=True)
    full = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=4, n_permutations=30)
    seq = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=4, n_permutations=30, stop_after=3)
    assert not seq.stopped_early and seq.n_permutations == 30 and seq.p_value == full.p_value
    with pytest.raises(ValueError, match="stop_after"):
        permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=4, n_permutations=30, stop_after=0)


def test_cross_validation_permutation_test_is_the_permutation_test(rng):
    """cross_validate_alignment(test="permutation"): permutation_test_alignment's p on the same folds and
    permutations ("greater"); two-sided, the permuted gains' sizes against the observed one's."""
    from sklearn.model_selection import KFold

    X, H = _data(rng)
    cv = KFold(3, shuffle=True, random_state=0)
    kw = dict(cv=cv, test="permutation", n_permutations=19, stop_after=None, random_state=1)
    ref = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=cv, n_permutations=19, random_state=1)
    res = cross_validate_alignment(AISSelector(device="cpu"), X, H, alternative="greater", **kw)
    assert res.summary.test == "permutation" and res.summary.n_permutations == 19
    assert res.summary.p_value == ref.p_value and np.isnan(res.summary.t_statistic)
    assert "permutation test (19 permutations)" in repr(res)
    two = cross_validate_alignment(AISSelector(device="cpu"), X, H, alternative="two-sided", **kw)
    assert two.summary.p_value == (1 + np.sum(np.abs(ref.null) >= abs(ref.observed))) / 20
