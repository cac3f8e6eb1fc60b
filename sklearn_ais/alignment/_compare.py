"""One table for alignment methods and architectures: the same image-wise CV, the same held-out 2OI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone

from .._containers import FeatureMaps
from .._pairs import fold_parts, held_out_is_undefined
from .._targets import check_similarity_target, sample_ids, similarity_frame
from ._base import embedding_2oi

__all__ = ["METHODS", "AlignmentComparison", "compare_alignment", "feature_maps_of", "make_method", "summarize_comparison"]

METHODS = ("none", "ais", "reweighting", "glocal")

_PRECOMPUTED = (FeatureMaps, np.ndarray)  # entries that need no extraction


def make_method(name: str):
    """The default estimator of a method name (``None`` for ``"none"``: all maps, nothing fitted).

    Parameters
    ----------
    name : {"none", "ais", "reweighting", "glocal"}

    Returns
    -------
    estimator : AISSelector, FeatureReweighting, GLocalAligner or None

    Examples
    --------
    >>> from sklearn_ais.alignment import make_method
    >>> make_method("reweighting")
    FeatureReweighting()
    """
    if name == "none":
        return None
    if name == "ais":
        from .._selector import AISSelector

        return AISSelector()
    if name == "reweighting":
        from ._reweighting import FeatureReweighting

        return FeatureReweighting()
    if name == "glocal":
        from ._glocal import GLocalAligner

        return GLocalAligner()
    raise ValueError(f"unknown method {name!r}; use one of {METHODS} or pass {{name: estimator}}")


def _methods(methods) -> dict:
    if isinstance(methods, str):
        methods = (methods,)
    if isinstance(methods, dict):
        out = {}
        for name, est in methods.items():
            out[str(name)] = make_method(est) if isinstance(est, str) else est
        return out
    return {m: make_method(m) for m in methods}


def _entries(backbones) -> list[tuple[str | None, object]]:
    """``(label or None, entry)`` of every backbone, validated without extracting anything."""
    from .._feature_maps import DNNFeatureMapTransformer
    from ..backbones._registry import Backbone

    if isinstance(backbones, dict):
        items = list(backbones.items())
    elif isinstance(backbones, (list, tuple)):
        items = list(backbones)
    else:
        items = [backbones]
    if not items:
        raise ValueError("backbones is empty")
    out = []
    for item in items:
        label = None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            label, item = item
        if isinstance(item, np.ndarray) and item.ndim != 2:
            raise ValueError(f"an array backbone must be a 2-D embedding (n_images, n_units), got shape {item.shape}")
        if not isinstance(item, (str, Backbone, DNNFeatureMapTransformer, FeatureMaps, np.ndarray)):
            raise TypeError(
                "each backbone must be a registered name, a Backbone, a DNNFeatureMapTransformer, FeatureMaps, a 2-D "
                f"embedding array or a (label, one of these) pair; got {type(item).__name__}"
            )
        out.append((label, item))
    return out


def feature_maps_of(entry, images, *, label=None, verbose=0):
    """``(label, FeatureMaps)`` of one backbone entry: the one place where a comparison extracts features.

    Parameters
    ----------
    entry : str, Backbone, DNNFeatureMapTransformer, FeatureMaps or ndarray
        A registered name or Backbone (pretrained weights), a transformer
        (fitted if needed), or precomputed maps or a 2-D embedding (returned
        as they are).
    images : images or None
        What the transformer reads; unused for precomputed entries.
    label : str, optional
        Default: the backbone's name, with " (random)" for random weights.
    verbose : int, default=0

    Returns
    -------
    label : str
    maps : FeatureMaps or ndarray
    """
    from .._feature_maps import DNNFeatureMapTransformer

    if isinstance(entry, _PRECOMPUTED):
        return label or getattr(entry, "backbone", None) or "features", entry
    if not isinstance(entry, DNNFeatureMapTransformer):
        entry = DNNFeatureMapTransformer(backbone=entry, verbose=verbose)
    if images is None:
        raise ValueError("images are required to extract features")
    if not hasattr(entry, "backbone_"):
        entry.fit(images)
    fm = entry.transform(images)
    if label is None:
        label = entry.backbone_.name if entry.weights is not None else f"{entry.backbone_.name} (random)"
    return label, fm


def _image_count_and_ids(entries, images):
    """Number of images and their ids, known before any extraction (from maps or from the images)."""
    from ..backbones._preprocess import as_image_source

    for _, entry in entries:
        if isinstance(entry, (FeatureMaps, np.ndarray)):
            return len(entry), sample_ids(entry)
    if images is None:
        raise ValueError("images are required to extract features")
    source = as_image_source(images)
    return len(source), source.ids


def _n_kept(est, n_maps) -> int:
    est = getattr(est, "best_estimator_", est)
    if est is None:
        return int(n_maps)
    if hasattr(est, "get_support"):
        return int(np.sum(est.get_support()))
    if hasattr(est, "n_kept_"):
        return int(est.n_kept_)
    return int(getattr(est, "n_features_in_", n_maps))


def _as_similarity_estimator(est):
    est = clone(est)
    if "y_kind" in est.get_params():
        est.set_params(y_kind="similarity")  # targets are validated (and flipped) once, up front
    elif any(k.endswith("__y_kind") for k in est.get_params()):
        est.set_params(**{k: "similarity" for k in est.get_params() if k.endswith("__y_kind")})
    return est


def summarize_comparison(
    table: pd.DataFrame, reference: str = "none", *, comparison="spearman", test="corrected_t",
    alternative="two-sided",
) -> pd.DataFrame:
    """Per backbone and method: mean held-out 2OI, its standard error, and a paired test vs ``reference``.

    The same rule as :func:`~sklearn_ais.model_selection.summarize_folds` (see
    :mod:`sklearn_ais._stats`): plain means over folds with standard errors across folds, the test
    on Fisher z values for Pearson and Spearman comparisons.

    Parameters
    ----------
    table : DataFrame
        The per-fold table of :func:`compare_alignment` (columns ``backbone``,
        ``method``, ``fold``, ``test_2oi``, ``n_kept``, ``n_train``, ``n_test`` ...).
    reference : str, default="none"
        Method every other method is compared with, fold by fold.
    comparison : str, default="spearman"
        The comparison behind the scores (chooses the test's scale).
    test : {"corrected_t", "paired_t", "wilcoxon"}, default="corrected_t"
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
        ``"greater"``: the method beats the reference.

    Returns
    -------
    summary : DataFrame
        One row per (backbone, method): ``n_folds``, ``test_2oi`` (mean over
        folds), ``test_2oi_sem``, ``train_2oi``, ``n_kept`` (mean),
        ``delta`` (mean paired difference with the reference),
        ``t_statistic`` and ``p_value`` (the chosen test), ``p_paired_t``,
        ``p_corrected_t`` and ``wilcoxon_p``, and ``test``.
    """
    from .._stats import fold_summary, paired_test

    rows = []
    for (bb, method), g in table.groupby(["backbone", "method"], sort=False):
        g = g.sort_values("fold")
        mean, sem = fold_summary(g["test_2oi"])
        row = {
            "backbone": bb,
            "method": method,
            "n_folds": int(g["test_2oi"].notna().sum()),
            "test_2oi": mean,
            "test_2oi_sem": sem,
            "train_2oi": fold_summary(g["train_2oi"])[0],
            "n_kept": float(g["n_kept"].mean()),
            "delta": np.nan,
            "t_statistic": np.nan,
            "p_value": np.nan,
            "p_paired_t": np.nan,
            "p_corrected_t": np.nan,
            "wilcoxon_p": np.nan,
            "test": test,
        }
        ref = table[(table["backbone"] == bb) & (table["method"] == reference)].sort_values("fold")
        if method != reference and len(ref):
            paired = g.merge(ref[["fold", "test_2oi"]], on="fold", suffixes=("", "_ref"))
            a, b = paired["test_2oi"].to_numpy(), paired["test_2oi_ref"].to_numpy()
            ratio = (paired["n_test"] / paired["n_train"]).to_numpy()
            row["delta"] = float(np.nanmean(a - b))
            kw = dict(comparison=comparison, alternative=alternative, test_train_ratio=ratio)
            res = {name: paired_test(a, b, test=name, **kw) for name in ("paired_t", "corrected_t", "wilcoxon")}
            row["t_statistic"], row["p_value"] = res[test]["statistic"], res[test]["p_value"]
            row["p_paired_t"], row["p_corrected_t"] = res["paired_t"]["p_value"], res["corrected_t"]["p_value"]
            row["wilcoxon_p"] = res["wilcoxon"]["p_value"]
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class AlignmentComparison:
    """Result of :func:`compare_alignment`.

    Attributes
    ----------
    table : DataFrame
        One row per backbone, method and fold: ``backbone``, ``method``,
        ``fold``, ``n_train``, ``n_test``, ``test_2oi``, ``train_2oi``,
        ``n_kept``, ``fit_time``.
    summary : DataFrame
        :func:`summarize_comparison` of the table.
    noise_ceiling : tuple of float or None
        ``(lower, upper)`` bounds of the noise ceiling on the test images,
        averaged over folds (from ``subject_similarities``).
    ceiling_table : DataFrame or None
        Per-fold ``lower`` and ``upper`` bounds.
    comparison : str
        The comparison of the scores.
    bootstrap : DataFrame or None
        With ``inference="bootstrap"``: one row per replicate, one column per
        (backbone, method) (and the noise ceiling's bounds).
    bootstrap_summary : DataFrame or None
        Percentile intervals (see
        :func:`sklearn_ais.alignment._bootstrap.summarize_bootstrap`).
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    noise_ceiling: tuple | None = None
    ceiling_table: pd.DataFrame | None = field(default=None, repr=False)
    comparison: str = "spearman"
    bootstrap: pd.DataFrame | None = field(default=None, repr=False)
    bootstrap_summary: pd.DataFrame | None = None

    def __iter__(self):
        # ``table, summary = compare_alignment(...)``
        yield self.table
        yield self.summary

    def to_markdown(self, digits: int = 3) -> str:
        """Markdown table of held-out 2OI (mean ± s.e.) per backbone and method.

        Parameters
        ----------
        digits : int, default=3

        Returns
        -------
        table : str
        """
        return _markdown(self.summary, self.noise_ceiling, digits)

    def plot(self, ax=None):
        """Bar plot of the held-out 2OI (see :func:`sklearn_ais.plotting.plot_comparison`).

        Parameters
        ----------
        ax : matplotlib Axes, optional

        Returns
        -------
        ax : matplotlib Axes
        """
        from ..plotting import plot_comparison

        return plot_comparison(self, ax=ax)


def _markdown(summary, noise_ceiling, digits):
    fmt = f"{{:.{digits}f}}"
    # The p column names the test that produced it (the corrected t by default), never a fixed one.
    tests = summary["test"].dropna().unique() if "test" in summary else []
    test = {"corrected_t": "corrected t", "paired_t": "paired t", "wilcoxon": "Wilcoxon"}.get(
        tests[0] if len(tests) == 1 else "", "paired test")
    header = f"| backbone | method | held-out 2OI (mean ± s.e.) | Δ vs none | p ({test}) | n kept |"
    lines = [header, "|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        delta = "" if np.isnan(r["delta"]) else f"{r['delta']:+.{digits}f}"
        p = "" if np.isnan(r["p_value"]) else f"{r['p_value']:.2g}"
        sem = "" if np.isnan(r["test_2oi_sem"]) else f" ± {fmt.format(r['test_2oi_sem'])}"
        lines.append(
            f"| {r['backbone']} | {r['method']} | {fmt.format(r['test_2oi'])}{sem} | {delta} | {p} | {r['n_kept']:.0f} |"
        )
    if noise_ceiling is not None:
        lo, hi = noise_ceiling
        lines.append(f"| noise ceiling | (lower – upper) | {fmt.format(lo)} – {fmt.format(hi)} | | | |")
    return "\n".join(lines)


def compare_alignment(
    backbones,
    images,
    y,
    methods=METHODS,
    cv=5,
    subject_similarities=None,
    *,
    random_state=0,
    test="corrected_t",
    alternative="two-sided",
    inference="folds",
    n_bootstrap=1000,
    n_jobs=None,
    y_kind="similarity",
    similarity="pearson",
    comparison="spearman",
    verbose=0,
) -> AlignmentComparison:
    """Held-out 2OI of alignment methods across architectures, fold by fold.

    Features are extracted once per backbone; every method then runs the
    same image-wise cross-validation (the same splits for every backbone
    and method, so folds are paired): it is fitted on the training images
    and their human similarities only and scored (:meth:`score`, the
    held-out 2OI) on the test images.

    Parameters
    ----------
    backbones : list or dict
        Entries are registered names (:func:`~sklearn_ais.backbones.list_backbones`,
        pretrained weights), :class:`~sklearn_ais.DNNFeatureMapTransformer`
        instances (fitted if needed), precomputed
        :class:`~sklearn_ais.FeatureMaps`, 2-D embedding arrays
        (n_images, n_units), or ``(label, entry)`` pairs; a dict maps
        labels to entries.
    images : images
        The n images (anything the transformers accept); may be None when
        every entry is FeatureMaps.
    y : array-like of shape (n, n)
        Human similarity (NaN = missing pair).
    methods : sequence of str or dict, default=("none", "ais", "reweighting", "glocal")
        ``"none"``: all maps, nothing fitted (2OI of the network's own
        embedding); ``"ais"``: :class:`~sklearn_ais.AISSelector`;
        ``"reweighting"``: :class:`FeatureReweighting`; ``"glocal"``:
        :class:`GLocalAligner`, each with its defaults. A dict maps labels
        to estimators (e.g. a ``GridSearchCV`` with an image-wise inner
        ``cv``; it receives ``y`` as a
        :func:`~sklearn_ais.model_selection.similarity_frame`).
    cv : int, splitter over images or iterable, default=5
        An int ``k`` means ``KFold(k, shuffle=True, random_state=random_state)``
        (stimulus sets are often ordered by category: unshuffled folds would
        be category blocks).
    subject_similarities : array-like of shape (n_subjects, n, n), optional
        Per-subject matrices (similarities or dissimilarities, consistently)
        for the noise ceiling on each fold's test images
        (:func:`sklearn_ais.metrics.noise_ceiling`).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    similarity : {"pearson", "cosine"}, default="pearson"
        Model RSM of ``"none"``.
    comparison : {"spearman", "pearson"}, default="spearman"
        Correlation of ``"none"`` (the estimators use their own parameter).
    verbose : int, default=0
        One progress bar over the extractions and the backbone x fold x
        method fits when > 0 (on ``dask``, it moves as each backbone's grid
        ends).
    random_state : int, RandomState instance or None, default=0
        Seeds the folds of an int ``cv``.
    test : {"corrected_t", "paired_t", "wilcoxon"}, default="corrected_t"
        Paired test of every method against ``"none"`` over folds (see
        :func:`summarize_comparison`).
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
    inference : {"folds", "bootstrap"}, default="folds"
        ``"folds"``: paired tests over the folds (``summary``).
        ``"bootstrap"``: also a bootstrap over stimuli (and subjects, when
        ``subject_similarities`` is given), as Schütt et al. (2023) and
        rsatoolbox's ``bootstrap_crossval``: every replicate resamples the
        images with replacement (the pairs of an image with its own copy are
        dropped), reruns the cross-validation of every backbone and method on
        its distinct images (copies stay together; as many folds as ``cv``),
        and gives ``bootstrap_summary`` percentile intervals for each model's
        held-out 2OI, its difference to ``"none"`` and its distance to the
        lower noise ceiling. Costs ``n_bootstrap`` times the comparison.
    n_bootstrap : int, default=1000
        Replicates of ``inference="bootstrap"``.
    n_jobs : int or None, default=None
        Work runs through ``joblib``: one feature extraction per backbone (on
        the worker that runs it, with its own device when ``device="auto"``)
        and one task per backbone, fold and method (the maps go to each worker
        once: the ``dask`` backend scatters them). On ``dask``
        (``with joblib.parallel_config(backend="dask"):`` on a
        ``dask.distributed`` cluster) a backbone's extraction task sends its
        own fold x method tasks to the cluster, so they start as soon as its
        maps exist and the maps never travel back through the client; other
        backends (``loky``, threads) extract every backbone first. The tables
        are identical to ``n_jobs=1``, in the same order.

    Returns
    -------
    result : AlignmentComparison
        ``table`` (tidy, one row per backbone, method and fold), ``summary``
        (paired tests vs ``"none"``), ``noise_ceiling``; ``result.plot()``
        and ``result.to_markdown()``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import KFold
    >>> from sklearn_ais import FeatureMaps
    >>> from sklearn_ais.backbones import PoolingHead
    >>> from sklearn_ais.alignment import compare_alignment
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((30, 12, 2, 2)).astype(np.float32)
    >>> H = np.corrcoef(maps[:, :3].mean(axis=(2, 3)))
    >>> res = compare_alignment([("toy", FeatureMaps(maps, PoolingHead()))], None, H,
    ...                         methods=("none", "ais"), cv=KFold(3, shuffle=True, random_state=0))
    >>> res.table.shape
    (6, 9)
    >>> list(res.summary["method"])
    ['none', 'ais']
    """
    from .._stats import ALTERNATIVES, TESTS
    from .._validation import check_image_cv, check_splits

    if test not in TESTS or alternative not in ALTERNATIVES:
        raise ValueError(f"test must be one of {TESTS} and alternative one of {ALTERNATIVES}, got {test!r}, "
                         f"{alternative!r}")
    cv = check_image_cv(cv, random_state)
    if getattr(cv, "splits_pairs", False):
        raise ValueError(
            f"compare_alignment holds out images; {type(cv).__name__} splits matrix entries. Use an image splitter "
            "(an int, KFold, RepeatedKFold) or cross_validate_alignment for entry-wise held-out scores"
        )
    methods = _methods(methods)
    if not methods:
        raise ValueError("methods is empty")
    entries = _entries(backbones)
    n, ids = _image_count_and_ids(entries, images)
    H = check_similarity_target(y, n, y_kind, ids=ids)  # before any extraction; dissimilarities come back negated
    splits = check_splits(cv.split(np.zeros((n, 1))), n)
    for fold, (train, _) in enumerate(splits):
        if held_out_is_undefined(H, train, by_pairs=False):
            raise ValueError(f"fold {fold}: its training human pairs are constant (or fewer than 3): nothing to fit on")
    if inference not in ("folds", "bootstrap"):
        raise ValueError(f"inference must be 'folds' or 'bootstrap', got {inference!r}")
    from .._sklearn_compat import is_count

    if inference == "bootstrap" and not is_count(n_bootstrap):
        raise ValueError(f"n_bootstrap must be a positive integer (not a boolean), got {n_bootstrap!r}")
    ceilings = _fold_ceilings(subject_similarities, splits, n, comparison)
    if inference == "bootstrap" and subject_similarities is not None:
        from ._bootstrap import oriented_subjects

        oriented_subjects(np.asarray(subject_similarities, dtype=np.float64), H)  # before any extraction
    with _progress(entries, splits, methods, verbose) as progress:  # one bar: extractions and fits
        if inference == "folds" and _extract_where_evaluated(entries, n_jobs):
            rows = _extract_and_evaluate(entries, images, n, ids, H, splits, methods, similarity, comparison, n_jobs,
                                         progress)
        else:
            Xs = _extract_all(entries, images, n, ids, n_jobs, progress)
            rows = _evaluate(Xs, H, splits, methods, similarity, comparison, n_jobs, progress)
    table = pd.DataFrame(rows)
    _check_undefined_folds(table)
    reference = "none" if "none" in methods else next(iter(methods))
    summary = summarize_comparison(table, reference, comparison=comparison, test=test, alternative=alternative)
    ceiling_table = pd.DataFrame(ceilings) if ceilings else None
    ceiling = (float(ceiling_table["lower"].mean()), float(ceiling_table["upper"].mean())) if ceilings else None
    result = AlignmentComparison(table, summary, ceiling, ceiling_table, comparison)
    if inference == "bootstrap":
        from ._bootstrap import bootstrap_comparison, summarize_bootstrap

        result.bootstrap = bootstrap_comparison(
            Xs, H, methods, n_splits=_folds_per_repeat(cv, splits),
            subjects=subject_similarities, similarity=similarity, comparison=comparison, n_bootstrap=n_bootstrap,
            random_state=random_state, n_jobs=n_jobs, verbose=verbose,
        )
        result.bootstrap_summary = summarize_bootstrap(result.bootstrap, summary, reference)
    return result


def _folds_per_repeat(cv, splits) -> int:
    """Folds of one repeat of ``cv`` (what each bootstrap replicate runs)."""
    k = getattr(cv, "n_splits", None) or getattr(cv, "cvargs", {}).get("n_splits")
    return int(k) if k else len(splits)


def _progress(entries, splits, methods, verbose):
    """One progress bar over a comparison's extractions and fits (a no-op context when ``verbose`` is 0)."""
    from contextlib import nullcontext

    if not verbose:
        return nullcontext()
    from tqdm import tqdm

    extractions = sum(_extracts(entry) for _, entry in entries)
    return tqdm(total=extractions + len(entries) * len(splits) * len(methods), unit="task",
                desc="extractions + backbone x fold x method fits")


def _extracts(entry) -> bool:
    return not isinstance(entry, _PRECOMPUTED)


def _checked_maps(entry, images, label, n, ids):
    """``(label, maps)`` of one entry (extracted when it needs it), checked to hold the comparison's images."""
    label, X = feature_maps_of(entry, images, label=label)
    _check_same_images(label, X, n, ids)
    return label, X


def _extract_all(entries, images, n, ids, n_jobs, progress):
    """``[(label, FeatureMaps)]``: one extraction task per backbone that needs one (precomputed maps stay put)."""
    from .._parallel import parallel_map

    todo = [(entry, images, label, n, ids) for label, entry in entries if _extracts(entry)]
    extracted = iter(parallel_map(_checked_maps, todo, n_jobs=n_jobs, progress=progress, desc="feature extraction",
                                  unit="backbone"))
    out = [next(extracted) if _extracts(entry) else _checked_maps(entry, None, label, n, ids)
           for label, entry in entries]
    return _unique_labels(out)


def _unique_labels(items):
    """``(label, value)`` pairs with repeated labels numbered (``"vgg16 #1"``), in order."""
    out, seen = [], set()
    for label, value in items:
        if label in seen:
            label = f"{label} #{len(seen)}"
        seen.add(label)
        out.append((label, value))
    return out


def _extract_where_evaluated(entries, n_jobs) -> bool:
    """Whether each backbone's grid is better sent from the worker that extracts it (see ``_extract_and_evaluate``)."""
    from .._parallel import nested_calls_share_the_pool

    return any(_extracts(entry) for _, entry in entries) and nested_calls_share_the_pool(n_jobs)


def _extract_and_evaluate(entries, images, n, ids, H, splits, methods, similarity, comparison, n_jobs, progress):
    """Rows of ``_evaluate``, with one task per backbone that extracts its maps and then sends out its own
    fold x method tasks (on dask, where a task's joblib calls reach the whole cluster).

    The fold tasks of a backbone start as soon as its maps exist (not after the slowest backbone's extraction),
    and the maps go from the worker that made them to the workers that use them, without a detour through the
    client. The progress bar moves by a backbone's extraction and fits when its task ends.
    """
    from .._parallel import parallel_map

    tasks = [(entry, images, label, n, ids, H, splits, methods, similarity, comparison, n_jobs)
             for label, entry in entries]
    fits = len(splits) * len(methods)
    done = parallel_map(_backbone_grid, tasks, n_jobs=n_jobs, progress=progress, desc="backbone x fold x method",
                        unit="fit", sizes=[fits + _extracts(entry) for _, entry in entries])
    return [row for label, records in _unique_labels(done) for row in _rows(label, splits, methods, records)]


def _backbone_grid(entry, images, label, n, ids, H, splits, methods, similarity, comparison, n_jobs):
    """``(label, records)`` of one backbone: its maps (extracted here), then its fold x method tasks."""
    from .._parallel import parallel_map

    label, X = _checked_maps(entry, images, label, n, ids)
    tasks = _grid_tasks(X, H, splits, methods, similarity, comparison)
    return label, parallel_map(_fit_and_score, tasks, n_jobs=n_jobs, desc="fold x method", unit="fit")


def _evaluate(Xs, H, splits, methods, similarity, comparison, n_jobs, progress) -> list[dict]:
    """One row per backbone, fold and method (one task each): fitted on the training images, scored on the test images."""
    from .._parallel import parallel_map

    tasks = [t for _, X in Xs for t in _grid_tasks(X, H, splits, methods, similarity, comparison)]
    records = parallel_map(_fit_and_score, tasks, n_jobs=n_jobs, progress=progress, desc="backbone x fold x method",
                           unit="fit")
    per_backbone = len(splits) * len(methods)
    return [row for b, (label, _) in enumerate(Xs)
            for row in _rows(label, splits, methods, records[b * per_backbone:(b + 1) * per_backbone])]


def _grid_tasks(X, H, splits, methods, similarity, comparison) -> list[tuple]:
    """``_fit_and_score`` arguments of one backbone's fold x method grid, fold by fold (the order of ``_rows``)."""
    return [(X, H, train, test, methods[name], similarity, comparison) for train, test in splits for name in methods]


def _rows(label, splits, methods, records) -> list[dict]:
    """Table rows of one backbone from its records (fold by fold, methods in order)."""
    units = [(fold, name) for fold in range(len(splits)) for name in methods]
    return [{"backbone": label, "method": name, "fold": fold, "n_train": len(splits[fold][0]),
             "n_test": len(splits[fold][1]), **record} for (fold, name), record in zip(units, records)]


def _fold_ceilings(subject_similarities, splits, n, comparison):
    """Per-fold noise ceiling on the test images (empty without subject matrices)."""
    if subject_similarities is None:
        return []
    from ..metrics import noise_ceiling

    subjects = np.asarray(subject_similarities, dtype=np.float64)
    if subjects.ndim != 3 or subjects.shape[1] != subjects.shape[2]:
        raise ValueError(f"subject_similarities must have shape (n_subjects, n, n), got {subjects.shape}")
    if subjects.shape[1] != n:
        raise ValueError(f"subject_similarities are {subjects.shape[1]} x {subjects.shape[1]}, X has {n} images")
    out = []
    for fold, (_, test_idx) in enumerate(splits):
        lo, hi = noise_ceiling(subjects[:, test_idx][:, :, test_idx], comparison)
        out.append({"fold": fold, "lower": lo, "upper": hi})
    return out


def _check_same_images(label, X, n, ids):
    """Folds are paired by position: every backbone must hold the same images in the same order."""
    if len(X) != n:
        raise ValueError(f"backbone {label!r} gave {len(X)} images, others {n}")
    own = sample_ids(X)
    if ids is not None and own is not None and not np.array_equal(own, ids):
        raise ValueError(
            f"backbone {label!r} carries its images in another order (or other images) than the first "
            "backbone (their ids differ): folds are paired by position, so give every backbone the same images "
            "in the same order"
        )


def _check_undefined_folds(table):
    """An undefined held-out 2OI (NaN) is named and left out of the summary; all of a method's undefined is an error."""
    from .._stats import warn_undefined_folds

    undefined = table["test_2oi"].isna()
    for (bb, method), g in table.groupby(["backbone", "method"], sort=False):
        if g["test_2oi"].isna().all():
            raise ValueError(f"{method!r} on backbone {bb!r}: every fold has an undefined held-out 2OI (NaN: constant "
                             "held-out human pairs, or a constant model similarity matrix)")
    folds = np.unique(table.loc[undefined, "fold"].to_numpy())
    warn_undefined_folds(len(folds), int(table["fold"].nunique()), stacklevel=4, folds=folds)


def _fit_and_score(X, H, train_idx, test_idx, template, similarity, comparison) -> dict:
    """Held-out and training 2OI of one method on one fold (``template`` None: all maps, nothing fitted)."""
    X_tr, X_te, H_tr, H_te = fold_parts(X, H, train_idx, test_idx, by_pairs=False)
    undefined = held_out_is_undefined(H, test_idx, by_pairs=False)  # NaN, named once the table is built
    if template is None:
        return {
            "test_2oi": np.nan if undefined else embedding_2oi(_embed(X_te), H_te, similarity, comparison),
            "train_2oi": embedding_2oi(_embed(X_tr), H_tr, similarity, comparison),
            "n_kept": _n_kept(None, X.shape[1]),
            "fit_time": 0.0,
        }
    est = _as_similarity_estimator(template)
    t0 = time.perf_counter()
    est.fit(X_tr, similarity_frame(H_tr, ids=sample_ids(X_tr)))
    fit_time = time.perf_counter() - t0
    return {
        "test_2oi": np.nan if undefined else float(est.score(X_te, H_te)),
        "train_2oi": float(est.score(X_tr, H_tr)),
        "n_kept": _n_kept(est, X.shape[1]),
        "fit_time": fit_time,
    }


def _embed(X):
    return X.embed() if isinstance(X, FeatureMaps) else np.asarray(X, dtype=np.float64)
