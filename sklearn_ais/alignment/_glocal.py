"""gLocal: affine post-alignment of embeddings to odd-one-out judgments (Muttenthaler et al., 2023)."""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._similarity import COMPARISONS, SIMILARITIES, similarity_matrix
from .._sklearn_compat import Interval, StrOptions, _fit_context
from .._targets import check_similarity_target, sample_ids
from .._triplets import check_triplet_target, is_triplet_target
from ._base import SimilarityAligner, as_embeddings, standardization, torch_threads

__all__ = ["GLocalAligner", "glocal_loss", "odd_one_out_accuracy", "triplets_from_similarity"]

# Triplets used when n_triplets=None: all of them up to this many, else a sample.
_MAX_TRIPLETS = 100_000


# ---------------------------------------------------------------------------
# Triplets
# ---------------------------------------------------------------------------
def _all_or_sampled_triplets(n, n_triplets, rng):
    total = math.comb(n, 3)
    if n_triplets is None:
        n_triplets = min(total, _MAX_TRIPLETS)
    if n_triplets >= total:
        idx = np.array(np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")).reshape(3, -1).T
        return idx[(idx[:, 0] < idx[:, 1]) & (idx[:, 1] < idx[:, 2])]
    # Sample distinct unordered triplets: draw index rows, keep those with three
    # distinct images, sort them and drop repeats, until there are enough.
    out = np.empty((0, 3), dtype=np.int64)
    while len(out) < n_triplets:
        need = n_triplets - len(out)
        cand = np.sort(rng.randint(0, n, size=(2 * need + 16, 3)), axis=1)
        cand = cand[(cand[:, 0] < cand[:, 1]) & (cand[:, 1] < cand[:, 2])]
        merged = np.concatenate([out, cand])
        _, first = np.unique(merged, axis=0, return_index=True)
        out = merged[np.sort(first)][:n_triplets]
    return out.astype(np.int64)


def triplets_from_similarity(similarity, n_triplets=None, random_state=None, y_kind="similarity") -> np.ndarray:
    """Odd-one-out triplets implied by a similarity matrix.

    For each triplet of distinct images the odd one out is the image least
    similar to the other two, i.e. the one outside the most similar pair.
    Triplets with a missing (NaN) pair or a tie for the most similar pair are
    dropped.

    Parameters
    ----------
    similarity : array-like of shape (n, n)
        Human similarity matrix (NaN = missing pair).
    n_triplets : int or None, default=None
        Number of triplets to sample (without repetition); ``None`` takes all
        ``n choose 3`` triplets when there are at most 100,000, else samples
        100,000.
    random_state : int, RandomState instance or None, default=None
    y_kind : {"similarity", "dissimilarity"}, default="similarity"

    Returns
    -------
    triplets : ndarray of shape (m, 3), int
        Rows ``(i, j, k)``: ``i, j`` the most similar pair, ``k`` the odd
        one out (the convention of :class:`GLocalAligner`).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import triplets_from_similarity
    >>> S = np.array([[1., .9, .1], [.9, 1., .2], [.1, .2, 1.]])
    >>> triplets_from_similarity(S)
    array([[0, 1, 2]])
    """
    H = check_similarity_target(similarity, np.asarray(similarity).shape[0], y_kind)
    n = H.shape[0]
    if n < 3:
        raise ValueError("at least 3 images are needed to form a triplet")
    rng = check_random_state(random_state)
    T = _all_or_sampled_triplets(n, n_triplets, rng)
    a, b, c = T.T
    sims = np.stack([H[a, b], H[a, c], H[b, c]], axis=1)  # pairs (a,b), (a,c), (b,c)
    ok = ~np.isnan(sims).any(axis=1)
    T, sims = T[ok], sims[ok]
    best = np.argmax(sims, axis=1)
    top = np.take_along_axis(sims, best[:, None], axis=1)[:, 0]
    unique = (sims == top[:, None]).sum(axis=1) == 1
    odd = np.choose(best, [T[:, 2], T[:, 1], T[:, 0]])
    first = np.choose(best, [T[:, 0], T[:, 0], T[:, 1]])
    second = np.choose(best, [T[:, 1], T[:, 2], T[:, 2]])
    return np.stack([first, second, odd], axis=1)[unique].astype(np.int64)


def odd_one_out_accuracy(embeddings, triplets, similarity="dot") -> float:
    """Fraction of triplets whose most similar pair under the model is the human pair.

    Parameters
    ----------
    embeddings : array-like of shape (n, D)
    triplets : array-like of shape (m, 3), int
        Rows ``(i, j, k)`` with ``k`` the human odd one out.
    similarity : {"dot", "cosine", "pearson"}, default="dot"

    Returns
    -------
    accuracy : float
        Ties for the most similar pair count as errors.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import odd_one_out_accuracy
    >>> E = np.array([[1., 0.], [.9, .1], [0., 1.]])
    >>> odd_one_out_accuracy(E, [[0, 1, 2], [0, 2, 1]])
    0.5
    """
    E = np.asarray(embeddings, dtype=np.float64)
    T = np.asarray(triplets, dtype=np.int64)
    if T.ndim != 2 or T.shape[1] != 3:
        raise ValueError(f"triplets must have shape (m, 3), got {T.shape}")
    S = E @ E.T if similarity == "dot" else similarity_matrix(E, similarity)
    i, j, k = T.T
    s_ij, s_ik, s_jk = S[i, j], S[i, k], S[j, k]
    return float(np.mean((s_ij > s_ik) & (s_ij > s_jk)))


# ---------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------
def _data_terms(Z, triplets, teacher_logp, tau):
    """Global (triplet) and local (contrastive) losses of transformed embeddings ``Z`` (torch)."""
    S = Z @ Z.T  # dot-product similarities of the transformed embeddings
    i, j, k = triplets.T
    logits = torch.stack([S[i, j], S[i, k], S[j, k]], dim=1)
    global_loss = -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()

    n = Z.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=Z.device)
    Zn = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    student = (Zn @ Zn.T)[off].reshape(n, n - 1) / tau
    local_loss = -(teacher_logp.exp() * torch.log_softmax(student, dim=1)).sum(dim=1).mean()
    return global_loss, local_loss


def _loss_terms(Xs, W, b, triplets, teacher_logp, tau):
    """Global loss, local loss and identity penalty at full parameters ``W`` (D, D), ``b`` (torch)."""
    g, loc = _data_terms(Xs @ W + b, triplets, teacher_logp, tau)
    eye_scale = torch.diagonal(W).mean()
    penalty = ((W - eye_scale * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)) ** 2).sum()
    return g, loc, penalty


def _teacher_log_probs(Xs, tau):
    n = Xs.shape[0]
    Xn = Xs / Xs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    off = ~torch.eye(n, dtype=torch.bool, device=Xs.device)
    return torch.log_softmax((Xn @ Xn.T)[off].reshape(n, n - 1) / tau, dim=1)


def glocal_loss(X_std, weights, bias, triplets, *, alpha=0.25, lmbda=1e-3, tau=0.1) -> dict:
    """The gLocal objective at given parameters (for inspection and testing).

    ``loss = (1 - alpha) * global + alpha * local + lmbda * penalty`` with

    * global: mean over triplets ``(i, j, k)`` of
      ``-log softmax(s_ij, s_ik, s_jk)[0]``, ``s`` the dot products of the
      transformed embeddings ``z = x @ weights + bias``;
    * local: mean over images ``i`` of the cross-entropy between
      ``softmax_j(cos(x_i, x_j) / tau)`` (original space, ``j != i``) and
      ``softmax_j(cos(z_i, z_j) / tau)`` (transformed space);
    * penalty: ``||weights - mean(diag(weights)) I||_F^2``, the distance to
      the nearest multiple of the identity.

    Parameters
    ----------
    X_std : array-like of shape (n, D)
        Standardised embeddings.
    weights : array-like of shape (D, D)
    bias : array-like of shape (D,)
    triplets : array-like of shape (m, 3), int
        ``(i, j, k)``: ``k`` is the odd one out.
    alpha, lmbda, tau : float

    Returns
    -------
    terms : dict
        ``loss``, ``global``, ``local``, ``penalty`` (floats).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import glocal_loss
    >>> X = np.random.default_rng(0).normal(size=(5, 3))
    >>> terms = glocal_loss(X, np.eye(3), np.zeros(3), [[0, 1, 2], [3, 4, 0]])
    >>> terms["penalty"]
    0.0
    """
    Xs = torch.as_tensor(np.asarray(X_std, dtype=np.float64))
    W = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    b = torch.as_tensor(np.asarray(bias, dtype=np.float64))
    T = torch.as_tensor(np.asarray(triplets, dtype=np.int64))
    g, loc, pen = _loss_terms(Xs, W, b, T, _teacher_log_probs(Xs, tau), tau)
    total = (1 - alpha) * g + alpha * loc + lmbda * pen
    return {"loss": float(total), "global": float(g), "local": float(loc), "penalty": float(pen)}


# ---------------------------------------------------------------------------
class GLocalAligner(ClassNamePrefixFeaturesOutMixin, SimilarityAligner):
    """Affine transform of embeddings fitted to human odd-one-out judgments (gLocal).

    The embeddings are standardised (training mean and standard deviation
    per feature) and transformed by ``z = x @ weights + bias`` (that is,
    ``W x + b`` with ``W = weights.T``). The transform minimises

    ``(1 - alpha) * L_global + alpha * L_local + lmbda * ||W - mean(diag W) I||_F^2``

    where ``L_global`` is the odd-one-out likelihood of the human triplets
    under a softmax over the three dot-product similarities of the
    transformed embeddings, and ``L_local`` a contrastive term that keeps
    each image's neighbourhood (softmax of cosine similarities at
    temperature ``tau``) close to the original one; see :func:`glocal_loss`.
    The penalty pulls ``W`` towards a multiple of the identity, i.e. towards
    the original representation up to scale.

    Triplets are given directly (``fit(X, triplets=...)``) or derived from
    the similarity matrix ``y`` (:func:`triplets_from_similarity`). The
    neighbourhood term uses the training images themselves.

    Parameters
    ----------
    alpha : float in [0, 1], default=0.1
        Weight of the local (neighbourhood) term.
    lmbda : float >= 0, default=3.0
        Strength of the pull towards a multiple of the identity.
    tau : float > 0, default=0.5
        Temperature of the local term.
    n_triplets : int or None, default=None
        Triplets sampled from ``y`` (see :func:`triplets_from_similarity`).
    fit_bias : bool, default=True
        Learn ``bias`` (else it stays 0).
    similarity : {"pearson", "cosine"}, default="pearson"
        Model similarity of the transformed embeddings used by :meth:`score`.
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}, default="spearman"
    optimizer : {"lbfgs", "adam"}, default="lbfgs"
        Full-batch L-BFGS (strong Wolfe line search) or Adam.
    max_iter : int, default=200
        Iterations of the optimiser.
    lr : float, default=1e-3
        Adam's learning rate (L-BFGS uses its line search).
    tol : float, default=1e-9
        L-BFGS stops when the loss changes by less than this.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    random_state : int, RandomState instance or None, default=0
        Triplet sampling. The optimisation itself is deterministic (CPU,
        float64, full batch, fixed initialisation).

    Attributes
    ----------
    mean_, std_ : ndarray of shape (n_features,)
        Standardisation of the input features.
    weights_ : ndarray of shape (n_features, n_features)
        ``W.T``: the transform is ``((x - mean_) / std_) @ weights_ + bias_``.
    bias_ : ndarray of shape (n_features,)
    n_triplets_ : int
        Triplets used in the fit.
    loss_ : dict
        Final ``loss``, ``global``, ``local`` and ``penalty`` values.
    n_iter_ : int
        Optimiser iterations run.
    n_features_in_ : int

    See Also
    --------
    FeatureReweighting : a diagonal (per-feature) reweighting fitted by regression.
    triplets_from_similarity, odd_one_out_accuracy

    Notes
    -----
    The parameters are initialised at ``W = I / sqrt(n_features)``,
    ``b = 0``, so that the initial dot products are correlation-sized.
    ``W - c I`` is optimised within the span of the (standardised) training
    embeddings, ``W = c I + U A`` with ``U`` an orthonormal basis of that
    span: an exact reparametrisation (the data terms see ``W`` only through
    the training rows, and the penalty is smallest with the rest at 0) that
    needs ``n_images x n_features`` parameters instead of
    ``n_features ** 2``.

    When the optimizer stops at ``max_iter`` (wide embeddings, few images)
    its result follows last-bit differences of summation order. Problems up
    to ``n_images * n_features = 2**21`` therefore run on one thread (torch
    and BLAS): the fit is bitwise the same in a serial run and in a joblib
    or dask worker. Larger ones use every thread; there a fit that stops at
    ``max_iter`` can differ in the last digits between machines and thread
    counts (check ``n_iter_``).

    The defaults (``alpha=0.1, lmbda=3, tau=0.5``) were chosen by inner
    image-wise cross-validation *within the training folds* of the 92-image
    set (EfficientNet-Lite0 embeddings, 5 outer folds): ``lmbda`` between 1
    and 3 and ``alpha`` between 0 and 0.1 (``tau=0.5``) scored alike, a
    sharper local term (``tau=0.1``) or ``alpha=0.3`` lower. With few
    images, tune them again (e.g. ``GridSearchCV`` with an image-wise
    ``cv`` and ``y`` as a
    :func:`~sklearn_ais.model_selection.similarity_frame`).
    :meth:`save` writes ``mean``, ``std``, ``weights`` and ``bias`` to an
    ``.npz`` file in the layout of the published gLocal transforms
    (thingsvision); :meth:`load` reads one back (no download).

    References
    ----------
    Muttenthaler, L., Linhardt, L., Dippel, J., Vandermeulen, R. A., Hermann,
    K., Lampinen, A. K., & Kornblith, S. (2023). Improving neural network
    representations using human similarity judgments. NeurIPS 36.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import GLocalAligner
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 8))
    >>> H = np.corrcoef(X[:, :2])                  # humans attend to 2 features
    >>> gl = GLocalAligner(lmbda=1e-3, max_iter=100).fit(X, H)
    >>> bool(gl.score(X, H) > GLocalAligner(max_iter=0).fit(X, H).score(X, H))
    True
    >>> gl.transform(X).shape
    (30, 8)
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "lmbda": [Interval(Real, 0, None, closed="left")],
        "tau": [Interval(Real, 0, None, closed="neither")],
        "n_triplets": [Interval(Integral, 1, None, closed="left"), None],
        "fit_bias": ["boolean"],
        "similarity": [StrOptions(set(SIMILARITIES))],
        "comparison": [StrOptions(set(COMPARISONS))],
        "optimizer": [StrOptions({"lbfgs", "adam"})],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "y_kind": [StrOptions({"similarity", "dissimilarity"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        alpha=0.1,
        lmbda=3.0,
        tau=0.5,
        *,
        n_triplets=None,
        fit_bias=True,
        similarity="pearson",
        comparison="spearman",
        optimizer="lbfgs",
        max_iter=200,
        lr=1e-3,
        tol=1e-9,
        y_kind="similarity",
        random_state=0,
    ):
        self.alpha = alpha
        self.lmbda = lmbda
        self.tau = tau
        self.n_triplets = n_triplets
        self.fit_bias = fit_bias
        self.similarity = similarity
        self.comparison = comparison
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.lr = lr
        self.tol = tol
        self.y_kind = y_kind
        self.random_state = random_state

    # ------------------------------------------------------------------
    def _check_triplets(self, triplets, n):
        T = np.asarray(triplets)
        if T.ndim != 2 or T.shape[1] != 3 or len(T) == 0:
            raise ValueError(f"triplets must be a non-empty (m, 3) array of image indices, got shape {T.shape}")
        if not np.issubdtype(T.dtype, np.integer):
            if not np.all(np.equal(np.mod(T, 1), 0)):
                raise ValueError("triplets must hold integer image indices")
            T = T.astype(np.int64)
        if T.min() < 0 or T.max() >= n:
            raise ValueError(f"triplet indices must lie in [0, {n - 1}] (rows of X)")
        if ((T[:, 0] == T[:, 1]) | (T[:, 0] == T[:, 2]) | (T[:, 1] == T[:, 2])).any():
            raise ValueError("each triplet must name three distinct images")
        return T.astype(np.int64)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, triplets=None):
        """Learn the affine transform.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
        y : array-like of shape (n_images, n_images), or triplets, optional
            Human similarity matrix (triplets are derived from it when
            ``triplets`` is not given), or the odd-one-out choices themselves:
            an (N, 3) table of image indices with the odd one out last, a
            DataFrame of image ids, or
            :class:`~sklearn_ais.model_selection.Triplets`.
        triplets : array-like of shape (m, 3), int, optional
            Human odd-one-out judgments ``(i, j, k)`` (``k`` the odd one out),
            indices into the rows of ``X``. scikit-learn's cross-validation
            does not re-index them when it slices ``X``: inside
            ``cross_validate``/``GridSearchCV`` derive triplets from ``y``.

        Returns
        -------
        self : GLocalAligner
        """
        ids = sample_ids(X)
        E = as_embeddings(self, X, reset=True)
        n, D = E.shape
        if triplets is not None:
            T = self._check_triplets(triplets, n)
        elif is_triplet_target(y, n):  # odd-one-out choices as y (Triplets, or an (N, 3) table): its native data
            T = check_triplet_target(y, n, ids=ids).indices
        elif y is not None:
            H = check_similarity_target(y, n, self.y_kind, ids=ids)
            T = triplets_from_similarity(H, self.n_triplets, self.random_state)
            if len(T) == 0:
                raise ValueError("y implies no odd-one-out triplet (all triplets tied or missing)")
        else:
            raise ValueError(
                "GLocalAligner requires y to be passed, but the target y is None: pass the n x n human similarity "
                "matrix, or odd-one-out judgments as triplets=(m, 3) indices"
            )

        # Small problems run on one thread (torch and BLAS) from the first matrix product on: faster than
        # competing threads, and the fit is then bitwise the same in a serial run, a joblib worker or a dask
        # worker (LBFGS amplifies last-bit differences of summation order; they moved the held-out 2OI by 1e-2).
        small = n * D <= (1 << 21)
        with torch_threads(1 if small else None), threadpool_limits(1 if small else None):
            self._fit_weights(E, T)
        return self

    def _fit_weights(self, E, T):
        """Standardization, the exact low-rank reparametrisation and the optimization (fitted attributes)."""
        n, D = E.shape
        self.mean_, self.std_ = standardization(E)
        Xs_np = (E - self.mean_) / self.std_
        Xs = torch.as_tensor(Xs_np)
        Tt = torch.as_tensor(T)
        teacher = _teacher_log_probs(Xs, self.tau)
        alpha, lmbda, tau = float(self.alpha), float(self.lmbda), float(self.tau)

        # Exact reparametrisation W = c I + U A, U an orthonormal basis of the
        # span of the training rows: the data terms see W only through Xs W,
        # and min_c ||W - c I||^2 = ||A||^2 is smallest with the part of
        # W - c I outside that span at 0. (n x D) parameters instead of D x D.
        _, sv, Vt = np.linalg.svd(Xs_np, full_matrices=False)
        rank = int(np.sum(sv > sv[0] * max(Xs_np.shape) * np.finfo(float).eps)) if sv.size and sv[0] > 0 else 0
        U = torch.as_tensor(Vt[:rank].T.copy())  # (D, r)
        Y = Xs @ U  # (n, r): coordinates of the training rows in that basis
        c = torch.nn.Parameter(torch.tensor(1.0 / math.sqrt(D), dtype=torch.float64))
        A = torch.nn.Parameter(torch.zeros((rank, D), dtype=torch.float64))
        b = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))
        params = [c, A, b] if self.fit_bias else [c, A]

        def objective():
            Z = c * Xs + Y @ A + b
            g, loc = _data_terms(Z, Tt, teacher, tau)
            return (1 - alpha) * g + alpha * loc + lmbda * (A * A).sum()

        n_iter = self._optimize(objective, params)
        with torch.no_grad():
            W = c * torch.eye(D, dtype=torch.float64) + U @ A
        self.weights_ = W.numpy().copy()
        self.bias_ = b.detach().numpy().copy()
        self.n_triplets_ = len(T)
        self.n_iter_ = n_iter
        with torch.no_grad():
            g, loc, pen = _loss_terms(Xs, W, b.detach(), Tt, teacher, tau)
        self.loss_ = {
            "loss": float((1 - alpha) * g + alpha * loc + lmbda * pen),
            "global": float(g), "local": float(loc), "penalty": float(pen),
        }

    def _optimize(self, objective, params) -> int:
        n_iter = 0
        if self.max_iter > 0:
            if self.optimizer == "lbfgs":
                opt = torch.optim.LBFGS(
                    params, lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe",
                    tolerance_grad=1e-10, tolerance_change=self.tol,
                )

                def closure():
                    opt.zero_grad()
                    loss = objective()
                    loss.backward()
                    return loss

                opt.step(closure)
                n_iter = int(opt.state[params[0]].get("n_iter", 0))
            else:
                opt = torch.optim.Adam(params, lr=self.lr)
                for n_iter in range(1, self.max_iter + 1):
                    opt.zero_grad()
                    loss = objective()
                    loss.backward()
                    opt.step()
        return n_iter

    def transform(self, X) -> np.ndarray:
        """Aligned embeddings ``((x - mean_) / std_) @ weights_ + bias_``.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
            Standardised with the training ``mean_`` and ``std_``.

        Returns
        -------
        Z : ndarray of shape (n_images, n_features)
        """
        check_is_fitted(self)
        E = as_embeddings(self, X, reset=False, min_samples=1)
        return ((E - self.mean_) / self.std_) @ self.weights_ + self.bias_

    def predict_similarity(self, X) -> np.ndarray:
        """Model similarity matrix (``similarity``) of the aligned embeddings.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
            Aligned by :meth:`transform` first.

        Returns
        -------
        S : ndarray of shape (n_images, n_images)
        """
        return similarity_matrix(self.transform(X), self.similarity)

    @property
    def _n_features_out(self):
        return self.weights_.shape[1]

    # ------------------------------------------------------------------
    def save(self, path) -> None:
        """Write ``mean``, ``std``, ``weights`` and ``bias`` to an ``.npz`` file.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        np.savez(os.fspath(path), mean=self.mean_, std=self.std_, weights=self.weights_, bias=self.bias_)

    @classmethod
    def load(cls, path, **params) -> GLocalAligner:
        """A fitted aligner from an ``.npz`` file written by :meth:`save` (or a gLocal transform file).

        Parameters
        ----------
        path : str or path-like
            ``.npz`` with ``weights`` (D, D) and optionally ``bias`` (D,),
            ``mean`` and ``std`` (default 0 and 1).
        **params
            Constructor parameters of the returned estimator (e.g. ``similarity``).

        Returns
        -------
        aligner : GLocalAligner
        """
        with np.load(os.fspath(path), allow_pickle=False) as f:
            if "weights" not in f:
                raise ValueError(f"{path} has no 'weights' array (keys: {sorted(f.keys())})")
            W = np.asarray(f["weights"], dtype=np.float64)
            if W.ndim != 2:
                raise ValueError(f"'weights' must be a 2-D matrix, got shape {W.shape}")
            D = W.shape[0]
            bias = np.asarray(f["bias"], dtype=np.float64).reshape(-1) if "bias" in f else np.zeros(W.shape[1])
            mean = np.asarray(f["mean"], dtype=np.float64).reshape(-1) if "mean" in f else np.zeros(D)
            std = np.asarray(f["std"], dtype=np.float64).reshape(-1) if "std" in f else np.ones(D)
        if bias.shape != (W.shape[1],) or mean.shape != (D,) or std.shape != (D,):
            raise ValueError("inconsistent shapes in the transform file: weights (D, D'), bias (D',), mean and std (D,)")
        est = cls(**params)
        est.weights_, est.bias_, est.mean_, est.std_ = W, bias, mean, std
        est.n_features_in_ = D
        return est
