import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_ais._similarity import COMPARISONS
from sklearn_ais.backbones import MLPHead

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
