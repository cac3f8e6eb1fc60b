"""Transformers and any model by name: timm/torchvision/open_clip names, the found layer and head, a ViT's
tokens as feature maps (CLS and mean heads against a naive loop), several layers in one pass."""

import numpy as np
import pytest
import scipy.stats
import torch

from sklearn_ais import AISSelector, DNNFeatureMapTransformer, FeatureMaps, LayerFeatureMaps
from sklearn_ais._ablation import make_kernel
from sklearn_ais.backbones import PoolingHead, TokenHead, get_backbone, list_backbones
from sklearn_ais.backbones import _registry


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _upper(M):
    return M[np.triu_indices(len(M), 1)]


def _human(n, seed=1):
    A = np.random.default_rng(seed).normal(size=(n, 5))
    return np.corrcoef(A)


# ---------------------------------------------------------------------------
# Any model by name: the found layer's embedding through the found head is the model's own penultimate output
# ---------------------------------------------------------------------------
def _own_penultimate(bb, x):
    m = bb.model
    if hasattr(m, "forward_head"):
        return m.forward_head(m.forward_features(x), pre_logits=True)
    return m.classifier[:-1](torch.flatten(m.avgpool(m.features(x)), 1))  # torchvision MobileNetV3, written out


@pytest.mark.parametrize("name, layer, head", [
    ("timm:convnext_tiny", "stages", "ModuleHead"),
    ("timm:mobilenetv3_large_100", "blocks", "MLPHead"),
    ("torchvision:mobilenet_v3_large", "features", "MLPHead"),
])
def test_found_layer_and_head_give_the_models_own_penultimate_output(name, layer, head):
    torch.manual_seed(0)
    bb = get_backbone(name, weights=None)
    assert (bb.layer, type(bb.head).__name__) == (layer, head)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        maps = bb.forward_maps(x)
        assert maps.ndim == 4 and maps.shape[2] * maps.shape[3] > 1
        np.testing.assert_allclose(bb.head(maps).numpy(), _own_penultimate(bb, x).numpy(), atol=1e-5)


def test_gap_models_get_the_rank_one_pooling_head():
    bb = get_backbone("timm:test_resnet", weights=None)
    assert isinstance(bb.head, PoolingHead) and bb.layer == "layer4"


def test_names_are_checked_and_listed():
    assert "efficientnet_lite0" in list_backbones()  # today's short names stay
    assert "vit_small_patch16_224" in list_backbones("timm")
    assert "mobilenet_v3_large" in list_backbones("torchvision")
    assert "ViT-B-32" in list_backbones("open_clip")
    with pytest.raises(ValueError, match="did you mean"):
        get_backbone("timm:convnext_tinny", weights=None)
    with pytest.raises(ValueError, match="timm:<name>"):
        get_backbone("no_such_net", weights=None)


def test_default_weights_offline_name_the_file(monkeypatch):
    def offline(name):
        raise OSError("Name or service not known")

    monkeypatch.setattr(_registry, "_create_timm_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"download https://huggingface.co/timm/.*model\.safetensors"):
        get_backbone("timm:test_resnet", weights="DEFAULT")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = timm.create_model("test_resnet").eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    bb = get_backbone("timm:test_resnet", weights=str(path))
    assert bb.weights_source.kind == "file" and bb.weights_source.sha256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_array_equal(bb.model(x).numpy(), src(x).numpy())


# ---------------------------------------------------------------------------
# A ViT's tokens as feature maps: channel and per-image AIS against a naive loop
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_s():
    """Random-weight seeded ViT-S/16, 12 images at 224: the tokens at blocks.10 and blocks.11."""
    images = _images(12, 224)
    t = DNNFeatureMapTransformer("timm:vit_small_patch16_224", weights=None, random_state=0,
                                 layer=["blocks.10", "blocks.11"]).fit(images)
    layers = t.transform(images)
    bb = t.backbone_
    pixels, _ = bb.preprocess(images)
    tokens = {}

    def keep(name):
        def hook(mod, args, out):
            tokens[name] = out.detach().clone()
        return hook

    hooks = [bb.model.get_submodule(name).register_forward_hook(keep(name)) for name in ("blocks.10", "blocks.11")]
    with torch.no_grad():
        own = bb.model.forward_head(bb.model.forward_features(pixels), pre_logits=True)
    for h in hooks:
        h.remove()
    return bb.model, layers, tokens, own.numpy()


def _naive_cls(model, tokens, k=None, image=None):
    """Channel k zeroed in the patch tokens at blocks.10 (of one image, or all), then the model's own last block,
    final norm and head."""
    x = tokens["blocks.10"].clone()
    rows = slice(None) if image is None else [image]
    if k is not None:
        x[rows, 1:, k] = 0
    with torch.no_grad():
        return model.forward_head(model.norm(model.blocks[11](x)), pre_logits=True).double().numpy()


def _naive_mean(tokens, k=None, image=None):
    x = tokens["blocks.11"].clone().double()
    rows = slice(None) if image is None else [image]
    if k is not None:
        x[rows, 1:, k] = 0
    return x[:, 1:].mean(1).numpy()


def _two_oi(E, H):
    return scipy.stats.spearmanr(_upper(np.corrcoef(E)), _upper(H))[0]


CHANNELS = [0, 7, 100, 383]


def test_vit_tokens_are_the_patch_grid_with_the_cls_token_beside(vit_s):
    model, layers, tokens, own = vit_s
    fm = layers["blocks.10"]
    assert fm.shape == (12, 384, 14, 14) and fm.extra_tokens.shape == (12, 1, 384)
    assert fm.token_pooling == "cls" and isinstance(fm.head, TokenHead)
    t = tokens["blocks.10"].numpy()
    np.testing.assert_array_equal(fm.extra_tokens[:, 0], t[:, 0])
    np.testing.assert_array_equal(fm.maps[:, :, 2, 3], t[:, 1 + 2 * 14 + 3])  # row-major patch order
    np.testing.assert_allclose(fm.embed(), own, atol=1e-5)  # the un-ablated embedding is the model's own


def test_vit_channel_ais_cls_head_equals_a_naive_loop(vit_s):
    model, layers, tokens, _ = vit_s
    H = _human(12)
    kernel = make_kernel(layers["blocks.10"], "pearson", "cpu")  # AISSelector's kernel (its scores_ = base - loo)
    ours_base, loo = kernel.leave_one_out(kernel.target(_upper(H), "spearman"), maps=CHANNELS)
    base = _two_oi(_naive_cls(model, tokens), H)
    assert ours_base == pytest.approx(base, abs=1e-6)
    for k, score in zip(CHANNELS, loo):
        assert ours_base - score == pytest.approx(base - _two_oi(_naive_cls(model, tokens, k), H), abs=1e-6)


def test_vit_channel_ais_mean_head_equals_a_naive_loop(vit_s):
    model, layers, tokens, _ = vit_s
    fm = layers["blocks.11"]
    mean = FeatureMaps(fm.maps, PoolingHead("avg"), extra_tokens=fm.extra_tokens, token_pooling="mean")
    H = _human(12)
    sel = AISSelector(device="cpu").fit(mean, H)
    base = _two_oi(_naive_mean(tokens), H)
    assert sel.baseline_score_ == pytest.approx(base, abs=1e-6)
    for k in CHANNELS:
        assert sel.scores_[k] == pytest.approx(base - _two_oi(_naive_mean(tokens, k), H), abs=1e-6)


def _naive_row(E, H, t):
    others = np.r_[0:t, t + 1:len(E)]
    return scipy.stats.spearmanr(np.corrcoef(E)[t, others], H[t, others])[0]


@pytest.mark.parametrize("kind", ["cls", "mean"])
def test_vit_per_image_ais_equals_a_naive_loop(vit_s, kind):
    model, layers, tokens, _ = vit_s
    H = _human(12)
    if kind == "cls":
        fm, naive = layers["blocks.10"], (lambda k, t: _naive_cls(model, tokens, k, t))
    else:
        fm = FeatureMaps(layers["blocks.11"].maps, PoolingHead("avg"))
        naive = (lambda k, t: _naive_mean(tokens, k, t))
    rows = [5]
    base, ablated = make_kernel(fm, "pearson", "cpu").per_image(H, "spearman", rows=rows)
    for r, t in enumerate(rows):
        assert base[r] == pytest.approx(_naive_row(naive(None, None), H, t), abs=1e-6)
        for k in (3, 200, 383):
            assert ablated[r, k] == pytest.approx(_naive_row(naive(k, t), H, t), abs=1e-6)


def test_open_clip_embedding_from_the_maps_is_encode_image():
    import open_clip

    torch.manual_seed(0)
    bb = get_backbone("open_clip:ViT-B-32", weights=None)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    clip.visual.load_state_dict(bb.model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        (maps, extra), = bb.forward_layers(x, [bb.layer])
        assert maps.shape == (2, 768, 7, 7) and extra.shape == (2, 1, 768)
        np.testing.assert_allclose(bb.head(maps, extra=extra).numpy(), clip.encode_image(x).numpy(), atol=1e-5)


# ---------------------------------------------------------------------------
# Several layers in one forward pass
# ---------------------------------------------------------------------------
def test_several_layers_run_the_network_once_and_equal_single_passes():
    images = _images(5, 160)
    t = DNNFeatureMapTransformer("timm:test_vit", weights=None, layer="all_blocks").fit(images)
    calls = []
    t.backbone_.model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    layers = t.transform(images)
    assert len(calls) == 1
    assert isinstance(layers, LayerFeatureMaps) and layers.layers == [f"blocks.{i}" for i in range(6)]
    for name, fm in layers.items():
        one = DNNFeatureMapTransformer("timm:test_vit", weights=None, layer=name).fit(images).transform(images)
        np.testing.assert_array_equal(fm.maps, one.maps)
        np.testing.assert_array_equal(fm.extra_tokens, one.extra_tokens)
        np.testing.assert_array_equal(fm.embed(), one.embed())


# ---------------------------------------------------------------------------
# The layer chosen on held-out judgments (nested cross-validation), on a planted network
# ---------------------------------------------------------------------------
class _Planted(torch.nn.Module):
    """Three layers reading three different quadrants of the image: on noise images they are independent."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b, self.c = (torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
                                  for _ in range(3))

    def forward(self, x):
        s = torch.relu(self.stem(x))
        h = s.shape[2] // 2
        a, b, c = self.a(s[:, :, :h, :h]), self.b(s[:, :, :h, h:]), self.c(s[:, :, h:, :h])
        return torch.cat([a.mean((2, 3)), b.mean((2, 3)), c.mean((2, 3))], 1)


def test_nested_layer_selection_finds_the_planted_layer():
    from sklearn_ais._layer_selector import cross_validate_layers

    images = _images(60, 32, seed=5)
    t = DNNFeatureMapTransformer(_Planted(), layer=["a", "b", "c"]).fit(images)
    X = t.transform(images)
    rng = np.random.default_rng(0)
    observer = X["b"].embed()[:, :3]
    H = np.corrcoef(observer + 0.3 * observer.std(0) * rng.normal(size=observer.shape))
    res = cross_validate_layers(X, H, cv=5, inner_cv=5)
    assert res["chosen"].get("b", 0) >= 4, res["table"]
    assert res["table"]["test_score_selected"].mean() > 0.3
    # each layer is a candidate model of compare_alignment, as it is
    from sklearn_ais.alignment import compare_alignment

    table = compare_alignment(X, None, H, methods=("none", "ais"), cv=3).table
    assert sorted(set(table["backbone"])) == ["a", "b", "c"]
    best = table[table["method"] == "ais"].groupby("backbone")["test_2oi"].mean()
    assert best.idxmax() == "b"


# ---------------------------------------------------------------------------
# Heatmaps and gradient baselines on a token model
# ---------------------------------------------------------------------------
def test_planted_patch_heatmaps_on_a_token_model():
    """The observer judges by a planted patch on a plain background: the AIS heatmaps of a (random-weight) ViT's
    patch tokens, mapped back onto the images, put their top 10% on it (relative risk > 2)."""
    import warnings

    from sklearn_ais import AISHeatmapper
    from sklearn_ais.metrics import relative_risk

    from sklearn_ais.datasets import make_planted_patch_task

    task = make_planted_patch_task(n_images=32, image_size=160, patch_size=48, random_state=0)
    images, masks, H = task.images, task.masks, task.similarity
    n, S = 32, 160
    assert not masks.all(axis=0).any() and (masks.sum(axis=(1, 2)) == 48 * 48).all()
    t = DNNFeatureMapTransformer("timm:test_vit", weights=None, layer="blocks.1", head="mean", crop=False)
    fm = t.fit_transform(images)
    assert fm.token_pooling == "mean" and fm.shape == (n, 64, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = AISHeatmapper(device="cpu").fit(fm, H).transform(fm)
    assert heat.shape == (n, S, S)
    assert np.median(relative_risk(heat, masks, top=10)) > 2


def test_token_gradcam_is_the_gradient_weighted_patch_grid():
    from sklearn_ais.attention import _token_gradcam, _working_copy, attention_maps

    bb = get_backbone("timm:test_vit", weights=None)
    images = _images(2, 200)[:, :, :180]  # not square: resized and centre-cropped
    for method in ("gradcam", "guided_backprop"):
        maps = attention_maps(bb, images, method=method)
        assert maps.shape == (2, 200, 180) and np.nanmin(maps) >= 0 and np.nanmax(maps) == 1  # NaN: outside the crop
    model = _working_copy(bb.model, "cpu", guided=False)
    x = torch.randn(2, 3, 160, 160)
    target = torch.tensor([1, 2])
    cam = _token_gradcam(model, bb.layer, bb.tokens, x, target)
    tokens = {}
    handle = model.get_submodule(bb.layer).register_forward_hook(lambda m, a, out: tokens.setdefault("t", out))
    logits = model(x.clone().requires_grad_())  # the weights are frozen: the input carries the graph
    handle.remove()
    grad, = torch.autograd.grad(logits[[0, 1], target].sum(), tokens["t"])
    A = tokens["t"].detach()[:, 1:].reshape(2, 10, 10, 64)
    G = grad[:, 1:].reshape(2, 10, 10, 64)
    want = torch.relu((A * G.mean(dim=(1, 2))[:, None, None, :]).sum(-1))
    np.testing.assert_allclose(cam.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def test_a_vision_transformer_module_gets_its_tokens_too():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit").eval()
    bb = get_backbone(vit, layer="blocks.2")
    assert bb.tokens is not None and bb.token_pooling == "cls" and isinstance(bb.head, TokenHead)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        (maps, extra), = bb.forward_layers(x, ["blocks.2"])
        np.testing.assert_allclose(bb.head(maps, extra=extra).numpy(),
                                   vit.forward_head(vit.forward_features(x), pre_logits=True).numpy(), atol=1e-5)
