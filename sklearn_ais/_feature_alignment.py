"""Feature alignment of importance maps with human maps (Fel et al., 2022, harmonization)."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import ndimage, stats
from sklearn.utils import check_random_state

from ._sklearn_compat import Interval, validate_params

__all__ = ["feature_alignment_score", "split_half_map_ceiling"]


def _as_maps(maps, name, ndim, allow_nan=False):
    if isinstance(maps, (list, tuple)) and ndim == 3:
        shapes = {np.shape(m) for m in maps}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all maps must have the same shape, got {sorted(shapes)}")
    M = np.asarray(maps, dtype=np.float64)
    if M.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {M.shape}")
    if M.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isinf(M).any() or (not allow_nan and np.isnan(M).any()):
        raise ValueError(f"{name} contains {'inf' if allow_nan else 'NaN or inf'}")
    if allow_nan and np.isnan(M).all(axis=tuple(range(1, M.ndim))).any():
        raise ValueError(f"{name} holds a map of nothing but NaN (no pixel seen)")
    return M


def _resize(maps, size):
    """Bilinear resize of (n, h, w) float maps to ``size``, as heatmaps are; NaN (not seen) keeps its place."""
    from ._geometry import resize_with_nan  # torch is imported only when maps are compared

    return resize_with_nan(maps, tuple(size))


def _blur(maps, sigma):
    """Gaussian blur of (n, h, w) maps; NaN pixels are left out (normalised convolution) and stay NaN."""
    seen = ~np.isnan(maps)
    sig = (0, float(sigma), float(sigma))
    if seen.all():
        return ndimage.gaussian_filter(maps, sigma=sig, mode="reflect")
    value = ndimage.gaussian_filter(np.where(seen, maps, 0.0), sigma=sig, mode="reflect")
    weight = ndimage.gaussian_filter(seen.astype(np.float64), sigma=sig, mode="reflect")
    return np.where(seen, value / np.maximum(weight, 1e-12), np.nan)


def _rowwise_spearman(A, B):
    """Spearman correlation of each row of A with the same row of B (n, m).

    Returns NaN where ``B``'s row is constant and 0 where only ``A``'s is
    (a constant model map carries no spatial information). Pixels where ``A``
    is NaN (not seen by the network) are left out of that row.
    """
    if np.isnan(A).any():
        return np.array([_rowwise_spearman(a[~np.isnan(a)][None], b[~np.isnan(a)][None])[0] for a, b in zip(A, B)])
    ra = stats.rankdata(A, axis=1)
    rb = stats.rankdata(B, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.einsum("ij,ij->i", ra, rb) / (na * nb)
    r = np.where(na == 0, 0.0, r)
    r = np.where(nb == 0, np.nan, r)
    return np.clip(r, -1.0, 1.0)


@validate_params(
    {"human_maps": ["array-like"], "n_splits": [Interval(Integral, 1, None, closed="left")],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def split_half_map_ceiling(human_maps, n_splits=20, random_state=0) -> float:
    """Inter-rater ceiling of importance maps from random split halves of the raters.

    For each split the raters are shuffled into two halves; the per-image
    Spearman correlation of the two half-mean maps is averaged over images
    and over splits (``r``) and Spearman-Brown corrected: ``2 r / (1 + r)``,
    the expected reliability of the mean of all raters.

    Parameters
    ----------
    human_maps : array-like of shape (n_raters, n_images, H, W)
    n_splits : int, default=20
    random_state : int, RandomState instance or None, default=0

    Returns
    -------
    ceiling : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import split_half_map_ceiling
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.random((4, 8, 8))
    >>> raters = truth + 0.5 * rng.random((6, 4, 8, 8))
    >>> bool(0.5 < split_half_map_ceiling(raters) <= 1)
    True
    """
    M = _as_maps(human_maps, "human_maps", 4)
    n_raters = M.shape[0]
    if n_raters < 2:
        raise ValueError("a split-half ceiling needs at least 2 raters")
    rng = check_random_state(random_state)
    flat = M.reshape(n_raters, M.shape[1], -1)
    rs = []
    for _ in range(n_splits):
        perm = rng.permutation(n_raters)
        half = n_raters // 2
        a, b = flat[perm[:half]].mean(axis=0), flat[perm[half:]].mean(axis=0)
        r = _rowwise_spearman(a, b)
        if np.isnan(r).all():
            continue
        rs.append(np.nanmean(r))
    if not rs:
        raise ValueError("every human map is constant: no split-half ceiling can be computed")
    r = float(np.mean(rs))
    return float(2 * r / (1 + r)) if r > -1 else -1.0


@validate_params(
    {"model_maps": ["array-like"], "human_maps": ["array-like"], "sigma": [None, Interval(Real, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def feature_alignment_score(
    human_maps,
    model_maps,
    *,
    sigma=None,
    ceiling=None,
    n_splits=20,
    random_state=0,
    return_per_image=False,
):
    """Feature alignment of model importance maps with human maps (harmonization).

    The Spearman correlation between the human and the model importance map
    of each image (over pixels), averaged over images and divided by the
    human inter-rater ceiling (Fel et al., 2022).

    Parameters
    ----------
    human_maps : array-like of shape (n_images, H, W) or (n_raters, n_images, H, W)
        Human importance maps (e.g. ClickMe), either the group map per image
        or one map per rater (then the group map is their mean and the
        ceiling can be computed from split halves).
    model_maps : array-like of shape (n_images, h, w)
        Model importance maps (AIS heatmaps, attention maps...). Resized
        bilinearly to ``(H, W)`` when their size differs. NaN marks pixels
        the network never saw (outside its crop): they are left out of the
        image's correlation (and of the blur).
    sigma : float or None, default=None
        Standard deviation (pixels, at ``(H, W)``) of a Gaussian blur applied
        to the model maps before the comparison (``scipy.ndimage.gaussian_filter``,
        ``mode="reflect"``). ``None`` or 0: no blur.
    ceiling : float, None or "none", default=None
        The score is divided by it. ``None``: the split-half ceiling of
        per-rater ``human_maps`` (:func:`split_half_map_ceiling`), or 1 for
        group maps. ``"none"``: no normalisation.
    n_splits, random_state :
        Random rater splits of the split-half ceiling.
    return_per_image : bool, default=False
        Also return the per-image correlations and the ceiling.

    Returns
    -------
    score : float
        ``mean_i rho_i / ceiling``. Images whose human map is constant are
        left out (warned); a constant model map scores 0.
    per_image : ndarray of shape (n_images,)
        Only with ``return_per_image=True``: ``rho_i`` (NaN where skipped).
    ceiling : float
        Only with ``return_per_image=True``.

    References
    ----------
    Fel, T., Felipe, I., Linsley, D., & Serre, T. (2022). Harmonizing the
    object recognition strategies of deep neural networks with humans.
    NeurIPS 35.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import spearmanr
    >>> from sklearn_ais.metrics import feature_alignment_score
    >>> rng = np.random.default_rng(0)
    >>> human, model = rng.random((3, 6, 6)), rng.random((3, 6, 6))
    >>> score = feature_alignment_score(human, model)
    >>> ref = np.mean([spearmanr(h.ravel(), m.ravel()).statistic for h, m in zip(human, model)])
    >>> bool(np.isclose(score, ref))
    True
    """
    human = np.asarray(human_maps)
    if human.ndim == 4:
        raters = _as_maps(human, "human_maps", 4)
        group = raters.mean(axis=0)
    elif human.ndim == 3:
        raters = None
        group = _as_maps(human, "human_maps", 3)
    else:
        raise ValueError(f"human_maps must have shape (n_images, H, W) or (n_raters, n_images, H, W), got {human.shape}")
    model = _as_maps(model_maps, "model_maps", 3, allow_nan=True)
    if model.shape[0] != group.shape[0]:
        raise ValueError(f"model_maps has {model.shape[0]} images but human_maps has {group.shape[0]}")
    model = _resize(model, group.shape[1:])
    if sigma is not None:
        if not np.isfinite(sigma):
            raise ValueError(f"sigma must be finite, got {sigma!r}")
        if sigma > 0:
            model = _blur(model, sigma)

    if isinstance(ceiling, str):
        if ceiling != "none":
            raise ValueError(f"ceiling must be a positive number, None or 'none', got {ceiling!r}")
        ceil = 1.0
    elif ceiling is None:
        ceil = split_half_map_ceiling(raters, n_splits, random_state) if raters is not None else 1.0
    else:
        if not isinstance(ceiling, Real) or isinstance(ceiling, bool) or not np.isfinite(ceiling) or ceiling <= 0:
            raise ValueError(f"ceiling must be a positive number, None or 'none', got {ceiling!r}")
        ceil = float(ceiling)
    if ceil <= 0:
        raise ValueError(f"the inter-rater ceiling is {ceil:.3g} (<= 0): human maps disagree; pass ceiling='none'")

    rho = _rowwise_spearman(model.reshape(len(model), -1), group.reshape(len(group), -1))
    if np.isnan(rho).all():
        raise ValueError("every human map is constant: no correlation can be computed")
    if np.isnan(rho).any():
        warnings.warn(
            f"{int(np.isnan(rho).sum())} image(s) have a constant human map and are left out", UserWarning, stacklevel=2
        )
    score = float(np.nanmean(rho) / ceil)
    if return_per_image:
        return score, rho, ceil
    return score
