"""A self-contained HTML report of one analysis (figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

# Heatmaps per page of the report's grid (all images are shown, page after page).
GRID_PAGE = 48


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_block(title: str, fig, caption: str, out_dir, name: str) -> str:
    data = _png(fig)
    if out_dir is not None:
        (Path(out_dir) / f"{name}.png").write_bytes(base64.b64decode(data))
    return (
        f'<figure id="{name}"><h3>{html.escape(title)}</h3>'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def curve_figure(train_paths, test_paths, chosen_t=None, comparison_label="2OI"):
    """Mean training path and held-out paths along the ranked sweep (log t axis).

    Parameters
    ----------
    train_paths, test_paths : ndarray of shape (n_folds, n_maps)
        Training and held-out 2OI along each fold's ranked sweep (NaN where undefined).
    chosen_t : float, optional
        The (mean) number of maps kept, marked by a dashed line.
    comparison_label : str, default="2OI"
        The y label.

    Returns
    -------
    fig : matplotlib Figure
    """
    from ._stats import nan_mean_sd
    from .plotting import plot_path

    ax = plot_path(nan_mean_sd(np.asarray(train_paths, dtype=np.float64))[0], test_paths,
                   n_selected=None if chosen_t is None else int(round(chosen_t)))
    ax.set_xscale("log")
    ax.set_ylabel(comparison_label)
    ax.figure.set_size_inches(6.5, 3.6)
    return ax.figure


def histogram_figure(scores):
    """Histogram of the global AIS of every map.

    Parameters
    ----------
    scores : ndarray of shape (n_maps,)

    Returns
    -------
    fig : matplotlib Figure
    """
    from .plotting import plot_ais_histogram

    return plot_ais_histogram(scores, bins=60).figure


def _resize_to(heatmap, shape):
    from PIL import Image

    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape == tuple(shape[:2]):
        return h
    return np.asarray(Image.fromarray(h).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def grid_figure(images, heatmaps, titles=None, ncols=8):
    """Heatmaps over their images, in a grid (heatmaps resized to the thumbnails).

    Parameters
    ----------
    images : list of ndarray
        RGB thumbnails.
    heatmaps : list of ndarray
        One per image, any resolution.
    titles : list of str, optional
    ncols : int, default=8

    Returns
    -------
    fig : matplotlib Figure
    """
    from .plotting import plot_heatmap_grid

    heatmaps = [_resize_to(h, np.shape(im)) for im, h in zip(images, heatmaps)]
    return plot_heatmap_grid(images, heatmaps, ncols=ncols, titles=titles)


def render_report(result, out_dir=None) -> str:
    """The report of an :class:`~sklearn_ais.workflow.AnalysisResult` as one HTML string.

    Parameters
    ----------
    result : AnalysisResult
    out_dir : path-like, optional
        Also write each figure there as PNG.

    Returns
    -------
    html : str
    """
    from ._files import display_name

    s = result.cv.summary
    sel = result.selector
    table = pd.DataFrame(
        {
            "held-out 2OI (mean over folds)": [s.test_score_full, s.test_score_selected],
            "s.e. across folds": [s.test_score_full_sem, s.test_score_selected_sem],
            "maps (mean over folds)": [f"{sel.n_features_in_:d}", f"{s.n_selected_mean:.1f}"],
        },
        index=["all maps", "AIS-selected maps"],
    )
    titles = [display_name(i) for i in result.ids]
    blocks = [
        _figure_block(
            "Cross-validation curve",
            curve_figure(result.cv.train_paths, result.cv.test_paths, s.n_selected_mean),
            "2OI when only the top-t maps, ranked on each fold's training part, are kept: training (mean over "
            "folds) and held-out ('validation', mean ± s.d. over folds); dashed: mean number kept.",
            out_dir,
            "cv_curve",
        ),
        _figure_block(
            "Alignment importance of every map",
            histogram_figure(sel.scores_),
            "AIS on all images: positive = ablating the map lowers alignment with the human judgments.",
            out_dir,
            "ais_histogram",
        ),
    ]
    n = len(result.images)
    for page, start in enumerate(range(0, n, GRID_PAGE)):
        stop = min(start + GRID_PAGE, n)
        name = "heatmap_grid" if page == 0 else f"heatmap_grid_{page + 1}"
        blocks.append(
            _figure_block(
                f"Where the aligned information is (images {start + 1}-{stop} of {n})",
                grid_figure(result.images[start:stop], result.heatmaps[start:stop], titles[start:stop]),
                "Per-image AIS heatmaps of the selected maps over each image; each heatmap is scaled to [0, 1] "
                "within its own image.",
                out_dir,
                name,
            )
        )
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in result.summary_lines)
    order = "".join(f"<li>{html.escape(t)}</li>" for t in titles)
    blocks.append(f'<details id="image-order"><summary>Image order ({n} images)</summary><ol start="0">{order}</ol></details>')
    provenance = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(display_name(v))}</td></tr>"
        for k, v in result.provenance.items()
    )
    title = html.escape(display_name(result.title))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
figure{{margin:2em 0}}img{{max-width:100%}}figcaption{{color:#555;font-size:90%}}</style></head>
<body><h1>{title}</h1><ul>{lines}</ul>
<h2>Held-out alignment: all maps vs AIS-selected maps</h2>
{table.to_html(float_format=lambda v: f"{v:.3f}")}
<p>Selected vs all maps over {int(s.n_folds)} folds, on Fisher z values: corrected resampled t-test (Nadeau &amp;
Bengio, 2003, for repeated cross-validation) t = {s.t_statistic:.2f}, p = {s.p_value:.2g}; the plain paired t-test,
which ignores that the folds share training images and is optimistic, gives p = {s.p_paired_t:.2g}.</p>
{"".join(blocks)}
<section id="provenance"><h2>Provenance</h2><table>{provenance}</table></section>
</body></html>"""
