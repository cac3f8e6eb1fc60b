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
# CPU sort keys pack (grid index: 44 bits) << bits | position into one int64.
_KEY_POSITION_BITS = 19
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
        if comparison == "spearman":
            v = rankdata_torch(v)
        self.prepared = _standardize_rows(v)[0]
        self._prepared_np = None
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
        """Spearman on CPU, same values as the general path (to round-off).

        Each row is sorted once as int64 keys ``grid index << bits | position``
        (numpy's SIMD sort of plain integers is ~2x its argsort, and the sorted
        grid values come out of the keys without a gather). With the ranks
        1..m in sorted order, the correlation with the standardized target
        ranks is ``sum_p w_p * target[order_p]`` (``w``: the standardized
        positions): no rank scatter, no per-row standardization. Tie runs
        then correct only their own elements: a run over sorted positions
        f..l takes the average rank (f + l) / 2 and lowers the sum of squared
        centred ranks by (L^3 - L) / 12 (L = l - f + 1), as
        ``scipy.stats.rankdata`` + Pearson would. The sums run row by row, so
        identical rows give identical bits whatever the batch. Rows go in
        blocks of about 1 MB, so that the dozen passes over them stay in cache.
        """
        B, m = c.shape
        if self._prepared_np is None:
            self._prepared_np = self.prepared.cpu().numpy()
        if getattr(self, "_positions", (None,))[0] != m:
            scale = math.sqrt(m * (m * m - 1) / 12.0)  # norm of the centred ranks 1..m
            self._positions = (m, (np.arange(m, dtype=np.float64) - (m - 1) / 2.0) / scale, scale)
        _, w, scale = self._positions
        bits = max(1, (m - 1).bit_length())
        mask = (1 << bits) - 1
        positions = torch.arange(m, dtype=torch.int64)
        prep = self._prepared_np
        out = np.empty(B)
        step = max(1, _BLOCK_ELEMENTS // m)
        seg = max(m, 1) if step > 1 else _SEGMENT  # long rows: element-wise passes by L2-sized segments
        grid = torch.empty((min(step, B), min(seg, m)), dtype=torch.float64)  # reused: no page faults
        offset = torch.tensor(TIE_GRID + 0.5, dtype=torch.float64)
        keys_t = torch.empty((min(step, B), m), dtype=torch.int64)
        for a in range(0, B, step):
            cb = c[a : a + step]
            b = len(cb)
            in_range = self.similarities or bool(((lohi := torch.aminmax(cb))[0] >= -1) & (lohi[1] <= 1))
            keyed = bits <= _KEY_POSITION_BITS and in_range  # grid index < 2**43: fits in 44 bits
            if keyed:
                keys = keys_t[:b]
                for s0 in range(0, m, seg):
                    s1 = min(m, s0 + seg)
                    g, k = grid[:b, : s1 - s0], keys[:, s0:s1]
                    torch.add(offset, cb[:, s0:s1], alpha=TIE_GRID, out=g)  # tie_grid before truncation
                    k.copy_(g)  # (positive, so the int conversion truncates)
                    k <<= bits
                    k |= positions[s0:s1]
                keys = keys.numpy()
                keys.sort(axis=1)
            else:
                qn = tie_grid(cb).numpy()
                order_all = np.argsort(qn, axis=1)
                sorted_qs = np.take_along_axis(qn, order_all, axis=1)
            r = np.zeros(b)
            rows_l, pos_l = [], []
            for s0 in range(0, m, seg):
                s1 = min(m, s0 + seg)
                if keyed:
                    order = keys[:, s0:s1] & mask
                    lo = max(s0 - 1, 0)
                    q = keys[:, lo:s1] >> bits
                else:
                    order = order_all[:, s0:s1]
                    lo = max(s0 - 1, 0)
                    q = sorted_qs[:, lo:s1]
                r += (np.take(prep, order) * w[s0:s1]).sum(axis=1)  # pairwise: identical rankings give 1.0
                links = np.diff(q, axis=1) <= TIE_GAP  # sorted elements p and p + 1 tie
                if links.any():
                    row, p = np.nonzero(links)
                    rows_l.append(row)
                    pos_l.append(p + lo)
            if rows_l:
                row, p = np.concatenate(rows_l), np.concatenate(pos_l)
                by_row = np.lexsort((p, row))
                row, p = row[by_row], p[by_row]

                def target_at(rr, pp):
                    return prep[keys[rr, pp] & mask] if keyed else prep[order_all[rr, pp]]

                rows = np.unique(row)
                r[rows] = self._tie_corrected(r, row, p, target_at, scale)[rows]
            out[a : a + step] = r
        return torch.from_numpy(np.clip(out, -1.0, 1.0)).to(c.dtype)

    @staticmethod
    def _tie_corrected(r, row, p, target_at, scale):
        """Rows of ``r`` recomputed with average ranks over the tie runs given by (row, p) links
        (sorted by row, then p); ``target_at(rows, positions)``: standardized target ranks there."""
        new = np.ones(len(p), dtype=bool)  # a link starts a new run unless it continues the previous one
        new[1:] = (row[1:] != row[:-1]) | (p[1:] != p[:-1] + 1)
        run = np.cumsum(new) - 1
        first = p[new]  # run start (sorted position), per run
        last = np.zeros(len(first), dtype=np.int64)
        np.maximum.at(last, run, p + 1)
        length = last - first + 1
        run_row = row[new]
        # Every element of a run: its sorted position and the run's average position.
        elem_run = np.repeat(np.arange(len(first)), length)
        elem_pos = first[elem_run] + (np.arange(len(elem_run)) - np.repeat(np.cumsum(length) - length, length))
        shift = (first[elem_run] + last[elem_run]) / 2.0 - elem_pos
        dot = r * scale
        np.add.at(dot, run_row[elem_run], shift * target_at(run_row[elem_run], elem_pos))
        sq = np.full(len(r), scale * scale)
        np.add.at(sq, run_row, -(length.astype(np.float64) ** 3 - length) / 12.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sq > 1e-9 * scale * scale, dot / np.sqrt(np.maximum(sq, 0)), 0.0)  # one run: constant -> 0


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
