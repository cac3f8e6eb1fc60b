"""Deletion and insertion tests: bitwise-unchanged at 0 %, the naive row 2OI, and the planted synthetic task."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn_ais.datasets import make_similarity_task
from sklearn_ais.evaluation import deletion_curves, deletion_test

from .conftest import planted_colour_transformer


@pytest.fixture(scope="module")
def planted():
    task = make_similarity_task(n_images=24, image_size=48, random_state=0, shape_weight=0.3, noise=0.05)
    return planted_colour_transformer(), task


def test_zero_removal_leaves_maps_bitwise_unchanged(planted):
    tr, task = planted
    heat = {"random": np.random.default_rng(0).random((6, 48, 48))}
    curves = deletion_curves(tr, task.images[:6], heat, task.similarity[:6, :6], fractions=[0.0, 0.2],
                             objective=("alignment", "logits"))
    fm = tr.transform(task.images[:6])
    # The re-extracted path at 0 %: the intact embeddings and logits, exactly.
    Z = fm.embed()
    for t in range(6):
        others = np.delete(np.arange(6), t)
        model = [np.corrcoef(Z[t], Z[j])[0, 1] for j in others]
        expected = spearmanr(model, task.similarity[t, others]).statistic
        np.testing.assert_allclose(curves.alignment["random"][t, 0], expected, atol=1e-9)
    with torch.inference_mode():
        x = torch.from_numpy(tr.backbone_.preprocessing.batch(
            [__import__("PIL.Image").Image.fromarray(im) for im in task.images[:6]])[0])
        logits = tr.backbone_.model(x).double().numpy()
    np.testing.assert_allclose(curves.logits["random"][:, 0], logits[np.arange(6), logits.argmax(1)], atol=1e-6)
    # Removal by the heatmap changes the images; the maps of a 0 % image come out bitwise equal.
    from sklearn_ais.evaluation import remove_pixels

    same = np.stack([np.round(remove_pixels(im / 255.0, np.zeros((48, 48), bool)) * 255).astype(np.uint8)
                     for im in task.images[:6]])
    assert np.array_equal(tr.transform(same).maps, fm.maps)


def test_row_scores_match_a_naive_reextraction(planted):
    """Step 0.5 of the curve equals the row 2OI of images perturbed by hand and run through transform."""
    tr, task = planted
    from sklearn_ais.evaluation import removal_order

    heat = np.random.default_rng(1).random((5, 48, 48))
    curves = deletion_curves(tr, task.images[:5], {"h": heat}, task.similarity[:5, :5], fractions=[0.0, 0.5],
                             removal="constant", objective="alignment", region=None, random_state=3)
    Z0 = tr.transform(task.images[:5]).embed()
    for t in range(5):
        order = removal_order(heat[t], random_state=0)  # no ties in random maps: the order is the sort
        mask = np.zeros(48 * 48, bool)
        mask[order[:48 * 24]] = True
        img = task.images[t].copy()
        img[mask.reshape(48, 48)] = 128  # fill 0.5 -> 127.5 -> 128
        z = tr.transform(img[None]).embed()[0]
        others = np.delete(np.arange(5), t)
        model = [np.corrcoef(z, Z0[j])[0, 1] for j in others]
        expected = spearmanr(model, task.similarity[t, others]).statistic
        np.testing.assert_allclose(curves.alignment["h"][t, 1], expected, atol=1e-9)


def test_planted_task_ais_deletion_beats_random_and_inverted(planted):
    """Acceptance: deleting AIS's top pixels lowers held-out 2OI faster than equal-area random maps and the
    inverted map (the observer judges only the objects), paired over images with p < 0.01."""
    tr, task = planted
    curves, table = deletion_test(tr, task.images, task.similarity, cv=4, fractions=np.linspace(0, 0.5, 6),
                                  objective=("alignment", "logits"), test="wilcoxon")
    for control in ("random", "inverted"):
        assert table.loc[control, "difference"] > 0.05, table
        assert table.loc[control, "p_value"] < 0.01, table
    assert (curves.auc().notna().all()).all()
    # The planted truth: AIS heatmaps put their top pixels on the object.
    from sklearn_ais.metrics import relative_risk

    assert np.mean(relative_risk(_ais_maps(tr, task), task.masks, top=10)) > 2
    # The permutation test agrees; the logit objective is tabled for every source.
    perm = curves.compare("ais", test="permutation")
    assert perm.loc["random", "p_value"] < 0.01
    assert set(curves.compare("ais", objective="logits").index) == {"ais", "inverted", "random", "center_bias"}


def _ais_maps(tr, task):
    from sklearn_ais import AISHeatmapper

    return AISHeatmapper().fit_transform(tr.transform(task.images), task.similarity)


def test_insertion_and_bad_input(planted):
    tr, task = planted
    heat = np.random.default_rng(2).random((4, 48, 48))
    curves = deletion_curves(tr, task.images[:4], heat, task.similarity[:4, :4], mode="insertion",
                             fractions=[0.0, 1.0], objective="alignment", removal="blur")
    full = deletion_curves(tr, task.images[:4], heat, task.similarity[:4, :4], fractions=[0.0, 1.0],
                           objective="alignment", removal="blur")
    # Revealing 100 % is the intact image; deleting 0 % likewise.
    np.testing.assert_array_equal(curves.alignment["heatmap"][:, 1], full.alignment["heatmap"][:, 0])
    with pytest.raises(ValueError, match="fractions"):
        deletion_curves(tr, task.images[:4], heat, task.similarity[:4, :4], fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="shape"):
        deletion_curves(tr, task.images[:4], heat[:, :10], task.similarity[:4, :4])
    with pytest.raises(ValueError, match="needs y"):
        deletion_curves(tr, task.images[:4], heat, objective="alignment")
    with pytest.raises(ValueError, match="images_tested"):
        deletion_curves(tr, task.images[:4], heat, task.similarity[:4, :4], images_tested=[0.5, 1.0])
    with pytest.raises(TypeError, match="boolean"):
        deletion_curves(tr, task.images[:4], heat, task.similarity[:4, :4], region=list(np.ones((4, 48, 48))))
    with pytest.raises(ValueError, match="unknown methods"):
        deletion_test(tr, task.images[:4], task.similarity[:4, :4], methods=("ais", "saliency"))


def test_dissimilarities_give_the_same_test(planted):
    tr, task = planted
    kw = dict(methods=("ais", "random"), cv=3, fractions=[0.0, 0.3], objective="alignment")
    images, S = task.images[:12], task.similarity[:12, :12]
    _, a = deletion_test(tr, images, S, **kw)
    _, b = deletion_test(tr, images, S.max() - S, y_kind="dissimilarity", **kw)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(a, b)


def test_visible_region_is_the_crop_and_untested_images_stay_intact():
    from sklearn_ais import DNNFeatureMapTransformer
    from sklearn_ais._deletion import _visible_region
    from sklearn_ais.backbones import get_backbone

    from .conftest import _PlantedNet

    bb = get_backbone(_PlantedNet(), layer="features", input_size=48, resize_size=56, mean=(0, 0, 0), std=(1, 1, 1))
    tr = DNNFeatureMapTransformer(bb, device="cpu").fit(None)
    task = make_similarity_task(n_images=6, image_size=48, random_state=1)
    fm = tr.transform(task.images)
    region = _visible_region(fm.geometry, [fm.input_size] * 6, [(48, 48)] * 6)[0]
    # A 48-px crop of the image resized to 56: the central 48 * 48 / 56 ~ 41 px of the original.
    assert region[24, 24] and not region[0, 0] and not region[1, 24] and not region[24, 46]
    assert abs(region.mean() - (48 / 56) ** 2) < 0.05
    heat = np.random.default_rng(0).random((6, 48, 48))
    curves = deletion_curves(tr, task.images, heat, task.similarity, fractions=[0.0, 1.0], images_tested=[2, 4],
                             objective="alignment")
    assert curves.alignment["heatmap"].shape == (2, 2) and curves.images.tolist() == [2, 4]


def test_keep_is_read_as_a_feature_mask(planted):
    """Indices, a boolean mask and a selector mean the same maps; a 0/1 float array is refused as ambiguous."""
    tr, task = planted
    heat = np.random.default_rng(4).random((5, 48, 48))
    kw = dict(fractions=[0.0, 0.4], objective="alignment", removal="constant")
    args = (tr, task.images[:5], heat, task.similarity[:5, :5])
    by_index = deletion_curves(*args, keep=[0, 1, 2, 3], **kw).alignment["heatmap"]
    mask = np.arange(10) < 4
    np.testing.assert_array_equal(deletion_curves(*args, keep=mask, **kw).alignment["heatmap"], by_index)
    assert not np.allclose(deletion_curves(*args, **kw).alignment["heatmap"], by_index)
    with pytest.raises(TypeError, match="ambiguous"):
        deletion_curves(*args, keep=mask.astype(float), **kw)


def test_parallel_removal_gives_the_same_curves(planted):
    joblib = pytest.importorskip("joblib")
    tr, task = planted
    heat = np.random.default_rng(5).random((5, 48, 48))
    kw = dict(fractions=[0.0, 0.3, 0.6], objective=("alignment", "logits"), batch_size=4, random_state=7)
    serial = deletion_curves(tr, task.images[:5], heat, task.similarity[:5, :5], **kw)
    with joblib.parallel_config(backend="threading"):
        threaded = deletion_curves(tr, task.images[:5], heat, task.similarity[:5, :5], n_jobs=2, **kw)
    np.testing.assert_array_equal(serial.alignment["heatmap"], threaded.alignment["heatmap"])
    np.testing.assert_array_equal(serial.logits["heatmap"], threaded.logits["heatmap"])
    assert not np.array_equal(serial.logits["heatmap"][:, 0], serial.logits["heatmap"][:, 2])  # ROAD moved them
