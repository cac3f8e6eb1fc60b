"""Shared helpers of the alignment estimators: inputs, targets, 2OI."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .._similarity import correlation, similarity_matrix, triplet_scores, upper_triangle
from .._targets import SimilarityTargetMixin, check_similarity_target, sample_ids, target_is_constant
from .._triplets import check_triplet_target, is_triplet_target
from .._device import torch_threads  # noqa: F401  (re-exported for the alignment estimators)
from .._validation import (
    MIN_IMAGES,
    check_feature_maps,
    check_image_cv,
    check_splits,
    is_feature_maps,
    record_n_features,
    validate_maps_input,
)


def as_embeddings(estimator, X, *, reset: bool, min_samples: int = MIN_IMAGES) -> np.ndarray:
    """Embeddings (n, D) float64 of ``X``: FeatureMaps through their head, or a 2-D array.

    With ``reset=True`` sets ``estimator.n_features_in_`` to the embedding
    dimension ``D`` (for FeatureMaps: the head's output size, which equals the
    number of maps for pooling heads); otherwise checks it. ``min_samples``:
    fewest images accepted (a similarity analysis needs 4; a transform 1).

    Parameters
    ----------
    estimator : estimator
        Receives (or is checked against) ``n_features_in_``.
    X : FeatureMaps or array-like of shape (n_images, n_features)
        Maps are embedded through their head.
    reset : bool
        True in ``fit``.
    min_samples : int, default=4

    Returns
    -------
    E : ndarray of shape (n_images, n_features), float64
    """
    if is_feature_maps(X):
        check_feature_maps(X, min_samples)
        E = np.asarray(X.embed(), dtype=np.float64)
        record_n_features(estimator, E.shape[1], reset=reset, described=f"X embeds to {E.shape[1]} features")
        return E
    return validate_maps_input(estimator, X, reset=reset, min_images=min_samples)


def compare_upper(model_similarity, H, comparison: str = "spearman") -> float:
    """Correlation of the upper triangles of a model similarity matrix and a human one (NaN ignored).

    Parameters
    ----------
    model_similarity : array-like of shape (n, n)
    H : ndarray of shape (n, n)
        Validated human similarity matrix (NaN = missing).
    comparison : str, default="spearman"

    Returns
    -------
    r : float
    """
    h = upper_triangle(H)
    if target_is_constant(h):  # e.g. a constant held-out block: undefined, not an error deep inside
        return float("nan")
    return correlation(upper_triangle(np.asarray(model_similarity, dtype=np.float64)), h, comparison)


def embedding_2oi(E, H, similarity: str = "pearson", comparison: str = "spearman") -> float:
    """2OI of embeddings ``E`` (n, D) with a validated human matrix ``H``.

    Parameters
    ----------
    E : array-like of shape (n, D)
    H : ndarray of shape (n, n)
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : str, default="spearman"

    Returns
    -------
    r : float
    """
    return compare_upper(similarity_matrix(E, similarity), H, comparison)


def image_cv(cv, random_state=None):
    """Inner image-wise splitter: an int means ``KFold(cv, shuffle=True, random_state=random_state)``.

    Shuffling matters: image sets are often ordered by category.

    Parameters
    ----------
    cv : None, int, splitter or iterable
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    cv : splitter over images
    """
    cv = check_image_cv(cv, random_state)
    if getattr(cv, "splits_pairs", False):
        raise ValueError(
            f"{type(cv).__name__} splits matrix entries; this estimator's inner cross-validation holds out images "
            "(an int or an image splitter such as KFold)"
        )
    return cv


def split_images(cv, n: int):
    """List of (train, validation) image index arrays of an inner splitter.

    Parameters
    ----------
    cv : splitter
    n : int
        Number of images.

    Returns
    -------
    splits : list of (ndarray, ndarray)
    """
    return check_splits(cv.split(np.zeros((n, 1))), n)


def standardization(E) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of embeddings ``E`` (n, D).

    A feature whose standard deviation is below 1e-12 of the largest
    magnitude (constant up to round-off) keeps scale 1, as scikit-learn's
    ``StandardScaler`` does for zero variance: it is centred, not blown up.

    Parameters
    ----------
    E : ndarray of shape (n_images, n_features)
        Training embeddings.

    Returns
    -------
    mean, scale : ndarray of shape (n_features,)
    """
    sd = E.std(axis=0)
    return E.mean(axis=0), np.where(sd > 1e-12 * max(1.0, float(np.abs(E).max())), sd, 1.0)


class SimilarityAligner(SimilarityTargetMixin, TransformerMixin, BaseEstimator):
    """Base of the alignment estimators: learned from human similarity, scored by the 2OI of what they predict.

    Subclasses implement ``fit`` and :meth:`predict_similarity`; they share the
    tags (``y`` is required and is a matrix, not one output per image) and
    :meth:`score`.
    """

    def predict_similarity(self, X) -> np.ndarray:  # pragma: no cover - abstract
        """The model similarity matrix (n_images, n_images) of ``X`` after alignment.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
            Any images (the training ones or new ones) with the training features.

        Returns
        -------
        S : ndarray of shape (n_images, n_images)
        """
        raise NotImplementedError

    def score(self, X, y, sample_weight=None):
        """Held-out 2OI: correlation of the predicted and human upper triangles.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features) or FeatureMaps
        y : array-like of shape (n_images, n_images), or triplets
            Human similarity matrix (or a labelled DataFrame); or odd-one-out
            triplets (an (N, 3) table, odd one out last, or
            :class:`~sklearn_ais.model_selection.Triplets`), scored by the
            odd-one-out accuracy of the predicted similarities (ties wrong).
        sample_weight : None
            Accepted for scikit-learn's scoring; the samples are pairs, so
            anything but None is an error.

        Returns
        -------
        score : float
        """
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported: the samples of a similarity analysis are pairs")
        S = self.predict_similarity(X)
        if is_triplet_target(y, S.shape[0]):  # odd-one-out choices: the accuracy of the predicted similarities
            T = check_triplet_target(y, S.shape[0], ids=sample_ids(X)).indices
            a, b, o = T.T
            return float(triplet_scores(np.stack([S[a, b], S[a, o], S[b, o]], axis=1)[None], "odd_one_out")[0])
        H = check_similarity_target(y, S.shape[0], self.y_kind, ids=sample_ids(X), constant="warn")
        return compare_upper(S, H, self.comparison)
