"""The naive AIS algorithm, as the original reference implementation ran it.

For every candidate (a map ablated in every image, the top-t maps kept, or a
map ablated in one image) the embeddings are recomputed through the head,
the model RSM is rebuilt with ``np.corrcoef`` and compared with the human
upper triangle by ``scipy.stats.spearmanr``. Nothing is shared between
candidates.

Two ways to push images through the head:

* ``batch1=True`` (the faithful version): one forward pass per image, batch
  size 1, exactly what the reference did (for VGG16: maxpool, avgpool, fc6,
  ReLU, fc7, ReLU re-run once per (image, map));
* ``batch1=False``: the n images of one candidate go through the head in one
  batch (a stronger baseline, reported for information).

Conventions shared with the package (so the values are comparable):
a row with zero variance has similarity 0 to every other row (``np.corrcoef``
gives NaN), and model similarities tie when they are sorted neighbours at
most 4 steps apart on a grid of step 2**-42 (about 9e-13: pairs that are
mathematically tied, e.g. all pairs of a one-map embedding, are tied whatever
the round-off).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

__all__ = [
    "embed",
    "rsm",
    "rsm_row",
    "compare",
    "two_oi",
    "naive_loo",
    "naive_sweep",
    "naive_per_image",
]


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def embed(maps: torch.Tensor, head, batch1: bool = True) -> np.ndarray:
    """Embeddings (n, D) float64 of float32 maps (n, K, h, w) through ``head``."""
    with torch.inference_mode():
        if batch1:
            out = [head.embed(maps[i : i + 1]) for i in range(maps.shape[0])]
            E = torch.cat(out)
        else:
            E = head.embed(maps)
    return E.double().cpu().numpy()


def rsm(E: np.ndarray) -> np.ndarray:
    """``np.corrcoef`` of the embedding rows; constant rows -> 0, unit diagonal."""
    with np.errstate(invalid="ignore", divide="ignore"):
        Z = np.corrcoef(E)
    Z = np.nan_to_num(Z, nan=0.0)
    np.fill_diagonal(Z, 1.0)
    return Z


def rsm_row(e, others: np.ndarray) -> np.ndarray:
    """Pearson correlation of one embedding ``e`` (D,) with each row of ``others`` (m, D)."""
    def standardize(A):
        A = A - A.mean(axis=-1, keepdims=True)
        norm = np.sqrt((A * A).sum(axis=-1, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(A / norm, nan=0.0, posinf=0.0, neginf=0.0)

    return np.clip(standardize(others) @ standardize(np.asarray(e)[None])[0], -1.0, 1.0)


def tie_runs(values) -> np.ndarray:
    """One id per model value; tied values share it (the tie rule above), ids increase with the value."""
    q = np.trunc(np.asarray(values, float) * 2.0**42 + (2.0**42 + 0.5))
    order = np.argsort(q, kind="stable")
    ids = np.empty(len(q))
    ids[order] = np.concatenate([[0], np.cumsum(np.diff(q[order]) > 4)])
    return ids


def compare(model, human) -> float:
    """Spearman correlation of two vectors (human NaN = missing), scipy."""
    model, human = np.asarray(model, float), np.asarray(human, float)
    ok = ~np.isnan(human)
    runs, human = tie_runs(model[ok]), human[ok]
    if np.ptp(runs) == 0 or np.ptp(human) == 0:
        return 0.0
    return float(stats.spearmanr(runs, human).statistic)


def two_oi(E: np.ndarray, human_upper: np.ndarray) -> float:
    """2OI: Spearman of the upper triangles of the model RSM and the human matrix."""
    iu = np.triu_indices(E.shape[0], 1)
    return compare(rsm(E)[iu], human_upper)


def _maps_tensor(maps, device="cpu") -> torch.Tensor:
    return torch.as_tensor(np.asarray(maps), dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------
# The three naive computations
# ---------------------------------------------------------------------------
def naive_loo(maps, head, H, ks=None, batch1=True, device="cpu"):
    """Base 2OI and 2OI with map k zeroed in every image, for each k in ``ks``.

    Returns ``(base, values)`` with ``values[i]`` the ablated 2OI of ``ks[i]``
    (AIS_k = base - values[i]).
    """
    x = _maps_tensor(maps, device)
    K = x.shape[1]
    ks = np.arange(K) if ks is None else np.asarray(ks)
    h = H[np.triu_indices(H.shape[0], 1)]
    base = two_oi(embed(x, head, batch1), h)
    out = np.empty(len(ks))
    for i, k in enumerate(ks):
        saved = x[:, k].clone()
        x[:, k] = 0  # map k set to 0 in every image
        out[i] = two_oi(embed(x, head, batch1), h)
        x[:, k] = saved
    return base, out


def naive_sweep(maps, head, H, order, ts, batch1=True, device="cpu"):
    """2OI when only the maps ``order[:t]`` are kept, for each t in ``ts``."""
    x = _maps_tensor(maps, device)
    K = x.shape[1]
    h = H[np.triu_indices(H.shape[0], 1)]
    out = np.empty(len(ts))
    for i, t in enumerate(ts):
        keep = torch.zeros(K, dtype=x.dtype, device=x.device)
        keep[torch.as_tensor(np.asarray(order[:t]), device=x.device)] = 1
        out[i] = two_oi(embed(x * keep[None, :, None, None], head, batch1), h)
    return out


def naive_per_image(maps, head, H, rows, ks=None, batch1=True, device="cpu"):
    """Per-image 2OI: row t of the RSM (diagonal excluded) against the human row.

    For each image ``t`` in ``rows`` and each map ``k`` in ``ks``, map k is
    zeroed in image t only, image t is re-embedded (the other embeddings do
    not change), row t of ``np.corrcoef`` is rebuilt and compared with
    ``H[t, others]`` by Spearman. With ``batch1=False`` the ablations of one
    image go through the head together.

    Returns ``(base, values)``, shapes (len(rows),) and (len(rows), len(ks)).
    """
    x = _maps_tensor(maps, device)
    n, K = x.shape[:2]
    ks = np.arange(K) if ks is None else np.asarray(ks)
    E = embed(x, head, batch1=batch1)
    Z = rsm(E)
    base = np.empty(len(rows))
    out = np.empty((len(rows), len(ks)))
    for r, t in enumerate(rows):
        others = np.r_[0:t, t + 1 : n]
        base[r] = compare(Z[t, others], H[t, others])
        if batch1:
            Et = []
            for k in ks:
                xt = x[t : t + 1].clone()
                xt[0, k] = 0
                Et.append(embed(xt, head, batch1=True)[0])
            Et = np.asarray(Et)
        else:
            xt = x[t][None].repeat(len(ks), 1, 1, 1)
            xt[torch.arange(len(ks)), torch.as_tensor(ks)] = 0
            Et = embed(xt, head, batch1=False)
        for c in range(len(ks)):  # only row t of the RSM changes
            out[r, c] = compare(rsm_row(Et[c], E[others]), H[t, others])
    return base, out
