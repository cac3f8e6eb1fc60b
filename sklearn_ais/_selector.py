"""AISSelector: alignment importance of every feature map and ranked selection."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.feature_selection import SelectorMixin
from sklearn.model_selection import check_cv
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._ablation import make_problem
from ._containers import MIN_IMAGES, FeatureMaps, check_feature_maps
from ._similarity import COMPARISONS, SIMILARITIES, is_constant_model, upper_triangle
from ._targets import check_similarity_target



def validate_maps_input(estimator, X, *, reset: bool):
    """Validate X: FeatureMaps (checked here) or a 2-D array (scikit-learn's checks)."""
    if isinstance(X, FeatureMaps):
        check_feature_maps(X, MIN_IMAGES)
        K = X.n_maps
        if reset:
            estimator.n_features_in_ = K
        elif K != getattr(estimator, "n_features_in_", K):
            raise ValueError(f"X has {K} feature maps, but {type(estimator).__name__} was fitted with "
                             f"{estimator.n_features_in_}")
        return X
    # scikit-learn's own checks: 2-D, finite, numeric, enough samples.
    return validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_min_samples=MIN_IMAGES)


def _warn_if_constant_model(problem, H, score, keep=None, what="the model"):
    """A 2OI of exactly 0 may mean 'undefined': say so when the model RSM is constant."""
    if score != 0.0:
        return
    Zu = upper_triangle(problem.model_rsm(keep))[~np.isnan(upper_triangle(H))]
    if Zu.size and is_constant_model(Zu):
        warnings.warn(
            f"the similarity matrix of {what} is constant over the observed pairs (e.g. a single unit with "
            "similarity='pearson', or all-zero embeddings): the 2OI is undefined and reported as 0",
            UserWarning,
            stacklevel=3,
        )


class AISSelector(SelectorMixin, BaseEstimator):
    """Select the feature maps whose information aligns with human similarity.

    For every map (or unit) ``k``, the alignment importance score is

    ``AIS_k = 2OI(all maps) - 2OI(map k set to 0 in every image)``

    where the second-order isomorphism 2OI is the correlation between the
    upper triangles of the model's similarity matrix (built from the head's
    embeddings) and the human one. Maps are ranked by AIS; the top-t maps
    are kept, with t chosen on the training 2OI along the ranked sweep, or
    by inner cross-validation.

    Parameters
    ----------
    similarity : {"pearson", "cosine"}, default="pearson"
        Model similarity between two image embeddings. ``"pearson"`` is
        ``np.corrcoef`` of the embedding rows.
    comparison : {"spearman", "pearson"}, default="spearman"
        Correlation between the model's and the human upper triangles.
    n_features_to_select : "auto", int or float, default="auto"
        ``"auto"``: the t with the best 2OI along the ranked sweep (training
        data, or mean validation score when ``cv`` is set); the smallest t
        wins ties. An int keeps that many maps; a float in (0, 1] that
        fraction (rounded up).
    cv : int, cross-validation generator, iterable or None, default=None
        Inner image-wise cross-validation used to choose t when
        ``n_features_to_select="auto"``: for each split, maps are ranked on
        the training images and the sweep is scored on the validation
        images. ``None`` chooses t on the training data itself.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``y`` holds. Dissimilarities are negated.
    device : str, default="auto"
        Torch device for the kernels; ``"auto"`` is CUDA when available.

    Attributes
    ----------
    scores_ : ndarray of shape (n_maps,)
        Global AIS of each map on the training data. A map that is zero in
        every image scores exactly 0.
    ranking_ : ndarray of shape (n_maps,)
        Rank of each map by AIS (1 = most important). Ties are broken by
        the lower map index.
    support_ : ndarray of bool of shape (n_maps,)
        Selected maps (``ranking_ <= n_features_to_select_``).
    n_features_to_select_ : int
    baseline_score_ : float
        Training 2OI with all maps.
    path_scores_ : ndarray of shape (n_maps,)
        Training 2OI when only the top-t maps are kept, ``t = 1 .. n_maps``.
    cv_path_scores_ : ndarray of shape (n_splits, n_maps)
        Validation 2OI along each inner split's ranked sweep (only with ``cv``).
    n_features_in_ : int
        Number of maps (or columns) seen in ``fit``.

    See Also
    --------
    sklearn_ais.DNNFeatureMapTransformer : images to feature maps.
    sklearn_ais.AISHeatmapper : per-image AIS and heatmaps.
    sklearn_ais.model_selection.cross_validate_alignment : held-out evaluation.

    Notes
    -----
    Scores are computed exactly, with kernels that share work across
    ablations (rank-one updates for pooling heads, first-layer updates for
    VGG heads); see ``sklearn_ais/_ablation.py``. Unselected maps are
    ablated (set to 0) in :meth:`score` exactly as in ``fit``.
    :meth:`transform` on :class:`FeatureMaps` returns maps with unselected
    maps set to 0 (so the head still applies); on a 2-D array it drops the
    unselected columns, as every scikit-learn selector does.

    References
    ----------
    Truong, Pesenti & Hasson (2024). Alignment importance scores: which
    features of a deep network matter for human similarity judgments.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import AISSelector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 20))
    >>> H = np.corrcoef(X[:, :5])          # humans use the first 5 units only
    >>> sel = AISSelector().fit(X, H)
    >>> bool(sel.score(X, H) > sel.baseline_score_)
    True
    >>> bool(sel.support_[:5].all())
    True
    """

    _parameter_constraints: dict = {
        "similarity": [StrOptions(set(SIMILARITIES))],
        "comparison": [StrOptions(set(COMPARISONS))],
        "n_features_to_select": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="right"),
        ],
        "cv": ["cv_object", None],
        "y_kind": [StrOptions({"similarity", "dissimilarity"})],
        "device": [str],
    }

    def __init__(
        self,
        similarity="pearson",
        comparison="spearman",
        n_features_to_select="auto",
        cv=None,
        y_kind="similarity",
        device="auto",
    ):
        self.similarity = similarity
        self.comparison = comparison
        self.n_features_to_select = n_features_to_select
        self.cv = cv
        self.y_kind = y_kind
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.single_output = False
        return tags

    # ------------------------------------------------------------------
    def _prepare(self, X, y, reset):
        X = validate_maps_input(self, X, reset=reset)
        n = X.shape[0]
        H = check_similarity_target(y, n, self.y_kind)
        problem = make_problem(X, self.similarity, self.device)
        return problem, H

    def _rank(self, problem, H):
        """AIS of every map, ranking order, base score, and the full sweep."""
        target = problem.target(upper_triangle(H), self.comparison)
        base, ablated = problem.leave_one_out(target)
        scores = base - ablated
        order = np.argsort(-scores, kind="stable")  # ties: lower map index first
        return target, base, scores, order

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Compute AIS for every map and select the top maps.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
            Feature maps from :class:`DNNFeatureMapTransformer`, or unit
            activations (identity head: ablating unit k sets column k to 0).
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (NaN = missing pair), a labelled
            DataFrame (see :func:`~sklearn_ais.model_selection.similarity_frame`),
            or 1-D class labels (same class = similar).

        Returns
        -------
        self : AISSelector
        """
        problem, H = self._prepare(X, y, reset=True)
        return self._fit_problem(problem, H)

    def _fit_problem(self, problem, H):
        """fit on prepared kernels (``cross_validate_alignment`` passes one fold's subset)."""
        K = problem.K
        if self.cv is not None and not isinstance(self.n_features_to_select, Real):
            problem.cache_loo = True  # the inner splits' leave-one-out reads it
        target, base, scores, order = self._rank(problem, H)
        ranking = np.empty(K, dtype=np.int64)
        ranking[order] = np.arange(1, K + 1)
        ts = np.arange(1, K + 1)
        _warn_if_constant_model(problem, H, base, what="X with all maps")
        self.path_scores_ = problem.sweep(order, target, ts)
        self.scores_ = scores
        self.ranking_ = ranking
        self.baseline_score_ = base
        self.n_features_to_select_ = self._choose_t(problem, H, K)
        self.support_ = ranking <= self.n_features_to_select_
        return self

    def _choose_t(self, problem, H, K) -> int:
        nfs = self.n_features_to_select
        if isinstance(nfs, Integral):
            if nfs > K:
                raise ValueError(f"n_features_to_select={nfs} exceeds the number of maps ({K})")
            return int(nfs)
        if isinstance(nfs, Real):
            return max(1, math.ceil(nfs * K))
        if self.cv is None:
            return int(np.argmax(self.path_scores_)) + 1  # argmax returns the first (smallest t) maximum
        cv = check_cv(self.cv)
        paths = []
        idx = np.arange(problem.n)
        for train, val in cv.split(idx):
            if len(val) < 3 or len(train) < MIN_IMAGES:
                raise ValueError(
                    f"inner cv split has {len(train)} training and {len(val)} validation images; "
                    f"need at least {MIN_IMAGES} and 3. Use fewer splits."
                )
            sub, Hs = problem.subset(train), H[np.ix_(train, train)]
            _, _, _, order = self._rank(sub, Hs)
            val_problem, Hv = problem.subset(val), H[np.ix_(val, val)]
            Hv_u = upper_triangle(Hv)
            if np.isnan(Hv_u).all() or np.nanmax(Hv_u) == np.nanmin(Hv_u):
                warnings.warn("an inner validation split has no usable human pairs; it is skipped", UserWarning)
                continue
            paths.append(val_problem.sweep(order, val_problem.target(Hv_u, self.comparison), np.arange(1, K + 1)))
        if not paths:
            raise ValueError("no inner validation split had usable human pairs")
        self.cv_path_scores_ = np.asarray(paths)
        return int(np.argmax(self.cv_path_scores_.mean(axis=0))) + 1

    # ------------------------------------------------------------------
    def score(self, X, y):
        """2OI of the selected maps on (X, y); unselected maps are ablated.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        return self._score_problem(*self._prepare(X, y, reset=False), selected=True)

    def _score_problem(self, problem, H, selected):
        """2OI of the selected maps (or of all maps) on prepared kernels."""
        keep = self.support_ if selected else None
        r = problem.score(problem.target(upper_triangle(H), self.comparison), keep=keep)
        what = "X with the selected maps" if selected else "X with all maps"
        _warn_if_constant_model(problem, H, r, keep=keep, what=what)
        return r

    def path_score(self, X, y) -> np.ndarray:
        """2OI on (X, y) along this selector's ranked sweep: one value per t = 1 .. n_maps.

        On held-out data this is the validation curve that shows how many maps
        generalise.
        """
        check_is_fitted(self)
        return self._path_problem(*self._prepare(X, y, reset=False))

    def _path_problem(self, problem, H):
        order = np.argsort(self.ranking_, kind="stable")
        target = problem.target(upper_triangle(H), self.comparison)
        return problem.sweep(order, target, np.arange(1, problem.K + 1))

    def score_all(self, X, y):
        """2OI of all maps on (X, y): the reference the selection must beat."""
        check_is_fitted(self)
        return self._score_problem(*self._prepare(X, y, reset=False), selected=False)

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    def transform(self, X):
        """Keep the selected maps.

        For :class:`FeatureMaps`, unselected maps are set to 0 (the head still
        applies); for a 2-D array the unselected columns are dropped.
        """
        if isinstance(X, FeatureMaps):
            check_is_fitted(self)
            X = validate_maps_input(self, X, reset=False)
            return X.masked(self.support_)
        return super().transform(X)
