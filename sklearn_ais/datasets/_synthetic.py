"""A synthetic similarity task whose ground truth is known.

Each image shows one flat, saturated object (its *shape* and *colour* are
what a simulated observer uses to judge similarity) on a textured background
(whose type and colours, and the object's position, size and rotation, the
observer ignores). A network's feature maps that respond to the object should
therefore align with the observer, and maps that respond to the background
should not; the object masks give the ground truth for heatmaps.
"""

from __future__ import annotations

import colorsys
from numbers import Integral, Real

import numpy as np
from PIL import Image, ImageDraw
from sklearn.utils import Bunch, check_random_state

from .._sklearn_compat import Interval, validate_params

# Order matters: ``n_shapes`` / ``n_colors`` take the first ones. No shape is
# a rotation of another (rotation is a nuisance variable).
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
# Saturated hues, in degrees; the first four are well separated.
COLORS = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "blue": 240.0,
    "orange": 30.0,
    "cyan": 180.0,
    "purple": 270.0,
    "magenta": 300.0,
}
BACKGROUNDS = ("stripes", "checker", "noise", "gradient", "uniform")
_DEFAULT_BACKGROUNDS = ("stripes", "checker", "noise", "gradient")

_RING_INNER = 0.55  # inner / outer radius of the ring


def _unit_polygon(shape):
    """Outline(s) of a shape centred at 0 with circumradius 1, as (m, 2) arrays."""
    if shape in ("circle", "ring"):
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a, w = 1.0, 0.36  # half-length and half-width of the arms
        pts = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a),
               (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
        pts = np.asarray(pts, dtype=float)
        return pts / np.hypot(a, w)
    raise ValueError(f"unknown shape {shape!r}")


def _polygon_area(pts):
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# Area of each unit shape, to size objects by area (so size carries no shape cue).
_UNIT_AREA = {s: _polygon_area(_unit_polygon(s)) for s in SHAPES}
_UNIT_AREA["ring"] *= 1 - _RING_INNER**2


def _placed_polygon(shape, center, radius, rotation):
    pts = _unit_polygon(shape)
    c, s = np.cos(rotation), np.sin(rotation)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts * radius + np.asarray(center)


def _render_mask(shape, center, area, rotation, image_size):
    """Boolean mask of one object.

    ``center`` is (x, y) in pixels, ``area`` the object's area as a fraction
    of the image, ``rotation`` in radians.
    """
    radius = np.sqrt(area * image_size**2 / _UNIT_AREA[shape])
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in _placed_polygon(shape, center, radius, rotation)], fill=1)
    if shape == "ring":
        inner = _placed_polygon(shape, center, radius * _RING_INNER, rotation)
        draw.polygon([tuple(p) for p in inner], fill=0)
    return np.asarray(canvas, dtype=bool)


def _place(shape, area, rotation, image_size, rng):
    """Random center keeping the whole object inside the image (2-px margin)."""
    margin = 2.0
    radius = np.sqrt(area * image_size**2 / _UNIT_AREA[shape])
    pts = _placed_polygon(shape, (0.0, 0.0), radius, rotation)
    lo = margin - pts.min(axis=0)
    hi = image_size - 1 - margin - pts.max(axis=0)
    # An object too large to move stays centred.
    center = np.where(hi > lo, lo + rng.uniform(size=2) * np.maximum(hi - lo, 0), (image_size - 1) / 2)
    return center


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _background_pair(rng):
    """Two muted colours with a clear brightness difference (high contrast)."""
    v1 = rng.uniform(0.1, 0.45)
    v2 = rng.uniform(0.6, 0.95)
    c1 = _hsv(rng.uniform(), rng.uniform(0.0, 0.6), v1)
    c2 = _hsv(rng.uniform(), rng.uniform(0.0, 0.6), v2)
    return (c1, c2) if rng.uniform() < 0.5 else (c2, c1)


def _render_background(kind, image_size, rng):
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c1, c2 = _background_pair(rng)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        period = size * rng.uniform(0.06, 0.2)
        t = (np.floor(2 * u / period) % 2)[..., None]
    elif kind == "checker":
        cell = size * rng.uniform(0.05, 0.15)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2)[..., None]
    elif kind == "noise":
        # Coloured blobs: a coarse random colour grid, upsampled smoothly.
        grid = int(rng.uniform(4, 12))
        lo, hi = np.minimum(c1, c2), np.maximum(c1, c2)
        coarse = rng.uniform(size=(grid, grid, 3)) * 255.0
        coarse = 0.5 * coarse + 0.5 * (lo + (hi - lo) * rng.uniform(size=(grid, grid, 1)))
        blobs = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC)
        fine = rng.normal(0, 20.0, size=(size, size, 1))
        return np.clip(np.asarray(blobs, dtype=np.float64) + fine, 0, 255)
    elif kind == "gradient":
        t = ((u - u.min()) / max(np.ptp(u), 1e-9))[..., None]
    elif kind == "uniform":
        t = np.zeros((size, size, 1))
    else:  # pragma: no cover - validated earlier
        raise ValueError(kind)
    return c1 * (1 - t) + c2 * t


def _fraction_range(object_size):
    lo, hi = (float(x) for x in object_size)
    if not 0.02 <= lo <= hi <= 0.5:
        raise ValueError(f"object_size must satisfy 0.02 <= min <= max <= 0.5, got {object_size!r}")
    return lo, hi


def _background_types(backgrounds):
    if backgrounds is None:
        return _DEFAULT_BACKGROUNDS
    backgrounds = (backgrounds,) if isinstance(backgrounds, str) else tuple(backgrounds)
    unknown = [b for b in backgrounds if b not in BACKGROUNDS]
    if not backgrounds or unknown:
        raise ValueError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}, got {backgrounds!r}")
    return backgrounds


def _balanced_design(n_images, n_shapes, n_colors, n_backgrounds, rng):
    """Shape, colour and background of every image: the shuffled levels, cycled."""
    combos = np.array([(s, c) for s in range(n_shapes) for c in range(n_colors)])
    reps = -(-n_images // len(combos))
    combo_idx = np.concatenate([rng.permutation(len(combos)) for _ in range(reps)])[:n_images]
    shape_idx, color_idx = combos[combo_idx].T
    reps = -(-n_images // n_backgrounds)
    bg_idx = np.concatenate([rng.permutation(n_backgrounds) for _ in range(reps)])[:n_images]
    return shape_idx, color_idx, bg_idx


def _draw_images(shapes, colors, backgrounds, areas, rotations, image_size, rng):
    """Images, object masks and object centres (in this order of random draws)."""
    n = len(shapes)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    centers = np.empty((n, 2))
    for i in range(n):
        centers[i] = _place(shapes[i], areas[i], rotations[i], image_size, rng)
        masks[i] = _render_mask(shapes[i], centers[i], areas[i], rotations[i], image_size)
        background = _render_background(backgrounds[i], image_size, rng)
        img = np.clip(np.rint(background), 0, 255).astype(np.uint8)
        img[masks[i]] = colors[i]
        images[i] = img
    return images, masks, centers


def _color_similarity(color_names):
    hues = np.deg2rad([COLORS[c] for c in color_names])
    return (1 + np.cos(hues[:, None] - hues[None, :])) / 2


@validate_params(
    {
        "n_images": [Interval(Integral, 4, None, closed="left")],
        "image_size": [Interval(Integral, 16, None, closed="left")],
        "n_shapes": [Interval(Integral, 1, len(SHAPES), closed="both")],
        "n_colors": [Interval(Integral, 1, len(COLORS), closed="both")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "shape_weight": [Interval(Real, 0, None, closed="left")],
        "color_weight": [Interval(Real, 0, None, closed="left")],
        "object_size": [tuple, list, np.ndarray],
        "backgrounds": [None, str, tuple, list],
    },
    prefer_skip_nested_validation=True,
)
def make_similarity_task(
    n_images=48,
    image_size=128,
    n_shapes=4,
    n_colors=4,
    noise=0.1,
    random_state=None,
    *,
    shape_weight=1.0,
    color_weight=1.0,
    object_size=(0.15, 0.35),
    backgrounds=None,
):
    """Generate synthetic images and a simulated observer's similarity matrix.

    Each image shows one flat object of a saturated colour on a textured
    background. The observer's similarity of images ``i`` and ``j`` is::

        S_ij = shape_weight * [shape_i == shape_j]
               + color_weight * C[color_i, color_j] + noise * E_ij

    where ``C = (1 + cos(hue_i - hue_j)) / 2`` is a graded colour similarity
    (1 for the same colour, 0 for opposite hues) and ``E`` is symmetric
    standard normal noise. The diagonal is set to the matrix's maximum. The
    background (its type and colours) and the object's position, area and
    rotation are random and play no part in ``S``: a model aligns with the
    observer by representing the object and ignoring the background, and
    ``masks`` tell where the relevant pixels are.

    Shapes and colours are balanced: the ``n_shapes * n_colors`` combinations
    are cycled in random order, as are the background types.

    Parameters
    ----------
    n_images : int, default=48
        Number of images, at least 4.
    image_size : int, default=128
        Side of the square images in pixels, at least 16.
    n_shapes : int, default=4
        Number of shapes, taken in order from ``("circle", "square",
        "triangle", "star", "cross", "ring")``; between 1 and 6.
    n_colors : int, default=4
        Number of colours, taken in order from ``("red", "yellow", "green",
        "blue", "orange", "cyan", "purple", "magenta")``; between 1 and 8.
    noise : float, default=0.1
        Standard deviation of the observer's noise, >= 0.
    random_state : int, RandomState instance, Generator or None, default=None
        Controls everything random. Pass an int for reproducible output.
        The noise is drawn after the images, so changing ``noise`` with the
        same seed leaves the images unchanged.
    shape_weight : float, default=1.0
        Weight of sharing a shape, >= 0.
    color_weight : float, default=1.0
        Weight of the colour similarity, >= 0.
    object_size : (float, float), default=(0.15, 0.35)
        Range of the object's area as a fraction of the image area (drawn
        uniformly); objects are sized by area so that size carries no cue
        to shape. Within [0.02, 0.5].
    backgrounds : sequence of str or None, default=None
        Background types to cycle through, from ``("stripes", "checker",
        "noise", "gradient", "uniform")``. ``None`` means all but
        ``"uniform"`` (textured, strongly activating backgrounds).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : ndarray of shape (n_images, image_size, image_size, 3), uint8
            The rendered images.
        similarity : ndarray of shape (n_images, n_images), float64
            The observer's similarity, symmetric, diagonal = maximum.
        masks : ndarray of shape (n_images, image_size, image_size), bool
            Object pixels (every one has exactly the object's colour).
        shapes, colors, backgrounds : ndarray of shape (n_images,), str
            Labels of each image.
        centers : ndarray of shape (n_images, 2)
            Object centres (x, y) in pixels.
        areas : ndarray of shape (n_images,)
            Intended object area as a fraction of the image.
        rotations : ndarray of shape (n_images,)
            Object rotation in radians.
        shape_names, color_names : ndarray of str
            The shapes and colours in use.
        color_rgb : ndarray of shape (n_colors, 3), uint8
            RGB value of each colour in ``color_names``.
        color_similarity : ndarray of shape (n_colors, n_colors)
            The matrix ``C`` above.
        DESCR : str
            Description of the task.

    Examples
    --------
    >>> from sklearn_ais.datasets import make_similarity_task
    >>> task = make_similarity_task(n_images=8, image_size=64, random_state=0)
    >>> task.images.shape, task.images.dtype, task.similarity.shape
    ((8, 64, 64, 3), dtype('uint8'), (8, 8))
    >>> bool((task.images[0][task.masks[0]] == task.images[0][task.masks[0]][0]).all())
    True
    """
    if not all(np.isfinite([noise, shape_weight, color_weight])):
        raise ValueError("noise, shape_weight and color_weight must be finite")
    area_lo, area_hi = _fraction_range(object_size)
    backgrounds = _background_types(backgrounds)
    # A constant similarity matrix cannot be correlated with anything.
    informative = (shape_weight > 0 and n_shapes > 1) or (color_weight > 0 and n_colors > 1)
    if not informative and noise == 0:
        raise ValueError(
            "the similarity would be constant: use noise > 0, or a positive weight "
            "on a factor (shape/color) with at least 2 levels"
        )
    if isinstance(random_state, np.random.Generator):
        rng = random_state
    else:
        rng = check_random_state(random_state)

    shape_names = np.array(SHAPES[:n_shapes])
    color_names = np.array(list(COLORS)[:n_colors])
    color_rgb = np.stack([_hsv(COLORS[c] / 360.0, 1.0, 1.0) for c in color_names]).round().astype(np.uint8)
    shape_idx, color_idx, bg_idx = _balanced_design(n_images, n_shapes, n_colors, len(backgrounds), rng)
    areas = rng.uniform(area_lo, area_hi, size=n_images)
    rotations = rng.uniform(0, 2 * np.pi, size=n_images)
    images, masks, centers = _draw_images(
        shape_names[shape_idx], color_rgb[color_idx], [backgrounds[b] for b in bg_idx], areas, rotations,
        image_size, rng,
    )
    color_similarity = _color_similarity(color_names)
    same_shape = (shape_idx[:, None] == shape_idx[None, :]).astype(np.float64)
    similarity = shape_weight * same_shape + color_weight * color_similarity[np.ix_(color_idx, color_idx)]
    eps = rng.normal(size=(n_images, n_images))
    similarity += noise * (eps + eps.T) / np.sqrt(2)  # symmetric, unit variance off the diagonal
    off = ~np.eye(n_images, dtype=bool)
    np.fill_diagonal(similarity, max(similarity[off].max(), shape_weight + color_weight))

    return Bunch(
        images=images,
        similarity=similarity,
        masks=masks,
        shapes=shape_names[shape_idx],
        colors=color_names[color_idx],
        backgrounds=np.array(backgrounds)[bg_idx],
        centers=centers,
        areas=areas,
        rotations=rotations,
        shape_names=shape_names,
        color_names=color_names,
        color_rgb=color_rgb,
        color_similarity=color_similarity,
        DESCR=_DESCR,
    )


_DESCR = """\
.. _similarity_task:

Synthetic similarity task with a known ground truth
---------------------------------------------------

Each image shows one flat object with a saturated colour (red, yellow,
green, blue, ...) and a shape (circle, square, triangle, star, cross, ring)
on a textured background (stripes, checkerboard, coloured noise blobs or a
linear gradient, with random muted colours and orientation). A simulated
observer rates two images as similar when their objects share a shape and
have similar hues: ``S = shape_weight * same_shape + color_weight *
(1 + cos(hue difference)) / 2 + noise``. The object's position, area and
rotation and everything about the background are irrelevant to the observer
but strongly drive a CNN's feature maps, so a network's raw similarity only
partly agrees with the observer and selecting the maps that respond to the
object improves the agreement. ``masks`` mark the object pixels, the ground
truth for alignment heatmaps.
"""
