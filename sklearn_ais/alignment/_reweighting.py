"""Feature reweighting (Peterson, Abbott & Griffiths 2018; Kaniuth & Hebart 2022)."""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy import linalg, optimize
from sklearn.base import OneToOneFeatureMixin
from sklearn.utils.validation import check_is_fitted

from .._similarity import COMPARISONS, batched_correlation
from .._sklearn_compat import Interval, StrOptions, _fit_context
from .._targets import check_similarity_target, sample_ids
from ._base import SimilarityAligner, as_embeddings, image_cv, split_images, standardization

__all__ = ["FeatureReweighting", "pair_design"]

# Largest pair-design chunk held at once (elements, float64).
_CHUNK_ELEMENTS = 1 << 22


def pair_design(X, rows=None, cols=None) -> np.ndarray:
    """Element-wise products ``x_i * x_j`` of embedding pairs: the regression design.

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
    rows, cols : array-like of int, optional
        The pairs ``(rows[p], cols[p])``; default every upper-triangle pair
        ``i < j`` in row-major order.

    Returns
    -------
    Z : ndarray of shape (n_pairs, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import pair_design
    >>> pair_design(np.array([[1., 2.], [3., 4.], [5., 6.]]))
    array([[ 3.,  8.],
           [ 5., 12.],
           [15., 24.]])
    """
    X = np.asarray(X, dtype=np.float64)
    if rows is None:
        rows, cols = np.triu_indices(len(X), 1)
    return X[np.asarray(rows)] * X[np.asarray(cols)]


def _observed_pairs(H, images=None, *, involving=None):
    """Upper-triangle pairs (i < j) with an observed human value.

    ``images``: both members in this set. ``involving``: (train, val) sets;
    pairs with at least one member in ``val`` and the other in ``train`` or
    ``val``.
    """
    n = H.shape[0]
    i, j = np.triu_indices(n, 1)
    ok = ~np.isnan(H[i, j])
    if images is not None:
        member = np.zeros(n, dtype=bool)
        member[images] = True
        ok &= member[i] & member[j]
    if involving is not None:
        train, val = involving
        in_val = np.zeros(n, dtype=bool)
        in_val[val] = True
        ok &= in_val[i] | in_val[j]
    return i[ok], j[ok]


def _moments(X, rows, cols, t):
    """``Z^T Z``, ``Z^T 1`` and ``Z^T t`` of the pair design, one pass over bounded chunks of ``Z``."""
    D = X.shape[1]
    G, s, c = np.zeros((D, D)), np.zeros(D), np.zeros(D)
    step = max(1, _CHUNK_ELEMENTS // max(D, 1))
    for a in range(0, len(rows), step):
        Z = X[rows[a : a + step]] * X[cols[a : a + step]]
        G += Z.T @ Z
        s += Z.sum(axis=0)
        c += Z.T @ t[a : a + step]
    return G, s, c


class _PairRegression:
    """Ridge / non-negative ridge on the pair design.

    With more pairs than features the problem is solved from the Gram matrix
    ``Z^T Z`` (D x D, accumulated in chunks); with fewer, from the pair kernel
    ``Z Z^T`` (P x P, the dual form). Both give the same solutions.
    """

    def __init__(self, X, rows, cols, t, fit_intercept):
        P, D = len(rows), X.shape[1]
        self.D = D
        self._eig = None
        self._G = None
        if P < D:  # dual: keep the (centred) design itself
            Z = pair_design(X, rows, cols)
            zbar, tbar = (Z.mean(axis=0), float(t.mean())) if fit_intercept else (np.zeros(D), 0.0)
            self.Zc, self.tc = Z - zbar, t - tbar
            self.c = self.Zc.T @ self.tc
        else:
            G, s, c = _moments(X, rows, cols, t)
            if fit_intercept:
                zbar, tbar = s / P, float(t.mean())
                G = G - P * np.outer(zbar, zbar)
                c = c - P * zbar * tbar
            else:
                zbar, tbar = np.zeros_like(s), 0.0
            self.Zc = None
            self._G, self.c = G, c
        self.zbar, self.tbar = zbar, tbar

    @property
    def G(self):
        if self._G is None:
            self._G = self.Zc.T @ self.Zc
        return self._G

    def scale(self) -> float:
        """Mean eigenvalue of the (centred) Gram matrix: the natural unit of alpha."""
        tr = float(np.sum(self.Zc * self.Zc)) if self.Zc is not None else float(np.trace(self._G))
        return max(tr / self.D, np.finfo(float).tiny)

    def ridge_path(self, alphas) -> np.ndarray:
        """Coefficients (D, n_alphas) of the ridge solutions (alpha = 0: minimum-norm least squares)."""
        alphas = np.asarray(alphas, dtype=np.float64)
        dual = self.Zc is not None
        if len(alphas) == 1 and alphas[0] > 0:  # one penalty: a Cholesky solve is cheaper than eigh
            try:
                if dual:
                    K = self.Zc @ self.Zc.T + alphas[0] * np.eye(len(self.Zc))
                    return (self.Zc.T @ linalg.cho_solve(linalg.cho_factor(K, lower=True), self.tc))[:, None]
                A = self._G + alphas[0] * np.eye(self.D)
                return linalg.cho_solve(linalg.cho_factor(A, lower=True), self.c)[:, None]
            except linalg.LinAlgError:
                pass
        if self._eig is None:
            lam, V = linalg.eigh(self.Zc @ self.Zc.T if dual else self._G)
            self._eig = (np.clip(lam, 0, None), V)
        lam, V = self._eig
        proj = V.T @ (self.tc if dual else self.c)
        tol = lam.max() * len(lam) * np.finfo(float).eps if lam.size else 0.0
        den = lam[:, None] + alphas[None, :]
        ok = den > tol
        inv = np.where(ok, 1.0 / np.where(ok, den, 1.0), 0.0)
        coef = V @ (inv * proj[:, None])
        return self.Zc.T @ coef if dual else coef

    def nnls_path(self, alphas) -> np.ndarray:
        """Coefficients (D, n_alphas) of the non-negative ridge solutions.

        ``min ||Z w - t||^2 + alpha ||w||^2`` subject to ``w >= 0``, a convex
        quadratic programme in ``w`` solved from the Gram matrix by L-BFGS-B
        (bounds), warm-started from the next larger penalty.
        """
        alphas = np.asarray(alphas, dtype=np.float64)
        D = len(self.c)
        s = self.scale()
        G, c = self.G / s, self.c / s
        out = np.empty((D, len(alphas)))
        w = np.zeros(D)
        bounds = optimize.Bounds(np.zeros(D), np.full(D, np.inf))
        for a in np.argsort(-alphas, kind="stable"):
            A_diag = alphas[a] / s

            def fun(v, A_diag=A_diag):
                Gv = G @ v + A_diag * v
                return 0.5 * v @ Gv - c @ v, Gv - c

            res = optimize.minimize(
                fun, w, jac=True, method="L-BFGS-B", bounds=bounds,
                options={"maxiter": 20 * D + 1000, "ftol": 1e-15, "gtol": 1e-12 * max(1.0, np.abs(c).max())},
            )
            w = np.clip(res.x, 0, None)
            out[:, a] = w
        return out

    def path(self, alphas, positive):
        W = self.nnls_path(alphas) if positive else self.ridge_path(alphas)
        b = self.tbar - self.zbar @ W
        return W, b


class FeatureReweighting(OneToOneFeatureMixin, SimilarityAligner):
    """Learn one weight per embedding feature to predict human similarity.

    The predicted similarity of images ``i`` and ``j`` is

    ``s_ij = sum_k w_k x_ik x_jk + b``

    a weighted dot product, fitted by ridge regression (or non-negative
    least squares with a ridge penalty, ``positive=True``) of the observed
    human similarities on the element-wise products ``x_i * x_j`` of every
    pair of training images (Peterson, Abbott & Griffiths, 2018; the
    feature-reweighted RSA of Kaniuth & Hebart, 2022). Pairs whose human
    value is NaN are skipped.

    With ``alpha="auto"`` the penalty is chosen by inner *image-wise*
    cross-validation: for each inner split the model is fitted on the pairs
    of the inner training images only and scored (``comparison``
    correlation) on every pair that involves a validation image, so no
    validation pair, and no pair of a validation image, reaches the fit.

    Parameters
    ----------
    alpha : "auto" or float >= 0, default="auto"
        Ridge penalty on ``w``, in the units of ``sklearn.linear_model.Ridge``
        (the design is the pair-product matrix, centred when
        ``fit_intercept``). ``"auto"`` chooses it from ``alphas``.
    alphas : array-like of float or None, default=None
        Candidates for ``alpha="auto"``. ``None``: 13 values from 1e-3 to
        1e3 (log-spaced) times the mean eigenvalue of the training design's
        Gram matrix, a scale-free grid.
    positive : bool, default=False
        Constrain ``w >= 0`` (non-negative least squares), so that
        :meth:`transform` reproduces the prediction exactly.
    fit_intercept : bool, default=True
        Fit ``b`` (unpenalised).
    standardize : bool, default=False
        Z-score every feature with the training images' mean and standard
        deviation before forming the products, so that the penalty treats
        features of different scales alike; :meth:`transform` applies the
        same scaling. The default keeps the raw features, as Peterson et al.
        did (on the 92-image set with EfficientNet-Lite0 features, raw
        features gave the higher mean inner-CV score on the training folds).
    cv : int, splitter or iterable, default=5
        Inner image-wise splits for ``alpha="auto"``; an int is
        ``KFold(cv, shuffle=True, random_state=random_state)``.
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}, default="spearman"
        Correlation used to choose ``alpha`` and in :meth:`score`.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``y`` holds; dissimilarities are negated.
    random_state : int, RandomState instance or None, default=0
        Shuffling of the inner splits.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        The weights ``w``.
    intercept_ : float
        ``b``.
    alpha_ : float
        The penalty used.
    cv_scores_ : ndarray of shape (n_alphas,)
        Mean inner validation correlation of each candidate (``alpha="auto"``).
    alphas_ : ndarray of shape (n_alphas,)
        The candidates, in absolute units (``alpha="auto"``).
    mean_, scale_ : ndarray of shape (n_features,)
        Standardisation of the features (zeros and ones if not ``standardize``).
    n_pairs_ : int
        Training pairs used.
    n_features_in_ : int
        Embedding dimension.

    See Also
    --------
    sklearn_ais.AISSelector : keeps or drops whole features (weights 0/1).
    GLocalAligner : a full affine transform learned from odd-one-out triplets.

    Notes
    -----
    ``X`` is a 2-D embedding matrix (n_images, n_features) or
    :class:`~sklearn_ais.FeatureMaps`, embedded through their head. ``y``
    is the n x n human similarity matrix (or a row-sliced
    :func:`~sklearn_ais.model_selection.similarity_frame` inside
    scikit-learn's cross-validation). :meth:`predict` is not defined: the
    targets are pairs, not images; use :meth:`predict_similarity`.

    References
    ----------
    Peterson, J. C., Abbott, J. T., & Griffiths, T. L. (2018). Evaluating (and
    improving) the correspondence between deep neural networks and human
    representations. Cognitive Science, 42(8), 2648-2669.

    Kaniuth, P., & Hebart, M. N. (2022). Feature-reweighted representational
    similarity analysis: A method for improving the fit between computational
    models, brains, and behavior. NeuroImage, 257, 119294.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment import FeatureReweighting
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 10))
    >>> H = (X[:, :3] * [3, 2, 1]) @ X[:, :3].T        # humans weight 3 features
    >>> rw = FeatureReweighting(positive=True).fit(X, H)
    >>> bool(rw.score(X, H) > 0.9)
    True
    >>> rw.transform(X).shape
    (40, 10)
    """

    _parameter_constraints: dict = {
        "alpha": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "alphas": ["array-like", None],
        "positive": ["boolean"],
        "fit_intercept": ["boolean"],
        "standardize": ["boolean"],
        "cv": ["cv_object"],
        "comparison": [StrOptions(set(COMPARISONS))],
        "y_kind": [StrOptions({"similarity", "dissimilarity"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        alpha="auto",
        *,
        alphas=None,
        positive=False,
        fit_intercept=True,
        standardize=False,
        cv=5,
        comparison="spearman",
        y_kind="similarity",
        random_state=0,
    ):
        self.alpha = alpha
        self.alphas = alphas
        self.positive = positive
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.cv = cv
        self.comparison = comparison
        self.y_kind = y_kind
        self.random_state = random_state

    # ------------------------------------------------------------------
    def _standardized(self, E):
        return (E - self.mean_) / self.scale_

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the feature weights on every observed pair of the images in ``X``.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (NaN = missing pair).

        Returns
        -------
        self : FeatureReweighting
        """
        ids = sample_ids(X)
        E = as_embeddings(self, X, reset=True)
        n, D = E.shape
        H = check_similarity_target(y, n, self.y_kind, ids=ids)
        if self.standardize:
            self.mean_, self.scale_ = standardization(E)
        else:
            self.mean_, self.scale_ = np.zeros(D), np.ones(D)
        Xs = self._standardized(E)
        rows, cols = _observed_pairs(H)

        if len(rows) < 3:
            raise ValueError(f"y has {len(rows)} observed pairs; at least 3 are needed")
        problem = _PairRegression(Xs, rows, cols, H[rows, cols], self.fit_intercept)
        if self.alpha == "auto":
            self.alpha_, self.alphas_, self.cv_scores_ = self._choose_alpha(Xs, H, self._grid(problem))
        else:
            self.alpha_ = float(self.alpha)
        W, b = problem.path([self.alpha_], self.positive)
        self.coef_, self.intercept_ = W[:, 0], float(b[0])
        self.n_pairs_ = len(rows)
        return self

    def _grid(self, problem):
        if self.alphas is not None:
            alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
            if alphas.size == 0 or (alphas < 0).any() or not np.isfinite(alphas).all():
                raise ValueError("alphas must be a non-empty array of finite values >= 0")
            return alphas
        return problem.scale() * np.logspace(-3, 3, 13)

    def _choose_alpha(self, Xs, H, alphas):
        n = len(Xs)
        splits = split_images(image_cv(self.cv, self.random_state), n)
        scores = []
        for train, val in splits:
            tr_i, tr_j = _observed_pairs(H, train)
            va_i, va_j = _observed_pairs(H, involving=(train, val))
            if len(tr_i) < 3 or len(va_i) < 3:
                continue
            target = H[va_i, va_j]
            if np.ptp(target) == 0:
                continue
            sub = _PairRegression(Xs, tr_i, tr_j, H[tr_i, tr_j], self.fit_intercept)
            W, b = sub.path(alphas, self.positive)
            pred = pair_design(Xs, va_i, va_j) @ W + b  # (n_val_pairs, n_alphas)
            scores.append(batched_correlation(pred.T, target, self.comparison))
        if not scores:
            raise ValueError("no inner split had enough observed training and validation pairs to choose alpha")
        mean = np.mean(scores, axis=0)
        best = int(np.argmax(mean))  # ties: the smallest alpha of the grid order
        return float(alphas[best]), alphas, mean

    # ------------------------------------------------------------------
    def predict_similarity(self, X) -> np.ndarray:
        """Predicted similarity matrix ``s_ij = sum_k w_k x_ik x_jk + b``.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
            Standardised with the training statistics, then weighted by ``coef_``.

        Returns
        -------
        S : ndarray of shape (n_images, n_images)
            Symmetric; the diagonal holds the same formula with ``i = j``.
        """
        check_is_fitted(self)
        Xs = self._standardized(as_embeddings(self, X, reset=False, min_samples=1))
        S = (Xs * self.coef_) @ Xs.T + self.intercept_
        return (S + S.T) / 2

    def transform(self, X) -> np.ndarray:
        """Reweighted embeddings ``x * sqrt(max(w, 0))`` (after standardisation).

        Dot products of the output equal the predicted similarity minus
        ``intercept_`` when every weight is non-negative (``positive=True``);
        negative weights of a ridge fit are clipped to 0 here.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
            Standardised as in :meth:`predict_similarity`.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features)
        """
        check_is_fitted(self)
        Xs = self._standardized(as_embeddings(self, X, reset=False, min_samples=1))
        return Xs * np.sqrt(np.clip(self.coef_, 0, None))

    @property
    def n_kept_(self) -> int:
        """Number of features with a positive weight (those :meth:`transform` keeps)."""
        check_is_fitted(self)
        return int(np.sum(self.coef_ > 0))
