"""The gallery examples run as scripts and save their figures into the folder given as argv[1]."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> (figures it must save, needs the real data). Each takes 20 s to 2 min on 2 CPU cores.
# plot_selector_cross_validation.py and plot_compare_methods.py take several minutes and are not run here.
FAST = {
    "plot_quickstart_synthetic.py": (("quickstart_path.png", "quickstart_histogram.png"), False),
    "plot_heatmaps_real_photos.py": (("heatmap_grid.png", "ais_vs_gradcam.png", "top_contours.png"), True),
    "plot_unit_pruning.py": (("unit_pruning.png",), True),
    "plot_transformer_layers.py": (("transformer_layers.png", "transformer_heatmaps.png"), False),
}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_has_gallery_docstring(path):
    """A module docstring that opens with a title underlined by '=' and says how to run it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc, f"{path.name} has no module docstring"
    lines = doc.splitlines()
    assert len(lines) > 2 and set(lines[1]) == {"="} and len(lines[1]) >= len(lines[0]), f"{path.name}: no title"
    assert "Run:" in doc, f"{path.name}: the docstring should say how to run it"


def test_fast_examples_exist():
    missing = [name for name in FAST if not (EXAMPLES / name).is_file()]
    assert not missing


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAST))
def test_example_runs_and_saves_figures(name, tmp_path):
    figures, real_data = FAST[name]
    if real_data:
        data = os.environ.get("SKLEARN_AIS_DATA")
        if not data or not (Path(data) / "kriegeskorte92").is_dir():
            pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    out = tmp_path / "figures"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr
    from PIL import Image

    for fig in figures:
        path = out / fig
        assert path.is_file(), f"{name} did not save {fig}; it saved {sorted(p.name for p in out.glob('*'))}"
        with Image.open(path) as im:
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("RGB"), dtype=float)
        assert min(pixels.shape[:2]) > 100, f"{fig} is only {pixels.shape[1]}x{pixels.shape[0]} pixels"
        assert pixels.std() > 10, f"{fig} is blank"
