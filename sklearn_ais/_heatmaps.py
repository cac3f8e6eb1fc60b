"""AISHeatmapper: per-image alignment importance and heatmaps."""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._ablation import make_kernel
from ._device import threads_for
from ._similarity import COMPARISONS, SIMILARITIES, upper_triangle
from ._sklearn_compat import Interval, StrOptions, _fit_context
from ._targets import Y_KINDS, SimilarityTargetMixin, sample_ids, target_is_constant
from ._triplets import TRIPLET_COMPARISONS, TripletSet, check_target
from ._validation import MIN_IMAGES, as_feature_mask, check_feature_maps, is_feature_maps, refuse_masked

__all__ = ["AISHeatmapper"]

# Two images are the same image when their map signatures agree to this fraction of
# their scale: the network's own float noise (batch size, threads, devices) is ~1e-6.
_SAME_IMAGE_REL = 1e-4


def _signatures(maps) -> np.ndarray:
    """Per image, the mean and root mean square of every map: (n, 2K) float64.

    A compact description of an image's maps that two different images practically
    never share, and that the network's float noise changes by ~1e-6 only.
    """
    if isinstance(maps, list):  # maps of different sizes (crop=False)
        return np.concatenate([_signatures(m[None]) for m in maps]) if maps else np.zeros((0, 0))
    m = maps.reshape(maps.shape[0], maps.shape[1], -1).astype(np.float64)
    return np.concatenate([m.mean(axis=2), np.sqrt((m * m).mean(axis=2))], axis=1)


def _require_maps(X, min_images=MIN_IMAGES, what="AISHeatmapper"):
    if not is_feature_maps(X):
        raise TypeError(
            f"{what} needs FeatureMaps (the output of DNNFeatureMapTransformer), got {type(X).__name__}: "
            "a heatmap is a weighted sum of spatial maps"
        )
    return check_feature_maps(X, min_images)


def _extractor(X) -> tuple:
    """What FeatureMaps say about the network that computed them: backbone, layer, head (None: not recorded)."""
    return (getattr(X, "backbone", None), getattr(X, "layer", None), type(X.head).__name__)


def _check_same_extractor(fitted, given):
    """Maps of another backbone or layer than the training maps are refused (their per-image scores do not apply)."""
    if fitted is None:
        return
    for what, a, b in zip(("backbone", "layer", "head"), fitted, given):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"the heatmapper was fitted on maps of {what} {a!r} but X holds maps of {what} {b!r}: per-image and "
                "global AIS are scores of the fitted network's maps; fit a heatmapper on this network's maps"
            )


def _undefined_rows(H: np.ndarray) -> np.ndarray:
    """Rows of a validated H (NaN diagonal) whose row correlation is undefined."""
    observed = ~np.isnan(H)
    too_few = observed.sum(axis=1) < 3
    constant = np.array([target_is_constant(row) for row in H], dtype=bool)  # the one rule of the human side
    return too_few | constant


def _signed_average_weights(w: np.ndarray, total_abs: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """``w / sum(w)`` per row (``np.average``'s weights), all 0 where the signed sum is 0.

    A sum is 0 when it is within the rounding of its terms, ``K * eps * sum(|w|)``
    (where ``np.average`` raises on an exact 0, and below which its sign is noise).
    Rows that are all 0 were reported already (``empty``).
    """
    total = w.sum(axis=1, keepdims=True)
    zero = np.abs(total) <= w.shape[1] * np.finfo(np.float64).eps * total_abs
    cancelled = np.setdiff1d(np.flatnonzero(zero[:, 0]), empty)
    if len(cancelled):
        warnings.warn(
            f"{len(cancelled)} image(s) have alignment importances that sum to 0 (indices "
            f"{cancelled[:10].tolist()}{'...' if len(cancelled) > 10 else ''}): weighting='average' divides by "
            "that sum (np.average raises there); their heatmaps are all zero",
            UserWarning,
            stacklevel=4,
        )
    return np.divide(w, total, out=np.zeros_like(w), where=~zero)


class AISHeatmapper(SimilarityTargetMixin, TransformerMixin, BaseEstimator):
    """Per-image alignment importance scores and the heatmaps they draw.

    For image t and map k, ``AIS_{t,k} = r_t(all maps) - r_t(map k set to 0
    in image t only)``, where ``r_t`` is the correlation between row t of
    the model's similarity matrix (the n - 1 other images) and row t of the
    human one. The heatmap of image t is ``sum_k w_k A_k``, upsampled and
    mapped back onto the original image (the transformer's resize and crop
    undone), then min-max scaled to [0, 1] within the image (by default;
    ``weighting``, ``resize``, ``normalize`` and ``squared`` give the
    released code of Truong et al., 2024, see the README). The part of the
    original image outside the network's centre crop was never seen by the
    network: it is NaN, not 0 (which would read as "unimportant"); the
    metrics, plots and the report leave it out or draw it hatched.

    Parameters
    ----------
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine", "odd_one_out", \
        "triplet_log_likelihood"}, default="spearman"
        Correlation of the global scores ``scores_`` (upper triangles), and
        of the per-image scores unless ``image_comparison`` is given. With
        odd-one-out triplets as ``y``: ``"odd_one_out"`` or
        ``"triplet_log_likelihood"`` (see :class:`AISSelector`), the
        per-image score being that of the triplets that contain the image.
    image_comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"} or None, default=None
        Row correlation of the per-image scores; None: ``comparison``. The
        released code of Truong et al. (2024) scores a row by the plain
        Pearson r (``"pearson"``; ``compute_perturbation.py``, line 81, with
        ``utils.pearsonr_2d``) while its global score is r²
        (``"pearson_r2"``); the paper's text names Spearman for the rows.
        Ignored for triplets (their per-image score follows ``comparison``).
    keep : array-like of bool of shape (n_maps,), array of int, or None, default=None
        Only these maps may carry weight (a boolean mask, e.g. a fitted
        selector's ``support_``, or map indices). In a ``Pipeline`` after an
        :class:`AISSelector`, the unselected maps arrive as zeros and get
        zero weight anyway.
    weighting : {"positive", "signed", "average"}, default="positive"
        How per-image AIS become map weights. ``"positive"``: ``w =
        max(AIS_t, 0) / sum(max(AIS_t, 0))``, a convex combination of the
        maps that help image t's alignment. ``"signed"``: ``w = AIS_t /
        sum(|AIS_t|)``, maps that hurt alignment subtract, and a map whose
        scores sum below 0 is not flipped. ``"average"`` (the released code
        of Truong et al., 2024: ``np.average(maps, weights=AIS_t)``,
        ``viz_heatmap.py``, line 64): ``w = AIS_t / sum(AIS_t)``, the signed
        sum, which negates the heatmap of an image whose scores sum below 0
        (``image_score_sums_`` says which); where the scores sum to 0 (up to
        the rounding of the sum), where ``np.average`` raises, the heatmap is
        all zeros and :meth:`transform` warns.
    output : {"original", "input", "maps"}, default="original"
        Geometry of the returned heatmaps: the original images' (a stacked
        array when they share a size, else a list; NaN outside the crop),
        the network input's
        ``(n, H, W)``, or the feature maps' ``(n, h, w)`` (not upsampled).
    resize : {"via_input", "direct"}, default="via_input"
        How ``output="original"`` reaches the image: ``"via_input"``
        upsamples to the network input, undoes the crop and resizes to the
        original (antialiased when shrinking); ``"direct"`` resizes the
        feature-map grid to the original image in one bilinear step without
        antialiasing, as the released code's ``cv2.resize`` does
        (``viz_heatmap.py``, line 44); only for maps extracted with
        ``crop=False`` (a crop is refused).
    normalize : {"minmax", "max"} or None, default="minmax"
        Per heatmap, after the resize: ``"minmax"`` scales to [0, 1];
        ``"max"`` divides by the maximum (``viz_heatmap.py``, line 45; a
        heatmap whose maximum is 0 becomes all zeros); None returns the
        weighted sums as they are.
    squared : bool, default=False
        Square the normalised heatmap, as the released code does before its
        colour map (``viz_heatmap.py``, line 46).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    device : str, default="auto"
    temperature : float > 0, default=1.0
        Of ``comparison="triplet_log_likelihood"``.

    Attributes
    ----------
    image_scores_ : ndarray of shape (n_images, n_maps)
        Per-image AIS of the training images. NaN for an image whose human
        row has fewer than 3 observed pairs or only equal ones (the row
        correlation is undefined; ``fit`` warns and names them).
    image_base_scores_ : ndarray of shape (n_images,)
        Row correlation of each training image with all maps (NaN likewise).
    image_score_sums_ : ndarray of shape (n_images,)
        Sum of each training image's per-image AIS over the maps in
        ``keep``: the divisor of ``weighting="average"`` (below 0: that
        heatmap is negated; 0: it is all zeros). NaN where the scores are.
    scores_ : ndarray of shape (n_maps,)
        Global AIS, used to weight images that have no human row (images
        not seen in ``fit``).
    train_ids_ : ndarray of shape (n_images,) or None
        Ids of the training images (``FeatureMaps.ids``), if they had any.
    n_features_in_ : int
        Number of maps.

    Notes
    -----
    :meth:`transform` draws a training image with its own per-image AIS and
    any other image with the global AIS. Training images are recognised by
    their ids when both the training and the new FeatureMaps carry ids, and
    always by the content of their maps, up to the network's own float noise:
    an id whose maps differ (another network, layer, weights or
    preprocessing) gets the global AIS, with a warning (maps of one image
    computed in another batch differ by ~1e-6 only); maps that say they come
    from another backbone or layer are refused. Among identical
    training images the one at the same position wins. :meth:`fit_transform`
    draws every training image with its own scores, duplicates included.
    When every weight of an image is <= 0 (no map helps its row), its
    heatmap is all zeros and a warning names the images; likewise with
    ``weighting="average"`` when an image's scores sum to 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import AISHeatmapper, FeatureMaps
    >>> from sklearn_ais.backbones import PoolingHead
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((12, 6, 4, 4)).astype(np.float32)
    >>> E = maps.mean(axis=(2, 3))
    >>> H = np.corrcoef(E[:, :2])  # humans use maps 0 and 1
    >>> hm = AISHeatmapper(output="maps").fit(FeatureMaps(maps, PoolingHead()), H)
    >>> hm.image_scores_.shape
    (12, 6)
    >>> heat = hm.transform(FeatureMaps(maps, PoolingHead()))
    >>> heat.shape, float(heat.min()), float(heat.max())
    ((12, 4, 4), 0.0, 1.0)

    The released code's settings (Truong et al., 2024; see the README):

    >>> released = AISHeatmapper(comparison="pearson_r2", image_comparison="pearson", weighting="average",
    ...                          output="maps", normalize="max", squared=True)
    >>> released = released.fit(FeatureMaps(maps, PoolingHead()), H)
    >>> int((released.image_score_sums_ < 0).sum())  # images whose signed average is negated
    4
    """

    _parameter_constraints: dict = {
        "similarity": [StrOptions(set(SIMILARITIES))],
        "comparison": [StrOptions(set(COMPARISONS) | set(TRIPLET_COMPARISONS))],
        "keep": ["array-like", None],
        "image_comparison": [StrOptions(set(COMPARISONS)), None],
        "weighting": [StrOptions({"positive", "signed", "average"})],
        "output": [StrOptions({"original", "input", "maps"})],
        "resize": [StrOptions({"via_input", "direct"})],
        "normalize": [StrOptions({"minmax", "max"}), None],
        "squared": ["boolean"],
        "y_kind": [StrOptions(set(Y_KINDS))],
        "device": [str],
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        similarity="pearson",
        *,
        comparison="spearman",
        image_comparison=None,
        keep=None,
        weighting="positive",
        output="original",
        resize="via_input",
        normalize="minmax",
        squared=False,
        y_kind="similarity",
        device="auto",
        temperature=1.0,
    ):
        self.similarity = similarity
        self.comparison = comparison
        self.image_comparison = image_comparison
        self.keep = keep
        self.weighting = weighting
        self.output = output
        self.resize = resize
        self.normalize = normalize
        self.squared = squared
        self.y_kind = y_kind
        self.device = device
        self.temperature = temperature

    def __sklearn_tags__(self):
        # fit also takes a 2-D array of units (per-image AIS, nothing to draw); transform needs FeatureMaps.
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _keep_mask(self, K):
        if self.keep is None:
            return np.ones(K, dtype=bool)
        return as_feature_mask(self.keep, K, "keep")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Compute per-image and global AIS.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
            A 2-D array (identity head) gives ``image_scores_`` of units;
            only feature maps can be drawn by :meth:`transform`.
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (NaN = missing pair), or a labelled
            DataFrame (aligned to ``X.ids`` by label).

        Returns
        -------
        self : AISHeatmapper
        """
        ids = sample_ids(X)
        if is_feature_maps(X):
            X = _require_maps(X)
            K = X.n_maps
        else:  # units of a 2-D embedding: per-image scores only, nothing to draw
            refuse_masked(X)
            X = validate_data(self, X, dtype=np.float64, ensure_min_samples=MIN_IMAGES)
            K = X.shape[1]
        H = check_target(y, len(X), self.y_kind, self.comparison, ids=ids)
        keep = self._keep_mask(K)
        problem = make_kernel(X, self.similarity, self.device)
        with threads_for(problem.n, problem.K):
            self._fit_kernel(problem, H)
        self.image_score_sums_ = (self.image_scores_ * keep).sum(axis=1)
        self.n_features_in_ = K
        self.train_ids_ = ids if is_feature_maps(X) else None
        self._train_signatures = _signatures(X.maps) if is_feature_maps(X) else None
        self._train_extractor = _extractor(X) if is_feature_maps(X) else None
        return self

    def _fit_kernel(self, problem, H):
        """Per-image and global AIS on prepared kernels."""
        triplets = isinstance(H, TripletSet)
        target = problem.triplet_target(H, self.comparison, self.temperature) if triplets else None
        image_comparison = self.comparison if self.image_comparison is None else self.image_comparison
        base, ablated = problem.per_image(target if triplets else H, image_comparison)
        image_scores = base[:, None] - ablated
        # A row correlation needs >= 3 observed human pairs that are not all equal;
        # otherwise the per-image AIS is undefined: NaN (not 0), and transform
        # weights that image by the global AIS, as an image never seen in fit.
        if triplets:  # an image in no triplet has no per-image score
            undefined = np.setdiff1d(np.arange(problem.n), H.images())
            why = "appear in no triplet"
        else:
            undefined = np.flatnonzero(_undefined_rows(H))
            why = "have fewer than 3 observed human pairs, or all equal ones, in their row of y"
        if len(undefined):
            base[undefined] = np.nan
            image_scores[undefined] = np.nan
            warnings.warn(
                f"{len(undefined)} image(s) {why} (rows {undefined[:10].tolist()}"
                f"{'...' if len(undefined) > 10 else ''}): their per-image AIS is undefined (NaN in image_scores_) "
                "and their heatmaps use the global AIS",
                UserWarning,
                stacklevel=3,
            )
        self.image_base_scores_ = base
        self.image_scores_ = image_scores
        if not triplets:
            target = problem.target(upper_triangle(H), self.comparison)
        gbase, gablated = problem.leave_one_out(target)
        self.scores_ = gbase - gablated

    def _training_match(self, X) -> np.ndarray:
        """Index of the training image each image of ``X`` is (-1: not a training image)."""
        if X.n_maps != self.n_features_in_:
            raise ValueError(f"X has {X.n_maps} maps, but the heatmapper was fitted with {self.n_features_in_}")
        n = len(X)
        match = np.full(n, -1, dtype=np.int64)
        if self._train_signatures is None:
            return match
        _check_same_extractor(getattr(self, "_train_extractor", None), _extractor(X))
        T, S = self._train_signatures, _signatures(X.maps)
        if X.ids is not None and self.train_ids_ is not None:
            # A match needs the same image *and* the same extractor: the id, then the maps' content.
            position = {v: i for i, v in enumerate(self.train_ids_.tolist())}
            other = []
            for i, v in enumerate(X.ids.tolist()):
                j = position.get(v, -1)
                tol = _SAME_IMAGE_REL * max(float(np.abs(S[i]).max()), np.finfo(float).tiny)
                if j >= 0 and not (np.abs(T[j] - S[i]).max() <= tol):
                    other.append(i)
                    j = -1
                match[i] = j
            if other:
                warnings.warn(
                    f"{len(other)} image(s) carry a training image's id but not its maps (indices {other[:10]}"
                    f"{'...' if len(other) > 10 else ''}): maps of another network, layer, weights or preprocessing, "
                    "or another image under the same name. They are drawn with the global AIS, not the per-image "
                    "scores of the training image",
                    UserWarning,
                    stacklevel=4,
                )
            return match
        # Candidates by a scalar key (a fixed +-1 projection of the signature): two signatures
        # within a relative tol of each other have keys within tol * scale * 2K. Then verified.
        r = np.random.default_rng(0).choice([-1.0, 1.0], size=T.shape[1])
        kt, ks = T @ r, S @ r
        order = np.argsort(kt)
        kt_sorted = kt[order]
        for i in range(n):
            tol = _SAME_IMAGE_REL * max(float(np.abs(S[i]).max()), np.finfo(float).tiny)
            lo = np.searchsorted(kt_sorted, ks[i] - tol * len(r), side="left")
            hi = np.searchsorted(kt_sorted, ks[i] + tol * len(r), side="right")
            cand = order[lo:hi]
            same = cand[np.abs(T[cand] - S[i]).max(axis=1) <= tol]
            if len(same):
                match[i] = i if i in same else int(np.min(same))  # identical training images: same position wins
        return match

    def image_weights(self, X) -> np.ndarray:
        """Map weights (n_images, n_maps) used for each image's heatmap.

        Training images use their own per-image AIS; other images, and
        training images whose per-image AIS is undefined, the global AIS.
        ``weighting="positive"``: negative scores get weight 0 and each row
        sums to 1 (or is all 0); ``"signed"``: each row's absolute values sum
        to 1 (or it is all 0); ``"average"``: each row sums to 1 (or, where
        the scores sum to 0, it is all 0).

        Parameters
        ----------
        X : FeatureMaps

        Returns
        -------
        weights : ndarray of shape (n_images, n_maps)
        """
        check_is_fitted(self)
        X = _require_maps(X, min_images=1)  # new images can be drawn one at a time
        return self._weights(X, self._training_match(X))

    def _weights(self, X, match):
        if X.n_maps != self.n_features_in_:
            raise ValueError(f"X has {X.n_maps} maps, but the heatmapper was fitted with {self.n_features_in_}")
        raw = np.empty((len(X), X.n_maps))
        for i, j in enumerate(match):
            own = j >= 0 and not np.isnan(self.image_scores_[j]).any()
            raw[i] = self.image_scores_[j] if own else self.scores_
        raw = np.nan_to_num(raw, nan=0.0) * self._keep_mask(X.n_maps)
        w = np.maximum(raw, 0.0) if self.weighting == "positive" else raw
        total = np.abs(w).sum(axis=1, keepdims=True)
        empty = np.flatnonzero(total[:, 0] == 0)
        if len(empty):
            what = "positive" if self.weighting == "positive" else "non-zero"
            warnings.warn(
                f"{len(empty)} image(s) have no map with {what} alignment importance (indices "
                f"{empty[:10].tolist()}{'...' if len(empty) > 10 else ''}); their heatmaps are all zero",
                UserWarning,
                stacklevel=3,
            )
        if self.weighting == "average":
            return _signed_average_weights(w, total, empty)
        return np.divide(w, total, out=np.zeros_like(w), where=total > 0)

    def transform(self, X):
        """Heatmaps (in [0, 1] with the default ``normalize="minmax"``; NaN outside the network's centre crop).

        Parameters
        ----------
        X : FeatureMaps

        Returns
        -------
        heatmaps : ndarray of shape (n_images, H, W), or a list of 2-D arrays
            when ``output="original"`` and the originals differ in size.
        """
        check_is_fitted(self)
        X = _require_maps(X, min_images=1)
        return self._draw(X, self._weights(X, self._training_match(X)))

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then draw every training image with its own per-image AIS (duplicates included).

        Parameters
        ----------
        X : FeatureMaps
        y : array-like of shape (n_images, n_images)
        **fit_params : dict
            Passed to ``fit``.

        Returns
        -------
        heatmaps : ndarray of shape (n_images, H, W) or list of ndarray
        """
        self.fit(X, y, **fit_params)
        X = _require_maps(X)
        return self._draw(X, self._weights(X, np.arange(len(X))))

    def _draw(self, X, w):
        from ._geometry import stretch_to_original, to_original

        raw = X.weighted_sum(w)  # (n, h, w), or a list for maps of different sizes
        if self.output == "maps":
            return self._finish(raw)
        if X.input_size is None:
            raise ValueError("X has no input_size (it was not made by DNNFeatureMapTransformer); use output='maps'")
        output = "input" if self.output == "input" or X.geometry is None else "original"
        if output == "original" and self.resize == "direct":
            return self._finish(stretch_to_original(raw, X.geometry, X.input_size))
        return self._finish(to_original(raw, X.geometry, X.input_size, output=output))

    def _finish(self, heat):
        """The normalisation and the display power of resized heatmaps."""
        from ._geometry import maxscale, minmax

        heat = {"minmax": minmax, "max": maxscale, None: lambda h: h}[self.normalize](heat)
        if self.squared:
            heat = [h * h for h in heat] if isinstance(heat, list) else heat * heat
        return heat
