"""Backbones: which layer is "the last convolutional layer", preprocessing, and heads.

See :func:`get_backbone` and :func:`list_backbones`. The heads are light;
the registry (which imports torchvision and timm) loads on first use.
"""

import importlib

from ._heads import Head, MLPHead, ModuleHead, PoolingHead

_REGISTRY_NAMES = ("Backbone", "get_backbone", "list_backbones", "load_weights")

__all__ = sorted(["Head", "MLPHead", "ModuleHead", "PoolingHead", *_REGISTRY_NAMES])


def __getattr__(name):
    if name in _REGISTRY_NAMES:
        return getattr(importlib.import_module("._registry", __name__), name)
    raise AttributeError(f"module 'sklearn_ais.backbones' has no attribute {name!r}")
