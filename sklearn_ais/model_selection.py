"""Held-out evaluation of alignment: splitters and cross-validation.

Two ways to hold data out of a similarity analysis:

* **over images**: the test images (and every pair that involves them) never
  reach ``fit``. scikit-learn's own splitters (``KFold``,
  ``RepeatedKFold``, ``ShuffleSplit``, re-exported here) already split
  images; pass ``y`` through :func:`similarity_frame` to use them with
  ``cross_validate`` and ``GridSearchCV``.
* **over matrix entries**: :class:`PairKFold`, :class:`RepeatedPairKFold`
  and :class:`PairShuffleSplit` split the observed upper-triangle pairs;
  ``fit`` sees the training pairs only (the others are NaN).

:func:`cross_validate_alignment` runs either protocol for an
:class:`~sklearn_ais.AISSelector` (or any estimator with ``score`` and
``score_all``) and reports, per fold, the held-out 2OI with all maps and with
the selected maps, plus a paired test.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, RepeatedKFold, ShuffleSplit
from sklearn.utils import check_random_state

from ._pairs import (SmallFoldWarning, fold_parts, held_out_is_undefined, mask_pairs, observed_pairs, pair_indices,
                     warn_small_test_folds)
from ._sklearn_compat import is_count
from ._stats import fold_record
from ._targets import diagonal_convention, sample_ids, similarity_frame
from ._triplets import (TripletKFold, Triplets, TripletSet, TripletShuffleSplit, check_target, check_target_cv,
                        split_items, triplet_noise_ceiling)
from ._validation import MIN_IMAGES, check_image_cv, check_splits, default_repeated_cv

__all__ = [  # noqa: F822 (cross_validate_layers is resolved lazily)
    "cross_validate_layers",  # resolved lazily by __getattr__
    "KFold",
    "PairKFold",
    "PairShuffleSplit",
    "RepeatedKFold",
    "RepeatedPairKFold",
    "ShuffleSplit",
    "SmallFoldWarning",
    "AlignmentCVResult",
    "cross_validate_alignment",
    "diagonal_convention",
    "mask_pairs",
    "pair_indices",
    "PermutationTestResult",
    "permutation_test_alignment",
    "similarity_frame",
    "summarize_folds",
    "TripletKFold",
    "Triplets",
    "TripletShuffleSplit",
    "triplet_noise_ceiling",
]


def _observed_pairs(X, y):
    if y is None:
        return np.arange(len(pair_indices(len(X))[0]))
    pairs = observed_pairs(y)
    if X is not None and len(X) != np.shape(y)[0]:
        raise ValueError(f"X has {len(X)} images but y is {np.shape(y)[0]} x {np.shape(y)[0]}; they must match")
    return pairs


def _refuse_scikit_learn_caller(splitter):
    """scikit-learn's cross_validate/GridSearchCV slice X and y by the indices a splitter yields,
    so pair indices would silently select images: fail with the way to do it instead."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("sklearn_ais"):
        frame = frame.f_back
    caller = "" if frame is None else frame.f_globals.get("__name__", "")
    if caller.startswith("sklearn.model_selection"):
        raise TypeError(
            f"{type(splitter).__name__} splits matrix entries (pairs of images), but scikit-learn's "
            "cross_validate/GridSearchCV/cross_val_score can only slice images (rows of X and y). Use "
            "sklearn_ais.model_selection.cross_validate_alignment(estimator, X, y, cv=...) for entry-wise "
            "held-out scores, or AISSelector(cv=PairKFold(...)) to choose the number of maps on held-out entries"
        )


class _PairSplitMixin:
    """Split the observed upper-triangle pairs of an n x n matrix.

    ``split(X, y)``: ``X`` gives the number of images; ``y`` (optional, the
    similarity matrix) restricts the split to its observed (non-NaN) pairs.
    Indices refer to :func:`pair_indices` order.
    """

    splits_pairs = True

    def split(self, X, y=None, groups=None):
        """Generate (train, test) indices of upper-triangle pairs (see :func:`pair_indices`).

        Parameters
        ----------
        X : array-like of length n_images
            Only its length is used.
        y : array-like of shape (n_images, n_images), optional
            The similarity matrix: only its observed (non-NaN) pairs are split.
        groups : None
            Ignored.

        Yields
        ------
        train, test : ndarray of int
        """
        _refuse_scikit_learn_caller(self)
        observed = _observed_pairs(X, y)
        return ((observed[train], observed[test]) for train, test in super().split(observed))


class PairKFold(_PairSplitMixin, KFold):
    """K-fold over the upper-triangle pairs of a similarity matrix.

    Parameters are those of :class:`sklearn.model_selection.KFold`; the
    default shuffles, since pairs are ordered by image.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import PairKFold
    >>> cv = PairKFold(n_splits=3, random_state=0)
    >>> [len(test) for _, test in cv.split(np.zeros((6, 1)))]  # 15 pairs
    [5, 5, 5]
    """

    def __init__(self, n_splits=5, *, shuffle=True, random_state=None):
        super().__init__(n_splits=n_splits, shuffle=shuffle, random_state=random_state)


class PairShuffleSplit(_PairSplitMixin, ShuffleSplit):
    """Random train/test splits of the upper-triangle pairs (see :class:`ShuffleSplit`)."""

    def __init__(self, n_splits=10, *, test_size=None, train_size=None, random_state=None):
        super().__init__(n_splits=n_splits, test_size=test_size, train_size=train_size, random_state=random_state)


class RepeatedPairKFold:
    """:class:`PairKFold` repeated with different shuffles.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import RepeatedPairKFold
    >>> RepeatedPairKFold(n_splits=5, n_repeats=2).get_n_splits()
    10
    """

    splits_pairs = True

    def __init__(self, n_splits=5, *, n_repeats=8, random_state=None):
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits: ``n_splits * n_repeats``.

        Parameters
        ----------
        X, y, groups : ignored

        Returns
        -------
        n_splits : int
        """
        return self.n_splits * self.n_repeats

    def split(self, X, y=None, groups=None):
        """Generate (train, test) pair indices, ``n_repeats`` shuffles of :class:`PairKFold`.

        Parameters
        ----------
        X : array-like of length n_images
        y : array-like of shape (n_images, n_images), optional
            As for :meth:`PairKFold.split`.
        groups : None
            Ignored.

        Yields
        ------
        train, test : ndarray of int
            Repeat by repeat, fold by fold.
        """
        _refuse_scikit_learn_caller(self)
        if not is_count(self.n_repeats):
            raise ValueError(f"n_repeats must be an integer >= 1, got {self.n_repeats!r}")
        rng = check_random_state(self.random_state)
        observed = _observed_pairs(X, y)
        seeds = [rng.randint(np.iinfo(np.int32).max) for _ in range(self.n_repeats)]
        return (
            (observed[train], observed[test])
            for seed in seeds
            for train, test in KFold(self.n_splits, shuffle=True, random_state=seed).split(observed)
        )

    def __repr__(self):
        return f"RepeatedPairKFold(n_splits={self.n_splits}, n_repeats={self.n_repeats}, random_state={self.random_state})"


# ---------------------------------------------------------------------------
def summarize_folds(table: pd.DataFrame, *, comparison="spearman", test="corrected_t", alternative="two-sided"):
    """Mean held-out 2OI with all vs selected maps, and a paired test over folds.

    The one rule of every table the package prints (see :mod:`sklearn_ais._stats`): means are plain
    means over folds with standard errors across folds; the test pairs the folds, on Fisher z values
    for Pearson and Spearman comparisons and on the statistic itself otherwise.

    Parameters
    ----------
    table : DataFrame
        The per-fold table of :func:`cross_validate_alignment` (``test_score_full``,
        ``test_score_selected``, ``train_score_selected``, ``n_selected``, ``n_train``, ``n_test``).
    comparison : str, default="spearman"
        The comparison behind the scores (chooses the test's scale).
    test : {"corrected_t", "paired_t", "wilcoxon"}, default="corrected_t"
        The corrected resampled t-test (Nadeau & Bengio, 2003; Bouckaert & Frank, 2004) accounts for
        the overlap of the folds' training sets; ``"paired_t"`` is the test the AIS paper reports
        (optimistic for repeated cross-validation).
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
        ``"greater"``: the selected maps align better than all maps (the paper's one-sided test).

    Returns
    -------
    summary : Series
        ``n_folds``, ``test_score_full`` and ``_sem``, ``test_score_selected`` and ``_sem``,
        ``train_score_selected``, ``n_selected_mean``, ``delta`` (mean selected - all), ``test``,
        ``alternative``, ``t_statistic``, ``df``, ``p_value`` (the chosen test), and for reference
        ``p_paired_t`` and ``p_corrected_t``.
    """
    from ._stats import fold_summary, paired_test, warn_undefined_folds

    if len(table) == 0:
        raise ValueError("table has no folds to summarize")
    defined = table[["test_score_full", "test_score_selected"]].notna().all(axis=1).to_numpy()
    folds = table["fold"].to_numpy() if "fold" in table else np.arange(len(table))
    if not defined.any():
        raise ValueError(
            f"every one of the {len(table)} folds has an undefined held-out score (NaN: constant held-out human "
            "pairs, or a constant model similarity matrix): there is nothing to summarize"
        )
    warn_undefined_folds(int((~defined).sum()), len(table), folds=folds[~defined])
    used = table[defined]
    full, sel = used["test_score_full"].to_numpy(), used["test_score_selected"].to_numpy()
    ratio = (used["n_test"] / used["n_train"]).to_numpy() if len(used) else None
    results = {
        name: paired_test(sel, full, comparison=comparison, test=name, alternative=alternative, test_train_ratio=ratio)
        for name in ("paired_t", "corrected_t")
    }
    chosen = results.get(test) or paired_test(sel, full, comparison=comparison, test=test, alternative=alternative)
    mean_full, sem_full = fold_summary(full)
    mean_sel, sem_sel = fold_summary(sel)
    return pd.Series(
        {
            "n_folds": len(used),
            "test_score_full": mean_full,
            "test_score_full_sem": sem_full,
            "test_score_selected": mean_sel,
            "test_score_selected_sem": sem_sel,
            "train_score_selected": fold_summary(used["train_score_selected"])[0],
            "n_selected_mean": float(used["n_selected"].mean()) if len(used) else np.nan,
            "delta": float(np.mean(sel - full)) if len(used) else np.nan,
            "comparison": comparison,
            "test": test,
            "alternative": alternative,
            "t_statistic": chosen["statistic"],
            "df": chosen["df"],
            "p_value": chosen["p_value"],
            "p_paired_t": results["paired_t"]["p_value"],
            "p_corrected_t": results["corrected_t"]["p_value"],
        }
    )


_TEST_NAMES = {"corrected_t": "corrected", "paired_t": "paired", "wilcoxon": "Wilcoxon"}


@dataclass
class AlignmentCVResult:
    """Per-fold table and its summary, returned by :func:`cross_validate_alignment`."""

    table: pd.DataFrame
    summary: pd.Series
    estimators: list | None = None
    train_paths: np.ndarray | None = None
    test_paths: np.ndarray | None = None

    def __repr__(self):
        s = self.summary
        test = (f"permutation test ({int(s.n_permutations)} permutations)" if s.test == "permutation"
                else f"{_TEST_NAMES[s.test]} t = {s.t_statistic:.2f}")
        return (
            f"AlignmentCVResult({int(s.n_folds)} folds: held-out 2OI all maps {s.test_score_full:.3f} "
            f"± {s.test_score_full_sem:.3f}, selected {s.test_score_selected:.3f} ± "
            f"{s.test_score_selected_sem:.3f} (mean {s.n_selected_mean:.1f} kept), {test}, "
            f"p = {s.p_value:.2g}{'' if s.alternative == 'two-sided' else ', ' + s.alternative})"
        )


def _check_fold_sizes(splits, H, by_pairs):
    """Each fold must leave enough on both sides for a 2OI (clear error before any work)."""
    if isinstance(H, TripletSet):
        return _check_triplet_folds(splits, H, by_pairs)
    for fold, (train, test) in enumerate(splits):
        if by_pairs:
            for side, idx in (("training", train), ("test", test)):
                if len(idx) < 3:
                    raise ValueError(
                        f"fold {fold} has {len(idx)} {side} pairs; at least 3 are needed for a correlation. "
                        "Use fewer splits."
                    )
        else:
            for side, idx in (("training", train), ("test", test)):
                if len(idx) < MIN_IMAGES:
                    raise ValueError(
                        f"fold {fold} has {len(idx)} {side} images; at least {MIN_IMAGES} are needed for a "
                        "similarity analysis. Use fewer splits."
                    )
                sub = H[np.ix_(idx, idx)][np.triu_indices(len(idx), 1)]
                if (~np.isnan(sub)).sum() < 3:
                    raise ValueError(
                        f"fold {fold}: the {side} images share {(~np.isnan(sub)).sum()} observed human pairs; "
                        "at least 3 are needed. Use fewer splits or fill the missing judgments."
                    )
        if held_out_is_undefined(H, train, by_pairs=by_pairs):
            raise ValueError(f"fold {fold}: its training human pairs are constant: there is nothing to fit on")


def _check_triplet_folds(splits, T, by_triplets):
    """Each fold of triplet data must keep at least one triplet on each side."""
    for fold, (train, test) in enumerate(splits):
        for side, idx in (("training", train), ("test", test)):
            if not by_triplets and len(idx) < MIN_IMAGES:
                raise ValueError(f"fold {fold} has {len(idx)} {side} images; at least {MIN_IMAGES} are needed. "
                                 "Use fewer splits.")
            kept = len(T.select(idx)) if by_triplets else len(T.take(idx))
            if kept == 0:
                raise ValueError(
                    f"fold {fold}: no triplet has all three images among its {len(idx)} {side} images (image-wise "
                    "folds keep a triplet only when its three images are on one side). Use fewer splits, or "
                    "TripletKFold to hold out triplets." if not by_triplets else
                    f"fold {fold} has no {side} triplet. Use fewer splits."
                )


def _split_name(by_pairs, H):
    if isinstance(H, TripletSet):
        return "triplets" if by_pairs else "images"
    return "pairs" if by_pairs else "images"


def cross_validate_alignment(
    estimator, X, y, cv=None, *, y_kind=None, random_state=0, test="permutation", alternative="two-sided",
    n_permutations=99, stop_after=10, return_estimators=False, return_paths=False, n_jobs=None, verbose=1,
) -> AlignmentCVResult:
    """Held-out 2OI of all maps vs the selected maps, fold by fold.

    Parameters
    ----------
    estimator : AISSelector (or an estimator with ``fit``, ``score`` and ``score_all``)
        Cloned for every fold.
    X : FeatureMaps or array-like of shape (n_images, n_units)
    y : array-like of shape (n_images, n_images)
        Human similarity matrix (NaN = missing pair).
    cv : int, splitter or iterable, default=None
        Over images (an int ``k`` means ``KFold(k, shuffle=True,
        random_state=random_state)``; ``KFold``, ``RepeatedKFold``, ...) or
        over pairs (:class:`PairKFold`, :class:`RepeatedPairKFold`,
        :class:`PairShuffleSplit`). Default: ``RepeatedKFold(n_splits=5,
        n_repeats=8, random_state=random_state)``, the paper's protocol.
    y_kind : {"similarity", "dissimilarity"}, optional
        Defaults to the estimator's ``y_kind``.
    random_state : int, RandomState instance or None, default=0
        Seeds the folds of an int ``cv`` and of the default protocol.
    test : {"permutation", "corrected_t", "paired_t", "wilcoxon"}, default="permutation"
        Test of selected vs all maps. ``"permutation"`` (the default: in
        ``benchmarks/calibration.py`` the only test whose false-positive
        rate is 0.05 under the null, with the most power at 92 images;
        README, "Which p-value to report"): the stimulus labels
        of the human matrix are permuted and the whole cross-validated
        selection rerun on the same folds (as
        :func:`permutation_test_alignment`, with sequential stopping); the
        others are paired tests over folds (see :func:`summarize_folds`):
        the corrected resampled t-test accounts for the overlap of training
        sets across folds and repeats; ``"paired_t"`` is the plain paired
        t-test the AIS paper reports. ``benchmarks/calibration.py`` measures
        their level and power (README, "Which p-value to report").
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
        ``"greater"``: the selected maps align better (the paper's one-sided
        test). The permutation test compares the mean gain (``"greater"``),
        its negative (``"less"``) or its size (``"two-sided"``) with the
        permuted ones.
    n_permutations : int, default=99
        The most permutations of ``test="permutation"``.
    stop_after : int or None, default=10
        ``test="permutation"`` stops once this many permuted statistics
        reached the observed one (Besag & Clifford, 1991; see
        :func:`permutation_test_alignment`); None runs all.
    return_estimators : bool, default=False
    return_paths : bool, default=False
        Also record, per fold, the training and held-out 2OI along the
        fold's ranked sweep (``train_paths``, ``test_paths``: (n_folds,
        n_maps)), the curves behind the choice of t.
    n_jobs : int or None, default=None
        Folds run in parallel through ``joblib`` (``-1``: all cores); any
        joblib backend works, e.g. ``with joblib.parallel_config(backend="dask"):``
        on a ``dask.distributed`` cluster. The table is identical to
        ``n_jobs=1``, in the same order.
    verbose : int, default=1
        A progress bar over the folds
        (see the ``verbose`` rule of :func:`sklearn_ais._parallel.progress_bar`: 1 shows the bar on a terminal
        when the call takes more than a few seconds, 0 is silent).

    Returns
    -------
    result : AlignmentCVResult
        ``table`` has one row per fold: ``fold``, ``split`` ("images" or
        "pairs"), ``n_train``, ``n_test``, ``train_score_selected``,
        ``test_score_full``, ``test_score_selected``, ``n_selected``,
        ``fit_time``; ``summary`` is :func:`summarize_folds` of it (which test, and
        the p-values of both t-tests, are stated there).

    Notes
    -----
    With an :class:`~sklearn_ais.AISSelector` the folds share one set of
    kernels: the head runs once for all images, the leave-one-out
    similarities of every map are computed once (the similarity of two
    images with map k ablated does not depend on which other images are in
    the fold) and each fold reads its training pairs from them, so a fold
    costs one ranked sweep. They are kept when they fit in 1 GiB
    (n_maps x n_images^2 / 2 float64 values; e.g. 2048 maps of 300 images
    take 0.73 GiB), else each fold computes its own. A subclass that
    overrides ``fit``, or any other estimator, is fitted fold by fold on
    ``X[train]``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import KFold
    >>> from sklearn_ais import AISSelector
    >>> from sklearn_ais.model_selection import cross_validate_alignment
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 30))
    >>> H = np.corrcoef(X[:, :4] + 0.5 * rng.normal(size=(40, 4)))
    >>> res = cross_validate_alignment(AISSelector(), X, H, cv=KFold(4, shuffle=True, random_state=0))
    >>> bool(res.summary["test_score_selected"] > res.summary["test_score_full"])
    True
    """
    from ._stats import ALTERNATIVES, TESTS

    if test not in (*TESTS, "permutation"):
        raise ValueError(f"test must be one of {(*TESTS, 'permutation')}, got {test!r}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if test == "permutation":
        _check_permutations(n_permutations, stop_after)
    X, H, splits, by_pairs = _prepare_cv(estimator, X, y, cv, y_kind, random_state)
    records = _fold_records(estimator, X, H, splits, by_pairs, None, return_estimators, return_paths, n_jobs,
                            verbose)
    rows = [
        {"fold": fold, "split": _split_name(by_pairs, H),
         **{k: v for k, v in r.items() if k not in ("estimator", "train_path", "test_path")}}
        for fold, r in enumerate(records)
    ]
    fitted = [r["estimator"] for r in records] if return_estimators else None
    train_paths = [r["train_path"] for r in records] if return_paths else None
    test_paths = [r["test_path"] for r in records] if return_paths else None
    table = pd.DataFrame(rows)
    summary = summarize_folds(table, comparison=getattr(estimator, "comparison", "spearman"),
                              test="corrected_t" if test == "permutation" else test, alternative=alternative)
    if test == "permutation":
        statistic = {"greater": lambda g: g, "less": lambda g: -g, "two-sided": np.abs}[alternative]
        observed = statistic(_gain(records))
        rng = check_random_state(random_state)
        perms = [rng.permutation(np.shape(H)[0]) for _ in range(n_permutations)]
        null, p, _ = _sequential_null(estimator, X, H, splits, by_pairs, perms, observed, stop_after, n_jobs, verbose,
                                      statistic)
        summary["test"], summary["t_statistic"], summary["df"], summary["p_value"] = "permutation", np.nan, np.nan, p
        summary["n_permutations"] = len(null)
    return AlignmentCVResult(
        table,
        summary,
        fitted,
        None if train_paths is None else np.asarray(train_paths),
        None if test_paths is None else np.asarray(test_paths),
    )


def _prepare_cv(estimator, X, y, cv, y_kind, random_state):
    """Validated ``X``, similarity ``H`` (dissimilarities negated), splits and their kind: all before any fit."""
    from ._validation import validate_maps_input

    cv = check_image_cv(cv, random_state, default=default_repeated_cv(random_state))
    for method in ("fit", "score", "score_all"):
        if not callable(getattr(estimator, method, None)):
            raise TypeError(
                f"estimator must have fit, score and score_all methods (e.g. an AISSelector); "
                f"{type(estimator).__name__} has no {method!r}"
            )
    y_kind = y_kind or getattr(estimator, "y_kind", "similarity")
    ids = sample_ids(X)
    X = validate_maps_input(clone(estimator), X, reset=True)
    n = X.shape[0]
    H = check_target(y, n, y_kind, getattr(estimator, "comparison", None), ids=ids)  # similarity (or triplets) from here on
    check_target_cv(cv, H)
    by_pairs = getattr(cv, "splits_pairs", False)
    raw = cv.split(X, H) if by_pairs else cv.split(np.arange(n))
    splits = check_splits(raw, *split_items(H, by_pairs, n))
    if not splits:
        raise ValueError(f"cv={cv!r} produced no splits")
    _check_fold_sizes(splits, H, by_pairs)
    warn_small_test_folds(splits, H, by_pairs=by_pairs)
    return X, H, splits, by_pairs


def _fold_records(estimator, X, H, splits, by_pairs, permutations, return_estimators, return_paths, n_jobs, verbose):
    """Per-fold records (per permutation, with ``permutations``): the estimator's fast path or public fit/score."""
    if _has_fast_path(estimator):
        est = clone(estimator).set_params(y_kind="similarity")
        return est.fold_results(X, H, splits, by_pairs=by_pairs, permutations=permutations,
                                return_estimators=return_estimators, return_paths=return_paths, n_jobs=n_jobs,
                                verbose=verbose)
    from ._parallel import parallel_map

    perms = [None] if permutations is None else list(permutations)
    tasks = [(estimator, X, H if p is None else H[np.ix_(p, p)], train, test, by_pairs, return_estimators,
              return_paths) for p in perms for train, test in splits]
    flat = parallel_map(_fit_and_score, tasks, n_jobs=n_jobs, verbose=verbose, desc="cross-validation", unit="fold")
    per_perm = [flat[i * len(splits):(i + 1) * len(splits)] for i in range(len(perms))]
    return per_perm[0] if permutations is None else per_perm


@dataclass
class PermutationTestResult:
    """Result of :func:`permutation_test_alignment`.

    Attributes
    ----------
    observed : float
        Mean held-out gain of the selection over folds: ``test_score_selected - test_score_full``.
    null : ndarray of shape (n_permutations,)
        The same statistic with the images' human judgments permuted (the permutations run).
    p_value : float
        ``(1 + #(null >= observed)) / (1 + n_permutations)``, over the permutations whose gain is
        defined; NaN (with a warning) when the observed gain is undefined. When the sequential rule stopped early
        (``h`` defined null values reached the observed one after ``n_permutations`` permutations),
        ``h / (defined permutations run)`` (Besag & Clifford, 1991).
    n_permutations : int
        Permutations run.
    table : DataFrame
        The observed per-fold table (as :func:`cross_validate_alignment`'s).
    stopped_early : bool
        Whether the sequential rule stopped before the largest number of permutations.
    """

    observed: float
    null: np.ndarray
    p_value: float
    n_permutations: int
    table: pd.DataFrame
    stopped_early: bool = False

    def __repr__(self):
        return (f"PermutationTestResult(observed gain {self.observed:+.4f}, null mean {np.nanmean(self.null):+.4f}, "
                f"p = {self.p_value:.3g} over {self.n_permutations} permutations)")


def _gain(records) -> float:
    diffs = np.array([r["test_score_selected"] - r["test_score_full"] for r in records], dtype=np.float64)
    return float(np.nanmean(diffs)) if np.isfinite(diffs).any() else np.nan


def _permutation_p(observed: float, null) -> float:
    """``(1 + #(null >= observed)) / (1 + N)`` over the permutations whose statistic is defined.

    An undefined observed statistic has no p-value (NaN, with a warning); undefined permutations are
    left out of the count and the denominator (warned), never counted as below the observed value.
    """
    null = np.asarray(null, dtype=np.float64)
    if np.isnan(observed):
        warnings.warn("the observed gain is undefined (NaN: every fold's held-out score is undefined): it has no "
                      "p-value (NaN)", UserWarning, stacklevel=3)
        return np.nan
    defined = null[~np.isnan(null)]
    if len(defined) < len(null):
        warnings.warn(f"{len(null) - len(defined)} of {len(null)} permutations give an undefined gain (NaN); the "
                      f"p-value uses the other {len(defined)}", UserWarning, stacklevel=3)
    if not len(defined):
        return np.nan
    return (1 + int(np.sum(defined >= observed))) / (1 + len(defined))


def permutation_test_alignment(
    estimator, X, y, *, cv=None, n_permutations=1000, stop_after=None, y_kind=None, random_state=0, n_jobs=None,
    verbose=1,
) -> PermutationTestResult:
    """Permutation test of the held-out gain of a cross-validated selection.

    In the spirit of :func:`sklearn.model_selection.permutation_test_score`:
    the statistic is the mean over folds of the held-out 2OI of the selected
    maps minus that of all maps (what :func:`cross_validate_alignment`
    reports); its null distribution is obtained by permuting the stimulus
    labels of the human matrix (rows and columns together) and rerunning the
    whole cross-validated selection, on the same folds. Unlike a t-test over
    folds, it makes no assumption about the folds' dependence.

    The model side does not change under a permutation, so the kernels (and
    the stack of leave-one-out similarities) are prepared once and shared by
    every permutation (per task with ``n_jobs``); a permutation costs one
    ranked sweep per fold.

    Parameters
    ----------
    estimator : AISSelector (or an estimator with ``fit``, ``score``, ``score_all``)
    X : FeatureMaps or array-like of shape (n_images, n_units)
    y : array-like of shape (n_images, n_images)
    cv : int, splitter or iterable, default=None
        As for :func:`cross_validate_alignment` (default: 5 folds x 8 repeats).
    n_permutations : int, default=1000
        The most permutations run.
    stop_after : int, optional
        Sequential stopping (Besag & Clifford, 1991): stop as soon as ``stop_after`` null values reach the
        observed one (the p-value is then clearly large: ``stop_after / permutations run``); a gain that few
        permutations reach runs all ``n_permutations``. The p-value stays exact (valid at every level); a null
        dataset costs about ``stop_after * (1 + ln(n_permutations / stop_after))`` permutations instead of
        ``n_permutations``. Permutations run in batches; the result is that of running them one by one, and
        the first ones are those of a run without stopping (the same ``random_state``).
    y_kind : {"similarity", "dissimilarity"}, optional
        Defaults to the estimator's.
    random_state : int, RandomState instance or None, default=0
        Seeds the permutations (and the folds of an int ``cv``).
    n_jobs : int or None, default=None
        Permutations and folds run through ``joblib``; results identical to a serial run.
    verbose : int, default=1
        A progress bar over the permutations' folds
        (see the ``verbose`` rule of :func:`sklearn_ais._parallel.progress_bar`: 1 shows the bar on a terminal
        when the call takes more than a few seconds, 0 is silent).

    Returns
    -------
    result : PermutationTestResult

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import AISSelector
    >>> from sklearn_ais.model_selection import permutation_test_alignment
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(24, 8))
    >>> H = np.corrcoef(X[:, :2] + 0.3 * rng.normal(size=(24, 2)))
    >>> res = permutation_test_alignment(AISSelector(), X, H, cv=3, n_permutations=19)
    >>> bool(res.p_value <= 0.05)
    True
    """
    _check_permutations(n_permutations, stop_after)
    rng = check_random_state(random_state)
    X, H, splits, by_pairs = _prepare_cv(estimator, X, y, cv, y_kind, random_state)
    n = np.shape(H)[0]  # images (of a matrix or of triplets)
    perms = [rng.permutation(n) for _ in range(n_permutations)]
    observed_records = _fold_records(estimator, X, H, splits, by_pairs, None, False, False, n_jobs, verbose)
    observed = _gain(observed_records)
    null, p, stopped = _sequential_null(estimator, X, H, splits, by_pairs, perms, observed, stop_after, n_jobs, verbose)
    table = pd.DataFrame([{"fold": f, **r} for f, r in enumerate(observed_records)])
    return PermutationTestResult(observed, null, p, len(null), table, stopped)


def _check_permutations(n_permutations, stop_after):
    if not is_count(n_permutations):
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    if stop_after is not None and not is_count(stop_after):
        raise ValueError(f"stop_after must be None or a positive integer, got {stop_after!r}")


def _sequential_null(estimator, X, H, splits, by_pairs, perms, observed, stop_after, n_jobs, verbose,
                     statistic=lambda g: g):
    """Permuted statistics in order, stopped after ``stop_after`` reached ``observed`` (Besag & Clifford, 1991).

    Returns the null values run, the p-value (``stop_after / run`` when stopped, else
    ``(1 + #reached) / (1 + run)``) and whether it stopped before the last permutation. Permutations run in
    batches (sharing the kernels); the result is that of running them one by one.
    """
    if np.isnan(observed):
        stop_after = None  # no p-value (_permutation_p says so); nothing to stop on
    batch = len(perms) if stop_after is None else max(2 * stop_after, 10)
    null = np.empty(0)
    while len(null) < len(perms) and (stop_after is None or np.sum(null >= observed) < stop_after):
        more = perms[len(null):len(null) + batch]
        records = _fold_records(estimator, X, H, splits, by_pairs, more, False, False, n_jobs, verbose)
        null = np.r_[null, [statistic(_gain(r)) for r in records]]
    reached = np.cumsum(null >= observed)  # an undefined (NaN) permuted gain never reaches the observed one
    if stop_after is not None and reached[-1] >= stop_after:  # where the stop_after-th one reached it
        null = null[:int(np.argmax(reached >= stop_after)) + 1]
        return null, float(stop_after / np.sum(~np.isnan(null))), bool(len(null) < len(perms))
    return null, float(_permutation_p(observed, null)), False


def _has_fast_path(estimator) -> bool:
    """AISSelector and AISSelectorCV share their kernels across folds (``fold_results``); a subclass
    that overrides ``fit`` is fitted fold by fold, as any other estimator."""
    from ._selector import AISSelector, AISSelectorCV

    return isinstance(estimator, AISSelector) and type(estimator).fit in (AISSelector.fit, AISSelectorCV.fit)


def _fit_and_score(estimator, X, H, train, test, by_pairs, return_estimator, return_paths) -> dict:
    """One fold through the estimator's public fit/score/score_all (and path_score, path_scores_)."""
    est = clone(estimator)
    if "y_kind" in est.get_params():
        est.set_params(y_kind="similarity")  # H is validated (and flipped) once, up front
    X_train, X_test, H_train, H_test = fold_parts(X, H, train, test, by_pairs=by_pairs)
    t0 = time.perf_counter()
    est.fit(X_train, H_train)
    fit_time = time.perf_counter() - t0
    path, t = getattr(est, "path_scores_", None), getattr(est, "n_features_to_select_", None)
    train_score = float(path[t - 1]) if path is not None and t is not None else est.score(X_train, H_train)
    if held_out_is_undefined(H, test, by_pairs=by_pairs):  # constant held-out pairs: NaN, named by the table's warning
        scores = (train_score, np.nan, np.nan)
        paths = (est.path_scores_, np.full(len(est.path_scores_), np.nan)) if return_paths else None
    else:
        scores = (train_score, est.score_all(X_test, H_test), est.score(X_test, H_test))
        paths = (est.path_scores_, est.path_score(X_test, H_test)) if return_paths else None
    return fold_record(len(train), len(test), scores, np.sum(est.get_support()), fit_time,
                       estimator=est if return_estimator else None, paths=paths)


def __getattr__(name):
    # The nested choice of a layer lives beside LayerSelector (it imports the kernels: loaded on first use).
    if name == "cross_validate_layers":
        from ._layer_selector import cross_validate_layers

        return cross_validate_layers
    raise AttributeError(f"module 'sklearn_ais.model_selection' has no attribute {name!r}")
