"""Exact, batched ablation kernels.

Every quantity the selector and the heatmapper need is a correlation between
a *candidate* model similarity vector and the human one:

* leave-one-out: map k set to 0 in every image (global AIS);
* ranked sweep: only the top-t maps kept, for every t;
* per image: map k set to 0 in image t only; row t of the RSM.

A naive implementation re-embeds all images for every candidate. Here the
work is shared according to the head (see ``backbones/_heads.py``):

``PooledKernel`` (GAP heads and plain 2-D inputs)
    Ablating map k changes coordinate k only, so the row sums, row energies
    and Gram matrix of the embeddings change by rank-one terms: every
    candidate RSM costs O(n^2), all K of them O(K n^2). Done in float64 so
    that the downdated statistics agree with a direct computation to ~1e-12
    (float32 would flip ranks of near-tied pairs).
``MLPKernel`` (VGG heads)
    The first linear layer is linear before its ReLU, so the pre-activation
    with map k removed is ``a - W[:, block_k] @ x_k``. Many (map, image)
    pairs go through the rest of the head in one GEMM (float32, like the
    network itself); pairs whose pooled map is all zero are skipped (their
    output is unchanged), in the leave-one-out and in the sweep alike. Only
    the rows of the (float64) Gram matrix that belong to changed images are
    recomputed; RSMs and ranks are float64.
``BruteForceKernel`` (any other head)
    Brute force, batched: exact but O(K) head evaluations.

The similarity of images i and j with map k ablated depends on those two
images only, so a problem can keep the stack of all K ablated upper
triangles (``cache_loo``): its subsets (cross-validation folds) read their
leave-one-out from it instead of recomputing it.

Memory is bounded by processing candidates in chunks (``_chunk``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._containers import FeatureMaps
from ._device import as_tensor, resolve_device
from ._similarity import REL_EPS, TargetVector, TripletTarget, standardize_rows, rsm_torch

# Cached leave-one-out similarities (float64 elements): 1 GiB at most.
_STACK_BUDGET = 1 << 27
# Upper bound on elements of the largest temporary of one chunk (float64:
# 8 bytes each, argsort adds int64 indices): about 200 MB of working memory.
_ELEMENT_BUDGET = 1 << 23
# The pooled kernels work on chunks of candidates of about this many n x n elements,
# a block of rows at a time (_ROW_BLOCK elements per temporary: 2 MB, in L2/L3; measured at
# n = 1854: 1.3x faster than 512 KB blocks, whose per-block calls cost more than the cache saves).
_POOLED_BUDGET = 1 << 21
_ROW_BLOCK = 1 << 18
# A row that keeps less than this fraction of its energy after an ablation (one
# map carried nearly all of it) has lost too many digits in the rank-one
# downdate: its similarities are recomputed directly (rare; exact).
_RECOMPUTE_REL = 0.1
# VGG heads centre through G - s s^T / D; a row whose centred energy is below this
# fraction of its raw energy would lose more than 4 digits that way: centred explicitly.
_LOSSY_REL = 1e-4
# Triplets touching few pairs read their Gram entries from the n x n Gram matrix up to this many elements.
_SMALL_GRAM = 1 << 24


def _chunk(total: int, per_item: int, budget: int | None = None) -> int:
    budget = _ELEMENT_BUDGET if budget is None else budget  # read at call time
    return int(max(1, min(total, budget // max(1, per_item))))


def _prefix_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place cumulative sum along dim 0: one add per slice (2-5x faster than
    ``torch.cumsum`` along a leading dim on CPU, and no second buffer)."""
    for c in range(1, x.shape[0]):
        x[c] += x[c - 1]
    return x


def _check_finite_embeddings(E: torch.Tensor):
    if not bool(torch.isfinite(E).all()):
        raise ValueError(
            "the head's embeddings of X are not finite (NaN or inf): the feature maps overflow the head's "
            "float32 arithmetic; rescale them (e.g. divide X by its maximum)"
        )


class AblationKernel:
    """Common interface. Subclasses fill ``n``, ``K``, ``similarity``, ``device``."""

    n: int
    K: int

    def __init__(self, similarity: str, device):
        self.similarity = similarity
        self.device = resolve_device(device)
        self._iu = None

    @property
    def iu(self):
        if self._iu is None:
            i, j = np.triu_indices(self.n, k=1)
            self._iu = (torch.as_tensor(i, device=self.device), torch.as_tensor(j, device=self.device))
        return self._iu

    @property
    def flat_iu(self):
        """Flat indices of the strict upper triangle in a row-major n x n matrix (same order as ``iu``)."""
        if getattr(self, "_flat_iu", None) is None:
            i, j = self.iu
            self._flat_iu = i * self.n + j
        return self._flat_iu

    def _upper_of(self, Z: torch.Tensor) -> torch.Tensor:
        """Strict upper triangles (B, n_pairs) of a batch of (B, n, n) matrices."""
        Z = Z.reshape(Z.shape[0], self.n * self.n)
        if Z.device.type == "cpu":  # numpy's take is ~3x torch's indexing for this gather
            if getattr(self, "_flat_iu_np", None) is None:
                self._flat_iu_np = self.flat_iu.numpy()
            return torch.from_numpy(np.take(Z.numpy(), self._flat_iu_np, axis=1))
        return torch.index_select(Z, 1, self.flat_iu)

    def _rsm_uppers(self, E: torch.Tensor) -> torch.Tensor:
        """Upper triangles of the RSMs of embeddings ``E`` (B, n, D), computed directly."""
        return self._upper_of(rsm_torch(E, self.similarity))

    def target(self, values, comparison) -> TargetVector:
        return TargetVector(values, comparison, device=self.device, similarities=True)

    # Implemented by subclasses -------------------------------------------
    def _make_subset(self, idx) -> "AblationKernel":
        raise NotImplementedError

    def embeddings(self, keep=None) -> torch.Tensor:
        """(n, D) float64 embeddings with maps outside ``keep`` ablated."""
        raise NotImplementedError

    def _base_upper(self) -> torch.Tensor:
        """(1, n_pairs) upper triangle of the unablated RSM, by the same arithmetic as ``_loo_uppers``."""
        raise NotImplementedError

    def _loo_uppers(self, maps):
        """Yield ``(start, Zu)``: upper triangles (C, n_pairs) with maps ``maps[start:start + C]`` ablated."""
        raise NotImplementedError

    # Leave-one-out, with a cache shared by subsets -------------------------
    # The similarity of images i and j with map k ablated depends on those two images
    # only, so one stack of all K ablated upper triangles serves every subset of the
    # images (cross-validation folds) and every target (pair splits): their
    # leave-one-out is then a gather and the correlations, not a pass through the head.
    cache_loo = False  # set by callers that will reuse the leave-one-out
    _parent = None  # (problem, idx) for a subset
    _loo_stack = None

    def subset(self, idx) -> "AblationKernel":
        """The problem restricted to images ``idx``; it reads this problem's leave-one-out cache."""
        sub = self._make_subset(idx)
        sub._parent = (self, np.asarray(idx))
        return sub

    @property
    def _stack_fits(self) -> bool:
        return self.K * self.n * (self.n - 1) // 2 <= _STACK_BUDGET

    def loo_stack(self):
        """(K, n_pairs) ablated upper triangles and the (1, n_pairs) unablated one, computed
        once (None when over the memory budget)."""
        if self._loo_stack is None and self._stack_fits:
            stack = torch.cat([Zu for _, Zu in self._loo_uppers(np.arange(self.K))])
            self._loo_stack = (stack, self._base_upper())
        return self._loo_stack

    def _pair_positions(self, idx):
        """Positions in this problem's upper triangle of the pairs of images ``idx`` (in their own order)."""
        a, b = np.triu_indices(len(idx), k=1)
        i, j = np.minimum(idx[a], idx[b]), np.maximum(idx[a], idx[b])
        return torch.as_tensor(i * self.n - i * (i + 1) // 2 + (j - i - 1), device=self.device)

    def _cached_loo(self):
        """(stack, base upper, pair positions or None) when a cache serves this problem."""
        if self._loo_stack is not None:
            return (*self._loo_stack, None)
        if self._parent is not None:
            parent, idx = self._parent
            if parent.cache_loo and len(np.unique(idx)) == len(idx) and parent.loo_stack() is not None:
                return (*parent.loo_stack(), parent._pair_positions(idx))
        return None

    def leave_one_out(self, target: TargetVector, maps=None) -> tuple[float, np.ndarray]:
        """Scores with each map ablated in every image (global AIS = base - score).

        Parameters
        ----------
        target : TargetVector
            The human upper triangle, from :meth:`target`.
        maps : array-like of int, default=None
            Maps to ablate (all by default).

        Returns
        -------
        base : float
            Score with every map; computed by the candidates' arithmetic, so a
            dead map's score equals it exactly.
        scores : ndarray of shape (len(maps),)
        """
        maps = np.arange(self.K) if maps is None else np.asarray(maps)
        out = np.empty(len(maps))
        cached = self._cached_loo()
        if cached is not None:
            stack, base_u, pairs = cached
            if pairs is not None:
                base_u = base_u[:, pairs]
            base = float(target.correlate(base_u)[0])
            step = _chunk(len(maps), 3 * base_u.shape[1])
            for a in range(0, len(maps), step):
                Zu = stack[torch.as_tensor(maps[a : a + step], device=self.device)]
                out[a : a + step] = target.correlate(Zu if pairs is None else Zu[:, pairs]).cpu().numpy()
            return base, out
        if isinstance(target, TripletTarget) and target.sparse and hasattr(self, "_pair_loo"):
            return self._pair_loo(target, maps)
        # Base through the same arithmetic as the candidates, so a dead map gives exactly AIS = 0.
        base_u = self._base_upper()
        base = float(target.correlate(base_u)[0])
        keep = self.cache_loo and self._stack_fits and np.array_equal(maps, np.arange(self.K))
        chunks = []
        for a, Zu in self._loo_uppers(maps):
            out[a : a + len(Zu)] = target.correlate(Zu).cpu().numpy()
            if keep:
                chunks.append(Zu)
        if keep:
            self._loo_stack = (torch.cat(chunks), base_u)
        return base, out

    def sweep(self, order, target: TargetVector, ts) -> np.ndarray:
        """Scores along the ranked sweep.

        Parameters
        ----------
        order : array-like of int, shape (K,)
            Maps in ranked order.
        target : TargetVector
        ts : array-like of int
            Numbers of kept maps (1 .. K).

        Returns
        -------
        scores : ndarray of shape (len(ts),)
            Score when only maps ``order[:t]`` are kept, for each t in ``ts``.
        """
        raise NotImplementedError

    def per_image(self, H: np.ndarray, comparison: str, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """Per-image scores: row t of the RSM (diagonal excluded) against the human row, with each map
        ablated in image t only.

        Parameters
        ----------
        H : ndarray of shape (n, n)
            Human similarities (NaN = missing).
        comparison : str
            One of ``COMPARISONS``.
        rows : sequence of int, default=None
            Images to score (all by default).

        Returns
        -------
        base : ndarray of shape (len(rows),)
            Row scores with every map.
        ablated : ndarray of shape (len(rows), K)
            Row scores with map k ablated in that image; equal to ``base`` exactly where map k is zero
            in the image.
        """
        raise NotImplementedError

    # Shared ----------------------------------------------------------------
    def model_rsm(self, keep=None) -> np.ndarray:
        return rsm_torch(self.embeddings(keep)[None], self.similarity)[0].cpu().numpy()

    def score(self, target: TargetVector, keep=None) -> float:
        if isinstance(target, TripletTarget):  # the touched pairs only
            return float(target.correlate(self.pair_similarities(target.pair_i, target.pair_j, keep)[None])[0])
        return float(target.correlate(self._rsm_uppers(self.embeddings(keep)[None]))[0])

    def _row_targets(self, H, comparison, rows):
        rows = range(self.n) if rows is None else rows
        for t in rows:
            others = np.r_[0:t, t + 1 : self.n]
            yield t, others, self._row_target(H, t, others, comparison)

    def _row_target(self, H, t, others, comparison):
        """Target of image t's row: the human row (``others``: its columns, default all n, t's own NaN), or for
        a :class:`TripletTarget` ``H`` the triplets that contain t."""
        if isinstance(H, TripletTarget):
            if getattr(self, "_row_base", (None,))[0] is not H:
                self._row_base = (H, self.pair_similarities(H.pair_i, H.pair_j))
            return H.row_target(t, self._row_base[1], others)
        if others is None:
            row = np.array(H[t], dtype=np.float64)
            row[t] = np.nan  # the diagonal never enters a comparison
            return TargetVector(row, comparison, device=self.device, similarities=True)
        return TargetVector(H[t, others], comparison, device=self.device, similarities=True)

    # Odd-one-out triplets --------------------------------------------------
    def triplet_target(self, triplets, comparison, temperature=1.0) -> TripletTarget:
        """The human odd-one-out choices (a checked ``TripletSet`` over this problem's images) as a target."""
        return TripletTarget(triplets.indices, self.n, comparison, temperature, device=self.device)

    def pair_similarities(self, pi, pj, keep=None) -> torch.Tensor:
        """(P,) model similarities of pairs ``(pi[p], pj[p])``, maps outside ``keep`` ablated: no n x n matrix."""
        En = standardize_rows(self.embeddings(keep), center=self.similarity == "pearson")
        pi, pj = (torch.as_tensor(np.asarray(v), device=self.device) for v in (pi, pj))
        out = torch.empty(len(pi), dtype=En.dtype, device=self.device)
        step = _chunk(len(pi), 2 * En.shape[1])
        for a in range(0, len(pi), step):
            out[a : a + step] = (En[pi[a : a + step]] * En[pj[a : a + step]]).sum(dim=1)
        return out.clamp_(-1.0, 1.0)


# ---------------------------------------------------------------------------
# Pooling heads and 2-D inputs: rank-one updates
# ---------------------------------------------------------------------------
class PooledKernel(AblationKernel):
    """Rank-one kernels on an (n, K) embedding.

    Pearson similarities are computed from *centred* statistics: with ``D``
    the rows of ``E`` minus their means, ``Gc = D D^T`` and ``vD = diag(Gc)``
    are exact for rows with a large common offset, where the raw identity
    ``q - s^2 / K`` would cancel catastrophically. Setting ``E[i, k]`` (=
    ``e``, with centred value ``d = D[i, k]``) to zero gives, exactly::

        v'_i    = vD_i - 2 d_i e_i + e_i^2 (K - 1) / K
        num'_ij = Gc_ij - d_i e_j - e_i d_j + e_i e_j (K - 1) / K   (k ablated in i and j)
        num'_ij = Gc_ij - e_i D[j, k]                               (k ablated in i only)

    A row that keeps less than ``_RECOMPUTE_REL`` of its energy after an
    ablation (one map carried nearly all of it) would lose too many digits:
    its similarities are recomputed directly. A row is constant (similarity
    0) by the rule of :func:`~sklearn_ais._similarity.standardize_rows`.
    """

    def __init__(self, E, similarity, device):
        super().__init__(similarity, device)
        E = np.array(E, dtype=np.float64, order="C")  # a copy (inputs may be read-only), C order (same bits)
        # Rows scaled by a power of two near their largest magnitude: exact, every
        # similarity is invariant to it, and squares can no longer over/underflow.
        _, exponent = np.frexp(np.abs(E).max(axis=1, keepdims=True) if E.size else np.ones((len(E), 1)))
        self.E = torch.as_tensor(np.ldexp(E, -exponent), device=self.device)
        _check_finite_embeddings(self.E)
        self.n, self.K = self.E.shape
        self.pearson = similarity == "pearson"
        self.s = self.E.sum(1)
        self.q = (self.E * self.E).sum(1)
        if self.pearson:
            self.D = self.E - self.E.mean(1, keepdim=True)
            self.vD = (self.D * self.D).sum(1)
        # Map-major copies: a chunk of maps is then a contiguous (C, n) block, and every
        # (C, n, n) temporary built from it is contiguous (batched GEMMs and reshapes
        # on transposed layouts fall back to per-matrix copies).
        self.Et = self.E.T.contiguous()
        self.Dt = self.D.T.contiguous() if self.pearson else None
        self._G = None

    @property
    def G(self):
        """Gram matrix of the rows: centred for Pearson, raw for cosine."""
        if self._G is None:
            self._G = self.D @ self.D.T if self.pearson else self.E @ self.E.T
        return self._G

    def _make_subset(self, idx):
        rows = self.E[torch.as_tensor(np.asarray(idx), device=self.device)].cpu().numpy()
        return PooledKernel(rows, self.similarity, self.device)

    def embeddings(self, keep=None):
        if keep is None:
            return self.E
        return self.E * torch.as_tensor(np.asarray(keep, dtype=np.float64), device=self.device)

    def _alive(self, v, raw):
        """Rows with information: centred energy above round-off of the raw one (Pearson), non-zero (cosine)."""
        return v > REL_EPS * raw if self.pearson else v > 0

    def _ablated_rows(self, e, d, t=None):
        """Energy statistics of rows that lose raw values ``e`` (centred values ``d``).

        Returns ``(v, raw, flagged)``: centred (Pearson) or raw (cosine) energy,
        raw energy left, and rows to recompute directly. ``t`` indexes the rows
        of ``e`` when it is not all of them.
        """
        q = self.q if t is None else self.q[t]
        raw = q - e * e
        if self.pearson:
            vD = self.vD if t is None else self.vD[t]
            v = vD - 2 * d * e + e * e * ((self.K - 1) / self.K)
            scale = vD + e * e
        else:
            v, scale = raw, q
        return v, raw, (v < _RECOMPUTE_REL * scale) & (scale > 0)

    def _direct_rows(self, rows_E, others):
        """Similarities of (already ablated) rows ``rows_E`` (R, K) with the rows ``others`` (B, K)."""
        center = self.pearson
        return (standardize_rows(rows_E, center=center) @ standardize_rows(others, center=center).T).clamp(-1, 1)

    def _delta_terms(self, dE, ks):
        """Row scales ``r`` (C, n), the rank-one corrections and the rows to recompute when map ``ks[c]``
        (values ``dE[c]``) is ablated in every image (``ks`` None: nothing ablated, ``dE`` zero)."""
        dD = self.Dt[ks] if (self.pearson and ks is not None) else torch.zeros_like(dE)
        v, raw, flagged = self._ablated_rows(dE, dD)
        r = self._inv_sqrt(v, raw)
        b = r * dE
        if self.pearson:
            a = r * dD
            terms = ((a, b), (b, a - ((self.K - 1) / self.K) * b))
        else:
            terms = ((b, b),)
        return r, terms, flagged

    def _upper_from_delta(self, dE, ks=None):
        """Candidate upper triangles when map ``ks[c]`` (values ``dE[c]``, (C, n)) is ablated in every image.

        ``Z = (r r^T) * G - sum_t x_t y_t^T`` with ``r = v^-1/2`` (0 for a constant row) and the
        rank-2 (Pearson: ``num_ij = G_ij - d_i e_j - e_i d_j + e_i e_j (K-1)/K``, scaled by r) or
        rank-1 (cosine) correction, built row block by row block (:meth:`_scaled_upper`).
        """
        r, terms, flagged = self._delta_terms(dE, ks)
        Zu = self._scaled_upper(len(dE), lambda r0, r1: self.G[None, r0:r1, r0:], r, terms)
        for c, rows, direct in self._recomputed_rows(flagged, ks):
            self._set_rows(Zu[c], rows, direct)
        return Zu

    def _recomputed_rows(self, flagged, ks):
        """``(c, rows, similarities (R, n))`` of the rows of candidate c that lost too many digits, computed
        directly with map ``ks[c]`` ablated (none when nothing is ablated)."""
        if ks is None:
            return
        for c in torch.nonzero(flagged.any(dim=1)).flatten().tolist():
            rows = torch.nonzero(flagged[c]).flatten()
            keep = torch.ones(self.K, dtype=self.E.dtype, device=self.device)
            keep[ks[c]] = 0
            Ek = self.E * keep
            yield c, rows, self._direct_rows(Ek[rows], Ek)

    @property
    def _pooled_budget(self):
        """Elements of a chunk's dense temporaries: 16 MB on CPU (cache), 32x that on a GPU, where
        larger chunks batch more candidates into each sort."""
        return _POOLED_BUDGET if self.device.type == "cpu" else _POOLED_BUDGET << 5

    def _row_blocks(self, C):
        """Row blocks for C candidates: ``(r0, r1, lo, hi, cols)`` per block, where rows r0..r1 of the
        n x n matrix fill positions lo..hi of the upper triangle and ``cols`` are the flat indices of
        their upper parts in the rectangle ``[r0:r1, r0:n]``. On CPU a block's temporaries stay in cache
        (about ``_ROW_BLOCK`` elements); on other devices one block holds every row."""
        n = self.n
        rows = n if self.device.type != "cpu" else max(1, _ROW_BLOCK // max(1, C * n))
        cache = self.__dict__.setdefault("_blocks", {})
        if rows not in cache:
            blocks, lo = [], 0
            for r0 in range(0, n - 1, rows):
                r1 = min(n - 1, r0 + rows)  # the last row has no upper part
                w = n - r0
                cols = np.concatenate([i * w + np.arange(i + 1, w) for i in range(r1 - r0)])
                blocks.append((r0, r1, lo, lo + len(cols), cols if self.device.type == "cpu"
                               else torch.as_tensor(cols, device=self.device)))
                lo += len(cols)
            cache[rows] = blocks
        return cache[rows]

    def _scaled_upper(self, C, gram_block, r, terms):
        """Upper triangles (C, n_pairs) of ``Z = gram * r_i r_j - sum_t x_t,i y_t,j``.

        Parameters
        ----------
        C : int
            Number of candidates.
        gram_block : callable
            ``gram_block(r0, r1)`` returns the Gram rectangle ``[r0:r1, r0:n]``, (1 or C, r1 - r0, n - r0).
        r : tensor of shape (C, n)
            Row scales.
        terms : sequence of (x, y) tensors of shape (C, n)
            Rank-one corrections.

        Returns
        -------
        Zu : tensor of shape (C, n_pairs)
            Element-wise single operations only, so a candidate's bits do not depend on C or on
            the blocks. Within round-off of [-1, 1]: ranks and ties need no clamp.
        """
        Zu = torch.empty(C, self.n * (self.n - 1) // 2, dtype=self.E.dtype, device=self.device)
        blocks = self._row_blocks(C)
        # Every device: the same element-wise torch operations into two reused block buffers (on CPU
        # torch's broadcast multiply is ~3x numpy's on these (rows, 1) x (1, cols) outer products).
        size = max(C * (r1 - r0) * (self.n - r0) for r0, r1, *_ in blocks)
        buf, tmp = (torch.empty(size, dtype=self.E.dtype, device=self.device) for _ in range(2))
        on_cpu = self.device.type == "cpu"
        Zn, bufn = (Zu.numpy(), buf.numpy()) if on_cpu else (None, None)
        for r0, r1, lo, hi, cols in blocks:
            shape = (C, r1 - r0, self.n - r0)
            k = math.prod(shape)
            Z, T = buf[:k].view(shape), tmp[:k].view(shape)
            torch.mul(gram_block(r0, r1), r[:, r0:r1, None], out=Z)
            Z *= r[:, None, r0:]
            for x, y in terms:
                torch.mul(x[:, r0:r1, None], y[:, None, r0:], out=T)
                Z -= T
            # The gather of the triangle: on CPU by numpy (its take is ~3x torch's indexing, and
            # writes straight into one candidate's triangle).
            if not on_cpu:
                Zu[:, lo:hi] = torch.index_select(Z.reshape(C, -1), 1, cols)
            elif C == 1:
                np.take(bufn[:k], cols, out=Zn[0, lo:hi], mode="clip")
            else:
                Zn[:, lo:hi] = np.take(bufn[:k].reshape(C, -1), cols, axis=1)
        return Zu

    def _set_rows(self, zu, rows, z):
        """Write rows ``rows`` of a similarity matrix (``z``: (R, n)) into its upper triangle ``zu``."""
        n = self.n
        j = torch.arange(n, device=self.device)[None].expand(len(rows), n)
        r = rows[:, None].expand_as(j)
        off = j != r
        a, b = torch.minimum(r, j)[off], torch.maximum(r, j)[off]
        zu[a * n - a * (a + 1) // 2 + (b - a - 1)] = z[off]

    def _base_upper(self):
        return self._upper_from_delta(torch.zeros(1, self.n, dtype=self.E.dtype, device=self.device))

    def _loo_uppers(self, maps):
        step = _chunk(len(maps), 3 * self.n * self.n, self._pooled_budget)
        for a in range(0, len(maps), step):
            ks = torch.as_tensor(maps[a : a + step], device=self.device)
            yield a, self._upper_from_delta(self.Et[ks], ks)

    # Odd-one-out triplets that touch few pairs: the same arithmetic on those pairs only ----------
    def _pair_index(self, target):
        """Touched pairs as tensors and their Gram entries (from the Gram matrix when it is small, so that
        the values equal the dense path's bit for bit; else row by row: no n x n matrix)."""
        pi, pj = (torch.as_tensor(v, device=self.device) for v in (target.pair_i, target.pair_j))
        if self.n * self.n <= _SMALL_GRAM:
            return pi, pj, self.G[pi, pj]
        M = self.D if self.pearson else self.E
        Gp = torch.empty(len(pi), dtype=M.dtype, device=self.device)
        step = _chunk(len(pi), 2 * self.K)
        for a in range(0, len(pi), step):
            Gp[a : a + step] = (M[pi[a : a + step]] * M[pj[a : a + step]]).sum(dim=1)
        return pi, pj, Gp

    def _pairs_from_delta(self, dE, ks, pi, pj, Gp):
        """:meth:`_upper_from_delta` on the pairs ``(pi, pj)`` only: (C, P), the same operations per entry."""
        r, terms, flagged = self._delta_terms(dE, ks)
        Z = Gp[None] * r[:, pi]
        Z *= r[:, pj]
        for x, y in terms:
            Z -= x[:, pi] * y[:, pj]
        for c, rows, direct in self._recomputed_rows(flagged, ks):
            at = torch.full((self.n,), -1, dtype=torch.long, device=self.device)
            at[rows] = torch.arange(len(rows), device=self.device)
            for here, there in ((pi, pj), (pj, pi)):  # as _set_rows: row j's value last
                m = at[here] >= 0
                Z[c, m] = direct[at[here[m]], there[m]]
        return Z

    def _pair_loo(self, target, maps):
        pi, pj, Gp = self._pair_index(target)
        zero = torch.zeros(1, self.n, dtype=self.E.dtype, device=self.device)
        base = float(target.correlate(self._pairs_from_delta(zero, None, pi, pj, Gp))[0])
        out = np.empty(len(maps))
        step = _chunk(len(maps), 6 * len(pi))
        for a in range(0, len(maps), step):
            ks = torch.as_tensor(maps[a : a + step], device=self.device)
            out[a : a + len(ks)] = target.correlate(self._pairs_from_delta(self.Et[ks], ks, pi, pj, Gp)).cpu().numpy()
        return base, out

    def _pair_sweep(self, order, target, ts):
        """:meth:`sweep` on the touched pairs: running Gram entries of those pairs only."""
        pi, pj, Gp0 = self._pair_index(target)
        order = torch.as_tensor(np.asarray(order), device=self.device)
        want = np.zeros(self.K + 1, dtype=bool)
        want[ts] = True
        out = {}
        if want[self.K]:
            zero = torch.zeros(1, self.n, dtype=self.E.dtype, device=self.device)
            out[self.K] = float(target.correlate(self._pairs_from_delta(zero, None, pi, pj, Gp0))[0])
            want[self.K] = False
        last = int(np.nonzero(want)[0].max()) if want.any() else 0
        s = torch.zeros(self.n, dtype=self.E.dtype, device=self.device)
        q = torch.zeros_like(s)
        G = torch.zeros(len(pi), dtype=self.E.dtype, device=self.device)
        step = _chunk(self.K, 3 * len(pi))
        for a in range(0, last, step):
            b = min(a + step, last)
            Eo = self.Et[order[a:b]]
            cs = torch.cumsum(Eo, 0) + s
            cq = torch.cumsum(Eo * Eo, 0) + q
            s, q = cs[-1].clone(), cq[-1].clone()
            cG = Eo[:, pi] * Eo[:, pj]
            cG[0] += G
            cG = torch.cumsum(cG, dim=0)
            G = cG[-1].clone()
            sel = np.nonzero(want[a + 1 : b + 1])[0]
            if not len(sel):
                continue
            sel_t = torch.as_tensor(sel, device=self.device)
            cs, cq = cs[sel_t], cq[sel_t]
            v = cq - cs * cs / self.K if self.pearson else cq
            r = self._inv_sqrt(v, cq)
            Z = cG[sel_t] * r[:, pi]
            Z *= r[:, pj]
            if self.pearson:
                u = r * cs / math.sqrt(self.K)
                Z -= u[:, pi] * u[:, pj]
            for c, val in zip(sel, target.correlate(Z).cpu().numpy()):
                out[a + 1 + c] = val
        return np.array([out[int(t)] for t in ts])

    def sweep(self, order, target, ts):
        """Sums over the kept maps accumulate from zero: no cancellation, and by
        Cauchy-Schwarz the centred energy of a row keeping t < K maps is at least
        (1 - t / K) of its raw energy. t = K (all maps) is the base, computed from
        the centred statistics."""
        if isinstance(target, TripletTarget) and target.sparse:
            return self._pair_sweep(order, target, np.asarray(ts))
        order = torch.as_tensor(np.asarray(order), device=self.device)
        ts = np.asarray(ts)
        want = np.zeros(self.K + 1, dtype=bool)
        want[ts] = True
        out = {}
        if want[self.K]:
            out[self.K] = float(target.correlate(self._base_upper())[0])
            want[self.K] = False
        last = int(np.nonzero(want)[0].max()) if want.any() else 0
        n = self.n
        s = torch.zeros(n, dtype=self.E.dtype, device=self.device)
        q = torch.zeros_like(s)
        G = torch.zeros(n, n, dtype=self.E.dtype, device=self.device)  # running Gram matrix (upper part)
        step = _chunk(self.K, 3 * n * n, self._pooled_budget)
        for a in range(0, last, step):
            b = min(a + step, last)
            Eo = self.Et[order[a:b]]  # (C, n) maps in ranked order
            cs = torch.cumsum(Eo, 0) + s
            cq = torch.cumsum(Eo * Eo, 0) + q
            s, q = cs[-1].clone(), cq[-1].clone()
            sel = np.nonzero(want[a + 1 : b + 1])[0]
            Zu = self._prefix_uppers(Eo, G, cs[sel], cq[sel], sel)
            if Zu is not None:
                for c, val in zip(sel, target.correlate(Zu).cpu().numpy()):
                    out[a + 1 + c] = val
        return np.array([out[int(t)] for t in ts])

    def _prefix_uppers(self, Eo, G, cs, cq, sel):
        """Upper triangles of the prefix RSMs at steps ``sel`` of a chunk of ranked maps ``Eo`` (C, n),
        from the running Gram matrix ``G`` (its upper rectangles are brought up to date: + all of Eo).

        ``cs``, ``cq`` are the row sums and energies at those steps. Returns None when no step is wanted.
        """
        C = len(Eo)
        sel_t = torch.as_tensor(sel, device=self.device)
        v = cq - cs * cs / self.K if self.pearson else cq
        r = self._inv_sqrt(v, cq)
        terms = ()
        if self.pearson:  # num_ij = G_ij - s_i s_j / K
            u = r * cs / math.sqrt(self.K)
            terms = ((u, u),)

        def prefix_grams(r0, r1):
            if C == 1:  # G + e e^T, in place (the same sum as the prefix below)
                Gb = G[r0:r1, r0:]
                Gb += Eo[0, r0:r1, None] * Eo[0, None, r0:]
                return Gb[None]
            cG = Eo[:, r0:r1, None] * Eo[:, None, r0:]  # outer products, then
            cG[0] += G[r0:r1, r0:]  # the previous chunk's sum enters every prefix through the first term
            cG = torch.cumsum(cG, dim=0)  # dense prefix Gram rectangles (sequential sums)
            G[r0:r1, r0:] = cG[-1]
            return cG if len(sel) == C else cG[sel_t]

        if not len(sel):  # nothing to score: only bring G up to date
            for r0, r1, *_ in self._row_blocks(C):
                prefix_grams(r0, r1)
            return None
        return self._scaled_upper(len(sel), prefix_grams, r, terms)

    def per_image(self, H, comparison, rows=None):
        """Row t with map k ablated in image t only: ``num_tj = G_tj - e_tk (D or E)[j, k]`` for every
        j (all n columns; the diagonal is masked out of the target), scaled by the rows' ``v^-1/2``.
        Row 0 of each batch is the base (nothing ablated): the same arithmetic, so a map that is
        zero in image t has a per-image AIS of exactly 0. Cost per image: (K + 1) x n element-wise
        updates and the ranking of K + 1 rows."""
        rows_list = list(range(self.n) if rows is None else rows)
        base = np.zeros(len(rows_list))
        ablated = np.zeros((len(rows_list), self.K))
        zero = torch.zeros(1, dtype=self.E.dtype, device=self.device)
        v_all, raw_all = (self.vD, self.q) if self.pearson else (self.q, self.q)
        r_all = self._inv_sqrt(v_all, raw_all)
        # (K + 1, n): row 0 zero (nothing ablated), row k + 1 map k's (centred) values in every image
        src = torch.cat([torch.zeros(1, self.n, dtype=self.E.dtype, device=self.device),
                         self.Dt if self.pearson else self.Et])
        Z = torch.empty_like(src)
        for r, t in enumerate(rows_list):
            tv = self._row_target(H, t, None, comparison)
            e_t = torch.cat([zero, self.E[t]])  # index 0: nothing ablated
            d_t = torch.cat([zero, self.D[t]]) if self.pearson else None
            v_t, raw_t, flagged = self._ablated_rows(e_t, d_t, t)
            torch.mul(src, e_t[:, None], out=Z)
            torch.sub(self.G[t][None], Z, out=Z)
            Z *= self._inv_sqrt(v_t, raw_t)[:, None]
            Z *= r_all[None]
            Z.clamp_(-1.0, 1.0)
            flagged = torch.nonzero(flagged).flatten()
            if len(flagged):  # map k carried nearly all of row t's energy: recompute directly
                e = self.E[t][None].repeat(len(flagged), 1)
                e[torch.arange(len(flagged), device=self.device), flagged - 1] = 0
                Z[flagged] = self._direct_rows(e, self.E)
            rs = tv.correlate(Z).cpu().numpy()
            base[r], ablated[r] = rs[0], rs[1:]
        return base, ablated

    def _inv_sqrt(self, v, raw):
        """``v^-1/2`` of rows with information, 0 for constant rows."""
        return torch.where(self._alive(v, raw), v.clamp_min(1e-300).rsqrt(), torch.zeros_like(v))


# ---------------------------------------------------------------------------
# VGG-style heads: update of the first linear layer's pre-activation
# ---------------------------------------------------------------------------
class MLPKernel(AblationKernel):
    """First-layer updates, from the head's arrays: ``pooled`` (n, K, P) values per map, the first
    layer's ``weight`` (D1, K * P) and ``bias`` (D1,), and ``rest`` (the module after it)."""

    def __init__(self, pooled, weight, bias, rest, similarity, device, layer=None):
        super().__init__(similarity, device)
        self.dtype = torch.float32
        self.P = as_tensor(pooled, self.device, self.dtype)  # (n, K, P)
        self.n, self.K, self.Pn = self.P.shape
        self._rest = rest
        if layer is None:
            if weight.shape[1] != self.K * self.Pn:
                raise ValueError(
                    f"this head's first layer reads {weight.shape[1]} inputs, but {self.K} maps of {self.Pn} pooled "
                    f"values give {self.K * self.Pn}: the maps do not come from this head's network"
                )
            weight = torch.as_tensor(weight).to(device=self.device, dtype=self.dtype)  # (D1, K * P)
            # Map-major copy (K, P, D1): a chunk of maps is one contiguous block for the
            # batched GEMM (gathering the blocks from (D1, K * P) costs twice the GEMM).
            # For VGG16 it is a second copy of fc6 (411 MB).
            blocks = weight.T.contiguous().view(self.K, self.Pn, weight.shape[0])  # 2-D transpose: 5x a 3-D permute
            layer = (weight, blocks, torch.as_tensor(bias).to(device=self.device, dtype=self.dtype))
        self._layer = layer  # shared with subsets
        self.weight, self.Wm, self.b = layer
        self.D1 = self.weight.shape[0]
        self.Pk = self.P.permute(1, 0, 2).contiguous()  # (K, n, P), map-major as well
        self.rest = rest
        with torch.inference_mode():
            self.A = self.P.flatten(1) @ self.weight.T + self.b  # (n, D1), as the head computes it
            self.E0 = self.rest(self.A).double()
        _check_finite_embeddings(self.E0)
        self.alive = self.P.abs().amax(-1) > 0  # (n, K): pairs worth computing
        # (n, K): map k is image i's only non-zero map. Ablating it leaves exactly the bias,
        # which A - contribution only approximates in float32 (and images left with nothing
        # must embed identically: their similarities tie).
        self.lone = self.alive & (self.alive.sum(1, keepdim=True) == 1)

    def _make_subset(self, idx):
        idx_t = torch.as_tensor(np.asarray(idx), device=self.device)
        return MLPKernel(self.P[idx_t], None, None, self._rest, self.similarity, self.device, layer=self._layer)

    def embeddings(self, keep=None):
        if keep is None:
            return self.E0
        keep_t = torch.as_tensor(np.asarray(keep, dtype=np.float32), device=self.device)
        with torch.inference_mode():
            A = (self.P * keep_t[None, :, None]).flatten(1) @ self.weight.T + self.b
            return self.rest(A).double()

    def _contrib(self, ks, rows=None):
        """First-layer contribution of maps ``ks`` in each image (or in images ``rows``): (C, n', D1)."""
        P = self.Pk[ks] if rows is None else self.Pk[ks][:, rows]
        return torch.bmm(P, self.Wm[ks])

    def _gram_upper(self, G, s, D):
        """Upper triangles of the RSMs from raw Gram matrices ``G`` (B, n, n, float64,
        overwritten) and row sums ``s`` (B, n).

        The centred Gram matrix is ``G - s s^T / D``: exact up to a factor ``raw /
        centred`` energy of round-off, ~1-3 for ReLU embeddings. A candidate with a row
        that would lose more than 4 digits that way (nearly constant) is flagged in
        ``lossy`` (B,) for the caller to recompute with explicit centring. Same
        constant-row rule as ``rsm_torch``.
        """
        raw = torch.diagonal(G, dim1=1, dim2=2).clone()
        pearson = self.similarity == "pearson"
        v = raw - s * s / D if pearson else raw
        alive = (v > REL_EPS * raw) & (v > 0)
        lossy = self._lossy(raw, s, D).any(dim=1)
        r = torch.where(alive, v.clamp_min(torch.finfo(G.dtype).tiny).rsqrt(), torch.zeros_like(v))
        G *= r[:, :, None]
        G *= r[:, None, :]
        if pearson:  # centred: G_ij - s_i s_j / D (single roundings: a candidate's bits do not depend on B)
            u = r * s / math.sqrt(D)
            G -= u[:, :, None] * u[:, None, :]
        return self._upper_of(G).clamp_(-1.0, 1.0), lossy

    def _lossy(self, raw, s, D):
        """Rows (given raw energy and row sum) that would lose more than 4 digits in
        ``G - s s^T / D``: alive but with centred energy below ``_LOSSY_REL`` of the raw one."""
        if self.similarity != "pearson":
            return torch.zeros_like(raw, dtype=torch.bool)
        v = raw - s * s / D
        return (v > REL_EPS * raw) & (v < _LOSSY_REL * raw)

    @property
    def gram0(self):
        """Raw Gram matrix and row sums of the unablated embeddings (float64)."""
        if getattr(self, "_gram0", None) is None:
            self._gram0 = (self.E0 @ self.E0.T, self.E0.sum(dim=1))
        return self._gram0

    def _base_upper(self):
        G0, s0 = self.gram0
        Zu, lossy = self._gram_upper(G0.clone()[None], s0[None], self.E0.shape[1])
        if bool(lossy[0]):
            Zu[0] = self._rsm_uppers(self.E0[None])[0]
        return Zu

    def _loo_uppers(self, maps):
        """Map k changes only the images where it is alive: their rows of the Gram
        matrix are recomputed (one GEMM against the unablated embeddings for the whole
        chunk, then the small changed-by-changed blocks); no (maps, n, D) tensor."""
        n, D1, D = self.n, self.D1, self.E0.shape[1]
        G0, s0 = self.gram0
        step = _chunk(len(maps), n * max(D1, n * 4))
        with torch.inference_mode():
            for a in range(0, len(maps), step):
                ks = torch.as_tensor(maps[a : a + step], device=self.device)
                C = len(ks)
                alive = self.alive[:, ks].T  # (C, n)
                G = G0.expand(C, n, n).clone()
                S = s0.expand(C, n).clone()
                ci, ii = alive.nonzero(as_tuple=True)  # ordered by candidate, then image
                if len(ci):
                    pre = self.A[None] - self._contrib(ks)
                    pre[self.lone[:, ks].T] = self.b
                    E_new = self.rest(pre[ci, ii]).double()  # (R, D)
                    M = E_new @ self.E0.T  # changed rows against the unchanged embeddings
                    G[ci, ii, :] = M
                    G[ci, :, ii] = M
                    S[ci, ii] = E_new.sum(dim=1)
                    bounds = np.r_[0, np.cumsum(alive.sum(dim=1).cpu().numpy())]
                    for c in range(C):  # changed-by-changed blocks
                        lo, hi = bounds[c], bounds[c + 1]
                        if hi > lo:
                            rows = ii[lo:hi]
                            G[c, rows[:, None], rows[None, :]] = E_new[lo:hi] @ E_new[lo:hi].T
                Zu, lossy = self._gram_upper(G, S, D)
                for c in torch.nonzero(lossy).flatten().tolist():
                    E = self.E0.clone()
                    sel = ci == c
                    E[ii[sel]] = E_new[sel]
                    Zu[c] = self._rsm_uppers(E[None])[0]
                yield a, Zu

    def sweep(self, order, target, ts):
        """Pre-activations accumulate map by map in ranked order. An image whose next
        map is all zero keeps its embedding, so only (step, image) pairs whose map is
        alive go through the rest of the head (and only those a requested step reads),
        and only the changed rows of the Gram matrix are recomputed."""
        order = torch.as_tensor(np.asarray(order), device=self.device)
        ts = np.asarray(ts)
        want = np.zeros(self.K + 1, dtype=bool)
        want[ts] = True
        n, D1 = self.n, self.D1
        out = {}
        acc = self.b[None].expand(n, D1).clone()  # pre-activation with no map kept
        image = torch.arange(n, device=self.device)
        with torch.inference_mode():
            E_cur = self.rest(acc[:1]).double().expand(n, -1).clone()  # embedding with no map kept
            D = E_cur.shape[1]
            G_cur, s_cur = E_cur @ E_cur.T, E_cur.sum(dim=1)
            dirty = torch.zeros(n, dtype=torch.bool, device=self.device)  # rows of G_cur out of date
            step = _chunk(self.K, n * max(D1, n * 4))
            last = int(ts.max())
            for a in range(0, last, step):
                b = min(a + step, last)
                C = b - a
                ks = order[a:b]
                pre = self._contrib(ks)  # (C, n, D1)
                pre[0] += acc
                _prefix_sum_(pre)
                acc = pre[-1].clone()
                alive = self.alive[:, ks].T  # (C, n)
                steps = torch.arange(C, device=self.device)[:, None].expand(C, n)
                # Last step <= c at which image i changed in this chunk (-1: none yet).
                last_change = torch.where(alive, steps, torch.full_like(steps, -1)).cummax(dim=0).values
                sel = np.nonzero(want[a + 1 : b + 1])[0]
                visits = np.r_[sel, C - 1] if (not len(sel) or sel[-1] != C - 1) else sel
                code = last_change[torch.as_tensor(visits, device=self.device)] * n + image
                needed = torch.unique(code[code >= 0])
                E_new = self.rest(pre.reshape(C * n, D1)[needed]).double()
                current = torch.full((n,), -1, dtype=torch.long, device=self.device)
                grams, sums, direct = [], [], {}
                for c in visits:
                    src = last_change[c]
                    changed = torch.nonzero(src > current).flatten()
                    if len(changed):
                        E_cur[changed] = E_new[torch.searchsorted(needed, src[changed] * n + changed)]
                        current[changed] = src[changed]
                        dirty[changed] = True
                    if want[a + 1 + c]:
                        rows = torch.nonzero(dirty).flatten()
                        if len(rows):
                            M = E_cur[rows] @ E_cur.T
                            G_cur[rows, :] = M
                            G_cur[:, rows] = M.T
                            s_cur[rows] = E_cur[rows].sum(dim=1)
                            dirty[:] = False
                        grams.append(G_cur.clone())
                        sums.append(s_cur.clone())
                        if bool(self._lossy(torch.diagonal(G_cur), s_cur, D).any()):  # E_cur moves on
                            direct[len(grams) - 1] = self._rsm_uppers(E_cur[None])[0]
                if grams:
                    Zu, _ = self._gram_upper(torch.stack(grams), torch.stack(sums), D)
                    for c, z in direct.items():
                        Zu[c] = z
                    for c, val in zip(sel, target.correlate(Zu).cpu().numpy()):
                        out[a + 1 + c] = val
        return np.array([out[int(t)] for t in ts])

    def per_image(self, H, comparison, rows=None):
        """One pass over the maps for a block of images (the leave-one-out's (map, image) rows, in
        GEMMs of many images), not one pass per image: each pass reads every first-layer block once."""
        rows_list = list(range(self.n) if rows is None else rows)
        n, K = self.n, self.K
        center = self.similarity == "pearson"
        base = np.zeros(len(rows_list))
        ablated = np.zeros((len(rows_list), K))
        D1 = self.D1
        block = _chunk(len(rows_list), K * n)  # rows of (K, n) candidate similarities held at once
        with torch.inference_mode():
            std0 = standardize_rows(self.E0, center=center)
            base_full = (std0 @ std0.T).clamp(-1, 1)
            targets = list(self._row_targets(H, comparison, rows_list))
            for r0 in range(0, len(rows_list), block):
                rt = torch.as_tensor(rows_list[r0 : r0 + block], device=self.device)
                R = len(rt)
                Z = torch.zeros(R, K, n, dtype=torch.float64, device=self.device)
                alive, lone = self.alive[rt], self.lone[rt]  # (R, K)
                Ar = self.A[rt]
                step = _chunk(K, R * D1)
                for a in range(0, K, step):
                    b = min(a + step, K)
                    al = alive[:, a:b].T  # (C, R)
                    if not bool(al.any()):
                        continue
                    pre = Ar[None] - self._contrib(torch.arange(a, b, device=self.device), rows=rt)
                    pre[lone[:, a:b].T] = self.b
                    Et = standardize_rows(self.rest(pre[al]).double(), center=center)
                    ci, ri = al.nonzero(as_tuple=True)
                    Z[ri, a + ci] = (Et @ std0.T).clamp_(-1, 1)
                for r_ in range(R):
                    t, others, tv = targets[r0 + r_]
                    o = torch.as_tensor(others, device=self.device)
                    out = r0 + r_
                    base[out] = float(tv.correlate(base_full[t, o][None])[0])
                    ablated[out] = base[out]  # maps that are zero in image t change nothing
                    live = torch.nonzero(alive[r_]).flatten()
                    if len(live):
                        ablated[out, live.cpu().numpy()] = tv.correlate(Z[r_, live][:, o]).cpu().numpy()
        return base, ablated


# ---------------------------------------------------------------------------
# Any other head: brute force, batched
# ---------------------------------------------------------------------------
class BruteForceKernel(AblationKernel):
    """Any head, by brute force: every ablated batch is embedded (``fm.head.embed_maps``). Tokens carried
    beside the grid (``fm.extra_tokens``: a CLS token) go with their image's rows and are never ablated."""

    def __init__(self, fm: FeatureMaps, similarity, device):
        super().__init__(similarity, device)
        self.fm = fm
        # (n, K, h, w), or a list of (K, h_i, w_i) for ragged maps (embedded image by image)
        self.maps = fm.tensors(self.device)
        self.extra = None if fm.extra_tokens is None else as_tensor(fm.extra_tokens, self.device, torch.float32)
        self.n, self.K = len(fm), fm.n_maps
        self._numel = sum(m.numel() for m in self.maps) if fm.ragged else self.maps.numel()
        with torch.inference_mode():
            self.E0 = self._embed(self.maps).double()
        _check_finite_embeddings(self.E0)
        # (n, K): ablating a map that is zero in an image changes nothing there
        if fm.ragged:
            self.alive = torch.stack([m.flatten(1).abs().amax(-1) > 0 for m in self.maps])
        else:
            self.alive = self.maps.flatten(2).abs().amax(-1) > 0
        self._base = None

    def _head(self, x, images, repeat=1):
        """The head on a batch ``x`` of maps of ``images`` (an index or a slice), the batch ``repeat`` times those images."""
        extra = None
        if self.extra is not None:
            extra = self.extra[images]
            if extra.ndim == 2:
                extra = extra[None]
            if repeat > 1:
                extra = extra.repeat(repeat, 1, 1)
        return self.fm.head.embed_maps(x, extra)

    def _embed(self, maps):
        """Embeddings of a (n, K, h, w) batch, or of a list of (K, h_i, w_i) maps image by image."""
        if isinstance(maps, list):
            return torch.cat([self._head(m[None], i) for i, m in enumerate(maps)])
        return self._head(maps, slice(None))

    def _make_subset(self, idx):
        return BruteForceKernel(self.fm[np.asarray(idx)], self.similarity, self.device)

    def embeddings(self, keep=None):
        if keep is None:
            return self.E0
        keep_t = torch.as_tensor(np.asarray(keep, dtype=np.float32), device=self.device)
        with torch.inference_mode():
            if self.fm.ragged:
                return self._embed([m * keep_t[:, None, None] for m in self.maps]).double()
            return self._head(self.maps * keep_t[None, :, None, None], slice(None)).double()

    def _masked_batch(self, masks):
        """Embeddings for a batch of keep-masks (C, K) -> (C, n, D)."""
        C = masks.shape[0]
        if self.fm.ragged:
            with torch.inference_mode():
                E = [self._head(m[None] * masks[:, :, None, None], i, C).double()  # (C, D) each
                     for i, m in enumerate(self.maps)]
            return torch.stack(E, dim=1)
        x = self.maps[None] * masks[:, None, :, None, None]
        with torch.inference_mode():
            E = self._head(x.reshape(C * self.n, *self.maps.shape[1:]), slice(None), C).double()
        return E.reshape(C, self.n, -1)

    def _base_upper(self):
        if self._base is None:
            self._base = self._rsm_uppers(self.E0[None])
        return self._base

    def _loo_uppers(self, maps):
        """Brute force in batches; a map that is zero in every image changes nothing, so its
        candidate is the base triangle itself (a batched head need not repeat the base's bits)."""
        step = _chunk(len(maps), self._numel)
        dead = ~self.alive.any(dim=0)  # (K,)
        for a in range(0, len(maps), step):
            ks = torch.as_tensor(maps[a : a + step], device=self.device)
            masks = torch.ones(len(ks), self.K, device=self.device)
            masks[torch.arange(len(ks)), ks] = 0
            Zu = self._rsm_uppers(self._masked_batch(masks))
            if bool(dead[ks].any()):
                Zu[dead[ks]] = self._base_upper()[0]
            yield a, Zu

    def sweep(self, order, target, ts):
        order = torch.as_tensor(np.asarray(order), device=self.device)
        ts = np.asarray(ts)
        out = np.empty(len(ts))
        step = _chunk(len(ts), self._numel)
        for a in range(0, len(ts), step):
            tt = ts[a : a + step]
            masks = torch.zeros(len(tt), self.K, device=self.device)
            for c, t in enumerate(tt):
                masks[c, order[:t]] = 1
            out[a : a + step] = target.correlate(self._rsm_uppers(self._masked_batch(masks))).cpu().numpy()
        return out

    def per_image(self, H, comparison, rows=None):
        rows_list = list(range(self.n) if rows is None else rows)
        base = np.zeros(len(rows_list))
        ablated = np.zeros((len(rows_list), self.K))
        center = self.similarity == "pearson"
        std0 = standardize_rows(self.E0, center=center)
        step = _chunk(self.K, self.maps[0].numel())
        for r, (t, others, tv) in enumerate(self._row_targets(H, comparison, rows_list)):
            o = torch.as_tensor(others, device=self.device)
            base[r] = float(tv.correlate((std0[t] @ std0[o].T)[None].clamp(-1, 1))[0])
            for a in range(0, self.K, step):
                ks = torch.arange(a, min(a + step, self.K), device=self.device)
                x = self.maps[t][None].repeat(len(ks), 1, 1, 1)
                x[torch.arange(len(ks)), ks] = 0
                with torch.inference_mode():
                    Et = standardize_rows(self._head(x, t, len(ks)).double(), center=center)
                ablated[r, a : a + len(ks)] = tv.correlate((Et @ std0[o].T).clamp(-1, 1)).cpu().numpy()
            ablated[r, ~self.alive[t].cpu().numpy()] = base[r]  # a map that is zero in image t changes nothing
        return base, ablated


def make_kernel(X, similarity: str = "pearson", device="cpu") -> AblationKernel:
    """Prepare the kernels for ``X``.

    Parameters
    ----------
    X : FeatureMaps or array-like of shape (n, K)
        Feature maps with their head, or an embedding whose columns are the units.
    similarity : {"pearson", "cosine"}, default="pearson"
    device : str or torch.device, default="cpu"
        Where the kernels run (``"cuda"``: the same computation on the GPU, with the same results).

    Returns
    -------
    kernel : AblationKernel
        The head's own kernel (:meth:`~sklearn_ais.backbones.Head.ablation_kernel`), else the one its
        :meth:`~sklearn_ais.backbones.Head.kernel_spec` names, with the arrays it gives: rank-one
        updates for pooling heads, first-layer updates for MLP heads, batched brute force for
        any other head; rank-one updates for a 2-D embedding (identity head).
    """
    if isinstance(X, FeatureMaps):
        kernel = X.head.ablation_kernel(X, similarity, device)
        if kernel is not None:
            return kernel
        device = resolve_device(device)
        kind, arguments = X.head.kernel_spec(X, device)
        if kind not in _KERNELS:
            raise ValueError(f"{type(X.head).__name__}.kernel_spec names an unknown kernel {kind!r}; one of {sorted(_KERNELS)}")
        if kind == "brute force":
            return BruteForceKernel(X, similarity, device)
        return _KERNELS[kind](**arguments, similarity=similarity, device=device)
    return PooledKernel(X, similarity, device)


_KERNELS = {"brute force": BruteForceKernel, "pooled": PooledKernel, "first layer": MLPKernel}
