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
    """Mean training and held-out 2OI along the ranked sweep."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    t = np.arange(1, train_paths.shape[1] + 1)
    for paths, label, color in ((train_paths, "training images", "tab:blue"), (test_paths, "held-out images", "tab:red")):
        m = paths.mean(0)
        se = paths.std(0, ddof=1) / np.sqrt(len(paths)) if len(paths) > 1 else np.zeros_like(m)
        ax.plot(t, m, color=color, label=label)
        ax.fill_between(t, m - se, m + se, color=color, alpha=0.2, lw=0)
    if chosen_t is not None:
        ax.axvline(chosen_t, color="k", ls="--", lw=1, label=f"mean t kept = {chosen_t:.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("maps kept (top t by AIS)")
    ax.set_ylabel("2OI with human similarity")
    ax.legend(frameon=False)
    return fig


def histogram_figure(scores):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.hist(scores, bins=60, color="tab:gray")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("alignment importance score (AIS)")
    ax.set_ylabel("number of maps")
    return fig


def grid_figure(images, heatmaps, titles=None, ncols=8, alpha=0.5):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i])
        ax.imshow(heatmaps[i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out_dir, *, title, summary_lines, cv_result, selector, images, heatmaps, titles=None) -> Path:
    """Write ``report.html`` (and each figure as PNG) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = cv_result.summary
    table = pd.DataFrame(
        {
            "held-out 2OI (Fisher-z mean)": [s.test_score_full, s.test_score_selected],
            "s.e. across folds": [s.test_score_full_sem, s.test_score_selected_sem],
            "maps": [selector.n_features_in_, s.n_selected_mean],
        },
        index=["all maps", "AIS-selected maps"],
    )
    blocks = [
        _figure_block(
            "Cross-validation curve",
            curve_figure(cv_result.train_paths, cv_result.test_paths, s.n_selected_mean),
            "Mean 2OI (± s.e. across folds) when only the top-t maps, ranked on the training images, are kept.",
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
