"""Pairs of images: the entries of a similarity matrix's strict upper triangle.

Splitters over matrix entries (:mod:`sklearn_ais.model_selection`) and the
estimators' entry-wise inner cross-validation index pairs in the order of
:func:`pair_indices`.
"""

from __future__ import annotations

import numpy as np


def pair_indices(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every upper-triangle pair, in the order splitters index them.

    Parameters
    ----------
    n_images : int

    Returns
    -------
    rows, cols : ndarray of shape (n_images * (n_images - 1) // 2,)
        ``rows[p] < cols[p]``, row-major.

    Examples
    --------
    >>> from sklearn_ais.model_selection import pair_indices
    >>> pair_indices(3)
    (array([0, 0, 1]), array([1, 2, 2]))
    """
    return np.triu_indices(n_images, k=1)


def mask_pairs(similarity, pairs) -> np.ndarray:
    """A copy of ``similarity`` in which only ``pairs`` (upper-triangle indices) are observed.

    Every other off-diagonal entry becomes NaN, on both sides of the diagonal.

    Parameters
    ----------
    similarity : array-like of shape (n, n)
    pairs : array-like of int, or boolean mask of shape (n * (n - 1) // 2,)
        Pairs to keep, as indices into :func:`pair_indices` order (or a mask
        in that order).

    Returns
    -------
    masked : ndarray of shape (n, n), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import mask_pairs
    >>> mask_pairs(np.ones((3, 3)), [0])  # keep pair (0, 1)
    array([[ 1.,  1., nan],
           [ 1.,  1., nan],
           [nan, nan,  1.]])
    """
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {S.shape}")
    n = S.shape[0]
    i, j = pair_indices(n)
    pairs = np.asarray(pairs)
    if pairs.dtype == bool:
        if pairs.shape != (len(i),):
            raise ValueError(f"pairs as a boolean mask must have shape ({len(i)},), got {pairs.shape}")
        pairs = np.flatnonzero(pairs)
    if pairs.size and (pairs.dtype.kind not in "iu" or pairs.min() < 0 or pairs.max() >= len(i)):
        raise ValueError(
            f"pairs must be integer indices of upper-triangle pairs in [0, {len(i)}) (see pair_indices({n}))"
        )
    keep = np.zeros(len(i), dtype=bool)
    keep[pairs.astype(np.int64)] = True
    out = np.full_like(S, np.nan)
    out[i[keep], j[keep]] = S[i[keep], j[keep]]
    out[j[keep], i[keep]] = S[j[keep], i[keep]]
    np.fill_diagonal(out, np.diag(S))
    return out


def observed_pairs(similarity) -> np.ndarray:
    """Indices (in :func:`pair_indices` order) of the pairs a square matrix observes (not NaN).

    Parameters
    ----------
    similarity : array-like of shape (n, n)

    Returns
    -------
    pairs : ndarray of int
    """
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"y must be the square n x n similarity matrix of the images in X, got shape {S.shape}")
    i, j = pair_indices(S.shape[0])
    return np.flatnonzero(~np.isnan(S[i, j]))


def fold_parts(data, H, train, test, *, by_pairs: bool, take=None) -> tuple:
    """The training and held-out parts of one fold: ``(data_train, data_test, H_train, H_test)``.

    Parameters
    ----------
    data : object
        What is fitted on: maps, embeddings or prepared kernels.
    H : ndarray of shape (n_images, n_images)
    train, test : ndarray of int
        Image indices, or pair indices (:func:`pair_indices` order) when ``by_pairs``.
    by_pairs : bool
        Entry-wise folds keep every image and hide the other part's pairs
        (NaN, :func:`mask_pairs`); image-wise folds take the rows of the data
        and the square blocks of ``H``.
    take : callable, default=None
        ``take(data, idx)`` selects images; default ``data[idx]``.

    Returns
    -------
    data_train, data_test, H_train, H_test : tuple
    """
    if hasattr(H, "take") and hasattr(H, "select"):  # odd-one-out triplets (_triplets.TripletSet)
        from ._triplets import triplet_fold_parts

        return triplet_fold_parts(data, H, train, test, by_triplets=by_pairs, take=take)
    if by_pairs:
        return data, data, mask_pairs(H, train), mask_pairs(H, test)
    take = take or (lambda d, idx: d[idx])
    return take(data, train), take(data, test), H[np.ix_(train, train)], H[np.ix_(test, test)]


# A held-out fold with fewer observed pairs than this gets a warning: its 2OI is a correlation of so few numbers.
MIN_TEST_PAIRS = 30


class SmallFoldWarning(UserWarning):
    """A held-out fold holds so few observed pairs that its 2OI is very noisy."""


def warn_small_test_folds(splits, H, *, by_pairs: bool, stacklevel: int = 4) -> str | None:
    """Warn once when some held-out fold has fewer than :data:`MIN_TEST_PAIRS` observed human pairs.

    Parameters
    ----------
    splits : sequence of (train, test)
        Image indices, or pair indices when ``by_pairs``.
    H : ndarray of shape (n_images, n_images)
        NaN = a pair nobody judged (not counted).
    by_pairs : bool
    stacklevel : int, default=4
        Of the warning (4: the caller of a public function that called this
        through one helper).

    Returns
    -------
    message : str or None
        The warning's text (also issued as a :class:`SmallFoldWarning`), or
        None when every held-out fold is large enough.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from sklearn.model_selection import KFold
    >>> H = np.ones((20, 20))
    >>> splits = list(KFold(5).split(np.zeros((20, 1))))
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter("always")
    ...     print(warn_small_test_folds(splits, H, by_pairs=False)[:62])
    5 of 5 held-out folds have fewer than 30 observed human pairs
    """
    import warnings

    if not isinstance(H, np.ndarray):  # odd-one-out triplets: a fold's size is its triplets, not its pairs
        return None
    if by_pairs:
        counts = [len(test) for _, test in splits]
    else:
        counts = []
        for _, test in splits:
            test = np.asarray(test)
            iu = np.triu_indices(len(test), 1)
            counts.append(int((~np.isnan(H[np.ix_(test, test)][iu])).sum()))
    small = [c for c in counts if c < MIN_TEST_PAIRS]
    if not small:
        return None
    m = min(small)
    sem = 1 / np.sqrt(max(m - 3, 1))
    unit = "pairs" if by_pairs else "images"
    example = "" if by_pairs else f", among {min(len(te) for _, te in splits)} test images"
    message = (
        f"{len(small)} of {len(counts)} held-out folds have fewer than {MIN_TEST_PAIRS} observed human pairs "
        f"(smallest: {m}{example}): a fold's held-out 2OI is a correlation over so few numbers that it is very noisy "
        f"(standard error about 1/sqrt({m} - 3) = {sem:.2f}), and so are the per-fold table and the tests over folds. "
        f"Use fewer folds (more held-out {unit} per fold: e.g. cv=2 or 3), entry-wise cross-validation "
        "(RepeatedPairKFold: held-out pairs of all images), or more repeats (RepeatedKFold) and report the mean"
    )
    warnings.warn(message, SmallFoldWarning, stacklevel=stacklevel)
    return message


def held_out_is_undefined(H, test, *, by_pairs: bool) -> bool:
    """Whether a fold's held-out human pairs are constant (or fewer than 3): its held-out score is undefined.

    Parameters
    ----------
    H : ndarray of shape (n_images, n_images)
        Validated similarities (NaN = missing).
    test : ndarray of int
        Image indices, or pair indices when ``by_pairs``.
    by_pairs : bool

    Returns
    -------
    undefined : bool
    """
    from ._targets import target_is_constant

    if by_pairs:
        i, j = pair_indices(len(H))
        values = H[i[test], j[test]]
    else:
        values = H[np.ix_(test, test)][np.triu_indices(len(test), 1)]
    values = values[~np.isnan(values)]
    return values.size < 3 or target_is_constant(values)
