"""Alignment metrics: second-order isomorphism, noise ceilings, map comparisons.

All similarity-matrix comparisons use the strict upper triangle and ignore
human pairs that are NaN; see :mod:`sklearn_ais._similarity` for the exact
conventions (constant rows, ties).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _map_metrics
from ._feature_alignment import feature_alignment_score
from ._map_metrics import *  # noqa: F403  (map and distribution comparisons, listed in its __all__)
from ._similarity import COMPARISONS, SIMILARITIES, correlation, similarity_matrix, upper_triangle
from ._sklearn_compat import StrOptions, validate_params
from ._targets import (Y_KINDS, as_float_matrix, check_similarity_target, check_symmetric, diagonal_convention,
                       target_is_constant)
from ._triplets import TRIPLET_COMPARISONS, THINGS_CEILING, check_triplet_target, triplet_noise_ceiling

__all__ = [
    "alignment_score",
    "feature_alignment_score",
    "noise_ceiling",
    "second_order_isomorphism",
    "similarity_matrix",
    "split_half_ceiling",
    "normalize_to_ceiling",
    "triplet_noise_ceiling",
    "triplet_score",
    "upper_triangle",
    *_map_metrics.__all__,
]


def _check_model(M, name="model_similarity"):
    """The model side of a comparison: square, symmetric, finite, and a *similarity* by its diagonal."""
    from ._targets import _kind_mismatch_message, diagonal_convention

    M = _check_square(M, name)
    if np.isnan(M[~np.eye(len(M), dtype=bool)]).any():  # a NaN diagonal is allowed: self-pairs are never compared
        raise ValueError(f"{name} contains NaN off its diagonal")
    if diagonal_convention(M) == "dissimilarity":
        raise ValueError(_kind_mismatch_message("dissimilarity", "similarity").replace("y ", f"{name} ", 1)
                         .replace("(command line: --kind dissimilarity)", "(or pass -D: every comparison is "
                                  "invariant to that sign flip)"))
    return M


def _human(M, n, y_kind, name="human_similarity"):
    """A human matrix through the input contract (:func:`~sklearn_ais._targets.check_similarity_target`)."""
    try:
        return check_similarity_target(M, n, y_kind)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


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


@validate_params(
    {"model_similarity": ["array-like"], "human_similarity": ["array-like"],
     "comparison": [StrOptions(set(COMPARISONS))], "y_kind": [StrOptions(set(Y_KINDS))]},
    prefer_skip_nested_validation=True,
)
def second_order_isomorphism(model_similarity, human_similarity, comparison: str = "spearman", *,
                             y_kind: str = "similarity") -> float:
    """Correlation of the upper triangles of two similarity matrices (2OI).

    Parameters
    ----------
    model_similarity : array-like of shape (n, n)
    human_similarity : array-like of shape (n, n)
        NaN marks a missing pair; those pairs are ignored. Read by the
        estimators' input contract
        (:func:`~sklearn_ais.model_selection.check_similarity_target`): a
        diagonal that contradicts ``y_kind`` (e.g. an RDM passed as a
        similarity) is an error.
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}, default="spearman"
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``human_similarity`` holds. The model side is always a
        similarity (a dissimilarity diagonal there is an error too).

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
    Z = _check_model(model_similarity)
    H = _check_square(human_similarity, "human_similarity")
    if Z.shape != H.shape:
        raise ValueError(f"shapes differ: model {Z.shape} vs human {H.shape}")
    H = _human(H, len(H), y_kind)
    return correlation(upper_triangle(Z), upper_triangle(H), comparison)


@validate_params(
    {"embeddings": ["array-like"], "human_similarity": ["array-like"], "similarity": [StrOptions(set(SIMILARITIES))],
     "comparison": [StrOptions(set(COMPARISONS))], "y_kind": [StrOptions(set(Y_KINDS))]},
    prefer_skip_nested_validation=True,
)
def alignment_score(embeddings, human_similarity, similarity: str = "pearson", comparison: str = "spearman", *,
                    y_kind: str = "similarity") -> float:
    """2OI of an embedding matrix (n, D) with a human similarity matrix (n, n).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import alignment_score
    >>> E = np.random.default_rng(0).normal(size=(10, 5))
    >>> alignment_score(E, np.corrcoef(E))
    1.0

    Parameters
    ----------
    embeddings : array-like of shape (n_images, n_features)
    human_similarity : array-like of shape (n_images, n_images)
        NaN marks a missing pair.
    similarity : {"pearson", "cosine"}, default="pearson"
        Model similarity of two embedding rows.
    comparison : str, default="spearman"
        Correlation of the upper triangles.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``human_similarity`` holds (checked against its diagonal, as
        the estimators do).

    Returns
    -------
    r : float
    """
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n_images, n_features), got shape {E.shape}")
    if not np.isfinite(E).all():
        raise ValueError("embeddings contain NaN or inf")
    return second_order_isomorphism(similarity_matrix(E, similarity), human_similarity, comparison, y_kind=y_kind)


POOLINGS = ("nili", "mean")


def _standardized_subjects(U, comparison):
    """Nili et al. (2014) / rsatoolbox pooling: each subject's observed values ranked (rank-based
    comparisons), z-scored (Pearson-based ones) or divided by their root mean square (cosine) before the
    subjects are averaged."""
    from scipy.stats import rankdata

    out = np.full_like(U, np.nan)
    for s, u in enumerate(U):
        ok = ~np.isnan(u)
        if comparison in ("pearson", "pearson_r2"):
            v = u[ok] - u[ok].mean()
            sd = v.std()
            out[s, ok] = v / sd if sd > 0 else 0.0
        elif comparison == "cosine":
            rms = np.sqrt(np.mean(u[ok] ** 2))
            out[s, ok] = u[ok] / rms if rms > 0 else 0.0
        else:
            out[s, ok] = rankdata(u[ok])
    return out


def _pool(U):
    """Mean over subjects of each pair, ignoring subjects who did not judge it (NaN where none did)."""
    count = (~np.isnan(U)).sum(axis=0)
    total = np.where(np.isnan(U), 0.0, U).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _paired_correlation(a, b, comparison):
    """Correlation over the pairs both vectors observe (NaN when fewer than 3, or one side constant)."""
    ok = ~np.isnan(a) & ~np.isnan(b)
    if ok.sum() < 3 or target_is_constant(a[ok]) or target_is_constant(b[ok]):  # the one constant rule
        return np.nan
    return correlation(a[ok], b[ok], comparison)


@validate_params(
    {"subject_similarities": ["array-like"], "comparison": [StrOptions(set(COMPARISONS))],
     "pooling": [StrOptions(set(POOLINGS))], "groups": ["array-like", None]},
    prefer_skip_nested_validation=True,
)
def noise_ceiling(subject_similarities, comparison: str = "spearman", pooling: str = "nili",
                  groups=None) -> tuple[float, float]:
    """Lower and upper bound of the noise ceiling from per-subject matrices (Nili et al., 2014).

    Upper bound: mean over subjects of the correlation of each subject's
    matrix with the pooled matrix of all subjects (including that subject);
    lower bound: with the pooled matrix of the other subjects
    (leave-one-subject-out). The best any model can do lies between them.

    Parameters
    ----------
    subject_similarities : array-like of shape (n_subjects, n, n)
        One similarity (or, consistently, dissimilarity) matrix per subject;
        NaN marks a pair a subject did not judge.
    comparison : str, default="spearman"
        How a subject's matrix is compared with the pooled one (the upper
        triangles; any comparison of :data:`~sklearn_ais._similarity.COMPARISONS`).
    pooling : {"nili", "mean"}, default="nili"
        ``"nili"``: as Nili et al. (2014) and rsatoolbox's
        ``boot_noise_ceiling`` do, each subject's values are ranked (rank
        comparisons: ``"spearman"``, ``"kendall_tau_a"``, ``"rho_a"``) or
        z-scored (``"pearson"``, ``"pearson_r2"``) before the subjects are
        averaged, so that no subject weighs more for the scale of its
        values. ``"mean"``: the plain average of the raw values.
    groups : array-like of shape (n_subjects,), optional
        Which person each matrix belongs to (e.g. the subject index of a
        bootstrap draw, where ``[0, 0, 1, 2]`` holds subject 0 twice).
        Matrices of one group are one person: leave-one-out leaves out the
        whole group, and each group weighs once in the means (the mean over
        its matrices, then over groups), as rsatoolbox's
        ``boot_noise_ceiling(rdms, rdm_descriptor='index')`` on
        ``rdms.subsample('index', idx)``. Default: every matrix its own group.

    Returns
    -------
    lower, upper : float
        With ``comparison="kendall_tau_a"``, ``upper`` is not a true upper
        bound: the pooled matrix is the mean of the subjects' ranks, which
        maximises the mean Spearman-type correlation but not the mean tau-a
        (ties in the averaged ranks count 0), so a model can exceed it (as in
        rsatoolbox, which pools the same way).

    Notes
    -----
    A pair is averaged over the subjects who judged it; a pair judged by one
    subject only is missing from that subject's leave-one-out pool and
    ignored in that comparison. A subject with fewer than 3 comparable pairs
    is left out of the means.

    References
    ----------
    Nili, H., Wingfield, C., Walther, A., Su, L., Marslen-Wilson, W., &
    Kriegeskorte, N. (2014). A toolbox for representational similarity
    analysis. PLoS Computational Biology, 10(4), e1003553.

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
    S = as_float_matrix(subject_similarities, "subject_similarities")
    if S.ndim != 3 or S.shape[1] != S.shape[2]:
        raise ValueError(f"subject_similarities must have shape (n_subjects, n, n), got {S.shape}")
    if S.shape[0] < 2:
        raise ValueError("a noise ceiling needs at least 2 subjects")
    if np.isinf(S).any():
        raise ValueError("subject_similarities contain +/-inf; use NaN to mark a pair a subject did not judge")
    kinds = {}
    for s, M in enumerate(S):
        check_symmetric(M, f"subject_similarities[{s}]")
        kinds.setdefault(diagonal_convention(M), []).append(s)
    kinds.pop(None, None)
    if len(kinds) > 1:  # one subject's RDM among similarity matrices would flip that subject's sign
        raise ValueError(
            f"subject_similarities mix similarities (subjects {kinds['similarity'][:5]}: the diagonal holds each "
            f"row's largest value) and dissimilarities (subjects {kinds['dissimilarity'][:5]}: zero diagonal or "
            "each row's smallest value); orient every subject the same way (negate the dissimilarities)"
        )
    labels = np.arange(len(S)) if groups is None else np.asarray(groups)
    if labels.shape != (len(S),):
        raise ValueError(f"groups must have one label per subject matrix ({len(S)}), got shape {labels.shape}")
    distinct = np.unique(labels)
    if len(distinct) < 2:
        raise ValueError("a noise ceiling needs at least 2 subjects (groups)")
    iu = np.triu_indices(S.shape[1], 1)
    U = S[:, iu[0], iu[1]]
    V = _standardized_subjects(U, comparison) if pooling == "nili" else U
    everyone = _pool(V)
    lower, upper = np.full(len(U), np.nan), np.full(len(U), np.nan)  # per matrix, its group left out of its pool
    for g in distinct:
        members = labels == g
        others = _pool(V[~members])
        for s in np.flatnonzero(members):
            lower[s] = _paired_correlation(others, U[s], comparison)
            upper[s] = _paired_correlation(everyone, U[s], comparison)
    if np.isnan(lower).all() or np.isnan(upper).all():
        raise ValueError("no subject shares 3 or more judged pairs with the others: no noise ceiling")
    left_out = np.flatnonzero(np.isnan(lower) | np.isnan(upper))
    if len(left_out):
        warnings.warn(
            f"{len(left_out)} subject(s) (indices {left_out[:10].tolist()}) have fewer than 3 judged pairs in common "
            "with the pooled matrix, or constant judgments: left out of the noise ceiling",
            UserWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group whose every matrix is left out: NaN, skipped
        low = [np.nanmean(lower[labels == g]) for g in distinct]
        high = [np.nanmean(upper[labels == g]) for g in distinct]
    return float(np.nanmean(low)), float(np.nanmean(high))


@validate_params(
    {"half1": ["array-like"], "half2": ["array-like"], "comparison": [StrOptions(set(COMPARISONS))],
     "y_kind": [StrOptions(set(Y_KINDS))]},
    prefer_skip_nested_validation=True,
)
def split_half_ceiling(half1, half2, comparison: str = "spearman", *, y_kind: str = "similarity") -> float:
    """Split-half reliability of a similarity matrix, Spearman-Brown corrected.

    Parameters
    ----------
    half1, half2 : array-like of shape (n, n)
        The matrix from two disjoint halves of the raters; both through the
        input contract, as ``y_kind`` says.
    comparison : str, default="spearman"
    y_kind : {"similarity", "dissimilarity"}, default="similarity"

    Returns
    -------
    ceiling : float
        ``2 r / (1 + r)`` with ``r`` the correlation of the two halves.
    """
    A = _check_square(half1, "half1")
    B = _check_square(half2, "half2")
    if A.shape != B.shape:
        raise ValueError(f"shapes differ: half1 {A.shape} vs half2 {B.shape}")
    A, B = _human(A, len(A), y_kind, "half1"), _human(B, len(B), y_kind, "half2")
    both = ~np.isnan(A) & ~np.isnan(B)
    r = correlation(upper_triangle(np.where(both, A, 0.0)), upper_triangle(np.where(both, B, np.nan)), comparison)
    return float(2 * r / (1 + r)) if r > -1 else -1.0


def triplet_score(embeddings, triplets, similarity: str = "pearson", comparison: str = "odd_one_out",
                  temperature: float = 1.0) -> float:
    """Odd-one-out accuracy (or log-likelihood) of embeddings on human triplets.

    Parameters
    ----------
    embeddings : array-like of shape (n_images, n_features)
    triplets : Triplets, TripletSet or array-like of shape (N, 3)
        Image indices, odd one out last for a plain array.
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : {"odd_one_out", "triplet_log_likelihood"}, default="odd_one_out"
        Accuracy (the model's odd one out is the image outside its most
        similar pair; ties count as wrong), or the mean log probability of
        the human pair under a softmax over the three similarities / ``temperature``.
    temperature : float > 0, default=1.0

    Returns
    -------
    score : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import triplet_score
    >>> E = np.array([[1., 0., 0.], [.9, .1, 0.], [0., 1., 0.], [0., 0., 1.]])
    >>> triplet_score(E, [[0, 1, 2], [0, 2, 1]], similarity="cosine")
    0.5
    """
    from ._similarity import triplet_scores

    if comparison not in TRIPLET_COMPARISONS:
        raise ValueError(f"comparison must be one of {TRIPLET_COMPARISONS}, got {comparison!r}")
    S = similarity_matrix(embeddings, similarity)
    a, b, o = check_triplet_target(triplets, len(S)).indices.T
    s = np.stack([S[a, b], S[a, o], S[b, o]], axis=1)[None]
    return float(triplet_scores(s, comparison, temperature)[0])


def normalize_to_ceiling(score, ceiling=THINGS_CEILING, chance=None):
    """A score as a fraction of the noise ceiling (Brain-Score's THINGS benchmark: accuracy / 0.6767).

    Parameters
    ----------
    score : float or array-like
    ceiling : float, default=0.6767
        E.g. :func:`triplet_noise_ceiling` of the data, or THINGS' published value.
    chance : float, optional
        With ``chance`` (1/3 for odd-one-out accuracy): ``(score - chance) / (ceiling - chance)``,
        so 0 is chance and 1 the ceiling.

    Returns
    -------
    normalized : float or ndarray

    Examples
    --------
    >>> from sklearn_ais.metrics import normalize_to_ceiling
    >>> round(normalize_to_ceiling(0.55), 4), round(normalize_to_ceiling(0.55, chance=1 / 3), 4)
    (0.8128, 0.631)
    """
    score = np.asarray(score, dtype=np.float64)
    lo = 0.0 if chance is None else float(chance)
    if not ceiling > lo:
        raise ValueError(f"ceiling ({ceiling}) must exceed {'chance' if chance is not None else 0} ({lo})")
    out = (score - lo) / (float(ceiling) - lo)
    return float(out) if out.ndim == 0 else out
