"""
Quickstart: AIS selection on a synthetic similarity task
========================================================

A simulated observer judges 48 synthetic images by the object's shape and
colour only; the textured backgrounds play no part in its judgments. We

1. extract the last-layer feature maps of a pretrained EfficientNet-Lite0
   (offline weights),
2. fit an :class:`~sklearn_ais.AISSelector` on 36 training images: the
   alignment importance score (AIS) of each of the 1280 maps is how much the
   second-order isomorphism (2OI, the rank correlation between the model's and
   the observer's pairwise similarities) drops when that map is set to zero,
3. score all maps vs the selected maps on the 12 held-out images, which the
   selector never saw.

Run: ``python examples/plot_quickstart_synthetic.py [OUTPUT_DIR]`` (under a
minute on 2 CPU cores). Saves ``quickstart_path.png`` and
``quickstart_histogram.png``.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.datasets import make_similarity_task
from sklearn_ais.plotting import plot_ais_histogram, plot_path, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

# %%
# A task with a known ground truth: shape and colour matter, backgrounds do not.
task = make_similarity_task(n_images=48, random_state=0)
print(f"{len(task.images)} images of {task.images.shape[1]}x{task.images.shape[2]} pixels; "
      f"shapes {sorted(set(task.shapes.tolist()))}, colours {sorted(set(task.colors.tolist()))}")

# %%
# Feature maps: (n_images, 1280, 7, 7), plus the network's own head (global average pooling).
maps = DNNFeatureMapTransformer().fit_transform(task.images)
print(maps)

# %%
# Hold out whole images: their rows and columns of the similarity matrix never reach ``fit``.
train, test = train_test_split(np.arange(len(maps)), test_size=0.25, random_state=0)
H = task.similarity
selector = AISSelector().fit(maps[train], H[np.ix_(train, train)])
print(f"training 2OI, all {maps.n_maps} maps: {selector.baseline_score_:.3f}")
print(f"maps kept: {selector.n_features_to_select_} (training 2OI "
      f"{selector.path_scores_[selector.n_features_to_select_ - 1]:.3f})")

H_test = H[np.ix_(test, test)]
full, selected = selector.score_all(maps[test], H_test), selector.score(maps[test], H_test)
print(f"held-out 2OI on {len(test)} new images: all maps {full:.3f}, AIS-selected maps {selected:.3f}")

# %%
# The ranked sweep: training 2OI (used to choose t) and the same sweep on the held-out images.
ax = plot_path(selector.path_scores_, cv_path_scores=selector.path_score(maps[test], H_test),
               n_selected=selector.n_features_to_select_)
ax.set_xscale("log")
ax.legend(["training images", "held-out images", f"t = {selector.n_features_to_select_}"], fontsize="small")
ax.set_title("2OI when only the top-t maps are kept")
save_figure(ax, out / "quickstart_path.png")

# %%
# Most maps barely matter; a few help (AIS > 0) and some hurt (AIS < 0).
ax = plot_ais_histogram(selector)
ax.set_title("alignment importance of the 1280 maps (training images)")
save_figure(ax, out / "quickstart_histogram.png")
print(f"figures in {out}/")
