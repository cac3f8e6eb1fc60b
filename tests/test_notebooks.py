"""The teaching notebooks in examples/ are stored executed (outputs and small figures, so a reader on a code-hosting
site sees them), and the tests run them again top to bottom: an error fails, and so does a stored number that a fresh
run no longer gives (beyond noise). Refresh the stored outputs after a change with
``SKLEARN_AIS_UPDATE_NOTEBOOKS=1 SKLEARN_AIS_DATA=../shared/data python -m pytest -p no:xdist tests/test_notebooks.py``.
"""

import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# Notebooks that read the real data (skipped when the data folder is missing).
REAL_DATA = {
    "tutorial_kriegeskorte92.ipynb",
    "tutorial_where_is_the_aligned_information.ipynb",
    "tutorial_which_model_and_method.ipynb",
}
# A stored figure stays small (a repository, not a gallery): bytes of one PNG, and of all of a notebook's.
MAX_FIGURE_BYTES, MAX_NOTEBOOK_FIGURE_BYTES = 200_000, 2_000_000
# Numbers printed by a fresh run may differ from the stored ones by this much (float noise of another machine or
# BLAS; last-digit rounding of a printed value): |a - b| <= max(ABS_TOL, REL_TOL * max(|a|, |b|)).
ABS_TOL, REL_TOL = 0.011, 0.03
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
# Table columns that hold timings (left out of the comparison).
_TIMING_COLUMN = re.compile(r"time|seconds|duration", re.I)
# Text that is not a result: timings, addresses, progress bars.
_VOLATILE = re.compile(r"\d+(?:\.\d+)?\s*(?:s|ms|min)\b|0x[0-9a-f]+|\d+it/s|it/s|\[\d+:\d+")


def test_notebooks_exist():
    assert REAL_DATA <= {p.name for p in NOTEBOOKS}


def small_png(data: str, max_width=900) -> str:
    """A stored figure made small: at most ``max_width`` pixels wide, 256 colours (base64 PNG in, base64 PNG out)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    image = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def store_small_figures(nb):
    """Every PNG output of a notebook through :func:`small_png` (what the update mode stores)."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                png = data["image/png"]
                data["image/png"] = small_png("".join(png) if isinstance(png, list) else png)
    return nb


def _text_outputs(cell) -> str:
    """A code cell's printed text (stdout and results; not stderr, which holds warnings and progress bars)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        elif out.get("output_type") in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" in data:
                continue
            if "text/html" in data:  # a table (DataFrame, Styler): its cells, without the tags and their ids
                html = "".join(data["text/html"]) if isinstance(data["text/html"], list) else data["text/html"]
                parts.append(_table_text(html))
            elif "text/plain" in data:
                text = data["text/plain"]
                parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def _table_text(html) -> str:
    """The cells of the HTML tables in ``html`` as text, without the columns that hold timings (``fit_time``)."""
    html = re.sub(r"<style.*?</style>", " ", html, flags=re.S)
    out = []
    for table in re.findall(r"<table.*?</table>", html, flags=re.S) or [html]:
        rows = [[re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)]
                for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)]
        header = rows[0] if rows else []
        timed = {k for k, name in enumerate(header) if _TIMING_COLUMN.search(name)}
        out.extend(" ".join(c for k, c in enumerate(row) if k not in timed) for row in rows)
    return "\n".join(out)


def _numbers(text) -> list[float]:
    return [float(m) for m in _NUMBER.findall(_VOLATILE.sub(" ", text))]


def stale_outputs(stored_cells, fresh_cells) -> list[str]:
    """Where a fresh run's printed numbers differ from the stored ones beyond noise: one line per cell."""
    problems = []
    for i, (old, new) in enumerate(zip(stored_cells, fresh_cells)):
        if old.get("cell_type") != "code":
            continue
        a, b = _numbers(_text_outputs(old)), _numbers(_text_outputs(new))
        if len(a) != len(b):
            problems.append(f"cell {i}: {len(a)} numbers stored, {len(b)} printed now")
            continue
        bad = [(x, y) for x, y in zip(a, b) if abs(x - y) > max(ABS_TOL, REL_TOL * max(abs(x), abs(y)))]
        if bad:
            problems.append(f"cell {i}: stored vs fresh {bad[:4]}")
    return problems


def test_stale_output_detector():
    def cell(text):
        return {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}

    stored = [cell("baseline 2OI 0.372, 251 maps kept, p = 3.6e-13 (12.3 s)"), {"cell_type": "markdown"}]
    assert stale_outputs(stored, [cell("baseline 2OI 0.375, 250 maps kept, p = 4.1e-13 (19.0 s)")]) == []
    assert stale_outputs(stored, [cell("baseline 2OI -0.038, 251 maps kept, p = 3.6e-13 (12.3 s)")]) == [
        "cell 0: stored vs fresh [(0.372, -0.038)]"]
    assert stale_outputs(stored, [cell("baseline 2OI 0.372, 251 maps kept")]) == [
        "cell 0: 3 numbers stored, 2 printed now"]

    def table(t, score):
        html = ("<table><thead><tr><th></th><th>test_2oi</th><th>fit_time</th></tr></thead><tbody><tr><th>0</th>"
                f"<td>{score}</td><td>{t}</td></tr></tbody></table>")
        return {"cell_type": "code", "outputs": [{"output_type": "execute_result", "data": {"text/html": html}}]}

    assert stale_outputs([table(1.12, 0.322)], [table(2.30, 0.324)]) == []  # a timing column is not a result
    assert stale_outputs([table(1.12, 0.322)], [table(1.12, 0.196)]) == ["cell 0: stored vs fresh [(0.322, 0.196)]"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed_with_small_figures(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not unrun, f"{path.name}: code cells {unrun} have no stored run (refresh: see this module's docstring)"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), f"{path.name}: run out of order"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored with an error output"
    sizes = [len(base64.b64decode("".join(o["data"]["image/png"]))) for c in code for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert len(sizes) >= 5, f"{path.name} stores only {len(sizes)} figures"
    assert max(sizes) <= MAX_FIGURE_BYTES and sum(sizes) <= MAX_NOTEBOOK_FIGURE_BYTES, (path.name, max(sizes), sum(sizes))
    widgets = [o for c in code for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert not widgets, f"{path.name}: widget outputs do not render on a code-hosting site"


def _kernel_from_this_python(tmp_path, monkeypatch) -> str:
    """A kernelspec that runs ipykernel with this interpreter (the project's venv), whatever else is installed."""
    name = "sklearn-ais-tests"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sklearn-ais tests",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_its_stored_outputs_are_current(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' (ipykernel)")
    if path.name in REAL_DATA:
        data = os.environ.get("SKLEARN_AIS_DATA")
        if not data or not (Path(data) / "kriegeskorte92").is_dir():
            pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    kernel = _kernel_from_this_python(tmp_path, monkeypatch)
    stored = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 5, f"{path.name} drew only {figures} figures"
    if os.environ.get("SKLEARN_AIS_UPDATE_NOTEBOOKS"):  # store this run as the notebook's outputs
        nb.metadata["kernelspec"] = stored.metadata.get("kernelspec", nb.metadata.get("kernelspec"))
        nbformat.write(store_small_figures(nb), path)
        return
    if os.environ.get("SKLEARN_AIS_KEEP_NOTEBOOKS"):  # keep the executed copy for a look
        keep = Path(os.environ["SKLEARN_AIS_KEEP_NOTEBOOKS"])
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    stale = stale_outputs(stored.cells, nb.cells)
    assert not stale, (f"{path.name}: the stored outputs are stale (refresh them, see tests/test_notebooks.py): "
                       + "; ".join(stale))
