"""Unit pruning companions: classifier from embeddings, classification agreement, occlusion maps."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.alignment import classification_agreement, occlusion_heatmaps, penultimate_classifier
from sklearn_ais.backbones import get_backbone
from sklearn_ais.backbones._registry import _vgg_head


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return get_backbone("efficientnet_lite0", weights=None, input_size=32, resize_size=32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)


class _MiniVGG(nn.Module):
    """VGG's layout (features, avgpool 7x7, fc6-ReLU-drop-fc7-ReLU-drop-fc8) at toy width."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(8 * 49, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 10)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _MiniResNet(nn.Module):
    """torchvision's ResNet layout (body, global average pool, ``fc``) at toy width."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 7)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.body(x)), 1))


def _vgg_backbone():
    torch.manual_seed(0)
    model = _MiniVGG().eval()
    return get_backbone(model, layer="features.1", head=_vgg_head(model), input_size=32, resize_size=32)


@pytest.mark.parametrize("make", ["lite", "resnet", "vgg"])
def test_classifier_on_embeddings_reproduces_the_logits(make, lite):
    if make == "lite":
        bb = lite
    elif make == "resnet":
        torch.manual_seed(0)
        bb = get_backbone(_MiniResNet().eval(), layer="body", input_size=32, resize_size=32)
    else:
        bb = _vgg_backbone()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = bb.model(x)
        via = penultimate_classifier(bb)(bb.head(bb.forward_maps(x)))
    torch.testing.assert_close(via, logits, rtol=1e-5, atol=1e-5)


def test_agreement_matches_manual_pruning(lite, images):
    bb = lite
    pixels, _ = bb.preprocess(images)
    keep = np.zeros(1280, dtype=bool)
    keep[::3] = True
    agree, top1, top1_pruned = classification_agreement(bb, images, keep, return_predictions=True)
    with torch.no_grad():
        E = bb.head(bb.forward_maps(pixels))
        fc = bb.model.get_classifier()
        ref_full = fc(E).argmax(1).numpy()
        ref_pruned = fc(E * torch.as_tensor(keep)).argmax(1).numpy()
        np.testing.assert_array_equal(top1, bb.model(pixels).argmax(1).numpy())
    np.testing.assert_array_equal(top1, ref_full)
    np.testing.assert_array_equal(top1_pruned, ref_pruned)
    assert agree == pytest.approx(np.mean(ref_full == ref_pruned))
    # Same answer from precomputed maps, preprocessed pixels and unit indices.
    fm = DNNFeatureMapTransformer(bb).fit(images).transform(images)
    assert classification_agreement(bb, fm, keep) == agree
    assert classification_agreement(bb, pixels, np.flatnonzero(keep), preprocessed=True) == agree
    assert classification_agreement(bb, fm, np.ones(1280, dtype=bool)) == 1.0


def test_agreement_with_a_fitted_unit_selector(lite, images):
    fm = DNNFeatureMapTransformer(lite).fit(images).transform(images)
    E = fm.embed()
    H = np.corrcoef(E[:, :50])
    sel = AISSelector(device="cpu").fit(E, H)  # unit pruning: the selector on penultimate units
    a = classification_agreement(lite, fm, sel)
    assert a == classification_agreement(lite, fm, sel.support_)
    assert 0.0 <= a <= 1.0
    with pytest.raises(ValueError, match="shape"):
        classification_agreement(lite, fm, np.ones(10, dtype=bool))


def test_vgg_agreement_zeroes_fc7():
    bb = _vgg_backbone()
    x = torch.randn(5, 3, 32, 32)
    keep = np.arange(16) < 8
    agree, top1, pruned = classification_agreement(bb, x, keep, preprocessed=True, return_predictions=True)
    with torch.no_grad():
        fc7 = bb.model.classifier[:5](torch.flatten(bb.model.avgpool(bb.model.features(x)), 1))
        ref = bb.model.classifier[6](fc7 * torch.as_tensor(keep)).argmax(1).numpy()
    np.testing.assert_array_equal(pruned, ref)


def test_occlusion_heatmaps_match_a_manual_sweep(lite, images):
    bb = lite
    rng = np.random.default_rng(1)
    H = np.corrcoef(rng.normal(size=(6, 4)))
    maps = occlusion_heatmaps(bb, images, H, window=16, stride=16, output="input")
    assert maps.shape == (6, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    # Image 0 by hand: 4 windows tile the input, so each quadrant holds one drop.
    pixels, _ = bb.preprocess(images)
    with torch.no_grad():
        E = bb.head(bb.forward_maps(pixels)).double().numpy()
        others = np.arange(1, 6)

        def row_2oi(e):
            sims = [np.corrcoef(e, E[o])[0, 1] for o in others]
            return stats.spearmanr(sims, H[0, others]).statistic

        base = row_2oi(E[0])
        drops = []
        for t, l in [(0, 0), (0, 16), (16, 0), (16, 16)]:
            x = pixels[:1].clone()
            x[:, :, t : t + 16, l : l + 16] = 0.0
            drops.append(base - row_2oi(bb.head(bb.forward_maps(x)).double().numpy()[0]))
    drops = np.clip(drops, 0, None)
    expected = drops / drops.max() if drops.max() > 0 else drops
    got = [maps[0, 0, 0], maps[0, 0, 31], maps[0, 31, 0], maps[0, 31, 31]]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_occlusion_heatmaps_original_geometry(lite):
    imgs = np.random.default_rng(2).integers(0, 256, size=(5, 48, 40, 3), dtype=np.uint8)
    H = np.corrcoef(np.random.default_rng(3).normal(size=(5, 3)))
    maps = occlusion_heatmaps(DNNFeatureMapTransformer(lite), imgs, H, window=20, stride=12)
    assert maps.shape == (5, 48, 40)
    assert np.nanmin(maps) >= 0 and np.nanmax(maps) <= 1  # NaN: outside the network's crop
    H[0, 1:] = H[1:, 0] = np.nan
    with pytest.warns(UserWarning) as record:  # (check_similarity_target also warns about the empty row)
        maps = occlusion_heatmaps(lite, imgs, H, window=16, stride=16)
    assert any("fewer than 3" in str(w.message) for w in record)
    assert np.nanmax(maps[0]) == 0
