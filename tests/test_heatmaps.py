"""AISHeatmapper: per-image AIS against the naive algorithm, heatmap conventions, ground truth."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer, FeatureMaps
from sklearn_ais.backbones import PoolingHead

from ._reference import naive_image_scores
from .conftest import H0, X0, fmaps, no_tensors, roundtrips
from .conftest import human as _human
from .conftest import vgg_like as _vgg_like


@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_image_scores_2d_match_naive(rng, comparison):
    X = rng.normal(size=(9, 6)) + 0.5
    H = _human(rng, 9, 0.2)
    hm = AISHeatmapper(comparison=comparison, device="cpu").fit(X, H)
    np.testing.assert_allclose(hm.image_scores_, naive_image_scores(X, H, "pearson", comparison), atol=1e-6)
    with pytest.raises(TypeError, match="FeatureMaps"):
        hm.transform(X)


def test_image_scores_vgg_head_match_naive(rng):
    maps = np.abs(rng.normal(size=(8, 5, 4, 4))).astype(np.float32)
    maps[2, 3] = 0
    head = _vgg_like(K=5)
    H = _human(rng, 8)
    hm = AISHeatmapper(device="cpu", output="maps").fit(FeatureMaps(maps, head), H)
    np.testing.assert_allclose(hm.image_scores_, naive_image_scores(maps, H, "pearson", "spearman", head), atol=1e-6)
    assert hm.image_scores_[2, 3] == 0.0


def test_heatmap_is_weighted_sum_of_positive_maps(rng):
    maps = rng.random((10, 4, 3, 3)).astype(np.float32)
    fm = FeatureMaps(maps, PoolingHead())
    H = _human(rng, 10)
    hm = AISHeatmapper(output="maps", device="cpu").fit(fm, H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = hm.transform(fm)
    for t in range(10):
        w = np.maximum(hm.image_scores_[t], 0)
        if w.sum() == 0:
            assert (heat[t] == 0).all()
            continue
        raw = np.tensordot(w / w.sum(), maps[t].astype(float), axes=1)
        expected = (raw - raw.min()) / (raw.max() - raw.min()) if np.ptp(raw) > 0 else np.zeros_like(raw)
        np.testing.assert_allclose(heat[t], expected, atol=1e-6)
    assert heat.min() >= 0 and heat.max() <= 1


def test_new_images_use_global_scores_and_keep_mask(rng):
    maps = rng.random((10, 4, 3, 3)).astype(np.float32)
    H = _human(rng, 10)
    keep = np.array([True, True, False, True])
    hm = AISHeatmapper(output="maps", keep=keep, device="cpu").fit(FeatureMaps(maps, PoolingHead()), H)
    new = FeatureMaps(rng.random((2, 4, 3, 3)).astype(np.float32), PoolingHead())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = hm.image_weights(new)
    g = np.maximum(hm.scores_, 0) * keep
    assert g.sum() > 0  # the data give some positive global AIS: the check below is not vacuous
    np.testing.assert_allclose(w, np.tile(g / g.sum(), (2, 1)))
    assert (w[:, 2] == 0).all()


def test_all_weights_nonpositive_warns_and_gives_zeros(rng):
    maps = rng.random((6, 3, 2, 2)).astype(np.float32)
    hm = AISHeatmapper(output="maps", device="cpu").fit(FeatureMaps(maps, PoolingHead()), _human(rng, 6))
    hm.image_scores_[:] = -1.0
    with pytest.warns(UserWarning, match="no map with positive"):
        heat = hm.transform(FeatureMaps(maps, PoolingHead()))
    assert np.isfinite(heat).all() and (heat == 0).all()


def test_dead_maps_constant_rows_tiny_images_no_nan(rng):
    images = rng.integers(0, 255, size=(6, 8, 8, 3), dtype=np.uint8)
    images[2] = 128  # constant image
    fm = DNNFeatureMapTransformer(backbone="regnet_y_400mf", weights=None, device="cpu").fit_transform(images)
    fm.maps[:, :5] = 0  # dead maps
    H = _human(rng, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = AISHeatmapper(device="cpu").fit(fm, H).transform(fm)
    assert np.isfinite(heat).all()
    assert heat.shape == (6, 8, 8)


def test_pipeline_selector_then_heatmapper_and_pickle(rng):
    maps = rng.random((12, 5, 3, 3)).astype(np.float32)
    fm = FeatureMaps(maps, PoolingHead())
    H = _human(rng, 12)
    pipe = Pipeline([("ais", AISSelector(n_features_to_select=2, device="cpu")),
                     ("heat", AISHeatmapper(output="maps", device="cpu"))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = pipe.fit(fm, H).transform(fm)
        dropped = ~pipe.named_steps["ais"].support_
        assert (pipe.named_steps["heat"].image_weights(pipe.named_steps["ais"].transform(fm))[:, dropped] == 0).all()
    assert heat.shape == (12, 3, 3)
    again = pickle.loads(pickle.dumps(pipe))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(again.transform(fm), heat)


@pytest.mark.slow
def test_ground_truth_heatmaps_find_the_object():
    """The observer judges by the object: AIS heatmaps must point at it, better than all maps averaged."""
    from sklearn_ais.datasets import make_similarity_task
    from sklearn_ais.metrics import relative_risk

    task = make_similarity_task(n_images=48, random_state=1)
    fm = DNNFeatureMapTransformer(device="cpu").fit_transform(task.images)
    hm = AISHeatmapper(device="cpu").fit(fm, task.similarity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = hm.transform(fm)
    rr = relative_risk(heat, task.masks, top=10)
    uniform = AISHeatmapper(device="cpu").fit(fm, task.similarity)
    uniform.image_scores_ = np.ones_like(uniform.image_scores_)  # unweighted mean of all maps
    rr_mean = relative_risk(uniform.transform(fm), task.masks, top=10)
    assert np.median(rr) >= 2, np.median(rr)
    assert np.median(rr) > np.median(rr_mean), (np.median(rr), np.median(rr_mean))
    # deterministic
    np.testing.assert_array_equal(AISHeatmapper(device="cpu").fit(fm, task.similarity).image_scores_, hm.image_scores_)


# ---------------------------------------------------------------------------
# Trust: training images are recognised whatever the batch, duplicates keep their own scores
# ---------------------------------------------------------------------------
def _heat_problem(rng, n=12, K=6):
    maps = rng.random((n, K, 4, 4)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    A = rng.normal(size=(n, n))
    H = np.corrcoef(E[:, :2]) + 0.3 * (A + A.T)
    return maps, H


def _by_hand(hm, maps, i, weights):
    from sklearn_ais._geometry import minmax

    raw = np.einsum("k,khw->hw", weights, maps[i].astype(np.float64))
    return minmax(raw)


def test_training_image_recognised_despite_float_noise(rng):
    """The network's maps of one image differ by ~1e-6 between batch sizes: still that training image."""
    maps, H = _heat_problem(rng)
    hm = AISHeatmapper(device="cpu", output="maps").fit(FeatureMaps(maps, PoolingHead()), H)
    noisy = maps[[4]] * (1 + 1e-6 * rng.standard_normal(maps[[4]].shape)).astype(np.float32)
    got = hm.transform(FeatureMaps(noisy, PoolingHead()))[0]
    w = np.maximum(hm.image_scores_[4], 0) / np.maximum(hm.image_scores_[4], 0).sum()
    np.testing.assert_allclose(got, _by_hand(hm, noisy, 0, w), atol=1e-12)
    assert not np.allclose(hm.image_scores_[4], hm.scores_)  # own scores differ from the global ones
    other = rng.random(maps[[0]].shape).astype(np.float32)  # a new image: global AIS
    wg = np.maximum(hm.scores_, 0) / np.maximum(hm.scores_, 0).sum()
    np.testing.assert_allclose(hm.image_weights(FeatureMaps(other, PoolingHead()))[0], wg)


def test_training_image_recognised_by_id(rng):
    maps, H = _heat_problem(rng)
    ids = np.array([f"im{i}" for i in range(12)])
    hm = AISHeatmapper(device="cpu", output="maps").fit(FeatureMaps(maps, PoolingHead(), ids=ids), H)
    recomputed = maps[[7]] * (1 + 1e-6)  # e.g. another device: float noise in the content, the same id
    w = hm.image_weights(FeatureMaps(recomputed, PoolingHead(), ids=ids[[7]]))[0]
    np.testing.assert_allclose(w, np.maximum(hm.image_scores_[7], 0) / np.maximum(hm.image_scores_[7], 0).sum())


def test_identical_training_images_keep_their_own_scores(rng):
    maps, H = _heat_problem(rng)
    maps[5] = maps[2]  # two identical images, judged differently by people
    fm = FeatureMaps(maps, PoolingHead())
    hm = AISHeatmapper(device="cpu", output="maps")
    heat = hm.fit_transform(fm, H)
    assert not np.allclose(hm.image_scores_[2], hm.image_scores_[5])
    for i in (2, 5):
        w = np.maximum(hm.image_scores_[i], 0) / np.maximum(hm.image_scores_[i], 0).sum()
        np.testing.assert_allclose(heat[i], _by_hand(hm, maps, i, w), atol=1e-12)
    np.testing.assert_allclose(hm.transform(fm), heat)  # same positions: same choice in transform


def test_heatmap_of_one_image_equals_the_full_batch_through_a_network(rng):
    """pipe.transform(images[[0]]) with a real network: the one-image batch's maps differ in the last bits."""
    import torch

    from sklearn_ais.backbones import get_backbone

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                              torch.nn.ReLU())
    bb = get_backbone(net, layer="3", input_size=24, resize_size=24)
    images = rng.integers(0, 256, size=(10, 24, 24, 3), dtype=np.uint8)
    t = DNNFeatureMapTransformer(bb, device="cpu", batch_size=10).fit(None)
    fm = t.transform(images)
    E = fm.embed()
    A = rng.normal(size=(10, 10))
    H = np.corrcoef(E[:, :3]) + 0.2 * (A + A.T)
    pipe = Pipeline([("maps", t), ("heat", AISHeatmapper(device="cpu", output="input"))]).fit(images, H)
    full = pipe.transform(images)
    for i in (0, 6):
        np.testing.assert_allclose(pipe.transform(images[[i]])[0], full[i], atol=1e-5)


def test_signed_weighting_matches_the_definition(rng):
    maps, H = _heat_problem(rng)
    fm = FeatureMaps(maps, PoolingHead())
    hm = AISHeatmapper(device="cpu", output="maps", weighting="signed").fit(fm, H)
    heat = hm.transform(fm)
    for i in range(len(maps)):
        s = hm.image_scores_[i]
        np.testing.assert_allclose(heat[i], _by_hand(hm, maps, i, s / np.abs(s).sum()), atol=1e-12)
        assert (hm.image_weights(fm)[i] < 0).any() == (s < 0).any()


# scikit-learn's checks feed 2-D float arrays: fit takes them (per-image AIS of units), transform cannot draw them.
_NEEDS_MAPS = "transform draws heatmaps from FeatureMaps (spatial maps); a 2-D array of units has nothing to draw"
HEATMAPPER_EXPECTED_FAILURES = {name: _NEEDS_MAPS for name in [
    "check_dict_unchanged", "check_dtype_object", "check_estimators_dtypes", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
    "check_fit_idempotent", "check_fit_score_takes_y", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_n_features_in_after_fitting", "check_pipeline_consistency",
    "check_transformer_data_not_an_array", "check_transformer_general",
]}


@parametrize_with_checks([AISHeatmapper(device="cpu")], expected_failed_checks=lambda est: HEATMAPPER_EXPECTED_FAILURES)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_what_the_expected_failures_stand_for(rng):
    """The behaviours those checks test, on FeatureMaps: pickling, idempotent fit, subset invariance, dtypes."""
    maps, H = _heat_problem(rng)
    fm = FeatureMaps(maps, PoolingHead())
    hm = AISHeatmapper(device="cpu", output="maps").fit(fm, H)
    heat = hm.transform(fm)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(hm)).transform(fm), heat)
    np.testing.assert_array_equal(AISHeatmapper(device="cpu", output="maps").fit(fm, H).fit(fm, H).transform(fm), heat)
    np.testing.assert_array_equal(hm.transform(fm[[3, 5]]), heat[[3, 5]])
    np.testing.assert_array_equal(hm.transform(fm[::-1]), heat[::-1])
    f64 = FeatureMaps(maps.astype(np.float64), PoolingHead())
    np.testing.assert_allclose(AISHeatmapper(device="cpu", output="maps").fit(f64, H).transform(f64), heat, atol=1e-6)
    with pytest.raises(ValueError, match="NaN or inf"):
        hm.transform(FeatureMaps(np.where(maps > 0.9, np.nan, maps), PoolingHead()))


# ---------------------------------------------------------------------------
# Robustness: bad input, images without judgments, persistence
# ---------------------------------------------------------------------------
def test_heatmapper_methods_validate_input():
    fm = fmaps()
    hm = AISHeatmapper(device="cpu", output="maps").fit(fm, H0)
    with pytest.raises(TypeError, match="needs FeatureMaps"):
        hm.transform(X0)
    four_maps = fmaps(K=4)
    with pytest.raises(ValueError, match="fitted with 6"):
        hm.transform(four_maps)
    infinite = FeatureMaps(np.full((2, 6, 3, 3), np.inf), PoolingHead())
    with pytest.raises(ValueError, match="NaN or inf"):
        hm.transform(infinite)
    with pytest.raises(ValueError, match="keep as a boolean mask must have shape \\(6,\\)"):
        AISHeatmapper(keep=[True, False]).fit(fm, H0)
    with pytest.raises(TypeError, match="ambiguous"):  # 0/1 floats: neither mask nor indices
        AISHeatmapper(keep=np.ones(6)).fit(fm, H0)
    with pytest.raises(ValueError, match="indices must lie in"):
        AISHeatmapper(keep=[7]).fit(fm, H0)
    no_geometry = FeatureMaps(fm.maps, PoolingHead())
    fitted = AISHeatmapper(device="cpu").fit(no_geometry, H0)
    with pytest.raises(ValueError, match="no input_size"):
        fitted.transform(no_geometry)
    with pytest.raises(NotFittedError, match="not fitted"):
        AISHeatmapper().transform(fm)
    # one new image at a time is fine
    assert hm.transform(fm[[0]]).shape == (1, 3, 3)


def test_image_without_judgments_is_reported_and_drawn_with_global_weights():
    fm = fmaps()
    H = H0.copy()
    H[4, :] = H[:, 4] = np.nan  # no judgment involves image 4
    H[7, [0, 1]] = H[[0, 1], 7] = 0.25  # image 7: only equal judgments (its row correlation is undefined)
    H[7, 2:] = H[2:, 7] = np.nan
    with pytest.warns(UserWarning) as record:
        hm = AISHeatmapper(device="cpu", output="maps").fit(fm, H)
    messages = " ".join(str(w.message) for w in record)
    assert "no observed pair in y (rows [4])" in messages
    assert "rows [4, 7]" in messages and "per-image AIS is undefined" in messages
    assert np.isnan(hm.image_scores_[[4, 7]]).all() and np.isnan(hm.image_base_scores_[[4, 7]]).all()
    assert np.isfinite(np.delete(hm.image_scores_, [4, 7], axis=0)).all()
    w = hm.image_weights(fm)
    glob = np.maximum(hm.scores_, 0) / np.maximum(hm.scores_, 0).sum()
    np.testing.assert_allclose(w[[4, 7]], np.vstack([glob, glob]))
    heat = hm.transform(fm)
    assert np.isfinite(heat).all() and heat[4].max() == 1.0  # drawn, not a silent all-zero map


def test_heatmapper_survives_pickle_and_joblib(tmp_path):
    fm = fmaps()
    hm = AISHeatmapper(device="cpu").fit(fm, H0)
    no_tensors(hm)
    for loaded in roundtrips(hm, tmp_path):
        np.testing.assert_array_equal(loaded.image_scores_, hm.image_scores_)
        np.testing.assert_array_equal(loaded.transform(fm), hm.transform(fm))


def test_image_comparison_is_independent_of_the_global_one(rng):
    X = rng.normal(size=(9, 6)) + 0.5
    H = _human(rng, 9)
    both = AISHeatmapper(comparison="pearson_r2", image_comparison="pearson", device="cpu").fit(X, H)
    rows = AISHeatmapper(comparison="pearson", device="cpu").fit(X, H)
    squared = AISHeatmapper(comparison="pearson_r2", device="cpu").fit(X, H)
    np.testing.assert_allclose(both.image_scores_, naive_image_scores(X, H, "pearson", "pearson"), atol=1e-6)
    np.testing.assert_array_equal(both.image_scores_, rows.image_scores_)
    np.testing.assert_array_equal(both.scores_, squared.scores_)  # the global scores follow `comparison`
    assert not np.allclose(both.image_scores_, squared.image_scores_)


def test_average_weighting_divides_by_the_signed_sum_and_reports_a_zero_sum(rng):
    fm = fmaps(n=12, K=4)
    hm = AISHeatmapper(weighting="average", output="maps", normalize=None, device="cpu").fit(fm, H0)
    np.testing.assert_allclose(hm.image_score_sums_, hm.image_scores_.sum(axis=1))
    # Planted scores: image 0 sums to 0 exactly, image 1 below 0 (np.average negates it), the others as fitted.
    hm.image_scores_[0] = [0.25, -0.5, 0.125, 0.125]
    hm.image_scores_[1] = [0.1, -0.4, 0.05, 0.05]
    with pytest.warns(UserWarning, match=r"sum to 0 \(indices \[0\]\).*np.average raises"):
        heat = hm.transform(fm)
    assert (heat[0] == 0).all()
    maps = fm.maps.astype(np.float64)
    for t in range(1, 12):
        np.testing.assert_allclose(heat[t], np.average(maps[t], weights=hm.image_scores_[t], axis=0), atol=1e-12)
    with pytest.raises(ZeroDivisionError):  # what the released code's np.average does with image 0
        np.average(maps[0], weights=hm.image_scores_[0], axis=0)
    # the max normalisation keeps the sign (viz_heatmap.py, line 45); squared squares it
    shown = hm.set_params(normalize="max", squared=True)
    with pytest.warns(UserWarning, match="sum to 0"):
        shown = shown.transform(fm)
    np.testing.assert_allclose(shown[1], (heat[1] / heat[1].max()) ** 2)


def test_direct_resize_stretches_uncropped_maps_and_refuses_a_crop():
    maps = np.random.default_rng(0).random((12, 3, 2, 3)).astype(np.float32)
    geometry = np.tile([5, 7, 4, 6, 0, 0], (12, 1))  # 5 x 7 originals resized to 4 x 6, the whole input
    fm = FeatureMaps(maps, PoolingHead(), geometry=geometry, input_size=(4, 6))
    hm = AISHeatmapper(weighting="signed", resize="direct", normalize=None, device="cpu").fit(fm, H0)
    raw = hm.set_params(output="maps").transform(fm)
    heat = hm.set_params(output="original").transform(fm)
    assert heat.shape == (12, 5, 7)
    # pixel centres: output row y samples (y + 0.5) * 2 / 5 - 0.5 of the grid, clamped
    t = np.clip((np.arange(5) + 0.5) * 2 / 5 - 0.5, 0, 1)
    s = np.clip((np.arange(7) + 0.5) * 3 / 7 - 0.5, 0, 2)
    cols = np.stack([np.interp(s, np.arange(3), r) for r in raw[3]])
    np.testing.assert_allclose(heat[3], np.stack([np.interp(t, np.arange(2), c) for c in cols.T]).T, atol=1e-12)
    cropped = FeatureMaps(maps, PoolingHead(), geometry=np.tile([5, 7, 5, 7, 0, 1], (12, 1)), input_size=(4, 6))
    with pytest.raises(ValueError, match="cropped before the network"):
        hm.transform(cropped)
