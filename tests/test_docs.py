"""The documentation site builds offline without a warning, has a page for every public name, and reads in a browser.

The site is the one ``.ci/run`` builds (``SKLEARN_AIS_DOCS_HTML`` names its folder); run alone, this module builds
it itself with the gallery's offline examples only (about two minutes on 2 CPU cores). The browser checks load the
pages from disk in headless Chromium with networking disabled, so they also prove that the site needs no network
(MathJax and the search index are served from the site itself). Screenshots are kept in
``$SKLEARN_AIS_SCREENSHOTS`` (default: a ``sklearn-ais-docs-screenshots`` folder in the temporary directory).
"""

import html
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from .test_report_browser import CHROMIUM, _chromium

pytest.importorskip("sphinx", reason="the [docs] extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
# The public submodules the API reference covers: every submodule of the package but the command line.
DOCUMENTED = ("alignment", "attention", "backbones", "datasets", "evaluation", "metrics", "model_selection", "plotting",
              "workflow")

needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    given = os.environ.get("SKLEARN_AIS_DOCS_HTML")
    if given:
        folder = Path(given)
        assert (folder / "index.html").is_file(), f"SKLEARN_AIS_DOCS_HTML={given} holds no built site"
        return folder
    out = tmp_path_factory.mktemp("docs") / "html"
    env = {**os.environ, "SKLEARN_AIS_GALLERY": "offline", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(out.parent / "doctrees"),
         str(ROOT / "docs"), str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200,
    )
    assert proc.returncode == 0, f"the site did not build cleanly:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "WARNING" not in proc.stderr, proc.stderr[-6000:]
    return out


def _public_names():
    """Every public name, read from the package itself (not from the docs' own generator)."""
    import sklearn_ais

    names = {f"sklearn_ais.{n}" for n in sklearn_ais.__all__ if n not in sklearn_ais._SUBMODULES}
    for module in DOCUMENTED:
        names |= {f"sklearn_ais.{module}.{n}" for n in importlib.import_module(f"sklearn_ais.{module}").__all__}
    return names


def test_the_reference_covers_every_public_submodule():
    import sklearn_ais

    assert set(sklearn_ais._SUBMODULES) - {"cli"} == set(DOCUMENTED)


def test_the_gallery_knows_every_example():
    """Each examples/plot_*.py is listed in docs/_gallery.py (whether it needs the data set, whether it is slow)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _gallery import EXAMPLES
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert sorted(EXAMPLES) == sorted(p.name for p in (ROOT / "examples").glob("plot_*.py"))


@pytest.mark.slow
def test_every_public_name_has_a_page(site):
    pages = {p.stem for p in (site / "api" / "generated").glob("*.html")}
    missing = sorted(_public_names() - pages)
    assert not missing, f"public names without an API page: {missing}"
    index = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("sklearn_ais.AISSelector", "sklearn_ais.metrics.second_order_isomorphism"):
        assert f'href="generated/{name}.html"' in index, name


@pytest.mark.slow
def test_the_guide_links_to_the_reference_instead_of_copying_docstrings(site):
    """No docstring paragraph of a public class appears in the guide's text: the guide links to its page."""
    import sklearn_ais

    guide = " ".join(re.sub(r"<[^>]+>", " ", p.read_text(encoding="utf-8")) for p in (site / "user_guide").glob("*.html"))
    guide = re.sub(r"\s+", " ", html.unescape(guide))
    for name in ("AISSelector", "AISHeatmapper", "DNNFeatureMapTransformer"):
        doc = getattr(sklearn_ais, name).__doc__
        for paragraph in doc.split("\n\n")[1:6]:
            text = re.sub(r"\s+", " ", paragraph).strip()
            if len(text) > 80 and "``" not in text and ":" not in text[:40]:
                assert text not in guide, f"the guide copies {name}'s docstring: {text[:80]}..."
    assert 'href="../api/generated/sklearn_ais.AISSelector.html' in (site / "user_guide" / "ais.html").read_text(
        encoding="utf-8")


def _screenshot(site, page, name, height=2000):
    folder = Path(os.environ.get("SKLEARN_AIS_SCREENSHOTS") or Path(tempfile.gettempdir()) / "sklearn-ais-docs-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"{name}.png"
    _chromium(f"--screenshot={shot}", f"--window-size=1300,{height}", (site / page).as_uri())
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert (pixels < 235).any(axis=2).mean() > 0.02, f"the screenshot of {page} is nearly blank ({shot})"
    return shot


def _dom(site, page, query=""):
    return _chromium("--dump-dom", (site / page).as_uri() + query)


@pytest.mark.slow
@needs_browser
def test_index_page_renders_with_its_navigation(site):
    dom = _dom(site, "index.html")
    assert "sklearn-ais" in dom
    for target in ("user_guide/index.html", "auto_examples/index.html", "api/index.html"):
        assert f'href="{target}' in dom, target
    _screenshot(site, "index.html", "index")


@pytest.mark.slow
@needs_browser
def test_aisselector_page_shows_its_parameters_and_rendered_math(site):
    page = "api/generated/sklearn_ais.AISSelector.html"
    dom = _dom(site, page)
    params = re.search(r"Parameters.*?</dl>", dom, re.S)
    assert params, "no Parameters table"
    for name in ("similarity", "comparison", "n_features_to_select", "cv", "y_kind"):
        assert re.search(rf"<strong>{name}</strong>", params.group(0)), name
    # MathJax (served from the site's _static) replaced the TeX by its rendering.
    assert "<mjx-container" in dom, "the math was not rendered (MathJax did not run)"
    assert "mathjax/tex-chtml.js" in dom and (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    _screenshot(site, page, "AISSelector")


@pytest.mark.slow
@needs_browser
def test_search_finds_aisselector(site):
    dom = _dom(site, "search.html", "?q=AISSelector")
    results = re.search(r'<ul[^>]*class="search"[^>]*>(.*?)</ul>', dom, re.S)
    assert results, "the search page listed no results"
    first = re.search(r'href="([^"#]+)', results.group(1)).group(1)
    assert first == "api/generated/sklearn_ais.AISSelector.html", f"first result: {first}"


_PROBE = """<script>
window.addEventListener("load", function () {
  var rows = Array.prototype.map.call(document.images, function (im) {
    return {src: im.getAttribute("src"), width: im.naturalWidth, shown: im.clientWidth};
  });
  var pre = document.createElement("pre"); pre.id = "img-probe"; pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.slow
@needs_browser
def test_gallery_page_shows_its_figures(site, tmp_path):
    page = site / "auto_examples" / "plot_quickstart_synthetic.html"
    probe = page.with_name("probe_quickstart.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        dom = _dom(site, "auto_examples/probe_quickstart.html")
    finally:
        probe.unlink()
    rows = json.loads(html.unescape(re.search(r'<pre id="img-probe"[^>]*>(.*?)</pre>', dom, re.S).group(1)))
    figures = [r for r in rows if "sphx_glr_plot_quickstart_synthetic_0" in (r["src"] or "")]
    assert len(figures) == 2, rows  # the sweep and the histogram the script saves
    for r in figures:
        assert r["width"] > 100 and r["shown"] > 100, r
    _screenshot(site, "auto_examples/plot_quickstart_synthetic.html", "gallery_quickstart", height=3000)
