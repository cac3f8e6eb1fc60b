"""The teaching notebooks in examples/ are stored without outputs and run top to bottom without errors."""

import json
import os
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


def test_notebooks_exist():
    assert REAL_DATA <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty} before saving"


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
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' (ipykernel)")
    if path.name in REAL_DATA:
        data = os.environ.get("SKLEARN_AIS_DATA")
        if not data or not (Path(data) / "kriegeskorte92").is_dir():
            pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    kernel = _kernel_from_this_python(tmp_path, monkeypatch)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 5, f"{path.name} drew only {figures} figures"
    if os.environ.get("SKLEARN_AIS_KEEP_NOTEBOOKS"):  # keep the executed copy for a look
        keep = Path(os.environ["SKLEARN_AIS_KEEP_NOTEBOOKS"])
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
