"""DNNFeatureMapTransformer: correctness against the networks, inputs, hooks, caching, sklearn API."""

import pickle

import joblib
import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as _checks
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from sklearn_ais import AISSelector, DNNFeatureMapTransformer, FeatureMaps
from sklearn_ais.backbones import MLPHead, PoolingHead, get_backbone

from .conftest import H0, X0, CountingNet, roundtrips, tiny_backbone, tiny_transformer


def counting_backbone():
    torch.manual_seed(0)
    return get_backbone(CountingNet(), layer="features", input_size=16, resize_size=16)


def images(n, h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def capture(model, layer_name, pixels):
    """Output of ``layer_name`` and the input of the last nn.Linear, from a plain forward pass."""
    out = {}

    def keep(key, which):
        # A forward hook that returns a value replaces the output: return None.
        def hook(module, inputs, output):
            out[key] = (output if which == "output" else inputs[0]).clone()

        return hook

    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    h1 = model.get_submodule(layer_name).register_forward_hook(keep("maps", "output"))
    h2 = last_linear.register_forward_hook(keep("penultimate", "input"))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        h1.remove()
        h2.remove()
    return out["maps"], out["penultimate"]


@pytest.fixture(scope="module")
def lite0():
    return DNNFeatureMapTransformer(batch_size=2).fit(None)


# -- maps and heads agree with the networks ---------------------------------------
def fresh_copy(builder, model):
    """A newly constructed network holding ``model``'s state dict (no random init)."""
    with torch.device("meta"):
        fresh = builder()
    fresh.load_state_dict(model.state_dict(), assign=True)
    return fresh.eval()


@pytest.mark.parametrize(
    "name, size",
    [
        ("vgg19", 32),
        ("resnet152", 32),
        ("resnext50_32x4d", 32),
        ("densenet161", 32),
        ("efficientnet_b3", 32),
        ("inception_v3", 75),
        ("regnet_y_400mf", 32),
    ],
)
def test_registry_layer_and_head_match_network(name, size):
    # head(maps) must equal the input of the network's final linear layer.
    torch.manual_seed(0)
    bb = get_backbone(name, weights=None, input_size=size, resize_size=size)
    pixels, _ = bb.preprocess(images(2, size + 6, size + 12))
    with torch.inference_mode():
        ours = bb.forward_maps(pixels)
    maps, penultimate = capture(bb.model, bb.layer, pixels)
    np.testing.assert_allclose(ours.numpy(), maps.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bb.head(ours).numpy(), penultimate.numpy(), rtol=1e-4, atol=1e-5)


def test_vgg16_maps_and_fc7():
    torch.manual_seed(0)
    t = DNNFeatureMapTransformer(get_backbone("vgg16", weights=None, input_size=64, resize_size=64)).fit(None)
    X = images(2, 64, 80)
    fm = t.transform(X)
    assert isinstance(fm.head, MLPHead) and fm.shape == (2, 512, 4, 4)
    fresh = fresh_copy(tvm.vgg16, t.backbone_.model)
    pixels, _ = t.backbone_.preprocess(X)
    maps, _ = capture(fresh, "features.29", pixels)
    with torch.no_grad():
        fc7 = fresh.classifier[:5](torch.flatten(fresh.avgpool(fresh.features(pixels)), 1))
    np.testing.assert_allclose(fm.maps, maps.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fm.embed(), fc7.numpy(), rtol=1e-4, atol=1e-5)


def test_resnet50_maps_and_avgpool():
    t = DNNFeatureMapTransformer(get_backbone("resnet50", weights=None, input_size=64, resize_size=64)).fit(None)
    X = images(2, 64, 80)
    fm = t.transform(X)
    assert isinstance(fm.head, PoolingHead) and fm.shape == (2, 2048, 2, 2)
    fresh = fresh_copy(tvm.resnet50, t.backbone_.model)
    pixels, _ = t.backbone_.preprocess(X)
    maps, _ = capture(fresh, "layer4", pixels)
    with torch.no_grad():
        pooled = torch.flatten(fresh.avgpool(maps), 1)
    np.testing.assert_allclose(fm.maps, maps.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fm.embed(), pooled.numpy(), rtol=1e-4, atol=1e-5)


def test_lite0_real_weights_match_timm(lite0):
    X = images(3, 90, 120)
    fm = lite0.transform(X)
    assert fm.shape == (3, 1280, 7, 7) and fm.maps.dtype == np.float32
    assert fm.backbone == "efficientnet_lite0" and fm.layer == "bn2" and fm.input_size == (224, 224)
    model = lite0.backbone_.model
    pixels, _ = lite0.backbone_.preprocess(X)
    with torch.no_grad():
        features = model.forward_features(pixels)
        pooled = model.forward_head(features, pre_logits=True)
    np.testing.assert_allclose(fm.maps, features.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fm.embed(), pooled.numpy(), rtol=1e-4, atol=1e-5)
    assert fm.maps.min() >= 0 and fm.maps.max() <= 6  # ReLU6 inside bn2


def test_fitted_attributes(lite0):
    assert (lite0.n_maps_, lite0.map_size_, lite0.layer_, lite0.input_size_) == (1280, (7, 7), "bn2", (224, 224))
    assert lite0.device_.type in ("cpu", "cuda") and lite0.backbone_.device.type == "cpu"
    assert lite0.head_ is lite0.backbone_.head


def test_random_init_is_seeded_and_leaves_global_rng_alone(tmp_path):
    state = torch.get_rng_state()
    a = DNNFeatureMapTransformer("regnet_y_400mf", weights=None, random_state=3, memory=tmp_path)
    b = clone(a).fit(None)
    c = clone(a).set_params(random_state=4).fit(None)
    a.fit(None)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    ref = get_backbone("regnet_y_400mf", weights=None).model.state_dict()
    for k, v in a.backbone_.model.state_dict().items():
        assert torch.equal(v, ref[k]) and torch.equal(v, b.backbone_.model.state_dict()[k])
    assert not torch.equal(a.backbone_.model.stem[0].weight, c.backbone_.model.stem[0].weight)
    # Seeded random weights are identified by their seed in the cache key.
    assert a._cache_key() == b._cache_key() != c._cache_key()


# -- inputs ----------------------------------------------------------------------
def test_paths_and_arrays_give_same_maps_and_geometry(tmp_path):
    X = [images(1, 20, 30, seed=1)[0], images(1, 36, 18, seed=2)[0]]
    paths = []
    for i, im in enumerate(X):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(im).convert("RGBA").save(paths[-1])
    t = DNNFeatureMapTransformer(counting_backbone()).fit(None)
    fm_paths, fm_arrays = t.transform(paths), t.transform(X)
    np.testing.assert_array_equal(fm_paths.maps, fm_arrays.maps)
    assert list(fm_paths.ids) == paths and fm_arrays.ids is None
    np.testing.assert_array_equal(fm_paths.geometry, [[20, 30, 16, 24, 0, 4], [36, 18, 32, 16, 8, 0]])
    tensor = torch.from_numpy(X[0]).permute(2, 0, 1).float() / 255
    np.testing.assert_allclose(t.transform(tensor).maps, fm_arrays.maps[:1], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_documented_errors(tmp_path):
    t = DNNFeatureMapTransformer(counting_backbone()).fit(None)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        t.transform([str(tmp_path / "nope.jpg")])
    with pytest.raises(ValueError, match="empty"):
        t.transform([])
    with pytest.raises(ValueError, match="NaN"):
        t.transform(np.full((1, 8, 8, 3), np.nan))


def test_invalid_parameters():
    X = images(1)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        DNNFeatureMapTransformer(batch_size=0).fit(X)
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'.*Available"):
        DNNFeatureMapTransformer("alexnet").fit(X)
    with pytest.raises(ValueError, match="device"):
        DNNFeatureMapTransformer(counting_backbone(), device="gpu0").fit(X)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            DNNFeatureMapTransformer(counting_backbone(), device="cuda").fit(X)


# -- hooks -----------------------------------------------------------------------
def _hook_counts(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_forward_stops_at_layer_and_hooks_are_removed():
    t = DNNFeatureMapTransformer(counting_backbone(), batch_size=2).fit(None)
    model = t.backbone_.model
    fc_calls = []
    model.fc.register_forward_hook(lambda *a: fc_calls.append(1))
    t.transform(images(5))
    assert fc_calls == []
    assert _hook_counts(model) == 1  # only the test's own hook

    model.fail_at = model.calls + 2
    with pytest.raises(RuntimeError, match="simulated failure"):
        t.transform(images(5))
    assert _hook_counts(model) == 1


# -- caching ---------------------------------------------------------------------
def test_memory_cache_hits_and_resumes(tmp_path):
    X = images(6)
    memory = joblib.Memory(str(tmp_path / "cache"), verbose=0)
    t = DNNFeatureMapTransformer(counting_backbone(), batch_size=2, memory=memory).fit(None)
    model = t.backbone_.model
    model.fail_at = model.calls + 3  # third batch fails
    with pytest.raises(RuntimeError):
        t.transform(X)
    model.fail_at = None
    before = model.calls
    resumed = t.transform(X)
    assert model.calls - before == 1  # only the batch that failed is computed

    before = model.calls
    again = t.transform(X)
    assert model.calls == before
    np.testing.assert_array_equal(again.maps, resumed.maps)
    np.testing.assert_array_equal(again.geometry, resumed.geometry)

    # A fresh transformer (a path as memory) with the same configuration reuses the cache.
    fresh = DNNFeatureMapTransformer(counting_backbone(), batch_size=2, memory=tmp_path / "cache").fit(None)
    before = fresh.backbone_.model.calls
    np.testing.assert_array_equal(fresh.transform(X).maps, resumed.maps)
    assert fresh.backbone_.model.calls == before

    nocache = DNNFeatureMapTransformer(counting_backbone(), batch_size=2).fit(None)
    np.testing.assert_allclose(nocache.transform(X).maps, resumed.maps)


def test_memory_key_depends_on_layer_and_weights(tmp_path):
    X = images(2)
    kw = dict(batch_size=2, memory=str(tmp_path))
    t = DNNFeatureMapTransformer(counting_backbone(), **kw).fit(None)
    t.transform(X)
    other_layer = DNNFeatureMapTransformer(counting_backbone(), layer="features.2", **kw).fit(None)
    before = other_layer.backbone_.model.calls
    other_layer.transform(X)
    assert other_layer.backbone_.model.calls == before + 1

    bb = counting_backbone()
    with torch.no_grad():
        bb.model.features[0].bias += 1
    other_weights = DNNFeatureMapTransformer(bb, **kw).fit(None)
    before = other_weights.backbone_.model.calls
    other_weights.transform(X)
    assert other_weights.backbone_.model.calls == before + 1


# -- scikit-learn API --------------------------------------------------------------
def _embed(fm):
    return fm.embed()


def test_pipeline_clone_pickle():
    X, y = images(4), np.eye(4)
    t = DNNFeatureMapTransformer(counting_backbone(), batch_size=3)
    assert clone(t).get_params()["batch_size"] == 3
    pipe = Pipeline([("maps", t), ("embed", FunctionTransformer(_embed))])
    emb = pipe.fit_transform(X, y)
    assert emb.shape == (4, 6)
    fitted = pipe.named_steps["maps"]
    fm = fitted.transform(X)
    assert isinstance(fm, FeatureMaps)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(X).maps, fm.maps)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(pipe)).transform(X), emb)
    assert t.backbone.model.calls == 0  # the parameter itself was never run


def test_sklearn_tags_and_unfitted():
    tags = DNNFeatureMapTransformer().__sklearn_tags__()
    assert tags.input_tags.two_d_array is False and tags.requires_fit is True
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        DNNFeatureMapTransformer().transform(images(1))


def test_progress_bar_only_when_verbose(capsys):
    X = images(3)
    DNNFeatureMapTransformer(counting_backbone(), batch_size=2).fit(None).transform(X)
    assert "batch" not in capsys.readouterr().err  # default verbose=1: none when stderr is not a terminal
    DNNFeatureMapTransformer(counting_backbone(), batch_size=2, verbose=2).fit(None).transform(X)
    assert "CountingNet feature maps" in capsys.readouterr().err


# scikit-learn's estimator checks feed 2-D float arrays; a transformer of images cannot read them (the input tags
# say so, and scikit-learn then skips every check). The checks of the estimator API need no data: run them here.

API_CHECKS = [
    _checks.check_estimator_cloneable, _checks.check_estimator_tags_renamed, _checks.check_valid_tag_types,
    _checks.check_estimator_repr, _checks.check_no_attributes_set_in_init, _checks.check_get_params_invariance,
    _checks.check_set_params, _checks.check_parameters_default_constructible,
    _checks.check_do_not_raise_errors_in_init_or_set_params, _checks.check_mixin_order,
]
# What the data-driven checks test, and where it is tested with images instead:
#   check_estimators_fit_returns_self, check_estimators_unfitted -> test_fit_returns_self_and_refuses_unfitted
#   check_estimators_pickle -> test_pipeline_and_pickle (above), check_fit_idempotent, check_methods_subset_invariance
#   -> test_batches_and_subsets_give_the_same_maps.


@pytest.mark.parametrize("check", API_CHECKS, ids=[c.__name__ for c in API_CHECKS])
def test_sklearn_api_checks(check):
    check(type(DNNFeatureMapTransformer()).__name__, DNNFeatureMapTransformer(counting_backbone()))


def test_fit_returns_self_and_refuses_unfitted():
    from sklearn.exceptions import NotFittedError

    t = DNNFeatureMapTransformer(counting_backbone())
    with pytest.raises(NotFittedError):
        t.transform(images(1))
    assert t.fit(images(2)) is t


def test_batches_and_subsets_give_the_same_maps():
    X = images(5)
    t = DNNFeatureMapTransformer(counting_backbone(), batch_size=2).fit(None)
    full = t.transform(X).maps
    np.testing.assert_array_equal(t.fit(None).transform(X).maps, full)  # fit is idempotent
    np.testing.assert_allclose(t.transform(X[[1, 3]]).maps, full[[1, 3]], atol=1e-6)


# ---------------------------------------------------------------------------
# Bad parameters and state, persistence, a GPU-fitted transformer on a CPU-only machine
# ---------------------------------------------------------------------------
def test_bad_transformer_parameters_and_state(image_dir):
    t = DNNFeatureMapTransformer(tiny_backbone(), device="gpu")
    with pytest.raises(ValueError, match="device must be"):
        t.fit(None)
    if not torch.cuda.is_available():
        t = DNNFeatureMapTransformer(tiny_backbone(), device="cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            t.fit(None)
    t = DNNFeatureMapTransformer(tiny_backbone(), batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        t.fit(None)
    t = DNNFeatureMapTransformer(tiny_backbone())
    with pytest.raises(NotFittedError, match="not fitted"):
        t.transform([image_dir / "rgb.png"])
    t = tiny_transformer()
    with pytest.raises(ValueError, match="is a directory"):
        t.transform([image_dir])


def test_transformer_survives_pickle_and_joblib(tmp_path, image_dir):
    t = tiny_transformer()
    images = [image_dir / "rgb.png", image_dir / "cmyk.jpg"]
    fm = t.transform(images)
    for loaded in roundtrips(t, tmp_path):
        np.testing.assert_array_equal(loaded.transform(images).maps, fm.maps)
    for loaded in roundtrips(fm, tmp_path):  # the output too (maps + head)
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
    with pytest.raises(ValueError, match="CUDA is not available"):
        loaded.transform(images)

    sel = AISSelector(device="cpu").fit(X0, H0)
    sel.set_params(device="cuda")  # fitted with device="cuda" elsewhere
    loaded = pickle.loads(pickle.dumps(sel))
    np.testing.assert_array_equal(loaded.transform(X0), sel.transform(X0))  # no device needed
    with pytest.raises(ValueError, match="CUDA is not available on this machine.*set_params"):
        loaded.score(X0, H0)
    assert loaded.set_params(device="cpu").score(X0, H0) == AISSelector(device="cpu").fit(X0, H0).score(X0, H0)


@pytest.mark.filterwarnings("error::UserWarning")
def test_read_only_maps_give_the_same_results_without_a_warning():
    # np.load(mmap_mode="r"), joblib's memmaps and broadcast views are read-only: torch warned ("not writable")
    # and shared memory a tensor op could write to. The container copies them on the way to torch.
    from sklearn_ais.backbones import PoolingHead

    rng = np.random.default_rng(0)
    maps = rng.random((12, 3, 2, 2)).astype(np.float32)
    H = np.corrcoef(rng.normal(size=(12, 4)))
    frozen = maps.copy()
    frozen.setflags(write=False)
    want = AISSelector(device="cpu").fit(FeatureMaps(maps, PoolingHead()), H).scores_
    got = AISSelector(device="cpu").fit(FeatureMaps(frozen, PoolingHead()), H).scores_
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(FeatureMaps(frozen, PoolingHead()).embed(), FeatureMaps(maps, PoolingHead()).embed())


@pytest.mark.filterwarnings("error::UserWarning")
def test_as_tensor_copies_read_only_arrays_only():
    # The one conversion the container, the heads and the kernels use on the way to torch.
    from sklearn_ais._device import as_tensor

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    shared = as_tensor(a)
    a[0, 0] = 7
    assert shared[0, 0] == 7  # writable arrays are not copied (no cost on the usual path)
    frozen = np.arange(6, dtype=np.float32).reshape(2, 3)
    frozen.setflags(write=False)
    t = as_tensor(frozen)
    t[0, 0] = 9  # a tensor op that writes: the read-only array must not change
    assert frozen[0, 0] == 0 and t.dtype == torch.float32
