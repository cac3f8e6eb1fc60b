"""FeatureReweighting: closed-form ridge on the pair design, NNLS, inner image-wise CV, sklearn API."""

import pickle

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_ais import FeatureMaps
from sklearn_ais.alignment import FeatureReweighting, pair_design
from sklearn_ais.alignment._reweighting import _observed_pairs
from sklearn_ais.backbones import PoolingHead
from sklearn_ais.model_selection import similarity_frame


def _sym(rng, n):
    A = rng.normal(size=(n, n))
    return (A + A.T) / 2


def _closed_form(X, H, alpha, fit_intercept=True):
    """Ridge on the design of observed pairs, by the normal equations."""
    i, j = np.triu_indices(len(X), 1)
    ok = ~np.isnan(H[i, j])
    Z = X[i[ok]] * X[j[ok]]
    t = H[i[ok], j[ok]]
    if fit_intercept:
        zbar, tbar = Z.mean(0), t.mean()
    else:
        zbar, tbar = np.zeros(Z.shape[1]), 0.0
    Zc, tc = Z - zbar, t - tbar
    w = np.linalg.solve(Zc.T @ Zc + alpha * np.eye(Z.shape[1]), Zc.T @ tc)
    return w, tbar - zbar @ w, Z, t


@parametrize_with_checks([FeatureReweighting(), FeatureReweighting(positive=True, alpha=1.0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_pair_design_order():
    X = np.arange(12.0).reshape(4, 3)
    i, j = np.triu_indices(4, 1)
    np.testing.assert_array_equal(pair_design(X), X[i] * X[j])


@pytest.mark.parametrize("n,D", [(14, 5), (8, 40)])  # primal (pairs > features) and dual (pairs < features)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_closed_form_ridge(rng, n, D, fit_intercept):
    X = rng.normal(size=(n, D))
    H = _sym(rng, n)
    for alpha in (0.7, 25.0):
        rw = FeatureReweighting(alpha=alpha, standardize=False, fit_intercept=fit_intercept).fit(X, H)
        w, b, Z, t = _closed_form(X, H, alpha, fit_intercept)
        np.testing.assert_allclose(rw.coef_, w, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(rw.intercept_, b, rtol=1e-8, atol=1e-10)
        # ... which is scikit-learn's Ridge on the same design.
        ridge = Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="svd").fit(Z, t)
        np.testing.assert_allclose(rw.coef_, ridge.coef_, rtol=1e-6, atol=1e-9)
        S = rw.predict_similarity(X)
        i, j = np.triu_indices(n, 1)
        np.testing.assert_allclose(S[i, j], Z @ w + b, rtol=1e-8, atol=1e-10)


def test_path_over_alphas_matches_single_solves(rng):
    """The eigendecomposition path (inner CV) and the Cholesky solve (final fit) agree."""
    from sklearn_ais.alignment._reweighting import _PairRegression

    for n, D in [(12, 4), (7, 30)]:
        X = rng.normal(size=(n, D))
        H = _sym(rng, n)
        i, j = np.triu_indices(n, 1)
        prob = _PairRegression(X, i, j, H[i, j], True)
        alphas = [0.1, 1.0, 10.0]
        W, _ = prob.path(alphas, positive=False)
        for a, alpha in enumerate(alphas):
            np.testing.assert_allclose(W[:, a], _closed_form(X, H, alpha)[0], rtol=1e-7, atol=1e-10)


def test_standardize_is_ridge_on_zscored_features(rng):
    X = rng.normal(size=(12, 4)) * [1, 10, 100, 0.1] + 3
    H = _sym(rng, 12)
    rw = FeatureReweighting(alpha=2.0, standardize=True).fit(X, H)
    Xs = (X - X.mean(0)) / X.std(0)
    w, b, _, _ = _closed_form(Xs, H, 2.0)
    np.testing.assert_allclose(rw.coef_, w, rtol=1e-8)
    np.testing.assert_allclose(rw.transform(X), Xs * np.sqrt(np.clip(w, 0, None)), rtol=1e-8)


def test_nan_pairs_are_skipped(rng):
    n = 12
    X = rng.normal(size=(n, 4))
    H = _sym(rng, n)
    Hn = H.copy()
    for a, b in [(0, 3), (2, 7), (5, 11), (1, 2)]:
        Hn[a, b] = Hn[b, a] = np.nan
    rw = FeatureReweighting(alpha=1.0, standardize=False).fit(X, Hn)
    w, b, _, _ = _closed_form(X, Hn, 1.0)
    np.testing.assert_allclose(rw.coef_, w, rtol=1e-8)
    assert rw.n_pairs_ == n * (n - 1) // 2 - 4


def test_positive_matches_nnls(rng):
    n, D, alpha = 12, 5, 0.5
    X = rng.normal(size=(n, D))
    w_true = np.array([2.0, 0.0, 1.0, 0.0, 0.5])
    H = (X * w_true) @ X.T + 0.3 * _sym(rng, n)
    rw = FeatureReweighting(alpha=alpha, positive=True, standardize=False).fit(X, H)
    _, _, Z, t = _closed_form(X, H, alpha)
    Zc, tc = Z - Z.mean(0), t - t.mean()
    A = np.vstack([Zc, np.sqrt(alpha) * np.eye(D)])
    ref, _ = optimize.nnls(A, np.r_[tc, np.zeros(D)])
    assert (rw.coef_ >= 0).all()
    np.testing.assert_allclose(rw.coef_, ref, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(rw.intercept_, t.mean() - Z.mean(0) @ rw.coef_)
    # Non-negative weights: dot products of the transform reproduce the prediction.
    T = rw.transform(X)
    np.testing.assert_allclose(T @ T.T + rw.intercept_, rw.predict_similarity(X), rtol=1e-10)


def test_inner_cv_pairs_are_image_wise():
    H = np.ones((6, 6))
    np.fill_diagonal(H, np.nan)
    train, val = np.array([0, 1, 2, 3]), np.array([4, 5])
    i, j = _observed_pairs(H, train)
    assert set(zip(i, j)) == {(a, b) for a in range(4) for b in range(a + 1, 4)}
    vi, vj = _observed_pairs(H, involving=(train, val))
    pairs = set(zip(vi, vj))
    assert all(a in val or b in val for a, b in pairs)
    assert pairs.isdisjoint(set(zip(i, j)))
    assert len(pairs) == 15 - 6


def test_auto_alpha_recovers_planted_weights(rng):
    n, D = 40, 12
    X = rng.normal(size=(n, D))
    w_true = np.zeros(D)
    w_true[:3] = [3.0, 2.0, 1.0]
    H = (X * w_true) @ X.T + 0.5 * _sym(rng, n)
    train, test = np.arange(30), np.arange(30, 40)
    rw = FeatureReweighting(standardize=False).fit(X[train], H[np.ix_(train, train)])
    assert rw.alpha_ in rw.alphas_ and rw.cv_scores_.shape == rw.alphas_.shape
    assert np.argsort(-rw.coef_)[:3].tolist() == [0, 1, 2]
    held_out = rw.score(X[test], H[np.ix_(test, test)])
    iu = np.triu_indices(10, 1)
    raw = stats.spearmanr(np.corrcoef(X[test])[iu], H[np.ix_(test, test)][iu]).statistic
    assert held_out > raw + 0.2


def test_score_is_spearman_of_prediction(rng):
    X = rng.normal(size=(15, 4))
    H = _sym(rng, 15)
    rw = FeatureReweighting(alpha=1.0).fit(X, H)
    iu = np.triu_indices(15, 1)
    ref = stats.spearmanr(rw.predict_similarity(X)[iu], H[iu]).statistic
    assert rw.score(X, H) == pytest.approx(ref, abs=1e-10)
    assert FeatureReweighting(alpha=1.0, y_kind="dissimilarity").fit(X, -H).score(X, -H) == pytest.approx(ref, abs=1e-10)


def test_feature_maps_input_equals_embeddings(rng):
    maps = rng.random((10, 6, 3, 3)).astype(np.float32)
    fm = FeatureMaps(maps, PoolingHead())
    H = _sym(rng, 10)
    a = FeatureReweighting(alpha=1.0).fit(fm, H)
    b = FeatureReweighting(alpha=1.0).fit(fm.embed(), H)
    np.testing.assert_allclose(a.coef_, b.coef_)
    assert a.n_features_in_ == 6
    assert a.score(fm, H) == pytest.approx(b.score(fm.embed(), H))


def test_grid_search_with_image_wise_cv(rng):
    X = rng.normal(size=(24, 6))
    H = (X[:, :2] * [2, 1]) @ X[:, :2].T + 0.3 * _sym(rng, 24)
    gs = GridSearchCV(
        FeatureReweighting(), {"positive": [False, True], "alpha": [0.1, 10.0]}, cv=KFold(3, shuffle=True, random_state=0)
    ).fit(X, similarity_frame(H))
    assert np.isfinite(gs.best_score_)
    assert gs.best_estimator_.coef_.shape == (6,)


def test_clone_and_pickle(rng):
    X = rng.normal(size=(12, 4))
    H = _sym(rng, 12)
    rw = FeatureReweighting(positive=True, alpha=0.3).fit(X, H)
    rw2 = pickle.loads(pickle.dumps(rw))
    np.testing.assert_array_equal(rw2.predict_similarity(X), rw.predict_similarity(X))
    assert clone(rw).get_params() == rw.get_params()
    assert not hasattr(clone(rw), "coef_")


def test_errors(rng):
    X = rng.normal(size=(8, 3))
    with pytest.raises(ValueError, match="square"):
        FeatureReweighting().fit(X, np.ones((8, 5)))
    with pytest.raises(ValueError, match="alphas"):
        FeatureReweighting(alphas=[-1.0]).fit(X, _sym(rng, 8))
    with pytest.raises(ValueError, match="sample_weight"):
        FeatureReweighting(alpha=1.0).fit(X, _sym(rng, 8)).score(X, _sym(rng, 8), sample_weight=np.ones(8))
