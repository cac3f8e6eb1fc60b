"""Odd-one-out triplets as a target (the ``y`` of THINGS-style data).

A triplet is one human choice: of three images, which one is the odd one
out. Data sets store them as an (N, 3) integer array (THINGS: the third
column is the odd one out). This module reads and checks them, beside
:mod:`sklearn_ais._targets` (similarity matrices):

* **what is accepted.** An (N, 3) integer array (indices into the rows of
  ``X``), a DataFrame of three columns (image ids aligned to ``X``'s ids, or
  integer indices), or :class:`Triplets`, which states the column convention:
  ``odd_one_out="last"`` (default, as THINGS), ``"first"``, or a 4th column
  that holds the odd image itself.
* **what is refused**, each with the row named: non-integer values (NaN,
  2.5), an index outside ``X``, an id ``X`` does not carry, an image named
  twice in a row, a 4th column naming an image outside its row; an empty
  set. Repeated identical triplets are data (they carry agreement).
* **the canonical form** (:class:`TripletSet`): rows ``(a, b, o)`` with
  ``o`` the human odd one out, so that ``(a, b)`` is the pair people chose
  as most similar. The model chooses the image outside its most similar
  pair; ties for that pair count as wrong.
* **held-out parts.** ``T.take(idx)`` keeps the triplets whose three images
  all lie in ``idx`` (renumbered to positions in ``idx``): image-wise folds
  never let a test triplet touch a training image (Muttenthaler et al.'s
  protocol). ``T[np.ix_(idx, idx)]`` is the same (the square block of a
  matrix), so permutations and image folds need no special case.
  ``T.select(rows)`` keeps triplets by row (triplet-wise folds, as THINGS'
  ``train_90`` / ``test_10``).
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, ShuffleSplit

TRIPLET_COMPARISONS = ("odd_one_out", "triplet_log_likelihood")
ODD_ONE_OUT = ("last", "first", "column")
# THINGS' published noise ceiling of odd-one-out accuracy (Hebart et al. 2020).
THINGS_CEILING = 0.6767


class Triplets:
    """Odd-one-out choices, with their column convention stated.

    Pass it as ``y`` wherever a human similarity matrix is accepted (with a
    triplet comparison, e.g. ``AISSelector(comparison="odd_one_out")``). A
    plain (N, 3) integer array means ``Triplets(array)``.

    Parameters
    ----------
    data : array-like or DataFrame of shape (N, 3) or (N, 4)
        Integer indices into the rows of ``X``, or image ids (matched to
        ``X``'s ids: ``FeatureMaps.ids``, a DataFrame's index).
    odd_one_out : {"last", "first", "column"}, default="last"
        Which entry of a row is the odd one out: the third (THINGS), the
        first, or a 4th column that holds the odd image itself (one of the
        row's three).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import Triplets
    >>> y = Triplets([[2, 0, 1], [3, 1, 2]], odd_one_out="first")
    >>> y.canonical(4).indices  # (a, b, odd): the odd one out last
    array([[0, 1, 2],
           [1, 2, 3]])
    """

    def __init__(self, data, *, odd_one_out="last"):
        self.data = data
        self.odd_one_out = odd_one_out

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"Triplets({len(self)} choices, odd_one_out={self.odd_one_out!r})"

    def canonical(self, n_images, ids=None) -> "TripletSet":
        """The checked triplets over ``n_images`` images (rows ``(a, b, odd)``).

        Parameters
        ----------
        n_images : int
        ids : array-like of shape (n_images,), optional
            Image ids the values refer to (else the values are indices).

        Returns
        -------
        triplets : TripletSet
        """
        if self.odd_one_out not in ODD_ONE_OUT:
            raise ValueError(f"odd_one_out must be one of {ODD_ONE_OUT}, got {self.odd_one_out!r}")
        width = 4 if self.odd_one_out == "column" else 3
        values = _as_index_table(self.data, width, n_images, ids)
        if self.odd_one_out == "first":
            values = values[:, [1, 2, 0]]
        elif self.odd_one_out == "column":
            values = _odd_from_column(values)
        return TripletSet(values, n_images)


class TripletSet:
    """Checked odd-one-out triplets over ``n_images`` images: rows ``(a, b, odd)``.

    Parameters
    ----------
    indices : ndarray of shape (N, 3), int
        Canonical rows; checked by :meth:`Triplets.canonical`.
    n_images : int

    Attributes
    ----------
    indices : ndarray of shape (N, 3), int64
    n_images : int
    """

    def __init__(self, indices, n_images):
        self.indices = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1, 3)
        self.n_images = int(n_images)

    def __len__(self):
        return len(self.indices)

    def __repr__(self):
        return f"TripletSet({len(self)} triplets over {self.n_images} images)"

    @property
    def shape(self):
        """``(n_images, n_images)``: the matrix the triplets stand for (what image splitters read)."""
        return (self.n_images, self.n_images)

    def take(self, idx) -> "TripletSet":
        """Triplets whose three images all lie in ``idx``, renumbered to positions in ``idx``.

        Parameters
        ----------
        idx : array-like of int
            Distinct image indices.

        Returns
        -------
        triplets : TripletSet
            Over ``len(idx)`` images; image ``idx[p]`` becomes ``p``.
        """
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if len(np.unique(idx)) != len(idx):
            raise ValueError("the images of a triplet subset must be distinct (a bootstrap sample cannot hold "
                             "odd-one-out triplets)")
        where = np.full(self.n_images, -1, dtype=np.int64)
        where[idx] = np.arange(len(idx))
        mapped = where[self.indices]
        return TripletSet(mapped[(mapped >= 0).all(axis=1)], len(idx))

    def select(self, rows) -> "TripletSet":
        """Triplets ``rows`` (triplet-wise folds), over the same images."""
        return TripletSet(self.indices[np.asarray(rows, dtype=np.int64)], self.n_images)

    def __getitem__(self, key):
        """``T[np.ix_(idx, idx)]`` is ``T.take(idx)``, as a matrix's square block."""
        if isinstance(key, tuple) and len(key) == 2:
            rows, cols = (np.asarray(k).ravel() for k in key)
            if np.array_equal(rows, cols):
                return self.take(rows)
        raise TypeError("a TripletSet is indexed by T[np.ix_(idx, idx)] (images) or T.select(rows) (triplets)")

    def images(self) -> np.ndarray:
        """Images that appear in at least one triplet."""
        return np.unique(self.indices)


def is_triplet_target(y, n_images=None) -> bool:
    """Whether ``y`` is odd-one-out triplets rather than a similarity matrix.

    :class:`Triplets`, :class:`TripletSet`, and any 2-D array or DataFrame of
    three columns, unless it could be the 3 x 3 matrix of ``n_images = 3``
    images (a similarity analysis needs more, so with ``n_images`` given an
    (N, 3) table is always triplets).
    """
    if isinstance(y, (Triplets, TripletSet)):
        return True
    if y is None or isinstance(y, pd.Series):
        return False
    shape = getattr(y, "shape", None)
    if shape is None:
        try:
            shape = np.asarray(y).shape
        except (TypeError, ValueError):  # ragged: not a table
            return False
    if len(shape) != 2 or shape[1] != 3:
        return False
    return shape[0] != 3 or (n_images is not None and n_images != 3)


def check_triplet_target(y, X, *, ids=None) -> TripletSet:
    """Return ``y`` as checked, canonical odd-one-out triplets over the images of ``X``.

    Parameters
    ----------
    y : Triplets, TripletSet, array-like or DataFrame of shape (N, 3)
        A plain array or DataFrame means ``Triplets(y)`` (odd one out last).
    X : int, FeatureMaps or array-like
        The images: their number, or ``X`` (whose ids align a DataFrame of ids).
    ids : array-like, optional
        Image ids of ``X``, overriding those ``X`` carries.

    Returns
    -------
    triplets : TripletSet
    """
    from ._targets import samples_and_ids

    n, ids = samples_and_ids(X, ids)
    if y is None:
        raise ValueError("this estimator requires y: pass the odd-one-out triplets, an (N, 3) array of image indices")
    if isinstance(y, TripletSet):
        if y.n_images != n:
            raise ValueError(f"y holds triplets over {y.n_images} images but X has {n}")
        if len(y) == 0:
            raise ValueError("y holds no triplets (an empty set): at least one odd-one-out choice is needed")
        return y
    if not isinstance(y, Triplets):
        y = Triplets(y)
    return y.canonical(n, ids)


def _as_index_table(data, width, n, ids) -> np.ndarray:
    """(N, width) int64 indices into X's rows, every value checked (the row named on error)."""
    if isinstance(data, pd.DataFrame):
        values = data.to_numpy()
    else:
        values = np.asarray(data)
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"odd-one-out triplets must be an (N, {width}) table, got shape {values.shape}")
    if len(values) == 0:
        raise ValueError("y holds no triplets (an empty set): at least one odd-one-out choice is needed")
    if ids is not None and not _integer_valued(values):
        return _ids_to_positions(values, ids)
    out = _integers(values)
    bad = (out < 0) | (out >= n)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"triplet row {r} names image {out[r, c]}, outside X's {n} images (indices 0..{n - 1}); "
                         "indices are 0-based positions in X (datasets.load_things_triplets converts 1-based files)")
    _check_distinct(out[:, :3])
    return out


def _integer_valued(values) -> bool:
    if values.dtype.kind in "biu":
        return True
    if values.dtype.kind == "f":
        return bool(np.isfinite(values).all() and (values == np.round(values)).all())
    if values.dtype.kind == "O":
        return all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values.ravel())
    return False


def _integers(values) -> np.ndarray:
    kind = values.dtype.kind
    if kind in "iu":
        return values.astype(np.int64)
    if kind == "b":
        raise TypeError("odd-one-out triplets must hold integer image indices, got booleans")
    if kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(np.nan_to_num(values)))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"triplet row {r} holds {values[r, c].item()!r}, not an integer image index")
        return values.astype(np.int64)
    flat = values.ravel()
    for pos, v in enumerate(flat):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            r, c = divmod(pos, values.shape[1])
            raise ValueError(f"triplet row {r} holds {v!r}, not an integer image index (image ids need X to "
                             "carry ids: FeatureMaps.ids or a DataFrame's index)")
    return values.astype(np.int64)


def _ids_to_positions(values, ids) -> np.ndarray:
    index = pd.Index(np.asarray(ids))
    if index.has_duplicates:
        raise ValueError("X's image ids must be unique to align triplets by id")
    pos = index.get_indexer(values.ravel()).reshape(values.shape)
    if (pos < 0).any():
        r, c = np.argwhere(pos < 0)[0]
        raise ValueError(f"triplet row {r} names {values[r, c]!r}, which is not among X's image ids "
                         f"(they look like {index[:3].tolist()})")
    _check_distinct(pos[:, :3])
    return pos.astype(np.int64)


def _check_distinct(T):
    same = (T[:, 0] == T[:, 1]) | (T[:, 0] == T[:, 2]) | (T[:, 1] == T[:, 2])
    if same.any():
        r = int(np.flatnonzero(same)[0])
        raise ValueError(f"triplet row {r} names an image twice ({T[r].tolist()}): a triplet needs three "
                         "distinct images")


def _odd_from_column(values) -> np.ndarray:
    """Rows (i, j, k, odd) with ``odd`` one of i, j, k -> canonical (a, b, odd)."""
    hit = values[:, :3] == values[:, 3:4]
    bad = hit.sum(axis=1) != 1
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"triplet row {r}: its 4th column ({values[r, 3]}) must be one of the row's three images "
                         f"{values[r, :3].tolist()}")
    others = values[:, :3][~hit].reshape(-1, 2)
    return np.column_stack([others, values[:, 3]])


# ---------------------------------------------------------------------------
# Folds and ceilings
# ---------------------------------------------------------------------------
def triplet_fold_parts(data, T: TripletSet, train, test, *, by_triplets, take=None) -> tuple:
    """The parts of one fold of triplet data: ``(data_train, data_test, T_train, T_test)``.

    Image-wise folds keep a triplet on a side only when its three images are
    all on that side (the others are dropped); triplet-wise folds
    (``by_triplets``) keep every image and split the triplets.
    """
    if by_triplets:
        return data, data, T.select(train), T.select(test)
    take = take or (lambda d, idx: d[idx])
    return take(data, train), take(data, test), T.take(train), T.take(test)


def triplet_noise_ceiling(triplets, *, ceiling=None) -> float:
    """Noise ceiling of odd-one-out accuracy.

    From repeated triplets (the same three images judged more than once): the
    agreement of each choice with the majority choice of its triplet, over
    the repeated triplets (a tie between majority choices counts half, as a
    perfect model picks one of them). Without repeats, the ``ceiling`` you
    supply (THINGS: 0.6767, Hebart et al. 2020).

    Parameters
    ----------
    triplets : Triplets, TripletSet or array-like of shape (N, 3)
        Odd one out last for a plain array.
    ceiling : float, optional
        Used when the data has no repeated triplet.

    Returns
    -------
    ceiling : float

    Examples
    --------
    >>> from sklearn_ais.metrics import triplet_noise_ceiling
    >>> triplet_noise_ceiling([[0, 1, 2], [1, 0, 2], [0, 2, 1], [1, 2, 3]])  # (0,1,2): odd 2, 2, 1
    0.6666666666666666
    >>> triplet_noise_ceiling([[0, 1, 2]], ceiling=0.6767)
    0.6767
    """
    if isinstance(triplets, TripletSet):
        T = triplets.indices
    else:
        data = triplets if isinstance(triplets, Triplets) else Triplets(triplets)
        raw = np.asarray(data.data.to_numpy() if isinstance(data.data, pd.DataFrame) else data.data)
        T = data.canonical(int(_integers(raw[:, :3] if raw.ndim == 2 else raw).max()) + 1).indices
    key = np.sort(T, axis=1)
    _, group, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    repeated = counts[group] > 1
    if not repeated.any():
        if ceiling is None:
            raise ValueError("the triplets hold no repeated triplet, so no ceiling can be estimated from them: pass "
                             f"ceiling= (THINGS: {THINGS_CEILING})")
        return float(ceiling)
    # A triplet judged m times whose most frequent choice was made M times agrees M times with its majority
    # (with tied majorities: M in expectation, whichever of them a perfect model picks).
    choices, votes = np.unique(np.column_stack([group[repeated], T[repeated, 2]]), axis=0, return_counts=True)
    starts = np.flatnonzero(np.r_[True, choices[1:, 0] != choices[:-1, 0]])  # one run of choices per triplet
    majority = np.maximum.reduceat(votes, starts)
    return float(majority.sum() / repeated.sum())


class _TripletSplitMixin:
    """Split the triplets (rows of ``y``); every image takes part in both parts."""

    splits_pairs = True  # the target's entries are split, not the images
    splits_triplets = True

    def split(self, X, y=None, groups=None):
        """Generate (train, test) indices of triplets (rows of ``y``).

        Parameters
        ----------
        X : array-like of length n_images
            Only its length is used.
        y : Triplets, TripletSet or array-like of shape (N, 3)
            The triplets; required.
        groups : None
            Ignored.

        Yields
        ------
        train, test : ndarray of int
        """
        if y is None:
            raise ValueError(f"{type(self).__name__} splits triplets: pass them as y")
        rows = np.arange(len(y))
        return ((rows[a], rows[b]) for a, b in super().split(rows))


class TripletKFold(_TripletSplitMixin, KFold):
    """K-fold over odd-one-out triplets (held-out triplets, as THINGS' ``train_90`` / ``test_10``).

    Parameters are those of :class:`sklearn.model_selection.KFold`; the
    default shuffles. Every image takes part in both parts; use an image
    splitter (``KFold``) to hold out images instead.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.model_selection import TripletKFold
    >>> T = np.array([[0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 3]])
    >>> [len(te) for _, te in TripletKFold(2, random_state=0).split(np.zeros((4, 1)), T)]
    [2, 2]
    """

    def __init__(self, n_splits=5, *, shuffle=True, random_state=None):
        super().__init__(n_splits=n_splits, shuffle=shuffle, random_state=random_state)


class TripletShuffleSplit(_TripletSplitMixin, ShuffleSplit):
    """Random train/test splits of odd-one-out triplets (see :class:`ShuffleSplit`)."""

    def __init__(self, n_splits=10, *, test_size=None, train_size=None, random_state=None):
        super().__init__(n_splits=n_splits, test_size=test_size, train_size=train_size,
                         random_state=random_state)


def check_target(y, X, y_kind="similarity", comparison=None, *, ids=None, **matrix_options):
    """The one entry of ``y`` for estimators that take a matrix or triplets: chosen by ``comparison``.

    A triplet comparison (``TRIPLET_COMPARISONS``) needs odd-one-out triplets
    (:func:`check_triplet_target`); any other comparison a similarity matrix
    (:func:`~sklearn_ais._targets.check_similarity_target`, which receives
    ``matrix_options``). Each refuses the other kind with the way to pass it.

    Returns
    -------
    target : TripletSet or ndarray of shape (n, n)
    """
    from ._targets import check_similarity_target

    n = X if isinstance(X, (int, np.integer)) else len(X)
    if comparison in TRIPLET_COMPARISONS:
        if not is_triplet_target(y, n):
            raise ValueError(
                f"comparison={comparison!r} scores odd-one-out triplets, so y must be an (N, 3) table of image "
                f"indices (odd one out last) or Triplets(...), got {type(y).__name__} of shape {getattr(y, 'shape', None)}. "
                "Triplets can be drawn from a similarity matrix with sklearn_ais.datasets.simulate_triplets"
            )
        return check_triplet_target(y, X, ids=ids)
    if is_triplet_target(y, n):
        raise ValueError(
            f"y holds odd-one-out triplets (an (N, 3) table, shape {getattr(y, 'shape', (len(y), 3))}): score them with "
            "comparison='odd_one_out' (accuracy) or comparison='triplet_log_likelihood'"
        )
    return check_similarity_target(y, X, y_kind, ids=ids, **matrix_options)


def split_items(target, by_pairs, n_images):
    """``(n_items, what)`` that a fold's indices refer to: images, matrix entries, or triplets (rows of ``y``)."""
    if not by_pairs:
        return n_images, "images"
    if isinstance(target, TripletSet):
        return len(target), "triplets"
    return n_images * (n_images - 1) // 2, "pairs"


def check_target_cv(cv, target):
    """Refuse a splitter that cannot split this kind of target (pairs of a matrix vs triplets)."""
    triplets = isinstance(target, TripletSet)
    if triplets and getattr(cv, "splits_pairs", False) and not getattr(cv, "splits_triplets", False):
        raise ValueError(f"{type(cv).__name__} splits the entries of a similarity matrix, but y holds triplets: "
                         "use TripletKFold / TripletShuffleSplit (held-out triplets) or an image splitter (KFold)")
    if not triplets and getattr(cv, "splits_triplets", False):
        raise ValueError(f"{type(cv).__name__} splits odd-one-out triplets, but y is a similarity matrix: use "
                         "PairKFold (held-out entries) or an image splitter (KFold)")
