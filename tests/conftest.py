"""What the test modules share (no test module imports from another one).

* Fixtures: ``data_home`` (the real data folder, or a skip), ``rng``, ``image_dir`` (odd and broken image
  files, built once per worker).
* Plain helpers, imported as ``from .conftest import ...``: random problems (``human``, ``task``, ``fmaps``
  and the 12-image problem ``X0, H0`` with an asymmetric ``A0``), small networks (``vgg_like``,
  ``CountingNet``, ``TinyNet`` and its ``tiny_backbone`` / ``tiny_transformer``, the colour-selective
  ``planted_colour_transformer``), ``SETTINGS`` and the
  persistence checks ``no_tensors`` / ``roundtrips``.
* Set-up for the whole run: the real data folder, one torch thread per xdist worker.

Naive reference implementations live in ``tests/_reference.py``.
"""

import io
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sklearn_ais import DNNFeatureMapTransformer, FeatureMaps
from sklearn_ais._similarity import COMPARISONS
from sklearn_ais.backbones import MLPHead, PoolingHead, get_backbone

# The project's real data live beside the repository (../shared/data) on the
# project's machines; tests read them from there unless the variable is set.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "SKLEARN_AIS_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["SKLEARN_AIS_DATA"] = str(_SHARED)

# One torch thread per xdist worker (two workers share the two cores); two when run serially.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def data_home():
    path = os.environ.get("SKLEARN_AIS_DATA")
    if not path or not (Path(path) / "kriegeskorte92").is_dir():
        pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """Odd, broken and hostile image files (read only: shared by every test of a worker)."""
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


# ---------------------------------------------------------------------------
# Helpers shared by several test modules (imported as ``from .conftest import ...``)
# ---------------------------------------------------------------------------
SETTINGS = [(s, c) for s in ("pearson", "cosine") for c in COMPARISONS]


def human(rng, n, nan_frac=0.0):
    """A random symmetric matrix (random diagonal), with a fraction of its pairs missing (NaN)."""
    A = rng.normal(size=(n, n))
    H = (A + A.T) / 2
    if nan_frac:
        iu = np.triu_indices(n, 1)
        drop = rng.random(len(iu[0])) < nan_frac
        H[iu[0][drop], iu[1][drop]] = np.nan
        H[iu[1][drop], iu[0][drop]] = np.nan
    return H


def vgg_like(K=6, P=4, D1=16, D=12, seed=0):
    """A small VGG-shaped MLPHead (maxpool, P pooled values per map, a first layer, ReLU, fc7, ReLU)."""
    g = torch.Generator().manual_seed(seed)
    fc7 = nn.Linear(D1, D)
    with torch.no_grad():
        fc7.weight.copy_(torch.randn(D, D1, generator=g))
        fc7.bias.copy_(torch.randn(D, generator=g))
    W = torch.randn(D1, K * P, generator=g)
    b = torch.randn(D1, generator=g)
    side = int(round(P**0.5))
    return MLPHead(W, b, nn.Sequential(nn.ReLU(), fc7, nn.ReLU()), maxpool=2, output_size=(side, side))


class CountingNet(nn.Module):
    """A small CNN that counts forward calls and can fail on demand."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(6, 4)
        self.calls = 0
        self.fail_at = None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated failure")
        return self.fc(self.features(x).mean(dim=(2, 3)))


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
    """TinyNet at 16 x 16 pixels, its 4 maps read at ``features`` (8 x 8 each); seeded."""
    torch.manual_seed(0)
    return get_backbone(TinyNet(), layer="features", input_size=16, resize_size=16)


def tiny_transformer(**kw):
    """A fitted DNNFeatureMapTransformer on ``tiny_backbone()`` (CPU)."""
    return DNNFeatureMapTransformer(tiny_backbone(), device="cpu", **kw).fit(None)


class _ColourFeatures(nn.Module):
    """Planted ground truth: 4 maps that fire only on saturated object colours, 6 random luminance-texture maps; 4x4 pooled."""

    def __init__(self, gain=4.0):
        super().__init__()
        C = torch.tensor([(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1)], dtype=torch.float32)  # the task's 4 colours
        self.colour = nn.Conv2d(3, 4, 1)
        self.colour.weight.data = (gain * (2 * C - 1))[:, :, None, None]
        self.colour.bias.data = -gain * (C.sum(1) - 0.5)
        g = torch.Generator().manual_seed(0)
        self.texture = nn.Conv2d(3, 6, 3, padding=1)
        self.texture.weight.data = torch.randn(6, 1, 3, 3, generator=g).repeat(1, 3, 1, 1) / 3
        self.texture.bias.data = torch.zeros(6)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        return self.pool(torch.cat([torch.relu(self.colour(x)), torch.relu(self.texture(x))], 1))


class _PlantedNet(nn.Module):
    """Maps of _ColourFeatures, global average pooling, a random 4-class linear layer (logits)."""

    def __init__(self, gain=4.0):
        super().__init__()
        torch.manual_seed(0)
        self.features = _ColourFeatures(gain)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def planted_colour_transformer(size=48, gain=4.0):
    """A fitted transformer on ``_PlantedNet`` at ``size`` px (no resize, no normalisation; CPU); ``gain`` scales
    the colour maps (a pure object colour gives ``gain / 2``)."""
    bb = get_backbone(_PlantedNet(gain), layer="features", input_size=size, resize_size=size, mean=(0, 0, 0), std=(1, 1, 1))
    return DNNFeatureMapTransformer(bb, device="cpu", batch_size=64).fit(None)


def task(n=12, K=8, seed=0):
    """Positive-ish units X (n x K) and a random symmetric similarity matrix (n x n)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, K)) + 0.5
    A = rng.normal(size=(n, n))
    return X, (A + A.T) / 2


def fmaps(n=12, K=6, seed=0):
    """Random pooled FeatureMaps (n images, K maps of 3 x 3) with a 12 x 12 input geometry."""
    maps = np.random.default_rng(seed).random((n, K, 3, 3)).astype(np.float32)
    return FeatureMaps(maps, PoolingHead(), input_size=(12, 12))


# The 12-image, 8-unit problem of the bad-input tests, and a non-symmetric 12 x 12 matrix.
X0, H0 = task()
A0 = np.random.default_rng(1).normal(size=(12, 12))


def no_tensors(obj, path="estimator"):
    """Fitted attributes hold NumPy arrays and Python scalars, never (device-bound) torch tensors."""
    for name, value in vars(obj).items():
        if not name.endswith("_") and not name.startswith("_"):
            continue
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            assert not isinstance(v, torch.Tensor), f"{path}.{name} is a torch tensor"
            if name.endswith("_") and v is not None and not isinstance(v, (FeatureMaps,)):
                assert isinstance(v, (np.ndarray, np.generic, int, float, bool, str)), (name, type(v))


def roundtrips(est, tmp_path):
    """The estimator back from pickle, then from joblib (a file in tmp_path)."""
    yield pickle.loads(pickle.dumps(est))
    joblib.dump(est, tmp_path / "est.joblib")
    yield joblib.load(tmp_path / "est.joblib")
