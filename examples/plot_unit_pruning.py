"""
Pruning penultimate units to predict human similarity
=====================================================

Tarigopula et al. (2023) pruned the units of a network's penultimate layer to
improve its prediction of human similarity judgments. The same estimator does
this: give :class:`~sklearn_ais.AISSelector` a plain 2-D array
``(n_images, n_units)`` and ablating unit k sets column k to 0.

Here the units are the 1280 pooled features of EfficientNet-Lite0 for the 92
photographs of Kriegeskorte et al. (2008). Because that network's head is a
global average pool, pruning unit k is the same as ablating feature map k:
the scores agree exactly with those computed from the maps.

Is the held-out gain due to *which* units are kept, or merely to keeping
fewer? Each fold also scores random subsets of the same size on the same
held-out images.

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_unit_pruning.py [OUTPUT_DIR]``
(about a minute on 2 CPU cores). Saves ``unit_pruning.png``.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import RepeatedKFold

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.metrics import alignment_score
from sklearn_ais.plotting import plot_path, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)

# %%
# Penultimate units: the pooled embedding, a plain (92, 1280) array.
data = load_kriegeskorte92()
maps = DNNFeatureMapTransformer().fit_transform(data.images)
units = maps.embed()
H = data.similarity
print(f"units: {units.shape}; 2OI with all units {alignment_score(units, H):.3f}")

pruner = AISSelector().fit(units, H)
same = np.allclose(pruner.scores_, AISSelector().fit(maps, H).scores_, atol=1e-10)
print(f"in-sample: {pruner.n_features_to_select_} units kept, 2OI {pruner.score(units, H):.3f}; "
      f"unit scores equal the feature-map scores: {same}")
print(f"pruned embedding for downstream use: {pruner.transform(units).shape}")

# %%
# Held-out images: prune on 4/5 of the images, score on the other 1/5, 5 folds x 2 repeats.
rng = np.random.default_rng(0)
rows = []
for train, test in RepeatedKFold(n_splits=5, n_repeats=2, random_state=0).split(units):
    Htr, Hte = H[np.ix_(train, train)], H[np.ix_(test, test)]
    sel = AISSelector().fit(units[train], Htr)
    k = sel.n_features_to_select_
    random_subsets = [alignment_score(units[np.ix_(test, rng.choice(units.shape[1], k, replace=False))], Hte)
                      for _ in range(20)]
    rows.append((sel.score_all(units[test], Hte), np.mean(random_subsets), sel.score(units[test], Hte), k))
rows = np.array(rows)
for name, col in zip(("all units", f"random {rows[:, 3].mean():.0f} units", "AIS-pruned units"), rows.T):
    print(f"held-out 2OI, {name:>16}: {col.mean():.3f} ± {col.std(ddof=1) / np.sqrt(len(col)):.3f}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
plot_path(pruner, ax=ax2, xlabel="top-ranked units kept (t)")
ax2.set_xscale("log")
ax2.set_title("in-sample ranked sweep (all 92 images)", fontsize="small")
labels = ["all units", "random subset\n(same size)", "AIS-pruned"]
for fold in rows:
    ax1.plot(range(3), fold[:3], color="0.6", linewidth=0.8, marker="o", ms=3)
ax1.plot(range(3), rows[:, :3].mean(0), color="C3", linewidth=2.5, marker="o", label="mean of 10 folds")
ax1.set_xticks(range(3), labels)
ax1.set_ylabel("held-out 2OI (Spearman)")
ax1.set_title("units pruned on training images, scored on held-out images", fontsize="small")
ax1.legend(fontsize="small")
fig.tight_layout()
save_figure(fig, out / "unit_pruning.png")
print(f"figure in {out}/")
