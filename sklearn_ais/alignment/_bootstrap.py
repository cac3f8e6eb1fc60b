"""Bootstrap over stimuli (and subjects) for comparing backbones and methods (Schütt et al., 2023).

Each replicate resamples the images with replacement (and, when per-subject matrices are given, the
subjects), reruns the whole image-wise cross-validation of every backbone and method on the
resampled set, and records each model's mean held-out 2OI and the noise ceiling. As rsatoolbox's
``bootstrap_crossval`` does, the pairs of an image with its own copy are dropped (a copy is not a
second stimulus: its similarity to itself would be a free perfect pair), and the folds split the
*distinct* images, so that the copies of an image are never on both sides of a fold.
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


def _replicate(seed, Xs, H, subjects, methods, n_splits, similarity, comparison) -> dict:
    """One bootstrap replicate: every backbone and method cross-validated on a resampled set."""
    from ..metrics import noise_ceiling
    from ._compare import _fit_and_score

    rng = np.random.RandomState(seed)
    n = H.shape[0]
    idx = rng.randint(n, size=n)
    Hs = H
    if subjects is not None:
        chosen = subjects[rng.randint(len(subjects), size=len(subjects))]
        Hs = np.nanmean(chosen, axis=0)
        np.fill_diagonal(Hs, np.nan)
    Hb = bootstrap_target(Hs, idx)
    folds = bootstrap_folds(idx, n_splits, rng)
    out = {}
    for label, X in Xs:
        Xb = _resampled(X, idx)
        for name, template in methods.items():
            scores = [_fit_and_score(Xb, Hb, tr, te, template, similarity, comparison)["test_2oi"] for tr, te in folds]
            out[(label, name)] = float(np.nanmean(scores))
    if subjects is not None:
        lows, highs = [], []
        for _, te in folds:
            sub = np.stack([bootstrap_target(m, idx[te]) for m in chosen])
            lo, hi = noise_ceiling(sub, comparison)
            lows.append(lo)
            highs.append(hi)
        out[("noise ceiling", "lower")], out[("noise ceiling", "upper")] = float(np.mean(lows)), float(np.mean(highs))
    return out


def _resampled(X, idx):
    """``X[idx]`` with repetition (ids dropped: copies would repeat them)."""
    from .._validation import is_feature_maps

    if is_feature_maps(X) and X.ids is not None:
        X = X[np.arange(len(X))]
        X.ids = None
    return X[idx]


def _interval(values, level=0.95):
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _two_sided_p(diff) -> float:
    """Bootstrap p of a difference: twice the smaller tail beyond 0 (at least 1 / (B + 1))."""
    d = np.asarray(diff)[~np.isnan(diff)]
    if not len(d):
        return np.nan
    tail = min(np.mean(d <= 0), np.mean(d >= 0))
    return float(min(1.0, max(2 * tail, 1 / (len(d) + 1))))


def summarize_bootstrap(replicates: pd.DataFrame, point: pd.DataFrame, reference: str = "none") -> pd.DataFrame:
    """Percentile intervals of every model's held-out 2OI, of its difference to the reference method and to the
    noise ceiling's lower bound.

    Parameters
    ----------
    replicates : DataFrame
        One row per replicate, one column per ``(backbone, method)`` (and the noise ceiling).
    point : DataFrame
        The comparison's summary (point estimates: ``backbone``, ``method``, ``test_2oi``).
    reference : str, default="none"

    Returns
    -------
    summary : DataFrame
        One row per (backbone, method): ``test_2oi`` (point estimate), ``ci_low``, ``ci_high``,
        ``delta_ci_low``, ``delta_ci_high``, ``delta_p`` (vs the reference method of the same backbone),
        ``below_ceiling_ci_low``, ``below_ceiling_ci_high`` (lower noise ceiling minus the model).
    """
    rows = []
    ceiling = replicates.get(("noise ceiling", "lower"))
    for _, r in point.iterrows():
        key = (r["backbone"], r["method"])
        v = replicates[key].to_numpy()
        row = {"backbone": key[0], "method": key[1], "test_2oi": r["test_2oi"], "n_bootstrap": int(np.isfinite(v).sum())}
        row["ci_low"], row["ci_high"] = _interval(v)
        ref = (key[0], reference)
        if key[1] != reference and ref in replicates:
            d = v - replicates[ref].to_numpy()
            row["delta_ci_low"], row["delta_ci_high"] = _interval(d)
            row["delta_p"] = _two_sided_p(d)
        if ceiling is not None:
            row["below_ceiling_ci_low"], row["below_ceiling_ci_high"] = _interval(ceiling.to_numpy() - v)
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_comparison(Xs, H, methods, *, n_splits, subjects=None, similarity="pearson", comparison="spearman",
                         n_bootstrap=1000, random_state=0, n_jobs=None, verbose=0) -> pd.DataFrame:
    """Bootstrap replicates of a comparison (see the module docstring).

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
        Per-subject matrices: then the subjects are resampled too, each replicate's human matrix is their
        mean, and the noise ceiling is recorded.
    similarity, comparison : str
    n_bootstrap : int, default=1000
    random_state : int, RandomState instance or None, default=0
    n_jobs : int or None, default=None
        Replicates run through ``joblib``; the same results as a serial run.
    verbose : int, default=0

    Returns
    -------
    replicates : DataFrame
        One row per replicate; columns ``(backbone, method)`` and, with subjects,
        ``("noise ceiling", "lower"/"upper")``.
    """
    from .._parallel import parallel_map

    rng = check_random_state(random_state)
    seeds = rng.randint(np.iinfo(np.int32).max, size=n_bootstrap)
    if subjects is not None:
        subjects = oriented_subjects(np.asarray(subjects, dtype=np.float64), H)
    tasks = [(int(s), Xs, H, subjects, methods, n_splits, similarity, comparison) for s in seeds]
    out = parallel_map(_replicate, tasks, n_jobs=n_jobs, verbose=verbose, desc="bootstrap", unit="replicate")
    return pd.DataFrame(out, columns=pd.MultiIndex.from_tuples(list(out[0])))
