"""One method fitted on a fold's training images and scored on its test images: what every comparison row holds.

Used by :func:`~sklearn_ais.alignment.compare_alignment` (one row per backbone, fold and method) and by its
bootstrap (:mod:`sklearn_ais.alignment._bootstrap`), so that both score a model the same way.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone

from .._containers import FeatureMaps
from .._pairs import fold_parts, held_out_is_undefined
from .._targets import sample_ids, similarity_frame
from ._base import embedding_2oi

__all__ = ["defined_target", "embed", "fold_scores", "n_kept"]


def defined_target(S) -> bool:
    """Whether a human matrix can be correlated with: 3 observed pairs, not all equal."""
    u = S[np.triu_indices(S.shape[0], 1)]
    u = u[~np.isnan(u)]
    return bool(len(u) >= 3 and np.ptp(u) > 0)


def _subject_mean(score, subjects, test):
    """Mean over subjects of ``score`` on their test matrices (subjects with an undefined one left out)."""
    parts = [S[np.ix_(test, test)] for S in subjects]
    values = [score(S) for S in parts if defined_target(S)]
    return float(np.mean(values)) if values else np.nan


def n_kept(est, n_maps) -> int:
    """Maps (or units) a fitted method keeps (all of them for ``None``)."""
    est = getattr(est, "best_estimator_", est)
    if est is None:
        return int(n_maps)
    if hasattr(est, "get_support"):
        return int(np.sum(est.get_support()))
    if hasattr(est, "n_kept_"):
        return int(est.n_kept_)
    return int(getattr(est, "n_features_in_", n_maps))


def _as_similarity_estimator(est):
    est = clone(est)
    if "y_kind" in est.get_params():
        est.set_params(y_kind="similarity")  # targets are validated (and flipped) once, up front
    elif any(k.endswith("__y_kind") for k in est.get_params()):
        est.set_params(**{k: "similarity" for k in est.get_params() if k.endswith("__y_kind")})
    return est


def embed(X):
    """The embedding of maps (through their head) or of a 2-D array (as float64)."""
    return X.embed() if isinstance(X, FeatureMaps) else np.asarray(X, dtype=np.float64)


def _fit_and_score(X, H, train_idx, test_idx, template, similarity, comparison, subjects=None) -> dict:
    """Held-out and training 2OI of one method on one fold (``template`` None: all maps, nothing fitted).

    With ``subjects`` (n_subjects, n, n), also ``test_2oi_subjects``: the mean over subjects of the held-out 2OI
    against each subject's matrix on the test images (the scale of the noise ceiling; Schütt et al., 2023).
    """
    X_tr, X_te, H_tr, H_te = fold_parts(X, H, train_idx, test_idx, by_pairs=False)
    undefined = held_out_is_undefined(H, test_idx, by_pairs=False)  # NaN, named once the table is built
    if template is None:
        E_te = embed(X_te)
        record = {
            "test_2oi": np.nan if undefined else embedding_2oi(E_te, H_te, similarity, comparison),
            "train_2oi": embedding_2oi(embed(X_tr), H_tr, similarity, comparison),
            "n_kept": n_kept(None, X.shape[1]),
            "fit_time": 0.0,
        }
        score = lambda S: embedding_2oi(E_te, S, similarity, comparison)  # noqa: E731
    else:
        est = _as_similarity_estimator(template)
        t0 = time.perf_counter()
        est.fit(X_tr, similarity_frame(H_tr, ids=sample_ids(X_tr)))
        fit_time = time.perf_counter() - t0
        record = {
            "test_2oi": np.nan if undefined else float(est.score(X_te, H_te)),
            "train_2oi": float(est.score(X_tr, H_tr)),
            "n_kept": n_kept(est, X.shape[1]),
            "fit_time": fit_time,
        }
        score = lambda S: float(est.score(X_te, S))  # noqa: E731
    if subjects is not None:
        record["test_2oi_subjects"] = _subject_mean(score, subjects, np.asarray(test_idx))
    return record


def fold_scores(X, H, folds, template, similarity, comparison, subjects=None) -> list[float]:
    """Held-out 2OI of one method on every fold (with ``subjects``, the mean over subjects of each fold's).

    The same values as :func:`_fit_and_score` fold by fold; an :class:`~sklearn_ais.AISSelector` takes its
    documented fast path (``fold_results``: its kernels prepared once for all folds).
    """
    from ..model_selection import _has_fast_path

    key = "test_2oi" if subjects is None else "test_2oi_subjects"
    if template is None or not _has_fast_path(template) or not folds:
        return [_fit_and_score(X, H, tr, te, template, similarity, comparison, subjects=subjects)[key]
                for tr, te in folds]
    est = clone(template).set_params(y_kind="similarity")
    records = est.fold_results(X, H, folds, return_estimators=subjects is not None)
    if subjects is None:
        return [float(r["test_score_selected"]) for r in records]
    out = []
    for (_, te), r in zip(folds, records):
        X_te = X[np.asarray(te)]
        out.append(_subject_mean(lambda S: float(r["estimator"].score(X_te, S)), subjects, np.asarray(te)))
    return out
