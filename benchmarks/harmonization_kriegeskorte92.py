"""Harmonization with AIS heatmaps as targets, on the 92 photographs of Kriegeskorte et al. (2008).

In each of K image folds (stratified by the six categories): the pretrained EfficientNet-Lite0's feature maps of the
training images and the human similarities among them give an :class:`~sklearn_ais.AISHeatmapper` (fitted on the
training images only); its heatmaps of the training images are the target maps of a :class:`Harmonizer`
fine-tuning the network on the category labels (a new 6-way classifier). The control is the same fine-tuning with
``map_weight=0``. On the held-out images the script reports

* the held-out 2OI: Spearman correlation of the network's embedding similarities (Pearson RSM of the pooled
  last-conv maps, ``DNNFeatureMapTransformer(backbone=harmonizer.model_)``) with the human similarities among the
  held-out images, before fine-tuning, after the control and after harmonization;
* the alignment of the network's gradient saliency with the held-out images' own AIS heatmaps (a heatmapper fitted
  on the held-out images and their similarities, with the starting network: the maps the training would have asked
  for), as the feature alignment score;
* the category accuracy.

CPU time is tight (second-order gradients through EfficientNet-Lite0), so the images are fed at 128 x 128 (maps
4 x 4) and the defaults are 2 folds and 3 epochs. Run (about 13 minutes on one core)::

    SKLEARN_AIS_DATA=/path/to/data OMP_NUM_THREADS=1 python benchmarks/harmonization_kriegeskorte92.py
    SKLEARN_AIS_DATA=/path/to/data OMP_NUM_THREADS=1 python benchmarks/harmonization_kriegeskorte92.py \
        --freeze-norm --epochs 4
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from sklearn_ais import AISHeatmapper, DNNFeatureMapTransformer
from sklearn_ais.alignment import Harmonizer
from sklearn_ais.backbones import get_backbone
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.metrics import alignment_score


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_kriegeskorte92()
    labels = np.asarray(data.categories["category"].astype(str))
    H = data.similarity
    bb = get_backbone("efficientnet_lite0", input_size=args.size, resize_size=args.size)
    transformer = DNNFeatureMapTransformer(backbone=bb, device="cpu").fit(data.images)
    fm = transformer.transform(data.images)
    fm.ids = data.ids
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(data.images, labels)
    rows = []
    for k, (train, test) in enumerate(folds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            hm_train = AISHeatmapper(output="input").fit(fm[train], H[np.ix_(train, train)])
            hm_test = AISHeatmapper(output="input").fit(fm[test], H[np.ix_(test, test)])
            test_maps = hm_test.transform(fm[test])
        Ht = H[np.ix_(test, test)]
        row = {"fold": k, "n_train": len(train), "n_test": len(test),
               "2OI_start": alignment_score(fm[test].embed(), Ht)}
        for name, weight in (("control", 0.0), ("harmonized", 1.0)):
            h = Harmonizer(bb, epochs=args.epochs, lr=args.lr, batch_size=8, map_weight=weight,
                           validation_fraction=None, random_state=k, device="cpu", freeze_norm=args.freeze_norm)
            h.fit(data.images[train], labels[train], maps=hm_train, ids=data.ids[train])
            res = h.evaluate(data.images[test], labels[test], maps=test_maps, similarity=Ht, ids=data.ids[test])
            row[f"2OI_{name}"] = res["after"]["2OI"]
            row[f"AIS_alignment_{name}"] = res["after"]["feature_alignment"]
            row[f"accuracy_{name}"] = res["after"]["accuracy"]
            row["AIS_alignment_start"] = res["before"]["feature_alignment"]
            row[f"map_term_{name}"] = [round(r["map_term"], 5) for r in h.history_]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    keys = ["2OI_start", "2OI_control", "2OI_harmonized", "AIS_alignment_start", "AIS_alignment_control",
            "AIS_alignment_harmonized", "accuracy_control", "accuracy_harmonized"]
    summary = {key: float(np.mean([r[key] for r in rows])) for key in keys}
    summary["seconds"] = time.perf_counter() - t0
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--freeze-norm", action="store_true", help="batch norm in eval mode while training")
    print(json.dumps(run(p.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
