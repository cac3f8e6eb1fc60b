"""compare_alignment: one image-wise CV, every method and backbone, tidy table, tests, plot."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_ais import AISSelector, DNNFeatureMapTransformer, FeatureMaps
from sklearn_ais._targets import check_similarity_target
from sklearn_ais.alignment import (
    FeatureReweighting,
    compare_alignment,
    plot_comparison,
    summarize_comparison,
)
from sklearn_ais.alignment._base import embedding_2oi
from sklearn_ais.backbones import PoolingHead, get_backbone, list_backbones
from sklearn_ais.datasets import make_similarity_task
from sklearn_ais.metrics import noise_ceiling


@pytest.fixture(scope="module")
def task():
    return make_similarity_task(n_images=20, image_size=64, random_state=0)


def _subjects(task, n_subjects=4, seed=0):
    rng = np.random.default_rng(seed)
    S = []
    for _ in range(n_subjects):
        E = rng.normal(size=task.similarity.shape)
        S.append(task.similarity + 0.5 * (E + E.T) / 2)
    return np.asarray(S)


def test_two_random_torchvision_architectures(task):
    names = ["regnet_y_400mf", "resnet50"]
    assert set(names) <= set(list_backbones())
    transformers = [
        DNNFeatureMapTransformer(get_backbone(name, weights=None, input_size=64, resize_size=64), random_state=0)
        for name in names
    ]
    subjects = _subjects(task)
    cv = KFold(3, shuffle=True, random_state=0)
    res = compare_alignment(transformers, task.images, task.similarity, cv=cv, subject_similarities=subjects)

    table = res.table
    assert list(table.columns) == [
        "backbone", "method", "fold", "n_train", "n_test", "test_2oi", "train_2oi", "n_kept", "fit_time"
    ]
    assert len(table) == 2 * 4 * 3
    assert set(table["method"]) == {"none", "ais", "reweighting", "glocal"}
    assert table["test_2oi"].between(-1, 1).all()
    assert table["n_test"].between(6, 7).all()

    # "none" is the 2OI of all maps on the test images, with the same folds for every method.
    fms = [t.transform(task.images) for t in transformers]
    H = check_similarity_target(task.similarity, 20)
    for label, fm in zip(table["backbone"].unique(), fms):
        for fold, (_, test) in enumerate(cv.split(np.zeros((20, 1)))):
            row = table[(table.backbone == label) & (table.method == "none") & (table.fold == fold)]
            ref = embedding_2oi(fm[test].embed(), H[np.ix_(test, test)])
            assert row["test_2oi"].item() == pytest.approx(ref)
            assert row["n_kept"].item() == fm.n_maps

    summary = res.summary
    assert len(summary) == 8
    others = summary[summary.method != "none"]
    assert others["p_value"].notna().all() and others["wilcoxon_p"].notna().all()
    assert summary[summary.method == "none"]["p_value"].isna().all()

    # Noise ceiling: bounds on each fold's test images, averaged.
    lows = [noise_ceiling(subjects[:, te][:, :, te])[0] for _, te in cv.split(np.zeros((20, 1)))]
    assert res.noise_ceiling[0] == pytest.approx(np.mean(lows))
    assert res.noise_ceiling[0] < res.noise_ceiling[1]

    md = res.to_markdown()
    assert md.count("\n") == 2 + 8 and "noise ceiling" in md
    assert "p (corrected t)" in md.splitlines()[0]  # the column names the test that produced it (the default)
    paired = dataclasses.replace(res, summary=summarize_comparison(res.table, test="paired_t"))
    assert "p (paired t)" in paired.to_markdown().splitlines()[0]
    ax = plot_comparison(res)
    assert len(ax.patches) >= 8
    table2, summary2 = res  # unpacks as (table, summary)
    assert table2 is table


class _Spy(BaseEstimator):
    """Records which images reach fit (by their first-map values)."""

    seen = []

    def fit(self, X, y):
        type(self).seen.append(X.maps[:, 0, 0, 0].copy())
        assert isinstance(y, pd.DataFrame) and y.shape == (len(X), len(X))
        return self

    def score(self, X, y):
        return 0.0


def test_no_test_image_reaches_fit():
    rng = np.random.default_rng(0)
    maps = rng.random((24, 4, 2, 2)).astype(np.float32)
    maps[:, 0, 0, 0] = np.arange(24)  # image ids
    H = np.corrcoef(maps.mean(axis=(2, 3)))
    _Spy.seen = []
    cv = KFold(3, shuffle=True, random_state=1)
    compare_alignment([("toy", FeatureMaps(maps, PoolingHead()))], None, H, methods={"spy": _Spy()}, cv=cv)
    assert len(_Spy.seen) == 3
    for seen, (train, test) in zip(_Spy.seen, cv.split(np.zeros((24, 1)))):
        np.testing.assert_array_equal(np.sort(seen), np.sort(train).astype(np.float32))


def test_custom_estimators_and_grid_search():
    rng = np.random.default_rng(0)
    maps = rng.random((24, 6, 2, 2)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    H = (E[:, :2] * [2, 1]) @ E[:, :2].T
    gs = GridSearchCV(FeatureReweighting(), {"alpha": [0.01, 1.0]}, cv=KFold(3, shuffle=True, random_state=0))
    res = compare_alignment(
        {"toy": FeatureMaps(maps, PoolingHead())}, None, -H, y_kind="dissimilarity",
        methods={"none": "none", "ais8": AISSelector(n_features_to_select=2), "rw-grid": gs},
        cv=KFold(3, shuffle=True, random_state=0),
    )
    assert set(res.table.method) == {"none", "ais8", "rw-grid"}
    assert (res.table[res.table.method == "ais8"]["n_kept"] == 2).all()
    assert res.noise_ceiling is None
    again = summarize_comparison(res.table)
    pd.testing.assert_frame_equal(again, res.summary)


def test_errors():
    fm = FeatureMaps(np.random.default_rng(0).random((10, 3, 2, 2)).astype(np.float32), PoolingHead())
    H = np.corrcoef(fm.embed())
    with pytest.raises(ValueError, match="unknown method"):
        compare_alignment([fm], None, H, methods=("none", "magic"))
    with pytest.raises(TypeError, match="backbone"):
        compare_alignment([42], None, H)
    with pytest.raises(ValueError, match="subject_similarities"):
        compare_alignment([fm], None, H, methods=("none",), subject_similarities=np.ones((2, 10)))


def test_dissimilarities_give_the_similarity_scores():
    """compare_alignment negates y_kind="dissimilarity" once: same table as the similarities."""
    rng = np.random.default_rng(1)
    maps = rng.random((24, 6, 2, 2)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    H = np.corrcoef(E[:, :3])
    kw = dict(methods={"none": "none", "ais": AISSelector(n_features_to_select=3)},
              cv=KFold(3, shuffle=True, random_state=0))
    want = compare_alignment({"toy": FeatureMaps(maps, PoolingHead())}, None, H, **kw).table
    got = compare_alignment({"toy": FeatureMaps(maps, PoolingHead())}, None, 1 - H, y_kind="dissimilarity", **kw).table
    assert (want["test_2oi"] > 0).all()
    cols = [c for c in want.columns if c != "fit_time"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
