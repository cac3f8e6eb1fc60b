"""Sphinx configuration of the sklearn_ais documentation site.

Build offline with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (or ``make -C docs html``).
The API pages are generated from each public module's ``__all__`` (``_api.py``), so a new public name gets its page
without editing the docs; the gallery renders ``examples/plot_*.py`` with the figures each script saves.
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))

import sklearn_ais  # noqa: E402

import _api  # noqa: E402
import _gallery  # noqa: E402

project = "sklearn-ais"
author = "the sklearn-ais developers"
copyright = "the sklearn-ais developers"
release = version = sklearn_ais.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
    # MathJax served from the site itself: the build and the pages need no network.
    "sphinx-mathjax-offline",
]

# API pages: one per public name, generated from ``__all__`` at every build.
_api.write_api_pages(DOCS / "api")
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False, "inherited-members": False}
autodoc_typehints = "none"
templates_path = ["_templates"]

# numpydoc renders the Parameters/Attributes tables; its own member lists are off (the class template lists methods).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# No inventories are fetched: the build must work offline. A local inventory can be named by a variable
# (SKLEARN_AIS_INTERSPHINX=name=url=path;...), used where the machine has them; none by default.
intersphinx_mapping = {}
for _entry in filter(None, os.environ.get("SKLEARN_AIS_INTERSPHINX", "").split(";")):
    _name, _url, _path = _entry.split("=", 2)
    intersphinx_mapping[_name] = (_url, _path)
intersphinx_disabled_reftypes = ["*"]

sphinx_gallery_conf = _gallery.configuration(ROOT / "examples", DOCS / "auto_examples")

# The guide's figures are drawn at build time from small synthetic data.
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_rcparams = {"figure.dpi": 100}

# Markdown is read only where the guide includes a part of README.md or CONTRIBUTING.md (one source for both).
source_suffix = {".rst": "restructuredtext"}
myst_heading_anchors = 0

html_theme = "pydata_sphinx_theme"
html_title = "sklearn-ais"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # No external icons, fonts or version switchers that need the network.
    "icon_links": [],
}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.json"]
suppress_warnings = []
nitpicky = False


def setup(app):
    app.connect("source-read", _gallery.add_not_run_notes)
