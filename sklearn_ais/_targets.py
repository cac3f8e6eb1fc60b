"""Validation of human similarity targets (the ``y`` of every estimator).

``y`` is an n x n matrix of human similarities between the n images of
``X`` (NaN = pair not judged). This module is the one place where a ``y``
is read, and it honours or refuses everything that carries meaning:

* **labels.** A :class:`pandas.DataFrame` carries image ids on both axes. When
  ``X`` carries ids too (:attr:`FeatureMaps.ids <sklearn_ais.FeatureMaps>`,
  or the index of a DataFrame ``X``), ``y`` is aligned to ``X`` by label:
  ``y.loc[ids, ids]``, an error naming any id that ``y`` lacks or repeats.
  Never by position. Without ids on ``X`` the rows of ``y`` give the image
  order and its columns are realigned to them (scikit-learn's splitters
  slice the rows of ``y`` only; see :func:`similarity_frame`).
* **the diagonal convention.** A matrix whose diagonal holds the minimum of
  every row is a dissimilarity matrix (an RDM: self-distance 0); one whose
  diagonal holds the maximum of every row is a similarity matrix. When the
  diagonal contradicts ``y_kind`` the call fails with a message naming
  ``y_kind="dissimilarity"`` (or ``"similarity"``). A NaN diagonal (or one
  that is neither) carries no convention and is accepted as ``y_kind`` says.
* **missing pairs.** NaN, the mask of a NumPy masked array, and ``pd.NA`` of
  pandas' nullable dtypes all mean "pair not judged".
* **what is refused.** Sparse matrices (an implicit zero could mean
  similarity 0 or "not judged"), complex or non-numeric values, infinities,
  asymmetric values or missing pairs (the tolerance is relative to the
  matrix's own scale), fewer than 3 observed pairs, a constant matrix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

# Relative tolerance of the symmetry check: |y - y.T| <= _SYMMETRY_TOL * max|y|.
_SYMMETRY_TOL = 1e-8
# The diagonal is "at" a row's extreme when within this fraction of the matrix's scale.
_DIAGONAL_TOL = 1e-12

Y_KINDS = ("similarity", "dissimilarity")
# Human values are constant when every centred value is round-off of their magnitude (see target_is_constant).
_CONSTANT_ROUNDOFF = 64 * np.finfo(np.float64).eps


def target_is_constant(values) -> bool:
    """Whether observed human values carry no spread: the one "constant" rule of the human side.

    Centred first (so an offset of 1e6 changes nothing) and decided relative
    to the values' own magnitude: constant when every ``|v - mean|`` is at most
    64 float64 round-off units of ``max |v|``. Anything above gives
    :func:`scipy.stats.pearsonr` a well-defined r, and the package that r.

    Parameters
    ----------
    values : array-like of float
        Observed values (NaN are ignored).

    Returns
    -------
    constant : bool
        Also True with fewer than 2 observed values.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais._targets import target_is_constant
    >>> v = np.array([0.1, 0.5, 0.3])
    >>> target_is_constant(v + 1e6), target_is_constant(np.full(3, 0.1) + 1e6)
    (False, True)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size < 2 or np.ptp(v) == 0:
        return True
    x = np.ldexp(v, -np.frexp(np.abs(v).max())[1])  # an exact power-of-two rescaling: no digit lost
    x = x - x.mean()
    x = x - x.mean()  # second pass: the residual mean of the first
    return bool(np.abs(x).max() <= _CONSTANT_ROUNDOFF)  # |x| <= 1: round-off of the magnitude


class SimilarityTargetMixin:
    """Tags of every estimator fitted on a human similarity matrix: ``y`` is required and is an n x n matrix.

    Placed before scikit-learn's mixins and ``BaseEstimator`` in the bases, so
    that their tags are extended, not replaced.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.single_output = False  # one matrix, not one output per image
        return tags


def similarity_frame(similarity, ids=None) -> pd.DataFrame:
    """Label a square similarity matrix with image ids on both axes.

    scikit-learn's cross-validation slices ``y`` by rows only; the labels let
    the estimators pick the matching columns again, so a similarity matrix
    can flow through ``cross_validate`` and ``GridSearchCV`` unchanged. When
    ``X`` carries image ids (e.g. :class:`~sklearn_ais.FeatureMaps` of files),
    label ``y`` with the same ids: ``y`` is then aligned to ``X`` by label.

    Parameters
    ----------
    similarity : array-like of shape (n_images, n_images)
        The matrix (similarities or dissimilarities).
    ids : array-like of shape (n_images,), optional
        Unique image identifiers, in the order of the matrix's rows; default
        ``0 .. n_images - 1``.

    Returns
    -------
    frame : pandas.DataFrame
        ``similarity`` with ``ids`` as index and columns.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import similarity_frame
    >>> y = similarity_frame(np.eye(4))
    >>> y.iloc[[0, 2]].shape  # what a splitter hands to fit
    (2, 4)
    """
    S = as_float_matrix(similarity, "similarity")
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {S.shape}")
    ids = np.arange(S.shape[0]) if ids is None else np.asarray(ids)
    if ids.ndim != 1 or len(ids) != S.shape[0]:
        raise ValueError(f"ids must be a 1-D array of {S.shape[0]} entries, got shape {ids.shape}")
    _check_unique(pd.Index(ids), "ids")
    return pd.DataFrame(S, index=ids, columns=ids)


def as_float_matrix(M, name: str) -> np.ndarray:
    """A float64 copy of a numeric array-like in which every missing value is NaN.

    Honoured: NumPy masked arrays (masked = NaN), pandas' nullable dtypes
    (``pd.NA`` = NaN), booleans and integers. Refused with a ``TypeError``
    naming ``name``: sparse matrices, complex and non-numeric values.

    Parameters
    ----------
    M : array-like, DataFrame, Series or masked array
    name : str
        Name used in error messages.

    Returns
    -------
    values : ndarray, float64
    """
    from scipy import sparse

    if sparse.issparse(M):
        raise TypeError(
            f"{name} is a sparse matrix: an implicit zero could mean similarity 0 or 'not judged'. Convert it "
            f"with {name}.toarray() and mark pairs nobody judged with NaN"
        )
    if isinstance(M, (pd.DataFrame, pd.Series)):
        dtypes = M.dtypes.items() if isinstance(M, pd.DataFrame) else [(M.name, M.dtype)]
        bad = [(c, t) for c, t in dtypes if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))]
        if bad:
            raise TypeError(
                f"{name} must be numeric; {len(bad)} column(s) are not, e.g. {bad[0][0]!r} of dtype {bad[0][1]}"
            )
        return np.array(M.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)  # writable (copy-on-write)
    if np.ma.isMaskedArray(M):
        data = np.ma.getdata(M)
        _check_numeric_dtype(np.asarray(data).dtype, name)
        return np.ma.filled(np.ma.asarray(M, dtype=np.float64), np.nan)
    arr = np.asarray(M)
    _check_numeric_dtype(arr.dtype, name)
    return arr.astype(np.float64, copy=True)


def _check_numeric_dtype(dtype, name):
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {dtype}")
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {dtype}")


def check_symmetric(M: np.ndarray, name: str, tol: float = _SYMMETRY_TOL) -> None:
    """Off-diagonal symmetry of a float matrix (NaN = missing), relative to the matrix's own scale.

    Parameters
    ----------
    M : ndarray of shape (n, n)
        Float matrix; NaN marks a missing entry.
    name : str
        Name used in the error message.
    tol : float, default=1e-8
        Largest accepted ``|M - M.T|`` as a fraction of ``max |M|`` over the
        observed off-diagonal entries (so a matrix in units of 1e-6 is held
        to the same standard as one in units of 1).

    Raises
    ------
    ValueError
        +/-inf anywhere (checked first: ``inf - inf`` has no meaning),
        missing entries that are not mirrored, or values that differ by more
        than the tolerance.
    """
    if np.isinf(M).any():
        raise ValueError(f"{name} contains +/-inf; use NaN to mark a missing entry")
    off = ~np.eye(len(M), dtype=bool)
    nan = np.isnan(M) & off
    if (nan != nan.T).any():
        i, j = np.argwhere(nan != nan.T)[0]
        raise ValueError(
            f"{name} is asymmetric in its missing pairs: {name}[{i}, {j}] is "
            f"{'NaN' if nan[i, j] else 'observed'} but {name}[{j}, {i}] is {'NaN' if nan[j, i] else 'observed'}"
        )
    ok = off & ~nan
    if not ok.any():
        return
    scale = float(np.abs(M[ok]).max())
    diff = np.abs(M - M.T)[ok]
    if diff.max() > tol * scale:
        i, j = np.argwhere(ok)[int(np.argmax(diff))]
        raise ValueError(
            f"{name} is not symmetric: {name}[{i}, {j}] = {M[i, j]:.6g} but {name}[{j}, {i}] = {M[j, i]:.6g} "
            f"(max |{name} - {name}.T| = {diff.max():.3g}, {diff.max() / scale:.2g} of its largest value). "
            f"Similarity judgments are compared on the upper triangle; if the asymmetry is real noise between "
            f"two presentations, pass ({name} + {name}.T) / 2."
        )


def diagonal_convention(M: np.ndarray) -> str | None:
    """What the diagonal of a square matrix says it holds.

    Parameters
    ----------
    M : ndarray of shape (n, n)
        Float matrix (NaN = missing).

    Returns
    -------
    kind : {"similarity", "dissimilarity"} or None
        ``"dissimilarity"`` when the diagonal is exactly zero (the signature
        of a distance, also of unbiased estimates such as crossnobis whose
        off-diagonal entries may be negative) or holds the minimum of every
        row (self-distance), ``"similarity"`` when it holds the maximum of
        every row (self-similarity), ``None`` when it says neither: a NaN
        diagonal, a diagonal inside the rows' ranges, or rows whose observed
        values are all equal to it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import diagonal_convention
    >>> D = np.array([[0., 2., 3.], [2., 0., 1.], [3., 1., 0.]])
    >>> inside = D + np.diag([1.5, 1.5, 1.5])
    >>> diagonal_convention(D), diagonal_convention(5 - D), diagonal_convention(inside)
    ('dissimilarity', 'similarity', None)
    >>> crossnobis = np.array([[0., -.2, 1.], [-.2, 0., .5], [1., .5, 0.]])  # unbiased: may be negative
    >>> diagonal_convention(crossnobis)
    'dissimilarity'
    """
    M = np.asarray(M, dtype=np.float64)
    n = len(M)
    if n < 2:
        return None
    diag = np.diag(M).copy()
    off = M.copy()
    np.fill_diagonal(off, np.nan)
    if (diag == 0).all() and (np.nan_to_num(off) != 0).any():
        return "dissimilarity"  # an exactly zero diagonal: self-distances, whatever the sign of the rest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        lo, hi = np.nanmin(off, axis=1), np.nanmax(off, axis=1)
    rows = np.isfinite(diag) & np.isfinite(lo)
    if not rows.any():
        return None
    finite = np.abs(M[np.isfinite(M)])
    tol = _DIAGONAL_TOL * (finite.max() if finite.size else 0.0)
    at_min = diag[rows] <= lo[rows] + tol
    at_max = diag[rows] >= hi[rows] - tol
    informative = ~(at_min & at_max)  # a row equal to the diagonal everywhere says nothing
    if not informative.any():
        return None
    if at_min[informative].all():
        return "dissimilarity"
    if at_max[informative].all():
        return "similarity"
    return None


def _kind_mismatch_message(detected: str, y_kind: str) -> str:
    if detected == "dissimilarity":
        return (
            "y looks like a dissimilarity matrix (an RDM): its diagonal is exactly zero or holds the smallest value "
            'of every row, as self-distances do, but y_kind="similarity". Pass y_kind="dissimilarity" (command line: --kind '
            "dissimilarity). If it really holds similarities, set its diagonal to NaN (self-pairs are never "
            "compared)."
        )
    return (
        "y looks like a similarity matrix: its diagonal holds the largest value of every row, as "
        'self-similarities do, but y_kind="dissimilarity". Pass y_kind="similarity" (command line: --kind '
        "similarity). If it really holds dissimilarities, set its diagonal to NaN (self-pairs are never compared)."
    )


def samples_and_ids(X, ids=None):
    """The number of samples of ``X`` (the samples themselves, or their count) and their ids (``ids`` if given)."""
    if isinstance(X, (int, np.integer)):
        return int(X), ids
    return len(X), sample_ids(X) if ids is None else ids


def sample_ids(X):
    """Image ids carried by ``X``: ``FeatureMaps.ids``, the index of a DataFrame, else None.

    Parameters
    ----------
    X : FeatureMaps, DataFrame or array-like

    Returns
    -------
    ids : ndarray or None
    """
    if isinstance(X, pd.DataFrame):
        return X.index.to_numpy()
    ids = getattr(X, "ids", None)
    if ids is not None and hasattr(X, "head") and hasattr(X, "maps"):  # FeatureMaps (no import cycle)
        return np.asarray(ids)
    return None


def check_similarity_target(y, X, y_kind: str = "similarity", *, ids=None, tol: float = _SYMMETRY_TOL,
                            constant: str = "raise") -> np.ndarray:
    """Return ``y`` as a validated (n, n) float64 *similarity* matrix (NaN = missing, NaN diagonal).

    Parameters
    ----------
    y : array-like, DataFrame or 1-D labels
        A square matrix; a labelled DataFrame (possibly row-sliced by a
        scikit-learn splitter); a masked array; or 1-D class labels (same
        label = similarity 1, else 0).
    X : int, FeatureMaps or array-like
        The images ``y`` describes: their number, or ``X`` itself, whose ids
        (see :func:`sample_ids`) are used to align a labelled ``y``.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``y`` holds. Dissimilarities are negated: every comparison used
        downstream is invariant to that sign flip and shift. A diagonal that
        contradicts ``y_kind`` is an error (see :func:`diagonal_convention`).
    ids : array-like, optional
        Image ids of ``X``, overriding those ``X`` carries.
    tol : float, default=1e-8
        Relative tolerance of the symmetry check.
    constant : {"raise", "warn"}, default="raise"
        A ``y`` that is constant over its observed pairs (see
        :func:`target_is_constant`): an error (``fit``: nothing to align
        with), or a warning (``score``: the score is undefined, NaN).

    Returns
    -------
    H : ndarray of shape (n, n)
        Similarities, NaN where a pair was not judged and on the diagonal.
    """
    if y_kind not in Y_KINDS:
        raise ValueError(f"y_kind must be 'similarity' or 'dissimilarity', got {y_kind!r}")
    n_samples, ids = samples_and_ids(X, ids)
    if y is None:
        raise ValueError(
            "this estimator requires y to be passed, but the target y is None: pass the n x n human "
            "similarity matrix of the images in X"
        )
    if isinstance(y, pd.DataFrame):
        y = _frame_values(y, n_samples, ids)
    elif isinstance(y, pd.Series):
        y = _series_values(y, n_samples, ids)
    y = as_float_matrix(y, "y") if not _is_label_vector(y) else np.asarray(y)
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and y.shape[0] != 1):
        return _labels_to_similarity(y.ravel(), n_samples)
    if y.ndim != 2:
        raise ValueError(f"y must be an n x n similarity matrix, got an array with shape {y.shape}")
    if y.shape[0] != y.shape[1]:
        if y.shape[0] == n_samples and y.shape[1] > n_samples:
            raise ValueError(_SLICED_HINT.format(shape=y.shape, n=n_samples))
        if y.shape[0] == 1 and y.shape[1] > 3 and _is_condensed(y.shape[1]):
            raise ValueError(_CONDENSED_HINT.format(m=y.shape[1]))
        raise ValueError(f"y must be square (n x n similarity matrix), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"y is {y.shape[0]} x {y.shape[1]} but X has {n_samples} images; they must match")
    H = y
    if np.isinf(H).any():
        raise ValueError("y contains +/-inf; use NaN to mark a missing pair")
    _check_triangle_only(H)
    detected = diagonal_convention(H)
    if detected is not None and detected != y_kind:
        raise ValueError(_kind_mismatch_message(detected, y_kind))
    np.fill_diagonal(H, np.nan)  # self-similarity never enters a comparison
    check_symmetric(H, "y", tol)
    if y_kind == "dissimilarity":
        H = -H
    _check_observed(H, n_samples, constant)
    return H


_SLICED_HINT = (
    "y has shape {shape} but X has {n} images: y must be the square n x n similarity matrix of the images in X. "
    "If this happened inside cross_validate/GridSearchCV, scikit-learn sliced the rows of y only; pass "
    "y=sklearn_ais.model_selection.similarity_frame(y) so the columns can be realigned by image id."
)
_CONDENSED_HINT = (
    "y has shape (1, {m}): it looks like a condensed distance vector (scipy's pdist); pass the square "
    "matrix, scipy.spatial.distance.squareform(y.ravel()), with y_kind='dissimilarity'"
)


def _is_condensed(m: int) -> bool:
    n = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    return n * (n - 1) // 2 == m


def _is_label_vector(y) -> bool:
    """1-D (or (n, 1)) non-numeric arrays are class labels, not a matrix."""
    arr = np.asarray(y) if not np.ma.isMaskedArray(y) else y
    return getattr(arr, "ndim", 0) in (1, 2) and (arr.ndim == 1 or arr.shape[1] == 1) and arr.dtype.kind in "OUS"


def _check_triangle_only(H):
    """Refuse a matrix that holds one triangle only (the other all NaN, or all 0) with a message that says so."""
    n = len(H)
    if n < 3:
        return
    iu = np.triu_indices(n, 1)
    upper, lower = H[iu], H.T[iu]  # the lower triangle, mirrored into upper order
    for filled, empty in (("NaN", np.isnan), ("0", lambda v: v == 0)):
        upper_empty, lower_empty = bool(empty(upper).all()), bool(empty(lower).all())
        if upper_empty != lower_empty:
            side = "lower" if upper_empty else "upper"
            raise ValueError(
                f"y holds only its {side} triangle (the other triangle is all {filled}): pass the full symmetric "
                "matrix, e.g. np.where(np.isnan(y), y.T, y) for a NaN-filled triangle or y + y.T for a zero-filled one"
            )


def _check_observed(H, n_samples, constant="raise"):
    iu = np.triu_indices(n_samples, 1)
    obs = H[iu][~np.isnan(H[iu])]
    if obs.size < 3:
        raise ValueError(f"y has {obs.size} observed pairs; at least 3 are needed to compute a correlation")
    if target_is_constant(obs):
        if constant != "warn":
            raise ValueError("y is constant over its observed pairs: there is no similarity structure to align with")
        warnings.warn("y is constant over its observed pairs: the score is undefined (NaN)", UserWarning, stacklevel=4)
    empty = np.nonzero(np.isnan(H).all(axis=1))[0]
    if len(empty):
        warnings.warn(
            f"{len(empty)} image(s) have no observed pair in y (rows {empty[:10].tolist()}"
            f"{'...' if len(empty) > 10 else ''}); they do not contribute to the scores",
            UserWarning,
            stacklevel=3,
        )


def _check_unique(index: pd.Index, what: str):
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()[:3].tolist()
        raise ValueError(f"{what} has duplicate labels (e.g. {dup}); every image needs one id")


def _frame_values(y: pd.DataFrame, n_samples: int, ids) -> np.ndarray:
    """The values of a labelled ``y``, aligned to ``ids`` by label (or to its own rows without ids)."""
    _check_unique(y.index, "y's index (image ids)")
    _check_unique(y.columns, "y's columns (image ids)")
    if ids is not None:
        ids = pd.Index(np.asarray(ids))
        _check_unique(ids, "X's image ids")
        if len(ids) != n_samples:
            raise ValueError(f"X has {n_samples} images but {len(ids)} ids")
        for axis, labels in (("index (rows)", y.index), ("columns", y.columns)):
            missing = ids.difference(labels, sort=False)
            if len(missing):
                raise ValueError(
                    f"y is labelled but {len(missing)} of X's {n_samples} image ids are not in y's {axis}, e.g. "
                    f"{missing[:3].tolist()} (y's labels look like {labels[:3].tolist()}). y is aligned to X by "
                    "label: label it with X's ids (similarity_frame(y, ids=X.ids)), or pass y.to_numpy() to "
                    "align by position."
                )
        return y.loc[ids, ids]
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} rows but X has {n_samples} images")
    missing = y.index.difference(y.columns, sort=False)
    if len(missing):
        raise ValueError(
            f"y's rows and columns must carry the same image ids; {len(missing)} row id(s) such as "
            f"{list(missing[:3])} are not among the columns"
        )
    return y.loc[:, y.index]


def _series_values(y: pd.Series, n_samples: int, ids):
    """1-D class labels in a Series: aligned to X's ids by label when both carry them."""
    if ids is None:
        return y.to_numpy()
    _check_unique(y.index, "y's index (image ids)")
    ids = pd.Index(np.asarray(ids))
    missing = ids.difference(y.index, sort=False)
    if len(missing):
        raise ValueError(f"{len(missing)} of X's image ids are not in y's index, e.g. {missing[:3].tolist()}")
    return y.loc[ids].to_numpy()


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
