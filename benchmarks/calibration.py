"""Calibration of the package's tests: false-positive rate under the null and power on a planted effect.

At the size of the 92-image set, simulated datasets are drawn many times:

* **null**: the model's units are independent of what the simulated observer judges (the human matrix is
  built from latent features the model never sees), so selecting maps cannot improve held-out alignment;
* **planted**: a few of the model's units carry the observer's latent features (plus noise), the others not.

On every dataset each test of "the AIS-selected maps align better than all maps on held-out images" is run:

* ``paired_t``: the paired t-test over the 5 x 8 folds of ``cross_validate_alignment`` (the AIS paper's test);
* ``corrected_t``: the corrected resampled t-test over the same folds (the package's default);
* ``permutation``: ``permutation_test_alignment`` (5 folds, the images' judgments permuted);
* ``bootstrap``: ``compare_alignment(inference="bootstrap")``, the interval of ``ais - none``.

The table gives, per test, the rate of p < alpha with its Clopper-Pearson 95 % interval: under the null the
false-positive rate (it should be alpha), on the planted effect the power.

    python benchmarks/calibration.py --datasets 60 --out benchmarks/results/calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TESTS = ("paired_t", "corrected_t", "permutation", "bootstrap")


def simulate(seed, kind, n=92, K=32, latent=4, signal_units=4, noise=0.5, judgment_noise=0.3):
    """One dataset: model units (n, K) and the observer's similarity matrix (n, n).

    With these defaults the planted effect resembles the 92 photographs with EfficientNet-Lite0: held-out 2OI
    of all units about 0.4, of the selected ones about 0.5.
    """
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, latent))  # what the observer judges by
    A = rng.normal(size=(n, n))
    H = np.corrcoef(Z) + judgment_noise * (A + A.T) / np.sqrt(2)
    np.fill_diagonal(H, np.nan)
    X = np.maximum(rng.normal(size=(n, K)), 0)  # ReLU-like units
    if kind == "planted":
        W = rng.normal(size=(latent, signal_units))
        X[:, :signal_units] = np.maximum(Z @ W + noise * rng.normal(size=(n, signal_units)), 0)
    return X, H


def run_tests(seed, kind, n_permutations, n_bootstrap):
    """p-values of the four tests on one simulated dataset."""
    import torch

    torch.set_num_threads(1)
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais import AISSelector
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment

    X, H = simulate(seed, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined folds under the null are expected and counted by the tests
        cv = cross_validate_alignment(AISSelector(device="cpu"), X, H,
                                      cv=RepeatedKFold(n_splits=5, n_repeats=8, random_state=seed))
        perm = permutation_test_alignment(AISSelector(device="cpu"), X, H, cv=5, n_permutations=n_permutations,
                                          random_state=seed)
        boot = compare_alignment([("model", X)], None, H, methods=("none", "ais"), cv=5, inference="bootstrap",
                                 n_bootstrap=n_bootstrap, random_state=seed)
    s = cv.summary
    b = boot.bootstrap_summary.set_index("method")
    return {"paired_t": float(s.p_paired_t), "corrected_t": float(s.p_corrected_t), "permutation": perm.p_value,
            "bootstrap": float(b.loc["ais", "delta_p"]), "gain": float(s.delta)}


def clopper_pearson(k, n, level=0.95):
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=60, help="simulated datasets of each kind")
    parser.add_argument("--permutations", type=int, default=99)
    parser.add_argument("--bootstrap", type=int, default=99)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    from joblib import Parallel, delayed

    t0 = time.perf_counter()
    jobs = [(seed, kind) for kind in ("null", "planted") for seed in range(args.datasets)]
    results = Parallel(n_jobs=args.n_jobs, verbose=5)(
        delayed(run_tests)(10_000 * (kind == "planted") + seed, kind, args.permutations, args.bootstrap)
        for seed, kind in jobs
    )
    table = {}
    for kind in ("null", "planted"):
        rows = [r for (s, k), r in zip(jobs, results) if k == kind]
        table[kind] = {}
        for test in TESTS:
            p = np.array([r[test] for r in rows])
            k = int(np.sum(p < args.alpha))
            table[kind][test] = {"rate": k / len(p), "ci": clopper_pearson(k, len(p)), "n": len(p)}
        table[kind]["mean_gain"] = float(np.mean([r["gain"] for r in rows]))
    elapsed = time.perf_counter() - t0
    print(f"\n{args.datasets} datasets of each kind, n = 92 images, K = 32 units, alpha = {args.alpha}, "
          f"{args.permutations} permutations, {args.bootstrap} bootstrap replicates, {elapsed:.0f} s")
    print(f"{'test':<14}{'false-positive rate (null)':<34}{'power (planted effect)':<30}")
    for test in TESTS:
        cells = []
        for kind in ("null", "planted"):
            c = table[kind][test]
            cells.append(f"{c['rate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]")
        print(f"{test:<14}{cells[0]:<34}{cells[1]:<30}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"table": table, "args": vars(args), "seconds": elapsed,
                                              "raw": [dict(seed=s, kind=k, **r) for (s, k), r in zip(jobs, results)]},
                                             indent=1))


if __name__ == "__main__":
    main()
