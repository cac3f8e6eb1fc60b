"""Validation of human similarity targets (the ``y`` of every estimator).

``y`` is an n x n matrix of human similarities between the n images of
``X`` (NaN = pair not judged). scikit-learn's splitters slice ``y`` by rows
only, so inside ``cross_validate`` an estimator receives an (n_train, n)
block. A *labelled* ``y`` (a DataFrame with the same image ids on both axes,
see :func:`similarity_frame`) carries what is needed to realign the columns;
an unlabelled non-square ``y`` gets an error that says so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def similarity_frame(similarity, ids=None) -> pd.DataFrame:
    """Label a square similarity matrix with image ids on both axes.

    scikit-learn's cross-validation slices ``y`` by rows only; the labels let
    the estimators pick the matching columns again, so a similarity matrix
    can flow through ``cross_validate`` and ``GridSearchCV`` unchanged.

    Parameters
    ----------
    similarity : array-like of shape (n_images, n_images)
    ids : array-like of shape (n_images,), optional
        Unique image identifiers; default ``0 .. n_images - 1``.

    Returns
    -------
    frame : pandas.DataFrame

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import similarity_frame
    >>> y = similarity_frame(np.eye(4))
    >>> y.iloc[[0, 2]].shape  # what a splitter hands to fit
    (2, 4)
    """
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {S.shape}")
    ids = np.arange(S.shape[0]) if ids is None else np.asarray(ids)
    if len(ids) != S.shape[0]:
        raise ValueError(f"ids must have {S.shape[0]} entries, got {len(ids)}")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("ids must be unique")
    return pd.DataFrame(S, index=ids, columns=ids)


_SLICED_HINT = (
    "y has shape {shape} but X has {n} images: y must be the square n x n similarity matrix of the images in X. "
    "If this happened inside cross_validate/GridSearchCV, scikit-learn sliced the rows of y only; pass "
    "y=sklearn_ais.model_selection.similarity_frame(y) so the columns can be realigned by image id."
)


def check_symmetric(M: np.ndarray, name: str, tol: float = 1e-8) -> None:
    """Off-diagonal symmetry of a float matrix (NaN = missing), up to ``tol`` of its largest magnitude."""
    off = ~np.eye(len(M), dtype=bool)
    nan = np.isnan(M) & off
    if (nan != nan.T).any():
        raise ValueError(f"{name} is asymmetric in its missing pairs: {name}[i, j] is NaN where {name}[j, i] is not")
    ok = off & ~nan
    scale = np.abs(M[ok]).max() if ok.any() else 0.0
    diff = np.abs(M - M.T)[ok].max() if ok.any() else 0.0
    if diff > tol * max(scale, 1.0):
        raise ValueError(
            f"{name} is not symmetric (max |{name} - {name}.T| = {diff:.3g}). Similarity judgments are compared "
            f"on the upper triangle; if the asymmetry is real noise between two presentations, pass "
            f"({name} + {name}.T) / 2."
        )


def check_similarity_target(y, n_samples: int, y_kind: str = "similarity", *, tol: float = 1e-8) -> np.ndarray:
    """Return ``y`` as a validated (n, n) float64 *similarity* matrix (NaN = missing).

    Accepts a square array, a labelled DataFrame (possibly row-sliced), or a
    1-D array of class labels (same label = similarity 1, else 0).
    Dissimilarities (``y_kind="dissimilarity"``) are negated: every
    comparison used downstream is invariant to that sign flip and shift.
    """
    if y is None:
        raise ValueError(
            "this estimator requires y to be passed, but the target y is None: pass the n x n human "
            "similarity matrix of the images in X"
        )
    if isinstance(y, pd.DataFrame):
        y = _realign_frame(y, n_samples)
    else:
        y = np.asarray(y)
    if y.dtype.kind == "c":
        raise TypeError(f"y must be real-valued similarities, got complex dtype {y.dtype}")
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        if y.ndim == 1:
            return _labels_to_similarity(y, n_samples)
        raise TypeError(f"y must be numeric, got dtype {y.dtype}")
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and y.shape[0] != 1):
        return _labels_to_similarity(y.ravel(), n_samples)
    if y.ndim != 2:
        raise ValueError(f"y must be an n x n similarity matrix, got an array with shape {y.shape}")
    if y.shape[0] != y.shape[1]:
        if y.shape[0] == n_samples and y.shape[1] > n_samples:
            raise ValueError(_SLICED_HINT.format(shape=y.shape, n=n_samples))
        raise ValueError(f"y must be square (n x n similarity matrix), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"y is {y.shape[0]} x {y.shape[1]} but X has {n_samples} images; they must match")
    H = y.astype(np.float64, copy=True)
    if np.isinf(H).any():
        raise ValueError("y contains +/-inf; use NaN to mark a missing pair")
    np.fill_diagonal(H, np.nan)  # self-similarity never enters a comparison
    check_symmetric(H, "y", tol)
    if y_kind == "dissimilarity":
        H = -H
    elif y_kind != "similarity":
        raise ValueError(f"y_kind must be 'similarity' or 'dissimilarity', got {y_kind!r}")
    iu = np.triu_indices(n_samples, 1)
    obs = H[iu][~np.isnan(H[iu])]
    if obs.size < 3:
        raise ValueError(f"y has {obs.size} observed pairs; at least 3 are needed to compute a correlation")
    if np.ptp(obs) == 0:
        raise ValueError("y is constant over its observed pairs: there is no similarity structure to align with")
    empty = np.nonzero(np.isnan(H).all(axis=1))[0]
    if len(empty):
        warnings.warn(
            f"{len(empty)} image(s) have no observed pair in y (rows {empty[:10].tolist()}"
            f"{'...' if len(empty) > 10 else ''}); they do not contribute to the scores",
            UserWarning,
            stacklevel=3,
        )
    return H


def _realign_frame(y: pd.DataFrame, n_samples: int) -> np.ndarray:
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} rows but X has {n_samples} images")
    if y.index.has_duplicates:
        raise ValueError("y's index (image ids) has duplicates")
    missing = y.index.difference(y.columns)
    if len(missing):
        raise ValueError(
            f"y's rows and columns must carry the same image ids; {len(missing)} row id(s) such as "
            f"{list(missing[:3])} are not among the columns"
        )
    return y.loc[:, y.index].to_numpy()


def _labels_to_similarity(labels, n_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if len(labels) != n_samples:
        raise ValueError(f"y has {len(labels)} labels but X has {n_samples} images")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("y (class labels) contains NaN")
    H = (labels[:, None] == labels[None, :]).astype(np.float64)
    np.fill_diagonal(H, np.nan)
    iu = np.triu_indices(n_samples, 1)
    if np.ptp(H[iu]) == 0:
        raise ValueError(
            "y read as class labels gives no similarity structure (all labels equal or all distinct); "
            "pass an n x n similarity matrix"
        )
    return H
