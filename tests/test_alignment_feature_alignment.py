"""feature_alignment_score (harmonization) against scipy."""

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from sklearn.utils import check_random_state

from sklearn_ais.alignment import split_half_map_ceiling
from sklearn_ais.metrics import feature_alignment_score


def _ref(human, model):
    return np.array([stats.spearmanr(h.ravel(), m.ravel()).statistic for h, m in zip(human, model)])


def test_reexported_in_metrics():
    import sklearn_ais.metrics as metrics

    assert "feature_alignment_score" in metrics.__all__


@pytest.mark.parametrize("sigma", [None, 0, 1.5])
def test_matches_scipy(rng, sigma):
    human = rng.random((5, 10, 12))
    model = rng.random((5, 10, 12))
    model[:, :3] = model[:, :3].round(1)  # ties
    score, per_image, ceiling = feature_alignment_score(human, model, sigma=sigma, return_per_image=True)
    blurred = model if not sigma else ndimage.gaussian_filter(model, sigma=(0, sigma, sigma), mode="reflect")
    ref = _ref(human, blurred)
    np.testing.assert_allclose(per_image, ref, atol=1e-12)
    assert ceiling == 1.0
    assert score == pytest.approx(ref.mean())
    assert feature_alignment_score(human, model, sigma=sigma, ceiling=0.8) == pytest.approx(ref.mean() / 0.8)


def test_split_half_ceiling_from_raters(rng):
    truth = rng.random((4, 8, 8))
    raters = truth + 0.7 * rng.random((6, 4, 8, 8))
    model = truth + rng.random((4, 8, 8))
    # Reference: the same random splits, per-image scipy correlations, Spearman-Brown.
    rs = check_random_state(3)
    r = []
    for _ in range(5):
        perm = rs.permutation(6)
        a, b = raters[perm[:3]].mean(0), raters[perm[3:]].mean(0)
        r.append(_ref(a, b).mean())
    r = np.mean(r)
    ceiling = 2 * r / (1 + r)
    assert split_half_map_ceiling(raters, n_splits=5, random_state=3) == pytest.approx(ceiling)
    score, per_image, ceil = feature_alignment_score(raters, model, n_splits=5, random_state=3, return_per_image=True)
    assert ceil == pytest.approx(ceiling)
    np.testing.assert_allclose(per_image, _ref(raters.mean(0), model), atol=1e-12)
    assert score == pytest.approx(per_image.mean() / ceiling)
    assert feature_alignment_score(raters, model, ceiling="none") == pytest.approx(per_image.mean())


def test_model_maps_are_resized(rng):
    human = rng.random((3, 8, 8))
    model = rng.random((3, 4, 4))
    up = torch.nn.functional.interpolate(torch.from_numpy(model)[:, None], size=(8, 8), mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    assert feature_alignment_score(human, model) == pytest.approx(_ref(human, up).mean())


def test_constant_maps(rng):
    human = rng.random((3, 5, 5))
    model = rng.random((3, 5, 5))
    model[1] = 2.0  # a constant model map carries no information: 0
    _, per_image, _ = feature_alignment_score(human, model, return_per_image=True)
    assert per_image[1] == 0.0
    human[2] = 1.0  # a constant human map cannot be correlated: left out
    with pytest.warns(UserWarning, match="constant human map"):
        score, per_image, _ = feature_alignment_score(human, model, return_per_image=True)
    assert np.isnan(per_image[2])
    assert score == pytest.approx(np.mean(per_image[:2]))


def test_errors(rng):
    with pytest.raises(ValueError, match="images"):
        feature_alignment_score(rng.random((3, 4, 4)), rng.random((2, 4, 4)))
    with pytest.raises(ValueError, match="sigma"):
        feature_alignment_score(rng.random((3, 4, 4)), rng.random((3, 4, 4)), sigma=-1)
    with pytest.raises(ValueError, match="ceiling"):
        feature_alignment_score(rng.random((3, 4, 4)), rng.random((3, 4, 4)), ceiling=0)
    with pytest.raises(ValueError, match="2 raters"):
        split_half_map_ceiling(rng.random((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        feature_alignment_score(np.full((3, 4, 4), np.nan), rng.random((3, 4, 4)))
