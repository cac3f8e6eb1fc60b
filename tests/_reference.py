"""Naive, independent references: zero a map, re-embed, np.corrcoef, scipy."""

import numpy as np
import torch
from scipy import stats


def naive_rsm(E, similarity):
    E = np.asarray(E, dtype=np.float64)
    if similarity == "pearson":
        with np.errstate(invalid="ignore", divide="ignore"):
            Z = np.corrcoef(E)
    else:
        norms = np.linalg.norm(E, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            Z = (E @ E.T) / np.outer(norms, norms)
    Z = np.nan_to_num(Z, nan=0.0)  # the package's convention for constant rows
    np.fill_diagonal(Z, 1.0)
    return Z


def tie_runs(a):
    """The package's tie rule, written out: grid of step 2**-42, sorted neighbours <= 4 steps apart tie.

    Returns one id per value (equal ids = tied, ids increase with the value), so
    ``scipy.stats.spearmanr(tie_runs(a), b)`` is the package's Spearman.
    """
    q = np.trunc(np.asarray(a, float) * 2.0**42 + (2.0**42 + 0.5))
    order = np.argsort(q, kind="stable")
    run = np.concatenate([[0], np.cumsum(np.diff(q[order]) > 4)])
    ids = np.empty(len(q))
    ids[order] = run
    return ids


def kendall_tau_a(x, y):
    """Kendall's tau-a by its definition: all m (m - 1) / 2 pairs, a pair tied on either side counts 0."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    m = len(x)
    s = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
    return float(s[np.triu_indices(m, 1)].sum() / (m * (m - 1) / 2))


def rho_a(x, y):
    """rsatoolbox's rho-a: 12 sum((R_x - (m+1)/2)(R_y - (m+1)/2)) / (m^3 - m), average ranks."""
    m = len(x)
    rx, ry = stats.rankdata(x) - (m + 1) / 2, stats.rankdata(y) - (m + 1) / 2
    return float(12 * (rx * ry).sum() / (m**3 - m))


def naive_compare(a, b, comparison):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~np.isnan(b)
    a, b = a[ok], b[ok]
    if comparison == "cosine":  # the angle between the vectors as they are (rsatoolbox's cosine); a zero vector: 0
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        return float(a @ b / norms) if norms > 0 else 0.0
    if np.ptp(tie_runs(a)) == 0 or np.ptp(b) == 0:
        return 0.0
    if comparison == "spearman":
        return stats.spearmanr(tie_runs(a), b).statistic
    if comparison == "kendall_tau_a":
        return kendall_tau_a(tie_runs(a), b)
    if comparison == "rho_a":
        return rho_a(tie_runs(a), b)
    r = stats.pearsonr(a, b).statistic
    return r * r if comparison == "pearson_r2" else r


def naive_2oi(E, H, similarity, comparison):
    iu = np.triu_indices(len(H), 1)
    return naive_compare(naive_rsm(E, similarity)[iu], H[iu], comparison)


def embed(maps_or_E, head=None, keep=None):
    """Embeddings with maps outside ``keep`` set to zero (identity head for 2-D)."""
    X = np.array(maps_or_E, dtype=np.float64 if head is None else np.float32, copy=True)
    if keep is not None:
        X[:, ~np.asarray(keep, bool)] = 0
    if head is None:
        return X
    with torch.no_grad():
        return head.embed(torch.as_tensor(X)).double().numpy()


def naive_ais(X, H, similarity, comparison, head=None):
    K = X.shape[1]
    base = naive_2oi(embed(X, head), H, similarity, comparison)
    scores = np.empty(K)
    for k in range(K):
        keep = np.ones(K, bool)
        keep[k] = False
        scores[k] = base - naive_2oi(embed(X, head, keep), H, similarity, comparison)
    return base, scores


def naive_path(X, H, order, similarity, comparison, head=None):
    K = X.shape[1]
    out = []
    for t in range(1, K + 1):
        keep = np.zeros(K, bool)
        keep[order[:t]] = True
        out.append(naive_2oi(embed(X, head, keep), H, similarity, comparison))
    return np.array(out)


def naive_image_scores(X, H, similarity, comparison, head=None):
    n, K = X.shape[:2]
    E = embed(X, head)
    out = np.zeros((n, K))
    for t in range(n):
        others = np.r_[0:t, t + 1 : n]
        base = naive_compare(naive_rsm(E, similarity)[t, others], H[t, others], comparison)
        for k in range(K):
            Xt = np.array(X, copy=True)
            Xt[t, k] = 0
            Ek = embed(Xt, head)
            out[t, k] = base - naive_compare(naive_rsm(Ek, similarity)[t, others], H[t, others], comparison)
    return out
