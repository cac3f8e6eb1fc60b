"""Property-based tests of the similarity core and the ablation kernels.

Random shapes, ties, constant rows, zero columns, per-row magnitudes from
1e-6 to 1e6, and up to 50 % missing (NaN) human pairs, against scipy and the
naive references of ``tests/_reference.py`` (zero a map, re-embed,
``np.corrcoef``, scipy). Examples are few and deadlines off: the whole module
runs in well under a minute.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
from sklearn_ais._ablation import make_kernel
from sklearn_ais._similarity import batched_correlation, rankdata_torch, similarity_matrix
from sklearn_ais.backbones import PoolingHead

from ._reference import embed, naive_ais, naive_path, naive_rsm, tie_runs
from .conftest import vgg_like as _vgg_like

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no observed pair in y:UserWarning",  # random NaN masks may empty a row: expected, reported
    "ignore:.*per-image AIS is undefined:UserWarning",
    "ignore:.*is constant over the observed pairs:UserWarning",
    "ignore:Degrees of freedom:RuntimeWarning",  # numpy's corrcoef of one-unit rows (reference side)
)

PROPS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible, CI is stable
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SIMILARITIES = ["pearson", "cosine"]
COMPARISONS = ["spearman", "pearson"]


# ---------------------------------------------------------------------------
# references (scipy), with the package's documented conventions
# ---------------------------------------------------------------------------
def ref_compare(a, b, comparison):
    """Correlation over the pairs where b is observed; a constant model side -> 0.

    The tie rule: see ``_reference.tie_runs``.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~np.isnan(b)
    a, b = a[ok], b[ok]
    if b.size < 2 or np.ptp(b) == 0:
        return 0.0  # the kernels' value for an undefined row (the estimators report it as NaN)
    if np.ptp(tie_runs(a)) == 0:
        return 0.0  # constant up to round-off
    if comparison == "spearman":
        return float(stats.spearmanr(tie_runs(a), b).statistic)
    return float(stats.pearsonr(a, b).statistic)


def ref_2oi(E, H, similarity, comparison):
    iu = np.triu_indices(len(H), 1)
    return ref_compare(naive_rsm(E, similarity)[iu], H[iu], comparison)


def ref_ais(X, H, similarity, comparison):
    K = X.shape[1]
    base = ref_2oi(X, H, similarity, comparison)
    out = np.empty(K)
    for k in range(K):
        keep = np.ones(K, bool)
        keep[k] = False
        out[k] = base - ref_2oi(embed(X, keep=keep), H, similarity, comparison)
    return base, out


def ref_path(X, H, order, similarity, comparison):
    K = X.shape[1]
    out = []
    for t in range(1, K + 1):
        keep = np.zeros(K, bool)
        keep[order[:t]] = True
        out.append(ref_2oi(embed(X, keep=keep), H, similarity, comparison))
    return np.array(out)


def ref_image_scores(X, H, similarity, comparison):
    n, K = X.shape
    out = np.zeros((n, K))
    for t in range(n):
        others = np.r_[0:t, t + 1 : n]
        base = ref_compare(naive_rsm(X, similarity)[t, others], H[t, others], comparison)
        for k in range(K):
            Xt = X.copy()
            Xt[t, k] = 0
            out[t, k] = base - ref_compare(naive_rsm(Xt, similarity)[t, others], H[t, others], comparison)
    return out


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
@st.composite
def embeddings(draw, min_n=5, max_n=11, min_k=2, max_k=7):
    """(n, K) activations: per-row scale 1e-6..1e6, ties, zero columns, constant rows, duplicates."""
    n = draw(st.integers(min_n, max_n))
    K = draw(st.integers(min_k, max_k))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "relu", "ties"]))
    X = rng.normal(size=(n, K)) + draw(st.sampled_from([0.0, 1.0]))
    if kind == "relu":
        X = np.maximum(X, 0)  # many exact zeros, as after a ReLU
    elif kind == "ties":
        X = rng.integers(-2, 3, size=(n, K)).astype(float)  # heavy ties in the data and in the RSM
    if draw(st.booleans()):
        X[:, rng.integers(K)] = 0.0  # a dead unit
    if draw(st.booleans()):
        X[rng.integers(n)] = draw(st.sampled_from([0.0, 1.0, -3.5]))  # a constant (or zero) row
    if K >= 3 and draw(st.booleans()):
        a, b = rng.choice(K, 2, replace=False)
        X[:, b] = X[:, a]  # duplicated unit: tied AIS
    if draw(st.booleans()):
        X *= 10.0 ** rng.uniform(-6, 6, size=(n, 1))  # per-row magnitudes 1e-6 .. 1e6
    if draw(st.booleans()):
        X *= 10.0 ** rng.uniform(-3, 0, size=(1, K))  # units of very different magnitudes
    return X


@st.composite
def human(draw, n, max_nan=0.5):
    """A symmetric human matrix with ties and up to ``max_nan`` missing pairs (>= 3 observed, not constant)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = rng.normal(size=(n, n))
    H = (A + A.T) / 2
    if draw(st.booleans()):
        H = np.round(H * 2) / 2  # ties on the human side
    frac = draw(st.floats(0.0, max_nan))
    iu = np.triu_indices(n, 1)
    drop = rng.random(len(iu[0])) < frac
    H[iu[0][drop], iu[1][drop]] = np.nan
    H[iu[1][drop], iu[0][drop]] = np.nan
    obs = H[iu][~np.isnan(H[iu])]
    assume(obs.size >= 3 and np.ptp(obs) > 0)
    return H


# ---------------------------------------------------------------------------
# similarity core
# ---------------------------------------------------------------------------
@PROPS
@given(
    B=st.integers(1, 4),
    m=st.integers(1, 40),
    levels=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_rankdata_matches_scipy(B, m, levels, seed):
    x = np.random.default_rng(seed).integers(0, levels, size=(B, m)).astype(np.float64)  # ties when levels < m
    got = rankdata_torch(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(got, stats.rankdata(x, axis=1))


@PROPS
@given(
    B=st.integers(1, 4),
    m=st.integers(2, 60),
    levels=st.integers(1, 12),
    jitter=st.sampled_from([0.0, 1e-15, 3e-14, 1e-11]),
    scale=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_model_spearman_tie_rule_matches_reference(B, m, levels, jitter, scale, seed):
    """CPU keys, CPU argsort fallback (|c| > 1) and the torch ranks all follow ``tie_runs``."""
    from sklearn_ais._similarity import TargetVector, model_ranks_torch

    rng = np.random.default_rng(seed)
    c = rng.integers(0, levels, size=(B, m)) / levels * 2 - 1 + jitter * rng.standard_normal((B, m))
    c = np.clip(c, -1, 1) * scale
    h = rng.standard_normal(m)
    tv = TargetVector(h, "spearman")
    want = np.array([ref_compare(row, h, "spearman") for row in c])
    np.testing.assert_allclose(tv.correlate(torch.as_tensor(c)).numpy(), want, atol=1e-12)
    ranks = model_ranks_torch(torch.as_tensor(c)).numpy()
    np.testing.assert_array_equal(ranks, stats.rankdata(np.stack([tie_runs(row) for row in c]), axis=1))


@pytest.mark.parametrize("similarities, scale", [(True, 1.0), (False, 1.0), (False, 30.0)])
def test_spearman_long_rows_in_segments_equal_whole_rows(monkeypatch, similarities, scale):
    """Rows longer than a block go through the element-wise passes in segments; ties that
    straddle a segment boundary are corrected like any other."""
    import sklearn_ais._similarity as sim

    rng = np.random.default_rng(3)
    m = 200
    c = np.round(rng.uniform(-1, 1, size=(5, m)), 2)  # many ties, some across boundaries
    c[1] = np.sort(c[1])  # long tie runs in sorted order
    c[2] = 0.5  # one run: constant
    c[3, 60:75] = c[3, 59] + 1e-14  # mathematically tied, by round-off
    c *= scale  # 30: values outside [-1, 1] take the argsort route
    h = rng.standard_normal(m)
    want = np.array([ref_compare(row, h, "spearman") for row in c])
    tv = sim.TargetVector(h, "spearman", similarities=similarities)
    whole = tv.correlate(torch.as_tensor(c)).numpy()
    monkeypatch.setattr(sim, "_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(sim, "_SEGMENT", 16)
    segmented = sim.TargetVector(h, "spearman", similarities=similarities).correlate(torch.as_tensor(c)).numpy()
    np.testing.assert_allclose(whole, want, atol=1e-12)
    np.testing.assert_allclose(segmented, want, atol=1e-12)


def test_spearman_beyond_int64_sums_matches_scipy():
    """2.2 million pairs (n ~ 2100 images): sums of m^3 no longer fit in int64."""
    from sklearn_ais._similarity import TargetVector

    rng = np.random.default_rng(5)
    m = 2_200_000
    h = rng.standard_normal(m)
    c = np.round(0.6 * h + rng.standard_normal(m), 3)[None] / 10  # in [-1, 1], heavy ties
    got = float(TargetVector(h, "spearman", similarities=True).correlate(torch.as_tensor(c))[0])
    assert got == pytest.approx(stats.spearmanr(tie_runs(c[0]), h).statistic, abs=1e-12)


def test_tie_rule_keeps_mathematical_ties_and_separates_real_gaps():
    from sklearn_ais._similarity import TargetVector

    h = np.arange(6.0)
    tv = TargetVector(h, "spearman")
    # 0.5 - 5e-13 + ulp-level noise: straddles the 12th decimal, still one tie.
    tied = np.array([[0.1, 0.2, 0.5 - 5e-13 - 1e-16, 0.5 - 5e-13 + 1e-16, 0.7, 0.9]])
    want = stats.spearmanr([0, 1, 2, 2, 3, 4], h).statistic
    assert float(tv.correlate(torch.as_tensor(tied))[0]) == pytest.approx(want, abs=1e-15)
    apart = tied.copy()
    apart[0, 3] += 2e-12  # a real gap (about 9 grid steps): distinct values
    assert float(tv.correlate(torch.as_tensor(apart))[0]) == pytest.approx(1.0, abs=1e-15)
    # A chain of near-equal values is one run: constant under Pearson comparison too.
    chain = (0.3 + 8e-13 * np.arange(6))[None]
    assert float(TargetVector(h, "pearson").correlate(torch.as_tensor(chain))[0]) == 0.0
    assert float(tv.correlate(torch.as_tensor(chain))[0]) == 0.0


@PROPS
@given(E=embeddings(min_n=2, max_n=12, min_k=1, max_k=9), similarity=st.sampled_from(SIMILARITIES))
def test_similarity_matrix_matches_numpy(E, similarity):
    Z = similarity_matrix(E, similarity)
    np.testing.assert_allclose(Z, naive_rsm(E, similarity), atol=1e-10)
    np.testing.assert_array_equal(Z, Z.T)
    np.testing.assert_array_equal(np.diag(Z), 1.0)
    assert np.isfinite(Z).all() and np.abs(Z).max() <= 1.0


@PROPS
@given(
    E=embeddings(min_n=3, max_n=10),
    similarity=st.sampled_from(SIMILARITIES),
    exponent=st.sampled_from([-300, -150, -60, 60, 150, 300]),
)
def test_similarity_is_scale_free_even_at_extreme_magnitudes(E, similarity, exponent):
    """Power-of-two rescaling is exact: bit-identical, where squares would over/underflow."""
    rng = np.random.default_rng(0)
    scale = 2.0 ** (exponent + rng.integers(-20, 21, size=(len(E), 1)))
    np.testing.assert_array_equal(similarity_matrix(E * scale, similarity), similarity_matrix(E, similarity))


@PROPS
@given(
    B=st.integers(1, 4),
    m=st.integers(3, 40),
    grid=st.sampled_from([0, 1, 4]),
    constant_row=st.booleans(),
    nan_frac=st.floats(0.0, 0.5),
    comparison=st.sampled_from(COMPARISONS),
    seed=st.integers(0, 2**32 - 1),
)
def test_batched_correlation_matches_scipy_on_observed_pairs(B, m, grid, constant_row, nan_frac, comparison, seed):
    rng = np.random.default_rng(seed)
    C = np.tanh(rng.normal(size=(B, m)))  # similarities live in [-1, 1]
    if grid:
        C = np.round(C * grid) / grid  # ties on the model side
    if constant_row:
        C[0] = C[0, 0]
    t = rng.normal(size=m)
    if grid:
        t = np.round(t * grid) / grid  # ties on the human side
    t[rng.random(m) < nan_frac] = np.nan
    obs = ~np.isnan(t)
    assume(obs.sum() >= 3 and np.ptp(t[obs]) > 0)
    got = batched_correlation(C, t, comparison)
    want = [ref_compare(c, t, comparison) for c in C]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # missing pairs are exactly "not there": same bits as dropping them first
    np.testing.assert_array_equal(got, batched_correlation(C[:, obs], t[obs], comparison))
    if constant_row:
        assert got[0] == 0.0


# ---------------------------------------------------------------------------
# ablation kernels (rank-one updates) vs the naive algorithm
# ---------------------------------------------------------------------------
@PROPS
@given(data=st.data(), similarity=st.sampled_from(SIMILARITIES), comparison=st.sampled_from(COMPARISONS))
def test_pooled_kernels_match_naive(data, similarity, comparison):
    X = data.draw(embeddings())
    H = data.draw(human(len(X)))
    iu = np.triu_indices(len(X), 1)
    problem = make_kernel(X, similarity, "cpu")
    target = problem.target(H[iu], comparison)
    base, loo = problem.leave_one_out(target)
    ais = base - loo
    ref_base, ref = ref_ais(X, H, similarity, comparison)
    np.testing.assert_allclose(base, ref_base, atol=1e-9)
    np.testing.assert_allclose(ais, ref, atol=1e-9)
    assert (ais[~X.any(axis=0)] == 0).all()  # a dead unit has exactly no effect
    order = np.argsort(-ais, kind="stable")
    path = problem.sweep(order, target, np.arange(1, X.shape[1] + 1))
    np.testing.assert_allclose(path, ref_path(X, H, order, similarity, comparison), atol=1e-9)
    np.testing.assert_allclose(path[-1], base, atol=1e-12)


@PROPS
@given(data=st.data(), similarity=st.sampled_from(SIMILARITIES), comparison=st.sampled_from(COMPARISONS))
def test_per_image_kernel_matches_naive(data, similarity, comparison):
    X = data.draw(embeddings(max_n=9, max_k=5))
    H = data.draw(human(len(X), max_nan=0.3))
    base, ablated = make_kernel(X, similarity, "cpu").per_image(H, comparison)
    np.testing.assert_allclose(base[:, None] - ablated, ref_image_scores(X, H, similarity, comparison), atol=1e-9)


@PROPS
@given(data=st.data(), similarity=st.sampled_from(SIMILARITIES), comparison=st.sampled_from(COMPARISONS))
def test_selector_with_missing_pairs_equals_reference_on_observed_pairs(data, similarity, comparison):
    X = data.draw(embeddings(min_n=6))
    H = data.draw(human(len(X)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined 2OI is announced; checked below
        sel = AISSelector(similarity=similarity, comparison=comparison, device="cpu").fit(X, H)
    ref_base, ref = ref_ais(X, H, similarity, comparison)
    iu = np.triu_indices(len(X), 1)
    observed = ~np.isnan(H[iu])
    if np.ptp(tie_runs(naive_rsm(X, similarity)[iu][observed])) == 0:  # constant model: undefined, not 0
        assert np.isnan(sel.baseline_score_) and np.isnan(sel.scores_).all()
        return
    np.testing.assert_allclose(sel.baseline_score_, ref_base, atol=1e-9)
    np.testing.assert_allclose(sel.scores_, ref, atol=1e-9)
    assert np.isfinite(sel.scores_).all() and np.isfinite(sel.path_scores_[-1])
    # documented tie rule: ranking = stable descending sort of scores (lower index first)
    np.testing.assert_array_equal(np.argsort(sel.ranking_), np.argsort(-sel.scores_, kind="stable"))


@PROPS
@given(data=st.data(), comparison=st.sampled_from(COMPARISONS))
def test_image_without_judgments_is_the_same_as_no_image(data, comparison):
    """An image whose human row is all NaN contributes nothing: scores equal those without it."""
    X = data.draw(embeddings(min_n=7, max_n=10))
    H = data.draw(human(len(X), max_nan=0.2))
    t = data.draw(st.integers(0, len(X) - 1))
    H[t, :] = H[:, t] = np.nan
    rest = np.r_[0:t, t + 1 : len(X)]
    Hr = H[np.ix_(rest, rest)]
    obs = Hr[np.triu_indices(len(rest), 1)]
    obs = obs[~np.isnan(obs)]
    assume(obs.size >= 3 and np.ptp(obs) > 0)
    with pytest.warns(UserWarning, match=rf"no observed pair in y \(rows \[{t}\]\)"):
        sel = AISSelector(comparison=comparison, device="cpu").fit(X, H)
    ref = AISSelector(comparison=comparison, device="cpu").fit(X[rest], Hr)
    np.testing.assert_allclose(sel.scores_, ref.scores_, atol=1e-12)
    np.testing.assert_allclose(sel.path_scores_, ref.path_scores_, atol=1e-12)
    # per image: the other rows are unchanged, the empty row is reported as undefined (NaN), not 0
    maps = X[:, :, None, None].astype(np.float32)
    with pytest.warns(UserWarning, match="per-image AIS is undefined"):
        hm = AISHeatmapper(comparison=comparison, device="cpu").fit(FeatureMaps(maps, PoolingHead()), H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # other rows may be undefined too (few pairs)
        hm_ref = AISHeatmapper(comparison=comparison, device="cpu").fit(FeatureMaps(maps[rest], PoolingHead()), Hr)
    assert np.isnan(hm.image_scores_[t]).all() and np.isnan(hm.image_base_scores_[t])
    both = np.isfinite(hm_ref.image_scores_).all(axis=1)
    np.testing.assert_allclose(hm.image_scores_[rest][both], hm_ref.image_scores_[both], atol=1e-6)


@PROPS
@given(data=st.data(), similarity=st.sampled_from(SIMILARITIES))
def test_selector_invariances(data, similarity):
    """Power-of-two row scales: bit-identical; any positive row scale or image order: same scores.

    Arbitrary scales perturb the last bits of the model similarities, so they are
    checked with the Pearson comparison: with Spearman, a tie whose value lies within
    ~1e-15 of a 12-decimal rounding boundary may split (the documented tie rule's limit).
    """
    X = data.draw(embeddings(min_n=6))
    H = data.draw(human(len(X)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))

    def fit(X, H, comparison="spearman"):
        return AISSelector(similarity=similarity, comparison=comparison, device="cpu").fit(X, H)

    a = fit(X, H)
    b = fit(X * 2.0 ** rng.integers(-200, 200, size=(len(X), 1)), H)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    np.testing.assert_array_equal(a.ranking_, b.ranking_)
    c = fit(X * 10.0 ** rng.uniform(-6, 6, size=(len(X), 1)), H, "pearson")
    np.testing.assert_allclose(c.scores_, fit(X, H, "pearson").scores_, atol=1e-9)
    p = rng.permutation(len(X))
    d = fit(X[p], H[np.ix_(p, p)], "pearson")
    np.testing.assert_allclose(d.scores_, c.scores_, atol=1e-9)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(data=st.data(), kind=st.sampled_from(["mlp", "generic"]), comparison=st.sampled_from(COMPARISONS))
def test_network_head_kernels_match_naive(data, kind, comparison):
    """VGG-style (first-layer update) and generic (batched brute force) heads, float32 like the network."""
    from torch import nn

    from sklearn_ais.backbones import ModuleHead

    n = data.draw(st.integers(5, 9))
    K = data.draw(st.integers(2, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    maps = np.maximum(rng.normal(size=(n, K, 4, 4)), 0).astype(np.float32)
    maps[rng.integers(n), rng.integers(K)] = 0  # a map dead in one image: skipped by the MLP kernel
    if data.draw(st.booleans()):
        maps[:, rng.integers(K)] = 0  # dead everywhere
    if kind == "mlp":
        head = _vgg_like(K=K, seed=int(rng.integers(1000)))
    else:
        torch.manual_seed(int(rng.integers(1000)))
        head = ModuleHead(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * K, 6), nn.Tanh()))
    H = data.draw(human(n))
    iu = np.triu_indices(n, 1)
    problem = make_kernel(FeatureMaps(maps, head), "pearson", "cpu")
    target = problem.target(H[iu], comparison)
    base, loo = problem.leave_one_out(target)
    ref_base, ref = naive_ais(maps, H, "pearson", comparison, head=head)
    np.testing.assert_allclose(base, ref_base, atol=1e-6)
    np.testing.assert_allclose(base - loo, ref, atol=1e-6)
    order = np.argsort(-(base - loo), kind="stable")
    np.testing.assert_allclose(problem.sweep(order, target, np.arange(1, K + 1)),
                               np.nan_to_num(naive_path(maps, H, order, "pearson", comparison, head)), atol=1e-6)
