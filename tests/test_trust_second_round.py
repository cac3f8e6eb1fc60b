"""Trust, second round: inputs that returned a confident wrong number, now honoured or refused at the root.

One section per class of the issue; each test failed on the code before the fix and checks the package
against an independent computation (scipy, a naive loop) where a number is involved.
"""

import importlib
import inspect
import pkgutil
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn

import sklearn_ais
from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer, FeatureMaps, metrics
from sklearn_ais._files import InputFileError, read_matrix
from sklearn_ais._stats import paired_test
from sklearn_ais.backbones import PoolingHead, get_backbone
from sklearn_ais.backbones._preprocess import as_image_source
from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment


def _upper(M):
    return M[np.triu_indices(len(M), 1)]


def _problem(n=16, K=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, K))
    A = rng.normal(size=(n, n))
    H = np.corrcoef(X[:, :3] + rng.normal(size=(n, 3))) + 0.2 * (A + A.T)
    np.fill_diagonal(H, np.nan)
    return X, H


# -- 1. near-constant targets under Pearson ------------------------------------------------------------
@pytest.mark.parametrize("transform", [lambda H: H + 1e6, lambda H: H * 1e-9, lambda H: 3e7 + 1e-3 * H])
def test_pearson_score_does_not_depend_on_an_offset_or_a_scale(transform):
    X, H = _problem()
    want = stats.pearsonr(_upper(np.corrcoef(X)), _upper(transform(H))).statistic  # scipy, on what is passed
    got = AISSelector(comparison="pearson").fit(X, transform(H)).baseline_score_
    assert got == pytest.approx(want, abs=1e-9)
    assert got == pytest.approx(stats.pearsonr(_upper(np.corrcoef(X)), _upper(H)).statistic, abs=1e-5)


@pytest.mark.parametrize("comparison", ["pearson", "spearman"])
@pytest.mark.parametrize("scale, offset", [(1e-14, 0.0), (1e8, 3e9), (1.0, 1e6)])
def test_metrics_model_side_does_not_depend_on_an_offset_or_a_scale(comparison, scale, offset):
    rng = np.random.default_rng(1)
    E = rng.normal(size=(15, 6))
    Z, H = np.corrcoef(E), np.corrcoef(E[:, :3] + rng.normal(size=(15, 3)))
    ref = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}[comparison]
    want = ref(_upper(Z), _upper(H)).statistic
    got = metrics.second_order_isomorphism(Z * scale + offset, H, comparison)
    assert got == pytest.approx(want, abs=1e-8)


def test_constant_rule_is_relative_to_the_values():
    from sklearn_ais._targets import target_is_constant

    v = np.array([0.1, 0.4, 0.3, 0.9])
    for offset in (0.0, 1e6, -1e9):
        assert not target_is_constant(v + offset)  # scipy gives a finite r for each
        assert np.isfinite(stats.pearsonr(v + offset, np.arange(4.0)).statistic)
    assert target_is_constant(np.full(5, 0.1) * 3 + 1e6)
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(metrics.second_order_isomorphism(np.ones((16, 16)), _problem()[1]))


# -- 2. undefined fold scores -------------------------------------------------------------------------
def _constant_block_problem():
    X, H = _problem(n=16)
    H[np.ix_(range(4), range(4))] = 0.25  # the first test block: constant human pairs
    np.fill_diagonal(H, np.nan)
    folds = [np.arange(4 * f, 4 * f + 4) for f in range(4)]
    return X, H, [(np.setdiff1d(np.arange(16), t), t) for t in folds]


class _Overriding(AISSelector):
    """Public fit/score path (a subclass that overrides fit)."""

    def fit(self, X, y):
        return super().fit(X, y)


@pytest.mark.parametrize("estimator", [AISSelector(), _Overriding()], ids=["fast path", "public fit/score"])
def test_undefined_fold_is_nan_named_and_left_out(estimator):
    X, H, splits = _constant_block_problem()
    with pytest.warns(UserWarning, match=r"1 of 4 folds \(fold 0\).*other 3 folds"):
        res = cross_validate_alignment(estimator, X, H, cv=splits)
    assert np.isnan(res.table.loc[0, "test_score_full"]) and np.isnan(res.table.loc[0, "test_score_selected"])
    # naive loop: the held-out 2OI of all maps is the 2OI of the test images' embeddings
    full = [stats.spearmanr(_upper(np.corrcoef(X[t])), _upper(H[np.ix_(t, t)])).statistic for _, t in splits[1:]]
    np.testing.assert_allclose(res.table["test_score_full"].to_numpy()[1:], full, atol=1e-12)
    assert res.summary["n_folds"] == 3
    assert res.summary["test_score_full"] == pytest.approx(np.mean(full), abs=1e-12)


def test_compare_alignment_gives_nan_for_an_undefined_fold():
    from sklearn_ais.alignment import compare_alignment

    X, H, splits = _constant_block_problem()
    with pytest.warns(UserWarning, match=r"fold 0"):
        table = compare_alignment({"a": X}, None, H, methods=["none", "ais"], cv=splits).table
    assert table.loc[table["fold"] == 0, "test_2oi"].isna().all()
    none = table[(table["method"] == "none") & (table["fold"] > 0)]["test_2oi"].to_numpy()
    want = [stats.spearmanr(_upper(np.corrcoef(X[t])), _upper(H[np.ix_(t, t)])).statistic for _, t in splits[1:]]
    np.testing.assert_allclose(none, want, atol=1e-12)


def test_all_folds_undefined_is_an_error_and_score_on_a_constant_y_is_nan():
    X, H, splits = _constant_block_problem()
    with pytest.raises(ValueError, match="every one of the 1 folds"):
        cross_validate_alignment(AISSelector(), X, H, cv=splits[:1])
    sel = AISSelector().fit(X, H)
    with pytest.warns(UserWarning, match="constant.*undefined"):
        assert np.isnan(sel.score(X[:4], H[:4, :4]))
    with pytest.raises(ValueError, match="training human pairs are constant"):
        cross_validate_alignment(AISSelector(), X, H, cv=[(np.arange(4), np.arange(4, 16))])


# -- 3. a NaN statistic gets no p-value ---------------------------------------------------------------
def test_undefined_observed_gain_has_no_p_value():
    X, H, splits = _constant_block_problem()
    with pytest.warns(UserWarning, match="no p-value"):
        res = permutation_test_alignment(AISSelector(), X, H, cv=splits[:1], n_permutations=9)
    assert np.isnan(res.observed) and np.isnan(res.p_value)


def test_undefined_permutations_are_left_out_of_the_p_value():
    from sklearn_ais.model_selection import _permutation_p

    null = np.array([np.nan] * 5 + [0.1, 0.6, 0.2, np.nan, 0.7])
    with pytest.warns(UserWarning, match="6 of 10 permutations"):
        p = _permutation_p(0.5, null)
    defined = null[~np.isnan(null)]
    assert p == (1 + np.sum(defined >= 0.5)) / (1 + len(defined))  # naive count over the defined ones


def test_paired_test_of_undefined_values_has_no_p_value():
    res = paired_test([np.inf, 0.5, 0.6], [0.1, 0.2, 0.3], comparison="kendall_tau_a", test="paired_t")
    assert np.isnan(res["p_value"])


# -- 4. counts from fractions and booleans ------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.07, 0.29, 0.57])
def test_fraction_of_maps_follows_scikit_learn(fraction):
    from sklearn.feature_selection import RFE
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 100))
    H = np.corrcoef(X[:, :5])
    got = AISSelector(n_features_to_select=fraction).fit(X, H).n_features_to_select_
    rfe = RFE(LinearRegression(), n_features_to_select=fraction, step=50).fit(X[:, :100], rng.normal(size=12))
    assert got == int(fraction * 100) == rfe.n_features_


def _estimator_classes():
    for info in pkgutil.walk_packages(sklearn_ais.__path__, "sklearn_ais."):
        if info.name.endswith(("cli", "__main__")):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and "_parameter_constraints" in vars(cls):
                yield cls


def test_no_count_or_number_parameter_accepts_a_boolean():
    from sklearn.utils._param_validation import make_constraint

    checked = 0
    for cls in _estimator_classes():
        for name, constraints in cls._parameter_constraints.items():
            if any(c == "boolean" or c is bool for c in constraints):
                continue
            made = [make_constraint(c) for c in constraints]
            if not any(type(c).__name__ == "Interval" for c in made):
                continue
            checked += 1
            assert not any(c.is_satisfied_by(True) for c in made), f"{cls.__name__}.{name} accepts True"
    assert checked >= 10
    X, H = _problem()
    for bad in (True, np.True_):
        with pytest.raises(ValueError, match="not a boolean"):
            AISSelector(n_features_to_select=bad).fit(X, H)
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_test_alignment(AISSelector(), X, H, cv=3, n_permutations=True)


def test_hand_checked_counts_refuse_booleans():
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.model_selection import RepeatedPairKFold
    from sklearn_ais.workflow import run_analysis

    X, H = _problem()
    with pytest.raises(ValueError, match="n_bootstrap"):
        compare_alignment({"a": X}, None, H, methods=["none"], cv=3, inference="bootstrap", n_bootstrap=True)
    with pytest.raises(ValueError, match="n_repeats"):
        cross_validate_alignment(AISSelector(), X, H, cv=RepeatedPairKFold(3, n_repeats=True))
    images = np.zeros((16, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="n_repeats must be an integer >= 1"):
        run_analysis(images, np.nan_to_num(H, nan=1.0), n_repeats=True)  # before any network is built


# -- 5. the feature cache -------------------------------------------------------------------------------
_HELPER_SRC = """
import torch
from torch import nn
GAIN = {gain}
def helper(x):
    return torch.relu(x) * GAIN
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
    def forward(self, x):
        return helper(self.conv(x))
"""


def test_feature_cache_sees_module_constants_and_in_place_weight_edits(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "trust_helpers.py").write_text(_HELPER_SRC.format(gain=2.0))
    sys.modules.pop("trust_helpers", None)
    module = importlib.import_module("trust_helpers")
    torch.manual_seed(0)
    images = np.random.default_rng(0).random((2, 20, 20, 3)).astype(np.float32)
    t = DNNFeatureMapTransformer(get_backbone(nn.Sequential(module.Net()), layer="0", input_size=16, resize_size=16),
                                 memory=tmp_path / "cache", device="cpu").fit(images)

    def uncached():  # the independent computation: the same model, no cache
        return t.set_params(memory=None).transform(images).maps

    t.transform(images)
    module.GAIN = 3.0  # a module-level constant that forward reaches
    got = t.set_params(memory=tmp_path / "cache").transform(images).maps
    np.testing.assert_array_equal(got, uncached())
    t.backbone_.model[0].conv.weight.data.mul_(-1)  # .data: no version counter moves
    got = t.set_params(memory=tmp_path / "cache").transform(images).maps
    np.testing.assert_array_equal(got, uncached())


def test_feature_cache_warns_once_where_its_key_cannot_follow(tmp_path):
    from sklearn_ais import _feature_cache

    class Opaque:  # an object forward calls, outside the model's tensors
        def __call__(self, x):
            return x

    opaque = Opaque()

    class Wrapped(nn.Module):
        def forward(self, x):
            return opaque(x)

    with pytest.warns(UserWarning, match="cannot follow"):
        _feature_cache.structure(nn.Sequential(Wrapped()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _feature_cache.structure(nn.Sequential(Wrapped()))  # once


# -- 7. locale in numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, where", [
    ('a,b,c\n"1,500",800,3\n2,4,5\n', r"line 2, column 1: '1,500' can be read two ways"),
    ('"0,5",0.8,1\n1,2,3\n4,5,6\n', r"line 1, column 1: '0,5' has a decimal comma but line 1, column 2"),
])
def test_cells_that_read_two_ways_are_refused(tmp_path, text, where):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(InputFileError, match=where):
        read_matrix(p)


def test_unambiguous_decimal_comma_is_still_read(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("0,5;0,25\n0,3;1,500\n")
    np.testing.assert_array_equal(read_matrix(p), [[0.5, 0.25], [0.3, 1.5]])


# -- 8 and 9. metrics and the diagonal convention ------------------------------------------------------
def test_metrics_read_the_human_matrix_through_the_input_contract():
    rng = np.random.default_rng(2)
    E = rng.normal(size=(10, 5))
    H = np.corrcoef(E[:, :3] + rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="dissimilarity"):
        metrics.second_order_isomorphism(np.corrcoef(E), 1 - H)
    with pytest.raises(ValueError, match="dissimilarity"):
        metrics.alignment_score(E, 1 - H)
    with pytest.raises(ValueError, match="dissimilarity"):
        metrics.second_order_isomorphism(1 - np.corrcoef(E), H)  # the model side must be a similarity
    with pytest.raises(ValueError, match="dissimilarity"):
        metrics.split_half_ceiling(H, 1 - H)
    got = metrics.alignment_score(E, 1 - H, y_kind="dissimilarity")
    assert got == pytest.approx(stats.spearmanr(_upper(np.corrcoef(E)), _upper(H)).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="mix similarities"):
        metrics.noise_ceiling([H, H, 1 - H])


def test_zero_diagonal_with_negative_entries_is_a_dissimilarity():
    X, H = _problem()
    D = -H  # an unbiased distance estimate: negative entries, exactly zero diagonal
    np.fill_diagonal(D, 0.0)
    assert (D < 0).any() and not (np.diag(D) <= np.nanmin(np.where(np.eye(16, dtype=bool), np.nan, D), 1)).all()
    with pytest.raises(ValueError, match='y_kind="dissimilarity"'):
        AISSelector().fit(X, D)
    got = AISSelector(y_kind="dissimilarity").fit(X, D).baseline_score_
    assert got == pytest.approx(stats.spearmanr(_upper(np.corrcoef(X)), _upper(H)).statistic, abs=1e-12)
    S = H.copy()
    np.fill_diagonal(S, np.nan)  # the escape: a similarity without self-pairs
    assert AISSelector().fit(X, S).baseline_score_ == pytest.approx(got, abs=1e-12)


# -- 10. a heatmapper given another network's maps ----------------------------------------------------
def test_heatmapper_matches_by_id_and_content():
    rng = np.random.default_rng(3)
    maps_a = rng.random((12, 6, 4, 4)).astype(np.float32)
    maps_b = rng.random((12, 6, 4, 4)).astype(np.float32)  # network B: same files, same number of maps
    ids = np.array([f"im{i}" for i in range(12)])
    H = np.corrcoef(maps_a.mean(axis=(2, 3))[:, :3]) + 0.3 * (lambda A: A + A.T)(rng.normal(size=(12, 12)))
    hm = AISHeatmapper(device="cpu", output="maps").fit(FeatureMaps(maps_a, PoolingHead(), ids=ids), H)
    with pytest.warns(UserWarning, match="carry a training image's id but not its maps"):
        w = hm.image_weights(FeatureMaps(maps_b, PoolingHead(), ids=ids))
    glob = np.maximum(hm.scores_, 0) / np.maximum(hm.scores_, 0).sum()  # the global scores, by hand
    np.testing.assert_allclose(w, np.tile(glob, (12, 1)))
    own = hm.image_weights(FeatureMaps(maps_a, PoolingHead(), ids=ids))
    np.testing.assert_allclose(own[3], np.maximum(hm.image_scores_[3], 0) / np.maximum(hm.image_scores_[3], 0).sum())
    labelled = FeatureMaps(maps_a, PoolingHead(), ids=ids, backbone="A")
    fitted = AISHeatmapper(device="cpu", output="maps").fit(labelled, H)
    with pytest.raises(ValueError, match="backbone 'A' but X holds maps of backbone 'B'"):
        fitted.image_weights(FeatureMaps(maps_a, PoolingHead(), ids=ids, backbone="B"))


# -- also found: EXIF, pixel range, folds, lost work, the CLI pre-check --------------------------------
def _rotated_jpeg(path):
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:5, :10] = 255  # a bright corner shows the orientation
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_by_every_reader(tmp_path):
    from sklearn_ais.plotting import _as_image

    p = _rotated_jpeg(tmp_path / "r.jpg")
    viewer = np.asarray(Image.open(p).transpose(Image.Transpose.ROTATE_270).convert("RGB"))  # by hand
    assert viewer.shape == (30, 20, 3)
    np.testing.assert_array_equal(np.asarray(as_image_source([str(p)])[0]), viewer)
    np.testing.assert_array_equal(np.asarray(as_image_source([Image.open(p)])[0]), viewer)
    np.testing.assert_array_equal(_as_image(Image.open(p)), viewer)  # plot_overlay's reader
    from sklearn_ais._removal import _check_image

    np.testing.assert_array_equal(_check_image(Image.open(p)), viewer)  # the deletion tests' pixel removal


def test_pixel_range_does_not_depend_on_the_container():
    a = np.random.default_rng(0).integers(0, 256, (12, 14)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(as_image_source([Image.fromarray(a)])[0]),
                                  np.asarray(as_image_source([a])[0]))
    with pytest.raises(ValueError, match="0..255"):
        as_image_source([Image.fromarray(a * 200)])


@pytest.mark.parametrize("cv, match", [
    ([(np.arange(16), np.arange(8))], "also in its training set"),
    ([(np.arange(16), np.array([], dtype=int))], "has no test images"),
    ([(np.arange(40, 100), np.arange(100, 120))], "entry-wise \\(pair\\) splits"),
])
def test_user_folds_are_checked(cv, match):
    X, H = _problem()
    with pytest.raises(ValueError, match=match):
        cross_validate_alignment(AISSelector(), X, H, cv=cv)


def test_finished_results_are_kept_when_the_output_folder_refuses_them(tmp_path):
    from sklearn_ais.workflow import AnalysisResult, ResultsKeptError

    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("written by another process during the run")
    done = types.SimpleNamespace(_write=lambda folder: (folder / "report.html").write_text("finished"))
    with pytest.raises(ResultsKeptError, match="kept in") as info:
        AnalysisResult.save(done, out)
    assert (info.value.path / "report.html").read_text() == "finished"
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]


def test_cli_precheck_decodes_every_image(tmp_path):
    from sklearn_ais.cli import _check_readable

    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated: the header is intact
    assert Image.open(bad).size == (64, 64)
    _check_readable([str(good)])
    with pytest.raises(InputFileError, match="bad.jpg: not a readable image"):
        _check_readable([str(good), str(bad)])
