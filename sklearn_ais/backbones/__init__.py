"""Backbones: which layer is "the last convolutional layer", preprocessing, and heads.

See :func:`get_backbone` and :func:`list_backbones`.
"""

from ._heads import Head, MLPHead, ModuleHead, PoolingHead, identity_head
from ._registry import Backbone, get_backbone, list_backbones, load_weights

__all__ = [
    "Backbone",
    "Head",
    "MLPHead",
    "ModuleHead",
    "PoolingHead",
    "get_backbone",
    "identity_head",
    "list_backbones",
    "load_weights",
]
