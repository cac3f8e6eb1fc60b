"""AIS on odd-one-out triplets at THINGS scale: time and peak memory, against the matrix-based fit.

    python benchmarks/triplets.py                                   # n = 1854, K = 1280 GAP maps, 1,000,000 triplets
    python benchmarks/triplets.py --n 600 --triplets 100000         # a smaller size
    python benchmarks/triplets.py --matrix                          # also the Spearman fit on the matrix, same n
    python benchmarks/triplets.py --k92 --permutations 199          # the 92-photograph acceptance figures

Each fit runs in its own process (peak RSS is that process's), with one torch/BLAS thread. The data are
case 6's of ``benchmarks/run.py`` (sparse ReLU-like GAP values, a human matrix from 5 % of the maps); the
triplets are drawn from that matrix by a softmax observer (``datasets.simulate_triplets``). Agreement: the
accuracy of the base, of 3 leave-one-out candidates and of 3 sweep steps are recounted by a naive loop (the
embedding rebuilt, ``np.corrcoef``, the triplets counted) and must match exactly. The machine's load (other
processes' busy cores during the run) is printed: timings under load are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _problem(n, K, n_triplets, seed=0):
    sys.path.insert(0, str(HERE))
    from run import make_human, make_maps  # case 6's data

    from sklearn_ais.datasets import simulate_triplets

    rng = np.random.default_rng(seed)
    maps = make_maps(rng, n, K, 1)
    H = make_human(rng, maps)
    E = maps[:, :, 0, 0].astype(np.float64)
    T = simulate_triplets(H, n_triplets, temperature=0.1, random_state=seed) if n_triplets else None
    return E, H, T


def _naive_count(E, T):
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.nan_to_num(np.corrcoef(E))
    a, b, o = T.T
    s0, s1, s2 = S[a, b], S[a, o], S[b, o]
    return int(((s0 - s1 > 1e-9) & (s0 - s2 > 1e-9)).sum())


def worker(kind, n, K, n_triplets):
    """One fit in this process: its wall and CPU time, peak RSS and (triplets) the agreement check."""
    import torch
    from threadpoolctl import threadpool_limits

    from sklearn_ais import AISSelector

    torch.set_num_threads(1)
    threadpool_limits(1)
    E, H, T = _problem(n, K, n_triplets if kind == "triplets" else 0)
    setup_mb = _peak_mb()
    est = AISSelector(comparison="odd_one_out" if kind == "triplets" else "spearman", device="cpu")
    y = T if kind == "triplets" else H
    t0, c0 = time.perf_counter(), time.process_time()
    est.fit(E, y)
    out = dict(kind=kind, n=n, K=K, n_triplets=n_triplets if kind == "triplets" else None,
               fit_s=time.perf_counter() - t0, fit_cpu_s=time.process_time() - c0, peak_rss_mb=_peak_mb(),
               setup_rss_mb=setup_mb, n_selected=int(est.n_features_to_select_))
    if kind == "triplets":
        from sklearn_ais._similarity import TripletTarget

        target = TripletTarget(T, n, "odd_one_out")
        out.update(touched_pairs=target.n_pairs, all_pairs=target.n_full, sparse_path=bool(target.sparse))
        order = np.argsort(est.ranking_, kind="stable")
        ks, ts = order[[0, K // 2, K - 1]], np.array([1, est.n_features_to_select_, K // 2])
        N = len(T)
        ours = [est.baseline_score_ * N] + [(est.baseline_score_ - est.scores_[k]) * N for k in ks] \
            + [est.path_scores_[t - 1] * N for t in ts]
        keep_all = np.ones(K, bool)
        naive = [_naive_count(E, T)]
        for k in ks:
            keep = keep_all.copy()
            keep[k] = False
            naive.append(_naive_count(E * keep, T))
        for t in ts:
            keep = np.zeros(K, bool)
            keep[order[:t]] = True
            naive.append(_naive_count(E * keep, T))
        out.update(agreement_ok=bool(np.array_equal(np.rint(ours), naive)), base_accuracy=est.baseline_score_)
    print(json.dumps(out))


def _run(kind, n, K, n_triplets, timeout):
    busy0, t0 = _busy_s(), time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--n", str(n), "--K", str(K), "--triplets",
                           str(n_triplets)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - t0
    # busy cores of the whole machine during the run, minus this run's own (about 1)
    res["others_busy_cores"] = max(0.0, (_busy_s() - busy0) / wall - res["fit_cpu_s"] / wall)
    return res


def _accuracy_gain(E, T, splits, estimator):
    """Mean over folds of the held-out odd-one-out accuracy of the selected maps minus that of all maps, the
    selection fitted on the training images' triplets only (a test triplet has its three images in the test part)."""
    from sklearn_ais.metrics import triplet_score
    from sklearn_ais.model_selection import cross_validate_alignment

    res = cross_validate_alignment(estimator, E, T, cv=splits, return_estimators=True)
    gains, full = [], []
    for (_, test), est in zip(splits, res.estimators):
        held = T.take(test).indices
        a_full = triplet_score(E[test], held)
        gains.append(triplet_score(E[test] * est.support_, held) - a_full)
        full.append(a_full)
    return float(np.mean(gains)), float(np.mean(full)), res


def k92_acceptance(n_triplets, permutations, seed=0, repeats=2, fits=("accuracy", "log_likelihood"), embeddings=None):
    """Triplets simulated from the 92 photographs' mean human similarity, EfficientNet-Lite0 maps: the held-out
    odd-one-out accuracy of AIS selection vs all maps, image-wise 5-fold CV (``repeats`` shuffles), and a
    permutation test of the gain (the images' labels in the triplets permuted, the whole CV rerun)."""
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais import AISSelector, DNNFeatureMapTransformer
    from sklearn_ais._triplets import check_triplet_target
    from sklearn_ais.datasets import load_kriegeskorte92, simulate_triplets

    data = load_kriegeskorte92(download=False)
    if embeddings is not None and Path(embeddings).is_file():
        E = np.load(embeddings)
    else:
        E = DNNFeatureMapTransformer(device="cpu").fit_transform(data.images).embed().astype(np.float64)
        if embeddings is not None:
            np.save(embeddings, E)
    raw = simulate_triplets(data.similarity, n_triplets, temperature=K92_TEMPERATURE, random_state=seed)
    a, b, o = raw.T
    H = data.similarity
    agreement = float(np.mean((H[a, b] > H[a, o]) & (H[a, b] > H[b, o])))
    T = check_triplet_target(raw, len(E))
    splits = list(RepeatedKFold(n_splits=5, n_repeats=repeats, random_state=seed).split(E))
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(E)) for _ in range(permutations)]
    out = dict(n_triplets=n_triplets, observer_temperature=K92_TEMPERATURE, observer_agreement=agreement,
               folds=len(splits), test_triplets_per_fold=float(np.mean([len(T.take(te)) for _, te in splits])))
    estimators = {"accuracy": AISSelector(comparison="odd_one_out", device="cpu"),
                  "log_likelihood": AISSelector(comparison="triplet_log_likelihood", temperature=0.1, device="cpu")}
    for name in fits:
        est = estimators[name]
        gain, full, res = _accuracy_gain(E, T, splits, est)
        null = np.array([_accuracy_gain(E, T.take(p), splits, est)[0] for p in perms])
        out[name] = dict(held_out_accuracy_all=full, held_out_accuracy_selected=full + gain, gain=gain,
                         n_selected_mean=float(res.table["n_selected"].mean()),
                         p_permutation=float((1 + np.sum(null >= gain)) / (1 + len(null))) if perms else None,
                         p_corrected_t_own_scale=float(res.summary["p_corrected_t"]))
        print(name, out[name], flush=True)
    print(json.dumps(out))
    return out


# The observer's noise for the 92 photographs: their mean similarity spans 0 to 0.018 (std 0.0034); at 0.003
# the observer agrees with the matrix's own choice in 65 % of triplets (THINGS' noise ceiling: 68 %).
K92_TEMPERATURE = 0.003


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1854)
    p.add_argument("--K", type=int, default=1280)
    p.add_argument("--triplets", type=int, default=1_000_000)
    p.add_argument("--matrix", action="store_true", help="also time the Spearman fit on the matrix (same n, K)")
    p.add_argument("--k92", action="store_true", help="the 92-photograph acceptance (needs SKLEARN_AIS_DATA)")
    p.add_argument("--permutations", type=int, default=0)
    p.add_argument("--repeats", type=int, default=8, help="shuffles of the 5-fold image-wise CV (--k92)")
    p.add_argument("--fits", default="accuracy,log_likelihood", help="what the selection is fitted on (--k92)")
    p.add_argument("--embeddings", help="(--k92) a .npy cache of the Lite0 embeddings: read if present, else written")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--worker", choices=["triplets", "matrix"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.n, a.K, a.triplets)
    if a.k92:
        return k92_acceptance(20_000 if a.triplets == 1_000_000 else a.triplets, a.permutations, repeats=a.repeats,
                              fits=a.fits.split(","), embeddings=a.embeddings)
    results = []
    for kind in ("triplets", "matrix") if a.matrix else ("triplets",):
        r = _run(kind, a.n, a.K, a.triplets if kind == "triplets" else 0, a.timeout)
        results.append(r)
        what = f"{r['n_triplets']:,} triplets" if r["kind"] == "triplets" else "the n x n matrix (Spearman)"
        extra = (f", {r['touched_pairs']:,} of {r['all_pairs']:,} pairs touched "
                 f"({'sparse' if r['sparse_path'] else 'dense'} path), agreement {'ok' if r['agreement_ok'] else 'FAILED'}"
                 if r["kind"] == "triplets" else "")
        print(f"n = {r['n']}, K = {r['K']}, {what}: fit {r['fit_s']:.1f} s wall ({r['fit_cpu_s']:.1f} s CPU), peak RSS "
              f"{r['peak_rss_mb']:.0f} MB (data {r['setup_rss_mb']:.0f} MB){extra}; other processes kept "
              f"{r['others_busy_cores']:.1f} cores busy", flush=True)
    if a.matrix:
        print(f"triplet fit / matrix fit: {results[0]['fit_s'] / results[1]['fit_s']:.2f} (wall), "
              f"{results[0]['fit_cpu_s'] / results[1]['fit_cpu_s']:.2f} (CPU)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
