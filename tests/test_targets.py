"""The input contract's y side (``sklearn_ais._targets``): labels, the diagonal convention, missing values.

Every estimator and helper reads y through ``check_similarity_target``; these tests pin what it honours and
what it refuses, and check, estimator by estimator, that a labelled y is aligned to X by image id.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from sklearn.model_selection import KFold

from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps, metrics
from sklearn_ais._targets import check_similarity_target, diagonal_convention
from sklearn_ais.alignment import FeatureReweighting, GLocalAligner, compare_alignment
from sklearn_ais.backbones import PoolingHead
from sklearn_ais.model_selection import cross_validate_alignment, similarity_frame


def _problem(n=14, K=6, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, K, 3, 3)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    H = np.corrcoef(E[:, :3] + 0.3 * rng.normal(size=(n, 3)))
    ids = np.array([f"img{i}" for i in rng.permutation(n)])  # not sorted
    return maps, H, ids


# ---------------------------------------------------------------------------
# case 1: a labelled y in another order is aligned to X by label, never by position
# ---------------------------------------------------------------------------
def _shuffled_frame(H, ids):
    return similarity_frame(H, ids).sort_index().sort_index(axis=1)


def test_selector_aligns_labelled_y_to_feature_map_ids():
    maps, H, ids = _problem()
    fm = FeatureMaps(maps, PoolingHead(), ids=ids)
    want = AISSelector(device="cpu").fit(fm, H)
    got = AISSelector(device="cpu").fit(fm, _shuffled_frame(H, ids))
    assert got.baseline_score_ == want.baseline_score_
    np.testing.assert_array_equal(got.scores_, want.scores_)
    assert got.score(fm, _shuffled_frame(H, ids)) == want.score(fm, H)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AISHeatmapper(device="cpu"),
        lambda: FeatureReweighting(alpha=1.0),
        lambda: GLocalAligner(max_iter=5),
    ],
    ids=["heatmapper", "reweighting", "glocal"],
)
def test_estimators_align_labelled_y(make):
    maps, H, ids = _problem()
    fm = FeatureMaps(maps, PoolingHead(), ids=ids)
    a, b = make().fit(fm, H), make().fit(fm, _shuffled_frame(H, ids))
    fitted = [k for k in vars(a) if k.endswith("_") and isinstance(getattr(a, k), np.ndarray)]
    assert fitted
    for k in fitted:
        if getattr(a, k).dtype.kind == "f":
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    if hasattr(a, "score"):
        assert a.score(fm, H) == b.score(fm, _shuffled_frame(H, ids))


def test_cv_helpers_align_labelled_y():
    maps, H, ids = _problem(n=20)
    fm = FeatureMaps(maps, PoolingHead(), ids=ids)
    cv = KFold(4, shuffle=True, random_state=0)
    a = cross_validate_alignment(AISSelector(device="cpu"), fm, H, cv=cv, test="corrected_t").table.drop(columns="fit_time")
    b = cross_validate_alignment(AISSelector(device="cpu"), fm, _shuffled_frame(H, ids), cv=cv, test="corrected_t").table
    pd.testing.assert_frame_equal(a, b.drop(columns="fit_time"))
    c = compare_alignment([("m", fm)], None, H, methods=("none", "ais"), cv=cv).table.drop(columns="fit_time")
    d = compare_alignment([("m", fm)], None, _shuffled_frame(H, ids), methods=("none", "ais"), cv=cv).table
    pd.testing.assert_frame_equal(c, d.drop(columns="fit_time"))


def test_dataframe_X_index_is_its_ids():
    maps, H, ids = _problem()
    E = pd.DataFrame(maps.mean(axis=(2, 3)), index=ids)
    want = AISSelector(device="cpu").fit(E.to_numpy(), H)
    np.testing.assert_array_equal(AISSelector(device="cpu").fit(E, _shuffled_frame(H, ids)).scores_, want.scores_)


def test_labelled_y_missing_or_duplicated_ids_are_refused():
    maps, H, ids = _problem()
    fm = FeatureMaps(maps, PoolingHead(), ids=ids)
    other = similarity_frame(H)  # labelled 0..n-1: none of X's ids
    with pytest.raises(ValueError, match="not in y's index"):
        AISSelector(device="cpu").fit(fm, other)
    renamed = similarity_frame(H, ids).rename(index={ids[3]: "elsewhere"})
    with pytest.raises(ValueError, match=r"1 of X's 14 image ids are not in y's index.*img"):
        AISSelector(device="cpu").fit(fm, renamed)
    dup = similarity_frame(H, ids)
    dup.index = list(ids[:-1]) + [ids[0]]
    with pytest.raises(ValueError, match="duplicate labels"):
        AISSelector(device="cpu").fit(fm, dup)
    with pytest.raises(ValueError, match="unique"):
        FeatureMaps(maps, PoolingHead(), ids=[0] * len(maps))
    with pytest.raises(ValueError, match="repeats images"):
        fm[[0, 0, 1]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_any_relabelling_gives_the_same_target(seed):
    """Property: y aligned by label equals y permuted by hand, for any order of the frame."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    A = rng.normal(size=(n, n))
    H = (A + A.T) / 2
    np.fill_diagonal(H, np.nan)  # no diagonal convention to trip over
    ids = rng.permutation(100)[:n]
    perm = rng.permutation(n)
    frame = similarity_frame(H, ids).iloc[perm, rng.permutation(n)]
    fm = FeatureMaps(np.zeros((n, 1, 1, 1), np.float32), PoolingHead(), ids=ids)
    want = H.copy()
    np.testing.assert_array_equal(check_similarity_target(frame, fm), want)
    # without ids on X, the frame's rows give the order
    np.testing.assert_array_equal(check_similarity_target(frame, n), want[np.ix_(perm, perm)])


# ---------------------------------------------------------------------------
# case 2: the diagonal convention (an RDM passed as a similarity matrix)
# ---------------------------------------------------------------------------
def test_rdm_as_similarity_is_refused_with_the_fix():
    maps, H, _ = _problem()
    D = 1 - H  # zero diagonal, non-negative off-diagonal: an RDM
    with pytest.raises(ValueError, match='y_kind="dissimilarity"'):
        AISSelector(device="cpu").fit(maps.mean(axis=(2, 3)), D)
    a = AISSelector(device="cpu", y_kind="dissimilarity").fit(maps.mean(axis=(2, 3)), D)
    b = AISSelector(device="cpu").fit(maps.mean(axis=(2, 3)), H)
    np.testing.assert_allclose(a.scores_, b.scores_, atol=1e-12)
    with pytest.raises(ValueError, match='y_kind="similarity"'):
        AISSelector(device="cpu", y_kind="dissimilarity").fit(maps.mean(axis=(2, 3)), H)
    nan_diag = D.copy()
    np.fill_diagonal(nan_diag, np.nan)  # no convention: accepted as y_kind says
    AISSelector(device="cpu").fit(maps.mean(axis=(2, 3)), nan_diag)


def _sym(rng, n):
    A = rng.normal(size=(n, n))
    return (A + A.T) / 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 9))
def test_diagonal_convention_property(seed, n):
    rng = np.random.default_rng(seed)
    M = _sym(rng, n)
    off = M + np.diag(np.full(n, np.nan))
    lo, hi = np.nanmin(off, axis=1), np.nanmax(off, axis=1)
    at_min, at_max, inside = M.copy(), M.copy(), M.copy()
    np.fill_diagonal(at_min, lo - rng.random(n))
    np.fill_diagonal(at_max, hi + rng.random(n))
    assert diagonal_convention(at_min) == "dissimilarity"
    assert diagonal_convention(at_max) == "similarity"
    np.fill_diagonal(inside, (lo + hi) / 2)
    inside[0, 0] = lo[0] - 1  # one row at its minimum is not a convention
    assert diagonal_convention(inside) is None
    np.fill_diagonal(at_min, np.nan)
    assert diagonal_convention(at_min) is None


# ---------------------------------------------------------------------------
# the general rule: every input that carries meaning is honoured or refused
# ---------------------------------------------------------------------------
def _target(n=8, seed=0):
    S = _sym(np.random.default_rng(seed), n)
    np.fill_diagonal(S, 5.0)  # a similarity diagonal
    return S


def test_masked_array_y_is_missing_pairs():
    S = _target()
    mask = np.zeros_like(S, dtype=bool)
    mask[0, 1] = mask[1, 0] = True
    got = check_similarity_target(np.ma.masked_array(S, mask), 8)
    want = S.copy()
    want[0, 1] = want[1, 0] = np.nan
    np.fill_diagonal(want, np.nan)
    np.testing.assert_array_equal(got, want)


def test_pandas_nullable_y_is_missing_pairs():
    S = _target()
    frame = pd.DataFrame(S).astype("Float64")
    frame.iloc[0, 1] = pd.NA
    frame.iloc[1, 0] = pd.NA
    got = check_similarity_target(frame, 8)
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 0]) and got[0, 2] == S[0, 2]


@pytest.mark.parametrize(
    "y, exc, match",
    [
        (sparse.csr_matrix(_target()), TypeError, "sparse"),
        (pd.DataFrame(_target()).astype(str), TypeError, "numeric"),
        (_target() + 1j, TypeError, "complex"),
        (np.triu(_target()) + np.tril(np.full((8, 8), np.nan), -1), ValueError, "only its upper triangle"),
        (np.tril(_target()), ValueError, "only its lower triangle.*all 0"),
        (_target()[np.triu_indices(8, 1)][None], ValueError, "condensed"),
    ],
    ids=["sparse", "strings", "complex", "upper-NaN", "lower-zero", "condensed"],
)
def test_refused_targets(y, exc, match):
    with pytest.raises(exc, match=match):
        check_similarity_target(y, 8)


def test_symmetry_tolerance_is_relative_to_scale():
    S = _target() * 1e-9
    S[0, 1] += 1e-15  # 1e-6 of the largest value: refused, whatever the units
    with pytest.raises(ValueError, match="not symmetric"):
        check_similarity_target(S, 8)
    S = _target() * 1e9
    S[0, 1] += 1e-3  # 1e-12 of the largest value: round-off
    check_similarity_target(S, 8)


def test_no_check_silences_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_similarity_target(_target(), 8)


# ---------------------------------------------------------------------------
# One symmetry rule
# ---------------------------------------------------------------------------
def test_one_symmetry_rule_for_targets_and_metrics():
    """check_similarity_target and the metrics accept and refuse the same matrices."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, 8)) * 1e-3
    S = (A + A.T) / 2
    nearly = S.copy()
    nearly[0, 1] += 1e-12  # 1e-9 of the matrix's own scale: symmetric up to round-off
    skewed = S.copy()
    skewed[0, 1] += 1e-9  # 1e-6 of its scale: a real asymmetry (was accepted when the tolerance was absolute)
    tiny = S * 1e-12  # a matrix in units of 1e-12 is held to the same relative standard
    tiny[0, 1] += 1e-16
    for M, ok in [(nearly, True), (skewed, False), (tiny, False)]:
        calls = [lambda M=M: check_similarity_target(M, 8), lambda M=M: metrics.second_order_isomorphism(S, M)]
        for call in calls:
            if ok:
                call()
            else:
                with pytest.raises(ValueError, match="not symmetric"):
                    call()
