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


def test_n_features_in_is_recorded_and_checked_alike_for_maps_and_embeddings():
    """One rule (record_n_features) for FeatureMaps X: set in fit, an error naming both widths otherwise."""
    from sklearn_ais.alignment import FeatureReweighting

    rng = np.random.default_rng(0)
    fm = FeatureMaps(rng.random((10, 6, 2, 2)), PoolingHead("avg"))
    H = np.corrcoef(rng.normal(size=(10, 4)))
    fewer = FeatureMaps(rng.random((10, 5, 2, 2)), PoolingHead("avg"))
    sel = AISSelector(device="cpu").fit(fm, H)
    assert sel.n_features_in_ == 6 and not hasattr(sel, "feature_names_in_")
    with pytest.raises(ValueError, match="X has 5 feature maps, but AISSelector was fitted with 6"):
        sel.transform(fewer)
    rw = FeatureReweighting(alpha=1.0).fit(fm, H)
    assert rw.n_features_in_ == 6
    with pytest.raises(ValueError, match="X embeds to 5 features, but FeatureReweighting was fitted with 6"):
        rw.predict_similarity(fewer)


def test_every_similarity_estimator_requires_a_matrix_target():
    """SimilarityTargetMixin: y required and not one output per image, other tags kept."""
    from sklearn_ais import AISSelectorCV
    from sklearn_ais.alignment import FeatureReweighting, GLocalAligner

    for est in (AISSelector(), AISSelectorCV(), AISHeatmapper(), FeatureReweighting(), GLocalAligner()):
        tags = est.__sklearn_tags__()
        assert tags.target_tags.required and not tags.target_tags.single_output, type(est).__name__
        assert tags.transformer_tags is not None  # TransformerMixin's tags survive the mixin
    assert AISHeatmapper().__sklearn_tags__().transformer_tags.preserves_dtype == []
