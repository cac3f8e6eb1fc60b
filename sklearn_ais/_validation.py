"""Validation of ``X``, feature masks and splitters: the input contract's X side.

Every estimator and public function reads its inputs through this module (``y``
through :mod:`sklearn_ais._targets`), before any expensive work, so that an
input whose meaning the package would otherwise drop is honoured or refused
with a message that says what to do (see ``CONTRIBUTING.md``, "Input
contract"):

* ``X`` is :class:`~sklearn_ais.FeatureMaps` or a 2-D array (n_images,
  n_units). A masked array is refused (a masked activation has no agreed
  meaning), as are sparse matrices, NaN/inf, complex and non-numeric values;
  a DataFrame's index is kept as the images' ids.
* a *feature mask* (``keep``, ``keep_units``) is a boolean mask of one entry
  per map/unit or an array of integer indices; an integer array is never
  silently read as booleans, nor a boolean mask as indices.
* an int ``cv`` means shuffled image-wise folds, seeded by the caller's
  ``random_state``: stimulus sets are ordered by category, so unshuffled
  folds would be category blocks.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.model_selection import KFold, RepeatedKFold, check_cv
from sklearn.utils.validation import validate_data

# Fewest images a similarity analysis accepts (a correlation of upper triangles needs 6 pairs).
MIN_IMAGES = 4


def is_feature_maps(X) -> bool:
    """True for :class:`~sklearn_ais.FeatureMaps` (recognised by its interface: this layer sits below it).

    Parameters
    ----------
    X : object

    Returns
    -------
    bool
        Whether ``X`` has the container's ``maps``, ``head``, ``n_maps``, ``embed`` and ``all_finite``.
    """
    return all(hasattr(X, a) for a in ("maps", "head", "n_maps", "embed", "all_finite"))


def check_feature_maps(X, min_images: int = MIN_IMAGES):
    """Checks every estimator that reads FeatureMaps makes: enough images, finite maps.

    Parameters
    ----------
    X : FeatureMaps
    min_images : int, default=4
        Fewest images accepted (a similarity analysis needs 4; drawing one
        new image needs 1).

    Returns
    -------
    X : FeatureMaps
        Unchanged.
    """
    if len(X) < min_images:
        raise ValueError(f"X has {len(X)} images; at least {min_images} are needed for a similarity analysis")
    if not X.all_finite():
        raise ValueError("X (feature maps) contains NaN or inf")
    return X


def refuse_masked(X, name: str = "X"):
    """A masked array's mask would be dropped by ``np.asarray``: refuse it.

    Parameters
    ----------
    X : object
    name : str, default="X"
        Name used in the error message.

    Raises
    ------
    TypeError
        ``X`` is a masked array.
    """
    if np.ma.isMaskedArray(X):
        raise TypeError(
            f"{name} is a masked array, but a masked activation has no agreed meaning (missing? zero?): fill it "
            f"({name}.filled(value)) or drop the masked units/images before fitting"
        )


def record_n_features(estimator, n_features: int, *, reset: bool, described: str) -> None:
    """``n_features_in_`` for an input scikit-learn's ``validate_data`` does not see (FeatureMaps).

    Parameters
    ----------
    estimator : estimator
    n_features : int
        The width the estimator works on (maps, or embedding coordinates).
    reset : bool
        True in ``fit``: set ``n_features_in_`` (and forget ``feature_names_in_``).
    described : str
        ``X`` in words for the error, e.g. ``"X has 12 feature maps"``.

    Raises
    ------
    ValueError
        ``reset=False`` and the width differs from the fitted one.
    """
    if reset:
        estimator.n_features_in_ = n_features
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    elif n_features != getattr(estimator, "n_features_in_", n_features):
        raise ValueError(f"{described}, but {type(estimator).__name__} was fitted with {estimator.n_features_in_}")


def validate_maps_input(estimator, X, *, reset: bool, min_images: int = MIN_IMAGES):
    """Validate ``X``: FeatureMaps (checked here) or a 2-D array (scikit-learn's checks).

    Parameters
    ----------
    estimator : estimator
        Receives ``n_features_in_`` (and ``feature_names_in_``) with
        ``reset=True``; checked against them otherwise.
    X : FeatureMaps or array-like of shape (n_images, n_units)
        Maps stay as they are (one unit per map); arrays become float64.
    reset : bool
        True in ``fit``.
    min_images : int, default=4

    Returns
    -------
    X : FeatureMaps or ndarray of shape (n_images, n_units), float64
    """
    if is_feature_maps(X):
        check_feature_maps(X, min_images)
        record_n_features(estimator, X.n_maps, reset=reset, described=f"X has {X.n_maps} feature maps")
        return X
    refuse_masked(X)
    # scikit-learn's own checks: 2-D, finite, numeric, enough samples, no sparse input.
    return validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_min_samples=min_images)


def as_feature_mask(keep, n_features: int, name: str = "keep") -> np.ndarray:
    """A boolean mask of ``n_features`` entries from a mask, integer indices or a fitted selector.

    Parameters
    ----------
    keep : array-like of bool of shape (n_features,), array-like of int, or fitted selector
        A boolean mask; indices of the features to keep (unique, in
        ``[-n_features, n_features)``); or anything with ``get_support()``.
    n_features : int
    name : str, default="keep"
        Name used in error messages.

    Returns
    -------
    mask : ndarray of bool of shape (n_features,)
        A new array (the caller's mask is not kept).

    Examples
    --------
    >>> from sklearn_ais._validation import as_feature_mask
    >>> as_feature_mask([0, 2], 3), as_feature_mask([True, False, True], 3)
    (array([ True, False,  True]), array([ True, False,  True]))
    """
    if hasattr(keep, "get_support"):
        keep = keep.get_support()
    refuse_masked(keep, name)
    arr = np.asarray(keep)
    if arr.dtype == bool:
        if arr.shape != (n_features,):
            raise ValueError(f"{name} as a boolean mask must have shape ({n_features},), got {arr.shape}")
        return arr.copy()
    if arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        idx = arr.astype(np.int64)
        if idx.size and (idx.min() < -n_features or idx.max() >= n_features):
            raise ValueError(f"{name} indices must lie in [0, {n_features - 1}], got {idx.min()} .. {idx.max()}")
        if len(np.unique(idx % max(n_features, 1))) != len(idx):
            raise ValueError(f"{name} indices repeat a feature")
        mask = np.zeros(n_features, dtype=bool)
        mask[idx] = True
        return mask
    raise TypeError(
        f"{name} must be a boolean mask of shape ({n_features},) or an array of integer indices, got dtype "
        f"{arr.dtype} and shape {arr.shape} (a 0/1 float array is ambiguous: pass {name}.astype(bool))"
    )


def check_image_cv(cv, random_state=0, *, default=None):
    """The package's one rule for ``cv``: an int means shuffled image-wise folds.

    Parameters
    ----------
    cv : None, int, splitter or iterable
        ``None``: ``default`` (or 5-fold); an int ``k``:
        ``KFold(k, shuffle=True, random_state=random_state)``; a splitter
        over images or over matrix entries (its ``splits_pairs`` attribute)
        or an iterable of (train, test) index arrays: unchanged.
    random_state : int, RandomState instance or None, default=0
        Seeds the shuffling of an int ``cv``.
    default : splitter, optional
        Used when ``cv`` is None.

    Returns
    -------
    cv : splitter
    """
    if cv is None:
        cv = default if default is not None else 5
    if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds, got {cv}")
        return KFold(int(cv), shuffle=True, random_state=random_state)
    if getattr(cv, "splits_pairs", False):
        return cv
    return check_cv(cv)


def default_repeated_cv(random_state=0):
    """The seed paper's protocol: 5 image-wise folds x 8 repeats.

    Parameters
    ----------
    random_state : int, RandomState instance or None, default=0

    Returns
    -------
    cv : RepeatedKFold
    """
    return RepeatedKFold(n_splits=5, n_repeats=8, random_state=random_state)


def check_splits(splits, n_items: int, what: str = "images") -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of a cross-validation, materialised and checked before any fit.

    Every fold is a (train, test) pair of integer index arrays into the
    ``n_items`` images (or matrix entries); refused with the fold's number:
    an empty part, an index out of range (a list of entry-wise splits passed
    where image splits are expected says so), a non-integer index, and a test
    set that overlaps its own training set (a held-out score on training data
    is not held out).

    Parameters
    ----------
    splits : iterable of (train, test)
    n_items : int
        Number of images (``what="images"``) or of matrix entries (``"pairs"``).
    what : {"images", "pairs"}, default="images"

    Returns
    -------
    splits : list of (ndarray, ndarray)
        int64 index arrays.

    Examples
    --------
    >>> from sklearn_ais._validation import check_splits
    >>> check_splits([([0, 1, 2], [3, 3])], 4)
    Traceback (most recent call last):
    ...
    ValueError: fold 0: its test images repeat an index (e.g. 3)
    """
    out = []
    for fold, split in enumerate(splits):
        try:
            train, test = split
        except (TypeError, ValueError):
            raise ValueError(f"fold {fold} is not a (train, test) pair of index arrays: got {split!r:.80}") from None
        parts = []
        for side, idx in (("training", train), ("test", test)):
            arr = np.asarray(idx)
            if arr.dtype == bool and arr.ndim == 1 and len(arr) == n_items:
                arr = np.flatnonzero(arr)  # a boolean mask over the items
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise ValueError(f"fold {fold}: its {side} {what} must be a 1-D array of integer indices, got "
                                 f"dtype {arr.dtype} and shape {arr.shape}")
            if not arr.size:
                raise ValueError(f"fold {fold} has no {side} {what}: an empty part has no score")
            arr = arr.astype(np.int64)
            if arr.min() < 0 or arr.max() >= n_items:
                bad = int(arr.max() if arr.max() >= n_items else arr.min())
                hint = ""
                if what == "images" and 0 <= bad < n_items * (n_items - 1) // 2:
                    hint = (f" These look like entry-wise (pair) splits; image splits are expected here: pass "
                            f"image indices 0..{n_items - 1}, or the pair splitter itself (PairKFold) to "
                            "cross_validate_alignment")
                raise ValueError(f"fold {fold}: {side} index {bad} is out of range for {n_items} {what}.{hint}")
            if len(np.unique(arr)) != len(arr):
                dup = int(np.flatnonzero(np.bincount(arr) > 1)[0])
                raise ValueError(f"fold {fold}: its {side} {what} repeat an index (e.g. {dup})")
            parts.append(arr)
        shared = np.intersect1d(parts[0], parts[1])
        if shared.size:
            raise ValueError(
                f"fold {fold}: {shared.size} of its {len(parts[1])} test {what} are also in its training set "
                f"(e.g. {shared[:3].tolist()}); a held-out score needs a test set disjoint from the training set"
            )
        out.append((parts[0], parts[1]))
    return out
