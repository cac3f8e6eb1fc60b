"""The whole analysis of ``sklearn-ais run``, from Python.

:func:`run_analysis` extracts feature maps, cross-validates the AIS
selection, fits it on all images, draws every image's heatmap and returns an
:class:`AnalysisResult`, which writes its tables, arrays, figures and report
with :meth:`AnalysisResult.save` (into a temporary folder moved into place
when complete, so an interrupted run never leaves a mix of old and new
files) or renders the report with :meth:`AnalysisResult.to_html`.

Examples
--------
>>> from sklearn_ais.datasets import make_similarity_task
>>> from sklearn_ais.workflow import run_analysis
>>> task = make_similarity_task(n_images=12, image_size=32, random_state=0)
>>> result = run_analysis(task.images, task.similarity, n_splits=3, n_repeats=1, device="cpu",
...                       verbose=0)  # doctest: +SKIP
>>> result.save("ais-output")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import InputFileError, display_name, list_image_files

__all__ = ["AnalysisResult", "OUTPUT_FILES", "check_output_folder", "load_images", "run_analysis"]

# What AnalysisResult.save writes (documented in ``sklearn-ais run --help``).
OUTPUT_FILES = {
    "report.html": "self-contained report (figures embedded)",
    "image_order.csv": "the order of the images (index, id): the order of every per-image output",
    "map_scores.csv": "global AIS, rank and selection of every feature map",
    "selection.npz": "scores, ranking, support, sweep, per-image AIS (image_scores) and ids",
    "heatmaps.npz": "every image's heatmap at its original resolution (heatmap_<index>) and ids",
    "cv_folds.csv": "per-fold held-out 2OI of all vs selected maps",
    "cv_curve.png, ais_histogram.png, heatmap_grid.png": "the report's figures",
}


def load_images(path):
    """Images from a folder (natural order) or a ``.npy`` array, with their ids.

    Parameters
    ----------
    path : str or path-like
        A folder of image files (read in natural order: ``im2`` before
        ``im10``; hidden files and sub-folders skipped) or a ``.npy`` array of
        shape (n, H, W[, 3]).

    Returns
    -------
    images : list of str or ndarray
        File paths, or the array.
    ids : list of str
        File names (printable), or ``"0" .. "n-1"`` for an array.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{display_name(path)}: no such file or folder")
    if p.is_dir():
        files = list_image_files(p)
        if not files:
            raise InputFileError(f"{display_name(path)}: the folder holds no image files")
        names = [display_name(f.name) for f in files]
        return [str(f) for f in files], names
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise InputFileError(f"{display_name(path)}: not a numeric .npy array ({exc})") from None
        return arr, [str(i) for i in range(len(arr))]
    raise InputFileError(f"{display_name(path)}: give a folder of images or a .npy array of shape (n, H, W, 3)")


class ResultsKeptError(InputFileError):
    """The output folder refused finished results; they were kept in ``path`` (named in the message)."""

    def __init__(self, message, path):
        super().__init__(message)
        self.path = Path(path)


def check_output_folder(out, overwrite: bool = False, inputs=()) -> Path:
    """Check, before any computation, that results can be written to ``out``.

    Parameters
    ----------
    out : str or path-like
        The output folder: it may not exist yet; if it exists and is not
        empty, ``overwrite`` must be True.
    overwrite : bool, default=False
    inputs : sequence of path-like
        Input folders ``out`` must not be (or lie inside): its own files would
        be read as inputs on the next run.

    Returns
    -------
    out : Path
        Absolute.
    """
    out = Path(out).absolute()
    for folder in inputs:
        folder = Path(folder).absolute()
        if folder.is_dir() and (out == folder or folder in out.parents):
            raise InputFileError(
                f"{display_name(out)}: the output folder is (inside) the input folder {display_name(folder)}; its "
                "figures would be read as images next time: choose another output folder"
            )
    if out.exists() and not out.is_dir():
        raise InputFileError(f"{display_name(out)}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputFileError(
            f"{display_name(out)}: the output folder is not empty; choose a new folder or allow replacing it "
            "(command line: --overwrite; Python: overwrite=True)"
        )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    try:
        probe = tempfile.mkdtemp(prefix=".sklearn-ais-write-test-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise InputFileError(f"{display_name(out)}: cannot write there ({exc.strerror or exc})") from None
    return out


@dataclass
class AnalysisResult:
    """Everything :func:`run_analysis` computed.

    Attributes
    ----------
    ids : ndarray of str
        Image ids in the order of every per-image output.
    baseline : float
        2OI of all maps on all images.
    cv : AlignmentCVResult
        Cross-validated selection (held-out 2OI of all vs selected maps).
    selector : AISSelector
        Fitted on all images.
    heatmapper : AISHeatmapper
        Fitted on all images (per-image AIS).
    heatmaps : list of ndarray
        Every image's heatmap, at its original resolution, in [0, 1].
    images : list of ndarray
        The images as RGB arrays (for figures).
    title : str
    summary_lines : list of str
    provenance : dict
        Package version, backbone, weights, preprocessing, device, inputs,
        command line, date.
    relative_risk : ndarray or None
        Per image, when ground-truth masks were given.
    """

    ids: np.ndarray
    baseline: float
    cv: object
    selector: object
    heatmapper: object
    heatmaps: list
    images: list
    title: str
    summary_lines: list
    provenance: dict = field(default_factory=dict)
    relative_risk: np.ndarray | None = None
    simulated: bool = False

    def to_html(self, out_dir=None) -> str:
        """The self-contained HTML report (figures embedded); figures also written to ``out_dir`` if given.

        Parameters
        ----------
        out_dir : path-like, optional

        Returns
        -------
        html : str
        """
        from ._report import render_report

        return render_report(self, out_dir)

    def save(self, out, overwrite: bool = False) -> Path:
        """Write every output (see :data:`OUTPUT_FILES`) into ``out``, atomically.

        The files are written into a temporary folder beside ``out`` and moved
        into place only when all of them are complete: an interrupted run
        leaves ``out`` as it was. ``out`` is checked again at that moment
        (another process may have filled it during the run): if it refuses
        the results, they stay in the temporary folder and
        :class:`ResultsKeptError` (an ``InputFileError``) names it.

        Parameters
        ----------
        out : str or path-like
        overwrite : bool, default=False
            Replace a non-empty ``out``.

        Returns
        -------
        report : Path
            ``out / "report.html"``.
        """
        out = Path(out).absolute()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError:  # no sibling folder: the results go to the system's temporary folder, then moved
            tmp = Path(tempfile.mkdtemp(prefix=f"sklearn-ais-{out.name}.partial-"))
        try:
            self._write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # A finished computation is never lost: if out cannot take the results now (filled by another
        # process during the run, not writable), they stay in tmp and the error names it.
        try:
            out = check_output_folder(out, overwrite)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except (OSError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else f"{exc.strerror or exc}"
            raise ResultsKeptError(
                f"{display_name(out)}: the results could not be moved there ({reason}); they are complete and kept "
                f"in {display_name(tmp)}", tmp) from None
        return out / "report.html"

    def _write(self, folder: Path):
        ids = np.asarray(self.ids).astype(str)
        pd.DataFrame({"index": np.arange(len(ids)), "id": ids}).to_csv(folder / "image_order.csv", index=False)
        sel, hm = self.selector, self.heatmapper
        pd.DataFrame(
            {"map": np.arange(len(sel.scores_)), "ais": sel.scores_, "rank": sel.ranking_, "selected": sel.support_}
        ).to_csv(folder / "map_scores.csv", index=False)
        np.savez_compressed(
            folder / "selection.npz", scores=sel.scores_, ranking=sel.ranking_, support=sel.support_,
            path_scores=sel.path_scores_, image_scores=hm.image_scores_, ids=ids,
        )
        np.savez_compressed(
            folder / "heatmaps.npz", ids=ids, **{f"heatmap_{i}": np.asarray(h, np.float32) for i, h in enumerate(self.heatmaps)}
        )
        self.cv.table.to_csv(folder / "cv_folds.csv", index=False)
        (folder / "report.html").write_text(self.to_html(folder), encoding="utf-8")


# Images are kept for the report's figures at this size (longer side, pixels).
_THUMBNAIL = 192


def _thumbnail(image) -> np.ndarray:
    """An RGB array of at most _THUMBNAIL pixels on its longer side (figures only)."""
    image = image.copy()
    image.thumbnail((_THUMBNAIL, _THUMBNAIL))
    return np.asarray(image)


def _say(msg, verbose):
    if verbose:
        print(msg, flush=True)


def run_analysis(
    images,
    similarity,
    *,
    ids=None,
    backbone="efficientnet_lite0",
    weights="DEFAULT",
    device="auto",
    kind="similarity",
    n_splits=5,
    n_repeats=2,
    crop=True,
    masks=None,
    title="AIS analysis",
    simulated=False,
    verbose=1,
    provenance=None,
    transformer=None,
) -> AnalysisResult:
    """Feature maps, cross-validated AIS selection, heatmaps of every image.

    Parameters
    ----------
    images : images
        Anything :class:`~sklearn_ais.DNNFeatureMapTransformer` accepts.
    similarity : array-like of shape (n, n)
        The human matrix, rows in the order of ``images``.
    ids : sequence of str, optional
        Image ids (file names); default ``"0" .. "n-1"``.
    backbone, weights, device
        See :class:`~sklearn_ais.DNNFeatureMapTransformer`.
    kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``similarity`` holds.
    n_splits, n_repeats : int, default=5, 2
        Image-wise cross-validation: ``RepeatedKFold(n_splits, n_repeats,
        random_state=0)``.
    crop : bool, default=True
        Centre-crop the resized images (False: keep the whole image).
    masks : array-like of bool of shape (n, H, W), optional
        Ground-truth object masks: the report adds the relative risk of the
        heatmaps' top 10 % pixels.
    title : str
    simulated : bool, default=False
        The matrix comes from a simulated observer (said in the report).
    verbose : int, default=1
        Progress lines and bars when > 0.
    provenance : dict, optional
        Extra provenance entries (e.g. the command line, input checksums).
    transformer : DNNFeatureMapTransformer, optional
        Used instead of building one from ``backbone``/``weights``.

    Returns
    -------
    result : AnalysisResult
    """
    from ._targets import check_similarity_target
    from .backbones._preprocess import as_image_source

    source = as_image_source(images)
    n = len(source)
    ids = np.asarray([str(i) for i in range(n)] if ids is None else [str(i) for i in ids])
    if len(ids) != n:
        raise ValueError(f"got {n} images but {len(ids)} ids")
    H = check_similarity_target(similarity, n, kind)  # all checks before any forward pass
    from ._sklearn_compat import is_count

    for name, value, low in (("n_splits", n_splits, 2), ("n_repeats", n_repeats, 1)):
        if not is_count(value, low):
            raise ValueError(f"{name} must be an integer >= {low} (not a boolean), got {value!r}")
    t0 = time.perf_counter()
    transformer = _transformer(transformer, backbone, weights, device, crop, verbose)
    fm, baseline = _extract(transformer, images, ids, H, verbose)
    res = _cross_validated_selection(fm, H, n_splits, n_repeats, device, verbose)
    _say("[3/4] selection and per-image heatmaps on all images ...", verbose)
    from . import AISHeatmapper, AISSelector

    selector = AISSelector(device=device).fit(fm, H)
    heatmapper = AISHeatmapper(keep=selector.support_, device=device)
    heatmaps = [np.asarray(h) for h in heatmapper.fit_transform(fm, H)]
    lines = [
        f"{n} images, backbone {transformer.backbone_.name} ({fm.n_maps} maps), human {kind} matrix"
        + (" (simulated observer)" if simulated else ""),
        f"baseline 2OI, all maps, all images: {baseline:.3f}",
        f"maps kept when fitted on all images: {int(selector.support_.sum())} of {fm.n_maps} "
        f"(training 2OI {selector.path_scores_[selector.n_features_to_select_ - 1]:.3f})",
    ]
    rr = None
    if masks is not None:
        from .metrics import relative_risk

        rr = relative_risk(np.asarray(heatmaps, dtype=float), np.asarray(masks, bool), top=10)
        lines.append(f"ground truth: top-10% heatmap pixels on the object, median relative risk {np.median(rr):.2f}")
        _say(f"      {lines[-1]}", verbose)
    _say(f"[4/4] done in {time.perf_counter() - t0:.0f} s", verbose)
    return AnalysisResult(
        ids=ids, baseline=baseline, cv=res, selector=selector, heatmapper=heatmapper, heatmaps=heatmaps,
        images=[_thumbnail(source[i]) for i in range(n)], title=title, summary_lines=lines,
        provenance=_provenance(transformer, kind, n_splits, n_repeats, provenance), relative_risk=rr,
        simulated=simulated,
    )


def _transformer(transformer, backbone, weights, device, crop, verbose):
    """The fitted transformer of the analysis (built from the backbone settings unless given)."""
    from . import DNNFeatureMapTransformer

    if transformer is None:
        transformer = DNNFeatureMapTransformer(backbone=backbone, weights=weights, device=device, verbose=verbose,
                                               **({} if crop else {"crop": False}))
    return transformer.fit(None)


def _extract(transformer, images, ids, H, verbose):
    """Feature maps of every image (labelled with ``ids``) and the baseline 2OI of all maps."""
    from .metrics import alignment_score

    _say(f"[1/4] feature maps of {len(ids)} images through {transformer.backbone_.name} ...", verbose)
    fm = transformer.transform(images)
    fm.ids = ids
    baseline = alignment_score(fm.embed(), H)
    sizes = {tuple(map(int, hw)) for hw in fm.map_sizes}
    size = "x".join(map(str, sizes.pop())) if len(sizes) == 1 else f"{len(sizes)} sizes"
    _say(f"      {fm.n_maps} maps of {size}; baseline 2OI (all maps, all images) = {baseline:.3f}", verbose)
    return fm, baseline


def _cross_validated_selection(fm, H, n_splits, n_repeats, device, verbose):
    from sklearn.model_selection import RepeatedKFold

    from . import AISSelector
    from .model_selection import cross_validate_alignment

    _say(f"[2/4] AIS selection, {n_splits}-fold x {n_repeats} image-wise cross-validation ...", verbose)
    cv = RepeatedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=0)
    res = cross_validate_alignment(AISSelector(device=device), fm, H, cv=cv, return_paths=True, verbose=verbose)
    s = res.summary
    _say(f"      held-out 2OI: all maps {s.test_score_full:.3f} ± {s.test_score_full_sem:.3f}, selected "
         f"{s.test_score_selected:.3f} ± {s.test_score_selected_sem:.3f} (corrected resampled t = "
         f"{s.t_statistic:.2f}, p = {s.p_value:.2g}; plain paired t-test p = {s.p_paired_t:.2g})", verbose)
    return res


def _provenance(transformer, kind, n_splits, n_repeats, extra) -> dict:
    """What produced the result, flat and printable (the report's provenance block)."""
    from . import __version__

    p = getattr(transformer, "provenance_", {})
    prep = p.get("preprocessing", {})
    versions = p.get("versions", {})
    return {
        "sklearn-ais version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command line": " ".join(display_name(a) for a in sys.argv),
        "backbone": p.get("backbone", transformer.backbone_.name),
        "weights": p.get("weights", "unknown"),
        "weights sha256": p.get("weights_sha256") or "(none: random or in-memory weights)",
        "layer and head": f"{p.get('layer', transformer.layer_)}; {p.get('head', '')}",
        "preprocessing": ", ".join(f"{k} {v}" for k, v in prep.items()),
        "device": p.get("device", str(transformer.device_)),
        "human matrix": kind,
        "cross-validation": f"RepeatedKFold(n_splits={n_splits}, n_repeats={n_repeats}, random_state=0), image-wise",
        "library versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        **(extra or {}),
    }
