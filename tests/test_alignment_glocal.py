"""GLocalAligner: the objective against a per-triplet numpy loop, triplets, planted alignment, I/O."""

import itertools
import pickle

import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_ais import FeatureMaps
from sklearn_ais.alignment import GLocalAligner, glocal_loss, odd_one_out_accuracy, triplets_from_similarity
from sklearn_ais.backbones import PoolingHead


def _brute_force_loss(Xs, W, b, triplets, alpha, lmbda, tau):
    """The gLocal objective, one triplet and one image at a time."""
    Z = Xs @ W + b
    g = []
    for i, j, k in triplets:
        s = np.array([Z[i] @ Z[j], Z[i] @ Z[k], Z[j] @ Z[k]])
        g.append(-(s[0] - np.log(np.exp(s).sum())))
    g = np.mean(g)

    def cos(A, a, c):
        return A[a] @ A[c] / (np.linalg.norm(A[a]) * np.linalg.norm(A[c]))

    n = len(Xs)
    local = []
    for a in range(n):
        others = [c for c in range(n) if c != a]
        p = np.array([np.exp(cos(Xs, a, c) / tau) for c in others])
        p /= p.sum()
        q = np.array([np.exp(cos(Z, a, c) / tau) for c in others])
        q /= q.sum()
        local.append(-(p * np.log(q)).sum())
    local = np.mean(local)
    m = np.trace(W) / len(W)
    pen = np.sum((W - m * np.eye(len(W))) ** 2)
    return (1 - alpha) * g + alpha * local + lmbda * pen, g, local, pen


@parametrize_with_checks([GLocalAligner(max_iter=10, n_triplets=2000)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_loss_matches_brute_force(rng):
    n, D = 7, 4
    Xs = rng.normal(size=(n, D))
    W = np.eye(D) * 0.7 + 0.2 * rng.normal(size=(D, D))
    b = 0.1 * rng.normal(size=D)
    T = np.array([t for t in itertools.permutations(range(n), 3)][::5])
    for alpha, lmbda, tau in [(0.25, 0.1, 0.5), (0.0, 1.0, 1.0), (1.0, 0.0, 0.1)]:
        got = glocal_loss(Xs, W, b, T, alpha=alpha, lmbda=lmbda, tau=tau)
        total, g, loc, pen = _brute_force_loss(Xs, W, b, T, alpha, lmbda, tau)
        assert got["global"] == pytest.approx(g, rel=1e-10)
        assert got["local"] == pytest.approx(loc, rel=1e-10)
        assert got["penalty"] == pytest.approx(pen, rel=1e-10)
        assert got["loss"] == pytest.approx(total, rel=1e-10)


def test_fitted_loss_is_the_objective_at_the_fitted_parameters(rng):
    """The reduced parametrisation (W = cI + U A) reports the loss of the full W it returns."""
    X = rng.normal(size=(9, 12))  # fewer images than features: the reduced form is in use
    H = np.corrcoef(X[:, :3])
    gl = GLocalAligner(alpha=0.3, lmbda=0.5, tau=0.5, max_iter=50).fit(X, H)
    Xs = (X - gl.mean_) / gl.std_
    T = triplets_from_similarity(H)
    ref = _brute_force_loss(Xs, gl.weights_, gl.bias_, T, 0.3, 0.5, 0.5)
    assert gl.loss_["loss"] == pytest.approx(ref[0], rel=1e-8)
    # Training lowers the objective from its initialisation.
    start = _brute_force_loss(Xs, np.eye(12) / np.sqrt(12), np.zeros(12), T, 0.3, 0.5, 0.5)[0]
    assert gl.loss_["loss"] < start


def test_triplets_from_similarity_brute_force(rng):
    n = 7
    A = rng.normal(size=(n, n))
    S = (A + A.T) / 2
    S[1, 4] = S[4, 1] = np.nan
    got = {tuple(t) for t in triplets_from_similarity(S)}
    ref = set()
    for a, b, c in itertools.combinations(range(n), 3):
        sims = {(a, b): S[a, b], (a, c): S[a, c], (b, c): S[b, c]}
        if any(np.isnan(v) for v in sims.values()):
            continue
        (i, j), _ = max(sims.items(), key=lambda kv: kv[1])
        k = ({a, b, c} - {i, j}).pop()
        # the odd one out is the least similar to the other two
        assert S[k, i] + S[k, j] == min(S[x, y] + S[x, z] for x, y, z in [(a, b, c), (b, a, c), (c, a, b)])
        ref.add((i, j, k))
    assert got == ref
    assert len(triplets_from_similarity(S, n_triplets=10, random_state=0)) <= 10
    # Ties for the most similar pair are dropped.
    tied = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.2], [0.5, 0.2, 1.0]])
    assert len(triplets_from_similarity(tied)) == 0
    # Dissimilarities: the odd one out is the farthest.
    D = -S
    np.testing.assert_array_equal(triplets_from_similarity(D, y_kind="dissimilarity"), triplets_from_similarity(S))


def _planted(rng, n, D=20, k=3):
    """Humans use k low-variance features; the rest is high-variance nuisance."""
    signal = rng.normal(size=(n, k))
    X = np.hstack([signal * 0.3, rng.normal(size=(n, D - k)) * 1.0])
    H = signal @ signal.T
    return X, H


def test_planted_problem_improves_held_out_triplets(rng):
    X, H = _planted(rng, 60)
    train, test = np.arange(40), np.arange(40, 60)
    T_test = triplets_from_similarity(H[np.ix_(test, test)])
    gl = GLocalAligner(lmbda=0.01, alpha=0.1, max_iter=150).fit(X[train], H[np.ix_(train, train)])
    raw = (X[test] - gl.mean_) / gl.std_
    before = odd_one_out_accuracy(raw, T_test)
    after = odd_one_out_accuracy(gl.transform(X[test]), T_test)
    assert after > before + 0.1
    Ht = H[np.ix_(test, test)]
    iu = np.triu_indices(len(test), 1)
    raw_2oi = stats.spearmanr(np.corrcoef(X[test])[iu], Ht[iu]).statistic
    assert gl.score(X[test], Ht) > raw_2oi + 0.1


def test_triplets_fit_param(rng):
    X, H = _planted(rng, 30)
    T = triplets_from_similarity(H)
    a = GLocalAligner(max_iter=30).fit(X, H)
    b = GLocalAligner(max_iter=30).fit(X, triplets=T)
    np.testing.assert_allclose(a.weights_, b.weights_)
    assert b.n_triplets_ == len(T)
    with pytest.raises(ValueError, match="requires y"):
        GLocalAligner().fit(X)
    with pytest.raises(ValueError, match="distinct"):
        GLocalAligner().fit(X, triplets=[[0, 0, 1]])
    with pytest.raises(ValueError, match="lie in"):
        GLocalAligner().fit(X, triplets=[[0, 1, 30]])
    with pytest.raises(ValueError, match=r"\(m, 3\)"):
        GLocalAligner().fit(X, triplets=[[0, 1]])


def test_deterministic_and_adam(rng):
    X, H = _planted(rng, 20)
    a = GLocalAligner(max_iter=20).fit(X, H)
    b = GLocalAligner(max_iter=20).fit(X, H)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    c = GLocalAligner(optimizer="adam", max_iter=30, lr=1e-2).fit(X, H)
    d = GLocalAligner(optimizer="adam", max_iter=30, lr=1e-2).fit(X, H)
    np.testing.assert_array_equal(c.weights_, d.weights_)
    assert c.n_iter_ == 30
    assert c.loss_["loss"] < GLocalAligner(max_iter=0).fit(X, H).loss_["loss"]


def test_save_load_roundtrip(tmp_path, rng):
    X, H = _planted(rng, 20)
    gl = GLocalAligner(max_iter=20, fit_bias=True).fit(X, H)
    path = tmp_path / "transform.npz"
    gl.save(path)
    with np.load(path) as f:
        assert set(f.files) == {"mean", "std", "weights", "bias"}
    loaded = GLocalAligner.load(path, similarity="cosine")
    np.testing.assert_array_equal(loaded.transform(X), gl.transform(X))
    assert loaded.similarity == "cosine" and loaded.n_features_in_ == X.shape[1]
    # A transform file without bias / standardisation.
    np.savez(tmp_path / "w.npz", weights=np.eye(X.shape[1]))
    np.testing.assert_allclose(GLocalAligner.load(tmp_path / "w.npz").transform(X), X)


def test_transform_formula_and_feature_maps(rng):
    maps = rng.random((12, 5, 2, 2)).astype(np.float32)
    fm = FeatureMaps(maps, PoolingHead())
    H = np.corrcoef(fm.embed()[:, :2])
    gl = GLocalAligner(max_iter=10).fit(fm, H)
    E = fm.embed()
    np.testing.assert_allclose(gl.transform(fm), ((E - gl.mean_) / gl.std_) @ gl.weights_ + gl.bias_)
    assert gl.score(fm, H) == pytest.approx(gl.score(E, H))


def test_clone_and_pickle(rng):
    X, H = _planted(rng, 15)
    gl = GLocalAligner(max_iter=10).fit(X, H)
    gl2 = pickle.loads(pickle.dumps(gl))
    np.testing.assert_array_equal(gl2.transform(X), gl.transform(X))
    assert not hasattr(clone(gl), "weights_")


def test_odd_one_out_accuracy():
    E = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert odd_one_out_accuracy(E, [[0, 1, 2], [2, 3, 0], [0, 2, 1]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shape"):
        odd_one_out_accuracy(E, [0, 1, 2])


def test_fit_does_not_depend_on_the_thread_count():
    # A joblib or dask worker runs with 1 thread, a serial run with all of them. On wide embeddings LBFGS stops at
    # max_iter and amplifies last-bit differences of summation order (before: weights 1e-4 apart, held-out 2OI
    # 1e-2 apart between a serial and a cluster run), so small problems run single-threaded from the first product.
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    E = np.maximum(rng.normal(size=(20, 1000)) - 0.5, 0) * rng.gamma(1, 1, size=1000)
    H = np.corrcoef(E[:, :5] + 0.5 * rng.normal(size=(20, 5)))
    saved, fits = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                fits.append(GLocalAligner().fit(E, H))
    finally:
        torch.set_num_threads(saved)
    assert fits[0].n_iter_ == fits[1].n_iter_
    np.testing.assert_array_equal(fits[0].weights_, fits[1].weights_)
    np.testing.assert_array_equal(fits[0].bias_, fits[1].bias_)
