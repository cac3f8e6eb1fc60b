import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn import functional as F

from sklearn_ais._geometry import minmax, to_original
from sklearn_ais.backbones import get_backbone
from sklearn_ais.backbones._preprocess import Preprocessing

pytest.importorskip("captum")

from sklearn_ais.attention import METHODS, attention_maps  # noqa: E402


# -- geometry -------------------------------------------------------------------
def test_to_original_identity():
    x = np.random.default_rng(0).random((3, 12, 10))
    out = to_original(x, [(12, 10, 12, 10, 0, 0)] * 3, (12, 10))
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(to_original(x.astype(np.float32), output="input"), x.astype(np.float32))


def test_to_original_crop_quadrant():
    # 100 x 200 image -> shorter side 50 -> 50 x 100, centre 40 x 40 crop at (5, 30).
    geom = Preprocessing(input_size=40, resize_size=50).geometry(100, 200)
    assert geom == (100, 200, 50, 100, 5, 30)
    m = np.zeros((1, 40, 40))
    m[0, :20, :20] = 1  # top-left quadrant of the crop
    resized = to_original(m, [geom], (40, 40), output="resized")[0]
    assert resized.shape == (50, 100)
    assert resized[5:25, 30:50].min() == 1 and np.nansum(resized) == 400
    # outside the crop window (rows 5..44, cols 30..69) the network saw nothing: NaN, not 0
    assert np.isnan(resized[:5]).all() and np.isnan(resized[45:]).all() and np.isnan(resized[:, :30]).all()
    assert np.isfinite(resized[5:45, 30:70]).all()
    out = to_original(m, [geom], (40, 40))[0]
    assert out.shape == (100, 200)
    # x2 upscale of rows 5..24, cols 30..49 -> rows 10..49, cols 60..99 (bilinear edges blur by a pixel)
    assert out[12:48, 62:98].min() == pytest.approx(1)
    assert out[51:89, 60:140].max() == 0 and out[10:90, 101:140].max() == 0
    assert np.isnan(out[:9]).all() and np.isnan(out[91:]).all() and np.isnan(out[:, :59]).all()
    assert np.isnan(out[:, 141:]).all()
    zero = to_original(m, [geom], (40, 40), outside=0.0)[0]  # the old convention on request
    assert np.isfinite(zero).all() and zero[:9].max() == 0
    # the same quadrant given on a coarse 2 x 2 feature grid lands on the same region
    # (bilinear: 1 up to the cell centre, crop rows/cols < 10, fading to 0 at the next centre, 29.5)
    coarse = to_original(np.array([[[1.0, 0.0], [0.0, 0.0]]]), [geom], (40, 40))[0]
    assert coarse[11:29, 61:79].min() == pytest.approx(1, abs=0.01)
    assert np.isnan(coarse[:9]).all() and coarse[71:89, 60:140].max() == 0 and np.isnan(coarse[:, :59]).all()
    assert coarse[10:90, 121:140].max() == 0


def test_to_original_matches_preprocessing():
    """Mapping the network input back must land on the original pixels."""
    yy, xx = np.mgrid[:90, :130]
    image = (255 * (0.5 + 0.5 * np.sin(yy / 9.0) * np.cos(xx / 13.0))).astype(np.uint8)
    prep = Preprocessing(input_size=48, resize_size=56, mean=(0, 0, 0), std=(1, 1, 1))
    pixels, geometry = prep.batch([Image.fromarray(image).convert("RGB")])
    back = to_original(pixels[:, 0], geometry, (48, 48))[0]
    oh, ow, rh, rw, top, left = geometry[0]
    # interior of the crop window in original coordinates
    r0, r1 = int((top + 2) * oh / rh), int((top + 46) * oh / rh)
    c0, c1 = int((left + 2) * ow / rw), int((left + 46) * ow / rw)
    err = np.abs(back[r0:r1, c0:c1] - image[r0:r1, c0:c1] / 255.0)
    assert err.mean() < 0.02
    assert c0 > 20 and np.isnan(back[:, : c0 - 4]).all()  # left of the crop: the network saw nothing (NaN)


def test_to_original_mixed_sizes_and_validation():
    geoms = [(20, 30, 20, 30, 0, 5), (40, 20, 48, 24, 12, 2)]
    out = to_original(np.ones((2, 4, 4)), geoms, (20, 20))
    assert isinstance(out, list) and [o.shape for o in out] == [(20, 30), (40, 20)]
    with pytest.raises(ValueError, match="geometry must be an integer array"):
        to_original(np.ones((2, 4, 4)), geoms[:1], (20, 20))
    with pytest.raises(ValueError, match="heatmaps contain NaN"):
        to_original(np.full((1, 4, 4), np.nan), geoms[:1], (20, 20))
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        to_original(np.ones((4, 4)), geoms[:1], (20, 20))
    with pytest.raises(ValueError, match="output must be one of"):
        to_original(np.ones((1, 4, 4)), geoms[:1], (20, 20), output="crop")


def test_minmax():
    x = np.stack([np.arange(6.0).reshape(2, 3), np.full((2, 3), 7.0)])
    out = minmax(x)
    np.testing.assert_allclose(out[0], np.arange(6).reshape(2, 3) / 5)
    assert (out[1] == 0).all() and not np.isnan(out).any()
    assert [o.shape for o in minmax([np.ones((2, 2)), np.arange(6.0).reshape(3, 2)])] == [(2, 2), (3, 2)]
    np.testing.assert_array_equal(minmax(np.array([[np.nan, 1.0, 3.0]])), [[np.nan, 0.0, 1.0]])  # NaN: not seen
    with pytest.raises(ValueError, match="nothing but NaN"):
        minmax(np.array([[np.nan, np.nan]]))
    with pytest.raises(ValueError, match="inf"):
        minmax(np.array([[np.inf, 1.0]]))


# -- attention maps ---------------------------------------------------------------
class TinyNet(nn.Module):
    """conv-ReLU-conv-ReLU6 (both in place, the ReLU6 is the feature-map layer), GAP, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.act2 = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(8, 5)

    def features(self, x, relu=None, relu6=None):
        return (relu6 or self.act2)(self.conv2((relu or self.act1)(self.conv1(x))))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class _Guided(torch.autograd.Function):
    """Reference guided ReLU(6): pass a gradient only where input is active and gradient positive."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < ctx.upper)) * (g > 0), None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        net.conv1.weight.mul_(3)  # more active units than the default init gives
    bb = get_backbone(net, layer="act2", input_size=24, resize_size=28)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(30, 40, 3), (28, 28, 3), (50, 35, 3)]]
    return bb, images


def _reference(bb, images, method, target=None):
    net = bb.model
    pixels, geometry = bb.preprocess(images)
    x = pixels.clone().requires_grad_(method in ("gradient", "guided_backprop"))
    if method == "guided_backprop":
        feats = net.features(x, relu=lambda z: _Guided.apply(z, float("inf")), relu6=lambda z: _Guided.apply(z, 6.0))
    else:
        feats = net.features(x)
    if method in ("gradcam", "scorecam"):
        feats.retain_grad()
    logits = net.fc(feats.mean((2, 3)))
    t = logits.argmax(1) if target is None else torch.as_tensor(target)
    if method == "scorecam":
        raw = []
        with torch.no_grad():
            for i in range(len(x)):
                cam = torch.zeros(feats.shape[2:])
                for k in range(feats.shape[1]):
                    a = feats[i, k]
                    if a.max() == a.min():
                        continue
                    up = F.interpolate(a[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                    w = F.softmax(net(x[i : i + 1] * (up - a.min()) / (a.max() - a.min())), dim=1)[0, t[i]]
                    cam += w * a
                raw.append(F.relu(cam))
        raw = torch.stack(raw)
    else:
        logits.gather(1, t[:, None]).sum().backward()
        if method == "gradcam":
            raw = F.relu((feats.grad.mean((2, 3), keepdim=True) * feats).sum(1))
        else:
            raw = x.grad.abs().amax(1)
    return minmax(list(to_original(raw.detach(), geometry, bb.input_size)))


@pytest.mark.parametrize("method", METHODS)
def test_attention_matches_reference(tiny, method):
    bb, images = tiny
    maps = attention_maps(bb, images, method=method, batch_size=2)
    assert isinstance(maps, list) and [m.shape for m in maps] == [im.shape[:2] for im in images]
    for got, ref in zip(maps, _reference(bb, images, method)):
        assert np.nanmin(got) >= 0 and np.nanmax(got) <= 1 and np.nanmax(got) == pytest.approx(1)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    again = attention_maps(bb, images, method=method, batch_size=3)
    for a, b in zip(maps, again):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(attention_maps(bb, images, method=method, batch_size=2)[0], maps[0])


def test_guided_backprop_differs_from_gradient(tiny):
    bb, images = tiny
    g = attention_maps(bb, images[:1], method="gradient")
    gb = attention_maps(bb, images[:1], method="guided_backprop")
    assert not np.allclose(g, gb)


def test_model_left_untouched_and_targets(tiny):
    bb, images = tiny
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    logits = bb.predict(bb.preprocess(images)[0])
    pred = logits.argmax(1).numpy()
    default = attention_maps(bb, images, method="gradcam")
    explicit = attention_maps(bb, images, method="gradcam", target=pred)
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a, b)
    other = (pred + 1) % 5
    for got, ref in zip(attention_maps(bb, images, method="gradient", target=other), _reference(bb, images, "gradient", other)):
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert attention_maps(bb, images, method="gradient", target=2)[0].shape == images[0].shape[:2]
    assert bb.model.act1.inplace and isinstance(bb.model.act2, nn.ReLU6) and bb.model.act2.inplace
    assert all(p.requires_grad for p in bb.model.parameters())
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_validation(tiny):
    bb, images = tiny
    with pytest.raises(ValueError, match="'method' parameter of attention_maps must be a str among"):
        attention_maps(bb, images, method="lime")
    with pytest.raises(ValueError, match="class indices in"):
        attention_maps(bb, images, target=5)
    with pytest.raises(ValueError, match="target must be None"):
        attention_maps(bb, images, target=[0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        attention_maps(bb, images, batch_size=0)


def test_transformer_geometry_matches_feature_maps(tiny):
    from sklearn_ais import DNNFeatureMapTransformer

    bb, images = tiny
    with pytest.raises(NotFittedError):
        attention_maps(DNNFeatureMapTransformer(bb), images)
    tr = DNNFeatureMapTransformer(bb).fit(images)
    fm = tr.transform(images)
    maps = attention_maps(tr, images, method="gradcam")
    assert [m.shape for m in maps] == [tuple(g[:2]) for g in fm.geometry]
    # Grad-CAM's activations are the transformer's feature maps: same input, same crop.
    ref = _reference(bb, images, "gradcam")
    for a, b in zip(maps, ref):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if not torch.cuda.is_available():  # fitted on a GPU (device="auto"), used here: the CPU, as transform does
        tr.device_ = torch.device("cuda")
        for a, b in zip(attention_maps(tr, images, method="gradcam"), ref):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradcam_resnet18_matches_hand_written():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    bb = get_backbone(torchvision.models.resnet18(weights=None), layer="layer4", input_size=64, resize_size=72)
    images = np.random.default_rng(1).integers(0, 256, size=(3, 80, 96, 3), dtype=np.uint8)
    maps = attention_maps(bb, images, method="gradcam")
    assert maps.shape == (3, 80, 96) and maps.dtype == np.float32

    pixels, geometry = bb.preprocess(images)
    captured = []
    handle = bb.model.layer4.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = bb.model(pixels.requires_grad_())
    finally:
        handle.remove()
    captured[0].retain_grad()
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    (A,) = captured
    cam = F.relu((A.grad.mean((2, 3), keepdim=True) * A).sum(1)).detach()
    np.testing.assert_allclose(maps, minmax(to_original(cam, geometry, (64, 64))), atol=1e-5)
