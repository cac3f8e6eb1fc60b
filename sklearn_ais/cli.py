"""Command line: ``sklearn-ais demo`` and ``sklearn-ais run``.

User errors (missing files, mismatched sizes, unknown backbone) print one
line that says what to do and exit with status 2; ``--verbose`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class UserError(Exception):
    """An error in what the user asked for; reported in one line."""


def _say(msg, quiet=False):
    if not quiet:
        print(msg, flush=True)


# ---------------------------------------------------------------------------
def load_images_arg(path: str):
    """A folder of image files (sorted by name) or a .npy array (n, H, W[, 3])."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--images {path}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--images {path}: the folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [str(f) for f in files], [f.name for f in files]
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        return arr, [str(i) for i in range(len(arr))]
    raise UserError(f"--images {path}: give a folder of images or a .npy array of shape (n, H, W, 3)")


def load_similarity_arg(path: str, key: str | None = None) -> np.ndarray:
    """An n x n matrix from .npy, .csv (optionally with a header row/index column) or .mat."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--similarity {path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        M = np.load(p, allow_pickle=False)
    elif suffix in (".csv", ".tsv", ".txt"):
        import pandas as pd

        sep = "\t" if suffix == ".tsv" else ","
        df = pd.read_csv(p, sep=sep, header=None)
        if not np.issubdtype(df.iloc[1:, 1:].to_numpy().dtype, np.number):
            df = df.apply(pd.to_numeric, errors="coerce")
        numeric = df.apply(pd.to_numeric, errors="coerce")
        if numeric.iloc[0].isna().all():  # a header row
            numeric = numeric.iloc[1:]
        if numeric.iloc[:, 0].isna().all():  # an index column
            numeric = numeric.iloc[:, 1:]
        M = numeric.to_numpy(dtype=float)
    elif suffix == ".mat":
        from scipy.io import loadmat

        data = {k: v for k, v in loadmat(p, simplify_cells=True).items() if not k.startswith("__")}
        if key is not None:
            if key not in data:
                raise UserError(f"--similarity {path}: no variable {key!r}; it holds {sorted(data)}")
            M = np.asarray(data[key], dtype=float)
        else:
            square = {k: v for k, v in data.items() if isinstance(v, np.ndarray) and v.ndim == 2
                      and v.shape[0] == v.shape[1] and v.shape[0] > 1}
            if len(square) != 1:
                raise UserError(f"--similarity {path}: name the matrix with --similarity-key (square variables: "
                                f"{sorted(square) or 'none'})")
            M = np.asarray(next(iter(square.values())), dtype=float)
    else:
        raise UserError(f"--similarity {path}: use a .npy, .csv or .mat file")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise UserError(f"--similarity {path}: expected a square matrix, got shape {M.shape}")
    return M


# ---------------------------------------------------------------------------
def analyse(images, similarity, *, out, ids, backbone="efficientnet_lite0", weights="DEFAULT", device="auto",
            kind="similarity", n_splits=5, n_repeats=2, masks=None, title="AIS analysis", quiet=False,
            max_grid=32):
    """Extraction, cross-validated selection, heatmaps and report; returns a dict of results."""
    from sklearn.model_selection import RepeatedKFold

    from . import AISHeatmapper, AISSelector, DNNFeatureMapTransformer
    from ._report import write_report
    from .metrics import alignment_score, relative_risk
    from .model_selection import cross_validate_alignment

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    if similarity.shape[0] != n:
        raise UserError(f"the similarity matrix is {similarity.shape[0]} x {similarity.shape[0]} but there are {n} "
                        "images; they must match, in the same order")
    t0 = time.perf_counter()
    verbose = 0 if quiet else 1
    transformer = DNNFeatureMapTransformer(backbone=backbone, weights=weights, device=device, verbose=verbose)
    _say(f"[1/4] feature maps of {n} images through {backbone} ...", quiet)
    fm = transformer.fit_transform(images)
    fm.ids = np.asarray(ids)
    sign = -1.0 if kind == "dissimilarity" else 1.0
    baseline = alignment_score(fm.embed(), sign * similarity)
    _say(f"      {fm.n_maps} maps of {fm.shape[2]}x{fm.shape[3]}; baseline 2OI (all maps, all images) = "
         f"{baseline:.3f}", quiet)

    _say(f"[2/4] AIS selection, {n_splits}-fold x {n_repeats} image-wise cross-validation ...", quiet)
    cv = RepeatedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=0)
    res = cross_validate_alignment(AISSelector(y_kind=kind, device=device), fm, similarity, cv=cv,
                                   return_paths=True, verbose=verbose)
    s = res.summary
    _say(f"      held-out 2OI: all maps {s.test_score_full:.3f} ± {s.test_score_full_sem:.3f}, selected "
         f"{s.test_score_selected:.3f} ± {s.test_score_selected_sem:.3f} (paired t = {s.t_statistic:.2f}, "
         f"p = {s.p_value:.2g})", quiet)

    _say("[3/4] selection and per-image heatmaps on all images ...", quiet)
    selector = AISSelector(y_kind=kind, device=device).fit(fm, similarity)
    heatmapper = AISHeatmapper(keep=selector.support_, y_kind=kind, device=device).fit(fm, similarity)
    heatmaps = heatmapper.transform(fm)
    _write_tables(out, fm, selector, heatmapper, res)

    _say("[4/4] figures and report ...", quiet)
    from .backbones._preprocess import as_image_source

    source = as_image_source(images)
    thumbs = [np.asarray(source[i]) for i in range(min(n, max_grid))]
    lines = [
        f"{n} images, backbone {backbone} ({fm.n_maps} maps), human {kind} matrix",
        f"baseline 2OI, all maps, all images: {baseline:.3f}",
        f"maps kept when fitted on all images: {int(selector.support_.sum())} of {fm.n_maps} "
        f"(training 2OI {selector.path_scores_[selector.n_features_to_select_ - 1]:.3f})",
    ]
    result = {"baseline": baseline, "summary": s, "selector": selector, "heatmaps": heatmaps, "cv": res}
    if masks is not None:
        rr = relative_risk(np.asarray(heatmaps, dtype=float), np.asarray(masks, bool), top=10)
        result["relative_risk"] = rr
        lines.append(f"ground truth: top-10% heatmap pixels on the object, median relative risk {np.median(rr):.2f}")
        _say(f"      {lines[-1]}", quiet)
    report = write_report(out, title=title, summary_lines=lines, cv_result=res, selector=selector,
                          images=thumbs, heatmaps=[heatmaps[i] for i in range(len(thumbs))],
                          titles=[str(i) for i in fm.ids[: len(thumbs)]])
    _say(f"done in {time.perf_counter() - t0:.0f} s: {report}", quiet)
    result["report"] = report
    return result


def _write_tables(out: Path, fm, selector, heatmapper, res):
    import pandas as pd

    pd.DataFrame(
        {"map": np.arange(fm.n_maps), "ais": selector.scores_, "rank": selector.ranking_, "selected": selector.support_}
    ).to_csv(out / "map_scores.csv", index=False)
    np.savez_compressed(
        out / "selection.npz", scores=selector.scores_, ranking=selector.ranking_, support=selector.support_,
        path_scores=selector.path_scores_, image_scores=heatmapper.image_scores_, ids=fm.ids.astype(str),
    )
    res.table.to_csv(out / "cv_folds.csv", index=False)


# ---------------------------------------------------------------------------
def _demo(args):
    from .datasets import make_similarity_task

    task = make_similarity_task(random_state=0)
    _say(f"built-in task: {len(task.images)} synthetic images; the simulated observer judges by the object's shape "
         "and colour, never by the background", args.quiet)
    ids = [f"{i}:{c} {s}" for i, (s, c) in enumerate(zip(task.shapes, task.colors))]
    return analyse(task.images, task.similarity, out=args.out, ids=ids, device=args.device, masks=task.masks,
                   n_splits=5, n_repeats=2, title="sklearn-ais demo: synthetic similarity task", quiet=args.quiet)


def _run(args):
    images, ids = load_images_arg(args.images)
    S = load_similarity_arg(args.similarity, args.similarity_key)
    weights = args.weights if args.weights is not None else "DEFAULT"
    if weights.lower() == "none":
        weights = None  # a randomly initialised network, e.g. as a control
    elif not Path(weights).exists() and (os.sep in weights or weights.endswith((".pth", ".pt", ".bin"))):
        raise UserError(f"--weights {weights}: no such file")
    return analyse(images, S, out=args.out, ids=ids, backbone=args.backbone, weights=weights, device=args.device,
                   kind=args.kind, n_splits=args.cv, n_repeats=args.repeats, title=f"AIS analysis of {args.images}",
                   quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sklearn-ais", description="Alignment Importance Scores for CNN feature "
                                     "maps and human similarity judgments.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out", default="ais-output", help="output folder (default: %(default)s)")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")

    demo = sub.add_parser("demo", help="built-in synthetic task with pretrained EfficientNet-Lite0 (offline)")
    common(demo)
    demo.set_defaults(func=_demo, out="ais-demo")

    run = sub.add_parser("run", help="your images and similarity judgments")
    run.add_argument("--images", required=True, help="folder of images (sorted by name) or .npy (n, H, W, 3)")
    run.add_argument("--similarity", required=True, help="n x n matrix: .npy, .csv or .mat, rows in image order")
    run.add_argument("--similarity-key", default=None, help="variable name inside a .mat file")
    run.add_argument("--kind", choices=("similarity", "dissimilarity"), default="similarity")
    run.add_argument("--backbone", default="efficientnet_lite0")
    run.add_argument("--weights", default=None, help="DEFAULT (pretrained), none (random), a torchvision weights name, or a local state dict file")
    run.add_argument("--cv", type=int, default=5, help="folds of image-wise cross-validation (default: %(default)s)")
    run.add_argument("--repeats", type=int, default=2, help="repeats of the cross-validation (default: %(default)s)")
    common(run)
    run.set_defaults(func=_run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("sklearn-ais: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, ValueError, TypeError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sklearn-ais: error: {msg} (--verbose shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
