"""Which layer: the layer chosen on held-out judgments (:class:`LayerSelector`, :func:`cross_validate_layers`).

:class:`LayerSelector` is a meta-estimator over the layers of one network
(a :class:`~sklearn_ais.LayerFeatureMaps`): for every layer it
cross-validates a selector (by default :class:`~sklearn_ais.AISSelector`) on
the training images only, chooses the layer with the best mean held-out 2OI
of the selected maps, and refits the selector there.
:func:`cross_validate_layers` nests it: outer folds hold images out of the
whole choice, so their scores say how well "choose the layer, then choose
its maps" generalises, and which layer each outer fold chose.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from ._containers import FeatureMaps, LayerFeatureMaps
from ._selector import AISSelector
from ._sklearn_compat import HasMethods, StrOptions
from ._stats import paired_test
from ._targets import SimilarityTargetMixin, check_similarity_target
from ._validation import check_image_cv

__all__ = ["LayerSelector", "cross_validate_layers"]


def _as_layers(X) -> LayerFeatureMaps:
    if isinstance(X, LayerFeatureMaps):
        return X
    if isinstance(X, dict):
        return LayerFeatureMaps(X)
    raise TypeError(f"X must be a LayerFeatureMaps (a dict of layer -> FeatureMaps), got {type(X).__name__}")


def _held_out(estimator, X, H, splits) -> np.ndarray:
    """Held-out 2OI of ``estimator``'s selection on each split (the selector's shared-kernel fast path when it has one)."""
    if isinstance(estimator, AISSelector) and hasattr(estimator, "fold_results"):
        est = clone(estimator).set_params(y_kind="similarity")
        return np.array([r["test_score_selected"] for r in est.fold_results(X, H, splits)], dtype=float)
    out = []
    for train, test in splits:
        est = clone(estimator)
        if "y_kind" in est.get_params():
            est.set_params(y_kind="similarity")
        est.fit(X[train], H[np.ix_(train, train)])
        out.append(est.score(X[test], H[np.ix_(test, test)]))
    return np.asarray(out, dtype=float)


class LayerSelector(SimilarityTargetMixin, BaseEstimator):
    """Choose the layer whose selected maps align best on held-out images, then select its maps.

    Parameters
    ----------
    estimator : estimator, default=None
        Fitted per layer on (maps, similarity matrix) and scored by its
        ``score`` (held-out 2OI). None: ``AISSelector()``.
    cv : int, splitter over images or iterable, default=5
        Inner folds over the training images (an int: shuffled ``KFold``).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    random_state : int, RandomState instance or None, default=0
        Seeds the folds of an int ``cv``.

    Attributes
    ----------
    layers_ : list of str
    cv_scores_ : DataFrame
        Held-out 2OI per layer (rows) and inner split (columns), with ``mean``.
    best_layer_ : str
        The layer with the best mean held-out 2OI (the first on ties).
    best_estimator_ : estimator
        ``estimator`` refitted on every image at ``best_layer_``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import FeatureMaps, LayerFeatureMaps, LayerSelector
    >>> from sklearn_ais.backbones import PoolingHead
    >>> rng = np.random.default_rng(0)
    >>> noise, signal = rng.random((2, 30, 8, 2, 2)).astype(np.float32)
    >>> H = np.corrcoef(signal[:, :3].mean(axis=(2, 3)))
    >>> X = LayerFeatureMaps({"noise": FeatureMaps(noise, PoolingHead()), "signal": FeatureMaps(signal, PoolingHead())})
    >>> LayerSelector(cv=3).fit(X, H).best_layer_
    'signal'
    """

    _parameter_constraints: dict = {
        "estimator": [None, HasMethods(["fit", "score"])],
        "cv": ["cv_object"],
        "y_kind": [StrOptions({"similarity", "dissimilarity"})],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, cv=5, y_kind="similarity", random_state=0):
        self.estimator = estimator
        self.cv = cv
        self.y_kind = y_kind
        self.random_state = random_state

    def fit(self, X, y):
        """Cross-validate the estimator at every layer, choose the best, refit it there.

        Parameters
        ----------
        X : LayerFeatureMaps
        y : array-like of shape (n_images, n_images)

        Returns
        -------
        self : LayerSelector
        """
        self._validate_params()
        X = _as_layers(X)
        H = check_similarity_target(y, X.n_images, self.y_kind, ids=next(iter(X.values())).ids)
        cv = check_image_cv(self.cv, self.random_state)
        splits = [(np.asarray(a), np.asarray(b)) for a, b in cv.split(np.arange(X.n_images))]
        template = AISSelector() if self.estimator is None else self.estimator
        scores = {layer: _held_out(template, fm, H, splits) for layer, fm in X.items()}
        table = pd.DataFrame(scores).T
        table.columns = [f"split{i}" for i in range(len(splits))]
        table["mean"] = table.mean(axis=1)
        self.layers_ = X.layers
        self.cv_scores_ = table
        means = table["mean"].to_numpy()
        if np.all(np.isnan(means)):
            raise ValueError("the held-out 2OI is undefined at every layer (constant model similarities)")
        self.best_layer_ = self.layers_[int(np.nanargmax(means))]
        est = clone(template)
        if "y_kind" in est.get_params():
            est.set_params(y_kind="similarity")
        self.best_estimator_ = est.fit(X[self.best_layer_], H)
        return self

    def score(self, X, y):
        """Held-out 2OI of the selection at the chosen layer.

        Parameters
        ----------
        X : LayerFeatureMaps or FeatureMaps
            A FeatureMaps is taken to be of ``best_layer_``.
        y : array-like of shape (n_images, n_images)

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        fm = X if isinstance(X, FeatureMaps) else _as_layers(X)[self.best_layer_]
        H = check_similarity_target(y, len(fm), self.y_kind, ids=fm.ids)
        return float(self.best_estimator_.score(fm, H))


def cross_validate_layers(X, y, *, estimator=None, cv=5, inner_cv=5, y_kind="similarity", random_state=0,
                          test="corrected_t", n_permutations=0):
    """Nested cross-validation of the layer choice: inner folds choose the layer, outer folds score it.

    Parameters
    ----------
    X : LayerFeatureMaps
    y : array-like of shape (n_images, n_images)
    estimator : estimator, default=None
        The selector fitted per layer (default ``AISSelector()``).
    cv, inner_cv : int, splitter over images or iterable, default=5
        Outer and inner folds (an int: shuffled ``KFold``).
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    random_state : int, default=0
        Seeds the outer folds (and, plus one, the inner ones) and the permutations.
    test : {"corrected_t", "paired_t", "wilcoxon"}, default="corrected_t"
        Paired test over outer folds of the selected maps against all maps of the chosen layer.
    n_permutations : int, default=0
        When > 0, the whole nested procedure is rerun with the images' human
        judgments permuted, and ``p_value`` is the share of permutations whose
        mean held-out 2OI reaches the observed one (with the usual +1).

    Returns
    -------
    result : dict
        ``table`` (one row per outer fold: ``fold``, ``layer`` chosen,
        ``test_score_selected``, ``test_score_full``, ``n_selected`` and the
        inner mean score of every layer), ``chosen`` (layer -> number of
        outer folds), ``test`` (the paired test), ``p_value`` (or None).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import FeatureMaps, LayerFeatureMaps
    >>> from sklearn_ais._layer_selector import cross_validate_layers
    >>> from sklearn_ais.backbones import PoolingHead
    >>> rng = np.random.default_rng(0)
    >>> noise, signal = rng.random((2, 40, 8, 2, 2)).astype(np.float32)
    >>> H = np.corrcoef(signal[:, :3].mean(axis=(2, 3)))
    >>> X = LayerFeatureMaps({"noise": FeatureMaps(noise, PoolingHead()), "signal": FeatureMaps(signal, PoolingHead())})
    >>> cross_validate_layers(X, H, cv=3, inner_cv=3)["chosen"]
    {'signal': 3}
    """
    X = _as_layers(X)
    if not isinstance(n_permutations, Integral) or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative int, got {n_permutations!r}")
    n = X.n_images
    H = check_similarity_target(y, n, y_kind, ids=next(iter(X.values())).ids)
    outer = check_image_cv(cv, random_state)
    splits = [(np.asarray(a), np.asarray(b)) for a, b in outer.split(np.arange(n))]
    inner_seed = None if random_state is None else int(random_state) + 1

    def run(Hp):
        rows = []
        for fold, (train, test_idx) in enumerate(splits):
            sel = LayerSelector(estimator, cv=inner_cv, random_state=inner_seed)
            sel.fit(X.subset(train), Hp[np.ix_(train, train)])
            fm_test, H_test = X[sel.best_layer_][test_idx], Hp[np.ix_(test_idx, test_idx)]
            best = sel.best_estimator_
            full = best.score_all(fm_test, H_test) if hasattr(best, "score_all") else np.nan
            row = {"fold": fold, "layer": sel.best_layer_, "n_train": len(train), "n_test": len(test_idx),
                   "test_score_selected": float(best.score(fm_test, H_test)), "test_score_full": float(full),
                   "n_selected": int(np.sum(best.get_support())) if hasattr(best, "get_support") else None}
            row.update({f"inner_{layer}": float(v) for layer, v in sel.cv_scores_["mean"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    table = run(H)
    ratio = (table["n_test"] / table["n_train"]).to_numpy()
    result = paired_test(table["test_score_selected"], table["test_score_full"], test=test, test_train_ratio=ratio)
    p_value = None
    if n_permutations:
        rng = np.random.default_rng(random_state)
        observed = table["test_score_selected"].mean()
        null = [run(H[np.ix_(p, p)])["test_score_selected"].mean()
                for p in (rng.permutation(n) for _ in range(n_permutations))]
        p_value = (1 + np.sum(np.asarray(null) >= observed)) / (1 + n_permutations)
    chosen = {layer: int(c) for layer, c in table["layer"].value_counts(sort=False).items()}
    return {"table": table, "chosen": chosen, "test": result, "p_value": p_value}
