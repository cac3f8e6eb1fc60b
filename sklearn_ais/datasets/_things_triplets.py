"""Odd-one-out triplets: THINGS' released choices (read from files you supply) and a softmax observer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch, check_random_state

from .._targets import check_similarity_target
from .._triplets import THINGS_CEILING, Triplets
from ._things import N_CONCEPTS

DESCR = """\
.. _things_triplets_dataset:

THINGS odd-one-out triplets (1,854 object concepts)
---------------------------------------------------

4.7 million odd-one-out choices over the 1,854 object concepts of the THINGS
database (Hebart et al. 2023, THINGS-data), each a row ``(i, j, k)`` of
concept indices whose third entry is the odd one out, split into
``train_90`` and ``test_10`` and indexed in the order of the concept list
(``things_concepts.tsv`` / ``unique_id.txt``). The published noise ceiling of
odd-one-out accuracy is 0.6767. The files are not redistributed by this
package: download them from OSF and pass their paths.

References

- Hebart, M. N., Contier, O., Teichmann, L., et al. (2023). THINGS-data, a
  multimodal collection of large-scale datasets for investigating object
  representations in human brain and behavior. eLife, 12, e82580.
- Muttenthaler, L., et al. (2023). Improving neural network representations
  using human similarity judgments. NeurIPS 36.
"""

_SPLITS = {"train": ("train_90", "train"), "test": ("test_10", "test")}
_CONCEPT_FILES = ("things_concepts.tsv", "unique_id.txt")
_CONCEPT_COLUMNS = ("uniqueID", "unique_id", "Word", "word", "concept")


def _read_table(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    elif suffix in (".txt", ".tsv", ".csv"):
        values = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, dtype=np.float64, ndmin=2)
    else:
        raise ValueError(f"{path.name}: unsupported file type {path.suffix!r}; use .npy or .txt")
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != 3:
        raise ValueError(f"{path.name}: expected an (N, 3) table of concept indices (odd one out last), got shape "
                         f"{values.shape}")
    if len(values) == 0:
        raise ValueError(f"{path.name} holds no triplets")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(np.nan_to_num(values)))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{path.name}: row {r} holds {values[r, c].item()!r}, not an integer concept index")
    elif values.dtype.kind not in "iu":
        raise ValueError(f"{path.name}: expected integer concept indices, got dtype {values.dtype}")
    return values.astype(np.int64)


def _read_concepts(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".tsv":
        frame = pd.read_csv(path, sep="\t")
        column = next((c for c in _CONCEPT_COLUMNS if c in frame.columns), frame.columns[0])
        return frame[column].astype(str).to_numpy()
    names = [s.strip() for s in path.read_text().splitlines()]
    return np.asarray([s for s in names if s], dtype=str)


def _index_base(tables, n, index_base, names):
    lo = min(int(t.min()) for t in tables.values())
    hi = max(int(t.max()) for t in tables.values())
    if index_base == "auto":
        if lo == 0:
            index_base = 0
        elif n is not None and hi == n:
            index_base = 1
        else:
            raise ValueError(
                f"cannot tell whether the indices of {names} are 0- or 1-based: they run from {lo} to {hi}"
                f"{'' if n is None else f' over {n} concepts'}; pass index_base=0 or index_base=1"
            )
    if index_base not in (0, 1):
        raise ValueError(f"index_base must be 'auto', 0 or 1, got {index_base!r}")
    return index_base


def _resolve_files(path: Path):
    """{"train": file, "test": file} (or one "triplets" file) and the concept list found beside them."""
    if path.is_file():
        return {"triplets": path}, None
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder. Download the THINGS triplets (train_90 / "
                                "test_10) from OSF and pass their folder or file")
    files = {}
    for split, stems in _SPLITS.items():
        found = [p for stem in stems for p in sorted(path.glob(f"{stem}.*")) if p.suffix.lower() in (".npy", ".txt")]
        if found:
            files[split] = found[0]
    if not files:
        raise FileNotFoundError(f"{path}: no train_90 / test_10 file (.npy or .txt) in this folder")
    concepts = next((path / f for f in _CONCEPT_FILES if (path / f).is_file()), None)
    return files, concepts


def load_things_triplets(path, *, concepts=None, n_concepts=N_CONCEPTS, index_base="auto"):
    """Load THINGS odd-one-out triplets from files you supply.

    Parameters
    ----------
    path : str or path-like
        A file of triplets (``.npy``, or ``.txt`` of whitespace-separated
        integers), one row ``(i, j, k)`` per choice with ``k`` the odd one out;
        or a folder holding ``train_90`` and/or ``test_10`` in either format
        (and, optionally, ``things_concepts.tsv`` or ``unique_id.txt``).
    concepts : str, path-like or sequence of str, default=None
        The concept list in index order: names, a text file with one per line,
        or THINGS' ``things_concepts.tsv`` (its ``uniqueID`` column). Default:
        the list found in the folder, if any. Its length fixes the number of
        concepts.
    n_concepts : int or None, default=1854
        Number of concepts when no list is given; ``None``: any (then indices
        must start at 0 to be read as 0-based).
    index_base : {"auto", 0, 1}, default="auto"
        ``"auto"``: 0-based when index 0 occurs, 1-based when the index
        ``n_concepts`` occurs (converted to 0-based), otherwise refused.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        train, test : ndarray of shape (N, 3), int64, or None
            0-based indices, odd one out last (``triplets`` for a single file).
        concepts : ndarray of str or None
            The concept names, in index order.
        n_concepts : int
            Number of concepts the indices refer to.
        ceiling : float
            THINGS' published noise ceiling, 0.6767.
        DESCR : str
            A description of the data.

    Raises
    ------
    FileNotFoundError
        No such file or folder, or no triplet file in the folder.
    ValueError
        A table that is not (N, 3) integers, an index outside the concepts
        (its file and row named), ambiguous 0-/1-based indices, a row naming
        a concept twice.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sklearn_ais.datasets import load_things_triplets
    >>> folder = tempfile.mkdtemp()
    >>> np.savetxt(os.path.join(folder, "train_90.txt"), [[1, 2, 3], [2, 3, 4]], fmt="%d")  # 1-based
    >>> np.save(os.path.join(folder, "test_10.npy"), np.array([[4, 1, 2]]))
    >>> data = load_things_triplets(folder, concepts=["aardvark", "abacus", "accordion", "acorn"])
    >>> data.train
    array([[0, 1, 2],
           [1, 2, 3]])
    >>> data.test, data.n_concepts
    (array([[3, 0, 1]]), 4)
    """
    path = Path(path)
    files, found_concepts = _resolve_files(path)
    if concepts is None and found_concepts is not None:
        concepts = found_concepts
    names = None
    if concepts is not None:
        names = _read_concepts(Path(concepts)) if isinstance(concepts, (str, Path)) else np.asarray(concepts, str)
        n_concepts = len(names)
    tables = {split: _read_table(p) for split, p in files.items()}
    base = _index_base(tables, n_concepts, index_base, ", ".join(p.name for p in files.values()))
    out = {}
    for split, T in tables.items():
        T = T - base
        if (T < 0).any() or (n_concepts is not None and (T >= n_concepts).any()):
            bad = (T < 0) | ((T >= n_concepts) if n_concepts is not None else False)
            r, c = np.argwhere(bad)[0]
            raise ValueError(
                f"{files[split].name}: row {r} names concept {T[r, c] + base} ({base}-based), outside the "
                f"{n_concepts} concepts"
            )
        out[split] = Triplets(T).canonical(n_concepts if n_concepts is not None else int(T.max()) + 1).indices
    single = {"triplets": out["triplets"]} if "triplets" in out else {}
    return Bunch(train=out.get("train"), test=out.get("test"), **single, concepts=names, n_concepts=n_concepts,
                 ceiling=THINGS_CEILING, DESCR=DESCR)


def simulate_triplets(H, n_triplets, temperature=1.0, random_state=None, *, y_kind="similarity"):
    """Odd-one-out choices of a softmax observer of a similarity matrix.

    For each triplet (three distinct images drawn uniformly, with all three of
    their pairs observed), the observer picks pair ``(a, b)`` as the most
    similar with probability ``softmax(H_ab / temperature)`` over the three
    pairs; the third image is the odd one out. Repeated triplets may occur.

    Parameters
    ----------
    H : array-like of shape (n, n)
        Human (or any) similarity matrix; NaN = pair not judged.
    n_triplets : int
    temperature : float > 0, default=1.0
        Noise of the observer: small values choose the most similar pair
        nearly always.
    random_state : int, RandomState instance or None, default=None
    y_kind : {"similarity", "dissimilarity"}, default="similarity"

    Returns
    -------
    triplets : ndarray of shape (n_triplets, 3), int64
        Rows ``(a, b, odd)``: ready as ``y`` with a triplet comparison.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.datasets import simulate_triplets
    >>> H = np.array([[1, .9, .1, .1], [.9, 1, .1, .1], [.1, .1, 1, .2], [.1, .1, .2, 1]])
    >>> T = simulate_triplets(H, 1000, temperature=0.05, random_state=0)
    >>> T.shape, bool(np.mean([set(t[:2]) == {0, 1} for t in T if set(t) == {0, 1, 2}]) > 0.9)
    ((1000, 3), True)
    """
    if not (isinstance(n_triplets, (int, np.integer)) and n_triplets >= 1):
        raise ValueError(f"n_triplets must be a positive integer, got {n_triplets!r}")
    if not (np.isscalar(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    H = check_similarity_target(H, np.shape(H)[0], y_kind)
    n = len(H)
    rng = check_random_state(random_state)
    out = np.empty((0, 3), dtype=np.int64)
    for _ in range(1000):
        need = n_triplets - len(out)
        if need <= 0:
            break
        cand = _distinct_rows(rng, n, 2 * need + 16)
        a, b, c = cand.T
        sims = np.stack([H[a, b], H[a, c], H[b, c]], axis=1)  # pairs whose odd one out is c, b, a
        ok = ~np.isnan(sims).any(axis=1)
        cand, sims = cand[ok][:need], sims[ok][:need]
        z = sims / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        pick = (rng.random_sample(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=2)
        a, b, c = cand.T
        rows = np.choose(pick, [np.stack([a, b, c]), np.stack([a, c, b]), np.stack([b, c, a])]).T
        out = np.concatenate([out, rows])
    if len(out) < n_triplets:
        raise ValueError("H observes too few pairs to draw triplets whose three pairs are all judged")
    return out.astype(np.int64)


def _distinct_rows(rng, n, m):
    cand = rng.randint(0, n, size=(m, 3))
    return cand[(cand[:, 0] != cand[:, 1]) & (cand[:, 0] != cand[:, 2]) & (cand[:, 1] != cand[:, 2])]
