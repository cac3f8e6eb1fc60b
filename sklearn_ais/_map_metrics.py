"""Comparisons of heatmaps and of AIS distributions.

Heatmaps are compared through their *top regions*: the top ``p`` % of a
map are its ``k = ceil(p * n_pixels / 100)`` highest pixels. The pixels are
ordered by decreasing value with a stable sort, so ties are broken in favour
of the pixel that comes first in row-major (raster) order and exactly ``k``
pixels are always chosen, even for maps with large flat regions.

NaN in a heatmap marks a pixel the network never saw (outside its centre
crop, :func:`sklearn_ais._geometry.to_original`): such pixels are left out of
every comparison, so "not seen" is never counted as "unimportant". A
comparison of two maps uses the pixels finite in both (``N`` below).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from scipy.special import entr

__all__ = [
    "heatmap_match",
    "ks_test",
    "match_entropy_correlation",
    "mean_absolute_deviation",
    "precision_recall",
    "precision_recall_auc",
    "prediction_entropy",
    "relative_risk",
    "top_mask",
]


# -- validation ----------------------------------------------------------------
def _check_finite(x, name):
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_seen(x, name):
    """Maps may hold NaN (pixels not seen) but no inf, and at least one finite pixel each."""
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if np.isinf(x).any():
        raise ValueError(f"{name} contains inf")
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1]) if x.ndim >= 2 else x[None]
    if np.isnan(flat).all(axis=1).any():
        raise ValueError(f"{name} holds a map of nothing but NaN (no pixel seen)")


def _seen(*rows):
    """Pixels finite in every row (bool rows are always seen)."""
    keep = np.ones(rows[0].shape, dtype=bool)
    for r in rows:
        if r.dtype != bool:
            keep &= ~np.isnan(r)
    return keep


def _check_maps(x, name, allow_bool=False):
    """A (H, W) or (n, H, W) map as (n, H, W), and whether it was 2-D."""
    x = np.asarray(x)
    if x.dtype == bool:
        if not allow_bool:
            raise ValueError(f"{name} must be a real-valued map, got a boolean array")
    elif not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (n_images, H, W), got {x.shape}")
    if x.dtype != bool:
        _check_seen(x, name)
    elif x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    return (x[None] if x.ndim == 2 else x), x.ndim == 2


def _check_pair(a, b, name_a, name_b, allow_bool_b=False):
    A, squeeze = _check_maps(a, name_a)
    B, _ = _check_maps(b, name_b, allow_bool=allow_bool_b)
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}")
    return A.reshape(len(A), -1), B.reshape(len(B), -1), squeeze


def _check_percents(p, name):
    """Percentages in (0, 100] as a 1-D array, and whether ``p`` was a scalar."""
    arr = np.asarray(list(p) if isinstance(p, range) else p, dtype=np.float64)
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty 1-D sequence of percentages, got {p!r}")
    if not np.isfinite(arr).all() or (arr <= 0).any() or (arr > 100).any():
        raise ValueError(f"{name} must lie in (0, 100] (percent of pixels), got {p!r}")
    return np.atleast_1d(arr), arr.ndim == 0


def _n_top(p, n_pixels):
    """``ceil(p % of n_pixels)``, immune to float noise such as 10 / 100 * 30 = 3.0000000000000004."""
    return max(1, math.ceil(round(p * n_pixels / 100.0, 9)))


def _order(values):
    """Pixel indices by decreasing value; ties: raster order."""
    return np.argsort(-values, kind="stable")


def _target_mask(target_row, p):
    """Boolean mask of a target: as given, or its top ``p`` %."""
    if target_row.dtype == bool:
        return target_row
    mask = np.zeros(target_row.shape, dtype=bool)
    mask[_order(target_row)[: _n_top(p, target_row.size)]] = True
    return mask


def _shape_out(out, squeeze, scalar):
    """(n, m) results -> drop the image axis for a 2-D input, the last for a scalar parameter."""
    if scalar:
        out = out[:, 0]
    if squeeze:
        out = out[0]
    return float(out) if np.ndim(out) == 0 else out


# -- top regions ---------------------------------------------------------------
def top_mask(heatmaps, top=10):
    """Boolean mask of the top ``top`` % pixels of each map.

    Parameters
    ----------
    heatmaps : array-like of shape (H, W) or (n_images, H, W)
    top : float, default=10
        Percentage of pixels, in (0, 100]. Exactly ``ceil(top * N / 100)``
        pixels are selected per map, ``N`` its finite (seen) pixels; ties go
        to the earlier pixel in raster order. NaN pixels are never selected.

    Returns
    -------
    mask : ndarray of bool, same shape as ``heatmaps``

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import top_mask
    >>> top_mask(np.array([[0.1, 0.9], [0.5, 0.5]]), top=50)
    array([[False,  True],
           [ True, False]])
    """
    X, _ = _check_maps(heatmaps, "heatmaps")
    tops, scalar = _check_percents(top, "top")
    if not scalar:
        raise ValueError(f"top must be a single percentage, got {top!r}")
    flat = X.reshape(len(X), -1)
    out = np.zeros(flat.shape, dtype=bool)
    for i, row in enumerate(flat):
        seen = _seen(row)
        out[i, seen] = _target_mask(row[seen], tops[0])
    return out.reshape(np.shape(heatmaps))


def relative_risk(predictor, target, top=10):
    """Relative risk that a top predictor pixel is also a top target pixel.

    With ``P`` the top ``p`` % pixels of ``predictor`` and ``T`` the top
    ``p`` % pixels of ``target`` (or the pixels where a boolean ``target``
    is True), over the ``N`` pixels of the image:

    ``RR = P(pixel in T | pixel in P) / P(pixel in T) = (|P ∩ T| / |P|) / (|T| / N)``.

    RR = 1 is chance overlap, RR = 0 disjoint top regions, and identical maps
    reach ``N / |P|`` (``100 / p`` when ``p`` % of ``N`` is a whole number).
    ``N`` counts the pixels seen in both maps (NaN pixels are left out).

    Parameters
    ----------
    predictor : array-like of shape (H, W) or (n_images, H, W)
        Real-valued maps (e.g. AIS heatmaps).
    target : array-like of the same shape
        Real-valued maps (thresholded at their own top ``p`` %), or a
        boolean mask (e.g. an object segmentation) used as ``T`` as is.
    top : float or sequence of float, default=10
        Percentage(s) ``p`` in (0, 100]; a sequence such as ``(5, 10, 15)``
        adds a last axis. Top regions follow the rule of :func:`top_mask`.

    Returns
    -------
    rr : float or ndarray of shape (n_images,), (n_top,) or (n_images, n_top)

    Raises
    ------
    ValueError
        Shapes differ, a map is empty, holds inf or only NaN, ``top`` is outside
        (0, 100], or a target region is empty (RR undefined).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import relative_risk
    >>> m = np.arange(100.0).reshape(10, 10)
    >>> relative_risk(m, m, top=10)
    10.0
    >>> relative_risk(m, -m, top=(5, 10, 15))
    array([0., 0., 0.])
    """
    P, T, squeeze = _check_pair(predictor, target, "predictor", "target", allow_bool_b=True)
    tops, scalar = _check_percents(top, "top")
    n = len(P)
    rr = np.empty((n, len(tops)))
    for i in range(n):
        seen = _seen(P[i], T[i])
        Pi, Ti, N = P[i][seen], T[i][seen], int(seen.sum())
        if N == 0:
            raise ValueError(f"image {i}: no pixel is seen in both maps (NaN in one wherever the other is finite)")
        order = _order(Pi)
        for j, p in enumerate(tops):
            k = _n_top(p, N)
            mask = _target_mask(Ti, p)
            n_target = mask.sum()
            if n_target == 0:
                raise ValueError(f"target mask of image {i} is empty: relative risk is undefined")
            rr[i, j] = (mask[order[:k]].sum() / k) / (n_target / N)
    return _shape_out(rr, squeeze, scalar)


def precision_recall(predictor, target, target_top=10, percentiles=range(1, 100, 2)):
    """Precision and recall of the predictor's top region over a sweep of sizes.

    The target region ``T`` is fixed: the top ``target_top`` % pixels of
    ``target``, or a boolean mask. The predictor's region ``P_q`` grows
    through its top ``q`` % pixels for each ``q`` in ``percentiles``:
    precision ``|P_q ∩ T| / |P_q|``, recall ``|P_q ∩ T| / |T|``. Regions
    follow the rule of :func:`top_mask`, so they are nested as ``q`` grows.

    Parameters
    ----------
    predictor : array-like of shape (H, W) or (n_images, H, W)
    target : array-like of the same shape, real-valued or boolean
    target_top : float, default=10
        Percentage defining ``T`` for a real-valued target (ignored for a mask).
    percentiles : sequence of float, default=range(1, 100, 2)
        Sizes ``q`` of the predictor's region, in (0, 100].

    Returns
    -------
    precision, recall : ndarray of shape (n_percentiles,) or (n_images, n_percentiles)

    See Also
    --------
    precision_recall_auc : Area under the resulting curve.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import precision_recall
    >>> m = np.arange(100.0).reshape(10, 10)
    >>> precision, recall = precision_recall(m, m, target_top=10, percentiles=[5, 10, 20])
    >>> precision, recall
    (array([1. , 1. , 0.5]), array([0.5, 1. , 1. ]))
    """
    P, T, squeeze = _check_pair(predictor, target, "predictor", "target", allow_bool_b=True)
    t_top, t_scalar = _check_percents(target_top, "target_top")
    if not t_scalar:
        raise ValueError(f"target_top must be a single percentage, got {target_top!r}")
    qs, _ = _check_percents(percentiles, "percentiles")
    n = len(P)
    precision, recall = np.empty((n, len(qs))), np.empty((n, len(qs)))
    for i in range(n):
        seen = _seen(P[i], T[i])
        Pi, Ti, N = P[i][seen], T[i][seen], int(seen.sum())
        if N == 0:
            raise ValueError(f"image {i}: no pixel is seen in both maps (NaN in one wherever the other is finite)")
        ks = np.array([_n_top(q, N) for q in qs])
        mask = _target_mask(Ti, t_top[0])
        n_target = mask.sum()
        if n_target == 0:
            raise ValueError(f"target mask of image {i} is empty: recall is undefined")
        # hits[k - 1] = |top-k predictor pixels ∩ T|, for every k at once.
        hits = np.cumsum(mask[_order(Pi)])[ks - 1]
        precision[i], recall[i] = hits / ks, hits / n_target
    if squeeze:
        return precision[0], recall[0]
    return precision, recall


def precision_recall_auc(precision, recall):
    """Area under a precision-recall curve (trapezoidal rule over recall).

    Parameters
    ----------
    precision, recall : array-like of shape (n_points,) or (n_images, n_points)
        As returned by :func:`precision_recall`. Points are sorted by recall;
        the area spans the recalls given (no point is added at the ends).

    Returns
    -------
    auc : float or ndarray of shape (n_images,)

    Examples
    --------
    >>> from sklearn_ais.metrics import precision_recall_auc
    >>> precision_recall_auc([1.0, 1.0, 0.5], [0.0, 0.5, 1.0])
    0.875
    """
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"precision and recall must have the same shape, got {p.shape} and {r.shape}")
    if p.ndim not in (1, 2) or p.shape[-1] < 2:
        raise ValueError(f"precision must have shape (n_points,) or (n_images, n_points) with n_points >= 2, got {p.shape}")
    _check_finite(p, "precision")
    _check_finite(r, "recall")
    idx = np.argsort(r, axis=-1, kind="stable")
    p, r = np.take_along_axis(p, idx, -1), np.take_along_axis(r, idx, -1)
    auc = (np.diff(r, axis=-1) * (p[..., 1:] + p[..., :-1]) / 2).sum(-1)
    return float(auc) if auc.ndim == 0 else auc


# -- agreement between two sets of heatmaps ------------------------------------
def heatmap_match(maps_a, maps_b):
    """Per-image Pearson correlation between two sets of heatmaps.

    Parameters
    ----------
    maps_a, maps_b : array-like of shape (n_images, H, W) or (H, W)
        E.g. the AIS heatmaps of the same images from two networks.

    Returns
    -------
    match : ndarray of shape (n_images,), or float for 2-D input
        Pearson's r over the pixels seen in both maps (finite). NaN where
        either map is constant there (the correlation is undefined).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import heatmap_match
    >>> a = np.random.default_rng(0).random((3, 8, 8))
    >>> heatmap_match(a, 2 * a + 1).round(6)
    array([1., 1., 1.])
    """
    A, B, squeeze = _check_pair(maps_a, maps_b, "maps_a", "maps_b")
    seen = ~np.isnan(A) & ~np.isnan(B)
    A, B = np.where(seen, A, np.nan), np.where(seen, B, np.nan)
    # Tested on the raw values: centring leaves rounding noise in a constant map.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a map with no pixel seen in both: NaN
        defined = (np.nanmax(A, 1) - np.nanmin(A, 1) > 0) & (np.nanmax(B, 1) - np.nanmin(B, 1) > 0)
        A = np.where(seen, A - np.nanmean(A, 1, keepdims=True), 0.0)
        B = np.where(seen, B - np.nanmean(B, 1, keepdims=True), 0.0)
    denom = np.sqrt((A * A).sum(1) * (B * B).sum(1))
    r = np.divide((A * B).sum(1), denom, out=np.full(len(A), np.nan), where=defined & (denom > 0))
    r = np.clip(r, -1.0, 1.0)
    return float(r[0]) if squeeze else r


def prediction_entropy(probs):
    """Shannon entropy (nats) of each row of class probabilities.

    Parameters
    ----------
    probs : array-like of shape (n_images, n_classes)
        Softmax outputs: non-negative rows summing to 1.

    Returns
    -------
    entropy : ndarray of shape (n_images,)

    Examples
    --------
    >>> from sklearn_ais.metrics import prediction_entropy
    >>> prediction_entropy([[0.5, 0.5], [1.0, 0.0]]).round(4)
    array([0.6931, 0.    ])
    """
    return _entropy(probs, "probs")


def _entropy(probs, name):
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must have shape (n_images, n_classes), got {p.shape}")
    _check_finite(p, name)
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError(f"{name} must hold probabilities (non-negative rows summing to 1); pass softmax(logits), not logits")
    return entr(p).sum(1)


def match_entropy_correlation(match, probs_a, probs_b):
    """Spearman correlation of heatmap agreement with prediction uncertainty.

    For each image the uncertainty is the larger of the two networks'
    softmax entropies, ``max(H(probs_a), H(probs_b))``. A negative
    correlation means the heatmaps agree more where both networks are
    confident.

    Parameters
    ----------
    match : array-like of shape (n_images,)
        Per-image agreement, e.g. from :func:`heatmap_match`. Images whose
        match is NaN (a constant heatmap) are left out.
    probs_a, probs_b : array-like of shape (n_images, n_classes)
        Softmax outputs of the two networks (class counts may differ).

    Returns
    -------
    statistic, pvalue : float
        Spearman's rho and its two-sided p-value (:func:`scipy.stats.spearmanr`).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import softmax
    >>> from sklearn_ais.metrics import match_entropy_correlation
    >>> logits = np.random.default_rng(0).normal(size=(20, 5)) * np.linspace(0.1, 5, 20)[:, None]
    >>> probs = softmax(logits, axis=1)
    >>> rho, p = match_entropy_correlation(np.linspace(0, 1, 20), probs, probs)
    >>> bool(rho < 0)
    True
    """
    m = np.asarray(match, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"match must be a non-empty 1-D array, got shape {m.shape}")
    if np.isinf(m).any():
        raise ValueError("match contains inf")
    entropies = []
    for name, probs in (("probs_a", probs_a), ("probs_b", probs_b)):
        entropies.append(_entropy(probs, name))
        if len(entropies[-1]) != len(m):
            raise ValueError(f"{name} has {len(entropies[-1])} rows but match has {len(m)} entries")
    h = np.maximum(*entropies)
    keep = ~np.isnan(m)
    if keep.sum() < 3:
        raise ValueError(f"match has {keep.sum()} defined (non-NaN) entries; a correlation needs at least 3")
    res = stats.spearmanr(m[keep], h[keep])
    return float(res.statistic), float(res.pvalue)


# -- AIS distributions ---------------------------------------------------------
def _check_scores(x, name):
    x = np.asarray(x, dtype=np.float64).ravel()
    _check_finite(x, name)
    return x


def ks_test(ais_a, ais_b):
    """Two-sample Kolmogorov-Smirnov test between two AIS distributions.

    Parameters
    ----------
    ais_a, ais_b : array-like
        AIS values, per map (``AISSelector.scores_``) or per image and map
        (``AISHeatmapper.image_scores_``); flattened. Sizes may differ.

    Returns
    -------
    result : scipy.stats._stats_py.KstestResult
        With ``statistic`` (largest gap between the two empirical CDFs) and
        ``pvalue`` (two-sided), from :func:`scipy.stats.ks_2samp`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import ks_test
    >>> rng = np.random.default_rng(0)
    >>> res = ks_test(rng.normal(size=200), rng.normal(1, 1, size=200))
    >>> bool(res.pvalue < 1e-6)
    True
    """
    return stats.ks_2samp(_check_scores(ais_a, "ais_a"), _check_scores(ais_b, "ais_b"))


def mean_absolute_deviation(a, b):
    """Mean absolute difference between two paired sets of scores.

    Parameters
    ----------
    a, b : array-like of the same shape
        E.g. global AIS of the same maps from two fits.

    Returns
    -------
    mad : float
        ``mean(|a - b|)``.

    Examples
    --------
    >>> from sklearn_ais.metrics import mean_absolute_deviation
    >>> mean_absolute_deviation([0.0, 1.0, 2.0], [1.0, 1.0, 0.0])
    1.0
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}")
    _check_finite(x, "a")
    _check_finite(y, "b")
    return float(np.mean(np.abs(x - y)))
