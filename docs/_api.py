"""Write the API reference's source pages from the public modules' ``__all__``.

Every name in ``sklearn_ais.__all__`` (classes and functions of the top level) and in the ``__all__`` of each public
submodule gets one autosummary entry, hence one page. Nothing is listed by hand, so the reference cannot fall behind
the package.
"""

import importlib
import inspect
from pathlib import Path

# The public submodules documented in the reference, in the order of the page.
MODULES = ("backbones", "datasets", "metrics", "model_selection", "alignment", "plotting", "workflow", "attention",
           "evaluation")


def public_names():
    """``{module name: [public names]}`` for the top level and each submodule, in ``__all__`` order."""
    import sklearn_ais

    names = {"sklearn_ais": [n for n in sklearn_ais.__all__ if n not in sklearn_ais._SUBMODULES]}
    for module in MODULES:
        names[f"sklearn_ais.{module}"] = list(importlib.import_module(f"sklearn_ais.{module}").__all__)
    return names


def _kind(module, name):
    obj = getattr(importlib.import_module(module), name)
    if not getattr(obj, "__module__", "sklearn_ais").startswith("sklearn_ais"):
        return "reexport"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def write_api_pages(folder):
    """Write ``folder/index.rst``: one section per module, one autosummary page per public name."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    lines = [
        ".. _api:",
        "",
        "API reference",
        "=============",
        "",
        "Every public name of the package, one page each, generated from the docstrings. "
        "The user guide (:doc:`/user_guide/index`) explains the ideas; these pages hold the details.",
        "",
    ]
    for module, names in public_names().items():
        doc = (inspect.getdoc(importlib.import_module(module)) or "").split("\n\n")[0].replace("\n", " ")
        title = f"``{module}``"
        lines += [title, "-" * len(title), "", f".. module:: {module}",
                  "", doc, ""]
        lines += [f".. currentmodule:: {module}", ""]
        for kind in ("class", "function", "data"):
            members = [n for n in names if _kind(module, n) == kind]
            if not members:
                continue
            template = f"{kind}.rst"
            lines += [".. autosummary::", "   :toctree: generated", f"   :template: {template}", "", *[
                f"   {n}" for n in members], ""]
        reexports = [n for n in names if _kind(module, n) == "reexport"]
        if reexports:
            lines += ["Re-exported unchanged from other libraries, for convenience:", "", ".. toctree::",
                      "   :maxdepth: 1", "", *[f"   generated/{module}.{n}" for n in reexports], ""]
            for n in reexports:
                _write_if_changed(folder / "generated" / f"{module}.{n}.rst", _reexport_page(module, n))
    text = "\n".join(lines) + "\n"
    index = folder / "index.rst"
    _write_if_changed(index, text)
    return index


def _reexport_page(module, name):
    obj = getattr(importlib.import_module(module), name)
    origin = f"{obj.__module__.split('._')[0]}.{obj.__qualname__}"
    title = name
    return "\n".join([
        title, "=" * len(title), "", f".. currentmodule:: {module}", "", f".. py:data:: {name}", "",
        f"   ``{module}.{name}`` is ``{origin}``, re-exported unchanged so that one import gives every splitter "
        f"the package works with. Its documentation is that of ``{origin}`` (``help({name})`` in Python).", "",
    ])


def _write_if_changed(path, text):
    # Unchanged sources keep their timestamps, so an incremental build does not redo every page.
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
