"""The THINGS similarity matrix (1,854 object concepts), read from a file the user supplies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat
from sklearn.utils import Bunch

from .._targets import check_symmetric

N_CONCEPTS = 1854
# The name of the matrix in the published spose_similarity.mat (Hebart et al. 2020).
_MAT_NAMES = ("spose_sim", "similarity", "sim")

DESCR = """\
.. _things_similarity_dataset:

THINGS similarity matrix (1,854 object concepts)
------------------------------------------------

Predicted human similarity of every pair of the 1,854 object concepts of the
THINGS database, from the 49-dimensional SPoSE embedding fitted to 1.46
million triplet odd-one-out judgments (Hebart, Zheng, Pereira & Baker 2020):
entry (i, j) is the probability that i and j are chosen as the most similar
pair of a triplet, averaged over third objects. Rows follow the concepts'
order in THINGS' ``unique_id.txt``. The file is published on OSF with the
THINGS data (``spose_similarity.mat``, variable ``spose_sim``); its terms of
use do not allow redistribution, so it is read from a path you supply.

References

- Hebart, M. N., Zheng, C. Y., Pereira, F., & Baker, C. I. (2020). Revealing
  the multidimensional mental representations of natural objects underlying
  human similarity judgements. Nature Human Behaviour, 4, 1173-1185.
- Hebart, M. N., et al. (2019). THINGS: A database of 1,854 object concepts
  and more than 26,000 naturalistic object images. PLoS ONE, 14(10).
"""


def _read_matrix(path: Path, variable):
    suffix = path.suffix.lower()
    if suffix == ".mat":
        contents = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        if variable is None:
            named = [k for k in _MAT_NAMES if k in contents]
            square = [k for k, v in contents.items() if getattr(v, "ndim", 0) == 2 and v.shape[0] == v.shape[1] > 1]
            candidates = named or square
            if len(candidates) != 1:
                raise ValueError(f"{path.name}: cannot tell which variable is the similarity matrix among "
                                 f"{sorted(contents)}; pass variable=")
            variable = candidates[0]
        if variable not in contents:
            raise ValueError(f"{path.name} has no variable {variable!r} (it has {sorted(contents)})")
        return contents[variable]
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".csv", ".txt", ".tsv"):
        delimiter = "," if suffix == ".csv" else None  # None: any whitespace
        return np.loadtxt(path, delimiter=delimiter, dtype=np.float64)
    raise ValueError(f"unsupported file type {path.suffix!r}: use .mat, .npy, .csv, .tsv or .txt")


def load_things_similarity(path, variable=None, *, expected_size=N_CONCEPTS, labels=None):
    """Load the THINGS 1,854 x 1,854 human similarity matrix from a file you supply.

    THINGS' similarity matrix cannot be downloaded by this package (its terms
    do not allow redistribution): download ``spose_similarity.mat`` from the
    THINGS data on OSF and pass its path. A ``.npy`` file or a delimited text
    file (``.csv``: commas; ``.txt``/``.tsv``: whitespace) of the same matrix
    also works.

    Parameters
    ----------
    path : str or path-like
        The file.
    variable : str, default=None
        For ``.mat`` files, the variable to read; ``None`` takes
        ``spose_sim`` (the published name) or the file's only square matrix.
    expected_size : int or None, default=1854
        Number of concepts the matrix must have; ``None`` accepts any size
        (e.g. a subset of the concepts).
    labels : str, path-like or sequence of str, default=None
        Concept names in row order: a sequence, or a text file with one name
        per line (THINGS' ``unique_id.txt``). Checked against the matrix size.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        similarity : ndarray of shape (n, n), float64
            The matrix, symmetric; its diagonal is set to NaN (a concept's
            similarity to itself is never compared). Ready to pass as ``y``.
        labels : ndarray of shape (n,), str, or None
            The concepts' names, where given.
        DESCR : str
            Description of the data.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unsupported file type, no unambiguous matrix in a ``.mat`` file, a
        matrix that is not square, not of ``expected_size``, not symmetric,
        or contains +/-inf; labels of the wrong length.

    Examples
    --------
    A stand-in file of three concepts (the real one has 1,854):

    >>> import numpy as np, tempfile, os
    >>> from sklearn_ais.datasets import load_things_similarity
    >>> S = np.array([[1.0, 0.2, 0.1], [0.2, 1.0, 0.5], [0.1, 0.5, 1.0]])
    >>> path = os.path.join(tempfile.mkdtemp(), "things.npy")
    >>> np.save(path, S)
    >>> data = load_things_similarity(path, expected_size=None, labels=["aardvark", "abacus", "accordion"])
    >>> float(data.similarity[0, 1]), str(data.labels[2])
    (0.2, 'accordion')
    >>> bool(np.isnan(np.diag(data.similarity)).all())
    True
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file. Download spose_similarity.mat from the THINGS data on OSF "
            "(Hebart et al. 2020) and pass its path."
        )
    S = np.array(_read_matrix(path, variable), dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{path.name}: expected a square similarity matrix, got shape {S.shape}")
    if expected_size is not None and S.shape[0] != expected_size:
        raise ValueError(f"{path.name}: expected {expected_size} x {expected_size} (THINGS concepts), got "
                         f"{S.shape[0]} x {S.shape[1]}; pass expected_size=None for another size")
    if np.isinf(S).any():
        raise ValueError(f"{path.name}: the matrix contains +/-inf")
    check_symmetric(S, "the THINGS similarity matrix")
    np.fill_diagonal(S, np.nan)
    if labels is not None:
        if isinstance(labels, (str, Path)):
            labels = Path(labels).read_text().split("\n")
            labels = [s.strip() for s in labels if s.strip()]
        labels = np.asarray(labels, dtype=str)
        if labels.shape != (S.shape[0],):
            raise ValueError(f"labels: expected {S.shape[0]} names (one per row), got {labels.shape[0]}")
    return Bunch(similarity=S, labels=labels, DESCR=DESCR)
