"""Scale-out benchmark: a model-zoo comparison serially and on a 2-worker dask ``LocalCluster``.

    python benchmarks/scale_out.py [--quick] [--out PATH]

The comparison of issue 14: ``compare_alignment`` over 2 backbones (VGG16 with
random weights, seed 0, and the offline-pretrained EfficientNet-Lite0) x 4
methods ("none", "ais", "reweighting", "glocal") x 5 image-wise folds on the
92 photographs of Kriegeskorte et al. (2008), run

* serially (``n_jobs=1``; torch and BLAS may use every core, as a user's run does),
* with ``--one-core``, also serially on one core (torch and BLAS limited to one
  thread: what one worker of the cluster does, for the scale-out's own
  efficiency), and
* through ``joblib.parallel_config(backend="dask")`` on a ``LocalCluster`` of
  2 worker processes with 1 thread each, started (and its start-up timed
  separately) before the run.

The runs are timed side by side in one process (wall and CPU time of the
process); the tables must be equal (``fit_time`` aside). The serial run's CPU
time over its wall time is how many cores it already keeps busy: with ``c``
cores busy on average, ``c / 2`` is the best a 2-worker cluster on the same 2
cores can reach against it. Bytes over the wire are the loopback interface's
counters (``psutil.net_io_counters``) during the cluster run: scheduler,
workers and client all talk over ``lo`` on one machine; they are compared
with the size of the two backbones' feature maps.

The workers run without dask's default ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``), as the README's "Running on a
cluster" recommends: setting it turns off glibc's adaptive mmap threshold, so
every large temporary array is mapped and unmapped again (page faults), which
made the fold tasks about 2x slower on the workers than in the client.
``--dask-defaults`` keeps dask's setting, for comparison.

``--quick``: 30 images, 3 folds, Lite0 and a random RegNetY-400MF (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np


def _loopback_bytes() -> int | None:
    import psutil

    counters = psutil.net_io_counters(pernic=True)
    lo = counters.get("lo")
    return None if lo is None else int(lo.bytes_sent)


def _problem(quick: bool):
    from sklearn_ais import DNNFeatureMapTransformer
    from sklearn_ais.datasets import load_kriegeskorte92

    data = load_kriegeskorte92()
    n = 30 if quick else len(data.images)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(data.images), n, replace=False)) if quick else np.arange(n)
    images = [data.images[i] for i in idx]
    H = np.asarray(data.similarity)[np.ix_(idx, idx)]
    other = "regnet_y_400mf" if quick else "vgg16"
    backbones = [
        (f"{other} (random)", DNNFeatureMapTransformer(other, weights=None, random_state=0)),
        ("efficientnet_lite0", DNNFeatureMapTransformer("efficientnet_lite0")),
    ]
    return backbones, images, H, (3 if quick else 5)


def _run(backbones, images, H, cv, n_jobs):
    from sklearn.base import clone

    from sklearn_ais.alignment import compare_alignment

    fresh = [(label, clone(t)) for label, t in backbones]  # nothing cached between the runs
    t0, c0 = time.perf_counter(), time.process_time()
    result = compare_alignment(fresh, images, H, cv=cv, n_jobs=n_jobs)
    return time.perf_counter() - t0, time.process_time() - c0, result


def _warm_up(backbones, images, H):
    """Imports, first model builds and torch's first calls, outside every clock (a 12-image, 2-fold comparison)."""
    _run(backbones, images[:12], H[:12, :12], 2, n_jobs=1)


def _run_on_one_core(backbones, images, H, cv):
    from threadpoolctl import threadpool_limits

    from sklearn_ais._device import torch_threads

    with torch_threads(1), threadpool_limits(1):
        return _run(backbones, images, H, cv, n_jobs=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/scale_out.json")
    parser.add_argument("--one-core", action="store_true", help="also time the serial run on one core")
    parser.add_argument("--dask-defaults", action="store_true", help="keep dask's MALLOC_TRIM_THRESHOLD_ on the workers")
    args = parser.parse_args(argv)

    import distributed
    import pandas as pd
    from joblib import parallel_config

    backbones, images, H, cv = _problem(args.quick)
    print(f"{len(images)} images, {cv} folds, backbones {[b for b, _ in backbones]}, 4 methods", flush=True)

    _warm_up(backbones, images, H)
    serial_s, serial_cpu_s, serial = _run(backbones, images, H, cv, n_jobs=1)
    print(f"serial (n_jobs=1): {serial_s:.1f} s wall, {serial_cpu_s:.1f} s CPU ({serial_cpu_s / serial_s:.2f} cores "
          "busy on average)", flush=True)
    one_core_s, one_core = None, None
    if args.one_core:
        one_core_s, _, one_core = _run_on_one_core(backbones, images, H, cv)
        print(f"serial on one core: {one_core_s:.1f} s", flush=True)

    import dask

    if not args.dask_defaults:  # None unsets the variable (see the module docstring)
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    client.run(_warm_up, backbones, images, H)  # the workers warm up as the serial runs did, before the clock
    startup_s = time.perf_counter() - t0
    before = _loopback_bytes()
    with parallel_config(backend="dask"):
        cluster_s, _, clustered = _run(backbones, images, H, cv, n_jobs=-1)
    after = _loopback_bytes()
    client.close()
    cluster.close()
    print(f"2-worker LocalCluster: {cluster_s:.1f} s (cluster start-up {startup_s:.1f} s, not counted)", flush=True)

    for other in (clustered,) if one_core is None else (one_core, clustered):
        pd.testing.assert_frame_equal(serial.table.drop(columns="fit_time"), other.table.drop(columns="fit_time"))
    maps_mb = sum(_maps_bytes(label, backbones, images) for label, _ in backbones) / 1e6
    wire_mb = None if before is None else (after - before) / 1e6
    figures = {
        "n_images": len(images), "folds": cv, "backbones": [b for b, _ in backbones],
        "serial_s": serial_s, "serial_cpu_s": serial_cpu_s, "serial_cores_busy": serial_cpu_s / serial_s,
        "best_ratio_on_2_cores": serial_cpu_s / serial_s / 2, "serial_one_core_s": one_core_s,
        "cluster_s": cluster_s, "ratio": cluster_s / serial_s,
        "ratio_vs_one_core": None if one_core_s is None else cluster_s / one_core_s,
        "cluster_startup_s": startup_s,
        "worker_malloc_trim_threshold": "dask default (65536)" if args.dask_defaults else "unset",
        "loopback_mb": wire_mb, "feature_maps_mb": maps_mb, "tables_equal": True,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "target": "cluster <= 0.65x serial on 2 cores",
    }
    print(f"ratio cluster / serial: {figures['ratio']:.2f} (target <= 0.65; at best {figures['best_ratio_on_2_cores']:.2f} "
          f"on 2 cores against this serial run); cluster / serial on one core: {figures['ratio_vs_one_core']}; "
          f"feature maps {maps_mb:.1f} MB, loopback traffic "
          f"{wire_mb if wire_mb is None else round(wire_mb, 1)} MB; tables equal", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    return figures


def _maps_bytes(label, backbones, images):
    """Bytes of one backbone's feature maps (float32), for scale beside the traffic."""
    transformer = dict(backbones)[label]
    from sklearn.base import clone

    maps = clone(transformer).fit(None).transform(images)
    return sum(m.nbytes for m in (maps.maps if maps.ragged else [maps.maps]))


if __name__ == "__main__":
    main()
