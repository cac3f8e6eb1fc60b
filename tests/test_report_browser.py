"""The HTML report of ``sklearn-ais demo`` renders in a real (headless) browser: every figure decodes and shows.

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it when it can). Each check loads the
report from disk with networking disabled, so it also proves the report is self-contained.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if shutil.which(n)),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); report not checked in a browser"
)

FIGURES = ("cv_curve", "ais_histogram", "heatmap_grid")

# Appended to a copy of the page: once everything has loaded, write what each <img> decoded to into the DOM,
# where --dump-dom can read it.
_PROBE = """<script>
window.addEventListener("load", function () {
  var rows = Array.prototype.map.call(document.images, function (im) {
    var fig = im.closest("figure");
    return {figure: fig ? fig.id : null, complete: im.complete, width: im.naturalWidth, height: im.naturalHeight,
            shown_width: im.clientWidth, shown_height: im.clientHeight};
  });
  var pre = document.createElement("pre");
  pre.id = "img-probe";
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args, timeout=120):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000", *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def _probe_images(html_path: Path, workdir: Path) -> list[dict]:
    """Load the page in Chromium and return, per <img>, whether it decoded and its natural and shown size."""
    page = workdir / f"probe_{html_path.stem}.html"
    text = html_path.read_text(encoding="utf-8")
    assert "</body>" in text
    page.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium("--dump-dom", page.as_uri())
    found = re.search(r'<pre id="img-probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's load event never fired (the probe wrote nothing)"
    import html

    return json.loads(html.unescape(found.group(1)))


def _png_data_uri(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def test_probe_tells_a_broken_image_from_a_good_one(tmp_path):
    """The check is not vacuous: an image that does not decode reads as width 0."""
    good = _png_data_uri(np.full((12, 20, 3), 200, dtype=np.uint8))
    page = tmp_path / "page.html"
    page.write_text(
        f'<!DOCTYPE html><html><body><figure id="good"><img src="{good}"/></figure>'
        '<figure id="broken"><img src="data:image/png;base64,iVBORw0KGgoAAAAN"/></figure></body></html>'
    )
    rows = {r["figure"]: r for r in _probe_images(page, tmp_path)}
    assert (rows["good"]["width"], rows["good"]["height"]) == (20, 12)
    assert rows["broken"]["width"] == 0


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ais-demo"
    script = Path(sys.executable).with_name("sklearn-ais")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "sklearn_ais.cli"]
    proc = subprocess.run([*cmd, "demo", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report.html"
    assert report.is_file()
    return report


@pytest.mark.slow
def test_demo_report_figures_decode_in_browser(demo_report, tmp_path):
    from PIL import Image

    rows = _probe_images(demo_report, tmp_path)
    assert [r["figure"] for r in rows] == list(FIGURES)
    for r in rows:
        assert r["complete"] and r["width"] > 0 and r["height"] > 0, f"figure {r['figure']} did not decode: {r}"
        assert r["shown_width"] > 100 and r["shown_height"] > 100, f"figure {r['figure']} is not shown: {r}"
        with Image.open(demo_report.parent / f"{r['figure']}.png") as png:  # the same figure saved beside the report
            assert (r["width"], r["height"]) == png.size


@pytest.mark.slow
def test_demo_report_screenshot_is_not_blank(demo_report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,3000", demo_report.as_uri())
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    if os.environ.get("SKLEARN_AIS_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SKLEARN_AIS_KEEP_SCREENSHOT"])
    assert pixels.shape[:2] == (3000, 1200)
    ink = (pixels < 235).any(axis=2)  # anything that is not white page background
    colour = (pixels.max(axis=2) - pixels.min(axis=2)) > 80  # saturated: curves, histogram bars, heatmaps
    assert ink.mean() > 0.05, f"screenshot nearly blank ({ink.mean():.1%} non-white pixels)"
    assert colour.mean() > 0.02, f"screenshot has almost no colour ({colour.mean():.1%}): figures missing?"
    # The heatmap grid: hundreds of screen rows that are mostly coloured overlays.
    rows_with_colour = int((colour.mean(axis=1) > 0.2).sum())
    assert rows_with_colour > 200, f"only {rows_with_colour} strongly coloured rows: heatmap grid missing?"


@pytest.mark.slow
def test_demo_report_has_every_section_provenance_and_heatmap(demo_report):
    """What a reader needs to cite it: every section, the provenance block, one heatmap per image (also as data)."""
    from sklearn_ais._report import SECTIONS

    page = demo_report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    for field in ("sklearn-ais version", "weights sha256", "preprocessing", "device", "command line", "date",
                  "library versions"):
        assert f"<th>{field}</th>" in page, field
    assert "simulated observer" in page and "2OI" in page and "Relative risk" in page
    order = re.search(r'<details id="image-order">.*?</details>', page, re.S).group(0)
    n = order.count("<li>")
    assert n == 48
    with np.load(demo_report.parent / "heatmaps.npz") as f:
        heat = [k for k in f.files if k.startswith("heatmap_")]
        assert len(heat) == n and len(f["ids"]) == n and f["heatmap_0"].shape == (128, 128)
