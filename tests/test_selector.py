"""AISSelector: exactness against the naive algorithm, planted truth, conventions, bad input."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_ais import AISHeatmapper, AISSelector, AISSelectorCV, FeatureMaps, metrics
from sklearn_ais.backbones import PoolingHead
from sklearn_ais.model_selection import mask_pairs, similarity_frame

from ._reference import naive_2oi, naive_ais, naive_path
from .conftest import A0, H0, SETTINGS, X0, fmaps, no_tensors, roundtrips, task
from .conftest import human as _human
from .conftest import vgg_like as _vgg_like


@parametrize_with_checks([AISSelector(device="cpu"), AISSelectorCV(device="cpu", cv=3)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("similarity,comparison", SETTINGS)
@pytest.mark.parametrize("nan_frac", [0.0, 0.25])
def test_fitted_attributes_match_naive(rng, similarity, comparison, nan_frac):
    n, K = 16, 10
    X = rng.normal(size=(n, K)) + 1.0
    H = _human(rng, n, nan_frac)
    sel = AISSelector(similarity=similarity, comparison=comparison, device="cpu").fit(X, H)
    base, ais = naive_ais(X, H, similarity, comparison)
    np.testing.assert_allclose(sel.baseline_score_, base, atol=1e-6)
    np.testing.assert_allclose(sel.scores_, ais, atol=1e-6)
    order = np.argsort(-sel.scores_, kind="stable")
    np.testing.assert_array_equal(sel.ranking_[order], np.arange(1, K + 1))
    np.testing.assert_allclose(sel.path_scores_, naive_path(X, H, order, similarity, comparison), atol=1e-6)
    # score = 2OI with unselected units zeroed, on fresh data
    X2, H2 = rng.normal(size=(12, K)), _human(rng, 12, nan_frac)
    expected = naive_2oi(np.where(sel.support_, X2, 0.0), H2, similarity, comparison)
    np.testing.assert_allclose(sel.score(X2, H2), expected, atol=1e-6)


def test_vgg_head_matches_naive(rng):
    n, K = 10, 6
    head = _vgg_like(K=K)
    maps = np.abs(rng.normal(size=(n, K, 4, 4))).astype(np.float32)
    H = _human(rng, n)
    sel = AISSelector(n_features_to_select=3, device="cpu").fit(FeatureMaps(maps, head), H)
    base, ais = naive_ais(maps, H, "pearson", "spearman", head=head)
    np.testing.assert_allclose(sel.scores_, ais, atol=1e-6)
    order = np.argsort(-sel.scores_, kind="stable")
    np.testing.assert_allclose(sel.path_scores_, naive_path(maps, H, order, "pearson", "spearman", head), atol=1e-6)
    assert sel.support_.sum() == 3
    kept = maps * sel.support_[None, :, None, None]
    from ._reference import embed

    np.testing.assert_allclose(
        sel.score(FeatureMaps(maps, head), H), naive_2oi(embed(kept, head), H, "pearson", "spearman"), atol=1e-6
    )


def _planted(rng, n=60, K=40, k_true=6, noise=0.5):
    X = rng.normal(size=(n, K))
    truth = np.zeros(K, bool)
    truth[rng.choice(K, k_true, replace=False)] = True
    H = np.corrcoef(X[:, truth])
    N = rng.normal(scale=noise * H[np.triu_indices(n, 1)].std(), size=(n, n))
    return X, H + (N + N.T) / 2, truth


def test_planted_truth_recovered_and_generalises(rng):
    X, H, truth = _planted(rng)
    sel = AISSelector(device="cpu").fit(X, H)
    assert set(np.flatnonzero(sel.support_)) >= set(np.flatnonzero(truth))
    assert sel.support_.sum() <= truth.sum() + 3
    # held out images: selection raises 2OI
    from sklearn_ais.model_selection import cross_validate_alignment

    cv = KFold(4, shuffle=True, random_state=0)
    res = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=cv, return_estimators=True, test="corrected_t")
    assert (res.table.test_score_selected > res.table.test_score_full).all()
    for (train, _), est, got in zip(cv.split(X), res.estimators, res.table.train_score_selected):
        np.testing.assert_allclose(got, est.score(X[train], H[np.ix_(train, train)]), atol=1e-9)


def test_n_features_to_select_options(rng):
    X, H, truth = _planted(rng, n=30, K=12, k_true=3)
    assert AISSelector(n_features_to_select=5, device="cpu").fit(X, H).support_.sum() == 5
    assert AISSelector(n_features_to_select=0.5, device="cpu").fit(X, H).support_.sum() == 6
    auto = AISSelector(device="cpu").fit(X, H)
    best = np.flatnonzero(auto.path_scores_ == auto.path_scores_.max())[0] + 1  # smallest t on ties
    assert auto.n_features_to_select_ == best
    cv = AISSelector(cv=KFold(3, shuffle=True, random_state=0), device="cpu").fit(X, H)
    assert cv.cv_path_scores_.shape == (3, 12)
    assert cv.n_features_to_select_ == np.argmax(cv.cv_path_scores_.mean(0)) + 1
    with pytest.raises(ValueError, match="exceeds"):
        AISSelector(n_features_to_select=13, device="cpu").fit(X, H)


def test_dead_map_and_constant_row_give_finite_scores(rng):
    X = rng.normal(size=(10, 6))
    X[:, 2] = 0  # dead unit
    X[4] = 0.0  # constant row: no Pearson similarity defined
    X[7, :] = 2.5
    X[7, 2] = 0  # constant but for the dead unit
    sel = AISSelector(device="cpu").fit(X, _human(rng, 10))
    assert np.isfinite(sel.scores_).all() and np.isfinite(sel.path_scores_).all()
    assert sel.scores_[2] == 0.0


def test_dissimilarity_and_labels(rng):
    X, H, _ = _planted(rng, n=24, K=10, k_true=3)
    a = AISSelector(device="cpu").fit(X, H)
    b = AISSelector(y_kind="dissimilarity", device="cpu").fit(X, -H + 5)
    np.testing.assert_allclose(a.scores_, b.scores_, atol=1e-12)
    labels = np.repeat([0, 1, 2], 8)
    c = AISSelector(device="cpu").fit(X, labels)
    same = (labels[:, None] == labels[None]).astype(float)
    np.testing.assert_allclose(c.scores_, naive_ais(X, same, "pearson", "spearman")[1], atol=1e-9)


@pytest.mark.parametrize(
    "make_y,match",
    [
        (lambda H: H[:, :-1], "square"),
        (lambda H: np.where(np.eye(len(H), k=1) > 0, np.inf, H), "inf"),
        (lambda H: H + np.triu(np.ones_like(H), 1), "not symmetric"),
        (lambda H: np.ones_like(H), "constant"),
        (lambda H: H[:-1, :-1], "X has"),
    ],
)
def test_bad_y(rng, make_y, match):
    X = rng.normal(size=(8, 4))
    with pytest.raises(ValueError, match=match):
        AISSelector(device="cpu").fit(X, make_y(_human(rng, 8)))


def test_bad_X(rng):
    H = _human(rng, 8)
    with pytest.raises(ValueError, match="2D"):
        AISSelector(device="cpu").fit(rng.normal(size=8), H)
    X = rng.normal(size=(8, 4))
    X[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        AISSelector(device="cpu").fit(X, H)
    with pytest.raises(ValueError, match="minimum of 4"):
        AISSelector(device="cpu").fit(rng.normal(size=(3, 4)), _human(rng, 3))
    with pytest.raises(ValueError):
        AISSelector(device="cpu").fit(np.zeros((0, 4)), np.zeros((0, 0)))
    fm = FeatureMaps(np.full((6, 3, 2, 2), np.nan, dtype=np.float32), _vgg_like(K=3, P=1))
    with pytest.raises(ValueError, match="NaN"):
        AISSelector(device="cpu").fit(fm, _human(rng, 6))


def test_sliced_unlabelled_y_explains(rng):
    X, H = rng.normal(size=(10, 4)), _human(rng, 10)
    with pytest.raises(ValueError, match="similarity_frame"):
        AISSelector(device="cpu").fit(X[:6], H[:6])


def test_pipeline_cross_validate_never_fits_on_test_images(rng):
    """scikit-learn slices y by rows; the labelled frame realigns the columns.

    A spy records which image ids reach fit; no test id may appear.
    """
    X, H, _ = _planted(rng, n=30, K=8, k_true=3)
    ids = np.array([f"img{i:02d}" for i in range(30)])
    y = similarity_frame(H, ids)
    seen = []

    class Spy(AISSelector):
        def fit(self, X, y):
            seen.append(list(y.index))
            return super().fit(X, y)

    cv = KFold(5, shuffle=True, random_state=0)
    out = cross_validate(Spy(device="cpu"), X, y, cv=cv, return_indices=True)
    assert len(seen) == 5
    for fit_ids, test_idx in zip(seen, out["indices"]["test"]):
        assert not set(fit_ids) & set(ids[test_idx])
    # the test score is the 2OI on the test block only
    sel = Spy(device="cpu").fit(X[out["indices"]["train"][0]], y.iloc[out["indices"]["train"][0]])
    te = out["indices"]["test"][0]
    assert np.isclose(out["test_score"][0], sel.score(X[te], H[np.ix_(te, te)]))
    gs = GridSearchCV(Pipeline([("ais", AISSelector(device="cpu"))]), {"ais__n_features_to_select": [2, "auto"]}, cv=cv)
    gs.fit(X, y)  # error_score=nan would hide a failing fold: every mean must be a real 2OI
    assert np.isfinite(gs.cv_results_["mean_test_score"]).all()


def test_featuremaps_transform_and_pickle(rng):
    maps = np.abs(rng.normal(size=(8, 5, 3, 3))).astype(np.float32)
    fm = FeatureMaps(maps, _vgg_like(K=5, P=1), ids=np.arange(8))
    sel = AISSelector(n_features_to_select=2, device="cpu").fit(fm, _human(rng, 8))
    out = sel.transform(fm)
    assert isinstance(out, FeatureMaps)
    np.testing.assert_array_equal(out.maps[:, ~sel.support_], 0)
    np.testing.assert_array_equal(out.maps[:, sel.support_], maps[:, sel.support_])
    again = pickle.loads(pickle.dumps(sel))
    np.testing.assert_array_equal(again.scores_, sel.scores_)
    assert clone(sel).get_params() == sel.get_params()


def test_deterministic(rng):
    X, H, _ = _planted(rng, n=20, K=10, k_true=3)
    a = AISSelector(device="cpu").fit(X, H)
    b = AISSelector(device="cpu").fit(X.copy(), H.copy())
    assert a.scores_.tobytes() == b.scores_.tobytes()
    assert a.path_scores_.tobytes() == b.path_scores_.tobytes()


def test_dataframe_y_reordered_columns(rng):
    X, H = rng.normal(size=(9, 4)), _human(rng, 9)
    y = similarity_frame(H).iloc[:, ::-1]  # columns in another order: realigned by id
    a = AISSelector(device="cpu").fit(X, y)
    b = AISSelector(device="cpu").fit(X, H)
    np.testing.assert_allclose(a.scores_, b.scores_)
    assert isinstance(y, pd.DataFrame)


class _PlainFitSelector(AISSelector):
    """Same estimator, own ``fit``: cross_validate_alignment then fits every fold from X[train]."""

    def fit(self, X, y):
        return super().fit(X, y)


@pytest.mark.parametrize("head", ["gap", "vgg", "generic"])
@pytest.mark.parametrize("splitter", ["images", "pairs"])
def test_cross_validation_shared_kernels_equal_per_fold_fits(rng, head, splitter):
    """Folds that read one cached leave-one-out stack give the per-fold fits' results."""
    import torch
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais import FeatureMaps
    from sklearn_ais.backbones import ModuleHead, PoolingHead
    from sklearn_ais.model_selection import RepeatedPairKFold, cross_validate_alignment

    from .conftest import vgg_like as _vgg_like

    n, K = 24, 6
    maps = np.maximum(rng.normal(size=(n, K, 4, 4)), 0).astype(np.float32)
    maps[rng.random((n, K)) < 0.3] = 0  # dead (image, map) pairs: skipped by the kernels
    if head == "gap":
        X = FeatureMaps(maps, PoolingHead("avg"))
    elif head == "vgg":
        X = FeatureMaps(maps, _vgg_like(K=K))
    else:
        X = FeatureMaps(maps, ModuleHead(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(K * 16, 10))))
    H = np.corrcoef(maps[:, :2].reshape(n, -1) + 0.1 * rng.random((n, 32))) + 0.1 * rng.normal(size=(n, n))
    H = (H + H.T) / 2
    cv = (RepeatedKFold(n_splits=3, n_repeats=2, random_state=0) if splitter == "images"
          else RepeatedPairKFold(3, n_repeats=1, random_state=0))
    fast = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=cv, return_paths=True,
                                    return_estimators=True, test="corrected_t")
    plain = cross_validate_alignment(_PlainFitSelector(device="cpu"), X, H, cv=cv, return_paths=True,
                                     return_estimators=True, test="corrected_t")
    cols = ["train_score_selected", "test_score_full", "test_score_selected"]
    tol = 1e-9 if head == "gap" else 1e-5  # float32 heads: GEMMs of other shapes round differently
    np.testing.assert_allclose(fast.table[cols].to_numpy(), plain.table[cols].to_numpy(), atol=tol)
    np.testing.assert_allclose(fast.train_paths, plain.train_paths, atol=tol)
    np.testing.assert_allclose(fast.test_paths, plain.test_paths, atol=tol)
    for a, b in zip(fast.estimators, plain.estimators):
        np.testing.assert_allclose(a.scores_, b.scores_, atol=tol)
        assert a.n_features_in_ == b.n_features_in_ == K


def test_cross_validation_of_dissimilarities_equals_the_similarities(rng):
    """y_kind="dissimilarity" (on the function or on the estimator) is negated once, not twice."""
    from sklearn.model_selection import KFold

    from sklearn_ais.model_selection import cross_validate_alignment

    X, H, _ = _planted(rng, n=30, K=8, k_true=3)
    cv = KFold(3, shuffle=True, random_state=0)
    cols = ["train_score_selected", "test_score_full", "test_score_selected", "n_selected"]
    want = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=cv, test="corrected_t").table[cols]
    assert (want["test_score_full"] > 0).all()
    for est, kw in [(AISSelector(device="cpu"), {"y_kind": "dissimilarity"}),
                    (AISSelector(device="cpu", y_kind="dissimilarity"), {})]:
        got = cross_validate_alignment(est, X, 1 - H, cv=cv, **kw).table[cols]
        pd.testing.assert_frame_equal(got, want)


# ---------------------------------------------------------------------------
# Trust: an int cv shuffles, an undefined t is never chosen, scikit-learn's configuration is honoured
# ---------------------------------------------------------------------------
def _category_ordered(rng, n=30, K=12):
    """Images ordered by category (as the 92 photos are): unshuffled folds would be category blocks."""
    labels = np.repeat(np.arange(3), n // 3)
    X = rng.normal(size=(n, K)) + 2.0 * np.eye(3)[labels] @ rng.normal(size=(3, K))
    return X, np.corrcoef(X[:, :4] + rng.normal(size=(n, 4)))


def test_int_cv_means_shuffled_seeded_folds(rng):
    from sklearn.model_selection import KFold

    X, H = _category_ordered(rng)
    a = AISSelector(cv=5, device="cpu").fit(X, H)
    b = AISSelector(cv=KFold(5, shuffle=True, random_state=0), device="cpu").fit(X, H)
    np.testing.assert_array_equal(a.cv_path_scores_, b.cv_path_scores_)
    c = AISSelector(cv=KFold(5), device="cpu").fit(X, H)  # category blocks
    assert not np.array_equal(a.cv_path_scores_, c.cv_path_scores_)
    d = AISSelector(cv=5, random_state=1, device="cpu").fit(X, H)
    assert not np.array_equal(a.cv_path_scores_, d.cv_path_scores_)


def test_cross_validate_alignment_int_cv_is_shuffled(rng):
    from sklearn.model_selection import KFold

    from sklearn_ais.model_selection import cross_validate_alignment

    X, H = _category_ordered(rng)
    a = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=5, return_estimators=True, test="corrected_t")
    b = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=KFold(5, shuffle=True, random_state=0), test="corrected_t")
    pd.testing.assert_frame_equal(a.table.drop(columns="fit_time"), b.table.drop(columns="fit_time"))
    c = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=5, random_state=3, test="corrected_t")
    assert not c.table["test_score_full"].equals(a.table["test_score_full"])


def test_undefined_t_is_never_chosen(rng):
    """Anti-aligned data: every defined 2OI is negative, t = 1 (one pooled map, Pearson RSM) is undefined.
    It was reported as 0 and chosen."""
    X = rng.random((20, 6)) + 0.1
    H = -np.corrcoef(X)  # humans judge the opposite
    np.fill_diagonal(H, 1.0)
    sel = AISSelector(device="cpu").fit(X, H)
    assert np.isnan(sel.path_scores_[0])
    assert np.isfinite(sel.path_scores_[1:]).all() and (sel.path_scores_[1:] < 0).all()
    assert sel.n_features_to_select_ == int(np.nanargmax(sel.path_scores_)) + 1 > 1
    with pytest.warns(UserWarning, match="undefined for every number of kept maps"):
        one = AISSelector(device="cpu").fit(X[:, :1], H)
    assert one.n_features_to_select_ == 1 and np.isnan(one.path_scores_).all()


def test_metadata_routing_and_pandas_output(rng):
    import sklearn
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_ais.model_selection import similarity_frame

    X = rng.normal(size=(30, 8))
    H = np.corrcoef(X[:, :3])
    with sklearn.config_context(enable_metadata_routing=True):
        grid = GridSearchCV(Pipeline([("scale", StandardScaler()), ("ais", AISSelector(device="cpu"))]),
                            {"ais__similarity": ["pearson", "cosine"]}, cv=KFold(3, shuffle=True, random_state=0))
        grid.fit(X, similarity_frame(H))
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    with pytest.raises(ValueError, match="sample_weight is not supported"):
        AISSelector(device="cpu").fit(X, H).score(X, H, sample_weight=np.ones(30))
    with sklearn.config_context(transform_output="pandas"):
        sel = AISSelector(device="cpu", n_features_to_select=3).fit(X, H)
        out = sel.transform(X)
        assert isinstance(out, pd.DataFrame) and list(out.columns) == list(sel.get_feature_names_out())
        fm = FeatureMaps(rng.random((30, 8, 2, 2)).astype(np.float32), PoolingHead())
        pipe = Pipeline([("ais", AISSelector(device="cpu", n_features_to_select=3)),
                         ("heat", AISHeatmapper(device="cpu", output="maps"))])
        heat = pipe.fit(fm, H).transform(fm)  # FeatureMaps stay FeatureMaps through the selector
        assert heat.shape == (30, 2, 2)
        assert isinstance(pipe[0].fit_transform(fm, H), FeatureMaps)


def test_inner_cv_over_pairs(rng):
    from sklearn_ais.model_selection import PairKFold, RepeatedPairKFold, mask_pairs, pair_indices

    X = rng.normal(size=(16, 10))
    H = np.corrcoef(X[:, :3] + 0.5 * rng.normal(size=(16, 3)))
    cv = PairKFold(3, shuffle=True, random_state=0)
    sel = AISSelector(cv=cv, device="cpu").fit(X, H)
    assert sel.cv_path_scores_.shape == (3, 10)
    # reference: rank on the training pairs, sweep the validation pairs, all images in both
    Hn = H.copy()
    np.fill_diagonal(Hn, np.nan)
    for row, (train, val) in zip(sel.cv_path_scores_, cv.split(X, Hn)):
        Ht, Hv = mask_pairs(Hn, train), mask_pairs(Hn, val)
        _, ais = naive_ais(X, Ht, "pearson", "spearman")
        order = np.argsort(-ais, kind="stable")
        ref = naive_path(X, Hv, order, "pearson", "spearman")
        np.testing.assert_allclose(row[1:], ref[1:], atol=1e-9)
    assert AISSelector(cv=RepeatedPairKFold(3, n_repeats=2, random_state=0), device="cpu").fit(
        X, H).cv_path_scores_.shape == (6, 10)
    assert len(pair_indices(16)[0]) == 120


def test_scikit_learn_cross_validate_refuses_pair_splitters(rng):
    from sklearn.model_selection import cross_validate

    from sklearn_ais.model_selection import PairKFold, similarity_frame

    X = rng.normal(size=(16, 6))
    H = np.corrcoef(X)
    with pytest.raises(TypeError, match="cross_validate_alignment"):
        cross_validate(AISSelector(device="cpu"), X, similarity_frame(H), cv=PairKFold(3))


# ---------------------------------------------------------------------------
# Robustness: bad input, edge magnitudes, persistence, determinism
# ---------------------------------------------------------------------------
Hnan_asym = H0.copy()
Hnan_asym[0, 1] = np.nan


SELECTOR_FIT_CASES = {
    # id: (X, y, error, message)
    "X NaN": (np.where(X0 > 1.5, np.nan, X0), H0, ValueError, "NaN"),
    "X inf": (np.where(X0 > 1.5, np.inf, X0), H0, ValueError, "infinity"),
    "X 1-D": (X0[:, 0], H0, ValueError, "Expected 2D array"),
    "X 3-D": (X0[:, :, None], H0, ValueError, "dim 3"),
    "X 3 images": (X0[:3], H0[:3, :3], ValueError, "minimum of 4"),
    "X no unit": (X0[:, :0], H0, ValueError, "0 feature"),
    "X complex": (X0 + 1j, H0, ValueError, "Complex data not supported"),
    "X words": (np.full((12, 8), "a"), H0, ValueError, "could not convert|string"),
    "maps of str": (None, H0, TypeError, "real numeric array"),
    "maps NaN": (FeatureMaps(np.full((12, 6, 2, 2), np.nan, np.float32), PoolingHead()), H0, ValueError,
                 "NaN or inf"),
    "maps beyond float32": (FeatureMaps(np.full((12, 6, 2, 2), 1e300), PoolingHead()), H0, ValueError,
                            "not finite.*float32"),
    "maps 3 images": (fmaps(3), H0[:3, :3], ValueError, "at least 4"),
    "y None": (X0, None, ValueError, "requires y"),
    "y non-square": (X0, H0[:, :5], ValueError, "square"),
    "y row-sliced": (X0[:6], H0[:6], ValueError, "similarity_frame"),
    "y wrong size": (X0, H0[:6, :6], ValueError, "must match"),
    "y 3-D": (X0, H0[None], ValueError, "n x n similarity matrix"),
    "y asymmetric": (X0, A0, ValueError, "not symmetric"),
    "y NaN asymmetric": (X0, Hnan_asym, ValueError, "asymmetric in its missing pairs"),
    "y inf": (X0, np.where(np.abs(H0) > 1, np.inf, H0), ValueError, "inf"),
    "y complex": (X0, H0 + 0j, TypeError, "complex"),
    "y strings": (X0, H0.astype(str), TypeError, "numeric"),
    "y all NaN": (X0, np.full((12, 12), np.nan), ValueError, "0 observed pairs"),
    "y 2 pairs": (X0, mask_pairs(H0, [0, 1]), ValueError, "2 observed pairs"),
    "y constant": (X0, np.ones((12, 12)), ValueError, "constant"),
    "y labels all equal": (X0, np.zeros(12), ValueError, "no similarity structure"),
    "y labels wrong length": (X0, np.arange(5), ValueError, "5 labels"),
}


@pytest.mark.parametrize("case", list(SELECTOR_FIT_CASES))
def test_selector_fit_refuses_bad_input(case):
    X, y, exc, match = SELECTOR_FIT_CASES[case]
    if case == "maps of str":
        with pytest.raises(TypeError, match=match):
            FeatureMaps(np.full((12, 6, 2, 2), "a"), PoolingHead())
        return
    with pytest.raises(exc, match=match):
        AISSelector(device="cpu").fit(X, y)
    with pytest.raises(exc, match=match):
        AISHeatmapper(device="cpu").fit(X, y)


@pytest.mark.parametrize(
    "params, exc, match",
    [
        (dict(device="cuda:0"), ValueError, "CUDA is not available"),
        (dict(device="gpu"), ValueError, "device must be"),
        (dict(n_features_to_select=20), ValueError, "exceeds the number of maps"),
        (dict(n_features_to_select=0), ValueError, "n_features_to_select"),
        (dict(n_features_to_select=1.5), ValueError, "n_features_to_select"),
        (dict(similarity="euclidean"), ValueError, "similarity"),
        (dict(comparison="kendall"), ValueError, "comparison"),
        (dict(y_kind="distance"), ValueError, "y_kind"),
        (dict(cv=12), ValueError, "inner cv split"),
    ],
)
def test_selector_bad_parameters(params, exc, match):
    if params.get("device") == "cuda:0" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(exc, match=match):
        AISSelector(**{"device": "cpu", **params}).fit(X0, H0)


def test_selector_methods_validate_input():
    sel = AISSelector(device="cpu", n_features_to_select=3).fit(X0, H0)
    with pytest.raises(ValueError, match="4 features, but AISSelector is expecting 8"):
        sel.score(X0[:, :4], H0)
    with pytest.raises(ValueError, match="4 features"):
        sel.transform(X0[:, :4])
    with pytest.raises(ValueError, match="0 observed pairs"):
        sel.score(X0, np.full((12, 12), np.nan))
    with pytest.raises(ValueError, match="minimum of 4"):
        sel.score(X0[:3], H0[:3, :3])
    six_maps = fmaps(K=6)
    with pytest.raises(ValueError, match="fitted with 8"):
        sel.transform(six_maps)
    with pytest.raises(NotFittedError, match="not fitted"):
        AISSelector().score(X0, H0)
    with pytest.raises(NotFittedError, match="not fitted"):
        AISSelector().transform(X0)


def test_constant_model_similarity_is_reported_not_silent():
    """One unit with Pearson similarity: every model similarity is 0, the 2OI undefined."""
    with pytest.warns(UserWarning, match="constant over the observed pairs"):
        sel = AISSelector(device="cpu").fit(X0[:, :1], H0)
    assert np.isnan(sel.baseline_score_) and np.isnan(sel.scores_[0]) and np.isnan(sel.path_scores_[0])


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the over- or underflow is handled, not leaked as a warning
@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200])
def test_extreme_magnitudes_give_the_same_scores(scale):
    """Squares of 1e200 overflow and of 1e-200 underflow: rows were once all 'constant' (AIS = 0)."""
    sel = AISSelector(device="cpu", comparison="pearson").fit(X0, H0)
    big = AISSelector(device="cpu", comparison="pearson").fit(X0 * scale, H0)
    np.testing.assert_allclose(big.scores_, sel.scores_, atol=1e-12)
    assert np.abs(big.scores_).max() > 0.01
    np.testing.assert_allclose(metrics.similarity_matrix(X0 * scale), metrics.similarity_matrix(X0), atol=1e-12)
    # the human side too
    hp = AISSelector(device="cpu", comparison="pearson").fit(X0, H0 * scale)
    np.testing.assert_allclose(hp.scores_, sel.scores_, atol=1e-12)


def test_selector_survives_pickle_and_joblib(tmp_path):
    sel = AISSelector(device="cpu", cv=KFold(3, shuffle=True, random_state=0)).fit(X0, H0)
    no_tensors(sel)
    assert isinstance(sel.baseline_score_, float) and sel.scores_.dtype == np.float64
    for loaded in roundtrips(sel, tmp_path):
        for attr in ("scores_", "ranking_", "support_", "path_scores_", "cv_path_scores_"):
            np.testing.assert_array_equal(getattr(loaded, attr), getattr(sel, attr))
        assert loaded.score(X0, H0) == sel.score(X0, H0)
        np.testing.assert_array_equal(loaded.transform(X0), sel.transform(X0))


@pytest.mark.filterwarnings("ignore::UserWarning")  # rows without pairs, t = 1 folds
def test_same_inputs_same_bits():
    X, H = task(30, 40, seed=3)
    H = mask_pairs(H, np.arange(0, 435, 3))
    for comparison in ("spearman", "pearson"):
        kw = dict(device="cpu", comparison=comparison, cv=KFold(3, shuffle=True, random_state=0))
        a, b = AISSelector(**kw).fit(X, H), AISSelector(**kw).fit(X, H)
        for attr in ("scores_", "ranking_", "support_", "path_scores_", "cv_path_scores_"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
        assert a.baseline_score_ == b.baseline_score_
    fm = fmaps(20, 8, seed=2)
    Hf = task(20, seed=4)[1]
    h1 = AISHeatmapper(device="cpu", output="maps").fit(fm, Hf)
    h2 = AISHeatmapper(device="cpu", output="maps").fit(fm, Hf)
    np.testing.assert_array_equal(h1.image_scores_, h2.image_scores_)
    np.testing.assert_array_equal(h1.transform(fm), h2.transform(fm))


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_thread_count_does_not_change_results(restore_threads, comparison):
    """torch threads (the package's n_jobs): Spearman is bit-identical; a Pearson comparison may differ
    in the last bit (parallel float reductions, measured <= 1e-16), rankings never."""
    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(80, 300)), 0)
    A = rng.normal(size=(80, 80))
    H = (A + A.T) / 2
    fits = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fits.append(AISSelector(device="cpu", comparison=comparison).fit(X, H))
    a, b = fits
    np.testing.assert_array_equal(a.ranking_, b.ranking_)
    np.testing.assert_array_equal(a.support_, b.support_)
    if comparison == "spearman":
        np.testing.assert_array_equal(a.scores_, b.scores_)
        np.testing.assert_array_equal(a.path_scores_, b.path_scores_)
    else:
        np.testing.assert_allclose(a.scores_, b.scores_, rtol=0, atol=1e-15)
        np.testing.assert_allclose(a.path_scores_, b.path_scores_, rtol=0, atol=1e-15)


def test_ties_rank_the_lower_map_index_first():
    X = X0.copy()
    X[:, 5] = X[:, 2]  # a duplicated unit: exactly the same AIS
    X[:, 3] = X[:, 6] = 0.0  # two dead units: AIS exactly 0
    sel = AISSelector(device="cpu").fit(X, H0)
    assert sel.scores_[2] == sel.scores_[5] and sel.ranking_[2] < sel.ranking_[5]
    assert sel.scores_[3] == sel.scores_[6] == 0.0 and sel.ranking_[3] < sel.ranking_[6]
    np.testing.assert_array_equal(np.argsort(sel.ranking_), np.argsort(-sel.scores_, kind="stable"))
