"""The input contract's X side (``sklearn_ais._validation``): feature masks, masked and sparse X, int cv."""

import numpy as np
import pytest
from scipy import sparse
from sklearn.model_selection import KFold

from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
from sklearn_ais._validation import as_feature_mask, check_image_cv
from sklearn_ais.backbones import PoolingHead


def _fm(n=10, K=6, seed=0):
    return FeatureMaps(np.random.default_rng(seed).random((n, K, 3, 3)).astype(np.float32), PoolingHead())


def test_index_arrays_are_indices_and_masks_are_masks():
    """An integer array of the mask's length was once read as booleans ([0, 1, 2] -> F, T, T)."""
    fm = _fm(K=3)
    by_index, by_mask = fm.embed(keep=[0, 1, 2]), fm.embed(keep=[True, True, True])
    np.testing.assert_array_equal(by_index, by_mask)
    np.testing.assert_array_equal(fm.embed(keep=np.array([2])), fm.embed(keep=[False, False, True]))
    np.testing.assert_array_equal(as_feature_mask([-1], 3), [False, False, True])
    with pytest.raises(TypeError, match="ambiguous"):
        fm.embed(keep=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="repeat"):
        as_feature_mask([1, 1], 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        as_feature_mask([True, False], 3)
    sel = AISSelector(device="cpu", n_features_to_select=2).fit(_fm().embed(), np.corrcoef(_fm().embed()[:, :2]))
    np.testing.assert_array_equal(as_feature_mask(sel, 6), sel.support_)


def test_heatmapper_keep_by_index_equals_keep_by_mask():
    fm = _fm()
    H = np.corrcoef(fm.embed()[:, :3]) + 0.1 * np.eye(10)
    a = AISHeatmapper(keep=[0, 2], output="maps", device="cpu").fit(fm, H).image_weights(fm)
    b = AISHeatmapper(keep=np.isin(np.arange(6), [0, 2]), output="maps", device="cpu").fit(fm, H).image_weights(fm)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "X, exc, match",
    [
        (np.ma.masked_array(np.ones((10, 4)), mask=np.eye(10, 4, dtype=bool)), TypeError, "masked array"),
        (sparse.csr_matrix(np.random.default_rng(0).random((10, 4))), TypeError, "[Ss]parse"),
    ],
    ids=["masked", "sparse"],
)
def test_masked_and_sparse_X_are_refused(X, exc, match):
    H = np.corrcoef(np.random.default_rng(1).random((10, 3)))
    with pytest.raises(exc, match=match):
        AISSelector(device="cpu").fit(X, H)


def test_int_cv_rule():
    cv = check_image_cv(4, random_state=7)
    assert isinstance(cv, KFold) and cv.shuffle and cv.random_state == 7 and cv.n_splits == 4
    with pytest.raises(ValueError, match="at least 2"):
        check_image_cv(1)
    explicit = KFold(3)
    assert check_image_cv(explicit) is explicit  # a splitter is used as given
