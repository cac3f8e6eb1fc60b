"""Truong, Pesenti & Hasson (2024) as their released code computes it, against the README's recipe.

The released code is tlmnhut/ais_heatmap (one commit, 695fb25); each naive step below cites the file and line it
follows. VGG16's last convolutional block (``features[:30]``, after the ReLU) gives 512 maps of images resized to a
shorter side of 224 without a crop (``extract_acts.py``, lines 27-33); the embedding is fc7 after its ReLU
(``classifier[:6]``, ``model.py``, line 122), and the model matrix is ``np.corrcoef`` of the embeddings.

* Global AIS (``predict_hsj.py``): the 2OI is ``pearsonr`` of the upper triangles, squared (line 26); map k is
  zeroed in every image (``model.py``, ``VGG16Remove1``, line 165); the sweep keeps the top-t maps (lines 175-186)
  and t* is the best training 2OI (``np.nanargmax``, line 89).
* Per-image AIS (``compute_perturbation.py``): map k is zeroed in image i only and image i alone is re-embedded
  (``model.py``, lines 163-167); its embedding is correlated with every original one (line 28, ``utils.pearsonr_2d``,
  ``utils.py`` lines 95-108); entry i is deleted and the n - 1 others are correlated with the human row by the plain
  Pearson r (line 81, not squared); the baseline is ``pearsonr`` of the two rows without their diagonal (line 140);
  AIS = baseline - ablated (line 90).
* Heatmaps (``viz_heatmap.py``): ``np.average(maps, weights=AIS_i)`` on the map grid (line 64, divided by the signed
  sum), one ``cv2.resize`` to the original image (line 44, bilinear on pixel centres), divided by its maximum
  (line 45) and squared before the colour map (line 46).

The naive side uses the torchvision module's own layers and nothing of the package but the maps it extracted. The
package's settings are read from the README's recipe, so that the recipe as written is what is checked here.
"""

import ast
import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer

pytestmark = pytest.mark.slow  # a random-weight VGG16 (138 M parameters)

N = 20
# Original sizes (h, w): the network sees 224 x 224 or 224 x 298 (crop=False), maps of 14 x 14, 14 x 18, 18 x 14.
SIZES = [(240, 240)] * 14 + [(240, 320)] * 3 + [(320, 240)] * 3
README = Path(__file__).resolve().parents[1] / "README.md"


def _recipe_settings():
    """Keyword arguments of the README recipe's DNNFeatureMapTransformer, AISSelector and AISHeatmapper calls.

    The recipe is the first Python block of the section "Reproducing Truong, Pesenti & Hasson (2024)"; a
    ``name = dict(...)`` of literals may be passed as ``**name``.
    """
    text = README.read_text(encoding="utf-8")
    section = text.split("## Reproducing Truong, Pesenti & Hasson (2024)", 1)[1].split("\n## ", 1)[0]
    tree = ast.parse(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    dicts, calls = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "dict":
            dicts[node.targets[0].id] = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
    for node in ast.walk(tree):
        name = getattr(getattr(node, "func", None), "id", None)
        if isinstance(node, ast.Call) and name in ("DNNFeatureMapTransformer", "AISSelector", "AISHeatmapper"):
            kw = {}
            for k in node.keywords:
                kw.update(dicts[k.value.id] if k.arg is None else {k.arg: ast.literal_eval(k.value)})
            calls[name] = kw
    return calls


RECIPE = _recipe_settings()


@pytest.fixture(scope="module")
def protocol():
    assert RECIPE["DNNFeatureMapTransformer"].get("crop") is False  # the released code does not crop
    transformer = DNNFeatureMapTransformer("vgg16", weights=None, random_state=0, device="cpu", crop=False).fit(None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in SIZES]
    fm = transformer.transform(images)
    model = transformer.backbone_.model.eval()
    # model.py, lines 119-122 and 131-134: the layers after the last conv block's ReLU, up to fc7's ReLU.
    head32 = torch.nn.Sequential(model.features[30:], model.avgpool, torch.nn.Flatten(), *model.classifier[:6]).eval()
    head = copy.deepcopy(head32).double()
    maps = [np.asarray(m) for m in fm.maps]  # maps of different sizes: one array per image
    E = _embed(head, maps)
    H = np.corrcoef(E[:, :40] + 0.5 * rng.normal(size=(N, 40)) * E[:, :40].std())  # related, not identical
    return fm, maps, (head, head32), H


@pytest.fixture(scope="module")
def heatmapper(protocol):
    fm, _, _, H = protocol
    return AISHeatmapper(**RECIPE["AISHeatmapper"], device="cpu").fit(fm, H)


def _embed(head, maps):
    """Embeddings of a list of (K, h, w) maps in the head's own precision (float64: the exact value; float32: the
    network as it runs, as the released code ran it), images of one size in one batch."""
    dtype = next(head.parameters()).dtype
    out = [None] * len(maps)
    for shape in {m.shape for m in maps}:
        idx = [i for i, m in enumerate(maps) if m.shape == shape]
        with torch.no_grad():
            e = head(torch.as_tensor(np.stack([maps[i] for i in idx]), dtype=dtype)).double().numpy()
        for j, i in enumerate(idx):
            out[i] = e[j]
    return np.stack(out)


def _masked(maps, keep):
    """Every image's maps with the maps outside ``keep`` (a boolean mask over maps) set to 0."""
    return [m * keep[:, None, None].astype(m.dtype) for m in maps]


class _Tolerance:
    """|package - exact| <= 1e-6, or within 3x the float32 noise of the naive implementation itself.

    The package runs the network's GEMMs in float32, as the network does (and as the released code did); on a few
    of the 512-map sweeps that rounding alone reaches ~1e-6 in r^2, depending on the thread count.
    """

    def __init__(self):
        self.errors, self.noise = [], 0.0

    def add(self, got, exact, naive32):
        self.noise = max(self.noise, abs(naive32 - exact))
        self.errors.append(abs(got - exact))

    def check(self):
        tol = max(1e-6, 3 * self.noise)
        assert max(self.errors) <= tol, (max(self.errors), self.noise)


def _global_r2(E, H):
    """predict_hsj.py, lines 22-26: np.corrcoef, upper triangles, pearsonr squared."""
    iu = np.triu_indices(len(H), 1)
    return stats.pearsonr(np.corrcoef(E)[iu], H[iu])[0] ** 2


def _r_to_each_row(x, Y):
    """utils.py, lines 95-108 (pearsonr_2d): the plain Pearson r of the vector x with each row of Y."""
    xc, Yc = x - x.mean(), Y - Y.mean(axis=1, keepdims=True)
    return Yc @ xc / np.sqrt((xc @ xc) * (Yc * Yc).sum(axis=1))


def _row_baseline(E, H, i):
    """compute_perturbation.py, line 140: pearsonr of row i of np.corrcoef(E) and of H, both without entry i."""
    return stats.pearsonr(np.delete(np.corrcoef(E)[i], i), np.delete(H[i], i))[0]


def _row_ablated(head, maps, E, H, i, ks):
    """Row r of image i with each map of ``ks`` zeroed in image i only.

    model.py, lines 163-167: zero the map, re-embed image i alone; compute_perturbation.py, line 28: r with every
    original embedding (image i's included); line 81: drop entry i, plain r (not squared) with the human row.
    """
    ablated = np.repeat(maps[i][None], len(ks), axis=0)
    ablated[np.arange(len(ks)), ks] = 0
    rows = []
    for e in _embed(head, list(ablated)):
        first_order = np.delete(_r_to_each_row(e, E), i)
        rows.append(_r_to_each_row(np.delete(H[i], i), first_order[None])[0])
    return np.array(rows)


def test_global_ais_and_sweep_equal_the_released_code(protocol):
    fm, maps, (head, head32), H = protocol
    sel = AISSelector(**RECIPE["AISSelector"], device="cpu").fit(fm, H)
    K = fm.n_maps
    base, base32 = _global_r2(_embed(head, maps), H), _global_r2(_embed(head32, maps), H)
    tolerance = _Tolerance()
    order = np.argsort(sel.ranking_, kind="stable")  # maps from the most to the least important
    rng = np.random.default_rng(1)
    for k in np.r_[order[:3], order[-3:], rng.choice(K, 4, replace=False)]:
        keep = np.arange(K) != k  # model.py, line 165: map k zeroed in every image
        tolerance.add(sel.scores_[k], base - _global_r2(_embed(head, _masked(maps, keep)), H),
                      base32 - _global_r2(_embed(head32, _masked(maps, keep)), H))
    # predict_hsj.py, lines 175-186: the top-t maps kept, at t* and around it, and at spread-out t.
    t_star = sel.n_features_to_select_
    ts = sorted({1, 2, K, *range(max(1, t_star - 1), min(K, t_star + 1) + 1),
                 *rng.choice(np.arange(1, K + 1), 6, replace=False)})
    naive = {}
    for t in ts:
        keep = np.isin(np.arange(K), order[:t])
        naive[t] = _global_r2(_embed(head, _masked(maps, keep)), H)
        tolerance.add(sel.path_scores_[t - 1], naive[t], _global_r2(_embed(head32, _masked(maps, keep)), H))
    tolerance.check()
    # predict_hsj.py, line 89: t* is the best training 2OI of the sweep (np.nanargmax: the smallest t on ties).
    assert t_star == int(np.nanargmax(sel.path_scores_)) + 1
    assert naive[t_star] >= max(naive.values()) - 1e-6


def test_per_image_scores_are_the_released_plain_r(protocol, heatmapper):
    fm, maps, (head, head32), H = protocol
    E, E32 = _embed(head, maps), _embed(head32, maps)
    base = np.array([_row_baseline(E, H, i) for i in range(N)])
    base32 = np.array([_row_baseline(E32, H, i) for i in range(N)])
    tolerance = _Tolerance()
    for got, b, b32 in zip(heatmapper.image_base_scores_, base, base32):
        tolerance.add(got, b, b32)
    # The rows of r < 0 are where a squared row would reverse the ranking of maps: the check needs some of both.
    assert (base < 0).any() and (base > 0).any()
    rng = np.random.default_rng(2)
    rows = {int(np.argmin(base)), int(np.argmax(base)), 15, 18}  # both signs, and non-square images
    for i in sorted(rows):
        ranked = np.argsort(-heatmapper.image_scores_[i])
        ks = np.r_[ranked[:4], ranked[-4:], rng.choice(fm.n_maps, 4, replace=False)]
        b, b32 = base[i], base32[i]
        exact, naive32 = b - _row_ablated(head, maps, E, H, i, ks), b32 - _row_ablated(head32, maps, E32, H, i, ks)
        for got, x, x32 in zip(heatmapper.image_scores_[i, ks], exact, naive32):
            tolerance.add(got, x, x32)
    tolerance.check()


def _bilinear(grid, size):
    """cv2.resize's INTER_LINEAR (viz_heatmap.py, line 44): sample at pixel centres, (dst + 0.5) * scale - 0.5,
    clamped to the grid, linear between the two nearest cells along each axis."""
    out = grid
    for axis, n_out in enumerate(size):
        n_in = out.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (src - lo).reshape([-1 if a == axis else 1 for a in range(2)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


def test_heatmaps_are_the_released_signed_average(protocol, heatmapper):
    fm, maps, _, _ = protocol
    S = heatmapper.image_scores_
    np.testing.assert_allclose(heatmapper.image_score_sums_, S.sum(axis=1), rtol=1e-12)
    # viz_heatmap.py, line 64: the average of the maps weighted by the signed scores, on the map grid.
    grid = [np.average(maps[i].astype(np.float64), weights=S[i], axis=0) for i in range(N)]
    raw = copy.copy(heatmapper).set_params(output="maps", normalize=None, squared=False).transform(fm)
    for got, ref in zip(raw, grid):
        np.testing.assert_allclose(got, ref, atol=1e-6 * np.abs(ref).max())
    # viz_heatmap.py, lines 44-46: one resize to the original image, divided by the maximum, squared.
    display = [_bilinear(g, SIZES[i]) for i, g in enumerate(grid)]
    display = [(d / d.max()) ** 2 for d in display]
    heat = heatmapper.transform(fm)  # the recipe's own settings
    assert [h.shape for h in heat] == SIZES
    for got, ref in zip(heat, display):
        np.testing.assert_allclose(got, ref, atol=1e-6)
    # The package's default resize (to the network input, then to the image) differs by the second resize only.
    via_input = copy.copy(heatmapper).set_params(resize="via_input").transform(fm)
    assert min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(via_input, display)) >= 0.999
