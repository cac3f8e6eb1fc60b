"""Similarity matrices, upper triangles and (masked, batched) correlations.

Conventions used throughout the package:

* A model representational similarity matrix (RSM) is built from embedding
  rows. ``"pearson"`` is the Pearson correlation of two rows (``np.corrcoef``),
  ``"cosine"`` the cosine of the angle between them. A row with zero variance
  (Pearson) or zero norm (cosine) carries no information: its similarity to
  every other row is defined as 0 (``np.corrcoef`` would return NaN).
* Two matrices are compared on their strict upper triangles (diagonal
  excluded). Human pairs that are NaN are missing and are ignored.
* ``"spearman"`` uses average ranks for ties, exactly as
  :func:`scipy.stats.spearmanr`. When either side is constant the
  correlation is undefined; for a *model* side we return 0 (no information),
  the human side is validated to be non-constant before any work starts.
  Model similarities are placed on a grid of step 2**-42 (about 2.3e-13)
  and two values tie when they are neighbours in sorted order at most
  ``TIE_GAP`` = 4 grid steps apart (about 9e-13, transitively), so that
  pairs that are mathematically tied (e.g. every pair of a one-map
  embedding) are tied whatever route computed them: round-off is ~1e-15,
  far below the gap, and no rounding boundary can split a tie.
  For ``"pearson"`` the same rule decides when the model side is constant
  (all values one tie run -> correlation 0); otherwise the unrounded
  values are used.
* A row of embeddings (or of human values) is constant when its centred
  energy is below 1e-12 of its raw energy (coefficient of variation below
  ~1e-6): such rows are round-off away from constant in float32/float64
  work and get similarity 0.

Everything that is evaluated many times (leave-one-out and sweep candidates)
goes through :func:`batched_correlation`, a torch kernel that handles a
``(B, m)`` batch of candidate vectors against one target vector.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

SIMILARITIES = ("pearson", "cosine")
COMPARISONS = ("spearman", "pearson")

# A row whose centred energy is below this fraction of its raw energy is
# constant up to round-off (float64 cancellation leaves ~1e-16).
_REL_EPS = 1e-12
# Model similarities live on a grid of step 2**-42 before ranking: grid index
# ``trunc(c * 2**42 + (2**42 + 1/2))`` (c * 2**42 is exact, so every route, fused
# or not, gets the same bits), and sorted neighbours <= TIE_GAP steps apart tie.
TIE_GRID = 2.0**42
TIE_GAP = 4
# CPU sort keys pack (grid index: 44 bits) << bits | 2 * target rank into one uint64.
_GRID_BITS = 44  # grid indices 0 .. 2**43 (model similarities in [-1, 1])
# Rows go in blocks of about this many elements (1 MB of float64); a row longer than
# that goes through the element-wise passes in segments of _SEGMENT (256 KB of int64).
_BLOCK_ELEMENTS = 1 << 17
_SEGMENT = 1 << 15


def tie_grid(c):
    """Grid index of model values (numpy or torch, float64): the package's tie rule."""
    g = c * TIE_GRID + (TIE_GRID + 0.5)
    return g.trunc() if isinstance(g, torch.Tensor) else np.trunc(g)


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
        Symmetric, float64, unit diagonal. Rows without variance (or norm)
        have similarity 0 to every other row.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.metrics import similarity_matrix
    >>> E = np.array([[1., 2., 3.], [2., 4., 7.], [3., 2., 1.]])
    >>> np.allclose(similarity_matrix(E), np.corrcoef(E))
    True
    """
    E = torch.as_tensor(np.array(embeddings, dtype=np.float64, order="C", copy=True))  # canonical strides
    return rsm_torch(E[None], similarity)[0].numpy()


def rsm_torch(E: torch.Tensor, similarity: str) -> torch.Tensor:
    """Batched RSMs: ``E`` is (B, n, D); returns (B, n, n) with unit diagonal."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    En = _standardize_rows(E, center=similarity == "pearson")
    Z = En @ En.transpose(-1, -2)
    Z = Z.clamp(-1.0, 1.0)
    idx = torch.arange(Z.shape[-1], device=Z.device)
    Z[..., idx, idx] = 1.0
    return Z


def rankdata_torch(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) along the last axis, as ``scipy.stats.rankdata``.

    ``x`` is (B, m). Ties (exactly equal values) get the mean of the ranks they span.
    """
    order = torch.argsort(x, dim=1, stable=True)
    xs = torch.gather(x, 1, order)
    new_run = torch.ones_like(xs, dtype=torch.bool)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    return _average_ranks(order, new_run, x.dtype)


def model_ranks_torch(c: torch.Tensor) -> torch.Tensor:
    """Average ranks of model values (B, m) under the package's tie rule (any device)."""
    q = tie_grid(c)
    order = torch.argsort(q, dim=1, stable=True)
    qs = torch.gather(q, 1, order)
    new_run = torch.ones_like(qs, dtype=torch.bool)
    new_run[:, 1:] = (qs[:, 1:] - qs[:, :-1]) > TIE_GAP
    return _average_ranks(order, new_run, c.dtype)


def _average_ranks(order, new_run, dtype):
    """Ranks from a sorting permutation and the starts of tie runs in sorted order."""
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


def _standardize_rows(x: torch.Tensor, center: bool = True, rel_eps: float = _REL_EPS) -> torch.Tensor:
    """Centre each row (optionally) and scale it to unit norm.

    A row whose centred energy is negligible relative to its own magnitude
    (constant up to round-off) or that is all zero becomes 0.

    When squares would overflow (values ~1e200) or underflow (~1e-200), which
    would turn valid rows into "constant" ones, every row is first divided by
    a power of two close to its largest magnitude: exact, so it changes no
    result bit.
    """
    if x.shape[-1] == 0:
        return x
    scale = (x * x).sum(dim=-1, keepdim=True)
    if bool(((scale < 1e-250) | ~torch.isfinite(scale)).any()):  # rare: squares over/underflow
        _, exponent = torch.frexp(x.abs().amax(dim=-1, keepdim=True))
        x = torch.ldexp(x, -exponent)
        scale = (x * x).sum(dim=-1, keepdim=True)
    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    sq = (x * x).sum(dim=-1, keepdim=True)
    alive = (sq > rel_eps * scale) & (sq > 0)
    inv = torch.where(alive, sq.clamp_min(torch.finfo(x.dtype).tiny).rsqrt(), torch.zeros_like(sq))
    return x * inv


class TargetVector:
    """A human vector prepared once for many comparisons.

    ``values`` is the observed part (NaNs removed), ``mask`` the boolean mask of
    observed entries in the full vector, ``prepared`` its standardized ranks
    (Spearman) or standardized values (Pearson).
    """

    def __init__(self, values, comparison: str, device="cpu", dtype=torch.float64, similarities=False):
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
        values = np.asarray(values, dtype=np.float64)
        self.mask = ~np.isnan(values)
        self.comparison = comparison
        # Candidates are known to lie in [-1, 1] up to round-off (model similarities): no range check.
        self.similarities = similarities
        self.device = device
        self.dtype = dtype
        self.mask_t = torch.as_tensor(self.mask, device=device)
        self.n_observed = int(self.mask.sum())
        v = torch.as_tensor(values[self.mask], device=device, dtype=dtype)[None]
        self._rank_stats = None
        if comparison == "spearman":
            v = rankdata_torch(v)
            # Twice the average ranks: integers, for the exact integer Spearman on CPU.
            self._ranks2 = np.rint(2 * v[0].cpu().numpy()).astype(np.int64)
        self.prepared = _standardize_rows(v)[0]
        self.is_constant = bool((self.prepared == 0).all())

    def correlate(self, candidates: torch.Tensor) -> torch.Tensor:
        """Correlation of each row of ``candidates`` (B, m_full) with the target.

        Only observed entries are used. Returns (B,) in the candidates' dtype.
        """
        c = candidates
        if not bool(self.mask.all()):
            c = c[:, self.mask_t]
        c = c.to(self.dtype)
        if c.shape[1] == 0:  # no observed entry: nothing to correlate (callers report it)
            return torch.zeros(c.shape[0], dtype=self.dtype, device=c.device)
        if self.comparison == "spearman":
            if c.device.type == "cpu" and c.shape[1] > 1:
                return self._spearman_cpu(c)
            c = _standardize_rows(model_ranks_torch(c))
        else:
            # Same rule as for ranks: a candidate whose values form one tie run is
            # constant (correlation 0); any larger spread is information, however
            # small (model similarities near 1 may differ only in the 8th decimal).
            q = tie_grid(c)
            constant = (q.amax(dim=1, keepdim=True) - q.amin(dim=1, keepdim=True)) <= TIE_GAP * (c.shape[1] - 1)
            if bool(constant.any()):  # spread small enough to be one run: check in sorted order
                rows = constant.flatten().clone()
                qs = torch.sort(q[rows], dim=1).values
                constant[rows] = ((qs[:, 1:] - qs[:, :-1]) <= TIE_GAP).all(dim=1, keepdim=True)
            c = torch.where(constant, torch.zeros_like(c), _standardize_rows(c, rel_eps=0.0))
        return (c @ self.prepared).clamp(-1.0, 1.0)

    def _spearman_cpu(self, c: torch.Tensor) -> torch.Tensor:
        """Spearman on CPU in exact integer arithmetic (same values as the general path
        to round-off, and exactly 1.0 for identical rankings).

        With ``a_p = 2 rank_p - (m + 1)`` (centred doubled model ranks) and ``b`` the
        same for the target, rho = sum(a b) / sqrt(sum(a^2) sum(b^2)), all integers.
        Each row is sorted once as uint64 keys ``grid index << bits | 2 * target rank``:
        after the sort the keys' low bits are the target ranks in model order, so a row
        without model ties needs no gather at all: ``sum_p (2p - (m - 1)) * b[order_p]``.
        A model tie run over sorted positions f..l gives its elements the average rank
        (a_p = f + l - (m - 1)) and lowers sum(a^2) by (L^3 - L) / 3 (L = l - f + 1), as
        ``scipy.stats.rankdata`` + Pearson would. Rows go in blocks of about 1 MB (a row
        longer than that in L2-sized segments), so that the passes over them stay in cache.
        """
        B, m = c.shape
        # Sums reach m^3: exact in int64 up to m = 2**20 (n ~ 1450 images), float64 beyond.
        acc = np.int64 if m <= 1 << 20 else np.float64
        if self._rank_stats is None or self._rank_stats[0] != m:
            b = self._ranks2 - (m + 1)
            a = (2 * np.arange(m, dtype=np.int64) - (m - 1)).astype(acc)
            self._rank_stats = (m, a, float((b.astype(acc) * b).sum()), (2 * m).bit_length())
        _, a, sum_b2, bits = self._rank_stats
        ranks2 = self._ranks2
        mask = (1 << bits) - 1
        full = acc(m * m * m - m)  # 3 sum(a^2) without ties
        cn = c.numpy()
        out = np.empty(B)
        step = max(1, _BLOCK_ELEMENTS // m)
        seg = m if step > 1 else _SEGMENT  # long rows: element-wise passes by L2-sized segments
        keyed_ok = _GRID_BITS + bits <= 64
        if keyed_ok:
            grid = np.empty((min(step, B), min(seg, m)))  # buffers reused: no page faults per block
            keys_buf = np.empty((min(step, B), m), dtype=np.uint64)
            ranks2_u = ranks2.astype(np.uint64)
        for a0 in range(0, B, step):
            cb = cn[a0 : a0 + step]
            nb = len(cb)
            in_range = self.similarities or (cb.min() >= -1 and cb.max() <= 1)
            keyed = keyed_ok and in_range  # grid index <= 2**43: fits in _GRID_BITS
            if keyed:
                keys = keys_buf[:nb]
                for s0 in range(0, m, seg):
                    s1 = min(m, s0 + seg)
                    g = grid[:nb, : s1 - s0]
                    np.multiply(cb[:, s0:s1], TIE_GRID, out=g)  # exact (a power of two)
                    g += TIE_GRID + 0.5  # as tie_grid; positive, so the conversion truncates
                    k = keys[:, s0:s1]
                    np.copyto(k, g, casting="unsafe")
                    k <<= np.uint64(bits)
                    k |= ranks2_u[s0:s1]
                keys.sort(axis=1)

                def ranks_at(lo, hi):
                    return (keys[:, lo:hi] & np.uint64(mask)).view(np.int64)

                def rank_of(rows, pos):
                    return (keys[rows, pos] & np.uint64(mask)).view(np.int64)

                def grid_at(lo, hi):
                    return (keys[:, lo:hi] >> np.uint64(bits)).view(np.int64)
            else:
                qn = tie_grid(cb)
                order = np.argsort(qn, axis=1)
                qs = np.take_along_axis(qn, order, axis=1)

                def ranks_at(lo, hi):
                    return ranks2[order[:, lo:hi]]

                def rank_of(rows, pos):
                    return ranks2[order[rows, pos]]

                def grid_at(lo, hi):
                    return qs[:, lo:hi]

            dot = np.zeros(nb, dtype=acc)
            link_rows, link_pos = [], []
            for s0 in range(0, m, seg):
                s1 = min(m, s0 + seg)
                dot += ranks_at(s0, s1) @ a[s0:s1]  # sum(a) = 0: b's offset drops out
                lo = max(s0 - 1, 0)
                links = np.diff(grid_at(lo, s1), axis=1) <= TIE_GAP  # sorted elements p and p + 1 tie
                if links.any():
                    row, p = np.nonzero(links)
                    link_rows.append(row)
                    link_pos.append(p + lo)
            sum_a2_3 = np.full(nb, full, dtype=acc)
            if link_rows:
                row, p = np.concatenate(link_rows), np.concatenate(link_pos)
                by_row = np.lexsort((p, row))
                self._correct_ties(dot, sum_a2_3, row[by_row], p[by_row], rank_of, m)
            with np.errstate(invalid="ignore", divide="ignore"):
                sum_a2 = sum_a2_3 // 3 if acc is np.int64 else sum_a2_3 / 3  # // : exact, one rounding below
                den = np.sqrt(sum_a2.astype(np.float64) * sum_b2)
                out[a0 : a0 + step] = np.where(den > 0, dot / den, 0.0)  # one run: constant -> 0
        return torch.from_numpy(np.clip(out, -1.0, 1.0)).to(c.dtype)

    @staticmethod
    def _correct_ties(dot, sum_a2_3, row, p, rank_of, m):
        """Average ranks over the model tie runs given by (row, p) links (sorted by row, then p):
        ``dot`` gains sum((f + l - 2p) b_p) per run, ``3 sum(a^2)`` loses L^3 - L."""
        new = np.ones(len(p), dtype=bool)  # a link starts a new run unless it continues the previous one
        new[1:] = (row[1:] != row[:-1]) | (p[1:] != p[:-1] + 1)
        run = np.cumsum(new) - 1
        first = p[new]  # run start (sorted position), per run
        last = np.zeros(len(first), dtype=np.int64)
        np.maximum.at(last, run, p + 1)
        length = last - first + 1
        run_row = row[new]
        elem_run = np.repeat(np.arange(len(first)), length)  # every element of every run
        elem_pos = first[elem_run] + (np.arange(len(elem_run)) - np.repeat(np.cumsum(length) - length, length))
        elem_row = run_row[elem_run]
        b = rank_of(elem_row, elem_pos) - (m + 1)
        np.add.at(dot, elem_row, (first[elem_run] + last[elem_run] - 2 * elem_pos) * b)
        length = length.astype(sum_a2_3.dtype)  # float64 for the longest rows: L^3 overflows int64
        np.add.at(sum_a2_3, run_row, -(length**3 - length))


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
    comparison : {"spearman", "pearson"}

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
    tv = TargetVector(target, comparison)
    return tv.correlate(torch.as_tensor(candidates)).numpy()


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
    if np.ptp(target[observed]) == 0:
        raise ValueError(f"{tname} is constant over its observed entries: the correlation is undefined")
    if not np.isfinite(candidates[:, observed]).all():
        raise ValueError(f"{cname} contains NaN or inf where {tname} is observed")
    return candidates, target


def correlation(a, b, comparison: str = "spearman") -> float:
    """Correlation of two vectors, ignoring positions where ``b`` is NaN.

    ``a`` (model side) must be finite where ``b`` is observed; ``b`` (human
    side) needs at least 3 observed entries that are not all equal (else
    ``ValueError``). A constant ``a`` correlates 0, with a warning.
    """
    a = _real_array(a, "a (model side)")
    if a.ndim != 1:
        raise ValueError(f"a (model side) must be 1-D, got shape {a.shape}")
    a2, b = _check_correlation_inputs(a[None], b, "a (model side)", "b (human side)")
    r = float(TargetVector(b, comparison).correlate(torch.as_tensor(a2))[0])
    observed = ~np.isnan(b)
    if r == 0 and is_constant_model(a[observed]):
        warnings.warn(
            "the model side is constant over the observed pairs: the correlation is undefined and reported as 0",
            UserWarning,
            stacklevel=2,
        )
    return r
