"""
Where is the aligned information? AIS heatmaps vs Grad-CAM on 92 photographs
============================================================================

For each of the 92 object photographs of Kriegeskorte et al. (2008), which
pixels carry the information that lets EfficientNet-Lite0 agree with 16
people's similarity judgments (Mur et al., 2013)?

* :class:`~sklearn_ais.AISSelector` keeps the feature maps that raise the
  second-order isomorphism (2OI) with the human similarity matrix.
* :class:`~sklearn_ais.AISHeatmapper` scores each selected map *per image*:
  ablate map k in image t only and measure how much row t of the model's
  similarity matrix loses agreement with row t of the human one. The heatmap
  is the AIS-weighted sum of the maps, mapped back onto the photograph.
* Grad-CAM (:func:`sklearn_ais.attention.attention_maps`) explains the
  network's own top-1 ImageNet class from the same layer. Do the two agree?
  :func:`~sklearn_ais.metrics.relative_risk` (top 5/10/15 % pixels; 1 =
  chance) and :func:`~sklearn_ais.metrics.precision_recall` say how much;
  pairing each AIS heatmap with the Grad-CAM map of *another* image gives
  the overlap expected from a shared centre bias alone.

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_heatmaps_real_photos.py [OUTPUT_DIR]``
(without the variable the data are downloaded once; about 1-2 minutes on
2 CPU cores). Saves ``heatmap_grid.png``, ``ais_vs_gradcam.png`` and
``top_contours.png``.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer
from sklearn_ais.attention import attention_maps
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.metrics import precision_recall, precision_recall_auc, relative_risk
from sklearn_ais.plotting import plot_heatmap_grid, plot_top_contours, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

# %%
# Data and feature maps
data = load_kriegeskorte92()
category = data.categories["category"].to_numpy()
transformer = DNNFeatureMapTransformer().fit(data.images)
maps = transformer.transform(data.images)
print(f"{len(data.images)} photographs -> {maps}")

# %%
# Select maps on all 92 images (held-out validation: see plot_selector_cross_validation.py),
# then per-image AIS of the selected maps.
selector = AISSelector().fit(maps, data.similarity)
print(f"2OI all maps {selector.baseline_score_:.3f}; {selector.n_features_to_select_} maps kept, "
      f"2OI {selector.path_scores_[selector.n_features_to_select_ - 1]:.3f}")
heatmapper = AISHeatmapper(keep=selector.support_).fit(maps, data.similarity)
ais = heatmapper.transform(maps)  # (92, 175, 175) in [0, 1], on the photographs' own pixels
print(f"AIS heatmaps: {ais.shape}")

# %%
# A grid of overlays: four images of each of the six categories.
show = np.concatenate([np.flatnonzero(category == c)[::3][:4] for c in dict.fromkeys(category)])
fig = plot_heatmap_grid(data.images[show], ais[show], ncols=8, titles=[f"{i}: {category[i]}" for i in show])
fig.suptitle("AIS heatmaps of the selected maps (red = most important for human-aligned similarity)", y=1.01)
save_figure(fig, out / "heatmap_grid.png", dpi=90)
plt.close(fig)

# %%
# Grad-CAM on the same layer and the same network input, for the network's top-1 class.
gradcam = attention_maps(transformer, data.images, method="gradcam")
tops = (5, 10, 15)
rr = relative_risk(ais, gradcam, top=tops)  # (92, 3)
# Null: each AIS heatmap against the Grad-CAM map of another image (centre bias only).
other = np.roll(np.arange(len(ais)), 1)
rr_null = relative_risk(ais, gradcam[other], top=tops)
for j, p in enumerate(tops):
    print(f"relative risk, top {p:2d} %: median {np.median(rr[:, j]):.2f} "
          f"(other image's Grad-CAM: {np.median(rr_null[:, j]):.2f}; chance 1)")

percentiles = np.arange(1, 100, 2)
precision, recall = precision_recall(ais, gradcam, target_top=10, percentiles=percentiles)
p_null, r_null = precision_recall(ais, gradcam[other], target_top=10, percentiles=percentiles)
auc, auc_null = precision_recall_auc(precision, recall), precision_recall_auc(p_null, r_null)
print(f"precision-recall AUC (AIS predicting Grad-CAM's top 10 %): {auc.mean():.3f} "
      f"(other image: {auc_null.mean():.3f})")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
pos = np.arange(len(tops))
ax1.boxplot([rr[:, j] for j in pos], positions=pos - 0.18, widths=0.3, patch_artist=True,
            boxprops=dict(facecolor="C0", alpha=0.6), medianprops=dict(color="k"))
ax1.boxplot([rr_null[:, j] for j in pos], positions=pos + 0.18, widths=0.3, patch_artist=True,
            boxprops=dict(facecolor="0.7"), medianprops=dict(color="k"))
ax1.axhline(1, color="0.3", linestyle="--", linewidth=1)
ax1.set_xticks(pos, [f"top {p} %" for p in tops])
ax1.set_ylabel("relative risk (AIS top → Grad-CAM top)")
ax1.legend([plt.Rectangle((0, 0), 1, 1, fc="C0", alpha=0.6), plt.Rectangle((0, 0), 1, 1, fc="0.7")],
           ["same image", "other image (centre bias)"], fontsize="small")
ax2.plot(recall.mean(0), precision.mean(0), "o-", ms=3, label=f"same image (AUC {auc.mean():.2f})")
ax2.plot(r_null.mean(0), p_null.mean(0), "o-", ms=3, color="0.5", label=f"other image (AUC {auc_null.mean():.2f})")
ax2.axhline(0.10, color="0.3", linestyle="--", linewidth=1, label="chance (10 %)")
ax2.set_xlabel("recall of Grad-CAM's top 10 %")
ax2.set_ylabel("precision")
ax2.set_title("AIS top q % pixels, q = 1..99 (mean of 92 images)", fontsize="small")
ax2.legend(fontsize="small")
fig.tight_layout()
save_figure(fig, out / "ais_vs_gradcam.png")
plt.close(fig)

# %%
# Top 5/10/15 % regions of both maps on a few images.
few = [12, 40, 52, 80]  # a human face, an animal face, a fruit, an object
fig, axes = plt.subplots(1, len(few), figsize=(3.2 * len(few), 3.4))
for ax, i in zip(axes, few):
    plot_top_contours(data.images[i], {"AIS": ais[i], "Grad-CAM": gradcam[i]}, top=tops, ax=ax)
    ax.set_title(f"{i}: {category[i]}", fontsize="small")
    if ax is not axes[-1]:
        ax.get_legend().remove()
fig.tight_layout()
save_figure(fig, out / "top_contours.png")
plt.close(fig)
print(f"figures in {out}/")
