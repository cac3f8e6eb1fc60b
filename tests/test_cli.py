"""Command line: user errors exit 2 with one line; run and demo write their outputs."""

import subprocess
import sys

import numpy as np
import pytest

from sklearn_ais.cli import load_similarity_arg, main


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
    images = np.random.default_rng(0).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "im.npy", images)
    np.save(tmp_path / "s5.npy", np.eye(5))
    assert main(["run", "--images", str(tmp_path / "im.npy"), "--similarity", str(tmp_path / "s5.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "must match" in capsys.readouterr().err
    A = np.random.default_rng(1).normal(size=(6, 6))
    np.save(tmp_path / "s6.npy", A + A.T)
    assert main(["run", "--images", str(tmp_path / "im.npy"), "--similarity", str(tmp_path / "s6.npy"),
                 "--backbone", "alexnet9", "--out", str(tmp_path / "o")]) == 2
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
