"""Similarity matrices, upper triangles and (masked, batched) correlations.

Conventions used throughout the package:

* A model representational similarity matrix (RSM) is built from embedding
  rows. ``"pearson"`` is the Pearson correlation of two rows (``np.corrcoef``),
  ``"cosine"`` the cosine of the angle between them. A row with zero variance
  (Pearson) or zero norm (cosine) carries no information: its similarity to
  every other row is defined as 0 (``np.corrcoef`` would return NaN). An RSM
  is exactly symmetric (its lower triangle is a copy of the upper one).
* Two matrices are compared on their strict upper triangles (diagonal
  excluded). Human pairs that are NaN are missing and are ignored.
* Comparisons (``COMPARISONS``):

  - ``"pearson"``: Pearson's r; ``"pearson_r2"``: its square (the seed
    paper's 2OI = r^2, so AIS_k = r^2(all maps) - r^2(map k zeroed)). The two
    rank maps differently only when r changes sign or is negative: with a
    negative baseline r, a map whose removal makes r more negative has a
    negative AIS under ``"pearson"`` but a positive one under
    ``"pearson_r2"`` (r^2 grows).
  - ``"spearman"``: average ranks for ties, exactly as
    :func:`scipy.stats.spearmanr`.
  - ``"rho_a"``: Spearman without tie correction, as rsatoolbox's
    ``rho-a``: ``12 sum((R_x - (m+1)/2)(R_y - (m+1)/2)) / (m^3 - m)`` on
    average ranks (equal to ``"spearman"`` without ties).
  - ``"kendall_tau_a"``: Kendall's tau-a (Nili et al. 2014; rsatoolbox's
    ``tau-a``): (concordant - discordant) / (m (m - 1) / 2); a pair tied on
    either side counts 0.
  - ``"cosine"``: the cosine of the angle between the two vectors, not
    centred (rsatoolbox's ``cosine`` between RDM vectors). Unlike the others it
    changes when a constant is added to one side, so it compares what it is
    given: the package's matrices are similarities (a human RDM passed with
    ``y_kind="dissimilarity"`` is negated), and a zero model vector gives 0.

  When either side is constant the correlation is undefined: the kernels
  return 0 for a constant *model* row (the estimators and :func:`correlation`
  report NaN with a warning) and NaN for a constant *human* side (e.g. a
  held-out block; a whole ``y`` is validated before any work). The human
  side is constant by :func:`~sklearn_ais._targets.target_is_constant`:
  after centring, relative to its own magnitude, so that no offset or scale
  of ``y`` changes a score.
* The tie rule of the model side (all rank comparisons, and the constant test
  of the Pearson ones): model similarities are placed on a grid of step
  2**-42 (about 2.3e-13) and two values tie when they are neighbours in sorted
  order at most ``TIE_GAP`` = 4 grid steps apart (about 9e-13, transitively),
  so that pairs that are mathematically tied (e.g. every pair of a one-map
  embedding) are tied whatever route computed them: round-off is ~1e-15,
  far below the gap, and no rounding boundary can split a tie. Human values
  tie when they are exactly equal. For ``"pearson"`` the rule only decides
  when the model side is constant (all values one tie run -> correlation
  0); otherwise the unrounded values are used.
* A row of embeddings is constant when its centred energy is below 1e-12
  of its raw energy (coefficient of variation below ~1e-6): such rows are
  round-off away from constant in float32/float64 work and get similarity 0.
* Bits do not depend on the batch: every value a kernel returns for one
  candidate is computed from that candidate alone, by element-wise operations
  and row sums in a fixed order (:func:`_row_sum`) or in exact integer
  arithmetic (rank comparisons), never by a matrix product whose kernel
  depends on how many rows it is given. So a dead map's AIS is exactly 0 and
  memory layout, chunk sizes, thread counts and the device (CPU or CUDA) do
  not change a result.

Everything that is evaluated many times (leave-one-out and sweep candidates)
goes through :meth:`TargetVector.correlate`, which handles a ``(B, m)`` batch
of candidate vectors against one target vector.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._targets import target_is_constant

# torch is imported only where a tensor is handled (kernels, CUDA): the metrics and
# every one-off correlation run in NumPy.


def _torch():
    import torch

    return torch


def _is_numpy(x) -> bool:
    return isinstance(x, np.ndarray)


SIMILARITIES = ("pearson", "cosine")
COMPARISONS = ("spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine")
_RANK_COMPARISONS = ("spearman", "kendall_tau_a", "rho_a")

# A row whose centred energy is below this fraction of its raw energy is
# constant up to round-off (float64 cancellation leaves ~1e-16).
REL_EPS = 1e-12
# Model similarities live on a grid of step 2**-42 before ranking: grid index
# ``trunc(c * 2**42 + (2**42 + 1/2))`` (c * 2**42 is exact, so every route, fused
# or not, gets the same bits), and sorted neighbours <= TIE_GAP steps apart tie.
TIE_GRID = 2.0**42
TIE_GAP = 4
# Rows go in blocks of about this many elements (1 MB of float64); a row longer than
# that goes through the element-wise passes in segments of _SEGMENT (256 KB of int64).
_BLOCK_ELEMENTS = 1 << 17
_SEGMENT = 1 << 15
# Where CPU candidates are ranked: "numpy" (sort keys, fastest on CPU) or "torch"
# (the code path CUDA candidates take; selectable on CPU to test it). Same results.
_CPU_SORT = "numpy"


def tie_grid(c):
    """Grid index of model values (numpy or torch, float64): the package's tie rule."""
    g = c * TIE_GRID + (TIE_GRID + 0.5)
    return g.trunc() if hasattr(g, "trunc") else np.trunc(g)  # a tensor, else numpy arrays and scalars


def is_constant_model(values) -> bool:
    """True when all model values form one tie run (see the module docstring)."""
    q = np.sort(tie_grid(np.asarray(values, dtype=np.float64)).ravel())
    return bool(q.size == 0 or (np.diff(q) <= TIE_GAP).all())


def upper_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict upper triangle of an n x n matrix."""
    return np.triu_indices(n, k=1)


def upper_triangle(matrix) -> np.ndarray:
    """Strict upper triangle (diagonal excluded) of a square matrix, row-major."""
    matrix = np.asarray(matrix)
    return matrix[upper_indices(matrix.shape[0])]


def similarity_matrix(embeddings, similarity: str = "pearson") -> np.ndarray:
    """Model similarity matrix of embedding rows.

    Parameters
    ----------
    embeddings : array-like of shape (n_images, n_features)
        One embedding per image.
    similarity : {"pearson", "cosine"}, default="pearson"
        ``"pearson"`` equals ``np.corrcoef(embeddings)`` wherever that is
        defined; ``"cosine"`` is the cosine similarity.

    Returns
    -------
    rsm : ndarray of shape (n_images, n_images)
        Exactly symmetric, float64, unit diagonal. Rows without variance (or
        norm) have similarity 0 to every other row.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import similarity_matrix
    >>> E = np.array([[1., 2., 3.], [2., 4., 7.], [3., 2., 1.]])
    >>> np.allclose(similarity_matrix(E), np.corrcoef(E))
    True
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    En = standardize_rows(np.array(embeddings, dtype=np.float64, order="C", copy=True), center=similarity == "pearson")
    return _mirrored(np.clip(En @ En.T, -1.0, 1.0))


def _mirrored(Z):
    """Upper triangle copied onto the lower one, unit diagonal (numpy or torch, (..., n, n))."""
    if _is_numpy(Z):
        upper = np.triu(Z, 1)
        Z = upper + np.swapaxes(upper, -1, -2)  # x + 0: exact
        np.einsum("...ii->...i", Z)[...] = 1.0
        return Z
    upper = _torch().triu(Z, diagonal=1)
    Z = upper + upper.transpose(-1, -2)
    Z.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return Z


def rsm_torch(E, similarity: str):
    """Batched RSMs.

    Parameters
    ----------
    E : tensor of shape (B, n, D)
        Embeddings (float64).
    similarity : {"pearson", "cosine"}

    Returns
    -------
    Z : tensor of shape (B, n, n)
        Unit diagonal; the lower triangle is a copy of the upper one (a matrix
        product need not give ``Z[i, j]`` and ``Z[j, i]`` the same last bit).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    En = standardize_rows(E, center=similarity == "pearson")
    return _mirrored((En @ En.transpose(-1, -2)).clamp(-1.0, 1.0))


def _row_sum(x, overwrite: bool = False):
    """Sum along the last axis in a fixed pairwise order (any device).

    A tree of element-wise additions: each step adds the second half of the
    remaining elements onto the first. The bits of a row's sum therefore
    depend on that row's values only, not on the number of rows, the memory
    layout, the thread count or the device (``torch.sum`` and matrix-vector
    products pick their kernels, and so their rounding, by shape).

    Parameters
    ----------
    x : ndarray or tensor of shape (..., m)
    overwrite : bool, default=False
        Use ``x`` as the work buffer (it is destroyed).

    Returns
    -------
    s : ndarray or tensor of shape (...)
        NumPy and torch give the same bits (the same additions in the same order).
    """
    width = x.shape[-1]
    copy = (lambda a: a.copy()) if _is_numpy(x) else (lambda a: a.clone())
    if width == 0:
        return np.zeros(x.shape[:-1]) if _is_numpy(x) else x.new_zeros(x.shape[:-1])
    x = x if overwrite else copy(x)
    while width > 1:
        half = width // 2
        x[..., :half] += x[..., half : 2 * half]
        if width % 2:  # the odd last element moves up to join the next step
            x[..., half] = x[..., 2 * half]
        width = half + width % 2
    return copy(x[..., 0])


def rankdata_torch(x):
    """Average ranks (1-based) along the last axis, as ``scipy.stats.rankdata``.

    ``x`` is (B, m). Ties (exactly equal values) get the mean of the ranks they span.
    """
    torch = _torch()
    order = torch.argsort(x, dim=1, stable=True)
    xs = torch.gather(x, 1, order)
    new_run = torch.ones_like(xs, dtype=torch.bool)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    return _average_ranks(order, new_run, x.dtype)


def model_ranks_torch(c):
    """Average ranks of model values (B, m) under the package's tie rule (any device)."""
    torch = _torch()
    q = tie_grid(c)
    order = torch.argsort(q, dim=1, stable=True)
    qs = torch.gather(q, 1, order)
    new_run = torch.ones_like(qs, dtype=torch.bool)
    new_run[:, 1:] = (qs[:, 1:] - qs[:, :-1]) > TIE_GAP
    return _average_ranks(order, new_run, c.dtype)


def _average_ranks(order, new_run, dtype):
    """Ranks from a sorting permutation and the starts of tie runs in sorted order."""
    torch = _torch()
    B, m = order.shape
    pos = torch.arange(m, device=order.device, dtype=dtype).expand(B, m)
    if bool(new_run.all()):
        ranks_sorted = pos + 1
    else:
        run_id = torch.cumsum(new_run, dim=1) - 1
        first = torch.full((B, m), float(m), device=order.device, dtype=dtype)
        first = first.scatter_reduce(1, run_id, pos, reduce="amin", include_self=True)
        last = torch.full((B, m), -1.0, device=order.device, dtype=dtype)
        last = last.scatter_reduce(1, run_id, pos, reduce="amax", include_self=True)
        ranks_sorted = torch.gather((first + last) / 2 + 1, 1, run_id)
    ranks = torch.empty_like(ranks_sorted)
    ranks.scatter_(1, order, ranks_sorted)
    return ranks


def standardize_rows(x, center: bool = True, rel_eps: float = REL_EPS):
    """Centre each row (optionally) and scale it to unit norm (numpy or torch).

    A row whose centred energy is negligible relative to its own magnitude
    (constant up to round-off) or that is all zero becomes 0. Row sums go
    through :func:`_row_sum`: a row's result does not depend on the batch, and
    NumPy and torch give the same bits.

    When squares would overflow (values ~1e200) or underflow (~1e-200), which
    would turn valid rows into "constant" ones, every row is first divided by
    a power of two close to its largest magnitude: exact, so it changes no
    result bit.

    Parameters
    ----------
    x : ndarray or tensor of shape (..., m), float64
    center : bool, default=True
        Subtract each row's mean first (Pearson); else only scale (cosine).
    rel_eps : float, default=1e-12
        Rows whose centred energy is below this fraction of the raw one are 0.

    Returns
    -------
    z : ndarray or tensor like ``x``
    """
    if x.shape[-1] == 0:
        return x
    xp = np if _is_numpy(x) else _torch()
    with np.errstate(over="ignore", under="ignore"):  # detected and rescaled just below
        scale = _row_sum(x * x, overwrite=True)[..., None]
    if bool(((scale < 1e-250) | ~xp.isfinite(scale)).any()):  # rare: squares over/underflow
        peak = np.abs(x).max(axis=-1, keepdims=True) if _is_numpy(x) else x.abs().amax(dim=-1, keepdim=True)
        _, exponent = xp.frexp(peak)
        x = xp.ldexp(x, -exponent)
        scale = _row_sum(x * x, overwrite=True)[..., None]
    if center:
        x = x - _row_sum(x)[..., None] / x.shape[-1]
    sq = _row_sum(x * x, overwrite=True)[..., None]
    alive = (sq > rel_eps * scale) & (sq > 0)
    tiny = np.finfo(np.float64).tiny
    inv = xp.where(alive, 1.0 / xp.sqrt(xp.maximum(sq, xp.full_like(sq, tiny))), xp.zeros_like(sq))
    return x * inv


def standardize_target(values) -> np.ndarray:
    """Observed human values, centred and scaled to unit norm; all 0 when they are constant.

    Centred in two passes (an offset of 1e6 costs no digit); constant by
    the rule of :func:`~sklearn_ais._targets.target_is_constant` (relative
    to the values' own magnitude): a correlation does not depend on an
    offset or a scale, so neither does this rule.

    Parameters
    ----------
    values : ndarray of shape (m,)
        Finite float64 values.

    Returns
    -------
    z : ndarray of shape (m,)
        ``(v - mean) / ||v - mean||``, or zeros (constant, or ``m == 0``).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or target_is_constant(v):
        return np.zeros_like(v)
    x = np.ldexp(v, -np.frexp(np.abs(v).max())[1])  # exact (a power of two); no over/underflow below
    x = x - x.mean()
    x = x - x.mean()  # second pass: the residual mean of the first
    return x / np.sqrt(_row_sum(x[None] * x[None], overwrite=True)[0])


def unit_target(values) -> np.ndarray:
    """Observed human values scaled to unit norm, not centred (the cosine's target); all 0 when they are constant
    (the rule of :func:`standardize_target`, so that every comparison calls the same human blocks undefined)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or target_is_constant(v):
        return np.zeros_like(v)
    x = np.ldexp(v, -np.frexp(np.abs(v).max())[1])  # exact (a power of two); no over/underflow below
    return x / np.sqrt(_row_sum(x[None] * x[None], overwrite=True)[0])


# ---------------------------------------------------------------------------
# Rank comparisons: the human side, prepared once
# ---------------------------------------------------------------------------
class _TargetRanks:
    """Ranks of the observed human values, in the integer forms the rank comparisons use.

    ``dense`` (m,) is the dense rank of each value (0 .. u - 1, equal values
    equal); ``b_of_dense`` (u,) maps a dense rank to ``b = 2 R - (m + 1)``,
    the centred doubled average rank (an integer); ``tied`` says whether any
    two human values are equal (if not, ``b = 2 dense - (m - 1)``).

    Parameters
    ----------
    values : ndarray of shape (m,)
        Observed human values (float64, no NaN).
    """

    def __init__(self, values):
        m = len(values)
        _, dense, counts = np.unique(values, return_inverse=True, return_counts=True)
        start = np.cumsum(counts) - counts
        self.m = m
        self.dense = dense.astype(np.int64).ravel()
        self.dense_u64 = self.dense.view(np.uint64)  # the low bits of the keyed sorter's keys
        self.b_of_dense = 2 * start + counts + 1 - (m + 1)  # 2 * average rank - (m + 1)
        self.tied = bool((counts > 1).any())
        self.bits = max(1, (len(counts) - 1).bit_length())
        # Integer sums reach m^3: int64 while m^3 - m fits, Python integers (exact) beyond.
        self.acc = np.int64 if m**3 - m < 2**63 else object
        b = self.b_of_dense[self.dense].astype(self.acc)
        self.sum_b2 = float((b * b).sum())
        self.tie_pairs = int((counts * (counts - 1) // 2).sum())  # pairs tied on the human side
        self.a = 2 * np.arange(m, dtype=np.int64) - (m - 1)  # centred doubled ranks of sorted positions
        self._on = {}

    def b_of(self, dense):
        """``b`` of dense ranks (numpy or torch, int64)."""
        if not self.tied:
            return 2 * dense - (self.m - 1)
        table = self.b_of_dense if isinstance(dense, np.ndarray) else self.on(dense.device)[2]
        return table[dense]

    def on(self, device):
        """(dense, a, b_of_dense) as tensors on ``device`` (copied once)."""
        key = str(device)
        if key not in self._on:
            torch = _torch()
            self._on[key] = tuple(torch.as_tensor(x, device=device) for x in (self.dense, self.a, self.b_of_dense))
        return self._on[key]

    def full_sum_a2_3(self, nb):
        """(nb,) ``3 sum(a^2) = m^3 - m`` of rows without model ties (``acc`` dtype)."""
        m = self.m
        return np.full(nb, self.acc(m) ** 3 - m if self.acc is np.int64 else m**3 - m, dtype=self.acc)


# ---------------------------------------------------------------------------
# Rank comparisons: sorting a block of candidate rows (three strategies)
# ---------------------------------------------------------------------------
# A sorter ranks a block of nb candidate rows by the model tie rule and exposes,
# for the sorted positions lo..hi of every row: ``dot`` (sum of a_p b_p, exact),
# ``links`` (sorted neighbours that tie), and the dense human ranks in sorted
# order (``dense_full``, ``dense_at``). Inside a run of equal grid indices the
# keyed sort orders by human rank, the others arbitrarily: no statistic below
# depends on the order inside a model tie run.
class _NumpySorted:
    """Shared part of the two CPU sorters: element-wise passes in numpy."""

    def dot(self, lo, hi, target):
        """(nb,) ``sum(a_p b_p)`` over sorted positions lo..hi, int64 (exact: callers bound hi - lo)."""
        d = self.dense(lo, hi)
        b = target.b_of(d) if target.tied else d
        # one row: numpy's 1-D int64 dot is ~2x its (1, k) @ (k,) matmul
        dot = np.dot(b[0], target.a[lo:hi])[None] if len(b) == 1 else b @ target.a[lo:hi]
        return dot if target.tied else 2 * dot  # sum(a) = 0 over a row: b's offset drops out

    def links(self, lo, hi):
        """(rows, p) of sorted neighbours p, p + 1 (lo <= p < hi - 1) that tie under the rule, or None."""
        g = self.grid(lo, hi)
        tie = (g[:, 1:] - g[:, :-1]) <= TIE_GAP
        if not tie.any():
            return None
        row, p = np.nonzero(tie)
        return row, p + lo

    def dense_at(self, rows, pos):
        return self.dense_full()[rows, pos]


class _KeyedSort(_NumpySorted):
    """CPU: each row sorted once as uint64 keys ``(grid - block minimum) << bits | dense human rank``.

    After the sort the keys' low bits are the human ranks in model order (no
    gather) and the high bits the grid indices. The keys fit when the block's
    grid span and the human ranks share 64 bits: always up to m = 2**20 pairs,
    and at THINGS size (m ~ 1.7e6) whenever the block's similarities span
    less than 2 (not both -1 and +1).

    The grid index is truncated in float64 (``np.trunc``) and turned into an
    integer by the bits of ``trunc + 2**52`` (exact below 2**52: the mantissa
    holds the integer), which is 3-4x cheaper than numpy's float -> uint64
    cast; ``- lowest`` is then an integer subtraction. The same integers as
    ``trunc(g - lowest)``: ``lowest`` is an integer at most ``g``.
    """

    def __init__(self, target, cb, lowest, seg, buffers):
        self.nb, m = cb.shape
        self.bits = target.bits
        self.mask = np.uint64((1 << self.bits) - 1)
        self.buffers = buffers  # reused across blocks: no page faults per block
        grid_buf = buffers.grid
        keys = buffers.keys[: self.nb]
        dense = target.dense_u64
        offset = np.uint64(_MAGIC_BITS + int(lowest))  # the bits of 2**52 + lowest
        shift = np.uint64(self.bits)
        for s0 in range(0, m, seg):
            s1 = min(m, s0 + seg)
            g = grid_buf[: self.nb, : s1 - s0]
            np.multiply(cb[:, s0:s1], TIE_GRID, out=g)  # exact (a power of two)
            g += TIE_GRID + 0.5  # as tie_grid; positive
            np.trunc(g, out=g)
            g += _MAGIC  # exact: an integer below 2**52
            k = keys[:, s0:s1]
            np.subtract(g.view(np.uint64), offset, out=k)  # trunc(g) - lowest
            k <<= shift
            k |= dense[s0:s1]
        self.keys = keys
        self._sort()

    def _sort(self):
        """The floor of every rank comparison: one sort per row (numpy's quicksort, or torch's sort
        where it is faster on this machine: see :func:`_long_row_sort`)."""
        if self.nb == 1 and self.keys.shape[1] >= _LONG_ROW and _long_row_sort(self.keys, self.buffers) == "torch":
            self.keys = _torch_sort_row(self.keys, self.buffers)
        else:
            self.keys.sort(axis=1)

    @staticmethod
    def lowest_grid(target, cb, similarities):
        """The block's smallest grid index when its keys fit in 64 bits (values in [-1, 1]), else None."""
        lo = cb.min()
        lowest = tie_grid(lo)
        if similarities and target.bits <= 20:
            return lowest  # similarities within round-off of [-1, 1]: the grid span is below 2**44, no max pass
        hi = cb.max()
        if not similarities and (lo < -1 or hi > 1):
            return None
        return lowest if int(tie_grid(hi) - lowest).bit_length() + target.bits <= 64 else None

    def dense(self, lo, hi):
        out = self.buffers.work_for(self.nb, hi - lo)
        np.bitwise_and(self.keys[:, lo:hi], self.mask, out=out)
        return out.view(np.int64)

    def links(self, lo, hi):
        """As the base class, without unpacking the grid in the common case: sorted neighbours whose
        keys differ by at least ``(TIE_GAP + 1) << bits`` are more than TIE_GAP grid steps apart."""
        k = self.keys[:, lo:hi]
        if k.shape[1] < 2:
            return None
        gaps = self.buffers.work_for(self.nb, k.shape[1] - 1)
        np.subtract(k[:, 1:], k[:, :-1], out=gaps)
        if gaps.min() >= np.uint64((TIE_GAP + 1) << self.bits):
            return None
        return super().links(lo, hi)

    def grid(self, lo, hi):
        return (self.keys[:, lo:hi] >> np.uint64(self.bits)).view(np.int64)

    def dense_full(self):
        return (self.keys & self.mask).view(np.int64)  # a fresh array (Kendall keeps it)

    def dense_at(self, rows, pos):
        flat = self.keys.reshape(-1)  # a contiguous slice of the buffer
        return (flat[rows * self.keys.shape[1] + pos] & self.mask).view(np.int64)


class _KeyBuffers:
    """Work buffers of the keyed sorter, allocated once per correlate call and reused by its blocks.

    ``grid`` (nb, seg) float64 for the element-wise passes, ``keys`` (nb, m) uint64; ``work``
    (uint64, for the masked human ranks and the neighbour gaps of the tallies) and torch's sort
    outputs are allocated on first use.
    """

    def __init__(self, nb, seg, m):
        self.grid = np.empty((nb, seg))
        self.keys = np.empty((nb, m), dtype=np.uint64)
        self.work = None
        self.sorted = None

    def work_for(self, nb, width):
        """A (nb, width) uint64 view of the work buffer, grown when too small."""
        have = (0, 0) if self.work is None else self.work.shape
        if have[0] < nb or have[1] < width:
            self.work = np.empty((max(nb, have[0]), max(width, have[1])), dtype=np.uint64)
        return self.work[:nb, :width]


# Rows at least this long (one row per block) may be sorted by torch instead of numpy.
_LONG_ROW = 1 << 18
# "auto": the faster of numpy's and torch's sort on this machine, timed once per process on the
# first long row (numpy's AVX-512 quicksort is ~5x slower than its AVX2 one on AMD Zen 4, where
# torch's sort wins; on other machines numpy's wins); or "numpy" / "torch". Same results (a
# sorted array of integers is unique).
_KEY_SORT = "auto"
_KEY_SORT_CHOICE = {}
_MAGIC = 2.0**52
_MAGIC_BITS = 0x4330000000000000  # the bits of 2.0**52


def _long_row_sort(keys=None, buffers=None):
    """"numpy" or "torch": the sort of long rows of keys (see ``_KEY_SORT``). Under "auto" the first
    long row (``keys``, (1, m)) is sorted both ways, twice, interleaved (a passing load hits both
    alike), and the faster sort is kept for the process."""
    if _KEY_SORT != "auto":
        return _KEY_SORT
    if "choice" not in _KEY_SORT_CHOICE:
        if keys is None:
            return "numpy"
        import time

        times = {"numpy": [], "torch": []}
        for _ in range(2):
            for name, taken in times.items():
                probe = keys.copy()
                t0 = time.perf_counter()
                if name == "numpy":
                    probe.sort(axis=1)
                else:
                    _torch_sort_row(probe, buffers)
                taken.append(time.perf_counter() - t0)
        # torch only for a clear win (numpy sorts in place; torch writes values and indices)
        _KEY_SORT_CHOICE["choice"] = "torch" if min(times["torch"]) < 0.9 * min(times["numpy"]) else "numpy"
        _KEY_SORT_CHOICE["times"] = {k: min(v) for k, v in times.items()}
    return _KEY_SORT_CHOICE["choice"]


def _torch_sort_row(keys, buffers):
    """Sorted copy of a (1, m) uint64 row by ``torch.sort`` (int64: keys with the top bit set sort
    first there, so the two runs are swapped back into unsigned order). Returns a (1, m) array."""
    torch = _torch()
    m = keys.shape[1]
    if buffers.sorted is None or buffers.sorted[0].shape[0] != m:
        buffers.sorted = (torch.empty(m, dtype=torch.int64), torch.empty(m, dtype=torch.int64), np.empty((1, m), np.uint64))
    values, indices, out = buffers.sorted
    torch.sort(torch.from_numpy(keys[0].view(np.int64)), out=(values, indices))
    v = values.numpy().view(np.uint64)
    negative = int(np.searchsorted(values.numpy(), 0))  # keys >= 2**63, sorted first as int64
    if negative == 0:
        return v[None]
    out[0, : m - negative] = v[negative:]
    out[0, m - negative :] = v[:negative]
    return out


class _ArgSort(_NumpySorted):
    """CPU fallback (keys do not fit, or values outside [-1, 1]): argsort of the grid, then gathers."""

    def __init__(self, target, cb):
        self.nb = cb.shape[0]
        q = tie_grid(cb)
        order = np.argsort(q, axis=1)
        self.q = np.take_along_axis(q, order, axis=1)
        self.d = target.dense[order]

    def dense(self, lo, hi):
        return self.d[:, lo:hi]

    def grid(self, lo, hi):
        return self.q[:, lo:hi]

    def dense_full(self):
        return self.d


class _TorchSort:
    """Any device (the CUDA path): ``torch.sort`` of the grid, batched over the block's rows.

    ``dot`` sums int64 products in segments short enough never to overflow:
    the same integers as the CPU sorters, so the same results bit for bit.
    """

    def __init__(self, target, c):
        self.nb, m = c.shape
        self.q, order = _torch().sort(tie_grid(c), dim=1)
        dense, self.a, _ = target.on(c.device)
        self.d = dense[order]
        self.seg = max(1, min(m, 2**62 // max(1, 2 * m * m)))  # |sum over a segment| < 2**62

    def dot(self, lo, hi, target):
        out = np.zeros(self.nb, dtype=target.acc)
        for s0 in range(lo, hi, self.seg):
            s1 = min(hi, s0 + self.seg)
            part = (target.b_of(self.d[:, s0:s1]) * self.a[s0:s1]).sum(dim=1)
            out = out + part.cpu().numpy().astype(target.acc)
        return out

    def links(self, lo, hi):
        g = self.q[:, lo:hi]
        tie = (g[:, 1:] - g[:, :-1]) <= TIE_GAP
        if not bool(tie.any()):
            return None
        row, p = _torch().nonzero(tie, as_tuple=True)
        return row.cpu().numpy(), p.cpu().numpy() + lo

    def dense_full(self):
        return self.d

    def dense_at(self, rows, pos):
        dev, torch = self.d.device, _torch()
        return self.d[torch.as_tensor(rows, device=dev), torch.as_tensor(pos, device=dev)].cpu().numpy()


def _rank_tallies(sorter, target, seg):
    """Spearman's integer sums for a sorted block.

    With ``a_p = 2 p - (m - 1)`` (centred doubled ranks of sorted positions)
    and ``b`` the same for the human values, ``dot = sum(a b)`` over the
    model's average ranks and ``sum_a2_3 = 3 sum(a^2)``. A model tie run over
    sorted positions f..l gives its elements ``a = f + l - (m - 1)`` and lowers
    ``3 sum(a^2)`` by ``L^3 - L`` (L = l - f + 1), as ``scipy.stats.rankdata``
    + Pearson would.

    Returns
    -------
    dot, sum_a2_3 : ndarray of shape (nb,)
        Exact integers (``target.acc``).
    runs : tuple of ndarray or None
        ``(row, p)`` of the tie links (sorted neighbours p and p + 1 tie),
        sorted by row then p; None without model ties.
    """
    m = target.m
    dot = np.zeros(sorter.nb, dtype=target.acc)
    link_rows, link_pos = [], []
    for s0 in range(0, m, seg):
        s1 = min(m, s0 + seg)
        dot += np.asarray(sorter.dot(s0, s1, target)).astype(target.acc)
        found = sorter.links(max(s0 - 1, 0), s1)
        if found is not None:
            link_rows.append(found[0])
            link_pos.append(found[1])
    sum_a2_3 = target.full_sum_a2_3(sorter.nb)
    runs = None
    if link_rows:  # segments in order, one row per block when there are several: sorted by (row, p)
        runs = _tie_runs(np.concatenate(link_rows), np.concatenate(link_pos))
        _correct_ties(dot, sum_a2_3, runs, sorter, target)
    return dot, sum_a2_3, runs


def _tie_runs(row, p):
    """Runs of consecutive tie links (sorted by row, then p): (row, first, last sorted position) per run."""
    new = np.ones(len(p), dtype=bool)  # a link starts a new run unless it continues the previous one
    new[1:] = (row[1:] != row[:-1]) | (p[1:] != p[:-1] + 1)
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(p)] - 1
    return row[starts], p[starts], p[ends] + 1


def _run_elements(first, count):
    """Positions ``first[r] + 0 .. first[r] + count[r] - 1`` of every run r, and each one's run index."""
    run = np.repeat(np.arange(len(first)), count)
    return run, first[run] + (np.arange(len(run)) - np.repeat(np.cumsum(count) - count, count))


def _sum_by_row(values, row, out):
    """``out[row[i]] += values[i]`` for ``row`` sorted (exact integer sums)."""
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    out[row[starts]] += np.add.reduceat(values, starts)


def _correct_ties(dot, sum_a2_3, runs, sorter, target):
    """Average ranks over the model tie runs: ``dot`` gains ``sum((f + l - 2p) b_p)`` per run,
    ``3 sum(a^2)`` loses ``L^3 - L``."""
    run_row, first, last = runs
    length = last - first + 1
    elem_run, elem_pos = _run_elements(first, length)
    b = target.b_of(np.asarray(sorter.dense_at(run_row[elem_run], elem_pos)))
    contrib = ((first[elem_run] + last[elem_run] - 2 * elem_pos) * b).astype(dot.dtype)  # |sum| <= m^3 per run
    _sum_by_row(np.add.reduceat(contrib, np.cumsum(length) - length), run_row, dot)
    length = length.astype(sum_a2_3.dtype)  # Python integers for the longest rows: L^3 overflows int64
    _sum_by_row(-(length**3 - length), run_row, sum_a2_3)


# ---------------------------------------------------------------------------
# Kendall's tau-a: discordant pairs by merge levels (numpy or torch)
# ---------------------------------------------------------------------------
def _inversions(d, bits):
    """Strict inversions (pairs p < q with d_p > d_q) of each row of ``d`` (nb, m), exact.

    Bottom-up merge levels, each one sort: at level L the rows are sorted
    within blocks of 2**L, and sorting the keys ``block << (bits + L + 1) |
    d << (L + 1) | local position`` merges pairs of blocks. A right-half
    element that moves from local position o to p' passes exactly o - p'
    larger left-half elements (equal ones stay in front: ties are not
    inversions); left-half elements only move right. O(m log m) per row,
    vectorised over the rows; keys need log2(m) + bits <= 63 bits.

    Parameters
    ----------
    d : int64 ndarray or tensor of shape (nb, m)
        Non-negative values below ``2**bits``.
    bits : int

    Returns
    -------
    inversions : int64 ndarray of shape (nb,)
    """
    numpy_side = isinstance(d, np.ndarray)
    torch = None if numpy_side else _torch()
    m = d.shape[1]
    pos = np.arange(m, dtype=np.int64) if numpy_side else torch.arange(m, device=d.device)
    total = np.zeros(d.shape[0], dtype=np.int64)
    s, shift = d, 1
    while (1 << (shift - 1)) < m:
        local = pos & ((1 << shift) - 1)
        keys = ((pos >> shift) << (bits + shift)) | (s << shift) | local
        keys = np.sort(keys, axis=1) if numpy_side else torch.sort(keys, dim=1).values
        moved = (keys & ((1 << shift) - 1)) - local
        passed = (moved * (moved > 0)).sum(1)
        total += passed if numpy_side else passed.cpu().numpy()
        s = (keys >> shift) & ((1 << bits) - 1)
        shift += 1
    return total


def _order_runs(sub, local_row, first, length, bits):
    """Human ranks ascending inside each model tie run of rows ``sub`` (numpy, (r, m)).

    Returns the reordered rows and, per row, the pairs tied on both sides
    (equal human rank inside one model run).
    """
    nr, m = sub.shape
    starts = np.ones((nr, m), dtype=bool)  # first element of each run (and every singleton)
    inner_run, inner = _run_elements(first + 1, length - 1)
    starts[local_row[inner_run], inner] = False
    pos = np.arange(m, dtype=np.int64)
    run_start = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    keys = np.sort((run_start << bits) | sub, axis=1)
    new_group = np.ones((nr, m), dtype=bool)
    new_group[:, 1:] = keys[:, 1:] != keys[:, :-1]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0), axis=1)
    return keys & ((1 << bits) - 1), (pos - group_start).sum(axis=1)  # groups of g: 0 + 1 + .. + g - 1


def _kendall_counts(sorter, runs, target):
    """Per row of a sorted block: (model tie pairs, joint tie pairs, discordant pairs).

    Inside a model tie run the human ranks are first put in ascending order
    (the sorter orders a run by grid index), so that no pair inside a run
    counts as discordant.
    """
    d = sorter.dense_full()
    model_ties = np.zeros(sorter.nb, dtype=np.int64)
    joint = np.zeros(sorter.nb, dtype=np.int64)
    if runs is not None:  # rows with model ties: rare, done on the host
        run_row, first, last = runs
        length = last - first + 1
        _sum_by_row(length * (length - 1) // 2, run_row, model_ties)
        rows = np.unique(run_row)
        on_host = isinstance(d, np.ndarray)
        torch = None if on_host else _torch()
        sub = d[rows] if on_host else d[torch.as_tensor(rows, device=d.device)].cpu().numpy()
        sub, joint[rows] = _order_runs(sub, np.searchsorted(rows, run_row), first, length, target.bits)
        d = d.copy() if on_host else d.clone()
        if on_host:
            d[rows] = sub
        else:
            d[torch.as_tensor(rows, device=d.device)] = torch.as_tensor(sub, device=d.device)
    return model_ties, joint, _inversions(d, target.bits)


# ---------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------
class TargetVector:
    """A human vector prepared once for many comparisons.

    Parameters
    ----------
    values : array-like of shape (m_full,)
        Human values; NaN marks a missing entry.
    comparison : str
        One of ``COMPARISONS``.
    device : str or torch.device, default="cpu"
        Where tensor candidates are compared.
    similarities : bool, default=False
        The candidates are model similarities (in [-1, 1] up to round-off):
        no range check.

    Attributes
    ----------
    mask : ndarray of bool, shape (m_full,)
        Observed entries.
    n_observed : int
    prepared : ndarray of shape (n_observed,)
        Standardized values (Pearson comparisons) or standardized ranks.
    is_constant : bool
    """

    def __init__(self, values, comparison: str, device="cpu", similarities=False):
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
        values = np.asarray(values, dtype=np.float64)
        self.mask = ~np.isnan(values)
        self.comparison = comparison
        self.similarities = similarities
        self.device = device
        self.n_observed = int(self.mask.sum())
        observed = values[self.mask]
        self.ranks = None
        if comparison in _RANK_COMPARISONS:
            from scipy.stats import rankdata

            self.ranks = _TargetRanks(observed)
            observed = rankdata(observed)
        self.prepared = (unit_target(observed) if comparison == "cosine"
                         else standardize_target(observed))
        self.is_constant = bool((self.prepared == 0).all())
        self._tensors = {}

    def _on(self, device):
        """(mask, prepared) as tensors on ``device`` (copied once)."""
        key = str(device)
        if key not in self._tensors:
            torch = _torch()
            self._tensors[key] = (torch.as_tensor(self.mask, device=device),
                                  torch.as_tensor(self.prepared, device=device))
        return self._tensors[key]

    def correlate(self, candidates):
        """Comparison of each row of ``candidates`` with the target.

        Parameters
        ----------
        candidates : ndarray or tensor of shape (B, m_full)
            Model values; only the observed entries are used. NumPy arrays are
            compared in NumPy (no torch needed), tensors on their device.

        Returns
        -------
        r : ndarray or tensor of shape (B,), float64
            Of the candidates' kind (and device). A row's value depends on that
            row alone (not on B, the layout or the device).
        """
        numpy_in = _is_numpy(candidates)
        c = candidates
        if not bool(self.mask.all()):
            c = c[:, self.mask] if numpy_in else c[:, self._on(c.device)[0]]
        c = c.astype(np.float64, copy=False) if numpy_in else c.to(_torch().float64)
        if c.shape[1] == 0:  # no observed entry: nothing to correlate (callers report it)
            return np.zeros(c.shape[0]) if numpy_in else c.new_zeros(c.shape[0])
        if self.is_constant:  # a constant human side (e.g. a held-out block): undefined, whatever the model
            return np.full(c.shape[0], np.nan) if numpy_in else c.new_full((c.shape[0],), float("nan"))
        if self.comparison in _RANK_COMPARISONS:
            out = self._rank_compare(c)
            return out if numpy_in else _torch().from_numpy(out).to(device=c.device, dtype=c.dtype)
        if self.comparison == "cosine":
            return self._cosine(c)
        r = self._pearson(c)
        return r * r if self.comparison == "pearson_r2" else r

    def _pearson(self, c):
        """Pearson's r per row; a row whose values form one tie run is constant (0)."""
        # Any spread larger than one tie run is information, however small (model
        # similarities near 1 may differ only in the 8th decimal).
        q = tie_grid(c)
        numpy_in = _is_numpy(c)
        if numpy_in:
            constant = (q.max(axis=1, keepdims=True) - q.min(axis=1, keepdims=True)) <= TIE_GAP * (c.shape[1] - 1)
        else:
            constant = (q.amax(dim=1, keepdim=True) - q.amin(dim=1, keepdim=True)) <= TIE_GAP * (c.shape[1] - 1)
        if bool(constant.any()):  # spread small enough to be one run: check in sorted order
            rows = constant.ravel().copy() if numpy_in else constant.flatten().clone()
            qs = np.sort(q[rows], axis=1) if numpy_in else _torch().sort(q[rows], dim=1).values
            constant[rows] = ((qs[:, 1:] - qs[:, :-1]) <= TIE_GAP).all(1)[:, None]
        xp = np if numpy_in else _torch()
        z = xp.where(constant, xp.zeros_like(c), standardize_rows(c, rel_eps=0.0))
        prepared = self.prepared if numpy_in else self._on(c.device)[1]
        r = _row_sum(z * prepared, overwrite=True)
        return np.clip(r, -1.0, 1.0) if numpy_in else r.clamp(-1.0, 1.0)

    def _cosine(self, c):
        """Cosine of each row with the target (a zero row: 0)."""
        prepared = self.prepared if _is_numpy(c) else self._on(c.device)[1]
        r = _row_sum(standardize_rows(c, center=False, rel_eps=0.0) * prepared, overwrite=True)
        return np.clip(r, -1.0, 1.0) if _is_numpy(c) else r.clamp(-1.0, 1.0)

    def _rank_compare(self, c) -> np.ndarray:
        """Rank comparisons in exact integer arithmetic, block by block (rows of ~1 MB)."""
        B, m = c.shape
        torch_path = not _is_numpy(c) and (c.device.type != "cpu" or _CPU_SORT == "torch")
        if torch_path:
            step, seg = max(1, (_BLOCK_ELEMENTS << 6) // m), m
        else:
            step = max(1, _BLOCK_ELEMENTS // m)
            seg = m if step > 1 else _SEGMENT  # long rows: element-wise passes by L2-sized segments
            cn = c if _is_numpy(c) else c.numpy()
            buffers = _KeyBuffers(min(step, B), min(seg, m), m)
        out = np.empty(B)
        for a0 in range(0, B, step):
            if torch_path:
                sorter = _TorchSort(self.ranks, c[a0 : a0 + step])
            else:
                cb = cn[a0 : a0 + step]
                lowest = _KeyedSort.lowest_grid(self.ranks, cb, self.similarities)
                if lowest is not None:
                    sorter = _KeyedSort(self.ranks, cb, lowest, seg, buffers)
                else:
                    sorter = _ArgSort(self.ranks, cb)
            out[a0 : a0 + step] = self._finish(sorter, m, seg)
        return np.clip(out, -1.0, 1.0)

    def _finish(self, sorter, m, seg) -> np.ndarray:
        """The comparison's value for each row of a sorted block."""
        t = self.ranks
        dot, sum_a2_3, runs = _rank_tallies(sorter, t, seg)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.comparison == "spearman":
                sum_a2 = (sum_a2_3 // 3).astype(np.float64)  # exact integer division, one rounding
                den = np.sqrt(sum_a2 * t.sum_b2)
                return np.where(den > 0, dot.astype(np.float64) / den, 0.0)  # one run: constant -> 0
            if self.comparison == "rho_a":  # 12 sum(dx dy) / (m^3 - m) = 3 dot / (m^3 - m)
                return np.asarray(3 * dot, dtype=np.float64) / float(m**3 - m) if m > 1 else np.zeros(len(dot))
        model_ties, joint, discordant = _kendall_counts(sorter, runs, t)
        total = m * (m - 1) // 2
        if total == 0:
            return np.zeros(len(dot))
        return (total - model_ties - t.tie_pairs + joint - 2 * discordant) / total


def _real_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    try:
        # A fresh C-ordered copy: torch picks its kernels by strides, so the same
        # values give the same bits only in the same layout.
        return np.array(arr, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}") from exc


def batched_correlation(candidates, target, comparison: str = "spearman") -> np.ndarray:
    """Correlation of each row of ``candidates`` with ``target`` (NaN = missing).

    Parameters
    ----------
    candidates : array-like of shape (n_candidates, m)
        Finite wherever ``target`` is observed. A constant row correlates 0
        (it carries no information; see the module docstring).
    target : array-like of shape (m,)
        NaN marks a missing entry. At least 3 observed entries, not all
        equal, and no +/-inf.
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}
        See the module docstring.

    Returns
    -------
    r : ndarray of shape (n_candidates,)

    Raises
    ------
    ValueError
        Mismatched shapes, non-finite candidates, an infinite, (nearly)
        empty or constant target: the correlation would be undefined.
    """
    candidates, target = _check_correlation_inputs(candidates, target, "candidates", "target")
    return TargetVector(target, comparison).correlate(candidates)


def _check_correlation_inputs(candidates, target, cname, tname):
    target = _real_array(target, tname)
    candidates = _real_array(candidates, cname)
    if target.ndim != 1:
        raise ValueError(f"{tname} must be 1-D, got shape {target.shape}")
    if candidates.ndim != 2 or candidates.shape[1] != target.shape[0]:
        raise ValueError(f"{cname} must have {target.shape[0]} entries to match {tname}, got shape {candidates.shape}")
    if np.isinf(target).any():
        raise ValueError(f"{tname} contains +/-inf; use NaN to mark a missing entry")
    observed = ~np.isnan(target)
    if observed.sum() < 3:
        raise ValueError(f"{tname} has {int(observed.sum())} observed (non-NaN) entries; at least 3 are needed")
    if target_is_constant(target[observed]):
        raise ValueError(f"{tname} is constant over its observed entries: the correlation is undefined")
    if not np.isfinite(candidates[:, observed]).all():
        raise ValueError(f"{cname} contains NaN or inf where {tname} is observed")
    return candidates, target


def correlation(a, b, comparison: str = "spearman") -> float:
    """Correlation of two vectors, ignoring positions where ``b`` is NaN.

    Parameters
    ----------
    a : array-like of shape (m,)
        Model side; finite where ``b`` is observed. Values off the
        similarity scale (largest magnitude above 1 or below 2**-20, e.g.
        distances or a matrix in small units) are first brought to it by an
        affine map, which changes no comparison, so that the tie rule is
        relative to their spread; a constant ``a`` (all values one tie run)
        gives NaN, with a warning (scipy's answer for a constant input).
    b : array-like of shape (m,)
        Human side; at least 3 observed entries that are not all equal
        (else ``ValueError``).
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}

    Returns
    -------
    r : float
    """
    a = _real_array(a, "a (model side)")
    if a.ndim != 1:
        raise ValueError(f"a (model side) must be 1-D, got shape {a.shape}")
    a2, b = _check_correlation_inputs(a[None], b, "a (model side)", "b (human side)")
    observed = ~np.isnan(b)
    if comparison == "cosine":  # the angle of the values as given: no rescaling, only a zero vector has none
        if not np.any(a2[0, observed]):
            warnings.warn("the model side is zero over the observed pairs: its cosine is undefined (NaN)", UserWarning,
                          stacklevel=2)
            return float("nan")
        return float(TargetVector(b, comparison).correlate(a2)[0])
    a2 = _on_similarity_scale(a2, observed)
    if a2 is None or is_constant_model(a2[0, observed]):
        warnings.warn(
            "the model side is constant over the observed pairs: the correlation is undefined (NaN)",
            UserWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(TargetVector(b, comparison).correlate(a2)[0])


def _on_similarity_scale(a, observed):
    """Model values ``a`` (1, m) mapped affinely onto [-1, 1] when they are off the similarity scale.

    Values whose largest magnitude is in [2**-20, 1 + 1e-9] are returned unchanged (the tie rule of
    model similarities applies as it is). Others are centred on their mid-range and divided by their
    half-range; ``None`` when that half-range is round-off of their magnitude (constant).
    """
    obs = a[0, observed]
    peak = float(np.abs(obs).max()) if obs.size else 0.0
    if obs.size == 0 or 2.0**-20 <= peak <= 1 + 1e-9 or peak == 0:
        return a
    lo, hi = float(obs.min()), float(obs.max())
    half = (hi - lo) / 2
    if half <= TIE_GAP / TIE_GRID * peak:
        return None
    return (a - (lo + half)) / half


# ---------------------------------------------------------------------------
# Odd-one-out triplets: a comparison of the model's pair similarities with human choices
# ---------------------------------------------------------------------------
# Candidates of (rows x triplets x 3) elements scored at once: 48 MB of float64.
_TRIPLET_BLOCK = 1 << 21


def triplet_scores(s, comparison: str, temperature: float = 1.0):
    """Scores of candidates' similarities ``s`` (B, N, 3) of N triplets: the human pair first.

    ``"odd_one_out"``: the fraction of triplets whose most similar pair (model)
    is the human pair, a tie for that pair (the tie rule of the module
    docstring) counting as wrong. ``"triplet_log_likelihood"``: the mean log
    probability of the human pair under a softmax over the three similarities
    divided by ``temperature`` (gLocal's global loss, negated). A row's value
    depends on that row alone (fixed-order sums).

    Parameters
    ----------
    s : ndarray or tensor of shape (B, N, 3)
    comparison : {"odd_one_out", "triplet_log_likelihood"}
    temperature : float, default=1.0

    Returns
    -------
    scores : ndarray or tensor of shape (B,), float64
    """
    return _triplet_scores3(s[..., 0], s[..., 1], s[..., 2], comparison, temperature)


# Two similarities whose difference exceeds (TIE_GAP + 1.5) grid steps are surely not tied on the grid, and
# those within (TIE_GAP - 1.5) steps surely are (the grid index is a floor of c * 2**42 up to 2**-10): only the
# differences in between are placed on the grid.
_SURE_APART = (TIE_GAP + 1.5) / TIE_GRID
_SURE_TIED = (TIE_GAP - 1.5) / TIE_GRID


def _beats(s0, s1):
    """``s0`` exceeds ``s1`` by more than a tie (the module's tie rule), element-wise."""
    d = s0 - s1
    out = d > _SURE_APART
    unsure = (d > _SURE_TIED) & ~out
    if bool(unsure.any()):
        out[unsure] = (tie_grid(s0[unsure]) - tie_grid(s1[unsure])) > TIE_GAP
    return out


def _triplet_scores3(s0, s1, s2, comparison, temperature):
    """:func:`triplet_scores` on the three pairs' similarities, (B, N) each: the human pair's, then the others."""
    numpy_in = _is_numpy(s0)
    N = s0.shape[1]
    if N == 0:
        return np.zeros(s0.shape[0]) if numpy_in else s0.new_zeros(s0.shape[0])
    if comparison == "odd_one_out":
        right = _beats(s0, s1) & _beats(s0, s2)
        return right.sum(axis=1) / N if numpy_in else right.sum(dim=1).double() / N
    if comparison != "triplet_log_likelihood":
        raise ValueError(f"comparison must be one of ('odd_one_out', 'triplet_log_likelihood'), got {comparison!r}")
    z0, z1, z2 = s0 / temperature, s1 / temperature, s2 / temperature
    xp = np if numpy_in else _torch()
    top = xp.maximum(xp.maximum(z0, z1), z2)
    lse = top + xp.log(xp.exp(z0 - top) + xp.exp(z1 - top) + xp.exp(z2 - top))
    return _row_sum(z0 - lse, overwrite=True) / N


def _gather_columns(c, cols):
    """``c[:, cols]`` for a (B, m) array or tensor and int64 ``cols`` (NumPy's take on the CPU: ~10x torch's)."""
    if _is_numpy(c):
        return np.take(c, cols, axis=1)
    torch = _torch()
    if c.device.type == "cpu":
        return torch.from_numpy(np.take(c.numpy(), cols, axis=1))
    return torch.index_select(c, 1, torch.as_tensor(cols, device=c.device))


class TripletTarget:
    """Human odd-one-out choices prepared once for many candidates (the triplet counterpart of :class:`TargetVector`).

    Parameters
    ----------
    triplets : ndarray of shape (N, 3), int
        Canonical rows ``(a, b, odd)`` over ``n`` images.
    n : int
        Number of images (candidates' upper triangles have ``n (n - 1) / 2`` entries).
    comparison : {"odd_one_out", "triplet_log_likelihood"}
    temperature : float, default=1.0
    device : str or torch.device, default="cpu"

    Attributes
    ----------
    pair_i, pair_j : ndarray of int, shape (P,)
        The distinct pairs the triplets touch (``pair_i < pair_j``), in upper-triangle order.
    positions : ndarray of int, shape (P,)
        Their positions in the strict upper triangle.
    slots : ndarray of int, shape (N, 3)
        Each triplet's three pairs, as indices into the touched pairs: (a, b), (a, odd), (b, odd).
    """

    def __init__(self, triplets, n, comparison, temperature=1.0, device="cpu"):
        from ._triplets import TRIPLET_COMPARISONS

        if comparison not in TRIPLET_COMPARISONS:
            raise ValueError(f"comparison must be one of {TRIPLET_COMPARISONS}, got {comparison!r}")
        T = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
        self.triplets, self.n = T, int(n)
        self.comparison, self.temperature, self.device = comparison, float(temperature), device
        self.n_full = self.n * (self.n - 1) // 2
        a, b, o = T.T
        first = np.stack([np.minimum(a, b), np.minimum(a, o), np.minimum(b, o)], axis=1)
        second = np.stack([np.maximum(a, b), np.maximum(a, o), np.maximum(b, o)], axis=1)
        pos = first * self.n - first * (first + 1) // 2 + (second - first - 1)
        # Triplets in the order of their first pair in memory: the gathers then read nearby entries (the sums
        # are over all triplets, so the order changes no count).
        order = np.argsort(pos.min(axis=1), kind="stable")
        T, pos = T[order], pos[order]
        self.triplets = T
        self.positions, inverse = np.unique(pos, return_inverse=True)
        self.slots = inverse.reshape(T.shape)
        self.slots_full = pos  # the same, as positions in the full upper triangle (one gather from full rows)
        self._columns = {name: [np.ascontiguousarray(getattr(self, name)[:, k]) for k in range(3)]
                         for name in ("slots", "slots_full")}
        # the row and column of each touched position (positions are row-major over the upper triangle)
        starts = np.arange(self.n) * self.n - np.arange(self.n) * (np.arange(self.n) + 1) // 2
        self.pair_i = np.searchsorted(starts, self.positions, side="right") - 1
        self.pair_j = self.positions - starts[self.pair_i] + self.pair_i + 1
        self.n_observed = len(T)
        self.is_constant = False

    @property
    def n_pairs(self) -> int:
        return len(self.positions)

    @property
    def sparse(self) -> bool:
        """The triplets touch at most a third of the pairs: only those are worth computing."""
        return 3 * self.n_pairs <= self.n_full

    def correlate(self, candidates):
        """Score of each candidate: rows of all ``n (n - 1) / 2`` pair similarities, or of the touched pairs only.

        Parameters
        ----------
        candidates : ndarray or tensor of shape (B, n_full) or (B, n_pairs)

        Returns
        -------
        scores : ndarray or tensor of shape (B,), float64
        """
        numpy_in = _is_numpy(candidates)
        c = candidates
        if c.shape[1] not in (self.n_pairs, self.n_full):
            raise ValueError(f"candidates have {c.shape[1]} entries; expected {self.n_full} (all pairs) or "
                             f"{self.n_pairs} (the pairs the triplets touch)")
        cols = self._columns["slots" if c.shape[1] == self.n_pairs else "slots_full"]  # equal if every pair is touched
        step = max(1, _TRIPLET_BLOCK // max(1, 3 * len(self.triplets)))
        parts = []
        for a0 in range(0, c.shape[0], step):
            block = c[a0:a0 + step]
            parts.append(_triplet_scores3(*(_gather_columns(block, k) for k in cols), self.comparison,
                                          self.temperature))
        return np.concatenate(parts) if numpy_in else _torch().cat(parts)

    def row_target(self, t, base_pairs, others=None) -> "_TripletRowTarget":
        """The triplets that contain image ``t``, scored from candidate rows of ``t``'s similarities.

        Parameters
        ----------
        t : int
        base_pairs : ndarray or tensor of shape (n_pairs,)
            Unablated similarities of the touched pairs (the pairs without ``t`` keep them).
        others : ndarray of int, optional
            The columns of a candidate row (default: all ``n`` images, ``t`` included).
        """
        return _TripletRowTarget(self, t, base_pairs, others)


class _TripletRowTarget:
    """Triplets containing image t; ``correlate(Z)`` takes rows (B, m) of t's similarities to ``others``."""

    def __init__(self, target, t, base_pairs, others):
        T = target.triplets
        rows = np.flatnonzero((T == t).any(axis=1))
        self.comparison, self.temperature = target.comparison, target.temperature
        self.n_observed = len(rows)
        a, b, o = T[rows].T
        slots = target.slots[rows]
        pairs = ((a, b), (a, o), (b, o))
        col = np.full((len(rows), 3), -1, dtype=np.int64)
        n = target.n
        where = np.arange(n) if others is None else np.full(n, -1, dtype=np.int64)
        if others is not None:
            where[np.asarray(others)] = np.arange(len(others))
        for s, (x, y) in enumerate(pairs):
            col[:, s] = np.where(x == t, where[y], np.where(y == t, where[x], -1))
        self.col, self.fixed = col, col < 0
        self.base = base_pairs[slots] if len(rows) else base_pairs[:0].reshape(0, 3)

    def correlate(self, Z):
        numpy_in = _is_numpy(Z)
        if numpy_in:
            s = np.where(self.fixed[None], self.base[None], Z[:, np.maximum(self.col, 0)])
        else:
            torch = _torch()
            col = torch.as_tensor(np.maximum(self.col, 0), device=Z.device)
            fixed = torch.as_tensor(self.fixed, device=Z.device)
            base = torch.as_tensor(self.base, device=Z.device, dtype=Z.dtype)
            s = torch.where(fixed[None], base[None], Z[:, col])
        return triplet_scores(s, self.comparison, self.temperature)
