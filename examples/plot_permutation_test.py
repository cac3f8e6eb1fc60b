"""
Is the held-out gain of AIS selection real? Three tests on the 92 photographs
=============================================================================

The held-out gain of AIS selection (2OI of the selected maps minus 2OI of
all maps, on test images the selection never saw) is tested three ways on
the same 5 image-wise folds:

* the **paired t-test** over folds, the test of the AIS paper: it treats the
  folds as independent, but they share most of their training images, so it
  is too optimistic (on simulated null data it rejects far more often than
  its nominal 5 %, see the README);
* the **corrected resampled t-test** (Nadeau & Bengio, 2003), the package's
  default: the variance across folds is inflated by the overlap of training
  and test sets;
* the **permutation test** (:func:`~sklearn_ais.model_selection.permutation_test_alignment`):
  the stimulus labels of the human matrix are permuted 1,000 times and the
  whole cross-validated selection is rerun on each permutation; no
  assumption about the folds.

Run: ``SKLEARN_AIS_DATA=../shared/data python examples/plot_permutation_test.py [OUTPUT_DIR]``
(about 12 minutes on 2 CPU cores, almost all of it the 1,000 permutations).
Prints the three p-values and the run time and saves the null distribution
as ``permutation_null.png``.
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sklearn.model_selection import KFold

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment, summarize_folds

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-output")
out.mkdir(parents=True, exist_ok=True)
n_permutations = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

data = load_kriegeskorte92()
maps = DNNFeatureMapTransformer().fit_transform(data.images)
cv = KFold(5, shuffle=True, random_state=0)

# %%
# The two t-tests read the same per-fold table (the summary carries both p-values).
result = cross_validate_alignment(AISSelector(), maps, data.similarity, cv=cv, test="corrected_t")
paired = summarize_folds(result.table, test="paired_t")
print(result)
print(f"paired t: t = {paired['t_statistic']:.2f}, p = {paired['p_value']:.3g};  "
      f"corrected t: t = {result.summary['t_statistic']:.2f}, p = {result.summary['p_value']:.3g}")

# %%
# The permutation test: the folds stay, the judgments' image labels move.
start = time.perf_counter()
perm = permutation_test_alignment(AISSelector(), maps, data.similarity, cv=cv, n_permutations=n_permutations,
                                  n_jobs=-1)
elapsed = time.perf_counter() - start
print(perm)
print(f"{n_permutations} permutations in {elapsed:.0f} s")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(perm.null, bins=40, color="0.6", label=f"null ({n_permutations} permutations)")
ax.axvline(perm.observed, color="crimson", lw=2, label=f"observed {perm.observed:+.3f} (p = {perm.p_value:.3g})")
ax.set_xlabel("held-out gain of selection (2OI selected - 2OI all maps)")
ax.set_ylabel("permutations")
ax.set_title("AIS selection on the 92 photographs: permutation null")
ax.legend(frameon=False, fontsize=8)
fig.tight_layout()
fig.savefig(out / "permutation_null.png", dpi=120)
print(f"saved {out / 'permutation_null.png'}")
