"""Deletion test of heatmap sources on the 92 photographs (README, "Do heatmaps carry the alignment?").

For every photograph, the top x % of its visible pixels by each heatmap are removed by ROAD's noisy linear
imputation, the maps are re-extracted by EfficientNet-Lite0 (offline ImageNet weights) and the held-out row 2OI
with the mean human similarity is recorded; the table is the area under each image's curve (its mean height),
averaged over the 92 images, and the Wilcoxon signed-rank test over images of every source against AIS. AIS
heatmaps are cross-fitted (5 image-wise folds): no heatmap has seen its image's human row.

Run (slow: about 20-40 min on 2 shared CPU cores without Score-CAM; Score-CAM costs one forward pass per map and
image, 1280 x 92, and is opt-in)::

    SKLEARN_AIS_DATA=../shared/data nice python benchmarks/deletion_kriegeskorte92.py [--scorecam] [--n-jobs N] [--out FILE]
"""

import argparse
import json
import time

import pandas as pd

from sklearn_ais import DNNFeatureMapTransformer
from sklearn_ais.datasets import load_kriegeskorte92
from sklearn_ais.evaluation import deletion_test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorecam", action="store_true", help="also Score-CAM (1280 forward passes per image)")
    parser.add_argument("--n-images", type=int, default=None, help="first N images only (a smoke run)")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.5,0.7,1", help="fractions of visible pixels")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel ROAD solves (joblib n_jobs)")
    parser.add_argument("--out", default=None, help="write the tables as JSON here")
    args = parser.parse_args(argv)

    data = load_kriegeskorte92()
    images, H = data.images, data.similarity
    if args.n_images:
        images, H = images[: args.n_images], H[: args.n_images, : args.n_images]
    transformer = DNNFeatureMapTransformer(batch_size=32).fit(images)
    methods = ("ais", "gradcam", "guided_backprop") + (("scorecam",) if args.scorecam else ()) \
        + ("random", "center_bias", "inverted")
    fractions = [float(x) for x in args.fractions.split(",")]
    start = time.perf_counter()
    curves, table = deletion_test(transformer, images, H, methods=methods, cv=5, fractions=fractions,
                                  objective=("alignment", "logits"), random_state=0, n_jobs=args.n_jobs,
                                  verbose=1)
    seconds = time.perf_counter() - start
    logits = curves.compare("ais", objective="logits")
    pd.set_option("display.width", 160)
    print(f"{len(images)} images, fractions {fractions}, ROAD removal, {seconds:.0f} s")
    print("\nDeletion AUC of the held-out row 2OI (lower = the heatmap's top pixels carry more alignment):")
    print(table.round(4).to_string())
    print("\nDeletion AUC of the top-1 class logit:")
    print(logits.round(4).to_string())
    print("\nMean curves (row 2OI):")
    print(curves.mean_curves().round(4).to_string())
    print("\nMatrix 2OI with every image perturbed:")
    print(pd.DataFrame(curves.matrix_alignment, index=curves.fractions).round(4).to_string())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"seconds": seconds, "fractions": fractions, "alignment": table.reset_index().to_dict("records"),
                       "logits": logits.reset_index().to_dict("records"),
                       "mean_curves": curves.mean_curves().to_dict()}, fh, indent=1, default=float)
    return curves, table


if __name__ == "__main__":
    main()
