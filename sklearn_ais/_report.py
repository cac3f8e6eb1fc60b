"""A self-contained HTML report of one analysis (figures embedded as PNG), meant to be read and cited.

Sections: a summary; what was computed, in plain words with the formulas; the held-out result and its test;
the cross-validation curve; the distribution of AIS; every image's heatmap (page after page); the image
order; the provenance of every number (package version, backbone, weights and their checksum,
preprocessing, device, command line, input checksums, date).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

# Heatmaps per page of the report's grid (all images are shown, page after page), in rows of GRID_COLUMNS.
GRID_PAGE = 48
GRID_COLUMNS = 6

SECTIONS = ("summary", "what-was-computed", "held-out", "cv_curve", "ais_histogram", "heatmap_grid", "image-order",
            "provenance")


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
                   n_selected=None if chosen_t is None else int(round(chosen_t)),
                   xlabel="top-ranked maps kept, t (log scale)")
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

    finite = np.asarray(scores, dtype=np.float64)
    return plot_ais_histogram(finite[np.isfinite(finite)], bins=60).figure


def _resize_to(heatmap, shape):
    from ._geometry import resize_with_nan

    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape == tuple(shape[:2]):
        return h
    return resize_with_nan(h[None], tuple(shape[:2]))[0]  # NaN (not seen by the network) keeps its place


def grid_figure(images, heatmaps, titles=None, ncols=GRID_COLUMNS):
    """Heatmaps over their images, in a grid (heatmaps resized to the thumbnails), with a colour bar.

    Parameters
    ----------
    images : list of ndarray
        RGB thumbnails.
    heatmaps : list of ndarray
        One per image, any resolution.
    titles : list of str, optional
    ncols : int, default=6

    Returns
    -------
    fig : matplotlib Figure
    """
    from .plotting import plot_heatmap_grid

    heatmaps = [_resize_to(h, np.shape(im)) for im, h in zip(images, heatmaps)]
    return plot_heatmap_grid(images, heatmaps, ncols=max(1, ncols // 2), titles=titles, panels="both")


def _what_was_computed(result) -> str:
    sel = result.selector
    comparison = {"spearman": "Spearman rank correlation ρ", "pearson": "Pearson correlation r",
                  "pearson_r2": "squared Pearson correlation r²"}.get(sel.comparison, sel.comparison)
    items = [
        "<b>Model similarity.</b> Each image goes through the network up to its last convolutional layer; the "
        "layer's K feature maps are turned into an embedding by the network's own head, and the model similarity "
        f"of two images is the {html.escape(sel.similarity)} correlation of their embeddings.",
        "<b>Second-order isomorphism (2OI).</b> The agreement of the model with the people: the "
        f"{comparison} between the upper triangles (every pair of images once) of the model's and the human "
        "similarity matrices. 2OI = 1 means the same ordering of pairs.",
        "<b>Alignment importance score (AIS).</b> AIS<sub>k</sub> = 2OI(all maps) − 2OI(map k set to 0 in every "
        "image): how much of the agreement map k carries. Positive: the map helps; about 0: it does not matter.",
        "<b>Ranked sweep.</b> Maps are ranked by AIS; the 2OI of the top t maps is computed for every t, and the "
        "number kept is the t with the best 2OI on the training images.",
        f"<b>Cross-validation.</b> {html.escape(result.provenance.get('cross-validation', 'image-wise folds'))}: "
        "maps are ranked and t is chosen on the training images of each fold only; the held-out 2OI is computed "
        "on the test images, with all maps and with the selected maps.",
        "<b>Test.</b> Selected vs all maps, fold by fold, on Fisher z values: the corrected resampled t-test "
        "(Nadeau &amp; Bengio, 2003; Bouckaert &amp; Frank, 2004), whose variance accounts for the training images "
        "the folds share; the plain paired t-test, which ignores it, is shown beside it.",
        "<b>Heatmaps.</b> Per-image AIS: map k set to 0 in image i only, and the correlation of row i of the two "
        "matrices (the n − 1 other images). The heatmap of image i is the sum of its selected maps weighted by "
        "their positive per-image AIS, upsampled onto the original image (the network's resize and crop undone) "
        "and scaled to [0, 1] within the image: colours compare regions of one image, not images.",
    ]
    if result.relative_risk is not None:
        items.append(
            "<b>Relative risk.</b> The fraction of an image's top-10 % heatmap pixels that fall on the object, "
            "divided by the object's share of the image: 1 = no better than chance, above 1 = the heatmap points "
            "at the object."
        )
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _held_out(result) -> str:
    s, sel = result.cv.summary, result.selector
    table = pd.DataFrame(
        {
            "held-out 2OI (mean over folds)": [s.test_score_full, s.test_score_selected],
            "s.e. across folds": [s.test_score_full_sem, s.test_score_selected_sem],
            "maps (mean over folds)": [f"{sel.n_features_in_:d}", f"{s.n_selected_mean:.1f}"],
        },
        index=["all maps", "AIS-selected maps"],
    )
    text = (
        f"<p>Selected vs all maps over {int(s.n_folds)} folds: corrected resampled t-test t = {s.t_statistic:.2f}, "
        f"p = {s.p_value:.2g}; the plain paired t-test (optimistic: the folds share training images) gives "
        f"p = {s.p_paired_t:.2g}. Training 2OI of the selected maps: {s.train_score_selected:.3f}.</p>"
    )
    if s.test_score_selected > s.train_score_selected:
        text += (
            "<p><i>The held-out 2OI is above the training 2OI.</i> With few images per test fold the held-out "
            "correlation is computed on few pairs and varies a lot from fold to fold (see the s.e.); it does not "
            "mean the model generalises better than it fits.</p>"
        )
    return table.to_html(float_format=lambda v: f"{v:.3f}") + text


def _heatmap_pages(result, titles, out_dir) -> list[str]:
    n = len(result.images)
    blocks = []
    for page, start in enumerate(range(0, n, GRID_PAGE)):
        stop = min(start + GRID_PAGE, n)
        name = "heatmap_grid" if page == 0 else f"heatmap_grid_{page + 1}"
        blocks.append(_figure_block(
            f"Where the aligned information is: images {start + 1}-{stop} of {n}",
            grid_figure(result.images[start:stop], result.heatmaps[start:stop], titles[start:stop]),
            "Per-image AIS heatmaps of the selected maps, over each image and alone beside it (inferno colour "
            "scale: dark = low, bright = high), each scaled to [0, 1] within its own image; grey hatching: the "
            "part of the photo outside the network's centre crop, never seen by it (NaN in heatmaps.npz, which "
            "holds every image's heatmap at its original resolution).",
            out_dir, name,
        ))
    return blocks


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
    from .plotting import COMPARISON_LABELS

    s, sel = result.cv.summary, result.selector
    titles = [display_name(i) for i in result.ids]
    label = f"2OI ({COMPARISON_LABELS.get(sel.comparison, sel.comparison)})"
    figures = [
        _figure_block(
            "Cross-validation curve", curve_figure(result.cv.train_paths, result.cv.test_paths, s.n_selected_mean, label),
            f"{label} when only the top-t maps, ranked on each fold's training images, are kept: training (mean "
            "over folds) and held-out ('validation', mean ± s.d. over folds); dashed: mean number of maps kept.",
            out_dir, "cv_curve",
        ),
        _figure_block(
            "Alignment importance of every map", histogram_figure(sel.scores_),
            "AIS of every map on all images (the drop in 2OI when the map is set to 0): positive = the map helps "
            "the alignment with the human judgments.", out_dir, "ais_histogram",
        ),
        *_heatmap_pages(result, titles, out_dir),
    ]
    order = "".join(f"<li>{html.escape(t)}</li>" for t in titles)
    provenance = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(display_name(v))}</td></tr>"
        for k, v in result.provenance.items()
    )
    title = html.escape(display_name(result.title))
    banner = ('<p class="banner">The human matrix of this report comes from a <b>simulated observer</b> (a '
              "synthetic task), not from people.</p>") if result.simulated else ""
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in result.summary_lines)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
#provenance td,#provenance th{{text-align:left;font-size:90%}}figure{{margin:2em 0}}img{{max-width:100%}}
figcaption{{color:#555;font-size:90%}}.banner{{background:#fff3cd;border:1px solid #e0c060;padding:8px}}</style>
</head><body><h1>{title}</h1>{banner}
<section id="summary"><ul>{lines}</ul></section>
<section id="what-was-computed"><h2>What was computed</h2>{_what_was_computed(result)}</section>
<section id="held-out"><h2>Held-out alignment: all maps vs AIS-selected maps</h2>{_held_out(result)}</section>
{"".join(figures)}
<details id="image-order"><summary>Image order ({len(titles)} images; the order of every per-image output)</summary>
<ol start="0">{order}</ol></details>
<section id="provenance"><h2>Provenance</h2><table>{provenance}</table></section>
</body></html>"""
