"""AISSelector: alignment importance of every feature map and ranked selection."""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted

from ._ablation import make_kernel
from ._device import threads_for
from ._pairs import fold_parts
from ._similarity import COMPARISONS, SIMILARITIES, is_constant_model, upper_triangle
from ._stats import fold_record
from ._sklearn_compat import Interval, RealNotInt, StrOptions, _fit_context
from ._targets import Y_KINDS, SimilarityTargetMixin, sample_ids, target_is_constant
from ._triplets import TRIPLET_COMPARISONS, TripletSet, check_target, check_target_cv, split_items
from ._validation import MIN_IMAGES, check_image_cv, check_splits, is_feature_maps, validate_maps_input

__all__ = ["AISSelector", "AISSelectorCV"]


def _target_of(problem, H, comparison, temperature=1.0):
    """The prepared human side: the upper triangle of a matrix, or odd-one-out triplets."""
    if isinstance(H, TripletSet):
        return problem.triplet_target(H, comparison, temperature)
    return problem.target(upper_triangle(H), comparison)


def _model_is_constant(problem, H, keep=None) -> bool:
    """Whether the model RSM (maps outside ``keep`` ablated) is one tie run over the observed pairs.

    Never for triplets: a tie for the most similar pair is a wrong choice, so every score is defined."""
    if isinstance(H, TripletSet):
        return False
    Zu = upper_triangle(problem.model_rsm(keep))[~np.isnan(upper_triangle(H))]
    return bool(Zu.size) and is_constant_model(Zu)


def _undefined(problem, H, scores, keeps):
    """Mark as NaN the scores whose model side is constant (the correlation is undefined).

    The kernels report such a correlation as exactly 0, so only exact zeros are re-examined.
    ``keeps(i)`` gives the keep-mask behind ``scores[i]``.
    """
    scores = np.array(scores, dtype=np.float64)
    for i in np.flatnonzero(scores == 0.0):
        if _model_is_constant(problem, H, keeps(i)):
            scores[i] = np.nan
    return scores


def _warn_undefined(what, stacklevel=3):
    warnings.warn(
        f"the similarity matrix of {what} is constant over the observed pairs (e.g. a single unit with "
        "similarity='pearson', or all-zero embeddings): the 2OI is undefined (NaN)",
        UserWarning,
        stacklevel=stacklevel,
    )


class _MapsAwareTransform:
    """``transform``/``fit_transform`` that return FeatureMaps for FeatureMaps input.

    scikit-learn wraps the ``transform`` a class defines in its output container
    (``set_config(transform_output="pandas")``); a FeatureMaps (4-D maps and a head)
    cannot become a DataFrame, so these two are defined outside the wrapped class and
    call the wrapped 2-D path explicitly.
    """

    def transform(self, X):
        """Keep the selected maps or units.

        For :class:`~sklearn_ais.FeatureMaps` the unselected maps are set to 0
        (the head still applies) and a FeatureMaps is returned, whatever the
        output configuration; for a 2-D array the unselected columns are
        dropped, as every scikit-learn selector does, and the output follows
        ``set_output`` (e.g. a DataFrame with ``transform_output="pandas"``).

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)

        Returns
        -------
        X_selected : FeatureMaps, ndarray or DataFrame
        """
        if is_feature_maps(X):
            check_is_fitted(self)
            X = validate_maps_input(self, X, reset=False, min_images=1)
            return X.masked(self.support_)
        return SelectorMixin.transform(self, X)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit to ``(X, y)`` and return ``transform(X)``.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)
        **fit_params : dict
            Passed to ``fit``.

        Returns
        -------
        X_selected : FeatureMaps, ndarray or DataFrame
        """
        return self.fit(X, y, **fit_params).transform(X)


class AISSelector(_MapsAwareTransform, SimilarityTargetMixin, SelectorMixin, BaseEstimator):
    """Select the feature maps whose information aligns with human similarity.

    For every map (or unit) ``k``, the alignment importance score is

    .. math::

        \\mathrm{AIS}_k = \\mathrm{2OI}(\\text{all maps})
        - \\mathrm{2OI}(\\text{map } k \\text{ set to 0 in every image})

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
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine", "odd_one_out", \
        "triplet_log_likelihood"}, default="spearman"
        Correlation between the model's and the human upper triangles; or,
        when ``y`` holds odd-one-out triplets, ``"odd_one_out"`` (accuracy:
        the model's odd one out is the image outside its most similar pair,
        ties count as wrong) or ``"triplet_log_likelihood"`` (mean log
        probability of the human pair under a softmax over the three pair
        similarities divided by ``temperature``, gLocal's loss negated).
    n_features_to_select : "auto", int or float, default="auto"
        ``"auto"``: the t with the best 2OI along the ranked sweep (training
        data, or mean validation score when ``cv`` is set); the smallest t
        wins ties, and a t whose 2OI is undefined (NaN in
        ``path_scores_``) is never chosen. An int keeps that many maps; a
        float ``f`` in (0, 1] keeps ``max(1, int(f * n_maps))``, the rule of
        scikit-learn's selectors. A boolean is refused.
    cv : int, cross-validation generator, iterable or None, default=None
        Inner cross-validation used to choose t when
        ``n_features_to_select="auto"``. Over images (an int ``k`` means
        ``KFold(k, shuffle=True, random_state=random_state)``; scikit-learn's
        image splitters): for each split, maps are ranked on the training
        images and the sweep is scored on the validation images. Over matrix
        entries (:class:`~sklearn_ais.model_selection.PairKFold`,
        :class:`~sklearn_ais.model_selection.RepeatedPairKFold`,
        :class:`~sklearn_ais.model_selection.PairShuffleSplit`): maps are
        ranked on the training pairs and the sweep is scored on the
        validation pairs, all images taking part in both. ``None`` chooses t
        on the training data itself.
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
        What ``y`` holds. Dissimilarities are negated. A diagonal that
        contradicts it (an RDM's zero diagonal with ``"similarity"``) is an
        error.
    device : str, default="auto"
        Torch device for the kernels; ``"auto"`` is CUDA when available.
    random_state : int, RandomState instance or None, default=0
        Shuffles the folds when ``cv`` is an int.
    n_jobs : int or None, default=None
        Inner splits run in parallel through ``joblib`` (threads by default:
        they share the kernels; any backend set with
        ``joblib.parallel_config`` is used instead). The same results as
        ``n_jobs=1``.
    temperature : float > 0, default=1.0
        Temperature of ``comparison="triplet_log_likelihood"`` (ignored otherwise).

    Attributes
    ----------
    scores_ : ndarray of shape (n_maps,)
        Global AIS of each map on the training data. A map that is zero in
        every image scores exactly 0. NaN when the baseline 2OI is undefined.
    ranking_ : ndarray of shape (n_maps,)
        Rank of each map by AIS (1 = most important). Ties are broken by
        the lower map index.
    support_ : ndarray of bool of shape (n_maps,)
        Selected maps (``ranking_ <= n_features_to_select_``).
    n_features_to_select_ : int
    baseline_score_ : float
        Training 2OI with all maps (NaN when undefined: the model similarity
        matrix is constant over the observed pairs).
    path_scores_ : ndarray of shape (n_maps,)
        Training 2OI when only the top-t maps are kept, ``t = 1 .. n_maps``;
        NaN where it is undefined (e.g. t = 1 with ``similarity="pearson"``
        on pooled maps: every model similarity is equal).
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

    A labelled ``y`` (a DataFrame) is aligned to ``X`` by image id when
    ``X`` carries ids (``FeatureMaps.ids``, a DataFrame's index); see
    :func:`~sklearn_ais.model_selection.similarity_frame`.

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
        "comparison": [StrOptions(set(COMPARISONS) | set(TRIPLET_COMPARISONS))],
        "n_features_to_select": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="right"),
        ],
        "cv": ["cv_object", None],
        "y_kind": [StrOptions(set(Y_KINDS))],
        "device": [str],
        "random_state": ["random_state"],
        "n_jobs": [None, Interval(Integral, None, None, closed="neither")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        similarity="pearson",
        *,
        comparison="spearman",
        n_features_to_select="auto",
        cv=None,
        y_kind="similarity",
        device="auto",
        random_state=0,
        n_jobs=None,
        temperature=1.0,
    ):
        self.similarity = similarity
        self.comparison = comparison
        self.n_features_to_select = n_features_to_select
        self.cv = cv
        self.y_kind = y_kind
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.temperature = temperature

    # ------------------------------------------------------------------
    def _prepare(self, X, y, reset):
        ids = sample_ids(X)
        X = validate_maps_input(self, X, reset=reset)
        # fit needs structure to align with; a score on a constant y is undefined (NaN, warned)
        H = check_target(y, len(X), self.y_kind, self.comparison, ids=ids, constant="raise" if reset else "warn")
        problem = make_kernel(X, self.similarity, self.device)
        return problem, H

    def _rank(self, problem, H):
        """AIS of every map, ranking order, base score, and the full sweep."""
        target = _target_of(problem, H, self.comparison, self.temperature)
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
        y : array-like of shape (n_images, n_images), or triplets
            Human similarity matrix (NaN = missing pair), a labelled
            DataFrame (see :func:`~sklearn_ais.model_selection.similarity_frame`),
            or 1-D class labels (same class = similar). With a triplet
            ``comparison``: odd-one-out choices, an (N, 3) table of image
            indices with the odd one out last, a DataFrame of image ids, or
            :class:`~sklearn_ais.model_selection.Triplets`.

        Returns
        -------
        self : AISSelector
        """
        problem, H = self._prepare(X, y, reset=True)
        with threads_for(problem.n, problem.K):
            return self._fit_problem(problem, H)

    def _fit_problem(self, problem, H):
        """fit on prepared kernels (``cross_validate_alignment`` passes one fold's subset)."""
        K = problem.K
        if self._chooses_by_cv():
            problem.cache_loo = True  # the inner splits' leave-one-out reads it
        target, base, scores, order = self._rank(problem, H)
        if base == 0.0 and _model_is_constant(problem, H):
            _warn_undefined("X with all maps")
            base, scores = np.nan, np.full(K, np.nan)
        ranking = np.empty(K, dtype=np.int64)
        ranking[order] = np.arange(1, K + 1)
        self.path_scores_ = self._path(problem, H, order, target)
        self.scores_ = scores
        self.ranking_ = ranking
        self.baseline_score_ = float(base)
        self.n_features_to_select_ = self._choose_t(problem, H, K)
        self.support_ = ranking <= self.n_features_to_select_
        return self

    def _path(self, problem, H, order, target):
        """The ranked sweep's 2OI for t = 1 .. K, NaN where undefined."""
        path = problem.sweep(order, target, np.arange(1, problem.K + 1))

        def keep(i):
            mask = np.zeros(problem.K, dtype=bool)
            mask[order[: i + 1]] = True
            return mask

        return _undefined(problem, H, path, keep)

    def _choose_t(self, problem, H, K) -> int:
        nfs = self.n_features_to_select
        if isinstance(nfs, Integral):
            if nfs > K:
                raise ValueError(f"n_features_to_select={nfs} exceeds the number of maps ({K})")
            return int(nfs)
        if isinstance(nfs, Real):
            return max(1, int(nfs * K))  # scikit-learn's rule (RFE, SequentialFeatureSelector)
        if not self._chooses_by_cv():
            curve = self.path_scores_
        else:
            self.cv_path_scores_ = self._inner_paths(problem, H)
            curve = self.cv_path_scores_.mean(axis=0)  # NaN if any split is undefined there
        if np.isnan(curve).all():
            warnings.warn(
                "the 2OI is undefined for every number of kept maps (the model similarity matrix is constant "
                "at every step of the sweep); all maps are kept",
                UserWarning,
                stacklevel=3,
            )
            return K
        return int(np.nanargmax(curve)) + 1  # the first (smallest t) maximum

    def _chooses_by_cv(self) -> bool:
        return self.cv is not None and not isinstance(self.n_features_to_select, Real)

    def _inner_paths(self, problem, H) -> np.ndarray:
        """Validation paths (n_splits, K) of the inner cross-validation, over images or pairs."""
        from ._parallel import parallel_map

        cv = check_image_cv(self.cv, self.random_state)
        n = problem.n
        by_pairs = getattr(cv, "splits_pairs", False)
        check_target_cv(cv, H)
        raw = cv.split(np.zeros((n, 1)), H) if by_pairs else cv.split(np.zeros((n, 1)))
        splits = check_splits(raw, *split_items(H, by_pairs, n))
        for train, val in splits:  # every split checked before any work
            need = (1, 1) if getattr(cv, "splits_triplets", False) else (3, 3) if by_pairs else (MIN_IMAGES, 3)
            if len(train) < need[0] or len(val) < need[1]:
                what = "pairs" if by_pairs else "images"
                raise ValueError(
                    f"inner cv split has {len(train)} training and {len(val)} validation {what}; need at least "
                    f"{need[0]} and {need[1]}. Use fewer splits."
                )
        # Threads share the kernels (and their leave-one-out stack, computed by fit already).
        paths = parallel_map(_inner_path, [(self, problem, H, tr, va, by_pairs) for tr, va in splits],
                             n_jobs=self.n_jobs, desc="inner cross-validation", unit="split", prefer="threads")
        paths = [p for p in paths if p is not None]
        if not paths:
            raise ValueError("no inner validation split had usable human pairs")
        return np.asarray(paths)

    # ------------------------------------------------------------------
    def score(self, X, y, sample_weight=None):
        """2OI of the selected maps on (X, y); unselected maps are ablated.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (or a labelled DataFrame).
        sample_weight : None
            Accepted for scikit-learn's scoring and metadata routing; the
            samples of a similarity analysis are pairs, so weights are not
            supported (anything but None is an error).

        Returns
        -------
        score : float
            NaN, with a warning, when the 2OI is undefined (the model
            similarity matrix of the selected maps is constant).
        """
        _refuse_sample_weight(sample_weight)
        check_is_fitted(self)
        problem, H = self._prepare(X, y, reset=False)
        with threads_for(problem.n, problem.K):
            return self._score_problem(problem, H, selected=True)

    def _score_problem(self, problem, H, selected):
        """2OI of the selected maps (or of all maps) on prepared kernels (NaN when undefined)."""
        keep = self.support_ if selected else None
        r = problem.score(_target_of(problem, H, self.comparison, self.temperature), keep=keep)
        if r == 0.0 and _model_is_constant(problem, H, keep):
            _warn_undefined("X with the selected maps" if selected else "X with all maps", stacklevel=4)
            return np.nan
        return r

    def path_score(self, X, y) -> np.ndarray:
        """2OI on (X, y) along this selector's ranked sweep: one value per t = 1 .. n_maps.

        On held-out data this is the validation curve that shows how many maps
        generalise.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)

        Returns
        -------
        path : ndarray of shape (n_maps,)
            NaN where the 2OI is undefined.
        """
        check_is_fitted(self)
        problem, H = self._prepare(X, y, reset=False)
        with threads_for(problem.n, problem.K):
            return self._path_problem(problem, H)

    def _path_problem(self, problem, H):
        order = np.argsort(self.ranking_, kind="stable")
        target = _target_of(problem, H, self.comparison, self.temperature)
        return self._path(problem, H, order, target)

    def score_all(self, X, y):
        """2OI of all maps on (X, y): the reference the selection must beat.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        problem, H = self._prepare(X, y, reset=False)
        with threads_for(problem.n, problem.K):
            return self._score_problem(problem, H, selected=False)

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    # ------------------------------------------------------------------
    def fold_results(self, X, y, splits, *, by_pairs=False, permutations=None, return_estimators=False,
                     return_paths=False, n_jobs=None, verbose=0) -> list:
        """Fit a clone of this selector on each training part and score it on the held-out part.

        The fast path of :func:`~sklearn_ais.model_selection.cross_validate_alignment`
        and :func:`~sklearn_ais.model_selection.permutation_test_alignment`, with the
        same results as fitting and scoring fold by fold: the kernels are prepared
        once for all images (per task, when ``n_jobs`` splits the work), and the
        similarity of two images with map k ablated (which does not depend on the
        other images, nor on the human matrix) is computed once, so that a fold costs
        one ranked sweep. The stack of leave-one-out similarities is kept when it
        fits in 1 GiB (``n_maps * n_images**2 / 2`` float64 values), else each fold
        computes its own.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (validated with this selector's ``y_kind``).
        splits : sequence of (train, test) index arrays
            Image indices, or with ``by_pairs`` pair indices (see
            :func:`~sklearn_ais.model_selection.pair_indices`).
        by_pairs : bool, default=False
            The splits hold out matrix entries: every image takes part in both
            parts, the held-out pairs are missing from the training matrix.
        permutations : sequence of index arrays, optional
            Score the splits once per permutation ``p`` of the images' human
            judgments (``y[p][:, p]``: image i takes image p[i]'s row and column),
            the model side unchanged.
        return_estimators : bool, default=False
            Add each fold's fitted selector (``"estimator"``).
        return_paths : bool, default=False
            Add each fold's training and held-out sweep (``"train_path"``,
            ``"test_path"``).
        n_jobs : int or None, default=None
            Folds (and permutations) run in parallel through ``joblib``
            (any backend, e.g. ``joblib.parallel_config(backend="dask")``);
            the results are identical to a serial run, in the same order.
        verbose : int, default=0
            Progress bar over folds when > 0.

        Returns
        -------
        folds : list of dict, or a list of them per permutation
            One per split: ``n_train``, ``n_test``, ``train_score_selected``,
            ``test_score_full``, ``test_score_selected``, ``n_selected``,
            ``fit_time`` (and the entries asked for).
        """
        from ._parallel import effective_workers, parallel_map

        splits = [(np.asarray(tr), np.asarray(te)) for tr, te in splits]
        perms = [None] if permutations is None else [np.asarray(p) for p in permutations]
        units = [(p, f) for p in range(len(perms)) for f in range(len(splits))]
        n_chunks = min(len(units), 4 * effective_workers(n_jobs)) if effective_workers(n_jobs) > 1 else 1
        chunks = [units[i::n_chunks] for i in range(n_chunks)]
        flags = (by_pairs, return_estimators, return_paths)
        done = parallel_map(
            _fold_chunk, [(self, X, y, chunk, splits, perms, flags) for chunk in chunks], n_jobs=n_jobs,
            verbose=verbose, desc="cross-validation", unit="chunk", prefer="processes",
        )
        records = {unit: record for chunk_records in done for unit, record in chunk_records}
        per_perm = [[records[(p, f)] for f in range(len(splits))] for p in range(len(perms))]
        return per_perm[0] if permutations is None else per_perm

    def _fold_record(self, problem, H, train, test, by_pairs, return_estimators, return_paths) -> dict:
        """Fit a clone on one training part of prepared kernels and score it on the held-out part."""
        est = clone(self)
        est._validate_params()
        for attr in ("n_features_in_", "feature_names_in_"):
            if hasattr(self, attr):
                setattr(est, attr, getattr(self, attr))
        t0 = time.perf_counter()
        fit_on, score_on, H_train, H_test = fold_parts(problem, H, train, test, by_pairs=by_pairs, take=_subset)
        est._fit_problem(fit_on, H_train)
        scores = (est.path_scores_[est.n_features_to_select_ - 1], est._score_problem(score_on, H_test, selected=False),
                  est._score_problem(score_on, H_test, selected=True))
        paths = (est.path_scores_, est._path_problem(score_on, H_test)) if return_paths else None
        return fold_record(len(train), len(test), scores, est.support_.sum(), time.perf_counter() - t0,
                           estimator=est if return_estimators else None, paths=paths)


def _subset(problem, idx):
    return problem.subset(idx)


def _inner_path(selector, problem, H, train, val, by_pairs):
    """Validation path of one inner split: maps ranked on the training part, the sweep on the validation part."""
    fit_on, val_on, fit_H, val_H = fold_parts(problem, H, train, val, by_pairs=by_pairs, take=_subset)
    if isinstance(val_H, TripletSet):
        if len(fit_H) == 0 or len(val_H) == 0:
            warnings.warn("an inner split has no triplet within its training or validation images; it is skipped",
                          UserWarning)
            return None
    elif target_is_constant(upper_triangle(val_H)):  # no observed pair, or all equal (the one constant rule)
        warnings.warn("an inner validation split has no usable human pairs; it is skipped", UserWarning)
        return None
    _, _, _, order = selector._rank(fit_on, fit_H)
    target = _target_of(val_on, val_H, selector.comparison, selector.temperature)
    path = val_on.sweep(order, target, np.arange(1, problem.K + 1))
    return _undefined(val_on, val_H, path, lambda i: np.isin(np.arange(problem.K), order[: i + 1]))


def _fold_chunk(selector, X, y, units, splits, perms, flags) -> list:
    """One task of :meth:`AISSelector.fold_results`: kernels prepared once, then its (permutation, fold) units."""
    by_pairs, return_estimators, return_paths = flags
    probe = clone(selector)
    problem, H = probe._prepare(X, y, reset=True)
    problem.cache_loo = True
    out = []
    with threads_for(problem.n, problem.K):
        for p, f in units:
            Hp = H if perms[p] is None else H[np.ix_(perms[p], perms[p])]
            train, test = splits[f]
            record = probe._fold_record(problem, Hp, train, test, by_pairs, return_estimators, return_paths)
            out.append(((p, f), record))
    return out


class AISSelectorCV(AISSelector):
    """:class:`AISSelector` whose number of maps is chosen by cross-validation.

    As :class:`~sklearn.feature_selection.RFECV` is to ``RFE``: for each split
    the maps are ranked on the training part and the ranked sweep is scored on
    the held-out part; ``t`` is the number of maps with the best mean held-out
    2OI (the smallest on ties; a t whose score is undefined in any split is
    never chosen). The final ranking is fitted on all the data. The splits
    share one set of kernels (see :meth:`AISSelector.fold_results`).

    Parameters
    ----------
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : str, default="spearman"
        Correlation between the model's and the human upper triangles (see
        :class:`AISSelector`).
    cv : int, splitter or iterable, default=5
        Over images (an int ``k`` means ``KFold(k, shuffle=True,
        random_state=random_state)``) or over matrix entries
        (:class:`~sklearn_ais.model_selection.PairKFold`, ...).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    device : str, default="auto"
    random_state : int, RandomState instance or None, default=0
        Shuffles the folds of an int ``cv``.
    n_jobs : int or None, default=None
        The splits run in parallel through ``joblib`` (see :class:`AISSelector`).
    temperature : float > 0, default=1.0
        Of ``comparison="triplet_log_likelihood"`` (see :class:`AISSelector`).

    Attributes
    ----------
    cv_results_ : dict of ndarray
        ``n_features`` (t = 1 .. n_maps), ``mean_test_score``,
        ``std_test_score`` and ``split{k}_test_score``: the held-out 2OI of the
        top-t maps, per split (NaN where undefined).
    n_features_ : int
        The chosen t (also ``n_features_to_select_``).
    scores_, ranking_, support_, baseline_score_, path_scores_, cv_path_scores_
        As for :class:`AISSelector`, fitted on all the data.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import AISSelectorCV
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 12))
    >>> H = np.corrcoef(X[:, :3] + 0.3 * rng.normal(size=(40, 3)))
    >>> sel = AISSelectorCV(cv=4).fit(X, H)
    >>> sel.cv_results_["mean_test_score"].shape, bool(sel.support_[:3].all())
    ((12,), True)
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in AISSelector._parameter_constraints.items() if k != "n_features_to_select"},
        "cv": ["cv_object"],
    }
    # Always chosen by cross-validation (not a parameter of this class).
    n_features_to_select = "auto"

    def __init__(
        self,
        similarity="pearson",
        *,
        comparison="spearman",
        cv=5,
        y_kind="similarity",
        device="auto",
        random_state=0,
        n_jobs=None,
        temperature=1.0,
    ):
        self.similarity = similarity
        self.comparison = comparison
        self.cv = cv
        self.y_kind = y_kind
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.temperature = temperature

    def _chooses_by_cv(self) -> bool:
        return True  # cv=None means the default 5 shuffled folds

    def _fit_problem(self, problem, H):
        super()._fit_problem(problem, H)
        paths = self.cv_path_scores_
        with np.errstate(invalid="ignore"):
            self.cv_results_ = {
                "n_features": np.arange(1, problem.K + 1),
                "mean_test_score": paths.mean(axis=0),
                "std_test_score": paths.std(axis=0),
                **{f"split{k}_test_score": p for k, p in enumerate(paths)},
            }
        self.n_features_ = self.n_features_to_select_
        return self


def _refuse_sample_weight(sample_weight):
    if sample_weight is not None:
        raise ValueError(
            "sample_weight is not supported: the samples of a similarity analysis are pairs of images; "
            "mark pairs to ignore with NaN in y"
        )
