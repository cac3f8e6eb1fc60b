"""Benchmark suite: sklearn_ais's exact kernels against the naive AIS algorithm.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--cases 1,2,...] [--out PATH]

Every case times our implementation and the naive algorithm (``naive.py``) in
the same run, on the same data, and checks that they agree. The naive
algorithm is timed on a subset of maps (or sweep steps, or images) and scaled
linearly to the full problem; the output says which. Each case runs in a
fresh subprocess so that its peak resident memory (``ru_maxrss``, read right
after our timings and before any naive work) is its own.

Cases (see README.md): 1 GAP head global AIS + ranked sweep; 2 VGG16 head
global AIS + ranked sweep with the fc7 GEMM floor; 3 per-image AIS, VGG16;
4 the paper's 5-fold x 8-repeat image-wise cross-validation; 5 scaling in n
for case 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import naive  # noqa: E402
from sklearn_ais import AISSelector  # noqa: E402
from sklearn_ais._ablation import make_kernel  # noqa: E402
from sklearn_ais._containers import FeatureMaps  # noqa: E402
from sklearn_ais.backbones import MLPHead, PoolingHead  # noqa: E402

# Ranking comparison: two maps whose AIS differ by less than this are a tie
# (Spearman values are quantised and the two routes round differently).
TIE_TOL = 1e-9
AGREE_TOL = 1e-6

# ---------------------------------------------------------------------------
# Sizes. FULL is the benchmark; QUICK a smoke run; TINY the pytest.
# ---------------------------------------------------------------------------
FULL = {
    "case1": dict(n=120, K=2048, hw=7, repeats=3, batch1_maps=64, naive_repeats=3, agree_maps="all", agree_ts=64),
    "case2": dict(n=120, K=512, hw=14, repeats=3, batch1_maps=2, agree_maps=24, agree_ts=12, head="vgg16"),
    "case3": dict(n=120, K=512, hw=14, repeats=3, batch1_rows=2, batch1_maps=8, agree_rows=3, head="vgg16"),
    "case4": dict(gap=dict(n=120, K=2048, hw=7, batch1_maps=4),
                  vgg=dict(n=120, K=512, hw=14, batch1_maps=1, head="vgg16")),
    "case5": dict(ns=[60, 120, 240, 480, 960], K=2048, hw=7, budget_s=300, size_limit_s=200),
    "case6": dict(n=1854, K=1280, ns=[240, 480, 960], floor_repeats=5, agree_maps=3, agree_ts=3, agree_rows=2,
                  per_image=True),
    "case7": dict(n=1000, K=512, hw=14, repeats=1, batch1_maps=1, agree_maps=4, agree_ts=3, head="vgg16"),
}
QUICK = {
    "case1": dict(n=40, K=128, hw=7, repeats=3, batch1_maps=8, agree_maps="all", agree_ts="all"),
    "case2": dict(n=30, K=32, hw=14, repeats=3, batch1_maps=4, agree_maps="all", agree_ts="all", head="tiny"),
    "case3": dict(n=30, K=32, hw=14, repeats=3, batch1_rows=2, batch1_maps=8, agree_rows=4, head="tiny"),
    "case4": dict(gap=dict(n=40, K=64, hw=7, batch1_maps=4),
                  vgg=dict(n=30, K=32, hw=14, batch1_maps=2, head="tiny")),
    "case5": dict(ns=[20, 40, 80], K=128, hw=7, budget_s=10, size_limit_s=10),
    "case6": dict(n=160, K=64, ns=[40, 80], floor_repeats=3, agree_maps=3, agree_ts=3, agree_rows=2, per_image=True),
    "case7": dict(n=40, K=32, hw=14, repeats=1, batch1_maps=2, agree_maps=4, agree_ts=4, head="tiny"),
}
TINY = {
    "case1": dict(n=16, K=24, hw=3, repeats=1, batch1_maps=4, agree_maps="all", agree_ts="all"),
    "case2": dict(n=12, K=8, hw=4, repeats=1, batch1_maps=2, agree_maps="all", agree_ts="all", head="tiny"),
    "case3": dict(n=12, K=8, hw=4, repeats=1, batch1_rows=2, batch1_maps=4, agree_rows=3, head="tiny"),
    "case6": dict(n=40, K=12, ns=[16, 24], floor_repeats=1, agree_maps=3, agree_ts=3, agree_rows=2, per_image=True),
}

TARGETS = {
    "case1": "ours >= 100x faster than naive",
    "case2": "ours >= 75x faster than naive, <= 1.5x the fc7 GEMM floor, peak RSS < 3 GB",
    "case3": "ours >= 50x faster than naive",
    "case4": "VGG16 protocol < 10 min",
    "case5": "time no worse than quadratic in n (slope <= 2)",
    "case6": "n = 1854, K = 1280 global AIS + sweep <= 3 min, <= 2x the sorting floor, peak RSS <= 4 GB, "
             "time ~ n^alpha with alpha <= 2.3 (n = 240 .. 1854)",
    "case7": "VGG16 head at n = 1000: reported (no target)",
}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
_T0 = time.perf_counter()


def log(msg):
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def set_threads(n):
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats=1, device="cpu"):
    """Median wall time of ``repeats`` calls; returns (median, all times, last output)."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times, out


def cpu_busy_s():
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def own_cpu_s():
    ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime


def rss_now_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform.startswith("linux") else peak / 2**20


def gpu_peak_mb(device):
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def make_maps(rng, n, K, hw, dead_frac=0.02):
    """ReLU-like, sparse last-conv maps (n, K, hw, hw), float32.

    Every map has its own rate of being active in an image (Beta(2, 2)) and its
    own scale; an active map is ReLU(N(-0.5, 1)) per location (about 70% of its
    locations are 0); a few maps are dead in every image.
    """
    rate = rng.beta(2.0, 2.0, size=K)
    rate[rng.random(K) < dead_frac] = 0.0
    active = rng.random((n, K)) < rate
    scale = rng.lognormal(0.0, 0.5, size=K).astype(np.float32)
    maps = rng.standard_normal(size=(n, K, hw, hw), dtype=np.float32)
    maps -= 0.5
    np.maximum(maps, 0, out=maps)
    maps *= (scale[None, :] * active)[:, :, None, None].astype(np.float32)
    return maps


def make_human(rng, maps, n_informative=None, noise=1.0):
    """Human similarity from a random subset of maps (GAP) plus noise."""
    n, K = maps.shape[:2]
    n_informative = n_informative or max(2, K // 20)
    S = rng.choice(K, size=n_informative, replace=False)
    F = maps[:, S].mean(axis=(2, 3)).astype(np.float64)
    F = (F - F.mean(0)) / (F.std(0) + 1e-12)
    F = F + noise * rng.normal(size=F.shape)
    H = np.corrcoef(F)
    A = rng.normal(scale=0.05, size=(n, n))
    H = H + (A + A.T) / 2
    np.fill_diagonal(H, 1.0)
    return H


def vgg16_head():
    """The VGG16 head (maxpool, avgpool, fc6, ReLU, fc7, ReLU), random weights."""
    torch.manual_seed(0)
    try:
        from sklearn_ais.backbones import get_backbone

        head = get_backbone("vgg16", weights=None).head
        if isinstance(head, MLPHead):
            return head, "sklearn_ais.backbones.get_backbone('vgg16', weights=None).head"
    except Exception as exc:  # the registry is optional for the benchmark
        print(f"[bench] get_backbone('vgg16') unavailable ({exc!r}); building the head from torchvision", flush=True)
    import torchvision

    fc = torchvision.models.vgg16(weights=None).classifier
    return (MLPHead(fc[0].weight, fc[0].bias, nn.Sequential(nn.ReLU(), fc[3], nn.ReLU())),
            "torchvision.models.vgg16(weights=None).classifier")


def tiny_head(K, hw, D1=256, D=128, seed=0):
    """A VGG-shaped head with small layers (quick mode and tests)."""
    g = torch.Generator().manual_seed(seed)
    side = max(1, hw // 2)
    side = min(side, 7)
    P = side * side
    fc7 = nn.Linear(D1, D)
    with torch.no_grad():
        fc7.weight.copy_(torch.randn(D, D1, generator=g) / math.sqrt(D1))
        fc7.bias.copy_(0.01 * torch.randn(D, generator=g))
    W = torch.randn(D1, K * P, generator=g) / math.sqrt(K * P)
    b = 0.01 * torch.randn(D1, generator=g)
    head = MLPHead(W, b, nn.Sequential(nn.ReLU(), fc7, nn.ReLU()), maxpool=2, output_size=(side, side))
    return head, f"tiny MLPHead(D1={D1}, D={D}, P={P})"


def build_head(kind, K, hw):
    if kind == "vgg16":
        return vgg16_head()
    return tiny_head(K, hw)


def first_layer_width(head):
    return int(head.weight.shape[0])


def ranking_agreement(ours, ref, tol=TIE_TOL):
    """Discordant pairs between two score vectors, ignoring ties (|diff| <= tol on either side).

    Returns (identical_except_ties, n_discordant, n_pairs, smallest naive gap among discordant pairs).
    """
    a = np.asarray(ours, float)
    b = np.asarray(ref, float)
    da = a[:, None] - a[None, :]
    db = b[:, None] - b[None, :]
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    untied = (np.abs(da) > tol) & (np.abs(db) > tol)
    disc = untied & (np.sign(da) != np.sign(db))
    gap = float(np.abs(db[disc]).max()) if disc.any() else 0.0
    return bool(not disc.any()), int(disc.sum()), int(len(da)), gap


def pick_maps(order, q, rng):
    """A subset of maps to check naively: best, consecutive middle, worst and random ones."""
    K = len(order)
    if q == "all" or q >= K:
        return np.arange(K)
    q = int(q)
    part = max(1, q // 4)
    mid = K // 2 - part // 2
    chosen = list(order[:part]) + list(order[mid : mid + part]) + list(order[-part:])
    rest = np.setdiff1d(np.arange(K), chosen)
    chosen += list(rng.choice(rest, size=max(0, min(len(rest), q - len(chosen))), replace=False))
    return np.unique(np.asarray(chosen, dtype=np.int64))


def pick_ts(K, q, extra=()):
    if q == "all" or q >= K:
        return np.arange(1, K + 1)
    ts = np.unique(np.r_[1, 2, 3, np.geomspace(1, K, int(q)).round().astype(int), K, list(extra)])
    return ts[(ts >= 1) & (ts <= K)].astype(np.int64)


def gemm_throughput(rows, D=4096, D_out=None, device="cpu", repeats=3):
    """float32 GFLOP/s of a (rows x D) @ (D x D_out) matmul (median of ``repeats``)."""
    D_out = D if D_out is None else D_out
    a = torch.relu(torch.randn(rows, D, device=device))
    b = torch.randn(D, D_out, device=device) / math.sqrt(D)
    a @ b
    t, _, _ = timed(lambda: a @ b, repeats, device)
    return 2.0 * rows * D * D_out / t / 1e9


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
def _selector_case(name, cfg, device, head_kind=None, floor=False, seed=0):
    """Global AIS + full ranked sweep: ours (AISSelector.fit) vs naive."""
    rng = np.random.default_rng(seed)
    n, K, hw = cfg["n"], cfg["K"], cfg["hw"]
    maps = make_maps(rng, n, K, hw)
    H = make_human(rng, maps)
    if head_kind is None:
        head, head_desc = PoolingHead("avg"), "PoolingHead('avg') (GAP)"
    else:
        head, head_desc = build_head(head_kind, K, hw)
    X = FeatureMaps(maps, head)
    res = dict(case=name, n=n, K=K, map_size=f"{hw}x{hw}", head=head_desc, device=str(device))
    res["rss_setup_mb"] = rss_now_mb()

    # -- ours ------------------------------------------------------------
    gemm = []
    if floor:
        from sklearn_ais import _ablation

        D1 = first_layer_width(head)
        fc7 = [m for m in head.rest.modules() if isinstance(m, nn.Linear)][-1]  # the GEMM of the floor
        gemm_rows = n * _ablation._chunk(K, n * max(D1, n * 4))  # rows per fc7 call, as the kernels chunk
        gemm.append(gemm_throughput(gemm_rows, fc7.in_features, fc7.out_features, device=device))

    sel_holder = {}

    def ours():
        sel_holder["sel"] = AISSelector(device=str(device)).fit(X, H)

    times = []
    cpu0 = own_cpu_s()
    for _ in range(cfg["repeats"]):
        t, _, _ = timed(ours, 1, device)
        times.append(t)
        if floor:
            gemm.append(gemm_throughput(gemm_rows, fc7.in_features, fc7.out_features, device=device))
    sel = sel_holder["sel"]
    log(f"{name}: ours {times}")
    res["ours_s"] = float(np.median(times))
    res["ours_times_s"] = times
    res["ours_cpu_s"] = (own_cpu_s() - cpu0) / cfg["repeats"]  # includes the GEMM-floor samples of case 2
    res["peak_rss_mb"] = rss_peak_mb()
    res["peak_gpu_mb"] = gpu_peak_mb(device)
    res["baseline_2oi"] = float(sel.baseline_score_)
    res["n_selected"] = int(sel.n_features_to_select_)
    ais = sel.scores_
    order = np.argsort(-ais, kind="stable")

    if floor:
        with torch.inference_mode():
            pooled = head.pooled(torch.as_tensor(maps))
        alive = int((pooled.abs().amax(-1) > 0).sum())
        flop_row = 2.0 * fc7.in_features * fc7.out_features  # 4096 x 4096 for VGG16
        # Rows that must go through fc7: the leave-one-out changes image i only when map k
        # is alive in it; the sweep changes image i at step t only when map order[t] is
        # alive in it (plus the one embedding with no map kept). A (map, image) pair whose
        # map is zero leaves the embedding as it was, exactly: those rows are not work.
        rows_loo, rows_sweep = alive, alive + 1
        gflops = float(np.median(gemm))
        floor_s = (rows_loo + rows_sweep) * flop_row / (gflops * 1e9)
        dense_floor_s = (rows_loo + n * K) * flop_row / (gflops * 1e9)  # every sweep row, as counted before
        res.update(
            gemm_rows=gemm_rows, gemm_gflops=gflops, gemm_gflops_samples=gemm, fc7_shape=[fc7.in_features, fc7.out_features],
            fc7_rows_loo=rows_loo, fc7_rows_sweep=rows_sweep, alive_fraction=alive / (n * K),
            floor_s=floor_s, ours_over_floor=res["ours_s"] / floor_s,
            dense_sweep_floor_s=dense_floor_s, ours_over_dense_sweep_floor=res["ours_s"] / dense_floor_s,
        )

    # Maps and sweep steps checked against the batched naive; the batch1 subset is part of them.
    ks = pick_maps(order, cfg["agree_maps"], rng)
    q1 = min(cfg["batch1_maps"], len(ks))
    ks1 = ks[np.linspace(0, len(ks) - 1, q1).round().astype(np.int64)]
    ts1 = np.linspace(1, K, q1).round().astype(np.int64)
    ts = np.union1d(pick_ts(K, cfg["agree_ts"], extra=(sel.n_features_to_select_,)), ts1)

    # -- naive, faithful (batch size 1), timed on a few maps and scaled --
    nrep = cfg.get("naive_repeats", 1)  # median of repeats where the naive subset is cheap (its timing is noisy)
    t_loo1, loo1_times, (base1, vals1) = timed(
        lambda: naive.naive_loo(maps, head, H, ks1, batch1=True, device=device), nrep, device)
    t_sw1, sw1_times, sw1 = timed(
        lambda: naive.naive_sweep(maps, head, H, order, ts1, batch1=True, device=device), nrep, device)
    res["naive_subset_times_s"] = dict(loo=loo1_times, sweep=sw1_times)
    # naive_loo also embeds the unablated images once (the base): 1 + q1 candidates.
    per_cand_loo = t_loo1 / (q1 + 1)
    per_cand_sw = t_sw1 / q1
    res["naive_s"] = per_cand_loo * (K + 1) + per_cand_sw * K
    res["naive_kind"] = (f"scaled: batch1 naive timed on {q1} of {K} maps (+ base) and {q1} of {K} sweep steps "
                         f"(median of {nrep}), x (K+1) + K")
    res["naive_per_candidate_s"] = dict(loo=per_cand_loo, sweep=per_cand_sw)
    log(f"{name}: naive batch1 {t_loo1 + t_sw1:.1f} s on {2 * q1 + 1} candidates")
    res["speedup"] = res["naive_s"] / res["ours_s"]

    # -- agreement, with the batched naive (same arithmetic, one batch per candidate)
    t_loo, _, (base_n, vals_n) = timed(lambda: naive.naive_loo(maps, head, H, ks, batch1=False, device=device),
                                       1, device)
    t_sw, _, sw_n = timed(lambda: naive.naive_sweep(maps, head, H, order, ts, batch1=False, device=device),
                          1, device)
    log(f"{name}: naive batched {t_loo + t_sw:.1f} s on {len(ks) + len(ts) + 1} candidates")
    res["naive_batched_s"] = t_loo / (len(ks) + 1) * (K + 1) + t_sw / len(ts) * K
    res["naive_batched_kind"] = (
        f"{'measured' if len(ks) == K and len(ts) == K else 'scaled'}: batched-per-candidate naive on "
        f"{len(ks)} of {K} maps and {len(ts)} of {K} sweep steps")
    ours_loo = sel.baseline_score_ - ais  # ablated 2OI
    d_loo = np.abs(vals_n - ours_loo[ks])
    d_sw = np.abs(sw_n - sel.path_scores_[ts - 1])
    diffs = np.r_[abs(base_n - sel.baseline_score_), abs(base1 - sel.baseline_score_), d_loo,
                  np.abs(vals1 - ours_loo[ks1]), d_sw, np.abs(sw1 - sel.path_scores_[ts1 - 1])]
    # The naive algorithm's own float noise: batch1 vs batched on the same candidates.
    self_diff = np.r_[abs(base1 - base_n), np.abs(vals1 - vals_n[np.searchsorted(ks, ks1)]),
                      np.abs(sw1 - sw_n[np.searchsorted(ts, ts1)])]
    identical, n_disc, n_pairs, gap = ranking_agreement(ais[ks], base_n - vals_n)
    res.update(
        max_abs_diff=float(diffs.max()), max_abs_diff_loo=float(d_loo.max()), max_abs_diff_sweep=float(d_sw.max()),
        worst_sweep_t=int(ts[np.argmax(d_sw)]), n_over_tol=int((diffs > AGREE_TOL).sum()),
        naive_self_diff=float(self_diff.max()),
        agree_maps=int(len(ks)), agree_ts=int(len(ts)),
        ranking_identical=identical, discordant_pairs=n_disc, compared_pairs=n_pairs,
        discordant_max_naive_gap=gap,
        agreement_ok=bool(diffs.max() <= AGREE_TOL and identical),
    )
    return res


def case1(cfg, device):
    return _selector_case("1: GAP global AIS + sweep", cfg, device)


def case2(cfg, device):
    r = _selector_case("2: VGG16 global AIS + sweep", cfg, device, head_kind=cfg.get("head", "vgg16"), floor=True)
    return r


def case3(cfg, device, seed=0):
    rng = np.random.default_rng(seed)
    n, K, hw = cfg["n"], cfg["K"], cfg["hw"]
    maps = make_maps(rng, n, K, hw)
    H = make_human(rng, maps)
    head, head_desc = build_head(cfg.get("head", "vgg16"), K, hw)
    X = FeatureMaps(maps, head)
    res = dict(case="3: VGG16 per-image AIS", n=n, K=K, map_size=f"{hw}x{hw}", head=head_desc, device=str(device))
    res["rss_setup_mb"] = rss_now_mb()

    def ours():
        p = make_kernel(X, "pearson", str(device))
        return p.per_image(H, "spearman")

    t, times, (base, ablated) = timed(ours, cfg["repeats"], device)
    res.update(ours_s=t, ours_times_s=times, peak_rss_mb=rss_peak_mb(), peak_gpu_mb=gpu_peak_mb(device))
    log(f"case 3: ours {times}")
    scores = base[:, None] - ablated

    # naive batch1 on a few (image, map) pairs, scaled to n x K
    rows1 = list(range(min(cfg["batch1_rows"], n)))
    ks1 = np.arange(min(cfg["batch1_maps"], K))
    t1, _, (b1, v1) = timed(lambda: naive.naive_per_image(maps, head, H, rows1, ks1, batch1=True, device=device),
                            1, device)
    # The call embeds the n images once (batch 1) for the base row: n forwards + len(rows1)*len(ks1) candidates.
    t_fwd, _, _ = timed(lambda: naive.embed(naive._maps_tensor(maps, device), head, batch1=True), 1, device)
    per_pair = max(t1 - t_fwd, 0.0) / (len(rows1) * len(ks1))
    res["naive_s"] = t_fwd + per_pair * n * K
    res["naive_kind"] = (f"scaled: batch1 naive timed on {len(rows1)} images x {len(ks1)} maps, "
                         f"x {n}*{K} (image, map) pairs + one base embedding of the {n} images")
    res["speedup"] = res["naive_s"] / res["ours_s"]

    # agreement: batched naive on a few full rows (including the batch1 rows)
    rows = sorted(set(rows1) | set(np.linspace(0, n - 1, min(cfg["agree_rows"], n)).round().astype(int).tolist()))
    t2, _, (b2, v2) = timed(lambda: naive.naive_per_image(maps, head, H, rows, None, batch1=False, device=device),
                            1, device)
    res["naive_batched_s"] = t2 / len(rows) * n
    res["naive_batched_kind"] = f"scaled: batched naive (one batch of K ablations per image) on {len(rows)} of {n} images"
    diffs = np.r_[np.abs(b2 - base[rows]), np.abs(v2 - ablated[rows]).ravel(),
                  np.abs(b1 - base[rows1]), np.abs(v1 - ablated[np.ix_(rows1, ks1)]).ravel()]
    pos1 = [rows.index(t) for t in rows1]
    self_diff = np.r_[np.abs(b1 - b2[pos1]), np.abs(v1 - v2[np.ix_(pos1, ks1)]).ravel()]
    ident, n_disc, n_pairs = True, 0, 0
    gap = 0.0
    for r_i, t in enumerate(rows):
        i_, d_, p_, g_ = ranking_agreement(scores[t], b2[r_i] - v2[r_i])
        ident &= i_
        n_disc += d_
        n_pairs += p_
        gap = max(gap, g_)
    res.update(max_abs_diff=float(diffs.max()), n_over_tol=int((diffs > AGREE_TOL).sum()),
               naive_self_diff=float(self_diff.max()), agree_rows=len(rows), ranking_identical=bool(ident),
               discordant_pairs=n_disc, compared_pairs=n_pairs, discordant_max_naive_gap=gap,
               agreement_ok=bool(diffs.max() <= AGREE_TOL and ident))
    return res


def _cv_one(cfg, device, head_kind, seed=0):
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais.model_selection import cross_validate_alignment

    rng = np.random.default_rng(seed)
    n, K, hw = cfg["n"], cfg["K"], cfg["hw"]
    maps = make_maps(rng, n, K, hw)
    H = make_human(rng, maps)
    if head_kind is None:
        head, head_desc = PoolingHead("avg"), "GAP"
    else:
        head, head_desc = build_head(head_kind, K, hw)
    X = FeatureMaps(maps, head)
    # The default cv of cross_validate_alignment (the paper's protocol), in one call:
    # the folds share the kernels (one leave-one-out stack for all of them).
    cv = RepeatedKFold(n_splits=5, n_repeats=8, random_state=0)
    splits = list(cv.split(np.arange(n)))
    t, _, r = timed(lambda: cross_validate_alignment(AISSelector(device=str(device)), X, H, cv=cv, test="corrected_t"), 1, device)
    log(f"case 4 {head_desc}: {len(splits)} folds in {t:.1f} s")
    table = r.table
    res = dict(head=head_desc, n=n, K=K, folds=len(table),
               ours_s=t, fold_fit_s_median=float(table["fit_time"].median()),
               fold_fit_s_first=float(table["fit_time"].iloc[0]),
               ours_kind=f"measured: one cross_validate_alignment call, all {len(splits)} folds (fit, held-out scoring)",
               peak_rss_mb=rss_peak_mb(), peak_gpu_mb=gpu_peak_mb(device),
               test_score_selected_mean=float(table["test_score_selected"].mean()),
               test_score_full_mean=float(table["test_score_full"].mean()))
    # naive: per-candidate batch1 cost on the first fold's training images, x (2K + 1) x 40 folds
    train = splits[0][0]
    q = min(cfg["batch1_maps"], K)
    Ht = H[np.ix_(train, train)]
    order = np.arange(K)
    t_loo, _, _ = timed(lambda: naive.naive_loo(maps[train], head, Ht, np.arange(q), batch1=True, device=device),
                        1, device)
    t_sw, _, _ = timed(lambda: naive.naive_sweep(maps[train], head, Ht, order, np.linspace(1, K, q).round().astype(int),
                                                 batch1=True, device=device), 1, device)
    per_fold = t_loo / (q + 1) * (K + 1) + t_sw / q * K
    res["naive_s"] = per_fold * len(splits)
    res["naive_kind"] = (f"estimate: batch1 naive on the first fold's {len(train)} training images, {q} maps + base "
                         f"and {q} sweep steps, scaled to (2K+1) candidates x {len(splits)} folds (scoring not counted)")
    res["speedup"] = res["naive_s"] / res["ours_s"]
    return res


def case4(cfg, device):
    res = dict(case="4: 5x8 image-wise CV (paper protocol)", device=str(device))
    res["gap"] = _cv_one(cfg["gap"], device, None)
    res["vgg"] = _cv_one(cfg["vgg"], device, cfg["vgg"].get("head", "vgg16"))
    return res


def scale_point(n, K, hw, device, repeats):
    """Case-5 worker: one size in a fresh process."""
    rng = np.random.default_rng(0)
    maps = make_maps(rng, n, K, hw)
    H = make_human(rng, maps)
    X = FeatureMaps(maps, PoolingHead("avg"))
    rss0 = rss_now_mb()
    cpu0 = own_cpu_s()
    t, times, _ = timed(lambda: AISSelector(device=str(device)).fit(X, H), repeats, device)
    return dict(n=n, K=K, ours_s=t, ours_times_s=times, ours_cpu_s=(own_cpu_s() - cpu0) / repeats,
                rss_setup_mb=rss0, peak_rss_mb=rss_peak_mb(), peak_gpu_mb=gpu_peak_mb(device))


def case5(cfg, device, threads=1):
    res = dict(case="5: scaling of case 1 in n", K=cfg["K"], device=str(device), points=[])
    budget, limit = cfg["budget_s"], cfg["size_limit_s"]
    t0 = time.perf_counter()
    for n in cfg["ns"]:
        repeats = 3 if n <= 240 else 1
        done = [p for p in res["points"] if "ours_s" in p]
        if len(done) >= 2:  # predict this size's time from the last two measured sizes
            (n1, t1), (n2, t2) = [(p["n"], p["ours_s"]) for p in done[-2:]]
            slope = max(math.log(t2 / t1) / math.log(n2 / n1), 1.0)
            pred = t2 * (n / n2) ** slope
            if pred > limit or time.perf_counter() - t0 + pred * repeats > budget:
                note = f"skipped: predicted {pred:.0f} s per fit exceeds the time limit"
                res["points"].append(dict(n=n, skipped=note))
                continue
        out = _subprocess(["--worker", "scale", "--n", str(n), "--K", str(cfg["K"]), "--hw", str(cfg["hw"]),
                           "--repeats", str(repeats), "--device", str(device), "--threads", str(threads)])
        out.setdefault("n", n)
        res["points"].append(out)
    ok = [p for p in res["points"] if "ours_s" in p]
    if len(ok) >= 2:
        ln = np.log([p["n"] for p in ok])
        res["time_exponent"] = float(np.polyfit(ln, np.log([p["ours_s"] for p in ok]), 1)[0])
        res["time_exponent_last2"] = float(
            (math.log(ok[-1]["ours_s"]) - math.log(ok[-2]["ours_s"])) / (ln[-1] - ln[-2]))
        # The exponent an n^2 log n algorithm (sorting the m = n(n-1)/2 pairs) shows over the same sizes.
        ns_ok = np.array([p["n"] for p in ok], dtype=float)
        res["n2logn_reference_exponent"] = float(np.polyfit(ln, np.log(ns_ok**2 * np.log(ns_ok * (ns_ok - 1) / 2)), 1)[0])
        res["memory_exponent"] = float(np.polyfit(ln, np.log([p["peak_rss_mb"] for p in ok]), 1)[0])
        inc = [max(p["peak_rss_mb"] - p["rss_setup_mb"], 1.0) for p in ok]
        res["memory_increment_exponent"] = float(np.polyfit(ln, np.log(inc), 1)[0])
    return res


def _sort_timings(problem, target, repeats):
    """Seconds per sort of one candidate's m keys: fresh (numpy's sort, the floor) and the presorted
    alternatives of issue 17 (keys gathered into the base order, then quicksort / adaptive merge sort)."""
    from sklearn_ais import _similarity as sim

    base = problem._base_upper().cpu().numpy()
    cand = next(iter(problem._loo_uppers(np.array([problem.K // 2]))))[1].cpu().numpy()
    out = {}
    keys = {}
    for name, z in (("base", base), ("candidate", cand)):
        lowest = sim._KeyedSort.lowest_grid(target.ranks, z, True)
        if lowest is None:
            return dict(error="keys do not fit: the argsort route is taken")
        buf = sim._KeyBuffers(1, min(sim._SEGMENT, z.shape[1]), z.shape[1])
        keys[name] = sim._KeyedSort(target.ranks, z, lowest, min(sim._SEGMENT, z.shape[1]), buf).keys[0].copy()
    # unsort the candidate's keys back to triangle order (as the kernels produce them) ...
    z = cand[0]
    lowest = sim._KeyedSort.lowest_grid(target.ranks, cand, True)
    g = (np.trunc(z * sim.TIE_GRID + (sim.TIE_GRID + 0.5)) - lowest).astype(np.uint64)
    fresh = (g << np.uint64(target.ranks.bits)) | target.ranks.dense.astype(np.uint64)
    base_order = np.argsort(base[0], kind="stable")

    def t(fn):
        return timed(fn, repeats)[0]

    out["fresh_quicksort_s"] = t(lambda: np.sort(fresh))
    out["gather_to_base_order_s"] = t(lambda: fresh[base_order])
    pre = fresh[base_order]
    out["presorted_quicksort_s"] = t(lambda: np.sort(pre))
    out["presorted_mergesort_s"] = t(lambda: np.sort(pre, kind="stable"))
    out["fresh_mergesort_s"] = t(lambda: np.sort(fresh, kind="stable"))
    out["torch_sort_s"] = t(lambda: torch.sort(torch.from_numpy(fresh.view(np.int64))))
    out["package_sort_s"] = t(lambda: sim._KeyedSort._sort(_Row(fresh)))
    out["package_sort"] = (sim._long_row_sort(fresh[None].copy(), sim._KeyBuffers(1, 1, len(fresh)))
                           if len(fresh) >= sim._LONG_ROW else "numpy")  # short rows: always numpy's
    pos = np.empty(len(fresh), dtype=np.int64)
    pos[np.argsort(pre, kind="stable")] = np.arange(len(fresh))
    d = np.abs(pos - np.arange(len(fresh)))
    out["displacement_mean"], out["displacement_p99"] = float(d.mean()), float(np.percentile(d, 99))
    return out


class _Row:
    """A stand-in keyed sorter holding one row of fresh keys, for timing the package's own sort."""

    def __init__(self, keys):
        from sklearn_ais import _similarity as sim

        self.nb, self.keys = 1, keys[None].copy()
        self.buffers = sim._KeyBuffers(1, 1, keys.shape[0])


def things_point(cfg, device):
    """Case-6 worker at n = cfg['n']: fit (global AIS + full sweep), the sorting floor, agreement on
    a subset, per-image AIS; all in one process, RSS read after each step."""
    from sklearn_ais._ablation import make_kernel as mk
    from sklearn_ais._similarity import upper_triangle

    rng = np.random.default_rng(0)
    n, K = cfg["n"], cfg["K"]
    maps = make_maps(rng, n, K, 1)
    H = make_human(rng, maps)
    X = FeatureMaps(maps, PoolingHead("avg"))
    res = dict(case="6: THINGS-sized GAP", n=n, K=K, m_pairs=n * (n - 1) // 2, device=str(device),
               rss_setup_mb=rss_now_mb())
    probe = mk(X, "pearson", str(device))
    tv = probe.target(upper_triangle(H), "spearman")
    floor_before = _sort_timings(probe, tv, cfg["floor_repeats"])
    del probe
    from sklearn_ais import _similarity as sim

    in_fit = dict(n=0, wall=0.0, cpu=0.0)
    plain_sort = sim._KeyedSort._sort

    def counted_sort(self):  # the sorts our own fit performs, timed where they run
        w0, c0 = time.perf_counter(), time.process_time()
        plain_sort(self)
        in_fit["wall"] += time.perf_counter() - w0
        in_fit["cpu"] += time.process_time() - c0
        in_fit["n"] += 1

    sim._KeyedSort._sort = counted_sort
    cpu0 = own_cpu_s()
    try:
        t, _, sel = timed(lambda: AISSelector(device=str(device)).fit(X, H), 1, device)
    finally:
        sim._KeyedSort._sort = plain_sort
    res.update(ours_s=t, ours_cpu_s=own_cpu_s() - cpu0, peak_rss_fit_mb=rss_peak_mb(),
               peak_gpu_mb=gpu_peak_mb(device), sorts_in_fit=in_fit["n"], sort_in_fit_s=in_fit["wall"],
               sort_in_fit_cpu_s=in_fit["cpu"])
    log(f"case 6: fit {t:.1f} s")
    probe = mk(X, "pearson", str(device))
    floor_after = _sort_timings(probe, tv, cfg["floor_repeats"])
    res["sorts"] = dict(before=floor_before, after=floor_after)
    # whose sort the fit used: numpy's for short rows, for long ones the faster of numpy's and torch's
    res["sort_in_fit_by"] = dict(choice="numpy") if res["m_pairs"] < sim._LONG_ROW else \
        dict(sim._KEY_SORT_CHOICE, choice=sim._long_row_sort())
    # The floor: the sorts of m keys our fit performed (one per candidate: base, K leave-one-out, K sweep
    # steps), timed where they ran, so that they saw the same machine load as the rest of the fit.
    res["floor_s"], res["floor_cpu_s"] = res["sort_in_fit_s"], res["sort_in_fit_cpu_s"]
    res["floor_per_sort_s"] = res["sort_in_fit_s"] / max(1, res["sorts_in_fit"])
    res["ours_over_floor"] = t / res["floor_s"] if res["floor_s"] else float("nan")
    res["ours_over_floor_cpu"] = res["ours_cpu_s"] / res["floor_cpu_s"] if res["floor_cpu_s"] else float("nan")
    # agreement on a subset, batched naive (zero the map, corrcoef, scipy)
    ais = sel.scores_
    order = np.argsort(-ais, kind="stable")
    ks = np.unique(np.r_[order[0], order[K // 2], order[-1]])[: cfg["agree_maps"]]
    ts = np.unique(np.r_[1, sel.n_features_to_select_, K // 2])[: cfg["agree_ts"]]
    base_n, vals_n = naive.naive_loo(maps, X.head, H, ks, batch1=False)
    sw_n = naive.naive_sweep(maps, X.head, H, order, ts, batch1=False)
    diffs = np.r_[abs(base_n - sel.baseline_score_), np.abs(vals_n - (sel.baseline_score_ - ais[ks])),
                  np.abs(sw_n - sel.path_scores_[ts - 1])]
    res.update(max_abs_diff=float(diffs.max()), agree_maps=len(ks), agree_ts=len(ts))
    if cfg.get("per_image"):
        cpu0 = own_cpu_s()
        t_pi, _, (pb, pa) = timed(lambda: probe.per_image(H, "spearman"), 1, device)
        res.update(per_image_s=t_pi, per_image_cpu_s=own_cpu_s() - cpu0, peak_rss_mb=rss_peak_mb())
        log(f"case 6: per-image {t_pi:.1f} s")
        rows = list(np.linspace(0, n - 1, cfg["agree_rows"]).round().astype(int))
        b_n, v_n = naive.naive_per_image(maps, X.head, H, rows, ks, batch1=False)
        d_pi = np.r_[np.abs(b_n - pb[rows]), np.abs(v_n - pa[np.ix_(rows, ks)]).ravel()]
        res["max_abs_diff_per_image"] = float(d_pi.max())
        diffs = np.r_[diffs, d_pi]
    else:
        res["peak_rss_mb"] = rss_peak_mb()
    res["agreement_ok"] = bool(diffs.max() <= AGREE_TOL)
    return res


def case6(cfg, device, threads=1):
    """THINGS-sized: the full point at n = 1854 and the scaling fit over cfg['ns'] + [n]."""
    res = _subprocess(["--worker", "things", "--n", str(cfg["n"]), "--K", str(cfg["K"]), "--device", str(device),
                       "--threads", str(threads)] + (["--quick"] if cfg is QUICK["case6"] else []))
    points = []
    for n in cfg["ns"]:
        p = _subprocess(["--worker", "scale", "--n", str(n), "--K", str(cfg["K"]), "--hw", "1",
                         "--repeats", "1", "--device", str(device), "--threads", str(threads)])
        p.setdefault("n", n)
        points.append(p)
    if "ours_s" in res:
        points.append(dict(n=cfg["n"], K=cfg["K"], ours_s=res["ours_s"], ours_cpu_s=res["ours_cpu_s"],
                           peak_rss_mb=res["peak_rss_fit_mb"]))
    res["points"] = points
    ok = [p for p in points if "ours_s" in p]
    if len(ok) >= 2:
        ln = np.log([p["n"] for p in ok])
        res["time_exponent"] = float(np.polyfit(ln, np.log([p["ours_s"] for p in ok]), 1)[0])
        res["cpu_time_exponent"] = float(np.polyfit(ln, np.log([p["ours_cpu_s"] for p in ok]), 1)[0])
    return res


def case7(cfg, device):
    return _selector_case(f"7: VGG16 global AIS + sweep, n={cfg['n']}", cfg, device, head_kind=cfg.get("head", "vgg16"),
                          floor=True)


CASES = {"1": case1, "2": case2, "3": case3, "4": case4, "5": case5, "6": case6, "7": case7}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def _subprocess(args, timeout=None):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--json-out", path]
        proc = subprocess.run(cmd, timeout=timeout)
        if proc.returncode != 0:
            return dict(error=f"worker {' '.join(args)} exited with {proc.returncode}")
        with open(path) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        return dict(error=f"worker {' '.join(args)} timed out after {timeout} s")
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _save(path, obj):
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(obj, f, indent=2, default=float)


def _fmt_s(x):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1e3:.1f} ms"


def _status(ok):
    return "MET" if ok else "MISSED"


def evaluate_targets(results):
    """Attach pass/fail against the issue's targets (meaningful for the full sizes only)."""
    out = {}
    r = results.get("1")
    if r and "speedup" in r:
        out["1"] = dict(speedup_ge_100=r["speedup"] >= 100, agreement=r["agreement_ok"])
    r = results.get("2")
    if r and "speedup" in r:
        out["2"] = dict(speedup_ge_75=r["speedup"] >= 75, within_1_5x_floor=r["ours_over_floor"] <= 1.5,
                        peak_rss_lt_3gb=r["peak_rss_mb"] < 3 * 1024, agreement=r["agreement_ok"])
    r = results.get("3")
    if r and "speedup" in r:
        out["3"] = dict(speedup_ge_50=r["speedup"] >= 50, agreement=r["agreement_ok"])
    r = results.get("4")
    if r and "vgg" in r and "ours_s" in r["vgg"]:
        out["4"] = dict(vgg_lt_10min=r["vgg"]["ours_s"] < 600)
    r = results.get("6")
    if r and "ours_s" in r:
        out["6"] = dict(le_3min=r["ours_s"] <= 180, le_2x_sort_floor=r["ours_over_floor"] <= 2.0,
                        le_2x_sort_floor_cpu=r["ours_over_floor_cpu"] <= 2.0,
                        peak_rss_le_4gb=r["peak_rss_mb"] <= 4096, alpha_le_2_3=r.get("time_exponent", 9) <= 2.3,
                        agreement=r["agreement_ok"])
    r = results.get("7")
    if r and "speedup" in r:
        out["7"] = dict(agreement=r["agreement_ok"])
    r = results.get("5")
    if r and "time_exponent" in r:
        out["5"] = dict(time_exponent_le_2=r["time_exponent"] <= 2.0 + 0.05,
                        time_exponent_le_n2logn=r["time_exponent"] <= r["n2logn_reference_exponent"] + 0.05)
    return out


def _case6_rows(r, row, lines):
    """Table rows of case 6 (THINGS-sized): fit, sorting floor, presorting, per-image, scaling."""
    row(f"6: THINGS n={r['n']} K={r['K']} AIS+sweep", r["ours_s"], None, "", r["peak_rss_fit_mb"],
        r["max_abs_diff"])
    lines.append(f"{'   (CPU time of our process)':<34} {_fmt_s(r.get('ours_cpu_s')):>10}   "
                 "(wall time above; the difference is time other processes held the cores)")
    lines.append(f"{'   sorting floor':<34} {_fmt_s(r['floor_s']):>10}   ours/floor = {r['ours_over_floor']:.2f}"
                 f" (CPU time: {_fmt_s(r['floor_cpu_s'])}, ours/floor = {r['ours_over_floor_cpu']:.2f}); "
                 f"{r['sorts_in_fit']} sorts of m = {r['m_pairs']:,} uint64 keys, "
                 f"{r['floor_per_sort_s'] * 1e3:.1f} ms each, timed inside our fit"
                 + (f", by {r['sort_in_fit_by']['choice']}'s sort" if "sort_in_fit_by" in r else ""))
    srt = r["sorts"]["after"]
    if "fresh_quicksort_s" in srt:
        lines.append(f"{'   presorting (per sort)':<34} fresh {srt['fresh_quicksort_s'] * 1e3:.1f} ms; in base order:"
                     f" gather {srt['gather_to_base_order_s'] * 1e3:.1f} ms + quicksort "
                     f"{srt['presorted_quicksort_s'] * 1e3:.1f} ms / merge sort "
                     f"{srt['presorted_mergesort_s'] * 1e3:.1f} ms (fresh merge sort "
                     f"{srt['fresh_mergesort_s'] * 1e3:.1f} ms, torch {srt['torch_sort_s'] * 1e3:.1f} ms"
                     + (f", the package's {srt['package_sort_s'] * 1e3:.1f} ms ({srt['package_sort']})"
                        if "package_sort_s" in srt else "") + "; "
                     f"mean displacement {srt['displacement_mean']:.0f} positions)")
    if "per_image_s" in r:
        row("6: THINGS per-image AIS", r["per_image_s"], None, "", r["peak_rss_mb"],
            r.get("max_abs_diff_per_image"))
    for p in r["points"][:-1]:
        if "ours_s" in p:
            row(f"6: GAP K={r['K']} n={p['n']}", p["ours_s"], None, "", p["peak_rss_mb"])
    if "time_exponent" in r:
        ns = [p["n"] for p in r["points"] if "ours_s" in p]
        lines.append(f"{'   fitted exponent (log-log)':<34} time ~ n^{r['time_exponent']:.2f} over n = "
                     f"{min(ns)} .. {max(ns)} (CPU time ~ n^{r.get('cpu_time_exponent', float('nan')):.2f})")


def print_table(results, targets, quick):
    hdr = (f"{'case':<34} {'ours':>10} {'naive':>10} {'naive src':>9} {'ratio':>8} {'peak RSS':>9} "
           f"{'max|d2OI|':>10} {'naive-fp':>9} {'ranks':>10}")
    lines = [hdr, "-" * len(hdr)]

    def row(name, ours, naive_s, src, peak, diff=None, ranks=None, noise=None):
        ratio = f"{naive_s / ours:.0f}x" if ours and naive_s else "-"
        lines.append(f"{name:<34} {_fmt_s(ours):>10} {_fmt_s(naive_s):>10} {src:>9} {ratio:>8} "
                     f"{(f'{peak:.0f} MB' if peak else '-'):>9} {(f'{diff:.1e}' if diff is not None else '-'):>10} "
                     f"{(f'{noise:.1e}' if noise is not None else '-'):>9} {(ranks or '-'):>10}")

    def ranks_str(r):
        if "ranking_identical" not in r:
            return None
        return "identical" if r["ranking_identical"] else f"{r['discordant_pairs']} disc."

    for key in ("1", "2", "3", "7"):
        r = results.get(key)
        if not r:
            continue
        if "error" in r:
            lines.append(f"{key:<34} ERROR: {r['error']}")
            continue
        row(r["case"], r["ours_s"], r["naive_s"], "scaled", r["peak_rss_mb"], r["max_abs_diff"], ranks_str(r),
            r.get("naive_self_diff"))
        row("   vs batched naive (info)", r["ours_s"], r["naive_batched_s"],
            "measured" if r["naive_batched_kind"].startswith("measured") else "scaled", None)
        if key in ("2", "7"):
            if "dense_sweep_floor_s" in r:
                lines.append(f"{'   (floor counting every sweep row)':<34} {_fmt_s(r['dense_sweep_floor_s']):>10}   "
                             f"ours/floor = {r['ours_over_dense_sweep_floor']:.2f}  ({r['fc7_rows_loo'] + r['n'] * r['K']} "
                             "rows: the previous definition)")
            lines.append(f"{'   fc7 GEMM floor':<34} {_fmt_s(r['floor_s']):>10}   ours/floor = {r['ours_over_floor']:.2f}"
                         f"  ({r['fc7_rows_loo'] + r['fc7_rows_sweep']} rows of {r['fc7_shape'][0]}x{r['fc7_shape'][1]}"
                         f" at {r['gemm_gflops']:.0f} GFLOP/s, measured in-process; alive pairs "
                         f"{r['alive_fraction']:.0%})")
    r = results.get("4")
    if r:
        if "error" in r:
            lines.append(f"{'4':<34} ERROR: {r['error']}")
        else:
            for k in ("gap", "vgg"):
                c = r[k]
                folds = c.get("folds", c.get("folds_total"))
                row(f"4: CV 5x8 {k.upper()} ({folds} folds)", c["ours_s"], c["naive_s"], "estimate", c["peak_rss_mb"])
    r = results.get("6")
    if r:
        if "error" in r:
            lines.append(f"{'6':<34} ERROR: {r['error']}")
        else:
            _case6_rows(r, row, lines)
    r = results.get("5")
    if r:
        if "error" in r:
            lines.append(f"{'5':<34} ERROR: {r['error']}")
        else:
            for p in r["points"]:
                if "ours_s" in p:
                    row(f"5: GAP n={p['n']}", p["ours_s"], None, "", p["peak_rss_mb"])
                else:
                    lines.append(f"{'5: GAP n=' + str(p['n']):<34} {p.get('skipped') or p.get('error')}")
            if "time_exponent" in r:
                lines.append(f"{'   fitted exponent (log-log)':<34} time {r['time_exponent']:.2f} "
                             f"(last two sizes {r['time_exponent_last2']:.2f}; n^2 log n would give "
                             f"{r['n2logn_reference_exponent']:.2f}), peak RSS {r['memory_exponent']:.2f} "
                             f"(increment over setup {r['memory_increment_exponent']:.2f})")
    lines.append("")
    lines.append("naive = the reference algorithm (batch size 1 per image), timed on a subset and scaled linearly "
                 "(see JSON '*_kind'). max|d2OI| = ours vs naive on the checked candidates; naive-fp = the naive "
                 "algorithm against itself (batch size 1 vs batched: its own float32 noise); ranks = AIS ranking of "
                 f"the checked maps vs naive, ties (|gap| <= {TIE_TOL:g}) ignored.")
    if targets and not quick:
        lines.append("Targets:")
        for key, checks in targets.items():
            lines.append(f"  case {key} ({TARGETS['case' + key]}): " +
                         ", ".join(f"{k}={_status(v)}" for k, v in checks.items()))
    elif quick:
        lines.append("(quick mode: sizes are tiny; the speed targets apply to the full run only)")
    return "\n".join(lines)


def run_case_inprocess(key, sizes, device):
    fn = CASES[key]
    cfg = sizes[f"case{key}"]
    return fn(cfg, device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, smoke run (< 1 min)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--cases", default="1,2,3,4,5", help="comma-separated case numbers")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for torch and numpy's BLAS, ours and naive alike (default 1: on a shared 2-core "
                         "machine 2 threads were slower for both; use --threads 2 on a quiet one)")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="print the table of saved result files (merged in order) and exit")
    # internal
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--K", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--hw", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.report:
        results = {}
        for path in args.report:
            with open(path) as f:
                results.update(json.load(f)["results"])
        print(print_table(results, evaluate_targets(results), args.quick))
        return 0
    set_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    sizes = QUICK if args.quick else FULL

    if args.worker:
        if args.worker == "scale":
            out = scale_point(args.n, args.K, args.hw, device, args.repeats)
        elif args.worker == "things":
            out = things_point(sizes["case6"], device)
        else:
            out = run_case_inprocess(args.worker, sizes, device)
        with open(args.json_out, "w") as f:
            json.dump(out, f, default=float)
        return 0

    keys = [c.strip() for c in args.cases.split(",") if c.strip()]
    for k in keys:
        if k not in CASES:
            ap.error(f"unknown case {k!r}; choose from {sorted(CASES)}")
    t0 = time.perf_counter()
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    results = {}
    for k in keys:
        print(f"[bench] case {k} ...", flush=True)
        tk = time.perf_counter()
        if k == "5":
            results[k] = case5(sizes["case5"], device, args.threads)
        elif k == "6":
            results[k] = case6(sizes["case6"], device, args.threads)
        else:
            wargs = ["--worker", k, "--device", device] + (["--quick"] if args.quick else [])
            wargs += ["--threads", str(args.threads)]
            results[k] = _subprocess(wargs)
        results[k]["wall_s"] = time.perf_counter() - tk
        print(f"[bench] case {k} done in {results[k]['wall_s']:.0f} s", flush=True)
        _save(args.out, dict(partial=True, results=results))
    total = time.perf_counter() - t0
    busy1, own1 = cpu_busy_s(), own_cpu_s()
    other_load = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / total
    targets = evaluate_targets(results)
    table = print_table(results, targets, args.quick)
    print()
    print(table)
    print(f"\ntotal benchmark time: {_fmt_s(total)}; threads: {args.threads}"
          + (f"; CPU load from other processes during the run: {other_load:.2f} of {os.cpu_count()} cores"
             if other_load is not None else ""))
    meta = dict(
        quick=args.quick, device=device, torch=torch.__version__, numpy=np.__version__,
        threads=torch.get_num_threads(), cpu_count=os.cpu_count(), platform=platform.platform(),
        processor=platform.processor(), total_s=total, other_load_cores=other_load, date=time.strftime("%Y-%m-%d %H:%M:%S"),
        agree_tol=AGREE_TOL, tie_tol=TIE_TOL, targets=TARGETS,
    )
    _save(args.out, dict(meta=meta, results=results, targets_met=targets, table=table))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
