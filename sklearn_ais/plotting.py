"""Figures: heatmap overlays, top-region contours, the selection path, AIS histograms.

Matplotlib is imported inside each function, so ``import sklearn_ais`` stays
light. Every function returns the matplotlib ``Axes`` or ``Figure`` it drew
on; :func:`save_figure` writes it to disk. Images may be ``uint8`` (0..255)
or float (0..1), RGB ``(H, W, 3)`` or grayscale ``(H, W)``; heatmaps are
``(H, W)`` on the same geometry (as returned by
:class:`~sklearn_ais.AISHeatmapper` and
:func:`~sklearn_ais.attention.attention_maps`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._map_metrics import top_mask
from ._stats import nan_mean_sd

__all__ = [
    "plot_ais_histogram",
    "plot_comparison",
    "plot_heatmap_grid",
    "plot_overlay",
    "plot_path",
    "plot_top_contours",
    "save_figure",
]

# Colours that stay visible on natural photographs, one per map.
_MAP_COLORS = ("#ff2020", "#00c8ff", "#ffd700", "#40e040", "#ff8c00", "#c060ff")
_LEVEL_STYLES = ("solid", "dashed", "dotted", "dashdot")


# How each comparison reads on an axis.
COMPARISON_LABELS = {
    "spearman": "Spearman ρ",
    "pearson": "Pearson r",
    "pearson_r2": "Pearson r²",
    "kendall_tau_a": "Kendall τa",
    "rho_a": "Spearman ρa",
}


def plain_text(text) -> str:
    """User text (file names, labels) for matplotlib: ``$`` escaped, so ``$x$`` is never read as mathtext,
    and undecodable bytes of file names replaced.

    Parameters
    ----------
    text : object

    Returns
    -------
    text : str
    """
    from ._files import display_name

    return display_name(text).replace("$", r"\$")


def _axes(ax, figsize=(4, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _as_image(image, name="image") -> np.ndarray:
    """An array imshow draws faithfully: (H, W) gray, or (H, W, 3) uint8 / float in [0, 1].

    A PIL image goes through the package's one image reader (EXIF orientation applied, the pixel range
    rule of arrays), so an overlay is drawn on the pixels the heatmap was computed from.
    """
    if _is_pil(image):
        from .backbones._preprocess import _pil_to_rgb

        image = np.asarray(_pil_to_rgb(image, name))
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (1, 4):
        img = img[..., 0] if img.shape[2] == 1 else img[..., :3]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or 0 in img.shape:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 3), got {np.shape(image)}")
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ValueError(f"{name} contains NaN or inf")
        if img.min() < -1e-3 or img.max() > 1 + 1e-3:
            raise ValueError(f"float {name} values must lie in [0, 1]; for 0..255 values pass uint8")
        return np.clip(img, 0.0, 1.0)  # rounding noise only
    if img.dtype == bool or not np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"{name} must be uint8 (0..255) or float (0..1), got dtype {img.dtype}")
    if img.min() < 0 or img.max() > 255:
        raise ValueError(f"integer {name} values must lie in 0..255")
    return img.astype(np.uint8)


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


def _as_heatmap(heatmap, shape, name="heatmap") -> np.ndarray:
    h = np.asarray(heatmap, dtype=np.float64)
    if h.shape != tuple(shape):
        raise ValueError(
            f"{name} must have the image's shape {tuple(shape)}, got {h.shape}; "
            "map heatmaps to the original geometry first (AISHeatmapper does by default)"
        )
    if not np.isfinite(h).all():
        raise ValueError(f"{name} contains NaN or inf")
    return h


def plot_overlay(image, heatmap, ax=None, alpha=0.5, cmap="inferno"):
    """Draw a heatmap over an image.

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W), or PIL image
        ``uint8`` or float in [0, 1]; a PIL image is read as every image
        is (its EXIF orientation applied).
    heatmap : array-like of shape (H, W)
        Drawn on a fixed [0, 1] colour scale when it lies in [0, 1] (so
        overlays of different images are comparable), else autoscaled.
    ax : matplotlib Axes, optional
        Default: a new figure.
    alpha : float, default=0.5
        Opacity of the heatmap.
    cmap : str or Colormap, default="inferno"
        A perceptually uniform colormap by default: lightness grows with the
        value, and no hue of the map can be mistaken for an object's colour
        (as with ``"jet"`` over coloured objects).

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on: the image, then the heatmap over it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.plotting import plot_overlay
    >>> ax = plot_overlay(np.zeros((20, 30, 3), dtype=np.uint8), np.random.default_rng(0).random((20, 30)))
    >>> len(ax.images)
    2
    """
    img = _as_image(image)
    h = _as_heatmap(heatmap, img.shape[:2])
    ax = _axes(ax)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    unit = h.min() >= 0 and h.max() <= 1
    ax.imshow(h, cmap=cmap, alpha=alpha, vmin=0 if unit else None, vmax=1 if unit else None)
    ax.set_axis_off()
    return ax


def plot_top_contours(image, maps, top=(5, 10, 15), ax=None, colors=None, linestyles=_LEVEL_STYLES, linewidth=1.5):
    """Contours of the top regions of several maps on one image.

    One colour per map and one line style per level, as in Figure 5 of
    Truong, Pesenti & Hasson (2024): e.g. the top 5, 10 and 15 % of an AIS
    heatmap and of an attention map. Regions follow
    :func:`sklearn_ais.metrics.top_mask`.

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W)
    maps : dict of str -> array-like of shape (H, W)
        Name (legend label) -> heatmap.
    top : sequence of float, default=(5, 10, 15)
        Percentages of pixels whose region is outlined.
    ax : matplotlib Axes, optional
    colors : sequence of colours, optional
        One per map (cycled). Default: bright colours visible on photos.
    linestyles : sequence of str, default=("solid", "dashed", "dotted", "dashdot")
        One per level (cycled), in the order of ``top``.
    linewidth : float, default=1.5

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on, with a legend of maps (colours) and levels (line styles).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.plotting import plot_top_contours
    >>> yy, xx = np.mgrid[:40, :40]
    >>> maps = {"AIS": -((yy - 10) ** 2 + (xx - 10) ** 2.0), "Grad-CAM": -((yy - 25) ** 2 + (xx - 28) ** 2.0)}
    >>> ax = plot_top_contours(np.full((40, 40, 3), 0.5), maps)
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['AIS', 'Grad-CAM', 'top 5 %', 'top 10 %', 'top 15 %']
    """
    from matplotlib.lines import Line2D

    img = _as_image(image)
    if not isinstance(maps, dict) or not maps:
        raise ValueError("maps must be a non-empty dict of name -> heatmap")
    levels = [top] if np.ndim(top) == 0 else list(top)
    if not levels:
        raise ValueError("top must hold at least one percentage")
    colors = list(colors) if colors is not None else list(_MAP_COLORS)
    styles = list(linestyles)
    ax = _axes(ax)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    handles = []
    for i, (name, heatmap) in enumerate(maps.items()):
        h = _as_heatmap(heatmap, img.shape[:2], name=f"maps[{name!r}]")
        color = colors[i % len(colors)]
        for j, p in enumerate(levels):
            mask = top_mask(h, p).astype(float)
            if mask.min() < mask.max():  # a region covering the whole image has no contour
                ax.contour(mask, levels=[0.5], colors=[color], linestyles=[styles[j % len(styles)]], linewidths=linewidth)
        handles.append(Line2D([], [], color=color, linestyle="solid", linewidth=linewidth, label=plain_text(name)))
    for j, p in enumerate(levels):
        handles.append(Line2D([], [], color="0.3", linestyle=styles[j % len(styles)], linewidth=linewidth, label=f"top {p:g} %"))
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.7)
    ax.set_axis_off()
    return ax


def plot_heatmap_grid(images, heatmaps, ncols=8, titles=None, alpha=0.5, cmap="inferno", colorbar=True):
    """Overlays of heatmaps on their images, in a grid.

    Parameters
    ----------
    images : sequence of array-like
        ``n`` images (a list, or an array of shape (n, H, W, 3)).
    heatmaps : sequence of array-like
        ``n`` heatmaps, each the shape of its image.
    ncols : int, default=8
        Panels per row (fewer when there are fewer images).
    titles : sequence of str, optional
        One per image.
    alpha, cmap
        See :func:`plot_overlay`.
    colorbar : bool, default=True
        A colour bar for the [0, 1] scale, labelled "heatmap (scaled to
        [0, 1] within each image)".

    Returns
    -------
    fig : matplotlib Figure
        With one Axes per image (and one for the colour bar).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.plotting import plot_heatmap_grid
    >>> rng = np.random.default_rng(0)
    >>> fig = plot_heatmap_grid(rng.random((5, 16, 16, 3)), rng.random((5, 16, 16)), ncols=3)
    >>> len(fig.axes)  # five panels and the colour bar
    6
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("images is empty")
    if len(heatmaps) != n:
        raise ValueError(f"got {n} images but {len(heatmaps)} heatmaps")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {n} images but {len(titles)} titles")
    if int(ncols) < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = min(int(ncols), n)
    nrows = -(-n // ncols)
    # Panels 2 inches wide, as tall as the typical image's aspect ratio asks.
    aspect = float(np.median([np.shape(im)[0] / np.shape(im)[1] for im in images]))
    fig = plt.figure(figsize=(2 * ncols, (2 * aspect + (0.3 if titles is not None else 0)) * nrows))
    axes = []
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        plot_overlay(images[i], heatmaps[i], ax=ax, alpha=alpha, cmap=cmap)
        if titles is not None:
            ax.set_title(plain_text(titles[i]), fontsize=9)
        axes.append(ax)
    fig.tight_layout()
    if colorbar:
        from matplotlib import cm, colors

        mappable = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
        bar = fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01, shrink=min(1.0, 3.0 / nrows + 0.2))
        bar.set_label("heatmap (scaled to [0, 1] within each image)")
    return fig


def plot_path(path_scores, cv_path_scores=None, n_selected=None, ax=None, xlabel="top-ranked maps kept (t)"):
    """Training (and validation) 2OI along the ranked sweep of maps.

    Parameters
    ----------
    path_scores : array-like of shape (n_maps,) or fitted AISSelector
        2OI when only the top-``t`` maps are kept, ``t = 1 .. n_maps``
        (``AISSelector.path_scores_``). A fitted selector supplies this,
        ``cv_path_scores_`` (when it has one) and ``n_features_to_select_``.
    cv_path_scores : array-like of shape (n_maps,) or (n_splits, n_maps), optional
        Validation 2OI along the same sweep; several splits are drawn as
        their mean with a ±1 standard deviation band.
    n_selected : int, optional
        The chosen ``t``, marked by a vertical line. Default: the selector's
        choice, else the (first) maximum of the validation mean, else of the
        training path.
    ax : matplotlib Axes, optional
    xlabel : str, default="top-ranked maps kept (t)"
        E.g. "top-ranked units kept (t)" for penultimate units.

    Returns
    -------
    ax : matplotlib Axes
        Training path (and validation band), the chosen t marked.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.plotting import plot_path
    >>> t = np.arange(1, 51)
    >>> ax = plot_path(0.6 - (np.log(t) - 2) ** 2 / 20, cv_path_scores=[0.5 - (np.log(t) - 1.8) ** 2 / 20] * 3)
    >>> ax.get_legend_handles_labels()[1]
    ['training', 'validation', 't = 6']
    """
    if hasattr(path_scores, "path_scores_"):
        selector = path_scores
        path_scores = selector.path_scores_
        if cv_path_scores is None:
            cv_path_scores = getattr(selector, "cv_path_scores_", None)
        if n_selected is None:
            n_selected = selector.n_features_to_select_
    path = np.asarray(path_scores, dtype=np.float64)
    if path.ndim != 1 or path.size == 0:
        raise ValueError(f"path_scores must be a non-empty 1-D array, got shape {path.shape}")
    t = np.arange(1, len(path) + 1)
    ax = _axes(ax, figsize=(5, 3.5))
    ax.plot(t, path, color="C0", label="training")
    best = path
    if cv_path_scores is not None:
        cv = np.atleast_2d(np.asarray(cv_path_scores, dtype=np.float64))
        if cv.ndim != 2 or cv.shape[1] != len(path):
            raise ValueError(
                f"cv_path_scores must have shape ({len(path)},) or (n_splits, {len(path)}), got {np.shape(cv_path_scores)}"
            )
        best, sd = nan_mean_sd(cv)  # NaN (undefined 2OI) where every split is undefined
        ax.plot(t, best, color="C1", label="validation")
        if len(cv) > 1:
            ax.fill_between(t, best - sd, best + sd, color="C1", alpha=0.25, linewidth=0)
    if n_selected is None:
        n_selected = int(np.nanargmax(best)) + 1
    ax.axvline(n_selected, color="0.2", linestyle="--", linewidth=1, label=f"t = {n_selected}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("2OI")
    ax.legend(fontsize="small")
    return ax


def plot_ais_histogram(scores, ax=None, bins=50):
    """Histogram of alignment importance scores, with 0 marked.

    Parameters
    ----------
    scores : array-like or fitted AISSelector
        AIS values (flattened), e.g. ``AISSelector.scores_`` (a fitted
        selector supplies its ``scores_``) or ``AISHeatmapper.image_scores_``.
    ax : matplotlib Axes, optional
    bins : int or sequence, default=50
        Passed to :meth:`matplotlib.axes.Axes.hist`.

    Returns
    -------
    ax : matplotlib Axes
        Bars of the score counts; a dashed line at 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.plotting import plot_ais_histogram
    >>> ax = plot_ais_histogram(np.random.default_rng(0).normal(0, 0.01, size=300), bins=20)
    >>> len(ax.patches)
    20
    """
    if hasattr(scores, "scores_"):
        scores = scores.scores_
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("scores is empty")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    ax = _axes(ax, figsize=(5, 3.5))
    ax.hist(s, bins=bins, color="C0", alpha=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))  # AIS values are small: long tick labels would collide
    ax.axvline(0, color="0.2", linestyle="--", linewidth=1)
    ax.set_xlabel("alignment importance score (Δ2OI when the map is set to 0)")
    ax.set_ylabel("number of maps")
    return ax


def save_figure(fig, path, dpi=120):
    """Write a figure (or the figure of an Axes) to disk.

    Parameters
    ----------
    fig : matplotlib Figure or Axes
    path : str or path-like
        Output file; the format follows the extension (PNG without one).
        Parent folders are created.
    dpi : float, default=120

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from sklearn_ais.plotting import plot_ais_histogram, save_figure
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = save_figure(plot_ais_histogram(np.arange(10.0)), Path(d) / "ais.png")
    ...     out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    fig = getattr(fig, "figure", fig)
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure or Axes, got {type(fig).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format=None if path.suffix else "png")
    return path


def plot_comparison(result, *, noise_ceiling=None, ax=None, reference="none"):
    """Bar plot of held-out 2OI per backbone and method (mean ± s.e., folds as dots).

    Parameters
    ----------
    result : AlignmentComparison or DataFrame
        The result of :func:`~sklearn_ais.alignment.compare_alignment` or its
        per-fold ``table`` (the y label then assumes Spearman).
    noise_ceiling : (float, float), optional
        Lower and upper bound, drawn as a grey band; default the result's.
    ax : matplotlib Axes, optional
    reference : str, default="none"
        Method whose bars are drawn in grey.

    Returns
    -------
    ax : matplotlib Axes
        One bar group per backbone, one bar per method.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from .alignment._compare import AlignmentComparison

    comparison = "spearman"
    if isinstance(result, AlignmentComparison):
        comparison = result.comparison
        table = result.table
        if noise_ceiling is None:
            noise_ceiling = result.noise_ceiling
    elif isinstance(result, pd.DataFrame):
        table = result
    else:
        raise TypeError(f"result must be an AlignmentComparison or its table, got {type(result).__name__}")
    backbones = list(dict.fromkeys(table["backbone"]))
    methods = list(dict.fromkeys(table["method"]))
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.6 * len(backbones) * len(methods)), 4.0))
    width = 0.8 / len(methods)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)
    for m, method in enumerate(methods):
        colour = "0.6" if method == reference else colours[m % len(colours)]
        for b, bb in enumerate(backbones):
            vals = table[(table["backbone"] == bb) & (table["method"] == method)]["test_2oi"].to_numpy()
            if not len(vals):
                continue
            x = b - 0.4 + width * (m + 0.5)
            sem = np.std(vals, ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0
            ax.bar(x, vals.mean(), width * 0.9, yerr=sem, color=colour, capsize=3,
                   label=plain_text(method) if b == 0 else None, alpha=0.9)
            ax.scatter(x + rng.uniform(-width / 5, width / 5, len(vals)), vals, s=9, color="k", zorder=3)
    if noise_ceiling is not None:
        lo, hi = noise_ceiling
        ax.axhspan(lo, hi, color="0.85", zorder=0, label="noise ceiling")
    ax.set_xticks(range(len(backbones)))
    ax.set_xticklabels([plain_text(b) for b in backbones])
    ax.set_ylabel(f"held-out 2OI ({COMPARISON_LABELS.get(comparison, comparison)})")
    ax.axhline(0, color="k", lw=0.8)
    top = max(float(table["test_2oi"].max()), noise_ceiling[1] if noise_ceiling is not None else -np.inf)
    ax.set_ylim(top=top + 0.12 * (top - min(0.0, float(table["test_2oi"].min()))) + 0.05)
    ax.legend(frameon=False, fontsize="small", ncol=min(len(methods) + 1, 3), loc="upper left")
    return ax
