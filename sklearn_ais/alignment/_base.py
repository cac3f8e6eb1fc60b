"""Shared helpers of the alignment estimators: inputs, targets, 2OI."""

from __future__ import annotations

import numpy as np
from .._similarity import correlation, similarity_matrix, upper_triangle
from .._validation import MIN_IMAGES, check_feature_maps, check_image_cv, is_feature_maps, validate_maps_input



def as_embeddings(estimator, X, *, reset: bool, min_samples: int = MIN_IMAGES) -> np.ndarray:
    """Embeddings (n, D) float64 of ``X``: FeatureMaps through their head, or a 2-D array.

    With ``reset=True`` sets ``estimator.n_features_in_`` to the embedding
    dimension ``D`` (for FeatureMaps: the head's output size, which equals the
    number of maps for pooling heads); otherwise checks it. ``min_samples``:
    fewest images accepted (a similarity analysis needs 4; a transform 1).
    """
    if is_feature_maps(X):
        check_feature_maps(X, min_samples)
        E = np.asarray(X.embed(), dtype=np.float64)
        if reset:
            estimator.n_features_in_ = E.shape[1]
            if hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
        elif E.shape[1] != getattr(estimator, "n_features_in_", E.shape[1]):
            raise ValueError(
                f"X embeds to {E.shape[1]} features, but {type(estimator).__name__} was fitted with "
                f"{estimator.n_features_in_}"
            )
        return E
    return validate_maps_input(estimator, X, reset=reset, min_images=min_samples)


def compare_upper(model_similarity, H, comparison: str = "spearman") -> float:
    """Correlation of the upper triangles of a model similarity matrix and a human one (NaN ignored)."""
    return correlation(upper_triangle(np.asarray(model_similarity, dtype=np.float64)), upper_triangle(H), comparison)


def embedding_2oi(E, H, similarity: str = "pearson", comparison: str = "spearman") -> float:
    """2OI of embeddings ``E`` (n, D) with a validated human matrix ``H``."""
    return compare_upper(similarity_matrix(E, similarity), H, comparison)


def image_cv(cv, random_state=None):
    """Inner image-wise splitter: an int means ``KFold(cv, shuffle=True, random_state=random_state)``.

    Shuffling matters: image sets are often ordered by category.
    """
    cv = check_image_cv(cv, random_state)
    if getattr(cv, "splits_pairs", False):
        raise ValueError(
            f"{type(cv).__name__} splits matrix entries; this estimator's inner cross-validation holds out images "
            "(an int or an image splitter such as KFold)"
        )
    return cv


def split_images(cv, n: int):
    """List of (train, validation) image index arrays of an inner splitter."""
    return [(np.asarray(tr), np.asarray(va)) for tr, va in cv.split(np.zeros((n, 1)))]


class torch_threads:
    """Context manager: run small torch problems on ``n`` threads, then restore.

    Many tiny kernels (an n x n similarity matrix, a few thousand triplets)
    run faster on one thread than on several competing ones.
    """

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self._old = torch.get_num_threads()
        if self.n is not None and self.n != self._old:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        if torch.get_num_threads() != self._old:
            torch.set_num_threads(self._old)
        return False
