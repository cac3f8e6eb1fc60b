"""Backbones: which layer is "the last convolutional layer", preprocessing, and heads.

See :func:`get_backbone` and :func:`list_backbones`. The heads are light;
the registry (which imports torchvision and timm) loads on first use.
"""

import importlib

from ._heads import Head, MLPHead, ModuleHead, PoolingHead
from ._tokens import TokenHead

_LAZY = {
    "Backbone": "._registry",
    "get_backbone": "._registry",
    "list_backbones": "._registry",
    "load_weights": "._weights",
    "WeightsSource": "._weights",
}

__all__ = sorted(["Head", "MLPHead", "ModuleHead", "PoolingHead", "TokenHead", *_LAZY])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'sklearn_ais.backbones' has no attribute {name!r}")
