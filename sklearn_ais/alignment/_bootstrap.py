"""Bootstrap over stimuli (and subjects) for comparing backbones and methods (Schütt et al., 2023).

Each replicate resamples the images with replacement (and, when per-subject matrices are given, the
subjects), reruns the whole image-wise cross-validation of every backbone and method on the
resampled set, and records each model's mean held-out 2OI and the noise ceiling.

A resample holds copies; a copy is the same unit again, never a new one. As rsatoolbox's
``bootstrap_crossval`` and Schütt et al. (2023) do:

* **images**: the pairs of an image with its own copy are dropped (a copy is not a second stimulus: its
  similarity to itself would be a free perfect pair), :func:`bootstrap_target`;
* **folds**: the folds split the *distinct* images, so that the copies of an image are never on both
  sides of a fold, :func:`bootstrap_folds`;
* **subjects**: the copies of a resampled subject are one person: the noise ceiling's
  leave-one-subject-out leaves out every copy (``noise_ceiling(..., groups=drawn)``, rsatoolbox's
  ``boot_noise_ceiling`` on ``RDMs.subsample('index', idx)``);
* **scores**: with subjects, a model is scored against each drawn subject's matrix and the scores are
  averaged (the scale of the noise ceiling), not against the mean of the drawn matrices, whose
  reliability drops with every duplicate (which would pull the replicates below the point estimate).

The point estimate of every bootstrapped quantity is the same statistic on the original sample (every
image and subject once, the comparison's own folds), and the intervals say how they are built
(``interval``): ``"normal"`` (the default) is centred on that estimate, ``estimate ± z * sd`` with ``sd``
the standard deviation of the replicates (the form rsatoolbox's results report); ``"percentile"`` takes
the replicates' percentiles. A replicate refits every method on about 63 % distinct images, so flexible
methods score lower in replicates than on the full set; the percentile interval inherits that shift,
the normal interval only the spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state

__all__ = ["bootstrap_comparison", "bootstrap_folds", "bootstrap_target", "oriented_subjects", "summarize_bootstrap"]


def bootstrap_target(H, idx) -> np.ndarray:
    """The human matrix of a bootstrap sample: ``H[idx][:, idx]`` with the pairs of copies missing.

    Parameters
    ----------
    H : ndarray of shape (n, n)
        Validated similarity matrix (NaN diagonal).
    idx : ndarray of int of shape (n_sample,)
        The resampled images (with repetition).

    Returns
    -------
    Hb : ndarray of shape (n_sample, n_sample)
        NaN wherever ``idx[i] == idx[j]`` (the diagonal and every pair of copies).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment._bootstrap import bootstrap_target
    >>> H = np.array([[np.nan, .5, .2], [.5, np.nan, .9], [.2, .9, np.nan]])
    >>> bootstrap_target(H, np.array([0, 0, 2]))
    array([[nan, nan, 0.2],
           [nan, nan, 0.2],
           [0.2, 0.2, nan]])
    """
    idx = np.asarray(idx)
    Hb = H[np.ix_(idx, idx)].copy()
    Hb[idx[:, None] == idx[None, :]] = np.nan
    return Hb


def bootstrap_folds(idx, n_splits, random_state) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image-wise folds of a bootstrap sample: a shuffled K-fold of its distinct images, copies kept together.

    Parameters
    ----------
    idx : ndarray of int of shape (n_sample,)
    n_splits : int
    random_state : int or RandomState

    Returns
    -------
    folds : list of (train, test)
        Positions in the sample.
    """
    distinct = np.unique(idx)
    folds = []
    for train, test in KFold(n_splits, shuffle=True, random_state=random_state).split(distinct):
        folds.append((np.flatnonzero(np.isin(idx, distinct[train])), np.flatnonzero(np.isin(idx, distinct[test]))))
    return folds


def oriented_subjects(subjects, H):
    """Subjects' matrices oriented like ``H`` (similarities): their mean must correlate with ``H``.

    Parameters
    ----------
    subjects : ndarray of shape (n_subjects, n, n)
    H : ndarray of shape (n, n)

    Returns
    -------
    subjects : ndarray of shape (n_subjects, n, n)
        Negated if their mean correlates negatively with ``H`` (dissimilarities).
    """
    iu = np.triu_indices(H.shape[0], 1)
    mean = np.nanmean(subjects, axis=0)[iu]
    ok = ~np.isnan(mean) & ~np.isnan(H[iu])
    r = np.corrcoef(mean[ok], H[iu][ok])[0, 1]
    if not np.isfinite(r) or abs(r) < 0.1:
        raise ValueError(
            f"the mean of subject_similarities correlates {r:.2f} with y: they do not describe the same judgments "
            "(or not the same images in the same order)"
        )
    return subjects if r > 0 else -subjects


def _replicate(seed, Xs, H, subjects, methods, n_splits, similarity, comparison, splits=None) -> dict:
    """One bootstrap replicate: every backbone and method cross-validated on a resampled set.

    ``seed=None``: the original sample (every image and subject once) on ``splits``, the point estimate of
    what the replicates resample.
    """
    from ..metrics import noise_ceiling
    from ._held_out import fold_scores

    rng = np.random.RandomState(seed)
    n = H.shape[0]
    idx = np.arange(n) if seed is None else rng.randint(n, size=n)
    Hs, targets, drawn = H, None, None
    if subjects is not None:
        drawn = np.arange(len(subjects)) if seed is None else rng.randint(len(subjects), size=len(subjects))
        chosen = subjects[drawn]
        Hs = np.nanmean(chosen, axis=0)
        np.fill_diagonal(Hs, np.nan)
        targets = np.stack([bootstrap_target(m, idx) for m in chosen])
    Hb = bootstrap_target(Hs, idx)
    folds = splits if seed is None else bootstrap_folds(idx, n_splits, rng)
    out = {}
    folds = [(tr, te) for tr, te in folds if _scorable(idx[te], Hb[np.ix_(te, te)])]
    for label, X in Xs:
        Xb = _resampled(X, idx)
        for name, template in methods.items():
            scores = fold_scores(Xb, Hb, folds, template, similarity, comparison, subjects=targets)
            out[(label, name)] = float(np.nanmean(scores)) if scores else np.nan
    if subjects is not None:
        lows, highs = [np.nan], [np.nan]
        for _, te in folds:
            lo, hi = noise_ceiling(targets[:, te][:, :, te], comparison, groups=drawn)  # copies: one person
            lows.append(lo)
            highs.append(hi)
        out[("noise ceiling", "lower")] = float(np.nanmean(lows)) if len(lows) > 1 else np.nan
        out[("noise ceiling", "upper")] = float(np.nanmean(highs)) if len(highs) > 1 else np.nan
    return out


def _scorable(images, H_test) -> bool:
    """Whether a test fold of a resample can be scored: at least 4 images (what the estimators require), 3 distinct
    ones (3 pairs that are not copies) and human values that are not all equal (a correlation). With few images, a
    fold of the distinct images may fall short; it is left out of the replicate's mean (every model and the noise
    ceiling alike, so they stay paired)."""
    from ._held_out import defined_target

    return len(images) >= 4 and len(np.unique(images)) >= 3 and defined_target(H_test)


def _resampled(X, idx):
    """``X[idx]`` with repetition (ids dropped: copies would repeat them)."""
    from .._validation import is_feature_maps

    if is_feature_maps(X) and X.ids is not None:
        X = X[np.arange(len(X))]
        X.ids = None
    return X[idx]


INTERVALS = ("normal", "percentile")


def _interval(values, estimate, method, level=0.95):
    """A ``level`` interval of a bootstrapped quantity (see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2 or not np.isfinite(estimate):
        return np.nan, np.nan
    if method == "percentile":
        lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)
    from scipy.stats import norm

    half = norm.ppf(0.5 + level / 2) * np.std(v, ddof=1)
    return float(estimate - half), float(estimate + half)


def _two_sided_p(diff, estimate, method) -> float:
    """Bootstrap p of a difference being 0: the normal approximation around the estimate (``"normal"``), or
    twice the replicates' smaller tail beyond 0 (``"percentile"``, at least 1 / (B + 1))."""
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2 or not np.isfinite(estimate):
        return np.nan
    if method == "normal":
        from scipy.stats import norm

        sd = np.std(d, ddof=1)
        return float(2 * norm.sf(abs(estimate) / sd)) if sd > 0 else float(estimate == 0)
    tail = min(np.mean(d <= 0), np.mean(d >= 0))
    return float(min(1.0, max(2 * tail, 1 / (len(d) + 1))))


def summarize_bootstrap(replicates: pd.DataFrame, point: pd.DataFrame, reference: str = "none", *,
                        estimate=None, interval: str = "normal", level: float = 0.95) -> pd.DataFrame:
    """Intervals of every model's held-out 2OI, of its difference to the reference method and to the
    noise ceiling's lower bound.

    Parameters
    ----------
    replicates : DataFrame
        One row per replicate, one column per ``(backbone, method)`` (and the noise ceiling).
    point : DataFrame
        The comparison's summary (``backbone``, ``method``, ``test_2oi``).
    reference : str, default="none"
    estimate : dict, optional
        The bootstrapped statistic on the original sample, keyed like the replicates' columns (see
        :func:`bootstrap_comparison`); default: ``point``'s ``test_2oi``.
    interval : {"normal", "percentile"}, default="normal"
        ``"normal"``: ``estimate ± z * sd(replicates)``, centred on the estimate; ``"percentile"``: the
        replicates' percentiles. The bootstrap p follows the same rule.
    level : float, default=0.95

    Returns
    -------
    summary : DataFrame
        One row per (backbone, method): ``test_2oi`` (the comparison's point estimate), ``estimate`` (what
        the replicates resample, on the original sample), ``n_bootstrap``, ``ci_low``, ``ci_high``,
        ``delta``, ``delta_ci_low``, ``delta_ci_high``, ``delta_p`` (vs the reference method of the same
        backbone), ``below_ceiling``, ``below_ceiling_ci_low``, ``below_ceiling_ci_high`` (lower noise
        ceiling minus the model), and ``interval`` (the method, with its level).
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if estimate is None:
        estimate = {(r["backbone"], r["method"]): r["test_2oi"] for _, r in point.iterrows()}
    rows = []
    ceiling = replicates.get(("noise ceiling", "lower"))
    ceiling_estimate = estimate.get(("noise ceiling", "lower"), np.nan)
    for _, r in point.iterrows():
        key = (r["backbone"], r["method"])
        v = replicates[key].to_numpy()
        est = float(estimate[key])
        row = {"backbone": key[0], "method": key[1], "test_2oi": r["test_2oi"], "estimate": est,
               "n_bootstrap": int(np.isfinite(v).sum())}
        row["ci_low"], row["ci_high"] = _interval(v, est, interval, level)
        ref = (key[0], reference)
        if key[1] != reference and ref in replicates:
            d, d_est = v - replicates[ref].to_numpy(), est - float(estimate[ref])
            row["delta"] = d_est
            row["delta_ci_low"], row["delta_ci_high"] = _interval(d, d_est, interval, level)
            row["delta_p"] = _two_sided_p(d, d_est, interval)
        if ceiling is not None:
            row["below_ceiling"] = ceiling_estimate - est
            row["below_ceiling_ci_low"], row["below_ceiling_ci_high"] = _interval(
                ceiling.to_numpy() - v, ceiling_estimate - est, interval, level)
        row["interval"] = f"{interval} {100 * level:g} %"
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_comparison(Xs, H, methods, *, n_splits, subjects=None, similarity="pearson", comparison="spearman",
                         n_bootstrap=1000, random_state=0, n_jobs=None, verbose=0, splits=None):
    """Bootstrap replicates of a comparison and their point estimate (see the module docstring).

    Parameters
    ----------
    Xs : list of (label, FeatureMaps or ndarray)
        The backbones' maps, on the same images in the same order.
    H : ndarray of shape (n, n)
        Validated similarity matrix.
    methods : dict of str to estimator or None
    n_splits : int
        Folds of each replicate's cross-validation.
    subjects : ndarray of shape (n_subjects, n, n), optional
        Per-subject matrices: then the subjects are resampled too, each replicate's methods are fitted on
        the mean of the drawn subjects and scored against each of them (the mean of the scores), and the
        noise ceiling is recorded (copies of a subject grouped as one person).
    similarity, comparison : str
    n_bootstrap : int, default=1000
    random_state : int, RandomState instance or None, default=0
    n_jobs : int or None, default=None
        Replicates run through ``joblib``; the same results as a serial run.
    verbose : int, default=0
    splits : list of (train, test), optional
        The comparison's folds, for the point estimate (default: ``n_splits`` shuffled folds seeded by
        ``random_state``).

    Returns
    -------
    replicates : DataFrame
        One row per replicate; columns ``(backbone, method)`` and, with subjects,
        ``("noise ceiling", "lower"/"upper")``.
    estimate : dict
        The same columns' statistic on the original sample (every image and subject once, on ``splits``).
    """
    from .._parallel import parallel_map

    rng = check_random_state(random_state)
    seeds = rng.randint(np.iinfo(np.int32).max, size=n_bootstrap)
    if subjects is not None:
        subjects = oriented_subjects(np.asarray(subjects, dtype=np.float64), H)
    if splits is None:
        splits = bootstrap_folds(np.arange(H.shape[0]), n_splits, random_state)
    tasks = [(None, Xs, H, subjects, methods, n_splits, similarity, comparison, splits)]
    tasks += [(int(s), Xs, H, subjects, methods, n_splits, similarity, comparison) for s in seeds]
    out = parallel_map(_replicate, tasks, n_jobs=n_jobs, verbose=verbose, desc="bootstrap", unit="replicate")
    return pd.DataFrame(out[1:], columns=pd.MultiIndex.from_tuples(list(out[0]))), out[0]
