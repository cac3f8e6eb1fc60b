"""Pair-level heatmaps: which regions of images i and j make the model's similarity of the pair agree with people's."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import Bunch

from ._geometry import to_original
from ._similarity import COMPARISONS, SIMILARITIES
from ._targets import Y_KINDS, check_similarity_target
from ._validation import as_feature_mask, check_feature_maps, is_feature_maps
from .backbones._heads import _ACTIVATIONS, PoolingHead

__all__ = ["pair_heatmaps"]


def _check_pairs(pairs, n):
    p = np.asarray(pairs)
    if p.ndim == 1 and p.shape == (2,):
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pairs must be integer image indices of shape (n_pairs, 2), got {pairs!r}")
    if (p < 0).any() or (p >= n).any() or (p[:, 0] == p[:, 1]).any():
        raise ValueError(f"pairs must hold two different image indices in [0, {n}), got {pairs!r}")
    return p.astype(np.int64)


def _ranks(values):
    from scipy.stats import rankdata

    return rankdata(values)


def _spatial_parts(maps, head):
    """Per map and location, the part of the embedding coordinate it carries: (n, K, h, w), summing to e."""
    x = _ACTIVATIONS[head.activation](torch.as_tensor(maps, dtype=torch.float64)).numpy()
    n, K, h, w = x.shape
    if head.pool == "avg":
        return x / (h * w)
    flat = x.reshape(n, K, h * w)
    out = np.zeros_like(flat)
    arg = flat.argmax(axis=2)
    np.put_along_axis(out, arg[..., None], np.take_along_axis(flat, arg[..., None], axis=2), axis=2)
    return out.reshape(n, K, h, w)


def pair_heatmaps(X, y, pairs, *, similarity="pearson", comparison="spearman", keep=None, output="maps",
                  y_kind="similarity"):
    r"""Pair heatmaps: each image's share of one pair's term in the 2OI.

    Definition. With global pooling, image ``i``'s embedding coordinate ``k``
    is a sum over the locations ``x`` of map ``k``:
    :math:`e_{ik} = \sum_x a_{ik}(x)` (``a = A / (h w)`` for average pooling;
    for max pooling the whole value sits at the arg-max). The model
    similarity of a pair is a sum over maps,
    :math:`z_{ij} = \sum_k \tilde e_{ik} \tilde e_{jk}`, with
    :math:`\tilde e_i = (e_i - \mu_i) / \|e_i - \mu_i\|` (``"pearson"``:
    :math:`\mu_i` the mean of :math:`e_i`; ``"cosine"``: :math:`\mu_i = 0`).
    The Pearson correlation of the upper triangles,
    :math:`r = \sum_{(i,j)} t_{ij}`, has the pair term

    .. math::

        t_{ij} = \frac{(z_{ij} - \bar z)(h_{ij} - \bar h)}{N \sigma_z \sigma_h}
               = \sum_k \underbrace{(\tilde e_{ik}\tilde e_{jk} - \bar c_k)\, s_{ij}}_{m_{ij,k}},
        \qquad s_{ij} = \frac{h_{ij} - \bar h}{N \sigma_z \sigma_h},

    over the ``N`` observed pairs, where :math:`\bar c_k` is the mean of
    :math:`\tilde e_{ik}\tilde e_{jk}` over them (so :math:`\bar z = \sum_k
    \bar c_k`) and ``h`` the human similarities (their ranks, ties
    averaged, for ``comparison="spearman"``; the model side stays linear).
    :math:`m_{ij,k}` is map ``k``'s contribution: positive when map ``k``
    moves the pair's model similarity the way people deviate from their
    mean. Projected onto image ``i`` through
    :math:`\tilde e_{ik} = \sum_x (a_{ik}(x) - \mu_i / P) / \|e_i - \mu_i\|`
    (``P = h w`` locations),

    .. math::

        M^{(i)}_{ij}(x) = s_{ij} \sum_k \Big[\frac{a_{ik}(x) - \mu_i / P}{\|e_i - \mu_i\|}\,
        \tilde e_{jk} - \frac{\bar c_k}{P}\Big],

    and symmetrically :math:`M^{(j)}_{ij}` on image ``j``. Exactly
    :math:`\sum_x M^{(i)}_{ij}(x) = \sum_x M^{(j)}_{ij}(x) = t_{ij}`: each
    image's map spreads the whole pair term over its own locations, and the
    terms of all pairs sum to the correlation. Positive regions make the
    pair agree with people, negative ones disagree.

    Parameters
    ----------
    X : FeatureMaps
        Maps of all images of ``y`` (same sizes), with a
        :class:`~sklearn_ais.backbones.PoolingHead` (EfficientNet, ResNet,
        DenseNet...).
    y : array-like of shape (n_images, n_images)
        Human similarity matrix (NaN = missing pair; the means run over
        the observed pairs).
    pairs : array-like of int of shape (n_pairs, 2) or (2,)
        Pairs ``(i, j)`` to explain, all computed together.
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : {"spearman", "pearson"}, default="spearman"
        ``"spearman"`` ranks the human side.
    keep : array-like of bool of shape (n_maps,) or int indices, optional
        Only these maps form the embedding (e.g. a selector's ``support_``).
    output : {"maps", "input", "original"}, default="maps"
        Geometry of the maps: the feature-map grid, the network input, or the
        original images (as :class:`~sklearn_ais.AISHeatmapper`); upsampling
        is bilinear and keeps the sign (the sums equal the terms on the
        feature-map grid only).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        first, second : ndarray of shape (n_pairs, H, W)
            :math:`M^{(i)}` on image ``i`` and :math:`M^{(j)}` on image
            ``j`` (signed; a list when the original images differ in size).
        terms : ndarray of shape (n_pairs,)
            :math:`t_{ij}`.
        map_contributions : ndarray of shape (n_pairs, n_maps)
            :math:`m_{ij,k}`.
        correlation : float
            :math:`r`, the sum of the terms of all observed pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import FeatureMaps
    >>> from sklearn_ais.backbones import PoolingHead
    >>> from sklearn_ais.evaluation import pair_heatmaps
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((8, 5, 3, 3))
    >>> H = np.corrcoef(maps.mean(axis=(2, 3))[:, :2])
    >>> res = pair_heatmaps(FeatureMaps(maps, PoolingHead()), H, [(0, 1), (2, 3)], comparison="pearson")
    >>> res.first.shape, bool(np.allclose(res.first.sum(axis=(1, 2)), res.terms))
    ((2, 3, 3), True)
    """
    if similarity not in SIMILARITIES or comparison not in ("spearman", "pearson") or y_kind not in Y_KINDS:
        raise ValueError(f"similarity must be in {SIMILARITIES}, comparison in ('spearman', 'pearson') (of "
                         f"{COMPARISONS}), y_kind in {Y_KINDS}")
    if output not in ("maps", "input", "original"):
        raise ValueError(f"output must be 'maps', 'input' or 'original', got {output!r}")
    if not is_feature_maps(X):
        raise TypeError(f"pair_heatmaps needs FeatureMaps (maps to project onto), got {type(X).__name__}")
    X = check_feature_maps(X)
    if X.ragged:
        raise ValueError("pair_heatmaps needs maps of one size (crop=True)")
    if not isinstance(X.head, PoolingHead):
        raise TypeError(f"pair_heatmaps decomposes global pooling exactly; the head is {type(X.head).__name__} "
                        "(a PoolingHead is needed: EfficientNet, ResNet, DenseNet, ...)")
    n = len(X)
    H = check_similarity_target(y, n, y_kind)
    p = _check_pairs(pairs, n)
    parts = _spatial_parts(X.maps, X.head)  # (n, K, h, w)
    if keep is not None:
        parts = parts * as_feature_mask(keep, X.n_maps, "keep")[None, :, None, None]
    n_, K, h, w = parts.shape
    P = h * w
    E = parts.sum(axis=(2, 3))
    mu = E.mean(axis=1, keepdims=True) if similarity == "pearson" else np.zeros((n, 1))
    norm = np.linalg.norm(E - mu, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"images {np.flatnonzero(norm[:, 0] == 0)[:10].tolist()} have a constant embedding: "
                         "their model similarity is undefined")
    Et = (E - mu) / norm
    iu = np.triu_indices(n, 1)
    observed = ~np.isnan(H[iu])
    if observed.sum() < 3:
        raise ValueError("y has fewer than 3 observed pairs")
    h_obs = H[iu][observed]
    h_val = _ranks(h_obs) if comparison == "spearman" else h_obs
    h_full = np.full(n * (n - 1) // 2, np.nan)
    h_full[observed] = h_val
    Hm = np.full((n, n), np.nan)
    Hm[iu] = h_full
    Hm.T[iu] = h_full
    z = (Et @ Et.T)[iu][observed]
    N = len(z)
    sz, sh = z.std(), h_val.std()
    if sz == 0 or sh == 0:
        raise ValueError("the model or the human similarities are constant over the observed pairs")
    judged = np.zeros((n, n))
    judged[iu[0][observed], iu[1][observed]] = 1.0
    cbar = np.einsum("ik,ij,jk->k", Et, judged, Et) / N
    i, j = p[:, 0], p[:, 1]
    hij = Hm[i, j]
    if np.isnan(hij).any():
        raise ValueError(f"pairs {p[np.isnan(hij)][:5].tolist()} are not judged in y (NaN): no term to explain")
    s = (hij - h_val.mean()) / (N * sz * sh)
    contributions = (Et[i] * Et[j] - cbar) * s[:, None]

    def project(a, b):
        loc = (parts[a] - mu[a, :, None, None] / P) / norm[a, :, None, None]  # (m, K, h, w)
        return s[:, None, None] * (np.einsum("mkxy,mk->mxy", loc, Et[b]) - cbar.sum() / P)

    first, second = project(i, j), project(j, i)
    if output != "maps":
        if X.input_size is None:
            raise ValueError("X has no input_size (it was not made by DNNFeatureMapTransformer); use output='maps'")
        geometry = None if X.geometry is None else X.geometry
        out = "input" if output == "input" or geometry is None else "original"

        def up(m, idx):
            g = None if geometry is None else geometry[idx]
            return to_original(m, g, X.input_size, output=out)

        first, second = up(first, i), up(second, j)
    return Bunch(first=first, second=second, terms=contributions.sum(axis=1), map_contributions=contributions,
                 correlation=float(np.sum((z - z.mean()) * (h_val - h_val.mean())) / (N * sz * sh)))
