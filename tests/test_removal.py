"""Pixel removal: ROAD imputation against pytorch-grad-cam's NoisyLinearImputer, blur, fill, orders, controls."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sklearn_ais._removal import (area_under_curve, center_bias_maps, noisy_linear_imputation, random_maps,
                                  removal_order, remove_pixels)


def _reference(img, mask):
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    out = road.NoisyLinearImputer(noise=0.0)(torch.from_numpy(img.transpose(2, 0, 1).copy()).float(),
                                             torch.from_numpy((~mask).astype(np.float32)))
    return out.numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("shape, frac", [((12, 17), 0.3), ((25, 20), 0.8), ((6, 6), 0.97), ((9, 11), 0.05)])
def test_road_matches_pytorch_grad_cam(rng, shape, frac):
    img = rng.random((*shape, 3)).astype(np.float32)
    mask = rng.random(shape) < frac
    mask[0, 0] = False  # at least one kept pixel (the reference's system is singular otherwise)
    ours = noisy_linear_imputation(img, mask, noise=0)
    np.testing.assert_allclose(ours, _reference(img, mask), atol=1e-6, rtol=0)
    assert np.array_equal(ours[~mask], img[~mask].astype(np.float64))  # kept pixels untouched


def test_road_is_the_neighbour_mean_and_adds_noise(rng):
    # One removed pixel: the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal), by hand.
    img = rng.random((5, 5, 2))
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    direct = img[1, 3] + img[3, 3] + img[2, 2] + img[2, 4]
    diagonal = img[1, 2] + img[1, 4] + img[3, 2] + img[3, 4]
    np.testing.assert_allclose(noisy_linear_imputation(img, mask, noise=0)[2, 3], direct / 6 + diagonal / 12)
    # A corner pixel: only the neighbours inside, renormalised.
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = True
    expected = (img[0, 1] / 6 + img[1, 0] / 6 + img[1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(noisy_linear_imputation(img, mask, noise=0)[0, 0], expected)
    a = noisy_linear_imputation(img, mask, noise=0.5, random_state=1)
    b = noisy_linear_imputation(img, mask, noise=0.5, random_state=1)
    assert np.array_equal(a, b) and not np.allclose(a[0, 0], expected)
    assert np.array_equal(a[~mask], img[~mask])


def test_removing_nothing_is_an_exact_copy(rng):
    img = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8) / 255.0
    for method in ("road", "blur", "constant"):
        out = remove_pixels(img, np.zeros((7, 9), bool), method, random_state=0)
        assert np.array_equal(out, img) and out is not img
        assert np.array_equal(np.round(out * 255).astype(np.uint8), (img * 255).round().astype(np.uint8))


def test_everything_removed_is_fill_plus_noise(rng):
    img = rng.random((4, 4, 3))
    out = noisy_linear_imputation(img, np.ones((4, 4), bool), noise=0, fill=0.25)
    assert (out == 0.25).all()


def test_blur_and_constant(rng):
    img = rng.random((10, 12, 3))
    mask = rng.random((10, 12)) < 0.4
    blurred = ndimage.gaussian_filter(img, sigma=(2.0, 2.0, 0), mode="nearest")
    out = remove_pixels(img, mask, "blur", sigma=2.0)
    np.testing.assert_allclose(out[mask], blurred[mask])
    assert np.array_equal(out[~mask], img[~mask])
    out = remove_pixels(img, mask, "constant", fill=0.1)
    assert (out[mask] == 0.1).all() and np.array_equal(out[~mask], img[~mask])
    with pytest.raises(ValueError, match="method"):
        remove_pixels(img, mask, "zeros")
    with pytest.raises(TypeError, match="boolean"):
        remove_pixels(img, mask.astype(float))
    with pytest.raises(ValueError, match="shape"):
        remove_pixels(img, mask[:, :5])


def test_removal_order_ties_random_and_region():
    h = np.zeros((4, 4))
    h[1, 2] = 1.0
    orders = {tuple(removal_order(h, random_state=s)) for s in range(5)}
    assert all(o[0] == 6 for o in orders) and len(orders) > 1  # the top first, ties shuffled
    region = np.zeros((4, 4), bool)
    region[:2] = True
    o = removal_order(h, region, random_state=0)
    assert sorted(o.tolist()) == list(range(8)) and o[0] == 6


def test_controls_and_auc(rng):
    m = random_maps(3, (20, 30), resolution=5, random_state=0)
    assert m.shape == (3, 20, 30) and m.min() == 0 and m.max() == 1
    assert np.abs(np.diff(m, axis=2)).max() < 0.2  # smooth: neighbouring pixels close
    c = center_bias_maps(2, (21, 21))
    assert c[0, 10, 10] == 1.0 and c[0, 0, 0] < c[0, 5, 5] < 1.0
    f = np.array([0.0, 0.1, 0.4, 1.0])
    s = rng.random((5, 4))
    np.testing.assert_allclose(area_under_curve(f, s), np.trapezoid(s, f, axis=1) if hasattr(np, "trapezoid")
                               else np.trapz(s, f, axis=1))
    with pytest.raises(ValueError, match="increasing"):
        area_under_curve([0, 0], [1, 1])
