"""Map heatmaps from the network input back onto the original images.

Preprocessing (see :class:`~sklearn_ais.backbones._preprocess.Preprocessing`)
resizes an ``(orig_h, orig_w)`` image to ``(resized_h, resized_w)`` and feeds
the window of ``input_size`` starting at ``(crop_top, crop_left)`` to the
network. :func:`to_original` undoes this for maps computed on the network
input (or on the coarser feature-map grid): upsample to ``input_size``, paste
the window into an all-zero canvas of the resized size (the network never saw
what lies outside the crop), and resize the canvas to the original size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["maxscale", "minmax", "resize_maps", "stretch_to_original", "to_original"]

_OUTPUTS = ("original", "resized", "input")


def resize_maps(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (n, h, w) maps; antialiased when shrinking.

    Parameters
    ----------
    x : Tensor of shape (n, h, w)
    size : (int, int)

    Returns
    -------
    resized : Tensor of shape (n, *size)
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[:, 0]


def _as_size(input_size, default):
    if input_size is None:
        return tuple(default)
    size = tuple(int(s) for s in np.broadcast_to(np.asarray(input_size), (2,)))
    if min(size) < 1:
        raise ValueError(f"input_size must be positive, got {size}")
    return size


def _as_maps_tensor(x, what="heatmaps") -> torch.Tensor:
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if x.ndim != 3:
        raise ValueError(f"{what} must have shape (n_images, h, w), got {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")
    x = x.double() if x.dtype == torch.float64 else x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x


def _check_geometry(geometry, n: int, output: str) -> np.ndarray:
    if geometry is None:
        raise ValueError(f"geometry is required for output={output!r}")
    geometry = np.asarray(geometry)
    if geometry.shape != (n, 6) or not np.issubdtype(geometry.dtype, np.integer):
        raise ValueError(f"geometry must be an integer array of shape ({n}, 6), got {geometry.dtype} {geometry.shape}")
    if (geometry[:, :4] < 1).any():
        raise ValueError("geometry sizes (orig_h, orig_w, resized_h, resized_w) must be positive")
    return geometry


def _per_image_sizes(input_size, n: int):
    """``input_size`` as an (n, 2) array when it gives one size per image, else None."""
    if input_size is None or np.ndim(input_size) < 2:
        return None
    sizes = np.asarray(input_size)
    if sizes.shape != (n, 2) or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise ValueError(f"input_size must be (H, W) or a positive integer array of shape ({n}, 2), got {sizes.shape}")
    return sizes


def _paste(x: torch.Tensor, geometry: np.ndarray, output: str) -> list:
    """Maps ``x`` (n, H, W) on the network input -> canvases of the resized (or original) images."""
    H, W = x.shape[-2:]
    out = [None] * len(x)
    # Images with the same geometry (the usual case) are resized as one batch.
    keys, inverse = np.unique(geometry, axis=0, return_inverse=True)
    for g, (oh, ow, rh, rw, top, left) in enumerate(keys.tolist()):
        idx = np.flatnonzero(inverse.ravel() == g)
        canvas = x.new_zeros((len(idx), rh, rw))
        # Intersection of the crop window with the canvas (PIL pads a crop
        # that overhangs the image; those pixels have no original).
        t0, t1 = max(top, 0), min(top + H, rh)
        l0, l1 = max(left, 0), min(left + W, rw)
        if t1 > t0 and l1 > l0:
            canvas[:, t0:t1, l0:l1] = x[torch.from_numpy(idx)][:, t0 - top : t1 - top, l0 - left : l1 - left]
        if output == "original":
            canvas = resize_maps(canvas, (oh, ow))
        for j, i in enumerate(idx):
            out[i] = canvas[j].numpy()
    return out


def _stack_if_same(out: list):
    return np.stack(out) if len({o.shape for o in out}) == 1 else out


def to_original(heatmaps, geometry=None, input_size=None, output="original"):
    """Map heatmaps from the network input back onto the original images.

    Parameters
    ----------
    heatmaps : array-like or Tensor of shape (n_images, h, w), or list of 2-D arrays
        Maps on the network input, at any resolution (e.g. the feature-map
        grid): they are first upsampled bilinearly to the input size. A list
        holds maps of different sizes (feature maps of images of different
        aspect ratios, ``crop=False``).
    geometry : array-like of int of shape (n_images, 6), optional
        Per image ``(orig_h, orig_w, resized_h, resized_w, crop_top,
        crop_left)``, as in :attr:`FeatureMaps.geometry
        <sklearn_ais.FeatureMaps>`. Required unless ``output="input"``.
    input_size : int, tuple of int, or array-like of shape (n_images, 2), optional
        ``(H, W)`` of the network input, shared or one per image (as
        :attr:`FeatureMaps.input_size <sklearn_ais.FeatureMaps>`). Default:
        the size of each heatmap.
    output : {"original", "resized", "input"}, default="original"
        Geometry of the result: the original image, the resized image before
        the crop, or the network input.

    Returns
    -------
    maps : ndarray of shape (n_images, H, W) or list of ndarray
        Float maps (float64 for float64 input, else float32). A list of 2-D
        arrays when the results differ in size. Pixels outside the crop
        window are 0 before the final resize to the original size.

    Notes
    -----
    All resizing is bilinear with ``align_corners=False`` (pixel centres,
    as PIL resizes), antialiased when shrinking. Bilinear weights are
    non-negative and sum to 1, so values stay within the input's range.

    Examples
    --------
    A map that is 1 on the left half of a 4 x 4 crop, taken from the centre of
    an 8 x 4 image that was not resized:

    >>> import numpy as np
    >>> from sklearn_ais._geometry import to_original
    >>> m = np.zeros((1, 4, 4)); m[0, :, :2] = 1
    >>> to_original(m, [(8, 4, 8, 4, 2, 0)], (4, 4))[0].astype(int)
    array([[0, 0, 0, 0],
           [0, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]])
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    if isinstance(heatmaps, (list, tuple)):
        items = [_as_maps_tensor(np.asarray(h)[None] if not isinstance(h, torch.Tensor) else h[None],
                                 f"heatmaps[{i}]") for i, h in enumerate(heatmaps)]
        if not items:
            raise ValueError("heatmaps is empty (no maps)")
    else:
        x = _as_maps_tensor(heatmaps)
        items = None
    n = len(items) if items is not None else len(x)
    sizes = _per_image_sizes(input_size, n)
    if output != "input":
        geometry = _check_geometry(geometry, n, output)
    if items is None and sizes is None:  # one batch
        x = resize_maps(x, _as_size(input_size, x.shape[-2:]))
        return x.numpy() if output == "input" else _stack_if_same(_paste(x, geometry, output))
    # Image by image: maps or network inputs of different sizes.
    items = items if items is not None else [x[i : i + 1] for i in range(n)]
    out = []
    for i, xi in enumerate(items):
        xi = resize_maps(xi, sizes[i] if sizes is not None else _as_size(input_size, xi.shape[-2:]))
        out.append(xi[0].numpy() if output == "input" else _paste(xi, geometry[i : i + 1], output)[0])
    return _stack_if_same(out)


def minmax(heatmaps):
    """Rescale each map to [0, 1]; a constant map becomes all zeros.

    Parameters
    ----------
    heatmaps : array-like of shape (n_images, H, W) or (H, W), or list of 2-D arrays

    Returns
    -------
    scaled : ndarray or list of ndarray
        Same structure and shape; ``(x - min) / (max - min)`` per map.
        Never NaN: a constant map (no spatial information) maps to 0.

    Raises
    ------
    ValueError
        A map contains NaN or inf, or the input is empty.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais._geometry import minmax
    >>> minmax(np.array([[[1.0, 3.0]], [[2.0, 2.0]]]))
    array([[[0., 1.]],
    <BLANKLINE>
           [[0., 0.]]])
    """
    if isinstance(heatmaps, (list, tuple)):
        return [minmax(np.asarray(h)) for h in heatmaps]
    x = np.asarray(heatmaps)
    if x.ndim not in (2, 3):
        raise ValueError(f"heatmaps must have shape (n_images, H, W) or (H, W), got {x.shape}")
    if x.size == 0:
        raise ValueError(f"heatmaps is empty (shape {x.shape})")
    x = x.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
    if not np.isfinite(x).all():
        raise ValueError("heatmaps contain NaN or inf")
    lo = x.min(axis=(-2, -1), keepdims=True)
    span = x.max(axis=(-2, -1), keepdims=True) - lo
    return np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)


def stretch_to_original(heatmaps, geometry, input_size):
    """One bilinear resize of each map to its original image, for inputs that were not cropped.

    The single resize of the released code of Truong, Pesenti & Hasson (2024):
    ``cv2.resize(mask, img.size)`` (``viz_heatmap.py``, line 44), whose default
    ``INTER_LINEAR`` is the bilinear resize with pixel centres
    (``align_corners=False``) and no antialiasing, also when shrinking.
    :func:`to_original` instead resizes twice (to the network input, then to
    the original) and antialiases when shrinking.

    Parameters
    ----------
    heatmaps : array-like of shape (n_images, h, w), or list of 2-D arrays
    geometry : array-like of int of shape (n_images, 6)
        As in :func:`to_original`.
    input_size : tuple of int, or array-like of shape (n_images, 2)
        The network inputs: each must be the whole resized image (no crop).

    Returns
    -------
    maps : ndarray of shape (n_images, H, W) or list of ndarray

    Raises
    ------
    ValueError
        An image's network input was a crop of the resized image: stretching
        its maps over the whole image would misplace them.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais._geometry import stretch_to_original
    >>> stretch_to_original(np.array([[[0.0, 1.0]]]), [(1, 4, 1, 2, 0, 0)], (1, 2))
    array([[[0.  , 0.25, 0.75, 1.  ]]])
    """
    items = [np.asarray(h) for h in heatmaps] if isinstance(heatmaps, (list, tuple)) else list(_as_maps_tensor(heatmaps).numpy())
    n = len(items)
    geometry = _check_geometry(geometry, n, "original")
    sizes = _per_image_sizes(input_size, n)
    sizes = sizes if sizes is not None else np.tile(_as_size(input_size, (0, 0)), (n, 1))
    cropped = np.flatnonzero((geometry[:, 4:] != 0).any(axis=1) | (geometry[:, 2:4] != sizes).any(axis=1))
    if len(cropped):
        raise ValueError(
            f"{len(cropped)} image(s) were cropped before the network (indices {cropped[:10].tolist()}): one resize of "
            "their maps to the whole image would misplace them; extract with crop=False, or resize via the input"
        )
    out = []
    for h, (oh, ow) in zip(items, geometry[:, :2].tolist()):
        x = _as_maps_tensor(h[None], "heatmaps")
        if tuple(x.shape[-2:]) != (oh, ow):
            x = F.interpolate(x[:, None], size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)[:, 0]
        out.append(x[0].numpy())
    return _stack_if_same(out)


def maxscale(heatmaps):
    """Divide each map by its maximum, as the released code of Truong et al. (2024) does before its colour map.

    ``overlay / overlay.max()`` (``viz_heatmap.py``, line 45): the values keep
    their sign, a map whose maximum is negative changes sign, and a map whose
    maximum is 0 (where that code divides by zero) becomes all zeros.

    Parameters
    ----------
    heatmaps : array-like of shape (n_images, H, W) or (H, W), or list of 2-D arrays

    Returns
    -------
    scaled : ndarray or list of ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais._geometry import maxscale
    >>> maxscale(np.array([[[-1.0, 2.0]], [[0.0, 0.0]]]))
    array([[[-0.5,  1. ]],
    <BLANKLINE>
           [[ 0. ,  0. ]]])
    """
    if isinstance(heatmaps, (list, tuple)):
        return [maxscale(np.asarray(h)) for h in heatmaps]
    x = np.asarray(heatmaps)
    x = x.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
    top = x.max(axis=(-2, -1), keepdims=True)
    return np.divide(x, top, out=np.zeros_like(x), where=top != 0)
