import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from sklearn_ais import AISSelector  # noqa: E402
from sklearn_ais.plotting import (  # noqa: E402
    plot_ais_histogram,
    plot_heatmap_grid,
    plot_overlay,
    plot_path,
    plot_top_contours,
    save_figure,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scene():
    yy, xx = np.mgrid[:48, :64]
    image = np.stack([xx / 63, yy / 47, 0.5 * np.ones_like(xx, dtype=float)], axis=-1)
    blob_a = np.exp(-((yy - 15) ** 2 + (xx - 18) ** 2) / 60.0)
    blob_b = np.exp(-((yy - 30) ** 2 + (xx - 45) ** 2) / 90.0)
    return image, blob_a, blob_b


def _read_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_overlay_uint8_and_gray(scene, tmp_path):
    image, blob_a, _ = scene
    ax = plot_overlay((image * 255).astype(np.uint8), blob_a)
    assert len(ax.images) == 2 and ax.images[1].get_clim() == (0, 1)
    px = _read_png(save_figure(ax, tmp_path / "overlay.png"))
    assert px.std() > 10  # not a blank canvas
    ax2 = plot_overlay(image[..., 0], 3 * blob_a, alpha=0.3, cmap="viridis")
    assert ax2.images[1].get_clim()[1] == pytest.approx(3 * blob_a.max())
    with pytest.raises(ValueError, match="image's shape"):
        plot_overlay(image, blob_a[:-1])
    with pytest.raises(ValueError, match="image must have shape"):
        plot_overlay(image[..., :2], blob_a)
    with pytest.raises(ValueError, match="pass uint8"):
        plot_overlay(image * 255, blob_a)


def test_top_contours(scene, tmp_path):
    image, blob_a, blob_b = scene
    fig, ax = plt.subplots()
    out = plot_top_contours(image, {"AIS": blob_a, "attention": blob_b}, top=(5, 10, 15), ax=ax)
    assert out is ax
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["AIS", "attention", "top 5 %", "top 10 %", "top 15 %"]
    # one contour set per (map, level), colours by map, line styles by level
    contours = [c for c in ax.collections if hasattr(c, "levels")]
    assert len(contours) == 6
    colors = {tuple(np.round(c.get_edgecolor()[0], 3)) for c in contours}
    assert len(colors) == 2
    px = _read_png(save_figure(fig, tmp_path / "contours.png", dpi=100))
    red = (px[..., 0] > 200) & (px[..., 1] < 80) & (px[..., 2] < 80)
    assert red.sum() > 20  # the first map's contours are drawn in red
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_top_contours(image, {})


def test_heatmap_grid(scene, tmp_path):
    image, blob_a, blob_b = scene
    images = [image, (image * 255).astype(np.uint8), image[:40, :30]]
    heatmaps = [blob_a, blob_b, blob_a[:40, :30]]
    fig = plot_heatmap_grid(images, heatmaps, ncols=2, titles=["a", "b", "c"])
    assert len(fig.axes) == 4  # three panels and the colour bar
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    assert fig.axes[3].get_ylabel() == "heatmap\n(0–1 per image)"
    _read_png(save_figure(fig, tmp_path / "sub" / "grid.png"))
    assert len(plot_heatmap_grid(images, heatmaps, colorbar=False).axes) == 3
    with pytest.raises(ValueError, match="3 images but 2 heatmaps"):
        plot_heatmap_grid(images, heatmaps[:2])


def test_path_and_histogram(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(25, 12))
    H = np.corrcoef(X[:, :4])
    sel = AISSelector(cv=3).fit(X, H)
    ax = plot_path(sel)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["training", "validation", f"t = {sel.n_features_to_select_}"]
    train_line = ax.get_lines()[0]
    np.testing.assert_allclose(train_line.get_ydata(), sel.path_scores_)
    _read_png(save_figure(ax.figure, tmp_path / "path.png"))

    ax = plot_path(sel.path_scores_)
    assert ax.get_legend_handles_labels()[1][-1] == f"t = {int(np.argmax(sel.path_scores_)) + 1}"
    with pytest.raises(ValueError, match="cv_path_scores must have shape"):
        plot_path(sel.path_scores_, cv_path_scores=np.zeros((2, 5)))

    ax = plot_ais_histogram(sel, bins=10)
    assert len(ax.patches) == 10
    assert sum(p.get_height() for p in ax.patches) == 12
    _read_png(save_figure(ax, tmp_path / "hist"))  # no suffix: PNG
    with pytest.raises(ValueError, match="NaN"):
        plot_ais_histogram([0.1, np.nan])


@pytest.mark.parametrize("comparison, label", [("spearman", "Spearman ρ"), ("pearson", "Pearson r")])
def test_comparison_plot_labels_its_comparison(comparison, label):
    import matplotlib

    matplotlib.use("Agg")
    from sklearn_ais import FeatureMaps
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.backbones import PoolingHead
    from sklearn_ais.plotting import plot_comparison

    rng = np.random.default_rng(0)
    maps = rng.random((16, 6, 2, 2)).astype(np.float32)
    H = np.corrcoef(maps[:, :3].mean(axis=(2, 3)))
    res = compare_alignment([("$toy$", FeatureMaps(maps, PoolingHead()))], None, H, methods=("none",), cv=3,
                            comparison=comparison)
    ax = plot_comparison(res)
    assert ax.get_ylabel() == f"held-out 2OI ({label})"
    assert [t.get_text() for t in ax.get_xticklabels()] == [r"\$toy\$"]  # a label is never read as mathtext
    ax.figure.canvas.draw()
    assert plot_comparison(res.table).get_ylabel() == "held-out 2OI (Spearman ρ)"  # a bare table: Spearman
