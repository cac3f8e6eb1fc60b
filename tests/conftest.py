import os
from pathlib import Path

import numpy as np
import pytest
import torch

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
