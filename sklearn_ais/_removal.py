"""Pixel removal for deletion and insertion tests: ROAD imputation, blur, constant fill; control heatmaps.

Everything here takes and returns NumPy arrays; images are float arrays in
[0, 1] of shape ``(H, W, C)`` (or ``(n, H, W, C)``), masks are boolean
``(H, W)`` arrays where ``True`` marks a removed pixel.

Removal methods
---------------
``"road"``
    Noisy linear imputation (Rong et al., 2022, "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML): every removed pixel
    takes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct
    neighbours, 1/12 for the diagonal ones; neighbours outside the image
    are left out), removed neighbours being unknowns themselves. For the set
    ``U`` of removed pixels this is the sparse linear system

    .. math::

        \\Big(\\sum_{q \\in N(p)} w_{pq}\\Big) x_p - \\sum_{q \\in N(p) \\cap U} w_{pq} x_q
        = \\sum_{q \\in N(p) \\setminus U} w_{pq} I_q, \\qquad p \\in U,

    solved for every channel at once; then ``noise * N(0, 1)`` is added to
    each imputed value. The imputed values depend only on the kept pixels,
    so the removed region's content leaks neither through its shape (a
    hard-edged hole) nor through its values. An image with every pixel
    removed has no kept pixel to impute from: it becomes ``fill`` plus noise.
``"blur"``
    Removed pixels take the values of a Gaussian blur of the image
    (``sigma`` in pixels, per channel).
``"constant"``
    Removed pixels take the value ``fill``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve
from sklearn.utils import check_random_state

__all__ = [
    "REMOVALS",
    "area_under_curve",
    "center_bias_maps",
    "noisy_linear_imputation",
    "random_maps",
    "removal_order",
    "remove_pixels",
]

REMOVALS = ("road", "blur", "constant")

# (row offset, column offset) and weight of each neighbour (Rong et al., 2022).
NEIGHBOURS = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)


def _check_image(image, name="image"):
    from PIL import Image

    if isinstance(image, Image.Image):  # the package's one reader: EXIF orientation, the pixel range rule
        from .backbones._preprocess import _pil_to_rgb

        image = _pil_to_rgb(image, name)
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got {np.shape(image)}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_mask(mask, shape, name="mask"):
    """A boolean (H, W) mask of ``shape`` (``True`` = removed); anything else is refused."""
    m = np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"{name} must be a boolean array (True = removed pixel), got dtype {m.dtype}")
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have the image's shape {tuple(shape)}, got {m.shape}")
    return m


def noisy_linear_imputation(image, mask, noise=0.01, random_state=None, fill=0.5):
    """Impute the removed pixels of one image from their neighbours (ROAD; see the module docstring).

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, C)
        Pixel values (any real scale; ``noise`` and ``fill`` are on it).
    mask : array-like of bool of shape (H, W)
        ``True`` for the pixels to remove.
    noise : float, default=0.01
        Standard deviation of the Gaussian noise added to imputed values
        (0: the plain linear imputation).
    random_state : int, RandomState instance or None, default=None
        Draws the noise.
    fill : float, default=0.5
        Value of every pixel when all are removed (nothing to impute from).

    Returns
    -------
    imputed : ndarray of shape (H, W, C), float64
        Kept pixels equal the input exactly; a mask without ``True`` returns
        an unchanged copy (no noise is drawn).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais._removal import noisy_linear_imputation
    >>> img = np.tile(np.linspace(0, 1, 5), (5, 1))  # a horizontal ramp
    >>> mask = np.zeros((5, 5), bool); mask[2, 2] = True
    >>> float(noisy_linear_imputation(img, mask, noise=0)[2, 2, 0])
    0.5
    """
    x = _check_image(image)
    m = check_mask(mask, x.shape[:2])
    H, W, C = x.shape
    out = x.copy()
    flat = m.ravel()
    unknown = np.flatnonzero(flat)
    n_unknown = len(unknown)
    if n_unknown == 0:
        return out
    rng = check_random_state(random_state)
    pixels = out.reshape(H * W, C)
    if n_unknown == H * W:
        pixels[:] = fill
    else:
        var = np.full(H * W, -1, dtype=np.int64)
        var[unknown] = np.arange(n_unknown)
        r, c = np.divmod(unknown, W)
        diag = np.zeros(n_unknown)
        b = np.zeros((n_unknown, C))
        rows, cols, vals = [], [], []
        for (dr, dc), w in NEIGHBOURS:
            rr, cc = r + dr, c + dc
            inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            ids = np.flatnonzero(inside)
            q = rr[inside] * W + cc[inside]
            diag[ids] += w
            known = ~flat[q]
            b[ids[known]] += w * x.reshape(H * W, C)[q[known]]
            rows.append(ids[~known])
            cols.append(var[q[~known]])
            vals.append(np.full(int((~known).sum()), -w))
        rows.append(np.arange(n_unknown))
        cols.append(np.arange(n_unknown))
        vals.append(diag)
        A = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(n_unknown, n_unknown))
        pixels[unknown] = np.asarray(spsolve(A, b)).reshape(n_unknown, C)
    if noise:
        pixels[unknown] += noise * rng.standard_normal((n_unknown, C))
    return out


def remove_pixels(image, mask, method="road", *, noise=0.01, sigma=5.0, fill=0.5, random_state=None):
    """One image with the masked pixels removed by ``method`` (see the module docstring).

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, C)
    mask : array-like of bool of shape (H, W)
        ``True`` for the pixels to remove.
    method : {"road", "blur", "constant"}, default="road"
    noise : float, default=0.01
        ROAD's noise standard deviation.
    sigma : float, default=5.0
        Gaussian blur's standard deviation in pixels (``"blur"``).
    fill : float, default=0.5
        The constant of ``"constant"`` (and of ROAD when every pixel is removed).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    image : ndarray of shape (H, W, C), float64
        Kept pixels are unchanged; with nothing removed, an exact copy.
    """
    if method not in REMOVALS:
        raise ValueError(f"method must be one of {REMOVALS}, got {method!r}")
    if method == "road":
        return noisy_linear_imputation(image, mask, noise=noise, random_state=random_state, fill=fill)
    x = _check_image(image)
    m = check_mask(mask, x.shape[:2])
    out = x.copy()
    if not m.any():
        return out
    if method == "constant":
        out[m] = fill
    else:
        out[m] = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest")[m]
    return out


def removal_order(heatmap, region=None, random_state=None):
    """Pixels of one heatmap by decreasing value, ties in random order.

    Parameters
    ----------
    heatmap : array-like of shape (H, W)
    region : array-like of bool of shape (H, W), optional
        Only these pixels take part (e.g. the ones the network sees).
    random_state : int, RandomState instance or None, default=None
        Breaks ties (a raster order would remove equal pixels top row first).

    Returns
    -------
    order : ndarray of int
        Flat pixel indices, the most important first.

    Examples
    --------
    >>> from sklearn_ais._removal import removal_order
    >>> removal_order([[0.1, 0.9], [0.5, 0.2]]).tolist()
    [1, 2, 3, 0]
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("heatmap contains NaN or inf")
    flat = h.ravel()
    idx = np.arange(flat.size) if region is None else np.flatnonzero(check_mask(region, h.shape, "region"))
    tie = check_random_state(random_state).random_sample(len(idx))
    return idx[np.lexsort((tie, -flat[idx]))]


def random_maps(n_images, shape, resolution=7, random_state=None):
    """Random heatmaps: uniform noise on a coarse grid, upsampled bilinearly.

    A control of the same spatial smoothness as a heatmap drawn from
    ``resolution x resolution`` feature maps; its top x % is a random region
    of exactly the area of any other map's top x % (deletion tests count
    pixels).

    Parameters
    ----------
    n_images : int
    shape : (int, int)
        ``(H, W)`` of the maps.
    resolution : int, default=7
        Side of the coarse grid.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    maps : ndarray of shape (n_images, H, W) in [0, 1]
    """
    rng = check_random_state(random_state)
    H, W = (int(s) for s in shape)
    coarse = rng.random_sample((n_images, resolution, resolution))
    out = ndimage.zoom(coarse, (1, H / resolution, W / resolution), order=1, mode="nearest", grid_mode=True)
    out = out[:, :H, :W]
    lo = out.min(axis=(1, 2), keepdims=True)
    span = out.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(out - lo, span, out=np.zeros_like(out), where=span > 0)


def center_bias_maps(n_images, shape, sigma=0.25):
    """A centre-bias control: an isotropic Gaussian at the image centre.

    Parameters
    ----------
    n_images : int
    shape : (int, int)
    sigma : float, default=0.25
        Standard deviation as a fraction of the shorter side.

    Returns
    -------
    maps : ndarray of shape (n_images, H, W) in (0, 1]
    """
    H, W = (int(s) for s in shape)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    s = sigma * min(H, W)
    g = np.exp(-(((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2) / (2 * s * s)))
    return np.broadcast_to(g / g.max(), (n_images, H, W)).copy()


def area_under_curve(fractions, scores):
    """Normalised area under curves: the trapezoid rule divided by the span of ``fractions``.

    Parameters
    ----------
    fractions : array-like of shape (n_steps,)
        Increasing fractions of removed (or revealed) pixels.
    scores : array-like of shape (..., n_steps)

    Returns
    -------
    auc : ndarray of shape (...)
        The curve's mean height (NaN where a step is NaN).

    Examples
    --------
    >>> from sklearn_ais._removal import area_under_curve
    >>> float(area_under_curve([0, 0.5, 1], [1.0, 0.5, 0.0]))
    0.5
    """
    f = np.asarray(fractions, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if f.ndim != 1 or len(f) < 2 or np.any(np.diff(f) <= 0):
        raise ValueError(f"fractions must be at least 2 increasing values, got {fractions!r}")
    if s.shape[-1] != len(f):
        raise ValueError(f"scores must have {len(f)} steps on their last axis, got shape {s.shape}")
    area = ((s[..., 1:] + s[..., :-1]) / 2 * np.diff(f)).sum(axis=-1)
    return area / (f[-1] - f[0])
