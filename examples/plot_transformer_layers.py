"""
Transformers: which block's tokens, and where in each image
============================================================

A vision transformer's "feature maps" are the channels of a block's patch
tokens laid out on the patch grid; the CLS token is carried beside them and
never ablated. This example

1. builds a small timm ViT by name (``"timm:test_vit"``) with **random
   weights** (``weights=None``, seeded): no pretrained transformer weights
   install offline, so the network here has learned nothing, and what it
   shows is the machinery, not a finding about ViTs;
2. plants the observer's information in one patch of each image (a textured
   square on a plain background; the observer judges by its texture only);
3. captures the tokens of every block in **one forward pass**
   (``layer="all_blocks"``, a :class:`~sklearn_ais.LayerFeatureMaps`);
4. chooses the block by **nested cross-validation**
   (:func:`~sklearn_ais.model_selection.cross_validate_layers`: inner folds
   choose the layer, outer folds score the AIS-selected channels of the
   chosen layer on held-out images), and reports which block each outer
   fold chose;
5. draws AIS heatmaps of the chosen block, which live on the 10 x 10 patch
   grid and map back onto the images like a CNN's.

With pretrained weights the same code reads, e.g.,
``DNNFeatureMapTransformer("timm:vit_small_patch16_224.dino", weights="DEFAULT")``
(a download; offline, pass the downloaded file as ``weights=PATH``).

Run: ``python examples/plot_transformer_layers.py [OUTPUT_DIR]`` (about a
minute on 2 CPU cores). Saves ``transformer_layers.png`` and
``transformer_heatmaps.png``.
"""

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sklearn_ais import AISHeatmapper, DNNFeatureMapTransformer
from sklearn_ais.datasets import make_planted_patch_task
from sklearn_ais.metrics import relative_risk
from sklearn_ais.model_selection import cross_validate_layers
from sklearn_ais.plotting import plot_heatmap_grid, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

# %%
# A planted-patch task: 40 images, one textured 48 x 48 square each (4 textures), on the ImageNet mean colour.
task = make_planted_patch_task(n_images=40, image_size=160, patch_size=48, n_textures=4, random_state=0)
images, masks, H = task.images, task.masks, task.similarity  # the observer: texture identity, with noise

# %%
# Every block's patch tokens in one pass; the mean of the patch tokens embeds each block (exact pooling kernel).
t = DNNFeatureMapTransformer("timm:test_vit", weights=None, random_state=0, layer="all_blocks", head="mean",
                             crop=False).fit(images)
layers = t.transform(images)
print(layers, "| token pooling:", layers["blocks.0"].token_pooling)

# %%
# The layer chosen on held-out judgments. With random weights every block keeps the planted patch's pixels in its
# residual stream about equally, so the choice varies from fold to fold; with pretrained weights it need not.
res = cross_validate_layers(layers, H, cv=5, inner_cv=5)
table = res["table"]
print(table[["fold", "layer", "test_score_selected", "test_score_full", "n_selected"]].to_string(index=False))
print("chosen:", res["chosen"], "| selected vs all channels, corrected t:", res["test"]["statistic"],
      "p =", res["test"]["p_value"])

fig, ax = plt.subplots(figsize=(6, 3.5))
inner = table[[c for c in table.columns if c.startswith("inner_")]]
for fold, row in inner.iterrows():
    ax.plot(range(len(row)), row.to_numpy(), marker="o", alpha=0.7, label=f"outer fold {fold}")
ax.set_xticks(range(inner.shape[1]))
ax.set_xticklabels([c[len("inner_"):] for c in inner.columns], rotation=30)
ax.set_ylabel("inner held-out 2OI (AIS-selected)")
ax.set_title("random-weight ViT: the block chosen in each outer fold")
ax.legend(fontsize=7)
save_figure(fig, out / "transformer_layers.png")

# %%
# Heatmaps of the most chosen block, on the patch grid mapped back onto the images.
best = max(res["chosen"], key=res["chosen"].get)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    heat = AISHeatmapper(device="cpu").fit(layers[best], H).transform(layers[best])
print(f"{best}: median relative risk of the top 10% on the planted patch:",
      round(float(np.median(relative_risk(heat, masks, top=10))), 2))
fig = plot_heatmap_grid(images[:8], heat[:8], ncols=4)
save_figure(fig, out / "transformer_heatmaps.png")
