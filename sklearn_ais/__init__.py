"""sklearn_ais: Alignment Importance Scores for CNNs and human similarity judgments.

Which feature maps of a network's last convolutional layer carry the
information people use when they judge two images similar, and where is
that information in each image?

Main entry points
-----------------
DNNFeatureMapTransformer
    Images -> last-conv feature maps + the network's head (:class:`FeatureMaps`).
AISSelector, AISSelectorCV
    Alignment importance of every map, ranked selection (the number of maps
    chosen on the training data, or by cross-validation), held-out scoring.
AISHeatmapper
    Per-image alignment importance and heatmaps.

Submodules: ``alignment`` (neighbouring methods), ``attention`` (gradient
baselines), ``backbones``, ``datasets``, ``evaluation`` (deletion tests, pair heatmaps, WordNet),
``metrics``, ``model_selection``,
``plotting``.
"""

import importlib

__version__ = "0.1.0"

# Public names resolved lazily so that ``import sklearn_ais`` stays light and
# each submodule is imported only when used.
_LAZY = {
    "DNNFeatureMapTransformer": "._feature_maps",
    "FeatureMaps": "._containers",
    "AISSelector": "._selector",
    "AISSelectorCV": "._selector",
    "AISHeatmapper": "._heatmaps",
}
_SUBMODULES = {
    "alignment", "attention", "backbones", "cli", "datasets", "evaluation", "metrics", "model_selection", "plotting",
    "workflow",
}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sklearn_ais' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
