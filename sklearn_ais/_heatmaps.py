"""AISHeatmapper: per-image alignment importance and heatmaps."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._ablation import make_problem
from ._containers import FeatureMaps, check_feature_maps
from ._similarity import COMPARISONS, SIMILARITIES, upper_triangle
from ._targets import check_similarity_target


def _fingerprint(maps: np.ndarray) -> list[str]:
    """One digest per image, to recognise the training images in transform."""
    return [hashlib.sha1(np.ascontiguousarray(m).tobytes()).hexdigest() for m in maps]


def _require_maps(X, min_images=4, what="AISHeatmapper"):
    if not isinstance(X, FeatureMaps):
        raise TypeError(
            f"{what} needs FeatureMaps (the output of DNNFeatureMapTransformer), got {type(X).__name__}: "
            "a heatmap is a weighted sum of spatial maps"
        )
    return check_feature_maps(X, min_images)


def _undefined_rows(H: np.ndarray) -> np.ndarray:
    """Rows of a validated H (NaN diagonal) whose row correlation is undefined."""
    observed = ~np.isnan(H)
    too_few = observed.sum(axis=1) < 3
    constant = np.where(observed, H, -np.inf).max(axis=1) == np.where(observed, H, np.inf).min(axis=1)
    return too_few | constant


class AISHeatmapper(TransformerMixin, BaseEstimator):
    """Per-image alignment importance scores and the heatmaps they draw.

    For image t and map k, ``AIS_{t,k} = r_t(all maps) - r_t(map k set to 0
    in image t only)``, where ``r_t`` is the correlation between row t of
    the model's similarity matrix (the n - 1 other images) and row t of the
    human one. The heatmap of image t is ``sum_k w_k A_k`` with ``w =
    max(AIS_t, 0) / sum(max(AIS_t, 0))``, upsampled and mapped back onto
    the original image (the transformer's resize and crop undone), then
    min-max scaled to [0, 1].

    Parameters
    ----------
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : {"spearman", "pearson"}, default="spearman"
    keep : array-like of bool of shape (n_maps,), default=None
        Only these maps may carry weight (e.g. a fitted selector's
        ``support_``). In a ``Pipeline`` after an :class:`AISSelector`, the
        unselected maps arrive as zeros and get zero weight anyway.
    output : {"original", "input", "maps"}, default="original"
        Geometry of the returned heatmaps: the original images' (a stacked
        array when they share a size, else a list), the network input's
        ``(n, H, W)``, or the feature maps' ``(n, h, w)`` (not upsampled).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    device : str, default="auto"

    Attributes
    ----------
    image_scores_ : ndarray of shape (n_images, n_maps)
        Per-image AIS of the training images. NaN for an image whose human
        row has fewer than 3 observed pairs or only equal ones (the row
        correlation is undefined; ``fit`` warns and names them).
    image_base_scores_ : ndarray of shape (n_images,)
        Row correlation of each training image with all maps (NaN likewise).
    scores_ : ndarray of shape (n_maps,)
        Global AIS, used to weight images that have no human row (images
        not seen in ``fit``).
    n_features_in_ : int
        Number of maps.

    Notes
    -----
    When every weight of an image is <= 0 (no map helps its row), its
    heatmap is all zeros and a warning names the images. Images are
    recognised in :meth:`transform` by the content of their maps.

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
    """

    _parameter_constraints: dict = {
        "similarity": [StrOptions(set(SIMILARITIES))],
        "comparison": [StrOptions(set(COMPARISONS))],
        "keep": ["array-like", None],
        "output": [StrOptions({"original", "input", "maps"})],
        "y_kind": [StrOptions({"similarity", "dissimilarity"})],
        "device": [str],
    }

    def __init__(
        self, similarity="pearson", comparison="spearman", keep=None, output="original", y_kind="similarity",
        device="auto",
    ):
        self.similarity = similarity
        self.comparison = comparison
        self.keep = keep
        self.output = output
        self.y_kind = y_kind
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.target_tags.required = True
        return tags

    def _keep_mask(self, K):
        if self.keep is None:
            return np.ones(K, dtype=bool)
        keep = np.asarray(self.keep, dtype=bool)
        if keep.shape != (K,):
            raise ValueError(f"keep must be a boolean mask of shape ({K},), got {keep.shape}")
        return keep

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Compute per-image and global AIS.

        Parameters
        ----------
        X : FeatureMaps or array-like of shape (n_images, n_units)
            A 2-D array (identity head) gives ``image_scores_`` of units;
            only feature maps can be drawn by :meth:`transform`.
        y : array-like of shape (n_images, n_images)
            Human similarity matrix (NaN = missing pair).

        Returns
        -------
        self : AISHeatmapper
        """
        if isinstance(X, FeatureMaps):
            X = _require_maps(X)
            K = X.n_maps
        else:  # units of a 2-D embedding: per-image scores only, nothing to draw
            X = validate_data(self, X, dtype=np.float64, ensure_min_samples=4)
            K = X.shape[1]
        H = check_similarity_target(y, len(X), self.y_kind)
        self._keep_mask(K)
        problem = make_problem(X, self.similarity, self.device)
        base, ablated = problem.per_image(H, self.comparison)
        image_scores = base[:, None] - ablated
        # A row correlation needs >= 3 observed human pairs that are not all equal;
        # otherwise the per-image AIS is undefined: NaN (not 0), and transform
        # weights that image by the global AIS, as an image never seen in fit.
        undefined = np.flatnonzero(_undefined_rows(H))
        if len(undefined):
            base[undefined] = np.nan
            image_scores[undefined] = np.nan
            warnings.warn(
                f"{len(undefined)} image(s) have fewer than 3 observed human pairs, or all equal ones, in their "
                f"row of y (rows {undefined[:10].tolist()}{'...' if len(undefined) > 10 else ''}): their "
                "per-image AIS is undefined (NaN in image_scores_) and their heatmaps use the global AIS",
                UserWarning,
                stacklevel=2,
            )
        self.image_base_scores_ = base
        self.image_scores_ = image_scores
        target = problem.target(upper_triangle(H), self.comparison)
        gbase, gablated = problem.leave_one_out(target)
        self.scores_ = gbase - gablated
        self.n_features_in_ = K
        self._train_digests = {d: i for i, d in enumerate(_fingerprint(X.maps))} if isinstance(X, FeatureMaps) else {}
        return self

    def image_weights(self, X) -> np.ndarray:
        """Map weights (n_images, n_maps) used for each image's heatmap.

        Training images use their own per-image AIS; other images, and
        training images whose per-image AIS is undefined, the global AIS.
        Negative scores get weight 0; each row sums to 1 (or is all 0).
        """
        check_is_fitted(self)
        X = _require_maps(X, min_images=1)  # new images can be drawn one at a time
        if X.n_maps != self.n_features_in_:
            raise ValueError(f"X has {X.n_maps} maps, but the heatmapper was fitted with {self.n_features_in_}")
        raw = np.empty((len(X), X.n_maps))
        for i, d in enumerate(_fingerprint(X.maps)):
            j = self._train_digests.get(d)
            own = j is not None and not np.isnan(self.image_scores_[j]).any()
            raw[i] = self.image_scores_[j] if own else self.scores_
        w = np.maximum(raw, 0.0) * self._keep_mask(X.n_maps)
        total = w.sum(axis=1, keepdims=True)
        empty = np.flatnonzero(total[:, 0] == 0)
        if len(empty):
            warnings.warn(
                f"{len(empty)} image(s) have no map with positive alignment importance (indices "
                f"{empty[:10].tolist()}{'...' if len(empty) > 10 else ''}); their heatmaps are all zero",
                UserWarning,
                stacklevel=2,
            )
        return np.divide(w, total, out=np.zeros_like(w), where=total > 0)

    def transform(self, X):
        """Heatmaps in [0, 1].

        Parameters
        ----------
        X : FeatureMaps

        Returns
        -------
        heatmaps : ndarray of shape (n_images, H, W), or a list of 2-D arrays
            when ``output="original"`` and the originals differ in size.
        """
        from ._geometry import minmax, to_original

        w = self.image_weights(X)
        raw = X.weighted_sum(w)  # (n, h, w), or a list for maps of different sizes
        if self.output == "maps":
            return minmax(raw)
        if X.input_size is None:
            raise ValueError("X has no input_size (it was not made by DNNFeatureMapTransformer); use output='maps'")
        output = "input" if self.output == "input" or X.geometry is None else "original"
        return minmax(to_original(raw, X.geometry, X.input_size, output=output))
