"""Similarity-matrix metrics (``sklearn_ais.metrics``): the noise ceiling against rsatoolbox and by hand."""

import warnings

import numpy as np
import pytest
from scipy import stats

from sklearn_ais import metrics
from sklearn_ais.metrics import noise_ceiling
from sklearn_ais.model_selection import mask_pairs

from ._reference import tie_runs
from .conftest import H0, X0


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


def _grouped_by_hand(S, groups, comparison):
    """Leave-one-person-out written out: every copy of a person leaves the pool; each person weighs once."""
    iu = np.triu_indices(S.shape[1], 1)
    U = S[:, iu[0], iu[1]]
    V = np.array([stats.rankdata(u) for u in U]) if comparison == "spearman" else stats.zscore(U, axis=1)
    corr = (lambda a, b: stats.spearmanr(a, b)[0]) if comparison == "spearman" else (lambda a, b: stats.pearsonr(a, b)[0])
    lower, upper = [], []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        lower.append(np.mean([corr(V[groups != g].mean(axis=0), U[s]) for s in members]))
        upper.append(np.mean([corr(V.mean(axis=0), U[s]) for s in members]))
    return np.mean(lower), np.mean(upper)


@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_copies_of_a_subject_are_one_person(rng, comparison):
    """A bootstrap draw such as [0, 0, 1, 2]: leaving one copy out and keeping the other in the pool would let the
    subject predict itself (the old, inflated lower bound)."""
    S = _subjects(rng, n_subjects=4)
    drawn = np.array([0, 0, 1, 2])
    got = noise_ceiling(S[drawn], comparison, groups=drawn)
    np.testing.assert_allclose(got, _grouped_by_hand(S[drawn], drawn, comparison), atol=1e-12)
    assert noise_ceiling(S[drawn], comparison)[0] > got[0] + 0.05  # copies as people: inflated
    # distinct subjects, one group each: the ungrouped ceiling
    np.testing.assert_allclose(noise_ceiling(S, comparison, groups=[5, 1, 7, 3]), noise_ceiling(S, comparison),
                               atol=1e-15)
    with pytest.raises(ValueError, match="one label per subject"):
        noise_ceiling(S, comparison, groups=[0, 1])
    with pytest.raises(ValueError, match="at least 2 subjects"):
        noise_ceiling(S, comparison, groups=[0, 0, 0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("comparison, method", [("spearman", "spearman"), ("pearson", "corr"), ("cosine", "cosine")])
@pytest.mark.parametrize("n_subjects", [16, 4])
def test_grouped_noise_ceiling_equals_rsatoolbox_on_bootstrap_draws(data_home, comparison, method, n_subjects):
    """rsatoolbox's boot_noise_ceiling on RDMs.subsample('index', idx) (copies grouped by their index), with the
    images resampled too (subsample_pattern: the pairs of an image with its copy are NaN). The 92-image data here
    hold the 16 behavioural subjects only (no IT fMRI RDMs): the 4-subject case is the first 4 of them."""
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from sklearn_ais.alignment._bootstrap import bootstrap_target
    from sklearn_ais.datasets import load_kriegeskorte92

    R = load_kriegeskorte92(data_home=data_home).subject_dissimilarities[:n_subjects]
    rdms = rsatoolbox.rdm.RDMs(np.stack([r[np.triu_indices(92, 1)] for r in R]))
    rng = np.random.default_rng(n_subjects)
    for draw in range(3):
        drawn = rng.integers(n_subjects, size=n_subjects)
        if draw == 0:
            drawn[1] = drawn[0]  # at least one duplicate
        images = np.sort(rng.integers(92, size=92)) if draw else np.arange(92)
        want = rsatoolbox.inference.boot_noise_ceiling(
            rdms.subsample("index", drawn).subsample_pattern("index", images), method=method)
        S = np.stack([bootstrap_target(np.where(np.eye(92, dtype=bool), np.nan, r), images) for r in R[drawn]])
        np.testing.assert_allclose(noise_ceiling(S, comparison, groups=drawn), want, atol=1e-9)


def test_kendall_upper_bound_is_not_a_true_bound():
    """What the docstring says: with tied judgments, breaking the pooled ranks' ties beats the tau-a "upper bound"."""
    from sklearn_ais._similarity import correlation

    assert "not a true upper bound" in " ".join(noise_ceiling.__doc__.split())
    rng = np.random.default_rng(0)
    iu = np.triu_indices(6, 1)
    for _ in range(30):
        U = rng.integers(0, 3, size=(3, len(iu[0]))).astype(float)  # three subjects, three rating levels
        S = np.zeros((3, 6, 6))
        S[:, iu[0], iu[1]] = U
        S = S + S.transpose(0, 2, 1)
        upper = noise_ceiling(S, "kendall_tau_a")[1]
        pooled = np.mean([stats.rankdata(u) for u in U], axis=0)
        beaten = [np.mean([correlation(pooled + 1e-3 * U[c], u, "kendall_tau_a") for u in U]) > upper + 1e-9
                  for c in range(3)]
        if any(beaten):
            return
    pytest.fail("no model beat the tau-a upper bound")


# ---------------------------------------------------------------------------
# Bad input, a constant model side, missing pairs
# ---------------------------------------------------------------------------
Z0 = metrics.similarity_matrix(X0)


@pytest.mark.parametrize(
    "f, args, exc, match",
    [
        (metrics.second_order_isomorphism, (Z0, np.full((12, 12), np.nan)), ValueError, "0 observed"),
        (metrics.second_order_isomorphism, (Z0, np.ones((12, 12))), ValueError, "constant"),
        (metrics.second_order_isomorphism, (Z0, np.where(H0 > 1, np.inf, H0)), ValueError, "inf"),
        (metrics.second_order_isomorphism, (np.where(Z0 > 0.5, np.inf, Z0), H0), ValueError, "inf"),
        (metrics.second_order_isomorphism, (np.where(Z0 > 0.5, np.nan, Z0), H0), ValueError, "NaN"),
        (metrics.second_order_isomorphism, (Z0[:5], H0), ValueError, "square"),
        (metrics.second_order_isomorphism, (Z0[:2, :2], H0[:2, :2]), ValueError, "at least 3 x 3"),
        (metrics.second_order_isomorphism, (Z0, H0[:6, :6]), ValueError, "shapes differ"),
        (metrics.second_order_isomorphism, (Z0, H0, "kendall"), ValueError, "comparison"),
        (metrics.alignment_score, (X0[:, 0], H0), ValueError, "2-D"),
        (metrics.alignment_score, (np.where(X0 > 1, np.nan, X0), H0), ValueError, "NaN or inf"),
        (metrics.alignment_score, (X0[:5], H0), ValueError, "shapes differ"),
        (metrics.alignment_score, (X0, H0, "euclid"), ValueError, "similarity"),
        (metrics.noise_ceiling, (H0[None],), ValueError, "at least 2 subjects"),
        (metrics.noise_ceiling, (H0,), ValueError, "n_subjects, n, n"),
        (metrics.noise_ceiling, (np.stack([H0, np.where(H0 > 1, np.inf, H0)]),), ValueError, "inf"),
        (metrics.noise_ceiling, (np.ones((3, 2, 2)),), ValueError, "3 or more judged pairs"),
        (metrics.noise_ceiling, (np.stack([H0, H0]), "kendall"), ValueError, "'comparison' parameter of noise_ceiling must be"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
# The error comes first, with no warning before it (inf pairs once warned "invalid value encountered in subtract"
# from the symmetry check, inf - inf, before the ValueError that names the inf).
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_metrics_refuse_bad_input(f, args, exc, match):
    with pytest.raises(exc, match=match):
        f(*args)


def test_metrics_constant_model_side_warns():
    with pytest.warns(UserWarning, match="model side is constant"):
        assert np.isnan(metrics.second_order_isomorphism(np.ones((12, 12)), H0))


def test_metrics_with_missing_pairs_equal_the_observed_pairs_only():
    H = mask_pairs(H0, np.arange(0, 66, 2))  # half the pairs missing
    iu = np.triu_indices(12, 1)
    ok = ~np.isnan(H[iu])
    want = stats.spearmanr(tie_runs(Z0[iu][ok]), H[iu][ok]).statistic
    assert metrics.second_order_isomorphism(Z0, H) == pytest.approx(want, abs=1e-12)
    assert metrics.alignment_score(X0, H) == pytest.approx(want, abs=1e-12)


def test_model_side_with_a_nan_diagonal_is_a_similarity_without_self_pairs():
    """The refusal of a zero-diagonal model side says "set its diagonal to NaN": that must then be accepted, and give
    the same 2OI as any other diagonal (self-pairs are never compared); NaN off the diagonal is still refused."""
    from scipy.stats import spearmanr

    from sklearn_ais.metrics import second_order_isomorphism

    rng = np.random.default_rng(0)
    Z, H = np.corrcoef(rng.normal(size=(12, 5))), np.corrcoef(rng.normal(size=(12, 5)))
    iu = np.triu_indices(12, 1)
    Zn = Z.copy()
    np.fill_diagonal(Zn, np.nan)
    assert np.isclose(second_order_isomorphism(Zn, H), spearmanr(Z[iu], H[iu]).statistic)
    Zn[0, 1] = Zn[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN off its diagonal"):
        second_order_isomorphism(Zn, H)
