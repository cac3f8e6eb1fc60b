"""sphinx-gallery settings: which examples run, where their figures go, and how the figures are collected.

The examples are plain scripts that save their figures into the folder given as their first argument (so that they
run the same way from a terminal and in the tests). Here each script gets a folder of its own, and a scraper hands
every PNG the script saved during a code block to sphinx-gallery, which shows it under that block.

Which scripts run: those that need only the package run always. Those that need the real data set run when
``SKLEARN_AIS_DATA`` (or the default data home) has it; otherwise they are shown without output and with a note.
``SKLEARN_AIS_GALLERY`` chooses: ``fast`` (the default: scripts that take about a minute or less on 2 CPU cores),
``all`` (every script, the slow cross-validations included), ``offline`` (only the scripts that need no data set)
or ``none``.
"""

import os
import re
import shutil
from pathlib import Path

# script -> (needs the real data set, takes minutes on 2 CPU cores)
EXAMPLES = {
    "plot_quickstart_synthetic.py": (False, False),
    "plot_heatmaps_real_photos.py": (True, False),
    "plot_unit_pruning.py": (True, False),
    "plot_permutation_test.py": (True, True),
    "plot_compare_methods.py": (True, True),
    "plot_compare_networks.py": (True, True),
    "plot_selector_cross_validation.py": (True, True),
    "plot_transformer_layers.py": (False, False),
}

NOT_RUN_NOTE = (
    "This example was not run when this page was built ({reason}), so its output is not shown. "
    "Run it with ``python examples/{name} OUTPUT_DIR``."
)


def _data_available():
    # The examples find the data set through SKLEARN_AIS_DATA (or the default data home), as a user's scripts do.
    from sklearn_ais.datasets import DataUnavailableError
    from sklearn_ais.datasets._base import fetch_files
    from sklearn_ais.datasets._kriegeskorte import REMOTES

    try:
        fetch_files("kriegeskorte92", REMOTES, download=False)
    except DataUnavailableError:
        return False
    return True


def executed_examples(choice=None, data=None):
    """``{script: reason it is not run or None}`` for every example, under the gallery setting ``choice``."""
    choice = choice or os.environ.get("SKLEARN_AIS_GALLERY", "fast")
    if choice not in ("fast", "all", "offline", "none"):
        raise ValueError(f"SKLEARN_AIS_GALLERY must be 'fast', 'all', 'offline' or 'none', got {choice!r}")
    data = _data_available() if data is None else data
    reasons = {}
    for name, (needs_data, slow) in EXAMPLES.items():
        if choice == "none":
            reasons[name] = "SKLEARN_AIS_GALLERY=none"
        elif needs_data and choice == "offline":
            reasons[name] = "SKLEARN_AIS_GALLERY=offline runs only the examples that need no data set"
        elif needs_data and not data:
            reasons[name] = "the real data set was not available: set SKLEARN_AIS_DATA"
        elif slow and choice == "fast":
            reasons[name] = "it takes several minutes; SKLEARN_AIS_GALLERY=all runs it"
        else:
            reasons[name] = None
    return reasons


class SavedFigureScraper:
    """Collect the PNG files a script saved into its output folder during the last code block."""

    def __init__(self, root):
        self.root = Path(root)

    def folder(self, src_file):
        return self.root / Path(src_file).stem

    def __call__(self, block, block_vars, gallery_conf):
        from sphinx_gallery.scrapers import figure_rst

        folder = self.folder(block_vars["src_file"])
        seen = block_vars.setdefault("_sklearn_ais_seen", set())
        new = sorted(p for p in folder.glob("*.png") if p.name not in seen) if folder.is_dir() else []
        paths = []
        for png, target in zip(new, block_vars["image_path_iterator"]):
            seen.add(png.name)
            shutil.copyfile(png, target)
            paths.append(target)
        return figure_rst(paths, gallery_conf["src_dir"])

    def __repr__(self):  # sphinx-gallery caches its configuration by repr
        return "SavedFigureScraper"


class ScriptArguments:
    """The command line each example sees: its own output folder."""

    def __init__(self, scraper):
        self.scraper = scraper

    def __call__(self, gallery_conf, script_vars):
        folder = self.scraper.folder(script_vars["src_file"])
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return [str(folder)]

    def __repr__(self):
        return "ScriptArguments"


def configuration(examples_dir, gallery_dir):
    """The ``sphinx_gallery_conf`` dictionary."""
    scraper = SavedFigureScraper(Path(gallery_dir).parent / "_build" / "gallery_figures")
    reasons = executed_examples()
    run = [name for name, reason in reasons.items() if reason is None]
    pattern = "|".join(re.escape(name) for name in run) or "^$"
    return {
        "examples_dirs": str(examples_dir),
        "gallery_dirs": str(gallery_dir),
        "filename_pattern": f"/({pattern})$",
        "ignore_pattern": r"__init__\.py|/_",
        "image_scrapers": (scraper,),
        "reset_argv": ScriptArguments(scraper),
        "plot_gallery": "True",
        "download_all_examples": False,
        "remove_config_comments": True,
        "abort_on_example_error": True,
        "only_warn_on_example_error": False,
        "show_memory": False,
        "within_subsection_order": "FileNameSortKey",
    }


def add_not_run_notes(app, docname, source):
    """``source-read`` hook: a note under the title of every gallery page whose script did not run."""
    name = docname.rsplit("/", 1)[-1] + ".py"
    reason = executed_examples().get(name) if docname.startswith("auto_examples/") else None
    if not reason:
        return
    lines = source[0].split("\n")
    for i in range(1, len(lines)):
        if lines[i] and set(lines[i]) == {"="} and lines[i - 1].strip():
            note = ["", ".. note::", "", "   " + NOT_RUN_NOTE.format(reason=reason, name=name), ""]
            source[0] = "\n".join(lines[: i + 1] + note + lines[i + 1:])
            return
