"""Odd-one-out triplets as a target: checks, AIS against naive loops, folds without leakage, ceiling, data."""

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
from sklearn_ais._similarity import TripletTarget
from sklearn_ais.alignment import GLocalAligner
from sklearn_ais.datasets import load_things_triplets, simulate_triplets
from sklearn_ais.metrics import normalize_to_ceiling, triplet_noise_ceiling, triplet_score
from sklearn_ais.model_selection import (TripletKFold, Triplets, cross_validate_alignment, permutation_test_alignment)
from sklearn_ais._triplets import check_triplet_target

from ._reference import embed, naive_rsm
from .conftest import vgg_like


# ---------------------------------------------------------------------------
# Naive references: rebuild the embedding, np.corrcoef / cosine, count the triplets
# ---------------------------------------------------------------------------
def naive_count(E, T, similarity, tol):
    """Triplets (a, b, odd) whose pair (a, b) is strictly the most similar (by more than ``tol``)."""
    S = naive_rsm(E, similarity)
    count = 0
    for a, b, o in T:
        s0, s1, s2 = S[a, b], S[a, o], S[b, o]
        count += int(s0 - s1 > tol and s0 - s2 > tol)
    return count


def naive_counts(E, T, similarity):
    """The count, checked to be the same for any tie tolerance between round-off and 1e-9 (no near-ties)."""
    c1, c2 = naive_count(E, T, similarity, 1e-12), naive_count(E, T, similarity, 1e-9)
    assert c1 == c2, "the test data has a near-tie: choose another seed"
    return c1


def naive_loglik(E, T, similarity, temperature):
    S = naive_rsm(E, similarity)
    total = 0.0
    for a, b, o in T:
        z = np.array([S[a, b], S[a, o], S[b, o]]) / temperature
        total += z[0] - np.logaddexp.reduce(z)
    return total / len(T)


def naive_score(E, T, similarity, comparison, temperature=1.0):
    if comparison == "odd_one_out":
        return naive_counts(E, T, similarity)
    return naive_loglik(E, T, similarity, temperature)


def random_triplets(rng, n, N):
    return np.array([rng.choice(n, 3, replace=False) for _ in range(N)])


def tied_problem(n, K, N, seed):
    """Units with planted ties (image 1 duplicates image 0), a dead unit, and triplets that hit the ties."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, K)) + 0.3
    X[1] = X[0]
    X[:, K - 1] = 0.0  # dead unit: AIS exactly 0
    T = random_triplets(rng, n, N)
    extra = np.array([[0, j, 1] for j in range(2, 8)] + [[0, 1, 5], [0, 1, 5], [2, 3, 4]])  # ties, repeats
    return X, np.vstack([T, extra])


# ---------------------------------------------------------------------------
# 1. Triplets as y: the checks, each naming the row
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    ([[0, 1, 2], [1, 2, 3], [0, 1, 40]], "row 2 names image 40, outside X's 10 images"),
    ([[0, 1, 2], [3, 4, 3]], "row 1 names an image twice"),
    (np.array([[0, 1, 2], [1.5, 2, 3]]), "row 1 holds 1.5, not an integer"),
    (np.array([[0, 1, 2], [np.nan, 2, 3]]), "row 1 holds nan"),
    (np.zeros((0, 3), dtype=int), "no triplets"),
    ([[0, -1, 2]], "row 0 names image -1"),
])
def test_bad_triplets_are_refused_naming_the_row(bad, message):
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match=message):
        AISSelector(comparison="odd_one_out").fit(X, bad)


def test_column_conventions_and_ids_give_the_same_triplets():
    last = np.array([[0, 1, 2], [3, 4, 0], [0, 1, 2]])  # a repeated triplet is data
    first = last[:, [2, 0, 1]]
    column = np.column_stack([last[:, [1, 2, 0]], last[:, 2]])  # the odd image in a 4th column
    ref = check_triplet_target(last, 5).indices
    assert np.array_equal(ref, last) and len(ref) == 3
    assert np.array_equal(Triplets(first, odd_one_out="first").canonical(5).indices, ref)
    assert np.sort(Triplets(column, odd_one_out="column").canonical(5).indices[:, :2], axis=1).tolist() == \
        np.sort(ref[:, :2], axis=1).tolist()
    ids = np.array(["a", "b", "c", "d", "e"])
    frame = pd.DataFrame(ids[last], columns=["i", "j", "odd"])
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(5, 3)), index=ids[[4, 3, 2, 1, 0]])  # other order
    got = check_triplet_target(frame, X).indices
    assert np.array_equal(np.asarray(X.index)[got], ids[last])
    with pytest.raises(ValueError, match="row 1: its 4th column"):
        Triplets([[0, 1, 2, 2], [0, 1, 2, 3]], odd_one_out="column").canonical(5)
    with pytest.raises(ValueError, match="row 0 names 'z', which is not among X's image ids"):
        check_triplet_target(pd.DataFrame([["z", "a", "b"]]), X)


def test_the_comparison_decides_the_kind_of_y():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 4))
    with pytest.raises(ValueError, match="y holds odd-one-out triplets"):
        AISSelector().fit(X, random_triplets(rng, 8, 10))
    with pytest.raises(ValueError, match="scores odd-one-out triplets, so y must be"):
        AISSelector(comparison="odd_one_out").fit(X, np.corrcoef(X))


# ---------------------------------------------------------------------------
# 2. AIS on triplets: equal to a naive loop (counts exactly, log-likelihood within 1e-12)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("similarity", ["pearson", "cosine"])
@pytest.mark.parametrize("comparison", ["odd_one_out", "triplet_log_likelihood"])
def test_global_ais_and_sweep_equal_a_naive_loop(layout, similarity, comparison):
    n, N = (14, 250) if layout == "dense" else (80, 120)
    K = 7
    X, T = tied_problem(n, K, N, seed=3)
    temperature = 0.3
    sel = AISSelector(similarity, comparison=comparison, temperature=temperature, device="cpu").fit(X, T)
    assert TripletTarget(T, n, comparison).sparse == (layout == "sparse")
    base = naive_score(X, T, similarity, comparison, temperature)
    loo = np.array([naive_score(embed(X, keep=np.arange(K) != k), T, similarity, comparison, temperature)
                    for k in range(K)])
    order = np.argsort(sel.ranking_, kind="stable")
    path = []
    for t in range(1, K + 1):
        keep = np.zeros(K, bool)
        keep[order[:t]] = True
        path.append(naive_score(embed(X, keep=keep), T, similarity, comparison, temperature))
    path = np.array(path)
    assert sel.scores_[K - 1] == 0.0  # the dead unit
    if comparison == "odd_one_out":
        M = len(T)
        assert sel.baseline_score_ == base / M
        assert np.array_equal(np.rint((sel.baseline_score_ - sel.scores_) * M), loo)
        assert np.array_equal(np.rint(sel.path_scores_ * M), path)
        assert np.allclose(sel.path_scores_ * M, path, atol=1e-9)
    else:
        assert abs(sel.baseline_score_ - base) < 1e-12
        assert np.abs(sel.scores_ - (base - loo)).max() < 1e-12
        assert np.abs(sel.path_scores_ - path).max() < 1e-12
    assert abs(sel.score(X, T) - sel.path_scores_[sel.n_features_to_select_ - 1]) < 1e-12


def test_sparse_pairs_give_the_dense_bits(monkeypatch):
    X, T = tied_problem(70, 6, 100, seed=5)
    X[2] = [40.0, 0.3, -0.2, 0.1, 0.2, 0.0]  # one unit carries nearly all of image 2's energy: recomputed rows
    T = np.vstack([T, [[2, 3, 4], [5, 2, 6], [2, 8, 9]]])
    fits = {}
    for sparse in (True, False):
        monkeypatch.setattr(TripletTarget, "sparse", property(lambda self, s=sparse: s))
        for comp in ("odd_one_out", "triplet_log_likelihood"):
            fits[sparse, comp] = AISSelector(comparison=comp, device="cpu").fit(X, T)
    for comp in ("odd_one_out", "triplet_log_likelihood"):
        a, b = fits[True, comp], fits[False, comp]
        assert np.array_equal(a.scores_, b.scores_) and np.array_equal(a.path_scores_, b.path_scores_)
    loo = [naive_counts(embed(X, keep=np.arange(6) != k), T, "pearson") for k in range(6)]
    a = fits[True, "odd_one_out"]
    assert np.array_equal(np.rint((a.baseline_score_ - a.scores_) * len(T)), loo)


@pytest.mark.parametrize("comparison", ["odd_one_out", "triplet_log_likelihood"])
def test_per_image_ais_counts_the_triplets_that_contain_the_image(comparison):
    n, K = 12, 5
    X, T = tied_problem(n, K, 60, seed=1)
    hm = AISHeatmapper(comparison=comparison, temperature=0.5, device="cpu").fit(X, T)
    for t in range(n):
        Tt = T[(T == t).any(axis=1)]
        base = naive_score(X, Tt, "pearson", comparison, 0.5)
        for k in range(K):
            Xk = X.copy()
            Xk[t, k] = 0
            expected = base - naive_score(Xk, Tt, "pearson", comparison, 0.5)
            if comparison == "odd_one_out":
                assert round(hm.image_scores_[t, k] * len(Tt)) == expected
            else:
                assert abs(hm.image_scores_[t, k] - expected) < 1e-12
    assert np.allclose(hm.scores_, AISSelector(comparison=comparison, temperature=0.5).fit(X, T).scores_)


def test_vgg_head_and_heatmaps_on_triplets():
    rng = np.random.default_rng(0)
    head = vgg_like(K=5, P=4)
    maps = rng.random((10, 5, 4, 4)).astype(np.float32)
    T = random_triplets(rng, 10, 80)
    fm = FeatureMaps(maps, head, input_size=(16, 16))
    sel = AISSelector(comparison="odd_one_out", device="cpu").fit(fm, T)
    base = naive_counts(embed(maps, head), T, "pearson")
    loo = [naive_counts(embed(maps, head, keep=np.arange(5) != k), T, "pearson") for k in range(5)]
    assert sel.baseline_score_ * len(T) == base
    assert np.array_equal(np.rint((sel.baseline_score_ - sel.scores_) * len(T)), loo)
    hm = AISHeatmapper(comparison="odd_one_out", output="maps", device="cpu").fit(fm, T)
    for t in (0, 7):  # per-image AIS through the first-layer kernel: map k zeroed in image t only
        Tt = T[(T == t).any(axis=1)]
        base_t = naive_counts(embed(maps, head), Tt, "pearson")
        for k in range(5):
            mk = maps.copy()
            mk[t, k] = 0
            assert round(hm.image_scores_[t, k] * len(Tt)) == base_t - naive_counts(embed(mk, head), Tt, "pearson")
    with pytest.warns(UserWarning, match="no map with positive"):
        heat = hm.transform(fm)
    assert heat.shape == (10, 4, 4) and np.isfinite(heat).all()


# ---------------------------------------------------------------------------
# 3. Cross-validation without leakage
# ---------------------------------------------------------------------------
def test_image_folds_keep_no_triplet_that_touches_a_training_image():
    rng = np.random.default_rng(2)
    n = 30
    X = rng.normal(size=(n, 6))
    T = random_triplets(rng, n, 1500)
    target = check_triplet_target(T, n)
    cv = KFold(3, shuffle=True, random_state=0)
    res = cross_validate_alignment(AISSelector(comparison="odd_one_out"), X, T, cv=cv)
    assert (res.table["split"] == "images").all()
    for fold, (train, test) in enumerate(cv.split(X)):
        held = target.take(test)
        back = test[held.indices]  # the held-out triplets in X's numbering
        assert not np.isin(back, train).any()
        inside = T[np.isin(T, test).all(axis=1)]
        assert len(back) == len(inside) and np.array_equal(np.sort(back, axis=0), np.sort(inside, axis=0))
        assert not np.isin(train[target.take(train).indices], test).any()
        # the held-out accuracy with all units: the naive count over the test-only triplets
        assert res.table.loc[fold, "test_score_full"] * len(inside) == naive_counts(X, inside, "pearson")


def test_triplet_folds_permutation_test_and_corrected_t():
    rng = np.random.default_rng(4)
    n = 24
    X = rng.normal(size=(n, 6))
    H = np.corrcoef(X[:, :2])
    T = simulate_triplets(H, 600, temperature=0.05, random_state=0)
    cv = TripletKFold(3, random_state=0)
    res = cross_validate_alignment(AISSelector(comparison="odd_one_out"), X, T, cv=cv)
    assert (res.table["split"] == "triplets").all() and res.table["n_test"].sum() == len(T)
    for fold, (_, test) in enumerate(cv.split(X, T)):
        assert res.table.loc[fold, "test_score_full"] * len(test) == naive_counts(X, T[test], "pearson")
    assert res.summary["delta"] > 0 and np.isfinite(res.summary["p_corrected_t"])
    perm = permutation_test_alignment(AISSelector(comparison="odd_one_out"), X, T, cv=cv, n_permutations=9)
    assert perm.p_value == 0.1 and perm.observed == pytest.approx(res.summary["delta"])
    img = permutation_test_alignment(AISSelector(comparison="triplet_log_likelihood"), X, T, cv=3, n_permutations=4)
    assert 0 < img.p_value <= 1 and np.isfinite(img.observed)
    with pytest.raises(ValueError, match="splits the entries of a similarity matrix"):
        from sklearn_ais.model_selection import PairKFold
        cross_validate_alignment(AISSelector(comparison="odd_one_out"), X, T, cv=PairKFold(3))


def test_inner_cv_on_triplets_chooses_t_on_held_out_triplets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 8))
    T = simulate_triplets(np.corrcoef(X[:, :3]), 400, temperature=0.05, random_state=1)
    for cv in (TripletKFold(3, random_state=0), 3):
        sel = AISSelector(comparison="odd_one_out", cv=cv).fit(X, T)
        assert sel.cv_path_scores_.shape == (3, 8)
        assert sel.n_features_to_select_ == int(np.nanargmax(sel.cv_path_scores_.mean(axis=0))) + 1


# ---------------------------------------------------------------------------
# 4. Ceiling
# ---------------------------------------------------------------------------
def test_ceiling_from_repeated_triplets_else_supplied():
    T = np.array([[0, 1, 2], [1, 0, 2], [0, 2, 1], [2, 1, 0],  # {0,1,2}: odd 2, 2, 1, 0 -> majority 2 of 4
                  [1, 2, 3], [2, 1, 3], [3, 2, 1],            # {1,2,3}: odd 3, 3, 1 -> 2 of 3
                  [0, 1, 3]])                                 # judged once: no information
    assert triplet_noise_ceiling(T) == pytest.approx(4 / 7)
    assert triplet_noise_ceiling(T[[0, 4, 7]], ceiling=0.6767) == 0.6767
    with pytest.raises(ValueError, match="no repeated triplet"):
        triplet_noise_ceiling(T[[0, 4, 7]])
    assert normalize_to_ceiling(0.6767 / 2) == pytest.approx(0.5)
    assert normalize_to_ceiling(1 / 3, 0.6767, chance=1 / 3) == 0.0


# ---------------------------------------------------------------------------
# 5. Data: the loader on small files in the THINGS layouts, the softmax observer
# ---------------------------------------------------------------------------
def test_loader_reads_both_formats_and_bases(tmp_path):
    T = np.array([[0, 1, 2], [3, 4, 0], [4, 2, 1]])
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "train_90.npy", T)
    np.savetxt(one / "test_10.txt", T[:2] + 1, fmt="%d")  # a 1-based file: read with the other as 0-based?
    pd.DataFrame({"Word": list("abcde"), "uniqueID": ["a1", "b1", "c1", "d1", "e1"]}).to_csv(
        one / "things_concepts.tsv", sep="\t", index=False)
    # 0 occurs (train): the folder is 0-based, so the test file's 5 is out of range, named with its row
    with pytest.raises(ValueError, match="test_10.txt: row 1 names concept 5"):
        load_things_triplets(one)
    np.savetxt(one / "test_10.txt", T[:2], fmt="%d")
    data = load_things_triplets(one)
    assert np.array_equal(data.train, T) and np.array_equal(data.test, T[:2])
    assert data.concepts.tolist() == ["a1", "b1", "c1", "d1", "e1"] and data.n_concepts == 5
    two = tmp_path / "two"
    two.mkdir()
    np.savetxt(two / "train_90.txt", T + 1, fmt="%d")
    assert np.array_equal(load_things_triplets(two / "train_90.txt", n_concepts=5).triplets, T)  # 1-based found
    with pytest.raises(ValueError, match="0- or 1-based"):
        load_things_triplets(two / "train_90.txt", n_concepts=None)
    assert np.array_equal(load_things_triplets(two / "train_90.txt", n_concepts=None, index_base=1).triplets, T)
    np.savetxt(two / "bad.txt", np.array([[0, 1, 2], [0, 1, 9]]), fmt="%d")
    with pytest.raises(ValueError, match="bad.txt: row 1 names concept 9"):
        load_things_triplets(two / "bad.txt", n_concepts=5)
    np.savetxt(two / "frac.txt", np.array([[0, 1, 2], [0, 1.5, 3]]))
    with pytest.raises(ValueError, match="frac.txt: row 1 holds 1.5"):
        load_things_triplets(two / "frac.txt", n_concepts=5)
    with pytest.raises(FileNotFoundError):
        load_things_triplets(tmp_path / "missing")


def test_simulated_choices_follow_the_softmax_observer():
    H = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    T = simulate_triplets(H, 6000, temperature=0.5, random_state=0)
    assert np.array_equal(T, simulate_triplets(H, 6000, temperature=0.5, random_state=0))
    z = np.array([0.8, 0.1, 0.3]) / 0.5  # pairs (0,1), (0,2), (1,2): odd 2, 1, 0
    p = np.exp(z) / np.exp(z).sum()
    freq = np.array([(T[:, 2] == odd).mean() for odd in (2, 1, 0)])
    assert np.abs(freq - p).max() < 4 * np.sqrt(p * (1 - p) / len(T)).max()


# ---------------------------------------------------------------------------
# 6. gLocal on triplets
# ---------------------------------------------------------------------------
def test_glocal_fits_on_triplet_y_as_on_its_triplets_argument():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 5))
    T = simulate_triplets(np.corrcoef(X[:, :2]), 300, temperature=0.1, random_state=0)
    a = GLocalAligner(max_iter=15).fit(X, T)
    b = GLocalAligner(max_iter=15).fit(X, triplets=T)
    assert np.array_equal(a.weights_, b.weights_)
    Z = a.transform(X)
    S = Z @ Z.T  # not what score uses: score uses the aligner's similarity
    assert 0 <= a.score(X, T) <= 1 and S.shape == (16, 16)
    assert a.score(X, T) == triplet_score(a.transform(X), T, similarity="pearson")
