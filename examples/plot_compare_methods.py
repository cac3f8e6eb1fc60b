"""
Comparing ways to align a network with human similarity judgments
=================================================================

EfficientNet-Lite0 (ImageNet weights, offline) embeds the 92 object
photographs of Kriegeskorte et al. (2008), which 16 people arranged by
similarity (Mur et al., 2013). Four ways to make the network's similarity
agree with theirs are compared with one protocol, image-wise 5-fold
cross-validation: each method sees the training images and their human
similarities only, and is scored on the held-out images by the same
second-order isomorphism (Spearman correlation of the model's and the
humans' similarities over held-out pairs):

* ``none``: the network's own embedding (all 1280 feature maps);
* ``ais``: the feature maps kept by :class:`~sklearn_ais.AISSelector`
  (Truong et al., 2024); for this pooling head, identical to pruning the
  penultimate units (Tarigopula et al., 2023);
* ``reweighting``: one weight per feature fitted to the human similarities
  (Peterson et al., 2018; ridge penalty chosen by inner image-wise CV);
* ``glocal``: an affine transform fitted to the odd-one-out triplets implied
  by the training similarities (Muttenthaler et al., 2023).

Hyperparameters are the estimators' defaults, which were set by inner
cross-validation within training folds only; nothing here is tuned on the
held-out images. The noise ceiling (Nili et al., 2014) is computed from the
16 subjects on each fold's held-out images.

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_compare_methods.py [output-folder]``
(a few minutes on 2 CPU cores). Prints a markdown table and saves the plot.
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402

from sklearn_ais import AISSelector, DNNFeatureMapTransformer  # noqa: E402
from sklearn_ais.alignment import classification_agreement, compare_alignment, summarize_comparison  # noqa: E402
from sklearn_ais.datasets import load_kriegeskorte92  # noqa: E402

start = time.perf_counter()
out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(exist_ok=True)

data = load_kriegeskorte92()
transformer = DNNFeatureMapTransformer(verbose=1).fit(data.images)
maps = transformer.transform(data.images)  # features are extracted once
cv = KFold(5, shuffle=True, random_state=0)

result = compare_alignment(
    [("efficientnet_lite0", maps)],
    None,
    data.similarity,
    methods=("none", "ais", "reweighting", "glocal"),
    cv=cv,
    subject_similarities=data.subject_dissimilarities,  # one kind for all subjects: the ceiling is sign-free
    verbose=1,
)

print()
print(result.to_markdown())
print()
print("Mean fit time per fold (s):", result.table.groupby("method", sort=False)["fit_time"].mean().round(2).to_dict())
# The same folds, paired against AIS instead of the intact network.
vs_ais = summarize_comparison(result.table, reference="ais").set_index("method")
for method in ("reweighting", "glocal"):
    r = vs_ais.loc[method]
    print(f"{method} vs ais: delta = {r['delta']:+.3f}, {r['test']} p = {r['p_value']:.2g}, Wilcoxon p = {r['wilcoxon_p']:.2g}")

# Unit pruning's companion check: do the network's ImageNet predictions survive
# the pruning? (AIS fitted on the first fold's training images.)
train, _ = next(cv.split(maps))
selector = AISSelector().fit(maps[train], data.similarity[np.ix_(train, train)])
agreement = classification_agreement(transformer, maps, selector)
print(
    f"AIS on fold 1 keeps {selector.support_.sum()} of {maps.n_maps} units; top-1 ImageNet predictions of the "
    f"92 images agree with the intact network's for {agreement:.0%} of them"
)

ax = result.plot()
ax.set_title("EfficientNet-Lite0, 92 images: 5-fold image-wise CV", fontsize="medium")
plt.tight_layout()
ax.figure.savefig(out / "compare_methods.png", dpi=120)
print(f"saved {out / 'compare_methods.png'}; total time {time.perf_counter() - start:.0f} s")
