"""Robustness: hostile and messy inputs, missing judgments, persistence, determinism, long runs.

Every public entry point must answer bad input with a ``ValueError`` /
``TypeError`` (or ``FileNotFoundError``) that names the argument and what is
expected, never with an opaque error, a silent NaN or a silently wrong
number. Fitted estimators survive pickle and joblib; the same inputs give the
same bits; feature extraction cached with ``joblib.Memory`` resumes after a
crash without recomputing finished batches.
"""

import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold
from torch import nn

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer, FeatureMaps, metrics
from sklearn_ais._ablation import make_kernel
from sklearn_ais.backbones import PoolingHead, get_backbone
from sklearn_ais.datasets import make_similarity_task
from sklearn_ais.model_selection import (
    PairKFold,
    PairShuffleSplit,
    RepeatedPairKFold,
    cross_validate_alignment,
    mask_pairs,
    summarize_folds,
)

from ._reference import naive_ais, naive_path, tie_runs


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
class TinyNet(nn.Module):
    """A 4-map CNN that counts its forward passes and can fail on demand."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.fc = nn.Linear(4, 2)
        self.calls = 0
        self.fail_at = None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated crash (out of memory, killed job, ...)")
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tiny_backbone():
    torch.manual_seed(0)
    return get_backbone(TinyNet(), layer="features", input_size=16, resize_size=16)


def tiny_transformer(**kw):
    return DNNFeatureMapTransformer(tiny_backbone(), device="cpu", **kw).fit(None)


def task(n=12, K=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, K)) + 0.5
    A = rng.normal(size=(n, n))
    return X, (A + A.T) / 2


def fmaps(n=12, K=6, seed=0):
    maps = np.random.default_rng(seed).random((n, K, 3, 3)).astype(np.float32)
    return FeatureMaps(maps, PoolingHead(), input_size=(12, 12))


def raises(exc, match, f, *args, **kwargs):
    with pytest.raises(exc, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f(*args, **kwargs)


# ---------------------------------------------------------------------------
# 1. input validation: estimators
# ---------------------------------------------------------------------------
X0, H0 = task()
A0 = np.random.default_rng(1).normal(size=(12, 12))
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
    raises(exc, match, AISSelector(device="cpu").fit, X, y)
    raises(exc, match, AISHeatmapper(device="cpu").fit, X, y)


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
    raises(exc, match, AISSelector(**{"device": "cpu", **params}).fit, X0, H0)


def test_selector_methods_validate_input():
    sel = AISSelector(device="cpu", n_features_to_select=3).fit(X0, H0)
    raises(ValueError, "4 features, but AISSelector is expecting 8", sel.score, X0[:, :4], H0)
    raises(ValueError, "4 features", sel.transform, X0[:, :4])
    raises(ValueError, "0 observed pairs", sel.score, X0, np.full((12, 12), np.nan))
    raises(ValueError, "minimum of 4", sel.score, X0[:3], H0[:3, :3])
    raises(ValueError, "fitted with 8", sel.transform, fmaps(K=6))
    raises(NotFittedError, "not fitted", AISSelector().score, X0, H0)
    raises(NotFittedError, "not fitted", AISSelector().transform, X0)


def test_heatmapper_methods_validate_input():
    fm = fmaps()
    hm = AISHeatmapper(device="cpu", output="maps").fit(fm, H0)
    raises(TypeError, "needs FeatureMaps", hm.transform, X0)
    raises(ValueError, "fitted with 6", hm.transform, fmaps(K=4))
    raises(ValueError, "NaN or inf", hm.transform, FeatureMaps(np.full((2, 6, 3, 3), np.inf), PoolingHead()))
    raises(ValueError, "keep as a boolean mask must have shape \\(6,\\)", AISHeatmapper(keep=[True, False]).fit, fm, H0)
    raises(TypeError, "ambiguous", AISHeatmapper(keep=np.ones(6)).fit, fm, H0)  # 0/1 floats: neither mask nor indices
    raises(ValueError, "indices must lie in", AISHeatmapper(keep=[7]).fit, fm, H0)
    no_geometry = FeatureMaps(fm.maps, PoolingHead())
    raises(ValueError, "no input_size", AISHeatmapper(device="cpu").fit(no_geometry, H0).transform, no_geometry)
    raises(NotFittedError, "not fitted", AISHeatmapper().transform, fm)
    # one new image at a time is fine
    assert hm.transform(fm[[0]]).shape == (1, 3, 3)


def test_constant_model_similarity_is_reported_not_silent():
    """One unit with Pearson similarity: every model similarity is 0, the 2OI undefined."""
    with pytest.warns(UserWarning, match="constant over the observed pairs"):
        sel = AISSelector(device="cpu").fit(X0[:, :1], H0)
    assert np.isnan(sel.baseline_score_) and np.isnan(sel.scores_[0]) and np.isnan(sel.path_scores_[0])


# ---------------------------------------------------------------------------
# 2. numbers at the edges: magnitudes, layouts, ill-conditioned rows
# ---------------------------------------------------------------------------
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


def test_memory_layout_does_not_change_bits():
    Xf = np.asfortranarray(X0)
    a = AISSelector(device="cpu", comparison="pearson").fit(X0, H0)
    b = AISSelector(device="cpu", comparison="pearson").fit(Xf, H0)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    from sklearn_ais._similarity import batched_correlation

    t = np.random.default_rng(1000).normal(size=10)
    c = np.tanh(np.random.default_rng(0).normal(size=(3, 10)))  # (before the fix, layouts differed in the last bit)
    want = batched_correlation(c, t, "pearson")
    np.testing.assert_array_equal(batched_correlation(np.asfortranarray(c), t, "pearson"), want)
    # a (1, m) row whose first stride differs (as a boolean column mask returns): once a different last bit
    row = np.lib.stride_tricks.as_strided(c[:1].copy(), shape=(1, 10), strides=(8, 8))
    np.testing.assert_array_equal(batched_correlation(row, t, "pearson"), want[:1])


@pytest.mark.parametrize("similarity", ["pearson", "cosine"])
@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_sweep_counts_tiny_top_maps(similarity, comparison):
    """Kept maps 1e-6 smaller than the others were once declared dead along the sweep (2OI = 0)."""
    rng = np.random.default_rng(0)
    X = rng.random((9, 6)) + 0.5
    X[:, :3] *= 1e-6
    A = rng.normal(size=(9, 9))
    H = (A + A.T) / 2
    problem = make_kernel(X, similarity, "cpu")
    target = problem.target(H[np.triu_indices(9, 1)], comparison)
    order = np.arange(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: the t = 1 model side is constant for Pearson
        ref = np.nan_to_num(naive_path(X, H, order, similarity, comparison))
    # t = 2, 3 keep only the tiny maps (once all "dead": 2OI 0). From t = 4 on the tiny maps move the
    # model similarities by ~1e-12 only, which no float64 route resolves: not compared.
    got = problem.sweep(order, target, np.array([2, 3]))
    np.testing.assert_allclose(got, ref[1:3], atol=1e-9)
    assert np.abs(got).min() > 0.01


@pytest.mark.parametrize("similarity", ["pearson", "cosine"])
def test_dominated_rows_are_exact(similarity):
    """A map carrying ~all of a row's energy: the rank-one downdate loses every digit; recomputed directly."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 4))
    X[:, 1:] *= 1e-5  # map 0 dominates every row; ablating it leaves 1e-10 of the energy
    A = rng.normal(size=(10, 10))
    H = (A + A.T) / 2
    base, ais = naive_ais(X, H, similarity, "spearman")
    sel = AISSelector(similarity=similarity, device="cpu").fit(X, H)
    np.testing.assert_allclose(sel.scores_, ais, atol=1e-9)
    from ._reference import naive_image_scores

    hm = AISHeatmapper(similarity=similarity, device="cpu").fit(X, H)
    np.testing.assert_allclose(hm.image_scores_, naive_image_scores(X, H, similarity, "spearman"), atol=1e-9)


@pytest.mark.parametrize("offset, atol", [(1e2, 1e-11), (1e3, 1e-9), (1e4, 1e-8), (1e5, 1e-6)])
def test_pearson_rows_with_a_large_offset(offset, atol):
    """Rows c + N(0, 1): the raw identity q - s^2/K cancels (at c = 1e5 every row was 'constant' and the
    AIS off by 0.03); centred statistics do not. The ablated similarities are themselves resolved to
    ~1e-16 c^2 only (all near 1), hence the tolerance."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 10)) + offset
    A = rng.normal(size=(20, 20))
    H = (A + A.T) / 2
    sel = AISSelector(comparison="pearson", device="cpu").fit(X, H)
    base, ais = naive_ais(X, H, "pearson", "pearson")
    np.testing.assert_allclose(sel.baseline_score_, base, atol=1e-12)
    np.testing.assert_allclose(sel.scores_, ais, atol=atol)


# ---------------------------------------------------------------------------
# 3. images and weights (DNNFeatureMapTransformer)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8) + 200).save(d / "1x1.png")
    Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16)).save(d / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 24), dtype=np.uint8)]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("LA").save(d / "la.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    Image.fromarray(rng.integers(0, 2, (20, 24)).astype(bool)).save(d / "onebit.png")
    Image.fromarray(rng.random((20, 24)).astype(np.float32), "F").save(d / "float.tiff")
    Image.fromarray(rng.integers(0, 256, (2, 600, 3), dtype=np.uint8)).save(d / "strip.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (d / "text.png").write_text("not an image")
    (d / "empty.jpg").write_bytes(b"")
    Image.new("L", (100, 100)).save(d / "bomb.png")  # a bomb once MAX_IMAGE_PIXELS is lowered
    return d


ODD_IMAGES = ["1x1.png", "gray16.png", "cmyk.jpg", "rgba.png", "la.png", "palette.gif", "onebit.png", "float.tiff",
              "strip.png"]


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_images_are_read(image_dir, name):
    fm = tiny_transformer().transform([image_dir / name])
    assert fm.shape == (1, 4, 8, 8) and np.isfinite(fm.maps).all()
    assert fm.ids[0] == str(image_dir / name)


def test_odd_image_modes_convert_like_rgb(image_dir):
    t = tiny_transformer()
    rgb = t.transform([image_dir / "rgb.png"]).maps
    np.testing.assert_array_equal(t.transform([image_dir / "rgba.png"]).maps, rgb)  # alpha dropped
    gray16 = np.asarray(Image.open(image_dir / "gray16.png"))
    as8 = np.round(gray16 / 257.0).astype(np.uint8)  # 16-bit scaled, not clipped at 255
    np.testing.assert_array_equal(t.transform([image_dir / "gray16.png"]).maps, t.transform(as8[None]).maps)


BAD_IMAGES = {
    "text.png": (ValueError, "could not read image file .*text.png.*cannot identify"),
    "empty.jpg": (ValueError, "could not read image file .*empty.jpg"),
    "truncated.jpg": (ValueError, "could not read image file .*truncated.jpg"),
    "missing.png": (FileNotFoundError, "image file not found"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_unreadable_image_files(image_dir, name):
    exc, match = BAD_IMAGES[name]
    raises(exc, match, tiny_transformer().transform, [image_dir / "rgb.png", image_dir / name])


def test_decompression_bomb_refused(image_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 > 2 x limit: a "bomb"
    raises(ValueError, "could not read image file .*bomb.png.*decompression bomb", tiny_transformer().transform,
           [image_dir / "bomb.png"])


@pytest.mark.parametrize(
    "images, exc, match",
    [
        ([], ValueError, "no images given"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "no images given"),
        ([None], TypeError, "image 0: expected a path, PIL image, array or tensor, got NoneType"),
        ({"a": 1}, TypeError, "images must be a sequence"),
        (5, TypeError, "images must be a sequence"),
        (np.zeros((8, 8), np.uint8), ValueError, "array of images must have shape"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, "array of images must have shape"),
        (np.zeros((2, 8, 8, 3)) + 200.0, ValueError, "float pixel values must lie in \\[0, 1\\]"),
        (np.full((2, 8, 8, 3), 300), ValueError, "integer pixel values must lie in 0..255"),
        (np.full((2, 8, 8, 3), -1, np.int8), ValueError, "integer pixel values"),
        (np.zeros((2, 8, 8, 3), bool), ValueError, "unsupported pixel dtype bool"),
        (np.zeros((2, 8, 8, 3), complex), ValueError, "unsupported pixel dtype complex"),
        (np.full((2, 8, 8, 3), np.nan), ValueError, "NaN or infinite"),
        (np.zeros((2, 0, 8, 3), np.uint8), ValueError, "empty"),
        (torch.zeros(2, 4, 8, 8), ValueError, "C in \\{1, 3\\}"),
        (np.zeros((5, 8, 3), np.uint8), ValueError, "ambiguous array"),
    ],
    ids=lambda v: None,
)
def test_bad_image_inputs(images, exc, match):
    raises(exc, match, tiny_transformer().transform, images)


def test_bad_transformer_parameters_and_state(image_dir):
    raises(ValueError, "device must be", DNNFeatureMapTransformer(tiny_backbone(), device="gpu").fit, None)
    if not torch.cuda.is_available():
        raises(ValueError, "CUDA is not available", DNNFeatureMapTransformer(tiny_backbone(), device="cuda").fit,
               None)
    raises(ValueError, "batch_size", DNNFeatureMapTransformer(tiny_backbone(), batch_size=0).fit, None)
    raises(NotFittedError, "not fitted", DNNFeatureMapTransformer(tiny_backbone()).transform, [image_dir / "rgb.png"])
    raises(ValueError, "is a directory", tiny_transformer().transform, [image_dir])


def test_extreme_aspect_ratio_does_not_materialise_a_huge_image(monkeypatch):
    """A 1 x 100000 strip (300 kB) would be resized to 256 x 25.6M pixels (19 GB) before the crop."""
    from sklearn_ais.backbones import _preprocess

    sizes = []
    original = Image.Image.resize

    def guarded(self, size, *args, **kwargs):
        sizes.append(size[0] * size[1])
        if size[0] * size[1] > 50_000_000:
            raise MemoryError(f"refusing to allocate a {size} image in this test")
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
    strip = np.random.default_rng(0).integers(0, 256, (1, 1, 100_000, 3), dtype=np.uint8)
    pixels, geometry = _preprocess.Preprocessing().batch(_preprocess.as_image_source(strip))
    assert pixels.shape == (1, 3, 224, 224) and np.isfinite(pixels).all()
    assert tuple(geometry[0]) == (1, 100_000, 256, 25_600_000, 16, 12_799_888)
    assert max(sizes) <= 224 * 224
    # the crop-window path equals resize-then-crop on a strip both can afford
    monkeypatch.setattr(Image.Image, "resize", original)
    small = strip[:, :, :2000]
    full, _ = _preprocess.Preprocessing().batch(_preprocess.as_image_source(small))
    monkeypatch.setattr(_preprocess, "_MAX_RESIZED_PIXELS", 1000)
    window, _ = _preprocess.Preprocessing().batch(_preprocess.as_image_source(small))
    np.testing.assert_array_equal(window, full)


class _Payload:
    """Pickles as a call to exec: loading it with plain pickle runs code."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (exec, (f"open({self.flag!r}, 'w').close()",))


def test_weights_files_that_are_not_state_dicts(tmp_path):
    net = TinyNet()
    cases = {}
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases["list.pt"] = "not a state dict"
    (tmp_path / "text.pt").write_text("hello")
    cases["text.pt"] = "could not read weights file"
    torch.save({"features.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    cases["other.pt"] = "does not match the architecture"
    flag = tmp_path / "code_ran"
    torch.save({"features.0.weight": _Payload(str(flag))}, tmp_path / "payload.pt")
    cases["payload.pt"] = "refusing to load .* arbitrary pickled objects"
    for name, match in cases.items():
        raises(ValueError, match, DNNFeatureMapTransformer(net, weights=tmp_path / name, layer="features").fit, None)
    assert not flag.exists(), "the pickled payload was executed"
    raises(FileNotFoundError, "weights file not found",
           DNNFeatureMapTransformer(net, weights=tmp_path / "nope.pt", layer="features").fit, None)


# ---------------------------------------------------------------------------
# 4. metrics, splitters, cross-validation, datasets
# ---------------------------------------------------------------------------
Z0 = metrics.similarity_matrix(X0)


@pytest.mark.parametrize(
    "f, args, exc, match",
    [
        (metrics.second_order_isomorphism, (Z0, np.full((12, 12), np.nan)), ValueError, "0 observed"),
        (metrics.second_order_isomorphism, (Z0, np.ones((12, 12))), ValueError, "constant"),
        (metrics.second_order_isomorphism, (Z0, np.where(H0 > 1, np.inf, H0)), ValueError, "inf"),
        (metrics.second_order_isomorphism, (np.where(Z0 > 0.5, np.inf, Z0), H0), ValueError, "NaN or inf"),
        (metrics.second_order_isomorphism, (np.where(Z0 > 0.5, np.nan, Z0), H0), ValueError, "NaN"),
        (metrics.second_order_isomorphism, (Z0[:5], H0), ValueError, "square"),
        (metrics.second_order_isomorphism, (Z0[:2, :2], H0[:2, :2]), ValueError, "at least 3 x 3"),
        (metrics.second_order_isomorphism, (Z0, H0[:6, :6]), ValueError, "shapes differ"),
        (metrics.second_order_isomorphism, (Z0, H0, "kendall"), ValueError, "comparison"),
        (metrics.alignment_score, (X0[:, 0], H0), ValueError, "2-D"),
        (metrics.alignment_score, (np.where(X0 > 1, np.nan, X0), H0), ValueError, "NaN or inf"),
        (metrics.alignment_score, (X0[:5], H0), ValueError, "shapes differ"),
        (metrics.alignment_score, (X0, H0, "euclid"), ValueError, "similarity"),
        (metrics.noise_ceiling, (H0[None],), ValueError, "at least 2 subjects"),
        (metrics.noise_ceiling, (H0,), ValueError, "n_subjects, n, n"),
        (metrics.noise_ceiling, (np.stack([H0, np.where(H0 > 1, np.inf, H0)]),), ValueError, "inf"),
        (metrics.noise_ceiling, (np.ones((3, 2, 2)),), ValueError, "3 or more judged pairs"),
        (metrics.noise_ceiling, (np.stack([H0, H0]), "kendall"), ValueError, "'comparison' parameter of noise_ceiling must be"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_metrics_refuse_bad_input(f, args, exc, match):
    raises(exc, match, f, *args)


def test_metrics_constant_model_side_warns():
    with pytest.warns(UserWarning, match="model side is constant"):
        assert metrics.second_order_isomorphism(np.ones((12, 12)), H0) == 0.0


def test_metrics_with_missing_pairs_equal_the_observed_pairs_only():
    from scipy import stats

    H = mask_pairs(H0, np.arange(0, 66, 2))  # half the pairs missing
    iu = np.triu_indices(12, 1)
    ok = ~np.isnan(H[iu])
    want = stats.spearmanr(tie_runs(Z0[iu][ok]), H[iu][ok]).statistic
    assert metrics.second_order_isomorphism(Z0, H) == pytest.approx(want, abs=1e-12)
    assert metrics.alignment_score(X0, H) == pytest.approx(want, abs=1e-12)


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
    raises(exc, match, f)


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
    raises(exc, match, cross_validate_alignment, AISSelector(device="cpu"), X0, H0, **kw)


def test_cross_validate_alignment_inputs():
    raises(TypeError, "fit, score and score_all", cross_validate_alignment, "selector", X0, H0, cv=KFold(3))
    from sklearn.linear_model import LinearRegression

    raises(TypeError, "score_all", cross_validate_alignment, LinearRegression(), X0, H0, cv=KFold(3))
    raises(ValueError, "NaN", cross_validate_alignment, AISSelector(device="cpu"), np.where(X0 > 1, np.nan, X0), H0,
           cv=KFold(3))
    raises(ValueError, "not symmetric", cross_validate_alignment, AISSelector(device="cpu"), X0, A0, cv=KFold(3))
    # an int and an explicit list of (train, test) image splits are accepted, as in scikit-learn
    a = cross_validate_alignment(AISSelector(device="cpu"), X0, H0, cv=3)  # an int: shuffled folds, seeded
    b = cross_validate_alignment(AISSelector(device="cpu"), X0, H0,
                                 cv=list(KFold(3, shuffle=True, random_state=0).split(X0)))
    pd.testing.assert_frame_equal(a.table.drop(columns="fit_time"), b.table.drop(columns="fit_time"))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_images=3), "\'n_images\' parameter of make_similarity_task must be an int in the range \\[4"),
        (dict(n_images=4.5), "\'n_images\' parameter of make_similarity_task must be an int"),
        (dict(n_images="8"), "\'n_images\' parameter of make_similarity_task must be an int"),
        (dict(image_size=8), "\'image_size\' parameter .* range \\[16"),
        (dict(noise=-1), "\'noise\' parameter of make_similarity_task must be a float in the range \\[0.0"),
        (dict(noise=np.nan), "\'noise\' parameter of make_similarity_task must be a float in the range \\[0.0"),
        (dict(n_shapes=0), "\'n_shapes\' parameter .* range \\[1, 6\\]"),
        (dict(n_colors=9), "\'n_colors\' parameter .* range \\[1, 8\\]"),
        (dict(shape_weight=0, color_weight=0, noise=0), "the similarity would be constant"),
        (dict(backgrounds=["plaid"]), "backgrounds must be"),
        (dict(object_size=(0.9, 0.1)), "object_size must satisfy"),
    ],
)
def test_make_similarity_task_refuses_bad_parameters(kw, match):
    raises(ValueError, match, make_similarity_task, **{"n_images": 8, "image_size": 32, "random_state": 0, **kw})


# ---------------------------------------------------------------------------
# 5. missing judgments
# ---------------------------------------------------------------------------
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


def test_cross_validation_with_half_the_pairs_missing():
    H = mask_pairs(H0, np.random.default_rng(0).permutation(66)[:33])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # images left without pairs in a fold
        res = cross_validate_alignment(AISSelector(device="cpu"), X0, H, cv=PairKFold(3, random_state=0))
    assert np.isfinite(res.table[["train_score_selected", "test_score_full", "test_score_selected"]].to_numpy()).all()
    assert (res.table.n_test == 11).all()  # 33 observed pairs, 3 folds


# ---------------------------------------------------------------------------
# 6. persistence
# ---------------------------------------------------------------------------
def _no_tensors(obj, path="estimator"):
    """Fitted attributes hold NumPy arrays and Python scalars, never (device-bound) torch tensors."""
    for name, value in vars(obj).items():
        if not name.endswith("_") and not name.startswith("_"):
            continue
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            assert not isinstance(v, torch.Tensor), f"{path}.{name} is a torch tensor"
            if name.endswith("_") and v is not None and not isinstance(v, (FeatureMaps,)):
                assert isinstance(v, (np.ndarray, np.generic, int, float, bool, str)), (name, type(v))


def _roundtrips(est, tmp_path):
    yield pickle.loads(pickle.dumps(est))
    joblib.dump(est, tmp_path / "est.joblib")
    yield joblib.load(tmp_path / "est.joblib")


def test_selector_survives_pickle_and_joblib(tmp_path):
    sel = AISSelector(device="cpu", cv=KFold(3, shuffle=True, random_state=0)).fit(X0, H0)
    _no_tensors(sel)
    assert isinstance(sel.baseline_score_, float) and sel.scores_.dtype == np.float64
    for loaded in _roundtrips(sel, tmp_path):
        for attr in ("scores_", "ranking_", "support_", "path_scores_", "cv_path_scores_"):
            np.testing.assert_array_equal(getattr(loaded, attr), getattr(sel, attr))
        assert loaded.score(X0, H0) == sel.score(X0, H0)
        np.testing.assert_array_equal(loaded.transform(X0), sel.transform(X0))


def test_heatmapper_survives_pickle_and_joblib(tmp_path):
    fm = fmaps()
    hm = AISHeatmapper(device="cpu").fit(fm, H0)
    _no_tensors(hm)
    for loaded in _roundtrips(hm, tmp_path):
        np.testing.assert_array_equal(loaded.image_scores_, hm.image_scores_)
        np.testing.assert_array_equal(loaded.transform(fm), hm.transform(fm))


def test_transformer_survives_pickle_and_joblib(tmp_path, image_dir):
    t = tiny_transformer()
    images = [image_dir / "rgb.png", image_dir / "cmyk.jpg"]
    fm = t.transform(images)
    for loaded in _roundtrips(t, tmp_path):
        np.testing.assert_array_equal(loaded.transform(images).maps, fm.maps)
    for loaded in _roundtrips(fm, tmp_path):  # the output too (maps + head)
        np.testing.assert_array_equal(loaded.embed(), fm.embed())


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
def test_gpu_fitted_estimators_load_on_a_cpu_only_machine(tmp_path, image_dir):
    """Nothing device-bound is pickled; a GPU device on a CPU-only machine is handled clearly."""
    t = tiny_transformer()
    images = [image_dir / "rgb.png"]
    want = t.transform(images).maps
    t.device_ = torch.device("cuda")  # as if fitted with device="auto" on a GPU machine
    loaded = pickle.loads(pickle.dumps(t.set_params(device="auto")))
    assert all(p.device.type == "cpu" for p in loaded.backbone_.model.parameters())
    np.testing.assert_array_equal(loaded.transform(images).maps, want)  # falls back to the CPU
    loaded.set_params(device="cuda")
    raises(ValueError, "CUDA is not available", loaded.transform, images)

    sel = AISSelector(device="cpu").fit(X0, H0)
    sel.set_params(device="cuda")  # fitted with device="cuda" elsewhere
    loaded = pickle.loads(pickle.dumps(sel))
    np.testing.assert_array_equal(loaded.transform(X0), sel.transform(X0))  # no device needed
    raises(ValueError, "CUDA is not available on this machine.*set_params", loaded.score, X0, H0)
    assert loaded.set_params(device="cpu").score(X0, H0) == AISSelector(device="cpu").fit(X0, H0).score(X0, H0)


# ---------------------------------------------------------------------------
# 7. determinism
# ---------------------------------------------------------------------------
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


@pytest.mark.filterwarnings("ignore::UserWarning")  # rows without pairs, t = 1 folds
def test_splits_and_cross_validation_are_reproducible():
    for cv in (PairKFold(4, random_state=7), RepeatedPairKFold(3, n_repeats=2, random_state=7),
               PairShuffleSplit(3, test_size=0.3, random_state=7)):
        s1, s2 = list(cv.split(X0, H0)), list(cv.split(X0, H0))
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(s1, s2))
    X, H = task(30, 10, seed=1)
    r1 = cross_validate_alignment(AISSelector(device="cpu"), X, H)  # default: RepeatedKFold(random_state=0)
    r2 = cross_validate_alignment(AISSelector(device="cpu"), X, H)
    pd.testing.assert_frame_equal(r1.table.drop(columns="fit_time"), r2.table.drop(columns="fit_time"))
    t1, t2 = make_similarity_task(8, 32, random_state=5), make_similarity_task(8, 32, random_state=5)
    np.testing.assert_array_equal(t1.images, t2.images)
    np.testing.assert_array_equal(t1.similarity, t2.similarity)


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


# ---------------------------------------------------------------------------
# 8. long runs: resumable feature extraction, bounded memory
# ---------------------------------------------------------------------------
def test_feature_cache_resumes_after_a_crash(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 20, 20, 3), dtype=np.uint8)
    want = tiny_transformer(batch_size=2).transform(images).maps  # no cache
    # joblib quirk: Memory(str) caches under <location>/joblib, Memory(Path) directly in <location>;
    # the transformer treats a str or a path like Memory(str), as scikit-learn's check_memory does.
    memory = joblib.Memory(str(tmp_path / "cache"), verbose=0)
    t = tiny_transformer(batch_size=2, memory=memory)
    net = t.backbone_.model
    net.calls, net.fail_at = 0, 3  # crash in the 3rd of 5 batches
    raises(RuntimeError, "simulated crash", t.transform, images)
    assert net.calls == 3
    net.calls, net.fail_at = 0, None
    np.testing.assert_array_equal(t.transform(images).maps, want)
    assert net.calls == 3  # batches 3, 4, 5 only: the first two came from the cache
    fresh = tiny_transformer(batch_size=2, memory=tmp_path / "cache")  # a new process, same configuration
    fresh.backbone_.model.calls = 0  # (fit ran one probe pass)
    np.testing.assert_array_equal(fresh.transform(images).maps, want)
    assert fresh.backbone_.model.calls == 0


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, numpy as np, torch
    from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
    from sklearn_ais.backbones import PoolingHead
    which, n, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(n, n)); H = (A + A.T) / 2
    if which == "selector":
        AISSelector(device="cpu").fit(np.maximum(rng.normal(size=(n, K)), 0), H)
    else:
        maps = np.maximum(rng.normal(size=(n, K, 7, 7)).astype(np.float32), 0)
        fm = FeatureMaps(maps, PoolingHead(), input_size=(224, 224))
        AISHeatmapper(device="cpu", output="maps").fit(fm, H).transform(fm)
    # VmHWM: this process's own peak. ru_maxrss would also count the pages of a large parent
    # (pytest) that the child held between fork and exec.
    try:
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print(int(hwm.split()[1]) * 1024)
    except (OSError, IndexError):
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def _peak_rss(which, n, K):
    """Peak resident memory (bytes) of a fresh process that builds the inputs and fits."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, which, str(n), str(K)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("which", ["selector", "heatmapper"])
def test_peak_memory_small(which):
    assert _peak_rss(which, 100, 256) < 2 * 2**30


@pytest.mark.parametrize("seed", range(4))
def test_vgg_head_ablating_an_images_only_map(seed):
    """An image whose only non-zero map is ablated embeds as rest(bias) exactly: such images tie.
    A - contribution in float32 left ~1e-7 noise that broke the ties (AIS off by up to 0.3)."""
    from .conftest import vgg_like as _vgg_like

    rng = np.random.default_rng(seed)
    maps = np.maximum(rng.normal(size=(7, 3, 4, 4)), 0).astype(np.float32)
    maps[:, 0] = 0  # dead everywhere: map 1 or 2 is often an image's only map
    maps[rng.random(7) < 0.5, 2] = 0
    head = _vgg_like(K=3, seed=seed)
    A = rng.normal(size=(7, 7))
    H = (A + A.T) / 2
    sel = AISSelector(device="cpu").fit(FeatureMaps(maps, head), H)
    np.testing.assert_allclose(sel.scores_, naive_ais(maps, H, "pearson", "spearman", head=head)[1], atol=1e-6)
    from ._reference import naive_image_scores

    hm = AISHeatmapper(device="cpu").fit(FeatureMaps(maps, head), H)
    ok = np.isfinite(hm.image_scores_).all(axis=1)
    np.testing.assert_allclose(hm.image_scores_[ok], naive_image_scores(maps, H, "pearson", "spearman", head)[ok],
                               atol=1e-6)


def test_one_symmetry_rule_for_targets_and_metrics():
    """check_similarity_target and the metrics accept and refuse the same matrices."""
    from sklearn_ais._targets import check_similarity_target

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
