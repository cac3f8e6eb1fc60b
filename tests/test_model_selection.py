"""sklearn_ais.model_selection: the pair splitters, mask_pairs and cross_validate_alignment on bad input,
missing pairs and repeated runs."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

from sklearn_ais import AISSelector
from sklearn_ais.datasets import make_similarity_task
from sklearn_ais.model_selection import (
    PairKFold,
    PairShuffleSplit,
    RepeatedPairKFold,
    cross_validate_alignment,
    mask_pairs,
    summarize_folds,
)

from .conftest import A0, H0, X0, task


@pytest.mark.parametrize(
    "f, exc, match",
    [
        (lambda: PairKFold(1).split(X0).__next__(), ValueError, "n_splits=2 or more"),
        (lambda: list(PairKFold(1000).split(X0)), ValueError, "greater than the number of samples"),
        (lambda: list(PairKFold(3).split(X0, H0[:5])), ValueError, "square"),
        (lambda: list(PairKFold(3).split(X0[:5], H0)), ValueError, "X has 5 images but y is 12 x 12"),
        (lambda: list(PairShuffleSplit(2, test_size=2.0).split(X0)), ValueError, "test_size"),
        (lambda: list(RepeatedPairKFold(3, n_repeats=0).split(X0)), ValueError, "n_repeats"),
        (lambda: mask_pairs(H0, [1000]), ValueError, "pairs must be integer indices"),
        (lambda: mask_pairs(H0, [0.5]), ValueError, "pairs must be integer indices"),
        (lambda: mask_pairs(H0[:5], [0]), ValueError, "square"),
        (lambda: summarize_folds(pd.DataFrame(columns=["test_score_full", "test_score_selected"])), ValueError,
         "no folds"),
    ],
)
def test_splitters_refuse_bad_input(f, exc, match):
    with pytest.raises(exc, match=match):
        f()


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(cv=KFold(6)), ValueError, "fold 0 has 2 test images; at least 4"),
        (dict(cv=PairKFold(40, random_state=0)), ValueError, "fold 0 has 1 test pairs|fold 0 has 2 test pairs"),
        (dict(cv=KFold(3), y_kind="distance"), ValueError, "y_kind"),
        (dict(cv=[]), ValueError, "no splits"),
    ],
)
def test_cross_validate_alignment_refuses_bad_folds(kw, exc, match):
    with pytest.raises(exc, match=match):
        cross_validate_alignment(AISSelector(device="cpu"), X0, H0, **kw)


def test_cross_validate_alignment_inputs():
    with pytest.raises(TypeError, match="fit, score and score_all"):
        cross_validate_alignment("selector", X0, H0, cv=KFold(3), test="corrected_t")
    with pytest.raises(TypeError, match="score_all"):
        cross_validate_alignment(LinearRegression(), X0, H0, cv=KFold(3), test="corrected_t")
    with pytest.raises(ValueError, match="NaN"):
        cross_validate_alignment(AISSelector(device="cpu"), np.where(X0 > 1, np.nan, X0), H0, cv=KFold(3), test="corrected_t")
    with pytest.raises(ValueError, match="not symmetric"):
        cross_validate_alignment(AISSelector(device="cpu"), X0, A0, cv=KFold(3), test="corrected_t")
    # an int and an explicit list of (train, test) image splits are accepted, as in scikit-learn
    a = cross_validate_alignment(AISSelector(device="cpu"), X0, H0, cv=3, test="corrected_t")  # an int: shuffled folds, seeded
    b = cross_validate_alignment(AISSelector(device="cpu"), X0, H0,
                                 cv=list(KFold(3, shuffle=True, random_state=0).split(X0)), test="corrected_t")
    pd.testing.assert_frame_equal(a.table.drop(columns="fit_time"), b.table.drop(columns="fit_time"))


def test_cross_validation_with_half_the_pairs_missing():
    H = mask_pairs(H0, np.random.default_rng(0).permutation(66)[:33])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # images left without pairs in a fold
        res = cross_validate_alignment(AISSelector(device="cpu"), X0, H, cv=PairKFold(3, random_state=0), test="corrected_t")
    assert np.isfinite(res.table[["train_score_selected", "test_score_full", "test_score_selected"]].to_numpy()).all()
    assert (res.table.n_test == 11).all()  # 33 observed pairs, 3 folds


@pytest.mark.filterwarnings("ignore::UserWarning")  # rows without pairs, t = 1 folds
def test_splits_and_cross_validation_are_reproducible():
    for cv in (PairKFold(4, random_state=7), RepeatedPairKFold(3, n_repeats=2, random_state=7),
               PairShuffleSplit(3, test_size=0.3, random_state=7)):
        s1, s2 = list(cv.split(X0, H0)), list(cv.split(X0, H0))
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(s1, s2))
    X, H = task(30, 10, seed=1)
    r1 = cross_validate_alignment(AISSelector(device="cpu"), X, H, test="corrected_t")  # default: RepeatedKFold(random_state=0)
    r2 = cross_validate_alignment(AISSelector(device="cpu"), X, H, test="corrected_t")
    pd.testing.assert_frame_equal(r1.table.drop(columns="fit_time"), r2.table.drop(columns="fit_time"))
    t1, t2 = make_similarity_task(8, 32, random_state=5), make_similarity_task(8, 32, random_state=5)
    np.testing.assert_array_equal(t1.images, t2.images)
    np.testing.assert_array_equal(t1.similarity, t2.similarity)


def test_fold_parts_match_a_naive_split_by_images_and_by_pairs():
    """One split rule for every cross-validation: image blocks, or every image with the other part's pairs hidden."""
    from sklearn_ais._pairs import fold_parts, pair_indices

    rng = np.random.default_rng(3)
    X, H = rng.normal(size=(7, 3)), np.corrcoef(rng.normal(size=(7, 5)))
    train, test = np.array([0, 2, 3, 6]), np.array([1, 4, 5])
    Xtr, Xte, Htr, Hte = fold_parts(X, H, train, test, by_pairs=False)
    np.testing.assert_array_equal(Xtr, X[train])
    np.testing.assert_array_equal(Xte, X[test])
    for part, block in ((train, Htr), (test, Hte)):
        np.testing.assert_array_equal(block, [[H[i, j] for j in part] for i in part])
    rows, cols = pair_indices(7)
    ptrain, ptest = np.arange(0, 21, 2), np.arange(1, 21, 2)
    Xtr, Xte, Htr, Hte = fold_parts(X, H, ptrain, ptest, by_pairs=True)
    assert Xtr is X and Xte is X
    for kept, masked in ((ptrain, Htr), (ptest, Hte)):
        for p in range(21):
            i, j = rows[p], cols[p]
            expected = [H[i, j], H[j, i]] if p in kept else [np.nan, np.nan]
            np.testing.assert_equal([masked[i, j], masked[j, i]], expected)
    # a custom selector of images (the kernels' .subset)
    picked = fold_parts("data", H, train, test, by_pairs=False, take=lambda d, idx: (d, tuple(idx)))[:2]
    assert picked == (("data", (0, 2, 3, 6)), ("data", (1, 4, 5)))


def test_fold_rows_have_one_layout_on_the_fast_and_the_generic_path():
    """AISSelector's shared-kernel path and the generic fit/score loop build the same columns, in the same order,
    with equal scores (a subclass that overrides fit takes the generic path)."""

    class Plain(AISSelector):
        def fit(self, X, y):
            return super().fit(X, y)

    X, H = task(24, 8, seed=5)
    kw = dict(cv=KFold(3, shuffle=True, random_state=0), return_estimators=True, return_paths=True)
    fast = cross_validate_alignment(AISSelector(n_features_to_select=3, device="cpu"), X, H, **kw)
    slow = cross_validate_alignment(Plain(n_features_to_select=3, device="cpu"), X, H, **kw)
    assert list(fast.table.columns) == list(slow.table.columns)
    cols = ["n_train", "n_test", "train_score_selected", "test_score_full", "test_score_selected", "n_selected"]
    assert list(fast.table.columns)[:9] == ["fold", "split", *cols, "fit_time"]
    pd.testing.assert_frame_equal(fast.table[cols], slow.table[cols], rtol=1e-12)
    np.testing.assert_allclose(fast.test_paths, slow.test_paths, rtol=1e-12)
    np.testing.assert_allclose(fast.train_paths, slow.train_paths, rtol=1e-12)
    assert [e.n_features_to_select_ for e in fast.estimators] == [e.n_features_to_select_ for e in slow.estimators]
