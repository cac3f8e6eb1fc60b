"""Calibration of the package's tests: level under two nulls, power on a planted effect, bootstrap coverage.

Simulated datasets of n images (n = 30 and n = 92) are drawn many times. A simulated observer judges the
images by latent features ``Z`` (their similarity matrix is ``corr(Z)`` plus judgment noise); a model's units
are ReLU features, used as they are (a 2-D embedding: the identity head, so no CNN runs). Three kinds:

* ``null_ais``: the model's units are independent of ``Z``, so selecting maps cannot improve held-out
  alignment (the test: "the AIS-selected maps align better than all maps", one-sided);
* ``null_two``: two feature sets drawn from one distribution (the same fixed mapping of ``Z`` onto a few units,
  independent unit noise), compared with each other in ``compare_alignment``: their true alignments are equal
  (the test: "one backbone aligns differently from the other", two-sided);
* ``planted``: a few units carry ``Z`` (plus noise), the others not (the AIS test, one-sided: its power).

The mapping of ``Z`` onto units is drawn once per kind and size (the "world"); a dataset draws new images, new
unit noise and new judgments, so the bootstrap over images estimates the spread of what varies.

Tests, each at ``alpha``:

* ``paired_t``, ``corrected_t``, ``wilcoxon``: over the 5 x 8 folds (``cross_validate_alignment``; for
  ``null_two``, the 40 folds of ``compare_alignment``, one backbone against the other);
* ``permutation``: ``permutation_test_alignment`` (5 folds, at most ``--permutations`` permutations, stopped
  after ``--stop-after`` null gains reached the observed one, Besag & Clifford 1991); not defined for
  ``null_two`` (permuting the judgments breaks both backbones' alignment, not their difference);
* ``bootstrap (normal)``, ``bootstrap (percentile)``: ``compare_alignment(inference="bootstrap")`` (5 folds,
  ``--bootstrap`` replicates), the interval of the difference (``delta``) excluding 0 (one-sided: the 90 %
  interval's lower end above 0).

Printed: the rate of rejections with its Clopper-Pearson 95 % interval (the level under a null, the power on
the planted effect), and the coverage of the bootstrap's 95 % intervals: the fraction of datasets whose
interval holds the true value of the score of each model and of their difference (the true value: the mean of
the point estimate over the datasets of that kind and size, its expectation; for ``null_two``'s difference, 0).

    nice python benchmarks/calibration.py --datasets 200 --n-jobs 2 --out benchmarks/results/calibration.json
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

KINDS = ("null_ais", "null_two", "planted")
SIZES = (30, 92)
TESTS = ("paired_t", "corrected_t", "wilcoxon", "permutation", "bootstrap (normal)", "bootstrap (percentile)")
INTERVALS = ("normal", "percentile")


def simulate(seed, kind, n=92, K=8, latent=3, signal_units=3, noise=0.5, judgment_noise=0.3):
    """One dataset: ``{"X": (n, K) units[, "X2": a second set], "H": (n, n) similarities}``.

    The world (the mapping ``W`` of latent features onto signal units) depends on ``kind`` and ``n`` only.
    """
    world = np.random.default_rng([KINDS.index(kind), n])
    W = world.normal(size=(latent, signal_units))
    rng = np.random.default_rng([KINDS.index(kind), n, seed])
    Z = rng.normal(size=(n, latent))  # what the observer judges by
    A = rng.normal(size=(n, n))
    H = np.corrcoef(Z) + judgment_noise * (A + A.T) / np.sqrt(2)
    np.fill_diagonal(H, np.nan)

    def units(signal):
        X = np.maximum(rng.normal(size=(n, K)), 0)  # ReLU-like units
        if signal:
            X[:, :signal_units] = np.maximum(Z @ W + noise * rng.normal(size=(n, signal_units)), 0)
        return X

    if kind == "null_two":
        return {"X": units(True), "X2": units(True), "H": H}
    return {"X": units(kind == "planted"), "H": H}


def _bootstrap_cells(boot, key, other, one_sided):
    """Per interval method: the intervals of ``key``'s and ``other``'s scores and of their difference, and
    whether the difference's interval excludes 0 (one-sided: its 90 % interval's lower end above 0)."""
    import pandas as pd

    from sklearn_ais.alignment._bootstrap import summarize_bootstrap

    s = boot.bootstrap_summary.set_index(["backbone", "method"])
    estimate = {k: s.loc[k, "estimate"] for k in s.index}
    point = boot.bootstrap_summary[["backbone", "method", "test_2oi"]]
    # The difference key - other as its own column, so the package's summary gives its interval.
    reps = boot.bootstrap.copy()
    diff = ("difference", "delta")
    reps[diff] = reps[key] - reps[other]
    estimate[diff] = estimate[key] - estimate[other]
    point = pd.concat([point, pd.DataFrame([{"backbone": diff[0], "method": diff[1], "test_2oi": estimate[diff]}])],
                      ignore_index=True)
    out = {"estimate": {"a": estimate[other], "b": estimate[key], "delta": estimate[diff]}}
    for method in INTERVALS:
        ci = summarize_bootstrap(reps, point, reference="__none__", estimate=estimate, interval=method).set_index(
            ["backbone", "method"])
        test = summarize_bootstrap(reps, point, reference="__none__", estimate=estimate, interval=method,
                                   level=0.90 if one_sided else 0.95).set_index(["backbone", "method"])
        lo, hi = test.loc[diff, "ci_low"], test.loc[diff, "ci_high"]
        out[method] = {
            "ci": {name: (float(ci.loc[k, "ci_low"]), float(ci.loc[k, "ci_high"]))
                   for name, k in (("a", other), ("b", key), ("delta", diff))},
            "reject": bool(lo > 0) if one_sided else bool(lo > 0 or hi < 0),
        }
    return out


def run_tests(seed, kind, n, n_permutations, stop_after, n_bootstrap, alpha, resampling=True, comparison="spearman"):
    """Rejections of every test, and the bootstrap intervals, on one simulated dataset (the fold tests only when
    ``resampling`` is False: the permutation test and the bootstrap cost 10-100 times more)."""
    import torch

    torch.set_num_threads(1)
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais import AISSelector
    from sklearn_ais._stats import paired_test
    from sklearn_ais.alignment import compare_alignment
    from sklearn_ais.model_selection import cross_validate_alignment, permutation_test_alignment

    data = simulate(seed, kind, n=n)
    selector = AISSelector(device="cpu", comparison=comparison)
    X, H = data["X"], data["H"]
    folds = RepeatedKFold(n_splits=5, n_repeats=8, random_state=seed)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined folds under the null are expected and counted by the tests
        if kind == "null_two":
            res = compare_alignment([("a", X), ("b", data["X2"])], None, H, methods=("none",), cv=folds,
                                    comparison=comparison)
            t = res.table.sort_values("fold")
            a, b = t[t.backbone == "a"]["test_2oi"].to_numpy(), t[t.backbone == "b"]["test_2oi"].to_numpy()
            ratio = (t[t.backbone == "a"]["n_test"] / t[t.backbone == "a"]["n_train"]).to_numpy()
            for name in ("paired_t", "corrected_t", "wilcoxon"):
                p = paired_test(b, a, comparison=comparison, test=name, test_train_ratio=ratio)["p_value"]
                out[name] = bool(p < alpha)
            out["gain"] = float(np.mean(b - a))
            if not resampling:
                return out
            boot = compare_alignment([("a", X), ("b", data["X2"])], None, H, methods=("none",), cv=5,
                                     inference="bootstrap", n_bootstrap=n_bootstrap, random_state=seed,
                                     comparison=comparison)
            cells = _bootstrap_cells(boot, ("b", "none"), ("a", "none"), one_sided=False)
        else:
            cv = cross_validate_alignment(selector, X, H, cv=folds, alternative="greater")
            for name in ("paired_t", "corrected_t", "wilcoxon"):
                tab = cv.table
                ratio = (tab.n_test / tab.n_train).to_numpy()
                p = paired_test(tab.test_score_selected.to_numpy(), tab.test_score_full.to_numpy(), test=name,
                                comparison=comparison, alternative="greater", test_train_ratio=ratio)["p_value"]
                out[name] = bool(p < alpha)
            out["gain"] = float(cv.summary.delta)
            if not resampling:
                return out
            perm = permutation_test_alignment(selector, X, H, cv=5, n_permutations=n_permutations,
                                              stop_after=stop_after, random_state=seed)
            out["permutation"] = bool(perm.p_value < alpha)
            out["n_permutations_run"] = int(perm.n_permutations)
            boot = compare_alignment([("model", X)], None, H, methods={"none": None, "ais": selector}, cv=5,
                                     inference="bootstrap", n_bootstrap=n_bootstrap, random_state=seed,
                                     comparison=comparison)
            cells = _bootstrap_cells(boot, ("model", "ais"), ("model", "none"), one_sided=True)
    for method in INTERVALS:
        out[f"bootstrap ({method})"] = cells[method]["reject"]
    out["intervals"] = {m: cells[m]["ci"] for m in INTERVALS}
    out["estimate"] = cells["estimate"]
    return out


def _run_or_report(*args):
    """``run_tests``, with a failure recorded (and counted in the table) rather than ending the whole run."""
    try:
        return run_tests(*args)
    except Exception as exc:  # noqa: BLE001  (reported: "failed" in the table)
        return {"error": f"{type(exc).__name__}: {exc}"}


def clopper_pearson(k, n, level=0.95):
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def _cell(k, m):
    lo, hi = clopper_pearson(k, m)
    return {"rate": k / m, "ci": (lo, hi), "k": k, "n": m}


def tabulate(jobs, results):
    """Rates with Clopper-Pearson intervals per kind, size and test; coverage per kind, size, quantity and interval."""
    table = {}
    for kind in KINDS:
        for n in SIZES:
            rows = [r for (s, k, m), r in zip(jobs, results) if k == kind and m == n]
            failed = sum("error" in r for r in rows)
            rows = [r for r in rows if "error" not in r]
            if not rows:
                continue
            cell = {"datasets": len(rows), "failed": failed, "mean_gain": float(np.mean([r["gain"] for r in rows]))}
            table[f"{kind} n={n}"] = cell
            for test in TESTS:
                done = [r[test] for r in rows if test in r]
                if done:
                    cell[test] = _cell(int(sum(done)), len(done))
            runs = [r["n_permutations_run"] for r in rows if "n_permutations_run" in r]
            if runs:
                cell["mean_permutations_run"] = float(np.mean(runs))
            rows = [r for r in rows if "intervals" in r]
            if not rows:
                continue
            truth = {q: float(np.mean([r["estimate"][q] for r in rows])) for q in ("a", "b", "delta")}
            if kind == "null_two":
                truth["delta"] = 0.0  # exchangeable feature sets
            cell["truth"] = truth
            cell["coverage"] = {}
            for method in INTERVALS:
                for q in ("a", "b", "delta"):
                    inside = [r["intervals"][method][q][0] <= truth[q] <= r["intervals"][method][q][1] for r in rows]
                    cell["coverage"][f"{method} {q}"] = _cell(int(sum(inside)), len(rows))
    return table


def _fmt(c):
    return f"{c['rate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] ({c['k']}/{c['n']})"


def report(table, args, elapsed) -> str:
    names = {"a": {"null_two": "score of a", "null_ais": "score of all maps", "planted": "score of all maps"},
             "b": {"null_two": "score of b", "null_ais": "score of AIS", "planted": "score of AIS"},
             "delta": {"null_two": "b - a", "null_ais": "AIS - all maps", "planted": "AIS - all maps"}}
    lines = [f"{args.datasets} datasets per kind and size, K = 8 units, alpha = {args.alpha}, at most "
             f"{args.permutations} permutations (stopped after {args.stop_after} exceedances), {args.bootstrap} "
             f"bootstrap replicates, {elapsed:.0f} s", "",
             "| test | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for test in TESTS:
        lines.append(f"| {test} | " + " | ".join(_fmt(c[test]) if test in c else "n/a" for c in table.values()) + " |")
    lines.append("| datasets (failed) | " + " | ".join(f"{c['datasets']} ({c['failed']})" for c in table.values()) + " |")
    lines.append("| mean permutations run | " + " | ".join(
        f"{c['mean_permutations_run']:.0f}" if "mean_permutations_run" in c else "n/a" for c in table.values()) + " |")
    lines += ["", "Coverage of the bootstrap's 95 % intervals (target 0.90-0.98):", "",
              "| interval, quantity | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for method in INTERVALS:
        for q in ("a", "b", "delta"):
            cells = []
            for key, c in table.items():
                kind = key.split()[0]
                cov = c.get("coverage", {}).get(f"{method} {q}")
                cells.append(f"{_fmt(cov)} ({names[q][kind]})" if cov else "n/a")
            lines.append(f"| {method}, {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200, help="simulated datasets of each kind and size")
    parser.add_argument("--resampling-datasets", type=int, default=None,
                        help="of these, how many also run the permutation test and the bootstrap (default: all)")
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. datasets - 1 (to split a run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--permutations", type=int, default=99)
    parser.add_argument("--stop-after", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    parser.add_argument("--stream", default=None,
                        help="append each dataset's result to this JSON-lines file as it ends (resumable)")
    parser.add_argument("--from-stream", nargs="+", default=None, help="only tabulate the results of --stream files")
    args = parser.parse_args(argv)
    from joblib import Parallel, delayed

    t0 = time.perf_counter()
    resampling = args.datasets if args.resampling_datasets is None else args.resampling_datasets
    # Seed-major order: every kind and size advances together; the resampling tests run on the first seeds.
    jobs = [(seed, kind, n) for seed in range(args.first_seed, args.datasets) for n in args.sizes for kind in args.kinds]
    if args.from_stream:
        done = {}
        for path in args.from_stream:  # one result per dataset (a split run may have computed some twice)
            for line in Path(path).read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    done.setdefault((r["seed"], r["kind"], r["n"]), r)
        done = list(done.values())
        jobs = [(r["seed"], r["kind"], r["n"]) for r in done]
        results = [{k: v for k, v in r.items() if k not in ("seed", "kind", "n")} for r in done]
        elapsed = float("nan")
    else:
        stream = Path(args.stream).open("a") if args.stream else None
        results = []
        tasks = Parallel(n_jobs=args.n_jobs, verbose=5, return_as="generator")(
            delayed(_run_or_report)(seed, kind, n, args.permutations, args.stop_after, args.bootstrap, args.alpha,
                                    seed < resampling)
            for seed, kind, n in jobs
        )
        for (seed, kind, n), r in zip(jobs, tasks):
            results.append(r)
            if stream:
                stream.write(json.dumps(dict(seed=seed, kind=kind, n=n, **r)) + "\n")
                stream.flush()
        elapsed = time.perf_counter() - t0
    table = tabulate(jobs, results)
    print(report(table, args, elapsed))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"table": table, "args": vars(args), "seconds": elapsed,
                                              "raw": [dict(seed=s, kind=k, n=m, **r)
                                                      for (s, k, m), r in zip(jobs, results)]}))


if __name__ == "__main__":
    main()
