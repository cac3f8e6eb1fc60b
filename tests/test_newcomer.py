"""A newcomer's path: a folder of images in Python, labelled matrix files, progress bars, small folds, heatmaps."""

import argparse
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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
    from sklearn_ais._files import match_labels, read_labelled_matrix

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
    from sklearn_ais._files import InputFileError, match_labels, read_labelled_matrix

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


def test_report_says_small_folds_stores_nan_outside_the_crop_and_prints_short(tmp_path):
    from sklearn_ais import DNNFeatureMapTransformer
    from sklearn_ais._pairs import SmallFoldWarning
    from sklearn_ais.workflow import run_analysis

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 24, 3), dtype=np.uint8)  # wider than tall: the 16 x 16 crop drops 4 + 4
    masks = np.zeros((20, 16, 24), bool)
    masks[:, 4:12, 8:16] = True
    _, H = _small_problem(n=20)
    with pytest.warns(SmallFoldWarning):
        result = run_analysis(images, H, n_splits=5, n_repeats=1, device="cpu", verbose=0, masks=masks,
                              transformer=DNNFeatureMapTransformer(_tiny_backbone(), device="cpu", verbose=0))
    assert any("fewer than 30 observed human pairs" in line for line in result.summary_lines)
    rr_line = next(line for line in result.summary_lines if "relative risk" in line)
    assert "interquartile range" in rr_line and "bootstrap interval" in rr_line
    text = repr(result)
    assert len(text) < 1000 and "20 images" in text and "held-out 2OI" in text  # not the thumbnails' arrays
    report = result.save(tmp_path / "out")
    assert "fewer than 30 observed human pairs" in report.read_text(encoding="utf-8")
    with np.load(tmp_path / "out" / "heatmaps.npz") as f:
        h = f["heatmap_0"]
    assert h.shape == (16, 24)
    assert np.isnan(h[:, :4]).all() and np.isnan(h[:, 20:]).all()  # never seen by the network: NaN, not 0
    assert np.isfinite(h[:, 4:20]).all() and np.nanmin(h) == 0 and np.nanmax(h) == 1


# --- item 5: heatmaps as data ---------------------------------------------------------------------------------------
def test_heatmaps_are_nan_outside_the_crop():
    from sklearn_ais import AISHeatmapper, DNNFeatureMapTransformer

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(6)] + [
        rng.integers(0, 256, (32, 16, 3), dtype=np.uint8) for _ in range(2)]  # resized to 16 x 32: rows 8 + 8 dropped
    fm = DNNFeatureMapTransformer(_tiny_backbone(), device="cpu", verbose=0).fit(None).transform(images)
    _, H = _small_problem(n=8)
    heat = AISHeatmapper().fit(fm, H).transform(fm)
    for i in range(6):
        assert np.isnan(heat[i][:, :4]).all() and np.isnan(heat[i][:, 20:]).all() and np.isfinite(heat[i][:, 4:20]).all()
    for i in (6, 7):
        assert np.isnan(heat[i][:8]).all() and np.isnan(heat[i][24:]).all() and np.isfinite(heat[i][8:24]).all()
    inner = AISHeatmapper(output="input").fit(fm, H).transform(fm)  # the network input: every pixel seen
    assert np.isfinite(inner).all()


def test_metrics_leave_unseen_pixels_out():
    from scipy import stats

    from sklearn_ais.metrics import feature_alignment_score, heatmap_match, precision_recall, relative_risk, top_mask

    rng = np.random.default_rng(2)
    a, b = rng.random((3, 12, 16)), rng.random((3, 12, 16))
    a_nan = a.copy()
    a_nan[:, :, :3] = np.nan  # unseen border
    inner_a, inner_b = a[:, :, 3:], b[:, :, 3:]  # the reference: the seen pixels alone
    np.testing.assert_allclose(relative_risk(a_nan, b, top=(5, 10)), relative_risk(inner_a, inner_b, top=(5, 10)))
    np.testing.assert_allclose(precision_recall(a_nan, b, percentiles=[5, 50]),
                               precision_recall(inner_a, inner_b, percentiles=[5, 50]))
    np.testing.assert_allclose(heatmap_match(a_nan, b), [stats.pearsonr(x.ravel(), y.ravel())[0]
                                                         for x, y in zip(inner_a, inner_b)])
    mask = top_mask(a_nan, 10)
    assert not mask[:, :, :3].any() and (mask[:, :, 3:] == top_mask(inner_a, 10)).all()
    ref = np.mean([stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(inner_a, inner_b)])
    assert np.isclose(feature_alignment_score(b, a_nan), ref)


def test_unseen_pixels_are_drawn_hatched_a_heatmap_alone_panel_and_a_colour_bar_that_fits():
    import matplotlib

    matplotlib.use("Agg")
    from sklearn_ais.plotting import UNSEEN_LABEL, plot_heatmap, plot_heatmap_grid, plot_overlay

    rng = np.random.default_rng(3)
    images = rng.random((6, 20, 30, 3))
    heat = rng.random((6, 20, 30))
    heat[:, :, :4] = np.nan
    ax = plot_overlay(images[0], heat[0])
    assert [c for c in ax.collections if getattr(c, "hatches", None) and c.hatches[0]]  # the unseen border, hatched
    ax = plot_heatmap(heat[0])
    assert len(ax.images) == 2  # the heatmap alone and the grey layer of the unseen pixels
    fig = plot_heatmap_grid(images, heat, ncols=6, panels="both")
    assert len(fig.axes) == 13 and fig.legends and fig.legends[0].get_texts()[0].get_text() == UNSEEN_LABEL
    fig = plot_heatmap_grid(images, heat, ncols=6)  # one row of panels: a short figure
    fig.canvas.draw()
    label = fig.axes[-1].yaxis.label.get_window_extent()
    assert fig.bbox.y0 <= label.y0 and label.y1 <= fig.bbox.y1  # the colour bar's label stays on the figure
