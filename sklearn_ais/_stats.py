"""Fold summaries and paired tests: one rule for every table the package prints.

* **Held-out 2OI** of a method is the plain mean of its per-fold scores, with
  the standard error across folds (``std(ddof=1) / sqrt(n_folds)``).
* **Paired tests** compare two methods fold by fold. Correlations of the
  Pearson family (``"pearson"``, ``"spearman"``) are Fisher z-transformed
  first (``arctanh``, which makes their sampling distribution closer to
  normal); every other statistic (``"pearson_r2"``, ``"kendall_tau_a"``,
  ``"rho_a"``) is tested on its own scale.
* ``test="corrected_t"`` (the default) is the corrected resampled t-test of
  Nadeau & Bengio (2003), in the repeated k-fold form of Bouckaert & Frank
  (2004): with ``J`` folds (all repeats), mean difference ``d``, variance of
  the differences ``s2`` and ``rho = n_test / n_train``,
  ``t = d / sqrt((1 / J + rho) * s2)`` on ``J - 1`` degrees of freedom. The
  folds of a repeated cross-validation share training data; the plain paired
  t-test (``"paired_t"``, the test the AIS paper reports) ignores that and is
  optimistic. ``"wilcoxon"`` is the signed-rank test on the same values.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

__all__ = ["ALTERNATIVES", "TESTS", "fold_record", "fold_summary", "nan_mean_sd", "paired_test", "transform_for_test"]

TESTS = ("corrected_t", "paired_t", "wilcoxon")
ALTERNATIVES = ("two-sided", "greater", "less")
# Comparisons whose values are Pearson-type correlations, tested after Fisher's z-transform.
FISHER_COMPARISONS = ("pearson", "spearman")
_CLIP = 1 - 1e-12


def transform_for_test(values, comparison: str) -> np.ndarray:
    """The scale a paired test runs on: Fisher z for Pearson-type correlations, else the values themselves.

    Parameters
    ----------
    values : array-like of float
    comparison : str
        The comparison that produced the values.

    Returns
    -------
    z : ndarray of float
    """
    v = np.asarray(values, dtype=np.float64)
    if comparison in FISHER_COMPARISONS:
        return np.arctanh(np.clip(v, -_CLIP, _CLIP))
    return v


def fold_record(n_train, n_test, scores, n_selected, fit_time, *, estimator=None, paths=None) -> dict:
    """One row of a cross-validation table, in the column order every table uses.

    Parameters
    ----------
    n_train, n_test : int
        Sizes of the fold's parts (images, or pairs for entry-wise folds).
    scores : (float, float, float)
        Training 2OI of the selection, held-out 2OI of all features, held-out 2OI of the selection.
    n_selected : int
    fit_time : float
        Seconds.
    estimator : estimator, optional
        Kept in the row (``return_estimator=True``).
    paths : (ndarray, ndarray), optional
        Training and held-out sweep paths (``return_paths=True``).

    Returns
    -------
    record : dict
    """
    train, full, selected = scores
    record = {
        "n_train": int(n_train),
        "n_test": int(n_test),
        "train_score_selected": float(train),
        "test_score_full": full,
        "test_score_selected": selected,
        "n_selected": int(n_selected),
        "fit_time": fit_time,
    }
    if estimator is not None:
        record["estimator"] = estimator
    if paths is not None:
        record["train_path"], record["test_path"] = paths
    return record


def fold_summary(values) -> tuple[float, float]:
    """Mean and standard error across folds (NaN folds left out).

    Parameters
    ----------
    values : array-like of float

    Returns
    -------
    mean, sem : float
        ``sem`` is NaN with fewer than 2 folds.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return np.nan, np.nan
    sem = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan
    return float(np.mean(v)), sem


def nan_mean_sd(values) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of a 2-D array, ignoring NaN (undefined scores).

    Parameters
    ----------
    values : ndarray of shape (n_rows, n_columns)

    Returns
    -------
    mean, sd : ndarray of shape (n_columns,)
        NaN for a column with no finite value (no warning).
    """
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    count = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.where(ok, values, 0.0).sum(axis=0) / count, np.nan)
        sd = np.sqrt(np.where(count > 0, (np.where(ok, values - mean, 0.0) ** 2).sum(axis=0) / count, np.nan))
    return mean, sd


def paired_test(
    a,
    b,
    *,
    comparison: str = "spearman",
    test: str = "corrected_t",
    alternative: str = "two-sided",
    test_train_ratio=None,
) -> dict:
    """Paired test of ``a`` against ``b`` over folds (see the module docstring).

    Parameters
    ----------
    a, b : array-like of shape (n_folds,)
        Per-fold scores of two methods on the same folds.
    comparison : str, default="spearman"
        What the scores are (chooses the scale, see :func:`transform_for_test`).
    test : {"corrected_t", "paired_t", "wilcoxon"}, default="corrected_t"
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
        ``"greater"``: ``a`` is better than ``b``.
    test_train_ratio : float or array-like of shape (n_folds,), optional
        ``n_test / n_train`` of the folds (images, or pairs for entry-wise
        splits); required by ``"corrected_t"`` (a per-fold array is averaged).

    Returns
    -------
    result : dict
        ``statistic``, ``p_value``, ``df`` (t-tests), ``n`` (folds used),
        ``test``, ``alternative``, ``scale`` ("fisher z" or "raw").

    Examples
    --------
    >>> from sklearn_ais._stats import paired_test
    >>> r = paired_test([0.5, 0.6, 0.55, 0.62], [0.4, 0.45, 0.5, 0.5], test="paired_t")
    >>> round(r["statistic"], 3), r["scale"]
    (4.757, 'fisher z')
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D arrays of the same length, got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    za, zb = transform_for_test(a[ok], comparison), transform_for_test(b[ok], comparison)
    out = {"n": int(ok.sum()), "test": test, "alternative": alternative, "df": np.nan,
           "scale": "fisher z" if comparison in FISHER_COMPARISONS else "raw", "statistic": np.nan, "p_value": np.nan}
    d = za - zb
    if len(d) < 2 or not np.any(d != 0) or not np.isfinite(d).all():
        return out
    if test == "wilcoxon":
        res = stats.wilcoxon(za, zb, alternative=alternative)
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
        return out
    J = len(d)
    var = float(np.var(d, ddof=1))
    if test == "paired_t":
        scale = var / J
    else:
        if test_train_ratio is None:
            raise ValueError("the corrected t-test needs test_train_ratio (n_test / n_train of the folds)")
        ratio = np.asarray(test_train_ratio, dtype=np.float64)
        ratio = float(np.mean(ratio[ok] if ratio.ndim and len(ratio) == len(ok) else ratio))
        scale = (1.0 / J + ratio) * var
    t = float(np.mean(d) / np.sqrt(scale)) if scale > 0 else np.sign(np.mean(d)) * np.inf
    df = J - 1
    if alternative == "two-sided":
        p = 2 * stats.t.sf(abs(t), df)
    elif alternative == "greater":
        p = stats.t.sf(t, df)
    else:
        p = stats.t.cdf(t, df)
    out.update(statistic=t, p_value=float(p) if not np.isnan(t) else np.nan, df=df)  # a NaN statistic: no p
    return out


def warn_undefined_folds(n_undefined: int, n_total: int, stacklevel=3, *, folds=None):
    """Folds with an undefined held-out 2OI are left out of means and tests: say so, naming them.

    Parameters
    ----------
    n_undefined, n_total : int
        Folds whose held-out score is NaN, and all folds.
    stacklevel : int, default=3
    folds : array-like of int, optional
        The undefined folds' numbers, named in the message.
    """
    if n_undefined:
        named = "" if folds is None else f" (fold {', '.join(str(int(f)) for f in list(folds)[:10])}" + (
            ", ...)" if len(folds) > 10 else ")")
        warnings.warn(
            f"{n_undefined} of {n_total} folds{named} have an undefined held-out 2OI (NaN: constant held-out "
            "human pairs, or a constant model similarity matrix on the test data); they are left out of the means "
            f"and the paired test, which use the other {n_total - n_undefined} folds",
            UserWarning,
            stacklevel=stacklevel,
        )
