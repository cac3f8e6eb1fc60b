"""Other ways to align a network with human similarity, as estimators of one shape.

Every estimator here takes ``X`` = a 2-D embedding matrix (n_images,
n_features) or :class:`~sklearn_ais.FeatureMaps` (embedded through their
head) and ``y`` = the n x n human similarity matrix, and its ``score(X, y)``
is the held-out second-order isomorphism (2OI), so that one
``GridSearchCV`` or one table (:func:`compare_alignment`) compares them with
:class:`~sklearn_ais.AISSelector`.

Estimators
----------
FeatureReweighting
    One weight per feature, fitted on the products of embedding pairs
    (Peterson et al., 2018; Kaniuth & Hebart, 2022).
GLocalAligner
    Affine transform fitted to odd-one-out triplets with a local
    neighbourhood term (gLocal; Muttenthaler et al., 2023).

Unit pruning (Tarigopula et al., 2023)
--------------------------------------
``AISSelector().fit(feature_maps.embed(), y)`` prunes penultimate units;
:func:`classification_agreement` and :func:`occlusion_heatmaps` are the
paper's companion analyses.

Comparison
----------
:func:`compare_alignment`, :func:`summarize_comparison`; the figure is
:func:`sklearn_ais.plotting.plot_comparison` (also importable from here).

Harmonization training
----------------------
:class:`Harmonizer` fine-tunes a network with :func:`harmonization_loss`
(Fel et al., 2022) so that its gradient saliency matches target maps (human
maps, object masks or AIS heatmaps).

Maps
----
:func:`feature_alignment_score` (also in :mod:`sklearn_ais.metrics`): the
harmonization feature-alignment score (Fel et al., 2022).
"""

import importlib

_LAZY = {
    "FeatureReweighting": "._reweighting",
    "pair_design": "._reweighting",
    "GLocalAligner": "._glocal",
    "glocal_loss": "._glocal",
    "odd_one_out_accuracy": "._glocal",
    "triplets_from_similarity": "._glocal",
    "classification_agreement": "._pruning",
    "occlusion_heatmaps": "._pruning",
    "penultimate_classifier": "._pruning",
    "METHODS": "._compare",
    "AlignmentComparison": "._compare",
    "compare_alignment": "._compare",
    "make_method": "._compare",
    "plot_comparison": "..plotting",
    "feature_maps_of": "._compare",
    "summarize_comparison": "._compare",
    "feature_alignment_score": ".._feature_alignment",
    "split_half_map_ceiling": ".._feature_alignment",
    "Harmonizer": "._harmonization",
    "prepare_target_maps": "._harmonization",
    "harmonization_loss": "._harmonization_loss",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'sklearn_ais.alignment' has no attribute {name!r}")


def __dir__():
    return __all__
