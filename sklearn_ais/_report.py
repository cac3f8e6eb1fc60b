"""A self-contained HTML report of one analysis (figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_block(title: str, fig, caption: str, out_dir: Path, name: str) -> str:
    data = _png(fig)
    (out_dir / f"{name}.png").write_bytes(base64.b64decode(data))
    return (
        f'<figure id="{name}"><h2>{html.escape(title)}</h2>'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def curve_figure(train_paths, test_paths, chosen_t=None):
    """Mean training path and held-out paths along the ranked sweep (log t axis)."""
    from .plotting import plot_path

    ax = plot_path(np.mean(train_paths, axis=0), test_paths,
                   n_selected=None if chosen_t is None else int(round(chosen_t)))
    ax.set_xscale("log")
    ax.figure.set_size_inches(6.5, 3.6)
    return ax.figure


def histogram_figure(scores):
    from .plotting import plot_ais_histogram

    return plot_ais_histogram(scores, bins=60).figure


def grid_figure(images, heatmaps, titles=None, ncols=8):
    from .plotting import plot_heatmap_grid

    return plot_heatmap_grid(images, heatmaps, ncols=ncols, titles=titles)


def write_report(out_dir, *, title, summary_lines, cv_result, selector, images, heatmaps, titles=None) -> Path:
    """Write ``report.html`` (and each figure as PNG) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = cv_result.summary
    table = pd.DataFrame(
        {
            "held-out 2OI (Fisher-z mean)": [s.test_score_full, s.test_score_selected],
            "s.e. across folds": [s.test_score_full_sem, s.test_score_selected_sem],
            "maps (mean over folds)": [f"{selector.n_features_in_:d}", f"{s.n_selected_mean:.1f}"],
        },
        index=["all maps", "AIS-selected maps"],
    )
    blocks = [
        _figure_block(
            "Cross-validation curve",
            curve_figure(cv_result.train_paths, cv_result.test_paths, s.n_selected_mean),
            "2OI when only the top-t maps, ranked on each fold's training part, are kept: training (mean over "
            "folds) and held-out ('validation', mean ± s.d. over folds); dashed: mean number kept.",
            out_dir,
            "cv_curve",
        ),
        _figure_block(
            "Alignment importance of every map",
            histogram_figure(selector.scores_),
            "AIS on all images: positive = ablating the map lowers alignment with the human judgments.",
            out_dir,
            "ais_histogram",
        ),
        _figure_block(
            "Where the aligned information is",
            grid_figure(images, heatmaps, titles),
            "Per-image AIS heatmaps of the selected maps over each image (red = most important).",
            out_dir,
            "heatmap_grid",
        ),
    ]
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
figure{{margin:2em 0}}img{{max-width:100%}}figcaption{{color:#555;font-size:90%}}</style></head>
<body><h1>{html.escape(title)}</h1><ul>{lines}</ul>
<h2>Held-out alignment: all maps vs AIS-selected maps</h2>
{table.to_html(float_format=lambda v: f"{v:.3f}")}
<p>Paired t-test over {int(s.n_folds)} folds (Fisher z): t = {s.t_statistic:.2f}, p = {s.p_value:.2g}.</p>
{"".join(blocks)}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
