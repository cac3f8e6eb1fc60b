"""
Held-out alignment of AIS-selected maps on 92 real photographs
===============================================================

EfficientNet-Lite0 (ImageNet weights, offline) embeds the 92 object
photographs of Kriegeskorte et al. (2008); 16 people judged their similarity
(Mur et al., 2013). Which last-layer feature maps carry what people use?

The selection is chosen on training images (or training pairs) only and
evaluated on held-out ones, 5 folds x 4 repeats, in two ways:

* over images: test images never reach ``fit``;
* over matrix entries: test pairs never reach ``fit``.

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_selector_cross_validation.py``
(without the variable the data are downloaded once; about 3 minutes on
2 CPU cores). Prints the README's table and saves the validation curves.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import RepeatedKFold

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.metrics import alignment_score
from sklearn_ais.model_selection import RepeatedPairKFold, cross_validate_alignment
from sklearn_ais.plotting import plot_path, save_figure

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(exist_ok=True)

data = load_kriegeskorte92()
maps = DNNFeatureMapTransformer(verbose=1).fit_transform(data.images)
print(f"in-sample 2OI, all {maps.n_maps} maps: {alignment_score(maps.embed(), data.similarity):.3f}")

rows = []
for name, cv in [
    ("images", RepeatedKFold(n_splits=5, n_repeats=4, random_state=0)),
    ("pairs", RepeatedPairKFold(n_splits=5, n_repeats=4, random_state=0)),
]:
    res = cross_validate_alignment(AISSelector(), maps, data.similarity, cv=cv, return_paths=True, test="corrected_t")
    s = res.summary
    rows.append(
        f"| {name} | {s.test_score_full:.3f} ± {s.test_score_full_sem:.3f} | {s.test_score_selected:.3f} ± "
        f"{s.test_score_selected_sem:.3f} | {s.n_selected_mean:.0f} ± "
        f"{res.table.n_selected.std(ddof=1) / np.sqrt(len(res.table)):.0f} "
        f"| {s.t_statistic:.1f} | {s.p_corrected_t:.2g} | {s.p_paired_t:.1e} |"
    )
    ax = plot_path(res.train_paths.mean(axis=0), res.test_paths, round(s.n_selected_mean))
    ax.set_title(f"held out: {name}")
    save_figure(ax.figure, out / f"cv_curve_{name}.png")

print("| held out | 2OI all maps | 2OI selected maps | maps kept (of 1280) | corrected t | p (corrected t) | p (paired t) |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
