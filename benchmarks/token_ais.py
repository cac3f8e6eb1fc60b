"""Token AIS on a ViT-S/16 (random weights, seeded), n = 92 (Kriegeskorte's photos), CPU: our kernels against the
naive loop, timed in the same run, with an agreement check.

Two heads of the maps of a ViT block (its patch tokens on the 14 x 14 grid, 384 channels):

* ``cls``: the input of the last block; the head runs the model's own last block, final norm and pooling
  (CLS token). Ours: the batched brute-force kernel (many (channel, image) rows through the block in one
  batch). Naive: for each channel, zero it in every patch token, run the same modules on the 92 images
  (one batch per channel), ``np.corrcoef``, ``scipy.stats.spearmanr``.
* ``mean``: the output of the last block, the mean of its patch tokens. Ours: the rank-one pooling kernel.
  Naive: the same loop, re-pooling the ablated tokens.

Both are the channel AIS (leave-one-out; the kernel's ``leave_one_out``). For the ``cls`` head both are timed
on ``--naive-channels`` channels and scaled linearly to all 384 (each channel costs the same: one pass of the
block over the images); the ``mean`` head is timed on all 384. Usage::

    OMP_NUM_THREADS=1 nice python benchmarks/token_ais.py [--naive-channels 48] [--images 92]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.stats
import torch


def _upper(M):
    return M[np.triu_indices(len(M), 1)]


def _two_oi(E, h):
    return scipy.stats.spearmanr(_upper(np.corrcoef(E)), h)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=92)
    parser.add_argument("--naive-channels", type=int, default=48)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "token_ais.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from sklearn_ais import DNNFeatureMapTransformer, FeatureMaps
    from sklearn_ais._ablation import make_kernel
    from sklearn_ais.backbones import PoolingHead
    from sklearn_ais.datasets import load_kriegeskorte92

    data = load_kriegeskorte92()
    n = args.images
    images, H = data.images[:n], data.similarity[:n, :n]
    h = _upper(H)
    t0 = time.perf_counter()
    t = DNNFeatureMapTransformer("timm:vit_small_patch16_224", weights=None, random_state=0,
                                 layer=["blocks.10", "blocks.11"], device="cpu").fit(images)
    layers = t.transform(images)
    extract_s = time.perf_counter() - t0
    model = t.backbone_.model
    K = layers["blocks.10"].n_maps
    rows = []
    for kind in ("cls", "mean"):
        if kind == "cls":
            fm = layers["blocks.10"]
            tokens = torch.cat([torch.from_numpy(fm.extra_tokens), torch.from_numpy(fm.maps).flatten(2).transpose(1, 2)], 1)

            def embed(x):
                with torch.inference_mode():
                    return model.forward_head(model.norm(model.blocks[11](x)), pre_logits=True).double().numpy()
        else:
            src = layers["blocks.11"]
            fm = FeatureMaps(src.maps, PoolingHead("avg"), extra_tokens=src.extra_tokens, token_pooling="mean")
            tokens = torch.cat([torch.from_numpy(src.extra_tokens), torch.from_numpy(src.maps).flatten(2).transpose(1, 2)], 1)

            def embed(x):
                return x[:, 1:].double().mean(1).numpy()

        channels = np.arange(K) if kind == "mean" else np.linspace(0, K - 1, args.naive_channels).astype(int)
        t0 = time.perf_counter()
        kernel = make_kernel(fm, "pearson", "cpu")
        b, scores = kernel.leave_one_out(kernel.target(h, "spearman"), maps=channels)
        ours_s = (time.perf_counter() - t0) * K / len(channels)
        ais = dict(zip(channels.tolist(), b - scores))
        t0 = time.perf_counter()
        base = _two_oi(embed(tokens), h)
        naive = {}
        for k in channels:
            x = tokens.clone()
            x[:, 1:, k] = 0
            naive[int(k)] = base - _two_oi(embed(x), h)
        naive_s = (time.perf_counter() - t0) * K / len(channels)
        diff = max(abs(ais[k] - v) for k, v in naive.items())
        rows.append({"head": kind, "n": n, "K": K, "ours_s": ours_s, "naive_s": naive_s,
                     "channels_timed": len(channels), "ratio": naive_s / ours_s, "max_abs_diff": float(diff)})
    load = os.getloadavg()
    print(f"ViT-S/16 (random weights, seed 0), n = {n}, K = {K}, CPU, torch threads {torch.get_num_threads()}, "
          f"extraction {extract_s:.1f} s, load average {load[0]:.1f} (of {os.cpu_count()} cores)")
    print(f"{'head':6s} {'ours (s)':>10s} {'naive (s)':>10s} {'ratio':>7s} {'max |diff|':>11s}  both timed on")
    for r in rows:
        print(f"{r['head']:6s} {r['ours_s']:10.2f} {r['naive_s']:10.2f} {r['ratio']:7.1f} {r['max_abs_diff']:11.1e}  "
              f"{r['channels_timed']} of {r['K']} channels")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "extract_s": extract_s, "load": load}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
