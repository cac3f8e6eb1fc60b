"""Command line: user errors exit 2 with one line; run and demo write their outputs."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sklearn_ais._files import read_matrix as load_similarity_arg
from sklearn_ais.cli import main


def test_missing_images_path_exits_2_with_one_line(tmp_path, capsys):
    sim = tmp_path / "s.npy"
    np.save(sim, np.eye(4))
    code = main(["run", "--images", str(tmp_path / "nope"), "--similarity", str(sim), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "no such file or folder" in err[0]


def test_console_script_bad_path_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sklearn_ais.cli", "run", "--images", "missing_dir", "--similarity", "x.npy"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_mismatched_sizes_and_unknown_backbone(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 255, size=(12, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "im.npy", images)
    np.save(tmp_path / "s5.npy", np.eye(5))
    assert main(["run", "--images", str(tmp_path / "im.npy"), "--similarity", str(tmp_path / "s5.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "must match" in capsys.readouterr().err
    A = np.random.default_rng(1).normal(size=(12, 12))
    np.save(tmp_path / "s6.npy", A + A.T)
    assert main(["run", "--images", str(tmp_path / "im.npy"), "--similarity", str(tmp_path / "s6.npy"),
                 "--backbone", "alexnet9", "--cv", "3", "--out", str(tmp_path / "o")]) == 2
    assert "unknown backbone" in capsys.readouterr().err


def test_similarity_file_formats(tmp_path):
    from scipy.io import savemat

    S = np.arange(16, dtype=float).reshape(4, 4)
    S = S + S.T
    np.savetxt(tmp_path / "s.csv", S, delimiter=",")
    np.testing.assert_array_equal(load_similarity_arg(str(tmp_path / "s.csv")), S)
    import pandas as pd

    pd.DataFrame(S, index=list("abcd"), columns=list("abcd")).to_csv(tmp_path / "h.csv")
    np.testing.assert_array_equal(load_similarity_arg(str(tmp_path / "h.csv")), S)
    savemat(tmp_path / "s.mat", {"RDM": S, "other": np.zeros(3)})
    np.testing.assert_array_equal(load_similarity_arg(str(tmp_path / "s.mat")), S)


def _images(tmp_path, names, size=48, seed=0):
    from PIL import Image

    from sklearn_ais.datasets import make_similarity_task

    task = make_similarity_task(n_images=len(names), image_size=size, random_state=seed)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, im in zip(names, task.images):
        path = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else folder / name
        Image.fromarray(im).save(path, format="PNG")
    return folder, task


def _run_args(folder, sim, out, *extra):
    return ["run", "--images", str(folder), "--similarity", str(sim), "--out", str(out), "--cv", "3",
            "--repeats", "1", "--device", "cpu", *extra]


def test_rdm_as_similarity_fails_before_extraction_in_cli_terms(tmp_path, capsys):
    folder, task = _images(tmp_path, [f"im{i}.png" for i in range(12)])
    D = task.similarity.max() - task.similarity  # an RDM: zero diagonal
    np.savetxt(tmp_path / "rdm.csv", D, delimiter=",")
    assert main(_run_args(folder, tmp_path / "rdm.csv", tmp_path / "out")) == 2
    captured = capsys.readouterr()
    assert "--kind dissimilarity" in captured.err and "y_kind" not in captured.err
    assert "[1/4]" not in captured.out and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda t: (t / "imgs" / "x.png").mkdir() or None, None),  # a folder named x.png is skipped
        (lambda t: (t / "out").mkdir() or (t / "out" / "old.txt").write_text("x"), "not empty.*--overwrite"),
        (lambda t: (t / "file").write_text("x"), "cannot write there"),
        (lambda t: (t / "sim.csv").write_text(
            "\n".join(",".join("0.5x" if (i, j) == (2, 3) else "0.1" for j in range(12)) for i in range(12))),
         "line 3, column 4: '0.5x' is not a number"),
    ],
    ids=["folder-named-png", "non-empty-out", "unwritable-out", "csv-typo"],
)
def test_run_validates_everything_before_extraction(tmp_path, capsys, setup, match):
    folder, task = _images(tmp_path, [f"im{i}.png" for i in range(12)])
    np.savetxt(tmp_path / "sim.csv", task.similarity, delimiter=",")
    setup(tmp_path)
    out = tmp_path / ("file/out" if "file" in [p.name for p in tmp_path.iterdir()] else "out")
    code = main(_run_args(folder, tmp_path / "sim.csv", out, "--backbone", "nonexistent"))
    captured = capsys.readouterr()
    assert code == 2 and "[1/4]" not in captured.out
    assert match is None and "unknown backbone" in captured.err or match and __import__("re").search(match, captured.err)


def test_out_inside_images_is_refused(tmp_path, capsys):
    folder, task = _images(tmp_path, [f"im{i}.png" for i in range(12)])
    np.save(tmp_path / "sim.npy", task.similarity)
    assert main(_run_args(folder, tmp_path / "sim.npy", folder)) == 2
    assert "inside) the input folder" in capsys.readouterr().err


def test_interrupted_run_leaves_the_old_output_alone(tmp_path, monkeypatch, capsys):
    from sklearn_ais import workflow

    folder, task = _images(tmp_path, [f"im{i}.png" for i in range(12)])
    np.save(tmp_path / "sim.npy", task.similarity)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("previous run")

    def crash(self, folder):
        (folder / "map_scores.csv").write_text("half")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(workflow.AnalysisResult, "_write", crash)
    code = main(_run_args(folder, tmp_path / "sim.npy", out, "--backbone", "regnet_y_400mf", "--weights", "none",
                          "--overwrite", "--quiet"))
    assert code == 2 and "simulated crash" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.html"] and (out / "report.html").read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "out", "sim.npy"]  # no partial folder left


def test_help_lists_defaults_backbones_order_and_outputs(capsys):
    from sklearn_ais.backbones import list_backbones

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for expected in ["natural order", "image_order.csv", "heatmaps.npz", "--no-crop", "default: similarity",
                     *list_backbones()]:
        assert expected in text, expected
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("sklearn-ais ")


@pytest.mark.slow
def test_run_with_awkward_file_names(tmp_path):
    """Natural order, $...$ and undecodable bytes in names, hidden files: the report is written, ids recorded."""
    names = [f"im{i}.png" for i in (1, 2, 10, 11)] + ["$x$_im12.png", b"im\xff13.png"] + [f"im{i}.png" for i in range(14, 20)]
    folder, task = _images(tmp_path, names)
    (folder / "._im1.png").write_bytes(b"resource fork")
    np.save(tmp_path / "sim.npy", task.similarity)
    code = main(_run_args(folder, tmp_path / "sim.npy", tmp_path / "out", "--backbone", "regnet_y_400mf",
                          "--weights", "none", "--quiet"))
    assert code == 0
    order = pd.read_csv(tmp_path / "out" / "image_order.csv")["id"].tolist()
    assert order == ["$x$_im12.png", "im1.png", "im2.png", "im10.png", "im11.png"] + [
        f"im{i}.png" for i in range(14, 20)] + ["im\ufffd13.png"]
    with np.load(tmp_path / "out" / "heatmaps.npz") as f:
        assert list(f["ids"]) == order and len([k for k in f if k.startswith("heatmap_")]) == 12
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "$x$_im12.png" in html and "im\ufffd13.png" in html


@pytest.mark.slow
def test_run_writes_report_and_tables(tmp_path):
    from PIL import Image

    from sklearn_ais.datasets import make_similarity_task

    task = make_similarity_task(n_images=16, image_size=64, random_state=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(task.images):
        Image.fromarray(im).save(folder / f"im{i:02d}.png")
    np.save(tmp_path / "sim.npy", task.similarity)
    code = main(["run", "--images", str(folder), "--similarity", str(tmp_path / "sim.npy"), "--backbone",
                 "regnet_y_400mf", "--weights", "none", "--cv", "4", "--repeats", "1", "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    for name in ("report.html", "map_scores.csv", "selection.npz", "cv_folds.csv", "cv_curve.png", "heatmap_grid.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
