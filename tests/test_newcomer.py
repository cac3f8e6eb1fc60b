"""A newcomer's path: a folder of images in Python, labelled matrix files, progress bars, small folds, heatmaps."""

import argparse
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sklearn_ais._files import InputFileError, match_labels, read_labelled_matrix

NATURAL = ["im1.png", "im2.png", "im3.png", "im10.png", "im11.png", "im20.png", "Im21.png", "im100.png"]


def _tiny_backbone():
    import torch
    from torch import nn

    from sklearn_ais.backbones import get_backbone

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()))
    return get_backbone(net, layer="features", input_size=16, resize_size=16)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "stim"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ["im10.png", "im2.png", "im100.png", "im20.png", "im1.png", "Im21.png", "im11.png", "im3.png"]:
        Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(d / name)
    (d / "._im4.png").write_bytes(b"resource fork")  # macOS metadata: skipped
    (d / ".hidden.png").write_bytes(b"")
    (d / "sub.png").mkdir()  # a folder with an image suffix: skipped
    return d


# --- item 1: a folder in Python ------------------------------------------------------------------------------------
def test_transform_of_a_folder_reads_natural_order_with_names_and_says_so(folder, capsys):
    from sklearn_ais import DNNFeatureMapTransformer

    t = DNNFeatureMapTransformer(_tiny_backbone(), device="cpu").fit(None)
    fm = t.transform(str(folder))
    assert list(fm.ids) == NATURAL
    err = capsys.readouterr().err
    assert "natural order" in err and "im1.png, im2.png, im3.png" in err
    ref = t.transform([str(folder / n) for n in NATURAL])  # the explicit list in the order written out by hand
    np.testing.assert_array_equal(fm.maps, ref.maps)
    t.set_params(verbose=0).transform(folder)
    assert capsys.readouterr().err == ""  # verbose=0 is silent


def test_a_folder_inside_a_list_points_to_the_folder_reader_not_to_a_glob(folder):
    from sklearn_ais.backbones._preprocess import as_image_source

    with pytest.raises(ValueError, match="natural order") as info:
        as_image_source([folder])
    assert "glob('" not in str(info.value)
    with pytest.raises(ValueError, match="no image files"):
        as_image_source(folder / "sub.png")


def test_load_image_folder_aligns_a_lexicographic_labelled_csv(folder):
    from sklearn_ais.datasets import load_image_folder

    rng = np.random.default_rng(1)
    A = rng.normal(size=(8, 8))
    S = A + A.T  # natural order
    lexical = sorted(NATURAL)  # Im21, im1, im10, im100, ...: what a sorted glob gives
    pos = [NATURAL.index(n) for n in lexical]
    stems = [n[:-4] for n in lexical]
    pd.DataFrame(S[np.ix_(pos, pos)], index=stems, columns=stems).to_csv(folder.parent / "lexical.csv")
    data = load_image_folder(folder, similarity=folder.parent / "lexical.csv")
    assert data.ids == NATURAL and [p.rsplit("/", 1)[-1] for p in data.images] == NATURAL
    np.testing.assert_array_equal(data.similarity, S)
    assert "labels" in data.order
    np.save(folder.parent / "plain.npy", S)  # no labels: by position
    np.testing.assert_array_equal(load_image_folder(folder, similarity=folder.parent / "plain.npy").similarity, S)
    assert load_image_folder(folder).similarity is None


# --- issue 23, class 6: labels in a matrix file --------------------------------------------------------------------
def _write(path, frame, **kw):
    frame.to_csv(path, **kw)
    return path


@pytest.mark.parametrize("layout", ["header+index", "header only", "index only", "tab, full names"])
def test_labelled_matrix_files_are_matched_by_name(tmp_path, layout):
    rng = np.random.default_rng(2)
    A = rng.normal(size=(4, 4))
    S = np.round(A + A.T, 6)
    names = ["a1.jpg", "a2.jpg", "a10.jpg", "b.jpg"]
    order = [2, 0, 3, 1]
    labels = [names[i][:-4] for i in order] if layout != "tab, full names" else [names[i] for i in order]
    F = pd.DataFrame(S[np.ix_(order, order)], index=labels, columns=labels)
    path = tmp_path / ("m.tsv" if layout.startswith("tab") else "m.csv")
    if layout == "header only":
        _write(path, F, index=False)
    elif layout == "index only":
        _write(path, F, header=False)
    else:
        _write(path, F, sep="\t" if layout.startswith("tab") else ",")
    M, got = read_labelled_matrix(path)
    assert got == labels
    idx = match_labels(got, names)
    np.testing.assert_allclose(M[np.ix_(idx, idx)], S)  # reference: the matrix before it was shuffled


def test_label_errors_name_the_label(tmp_path):
    with pytest.raises(InputFileError, match=r"no row in it, e\.g\. \['c\.png'\]"):
        match_labels(["a", "b", "x"], ["a.png", "b.png", "c.png"])
    with pytest.raises(InputFileError, match=r"name no image, e\.g\. \['x'\]"):
        match_labels(["a", "b", "x"], ["a.png", "b.png", "c.png"])
    with pytest.raises(InputFileError, match="'a' appears more than once"):
        match_labels(["a", "a", "b"], ["a.png", "b.png", "c.png"])
    bad = tmp_path / "bad.csv"
    bad.write_text(",a,b,c\nb,1,0.5,0.2\na,0.5,1,0.3\nc,0.2,0.3,1\n")
    with pytest.raises(InputFileError, match="header row and the index column disagree.*row 1 is labelled 'b'"):
        read_labelled_matrix(bad)
    positions = tmp_path / "pos.csv"
    pd.DataFrame(np.eye(3)).to_csv(positions)  # pandas' default 0..n-1 labels are positions, not names
    assert read_labelled_matrix(positions)[1] is None


def test_cli_pairs_a_labelled_csv_by_name(folder, tmp_path):
    from sklearn_ais import cli

    rng = np.random.default_rng(3)
    A = rng.random((8, 8))
    S = (A + A.T) / 2
    np.fill_diagonal(S, np.nan)
    lexical = sorted(NATURAL)
    pos = [NATURAL.index(n) for n in lexical]
    pd.DataFrame(S[np.ix_(pos, pos)], index=lexical, columns=lexical).to_csv(tmp_path / "s.csv")
    args = argparse.Namespace(images=str(folder), similarity=str(tmp_path / "s.csv"), similarity_key=None,
                              out=str(tmp_path / "out"), overwrite=False, kind="similarity", cv=2, repeats=1,
                              backbone="regnet_y_400mf", weights="none")
    images, ids, got, _ = cli._validate_run(args)
    assert ids == NATURAL
    np.testing.assert_array_equal(got, S)


# --- item 3: progress on long calls ---------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _small_problem(n=16, k=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, k))
    A = rng.normal(size=(n, n))
    return X, (A + A.T) / 2


@pytest.mark.parametrize("call", ["cross_validate_alignment", "permutation_test_alignment", "compare_alignment",
                                  "transform"])
def test_long_calls_show_one_bar_on_a_terminal_by_default_and_none_at_verbose_0(monkeypatch, call):
    import sys

    from sklearn.model_selection import KFold

    from sklearn_ais import AISSelector, DNNFeatureMapTransformer, _parallel
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment

    X, H = _small_problem()
    cv = KFold(2, shuffle=True, random_state=0)
    runs = {
        "cross_validate_alignment": lambda **kw: cross_validate_alignment(AISSelector(), X, H, cv=cv, **kw),
        "permutation_test_alignment": lambda **kw: permutation_test_alignment(AISSelector(), X, H, cv=cv,
                                                                              n_permutations=3, **kw),
        "compare_alignment": lambda **kw: compare_alignment([("x", X)], None, H, methods=("none", "ais"), cv=cv, **kw),
        "transform": lambda **kw: DNNFeatureMapTransformer(_tiny_backbone(), device="cpu", batch_size=4,
                                                           **kw).fit(None).transform(np.zeros((8, 16, 16), np.uint8)),
    }
    for delay, kw, shown in [(0.0, {}, True), (0.0, {"verbose": 0}, False), (60.0, {}, False)]:
        monkeypatch.setattr(_parallel, "PROGRESS_DELAY", delay)  # a call shorter than the delay prints nothing
        term = _Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        runs[call](**kw)
        out = term.getvalue()
        bars = {line.split(":")[0] for line in out.replace("\r", "\n").splitlines() if "|" in line}
        assert (len(bars) == 1) == shown and (len(bars) <= 1), (call, kw, out)
    piped = io.StringIO()  # not a terminal (a log, CI): the default bar switches itself off
    monkeypatch.setattr(_parallel, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(sys, "stderr", piped)
    runs[call]()
    assert "|" not in piped.getvalue()


# --- item 4: small held-out folds -----------------------------------------------------------------------------------
def test_small_held_out_folds_warn_with_the_consequence_and_the_remedy():
    import warnings

    from sklearn.model_selection import KFold

    from sklearn_ais import AISSelector
    from sklearn_ais._pairs import SmallFoldWarning
    from sklearn_ais.model_selection import RepeatedPairKFold, cross_validate_alignment

    X, H = _small_problem(n=20)
    with pytest.warns(SmallFoldWarning) as record:
        cross_validate_alignment(AISSelector(), X, H, cv=KFold(5), verbose=0)
    msg = str(record[0].message)
    assert "5 of 5 held-out folds" in msg and "smallest: 6" in msg  # 4 test images: 4 * 3 / 2 = 6 pairs
    assert "noisy" in msg and "fewer folds" in msg and "RepeatedPairKFold" in msg and "repeats" in msg
    H[0, 1] = H[1, 0] = np.nan  # an unjudged pair is not counted: fold 0's test block (images 0-3) has 5
    with pytest.warns(SmallFoldWarning, match="smallest: 5"):
        cross_validate_alignment(AISSelector(), X, H, cv=KFold(5), verbose=0)
    X, H = _small_problem(n=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallFoldWarning)
        cross_validate_alignment(AISSelector(), X, H, cv=KFold(2), verbose=0)  # 12 images: 66 pairs
    X, H = _small_problem(n=12)  # 66 pairs in 5 entry-wise folds: 13 or 14 each
    with pytest.warns(SmallFoldWarning, match="smallest: 13"):
        cross_validate_alignment(AISSelector(), X, H, cv=RepeatedPairKFold(5, n_repeats=1), verbose=0)


def test_small_folds_are_said_in_the_report():
    from sklearn_ais import DNNFeatureMapTransformer
    from sklearn_ais._pairs import SmallFoldWarning
    from sklearn_ais.workflow import run_analysis

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    _, H = _small_problem(n=20)
    with pytest.warns(SmallFoldWarning):
        result = run_analysis(images, H, n_splits=5, n_repeats=1, device="cpu", verbose=0,
                              transformer=DNNFeatureMapTransformer(_tiny_backbone(), device="cpu", verbose=0))
    assert any("fewer than 30 observed human pairs" in line for line in result.summary_lines)
    assert "fewer than 30 observed human pairs" in result.to_html()
