"""
Do two networks look at the same places? AIS heatmaps of EfficientNet-Lite0 vs Lite1
====================================================================================

Aim 2 of Truong, Pesenti & Hasson (2024) compares the AIS heatmaps of two
networks on the same images (VGG16 trained on ImageNet vs on Ecoset). The
same analysis, offline, with the two pretrained networks whose weights ship
as packages: EfficientNet-Lite0 and EfficientNet-Lite1, on the 92
photographs of Kriegeskorte et al. (2008) with the human similarity
judgments of Mur et al. (2013).

* For each network, :class:`~sklearn_ais.AISSelector` keeps the feature maps
  that raise the agreement with the human similarity matrix, and
  :class:`~sklearn_ais.AISHeatmapper` draws per-image AIS heatmaps of the
  selected maps, mapped back onto the photographs. Preprocessing is the
  paper's: shorter side resized to the input size, no centre crop
  (``crop=False``), so the heatmaps cover the whole photograph.
* :func:`~sklearn_ais.metrics.heatmap_match`: per-image Pearson correlation
  between the two networks' heatmaps; pairing each image with another
  image's heatmap gives the agreement expected from shared centre bias.
* :func:`~sklearn_ais.metrics.match_entropy_correlation`: do the heatmaps
  agree more where both networks are confident (low maximum of the two
  softmax entropies)?
* :func:`~sklearn_ais.metrics.ks_test` and
  :func:`~sklearn_ais.metrics.mean_absolute_deviation`: are the two
  networks' per-image AIS distributed alike, and how far apart are their
  heatmaps pixel by pixel?

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_compare_networks.py [OUTPUT_DIR]``
(about 2-3 minutes on 2 CPU cores). Saves ``compare_networks.png`` and the
numbers in ``compare_networks.json``.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from sklearn_ais import AISHeatmapper, AISSelector, DNNFeatureMapTransformer
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.metrics import heatmap_match, ks_test, match_entropy_correlation, mean_absolute_deviation
from sklearn_ais.plotting import plot_overlay, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)
data = load_kriegeskorte92()
H = data.similarity
category = data.categories["category"].to_numpy()

# %%
# Each network: maps without a centre crop, selected maps, per-image heatmaps, softmax outputs.
results = {}
for name in ("efficientnet_lite0", "efficientnet_lite1"):
    transformer = DNNFeatureMapTransformer(name, crop=False).fit(None)
    maps = transformer.transform(data.images)
    selector = AISSelector().fit(maps, H)
    heatmapper = AISHeatmapper(keep=selector.support_).fit(maps, H)
    bb = transformer.backbone_
    pixels, _ = bb.preprocess(data.images)
    probs = torch.softmax(bb.predict(pixels), dim=1).numpy()
    results[name] = dict(heatmaps=heatmapper.transform(maps), image_scores=heatmapper.image_scores_,
                         scores=selector.scores_, probs=probs, provenance=transformer.provenance_,
                         baseline=selector.baseline_score_, n_selected=int(selector.n_features_to_select_))
    print(f"{name}: {maps}; 2OI all maps {selector.baseline_score_:.3f}, {selector.n_features_to_select_} "
          f"maps selected; weights {transformer.provenance_['weights']}")

a, b = results["efficientnet_lite0"], results["efficientnet_lite1"]

# %%
# Heatmap agreement, image by image, against the centre-bias null (another image's heatmap).
match = heatmap_match(a["heatmaps"], b["heatmaps"])
other = np.roll(np.arange(len(match)), 1)
match_null = heatmap_match(a["heatmaps"], b["heatmaps"][other])
rho, p_rho = match_entropy_correlation(match, a["probs"], b["probs"])
ks_images = ks_test(a["image_scores"], b["image_scores"])
ks_maps = ks_test(a["scores"], b["scores"])
mad = mean_absolute_deviation(a["heatmaps"], b["heatmaps"])
mad_null = mean_absolute_deviation(a["heatmaps"], b["heatmaps"][other])
print(f"heatmap match (Pearson r per image): median {np.nanmedian(match):.3f} "
      f"(another image's heatmap: {np.nanmedian(match_null):.3f})")
print(f"match vs max entropy of the two networks: Spearman rho {rho:.3f} (p = {p_rho:.3g})")
print(f"KS test, per-image AIS: D = {ks_images.statistic:.3f} (p = {ks_images.pvalue:.3g}); "
      f"per-map AIS: D = {ks_maps.statistic:.3f} (p = {ks_maps.pvalue:.3g})")
print(f"mean absolute deviation of the heatmaps: {mad:.3f} (another image's heatmap: {mad_null:.3f})")

summary = {
    "networks": {k: {"baseline_2oi": float(v["baseline"]), "n_selected": v["n_selected"],
                     "provenance": v["provenance"]} for k, v in results.items()},
    "match_median": float(np.nanmedian(match)), "match_null_median": float(np.nanmedian(match_null)),
    "match_entropy_rho": rho, "match_entropy_p": p_rho,
    "ks_image_scores": {"statistic": float(ks_images.statistic), "pvalue": float(ks_images.pvalue)},
    "ks_map_scores": {"statistic": float(ks_maps.statistic), "pvalue": float(ks_maps.pvalue)},
    "mad_heatmaps": mad, "mad_heatmaps_null": mad_null,
}
(out / "compare_networks.json").write_text(json.dumps(summary, indent=1))

# %%
# The images where the two networks agree most and least, and the distributions.
order = np.argsort(np.nan_to_num(match, nan=-2))
show = [*order[-3:][::-1], *order[:3]]
fig = plt.figure(figsize=(13, 7.5))
for col, i in enumerate(show):
    for row, (label, res) in enumerate((("Lite0", a), ("Lite1", b))):
        ax = fig.add_subplot(3, 6, row * 6 + col + 1)
        plot_overlay(data.images[i], res["heatmaps"][i], ax=ax)
        ax.set_title(f"{label} · {i}: {category[i]}" + (f"\nr = {match[i]:.2f}" if row == 0 else ""),
                     fontsize="x-small")
ax = fig.add_subplot(3, 3, 7)
bins = np.linspace(-1, 1, 31)
ax.hist(match_null[~np.isnan(match_null)], bins=bins, color="0.7", label="other image")
ax.hist(match[~np.isnan(match)], bins=bins, color="C0", alpha=0.7, label="same image")
ax.set_xlabel("heatmap match (Pearson r)")
ax.legend(fontsize="x-small")
ax = fig.add_subplot(3, 3, 8)
entropy = np.maximum(*(-(r["probs"] * np.log(np.clip(r["probs"], 1e-12, 1))).sum(1) for r in (a, b)))
ax.scatter(entropy, match, s=8)
ax.set_xlabel("max softmax entropy of the two networks (nats)")
ax.set_ylabel("heatmap match")
ax.set_title(f"Spearman rho {rho:.2f}", fontsize="small")
ax = fig.add_subplot(3, 3, 9)
for label, res in (("Lite0", a), ("Lite1", b)):
    x = np.sort(res["image_scores"][np.isfinite(res["image_scores"])].ravel())
    ax.plot(x, np.linspace(0, 1, len(x)), label=label)
ax.set_xlim(np.percentile(x, [0.5, 99.5]))
ax.set_xlabel("per-image AIS")
ax.set_ylabel("CDF")
ax.set_title(f"KS D = {ks_images.statistic:.3f}", fontsize="small")
ax.legend(fontsize="x-small")
fig.tight_layout()
save_figure(fig, out / "compare_networks.png", dpi=90)
plt.close(fig)
print(f"figure and numbers in {out}/")
