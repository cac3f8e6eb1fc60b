"""Preprocessing without a crop (issue 13 item 2) and maps of different sizes ("ragged" FeatureMaps).

References are independent: PIL's resize and the network run by hand, per-image head calls, the
naive AIS algorithm on per-image embeddings, and a square planted in the original images.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer, FeatureMaps
from sklearn_ais._geometry import to_original
from sklearn_ais._validation import check_feature_maps
from sklearn_ais.backbones import ModuleHead, PoolingHead, get_backbone
from sklearn_ais.backbones._preprocess import Preprocessing, as_image_source

from ._reference import naive_compare, naive_rsm
from .conftest import human as _human
from .conftest import vgg_like as _vgg_like

SIZES = [(40, 60), (60, 40), (48, 48), (36, 72), (50, 70), (70, 50)]


def photos(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def net_backbone(**kw):
    torch.manual_seed(0)
    return get_backbone(Net(), layer="features", input_size=24, **kw)


def by_hand(model, image, shorter, mean, std, interpolation=Image.Resampling.BILINEAR):
    """The network run on the image resized (shorter side, aspect kept) by PIL, no crop."""
    h, w = image.shape[:2]
    size = (shorter, int(shorter * w / h)) if h <= w else (int(shorter * h / w), shorter)
    resized = np.asarray(Image.fromarray(image).resize(size[::-1], interpolation), dtype=np.float32) / 255
    x = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        return model.features(x)[0].numpy()


# -- preprocessing -------------------------------------------------------------------
def test_crop_false_maps_equal_the_network_on_shorter_side_resized_images():
    X = photos()
    bb = net_backbone(crop=False, resize_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    fm = DNNFeatureMapTransformer(bb, batch_size=4).fit(None).transform(X)
    assert fm.ragged and fm.shape == (6, 5, None, None)
    for i, image in enumerate(X):
        ref = by_hand(bb.model, image, 32, np.float32([0.5, 0.4, 0.3]), np.float32([0.2, 0.3, 0.4]))
        np.testing.assert_allclose(fm.maps[i], ref, rtol=1e-5, atol=1e-6)
    h, w = 32, 48  # 40 x 60 -> 32 x 48, stride 2 -> 16 x 24 maps
    assert fm.maps[0].shape == (5, h // 2, w // 2) and fm.maps[1].shape == (5, w // 2, h // 2)
    np.testing.assert_array_equal(fm.input_size, [[32, 48], [48, 32], [32, 32], [32, 64], [32, 44], [44, 32]])
    np.testing.assert_array_equal(fm.geometry[:, 4:], 0)
    np.testing.assert_array_equal(fm.geometry[0], [40, 60, 32, 48, 0, 0])


def test_crop_false_default_resize_is_the_input_size():
    assert get_backbone("vgg16", weights=None, crop=False).resize_size == 224  # the paper's protocol
    lite = get_backbone("efficientnet_lite0", weights=None, crop=False)
    assert (lite.crop, lite.resize_size, lite.input_size) == (False, 224, (224, 224))
    assert get_backbone("vgg16", weights=None, crop=False, resize_size=300).resize_size == 300
    assert get_backbone(lite).crop is False and get_backbone(lite, crop=True).crop is True
    t = DNNFeatureMapTransformer("efficientnet_lite0", weights=None, crop=False).fit(None)
    assert t.backbone_.resize_size == 224 and t.provenance_["preprocessing"]["crop"] is False
    with pytest.raises(ValueError, match="crop=False"):
        Preprocessing((224, 224), 200)  # a crop that does not fit says how to keep the whole image


def test_crop_false_same_size_inputs_stay_a_plain_array():
    X = np.random.default_rng(0).integers(0, 256, (5, 30, 40, 3), dtype=np.uint8)
    fm = DNNFeatureMapTransformer(net_backbone(crop=False, resize_size=24), batch_size=2).fit(None).transform(X)
    assert isinstance(fm.maps, np.ndarray) and fm.maps.shape == (5, 5, 12, 16) and not fm.ragged
    assert fm.input_size == (24, 32)


def test_crop_false_refuses_an_input_too_large_to_run():
    strip = np.zeros((1, 1, 100_000, 3), np.uint8)
    with pytest.raises(ValueError, match=r"without a crop.*crop=True or a smaller resize_size"):
        Preprocessing((224, 224), 224, crop=False).batch(as_image_source(strip))


def test_crop_true_is_unchanged():
    X = photos()
    a = DNNFeatureMapTransformer(net_backbone(resize_size=28), batch_size=4).fit(None).transform(X)
    assert isinstance(a.maps, np.ndarray) and a.maps.shape == (6, 5, 12, 12) and a.input_size == (24, 24)


# -- the container -------------------------------------------------------------------
def ragged_maps(K=4, seed=0, sizes=((4, 6), (6, 4), (4, 4), (5, 7), (4, 6), (8, 4), (6, 6), (4, 8))):
    rng = np.random.default_rng(seed)
    return [np.abs(rng.normal(size=(K, h, w))).astype(np.float32) for h, w in sizes]


def test_ragged_embed_pooled_and_indexing_match_per_image_heads():
    maps = ragged_maps(K=6)
    for head in (PoolingHead("avg"), PoolingHead("max", activation="relu"), _vgg_like(K=6, P=4),
                 ModuleHead(lambda m: m.amax(dim=(2, 3)) - m.mean(dim=(2, 3)))):
        fm = FeatureMaps(maps, head, ids=np.arange(10, 18))
        ref = np.concatenate([head(torch.from_numpy(m)[None]).double().numpy() for m in maps])
        np.testing.assert_allclose(fm.embed(batch_size=1), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fm.embed(), ref, rtol=1e-5, atol=1e-5)
        keep = np.array([1, 0, 1, 1, 0, 1], bool)
        ref_keep = np.concatenate([head(torch.from_numpy(m * keep[:, None, None])[None]).double().numpy()
                                   for m in maps])
        np.testing.assert_allclose(fm.embed(keep), ref_keep, rtol=1e-5, atol=1e-5)
    head = _vgg_like(K=6, P=4)
    pooled = FeatureMaps(maps, head).pooled()
    for i, m in enumerate(maps):
        torch.testing.assert_close(pooled[i], head.pooled(torch.from_numpy(m)[None])[0])
    fm = FeatureMaps(maps, PoolingHead(), ids=np.arange(10, 18), input_size=[m.shape[1:] for m in maps])
    sub = fm[[1, 3]]
    assert sub.ragged and list(sub.ids) == [11, 13] and np.array_equal(sub.maps[1], maps[3])
    np.testing.assert_array_equal(sub.input_size, [[6, 4], [5, 7]])
    same = fm[[0, 4]]  # both 4 x 6: a plain array again
    assert not same.ragged and same.maps.shape == (2, 6, 4, 6) and same.input_size == (4, 6)
    assert fm[2:4].ids.tolist() == [12, 13] and len(fm[::2]) == 4
    assert fm.map_sizes.tolist()[:2] == [[4, 6], [6, 4]]
    assert "ragged" in repr(fm)


def test_ragged_weighted_sum_and_masked():
    maps = ragged_maps(K=3)
    fm = FeatureMaps(maps, PoolingHead())
    w = np.random.default_rng(1).random((len(maps), 3))
    for i, heat in enumerate(fm.weighted_sum(w)):
        np.testing.assert_allclose(heat, sum(w[i, k] * maps[i][k].astype(np.float64) for k in range(3)))
    masked = fm.masked([True, False, True])
    assert all((m[1] == 0).all() and np.array_equal(m[0], o[0]) for m, o in zip(masked.maps, maps))


def test_ragged_validation():
    with pytest.raises(ValueError, match="same number of maps"):
        FeatureMaps([np.ones((3, 2, 2)), np.ones((4, 2, 3))], PoolingHead())
    with pytest.raises(ValueError, match=r"maps\[1\] must have shape"):
        FeatureMaps([np.ones((3, 2, 2)), np.ones((2, 3))], PoolingHead())
    with pytest.raises(ValueError, match="input_size"):
        FeatureMaps(ragged_maps(), PoolingHead(), input_size=np.ones((3, 2), int))
    bad = ragged_maps()
    bad[2][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        check_feature_maps(FeatureMaps(bad, PoolingHead()))


# -- estimators on ragged maps against the naive algorithm ------------------------------
def naive_ragged(maps, head, H, similarity="pearson", comparison="spearman"):
    """Global and per-image AIS by brute force: zero a map, re-embed every image by itself."""
    K = maps[0].shape[0]

    def emb(ms):
        return np.concatenate([head(torch.from_numpy(m)[None]).double().numpy() for m in ms])

    def two_oi(E):
        iu = np.triu_indices(len(H), 1)
        return naive_compare(naive_rsm(E, similarity)[iu], H[iu], comparison)

    E0 = emb(maps)
    base = two_oi(E0)
    glob = np.array([base - two_oi(emb([m * (np.arange(K) != k)[:, None, None] for m in maps])) for k in range(K)])
    n = len(maps)
    per = np.zeros((n, K))
    for t in range(n):
        o = np.r_[0:t, t + 1 : n]
        b = naive_compare(naive_rsm(E0, similarity)[t, o], H[t, o], comparison)
        for k in range(K):
            E = E0.copy()
            E[t] = emb([maps[t] * (np.arange(K) != k)[:, None, None]])[0]
            per[t, k] = b - naive_compare(naive_rsm(E, similarity)[t, o], H[t, o], comparison)
    return glob, per


@pytest.mark.parametrize("which", ["pooling", "mlp", "module"])
def test_selector_and_heatmapper_on_ragged_maps_match_naive(which):
    rng = np.random.default_rng(3)
    maps = ragged_maps(K=5, seed=4)
    head = {"pooling": PoolingHead(), "mlp": _vgg_like(K=5, P=4),
            "module": ModuleHead(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 7)))}[which]
    H = _human(rng, len(maps))
    glob, per = naive_ragged(maps, head, H)
    fm = FeatureMaps(maps, head)
    sel = AISSelector(device="cpu").fit(fm, H)
    np.testing.assert_allclose(sel.scores_, glob, atol=1e-6)
    out = sel.transform(fm)
    assert out.ragged and all((m[~sel.support_] == 0).all() for m in out.maps)
    hm = AISHeatmapper(device="cpu", output="maps").fit(fm, H)
    np.testing.assert_allclose(hm.image_scores_, per, atol=1e-6)
    heat = hm.transform(fm)
    assert isinstance(heat, list) and [h.shape for h in heat] == [m.shape[1:] for m in maps]


# -- heatmaps map back onto the original images ----------------------------------------
def test_crop_false_heatmaps_map_back_onto_the_planted_square():
    """A coloured square planted in each original image: the AIS heatmap, back on the original, is that square.

    Maps are the network input itself (1 x 1 identity convolution, no normalisation), so every map is the
    square times one colour channel; any non-negative weighting of them is the square, wherever the crop
    would have cut it off.
    """
    rng = np.random.default_rng(0)
    images, squares = [], []
    for h, w in SIZES:
        image = np.zeros((h, w, 3), np.uint8)
        s = 10
        top, left = (h - s, w - s) if rng.random() < 0.5 else (0, 0)  # at a corner: outside a centre crop
        image[top : top + s, left : left + s] = rng.integers(60, 256, 3)
        images.append(image)
        squares.append((top, left, s))
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    bb = get_backbone(nn.Sequential(conv), layer="0", input_size=32, crop=False, resize_size=32,
                      mean=(0, 0, 0), std=(1, 1, 1))
    fm = DNNFeatureMapTransformer(bb).fit(None).transform(images)
    colours = np.stack([im[t, l] for im, (t, l, _) in zip(images, squares)]).astype(float)
    H = np.corrcoef(colours)
    hm = AISHeatmapper(device="cpu").fit(fm, H)
    heat = hm.transform(fm)
    assert [h.shape for h in heat] == SIZES
    for h, (top, left, s) in zip(heat, squares):
        truth = np.zeros(h.shape, bool)
        truth[top : top + s, left : left + s] = True
        top_pixels = np.argsort(h, axis=None)[::-1][: s * s]
        assert truth.ravel()[top_pixels].mean() >= 0.85  # resampled twice: only the border blurs
        assert h[truth].min() > 0.25 and h[~truth].max() < 0.9 and h[top + s // 2, left + s // 2] > 0.9


def test_to_original_per_image_sizes_matches_by_hand():
    rng = np.random.default_rng(0)
    heat = [rng.random((4, 6)), rng.random((6, 4))]
    geometry = [(40, 60, 32, 48, 0, 0), (60, 40, 48, 32, 0, 0)]
    out = to_original(heat, geometry, [[32, 48], [48, 32]])
    for o, h, g in zip(out, heat, geometry):
        x = torch.from_numpy(h)[None, None]
        up = torch.nn.functional.interpolate(x, size=g[2:4], mode="bilinear", align_corners=False)
        ref = torch.nn.functional.interpolate(up, size=g[:2], mode="bilinear", align_corners=False)
        np.testing.assert_allclose(o, ref[0, 0].numpy(), rtol=1e-6)
    inputs = to_original(heat, None, [[32, 48], [48, 32]], output="input")
    assert [i.shape for i in inputs] == [(32, 48), (48, 32)]
    with pytest.raises(ValueError, match="input_size"):
        to_original(heat, geometry, [[32, 48]])


def test_attention_maps_with_crop_false_match_image_by_image():
    from sklearn_ais.attention import attention_maps

    bb = net_backbone(crop=False, resize_size=32)
    X = photos()
    together = attention_maps(bb, X, method="gradcam", batch_size=4)
    assert [a.shape for a in together] == SIZES
    for i, x in enumerate(X):
        np.testing.assert_allclose(together[i], attention_maps(bb, [x], method="gradcam")[0], atol=1e-6)
