"""Alignment metrics: second-order isomorphism, noise ceilings, map comparisons.

All similarity-matrix comparisons use the strict upper triangle and ignore
human pairs that are NaN; see :mod:`sklearn_ais._similarity` for the exact
conventions (constant rows, ties).
"""

from __future__ import annotations

import numpy as np

from . import _map_metrics
from ._feature_alignment import feature_alignment_score
from ._map_metrics import *  # noqa: F403  (map and distribution comparisons, listed in its __all__)
from ._similarity import COMPARISONS, correlation, similarity_matrix, upper_triangle
from ._targets import check_symmetric

__all__ = [
    "alignment_score",
    "feature_alignment_score",
    "noise_ceiling",
    "second_order_isomorphism",
    "similarity_matrix",
    "split_half_ceiling",
    "upper_triangle",
    *_map_metrics.__all__,
]


def _check_square(M, name):
    M = np.asarray(M)
    if np.iscomplexobj(M) or not (np.issubdtype(M.dtype, np.number) or M.dtype == bool):
        raise TypeError(f"{name} must be a real-valued numeric matrix, got dtype {M.dtype}")
    M = M.astype(np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {M.shape}")
    if M.shape[0] < 3:
        raise ValueError(f"{name} must be at least 3 x 3 to hold a correlation of pairs")
    check_symmetric(M, name)
    return M


def second_order_isomorphism(model_similarity, human_similarity, comparison: str = "spearman") -> float:
    """Correlation of the upper triangles of two similarity matrices (2OI).

    Parameters
    ----------
    model_similarity : array-like of shape (n, n)
    human_similarity : array-like of shape (n, n)
        NaN marks a missing pair; those pairs are ignored.
    comparison : {"spearman", "pearson"}, default="spearman"

    Returns
    -------
    r : float

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import spearmanr
    >>> from sklearn_ais.metrics import second_order_isomorphism
    >>> rng = np.random.default_rng(0)
    >>> A, B = np.corrcoef(rng.normal(size=(6, 4))), np.corrcoef(rng.normal(size=(6, 4)))
    >>> iu = np.triu_indices(6, 1)
    >>> bool(np.isclose(second_order_isomorphism(A, B), spearmanr(A[iu], B[iu]).statistic))
    True
    """
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    Z = _check_square(model_similarity, "model_similarity")
    H = _check_square(human_similarity, "human_similarity")
    if Z.shape != H.shape:
        raise ValueError(f"shapes differ: model {Z.shape} vs human {H.shape}")
    if np.isnan(Z).any():
        raise ValueError("model_similarity contains NaN")
    return correlation(upper_triangle(Z), upper_triangle(H), comparison)


def alignment_score(embeddings, human_similarity, similarity: str = "pearson", comparison: str = "spearman") -> float:
    """2OI of an embedding matrix (n, D) with a human similarity matrix (n, n).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import alignment_score
    >>> E = np.random.default_rng(0).normal(size=(10, 5))
    >>> alignment_score(E, np.corrcoef(E))
    1.0
    """
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n_images, n_features), got shape {E.shape}")
    if not np.isfinite(E).all():
        raise ValueError("embeddings contain NaN or inf")
    return second_order_isomorphism(similarity_matrix(E, similarity), human_similarity, comparison)


def noise_ceiling(subject_similarities, comparison: str = "spearman") -> tuple[float, float]:
    """Lower and upper bound of the noise ceiling from per-subject matrices.

    Upper bound: mean correlation of each subject with the group mean
    (including that subject); lower bound: with the mean of the others
    (leave-one-subject-out), as in Nili et al. (2014).

    Parameters
    ----------
    subject_similarities : array-like of shape (n_subjects, n, n)
        One similarity (or, consistently, dissimilarity) matrix per subject.
    comparison : {"spearman", "pearson"}

    Returns
    -------
    lower, upper : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import noise_ceiling
    >>> rng = np.random.default_rng(0)
    >>> truth = np.corrcoef(rng.normal(size=(12, 6)))
    >>> subjects = [truth + 0.3 * (lambda a: a + a.T)(rng.normal(size=(12, 12))) for _ in range(5)]
    >>> lo, hi = noise_ceiling(subjects)
    >>> bool(0 < lo < hi < 1)
    True
    """
    S = np.asarray(subject_similarities, dtype=np.float64)
    if S.ndim != 3 or S.shape[1] != S.shape[2]:
        raise ValueError(f"subject_similarities must have shape (n_subjects, n, n), got {S.shape}")
    if S.shape[0] < 2:
        raise ValueError("a noise ceiling needs at least 2 subjects")
    iu = np.triu_indices(S.shape[1], 1)
    U = S[:, iu[0], iu[1]]
    mean_all = np.nanmean(U, axis=0)
    lower, upper = [], []
    for s in range(len(U)):
        others = np.nanmean(np.delete(U, s, axis=0), axis=0)
        upper.append(correlation(mean_all, U[s], comparison) if not np.isnan(U[s]).all() else np.nan)
        lower.append(correlation(others, U[s], comparison) if not np.isnan(U[s]).all() else np.nan)
    return float(np.nanmean(lower)), float(np.nanmean(upper))


def split_half_ceiling(half1, half2, comparison: str = "spearman") -> float:
    """Split-half reliability of a similarity matrix, Spearman-Brown corrected.

    Parameters
    ----------
    half1, half2 : array-like of shape (n, n)
        The matrix from two disjoint halves of the raters.

    Returns
    -------
    ceiling : float
        ``2 r / (1 + r)`` with ``r`` the correlation of the two halves.
    """
    r = second_order_isomorphism(half1, half2, comparison)
    return float(2 * r / (1 + r)) if r > -1 else -1.0

