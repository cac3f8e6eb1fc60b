"""Harmonizer: target maps, resume from a checkpoint, early stopping, the fitted model in the transformer."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sklearn_ais import AISHeatmapper, DNNFeatureMapTransformer
from sklearn_ais.alignment import Harmonizer, prepare_target_maps
from sklearn_ais.alignment import _harmonization as harm_module
from sklearn_ais.backbones import get_backbone
from sklearn_ais.datasets import make_similarity_task

SIZE = 24


def _net(n_out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out),
    )


def _backbone(n_out=3):
    return get_backbone(_net(n_out), layer="4", input_size=SIZE, resize_size=SIZE)


@pytest.fixture(scope="module")
def task():
    return make_similarity_task(n_images=16, image_size=SIZE, n_shapes=2, n_colors=2, random_state=0)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


KW = dict(epochs=3, batch_size=4, lr=1e-2, deterministic=True, random_state=0, device="cpu")


def test_resume_after_interruption_gives_the_same_weights(task, tmp_path, monkeypatch):
    full = Harmonizer(_backbone(), validation_fraction=0.25, **KW).fit(task.images, task.shapes, maps=task.masks)
    ckpt = tmp_path / "run.pt"
    calls = {"n": 0}
    real = harm_module.harmonization_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # mid-way through the second epoch (3 training steps per epoch + 1 validation)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harm_module, "harmonization_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Harmonizer(_backbone(), validation_fraction=0.25, checkpoint=ckpt, **KW).fit(
            task.images, task.shapes, maps=task.masks)
    assert ckpt.exists()
    monkeypatch.setattr(harm_module, "harmonization_loss", real)
    resumed = Harmonizer(_backbone(), validation_fraction=0.25, checkpoint=ckpt, **KW).fit(
        task.images, task.shapes, maps=task.masks)
    assert resumed.resumed_from_ == 1
    assert _states_equal(resumed.model_.model, full.model_.model)
    assert [r["val_loss"] for r in resumed.history_] == [r["val_loss"] for r in full.history_]
    # The weights moved, and a checkpoint of other settings is refused.
    assert not _states_equal(full.model_.model, full.initial_model_.model)
    with pytest.raises(ValueError, match="other settings"):
        Harmonizer(_backbone(), validation_fraction=0.25, checkpoint=ckpt, **{**KW, "lr": 0.5}).fit(
            task.images, task.shapes, maps=task.masks)


def test_fitted_model_goes_into_the_transformer(task):
    bb = _backbone()
    h = Harmonizer(bb, validation_fraction=None, **{**KW, "epochs": 1}).fit(task.images, task.shapes, maps=task.masks)
    assert _states_equal(bb.model, _backbone().model)  # the user's network is not modified
    fm = DNNFeatureMapTransformer(backbone=h.model_, device="cpu").fit(task.images).transform(task.images)
    # The trained module's layer output, computed by hand, is what the transformer returns.
    pixels, _ = h.model_.preprocess(task.images)
    with torch.no_grad():
        ref = h.model_.model[:5](pixels).numpy()
    np.testing.assert_allclose(fm.maps, ref, rtol=1e-5, atol=1e-6)
    assert fm.shape == (16, 8, SIZE, SIZE)
    # A new classifier: labels are names; predict returns them.
    assert h.new_classifier_ and list(h.classes_) == sorted(set(task.shapes))
    assert set(h.predict(task.images)) <= set(task.shapes)


def test_early_stopping_keeps_the_best_epoch(task):
    h = Harmonizer(_backbone(), validation_fraction=0.25, n_iter_no_change=1,
                   **{**KW, "epochs": 8, "lr": 0.3}).fit(task.images, task.shapes, maps=task.masks)
    val = [r["val_loss"] for r in h.history_]
    assert h.n_epochs_ < 8  # stopped early
    assert h.best_epoch_ == int(np.argmin(val)) + 1
    assert val[-1] >= min(val)


def test_map_weight_zero_is_plain_fine_tuning(task):
    torch.manual_seed(0)
    h = Harmonizer(_backbone(), map_weight=0.0, validation_fraction=None, weight_decay=0.0, label_smoothing=0.0,
                   **{**KW, "epochs": 1, "batch_size": 16}).fit(task.images, task.shapes)
    # One full-batch Adam step of the cross-entropy, by hand.
    ref = _net()
    idx = {c: i for i, c in enumerate(sorted(set(task.shapes)))}
    y = torch.tensor([idx[s] for s in task.shapes])
    ref[-1] = h.initial_model_.model[-1].__class__(8, 2)
    ref[-1].load_state_dict(h.initial_model_.model[-1].state_dict())
    pixels, _ = h.model_.preprocess(task.images)
    opt = torch.optim.Adam(ref.parameters(), lr=KW["lr"])
    ref.train()
    order = np.random.default_rng(harm_module._seed(0, "order", 0)).permutation(16)
    loss = nn.functional.cross_entropy(ref(pixels[order]), y[order])
    loss.backward()
    opt.step()
    for (n, a), b in zip(ref.state_dict().items(), h.model_.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_maps_from_files_match_arrays(task, tmp_path):
    paths = []
    for i, img in enumerate(task.images):
        p = tmp_path / "images" / f"img{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
        paths.append(str(p))
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    maps = task.masks.astype(np.float64)
    for i, m in enumerate(maps):
        if i % 2:
            np.save(maps_dir / f"img{i:02d}.npy", m)
        else:
            Image.fromarray((m * 255).astype(np.uint8)).save(maps_dir / f"img{i:02d}.png")
    np.save(maps_dir / "img15.npy", maps[15])
    (maps_dir / "img03.npy").unlink()  # no map for image 3: token 0
    listed = [None if i == 3 else maps[i] * (255 if i % 2 == 0 else 1) for i in range(16)]
    kw = dict(validation_fraction=None, **{**KW, "epochs": 1})
    a = Harmonizer(_backbone(), **kw).fit(paths, task.shapes, maps=maps_dir)
    b = Harmonizer(_backbone(), **kw).fit(paths, task.shapes, maps=listed)
    assert _states_equal(a.model_.model, b.model_.model)
    with pytest.raises(ValueError, match="no map file"):
        Harmonizer(_backbone(), **kw).fit(paths, task.shapes, maps=tmp_path / "images" / "..")


def test_prepare_target_maps_follows_the_image_crop():
    # A 40 x 60 image, resized (shorter side 20) to 20 x 30 and centre-cropped to 20 x 20: columns 5..24.
    m = np.tile(np.arange(60, dtype=np.float64), (40, 1))
    geometry = np.array([[40, 60, 20, 30, 0, 5]])
    t, tok = prepare_target_maps([m], geometry, (20, 20))
    import torch.nn.functional as F

    ref = F.interpolate(torch.from_numpy(m)[None, None].float(), size=(20, 30), mode="bilinear",
                        align_corners=False, antialias=True)[0, 0, :, 5:25].numpy()
    np.testing.assert_allclose(t[0], ref, atol=1e-5)
    assert tok.tolist() == [1.0]
    # ClickMe: 64 x 64, blurred, then resized; differs from the plain path and is smooth.
    c, _ = prepare_target_maps([m], geometry, (20, 20), preprocessing="clickme")
    assert not np.allclose(c, t) and np.isfinite(c).all()
    with pytest.raises(ValueError, match="NaN"):
        harm_module._as_map_list([np.full((4, 4), np.nan)], 1)


def test_ais_heatmaps_fitted_on_held_out_images_are_refused(task):
    bb = _backbone()
    t = DNNFeatureMapTransformer(backbone=bb, device="cpu").fit(task.images)
    fm = t.transform(task.images)
    train = np.arange(12)
    hm_all = AISHeatmapper(output="input").fit(fm, task.similarity)
    with pytest.raises(ValueError, match="not among the training images"):
        Harmonizer(bb, validation_fraction=None, **{**KW, "epochs": 1}).fit(
            task.images[train], task.shapes[train], maps=hm_all)
    hm_train = AISHeatmapper(output="input").fit(fm[train], task.similarity[np.ix_(train, train)])
    h = Harmonizer(bb, validation_fraction=None, **{**KW, "epochs": 1})
    targets, tokens = h._targets(hm_train, task.images[train], *bb.preprocess(task.images[train]), bb, None, None)
    expected = hm_train.transform(fm[train])
    np.testing.assert_allclose(targets, expected, atol=1e-6)
    assert tokens.tolist() == [1.0] * 12
    h.fit(task.images[train], task.shapes[train], maps=hm_train)
    assert h.n_epochs_ == 1


def test_evaluate_reports_before_and_after(task):
    h = Harmonizer(_backbone(), validation_fraction=None, **{**KW, "epochs": 1}).fit(
        task.images[:12], task.shapes[:12], maps=task.masks[:12])
    test = slice(12, 16)
    sim = task.similarity[test, test]
    res = h.evaluate(task.images[test], task.shapes[test], maps=task.masks[test], similarity=sim)
    assert np.isnan(res["before"]["accuracy"])  # a new classifier is untrained before
    from sklearn_ais.metrics import alignment_score, feature_alignment_score

    sal = h.saliency_maps(task.images[test], task.shapes[test])
    assert res["after"]["feature_alignment"] == pytest.approx(feature_alignment_score(task.masks[test], sal))
    emb = DNNFeatureMapTransformer(backbone=h.model_, device="cpu").fit(task.images[test]).transform(
        task.images[test]).embed()
    assert res["after"]["2OI"] == pytest.approx(alignment_score(emb, sim))
    assert res["after"]["accuracy"] == h.score(task.images[test], task.shapes[test])


def test_bad_inputs_are_refused(task):
    with pytest.raises(ValueError, match="maps is required"):
        Harmonizer(_backbone(), **KW).fit(task.images, task.shapes)
    with pytest.raises(ValueError, match="16 images"):
        Harmonizer(_backbone(), **KW).fit(task.images, task.shapes, maps=task.masks[:3])
    with pytest.raises(ValueError, match="integer labels"):
        Harmonizer(_backbone(), classifier="keep", **KW).fit(task.images, task.shapes, maps=task.masks)


def test_tiny_demonstration_masks_raise_held_out_alignment():
    """The benchmark (benchmarks/harmonization_synthetic.py) in miniature: same start, same seeds, map_weight 1 vs 0."""
    from sklearn_ais.metrics import feature_alignment_score

    data = make_similarity_task(n_images=48, image_size=SIZE, n_shapes=2, n_colors=2, random_state=3)
    train, test = np.arange(36), np.arange(36, 48)
    scores = {}
    for weight in (0.0, 1.0):
        h = Harmonizer(_backbone(), map_weight=weight, validation_fraction=None,
                       **{**KW, "epochs": 4, "batch_size": 12, "lr": 3e-3})
        h.fit(data.images[train], data.shapes[train], maps=data.masks[train])
        sal = h.saliency_maps(data.images[test], data.shapes[test])
        scores[weight] = feature_alignment_score(data.masks[test], sal)
        assert h.history_[-1]["map_term"] < h.history_[0]["map_term"] or weight == 0
    assert scores[1.0] > scores[0.0] + 0.05, scores


def test_clone_and_pickle_keep_the_fitted_network(task):
    import pickle

    from sklearn.base import clone

    h = Harmonizer(_backbone(), validation_fraction=None, **{**KW, "epochs": 1}).fit(
        task.images, task.shapes, maps=task.masks)
    c = clone(h)
    assert not hasattr(c, "model_") and c.get_params()["lr"] == h.lr
    back = pickle.loads(pickle.dumps(h))
    np.testing.assert_array_equal(back.predict(task.images), h.predict(task.images))


def test_freeze_norm_keeps_the_running_statistics(task):
    bb = _backbone()
    before = {k: v.clone() for k, v in bb.model[1].state_dict().items()}
    frozen = Harmonizer(bb, freeze_norm=True, validation_fraction=None, **{**KW, "epochs": 1}).fit(
        task.images, task.shapes, maps=task.masks)
    bn = frozen.model_.model[1]
    assert torch.equal(bn.running_mean, before["running_mean"]) and torch.equal(bn.running_var, before["running_var"])
    assert not torch.equal(bn.weight, before["weight"])  # the affine parameters still train
    moving = Harmonizer(bb, validation_fraction=None, **{**KW, "epochs": 1}).fit(task.images, task.shapes, maps=task.masks)
    assert not torch.equal(moving.model_.model[1].running_mean, before["running_mean"])
