"""Weights: reading local state dicts safely, loading them strictly, and saying where they came from.

:class:`WeightsSource` is the structured record of a backbone's weights (a
file and the SHA-256 of its content, a package and its version, torchvision
weights, random initialisation, ...). The transformer reports it in its
``provenance_`` and the feature-map cache keys on the weights' content.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

_DEFAULT_ALIASES = ("default", "imagenet")

# kind -> (description for reports, short label of Backbone.weights)
_TEXTS = {
    "file": ("file {path}", "file:{path}"),
    "package": ("package {name} {version}", "{module} (ImageNet-1k)"),
    "torchvision": ("torchvision {name}", "torchvision:{name}"),
    "random": ("random, seed {seed}", "random"),
    "state dict": ("state dict (in memory)", "state dict"),
    "module": ("module parameters", "custom"),
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from.

    Parameters
    ----------
    kind : {"file", "package", "torchvision", "random", "state dict", "module"}
        A local file, an installed weights package, torchvision's published
        weights, random initialisation, a state dict given in memory, or the
        parameters a module already had.
    path : str, optional
        Absolute path of the file read (``"file"``, ``"package"``).
    sha256 : str, optional
        SHA-256 of the file's bytes (``"file"``, ``"package"``), or of the
        tensors' names, dtypes, shapes and bytes (``"state dict"``).
    name : str, optional
        Package name (``"package"``) or torchvision weights
        (``"torchvision"``, e.g. ``"ResNet50_Weights.IMAGENET1K_V2"``).
    version : str, optional
        Installed version of the package.
    seed : int, optional
        Seed of a random initialisation (set by the transformer's
        ``random_state``).
    """

    kind: str
    path: str | None = None
    sha256: str | None = None
    name: str | None = None
    version: str | None = None
    seed: int | None = None

    @property
    def description(self) -> str:
        """One line for reports: ``"file PATH"``, ``"package NAME VERSION"``, ``"torchvision NAME"``,
        ``"random, seed N"``, ``"state dict (in memory)"`` or ``"module parameters"``."""
        if self.kind == "random" and self.seed is None:
            return "random (unseeded)"
        return _TEXTS.get(self.kind, _TEXTS["module"])[0].format(**asdict(self))

    @property
    def label(self) -> str:
        """The short string of :attr:`Backbone.weights` (``"random"``, ``"file:PATH"``, ...)."""
        fields = {**asdict(self), "module": (self.name or "").replace("-", "_")}
        return _TEXTS.get(self.kind, _TEXTS["module"])[1].format(**fields)

    def to_dict(self) -> dict:
        """The fields as a JSON-serialisable dict (with ``description``)."""
        return {**asdict(self), "description": self.description}


def is_default_alias(weights) -> bool:
    """True for ``"DEFAULT"`` / ``"imagenet"`` (any case).

    Parameters
    ----------
    weights : object
        A ``weights=`` argument (string, enum, path, state dict, None).

    Returns
    -------
    bool
    """
    return isinstance(weights, str) and weights.lower() in _DEFAULT_ALIASES


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB blocks.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    digest : str
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state_dict: Mapping) -> str:
    """SHA-256 (hex) of a state dict's names, dtypes, shapes and bytes (in order).

    Parameters
    ----------
    state_dict : mapping of str to Tensor

    Returns
    -------
    digest : str
    """
    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def read_state_dict(path) -> dict:
    """Read a local state dict with ``torch.load(..., weights_only=True)`` or from a ``.safetensors`` file (no code runs).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    state_dict : dict of str to Tensor
        Unwrapped from ``"state_dict"`` / ``"model"``, ``"module."`` prefix stripped.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a PyTorch file, pickled objects other than tensors, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found (no such file): '{path}'. Pass weights='DEFAULT' for the pretrained weights, "
            "None for random initialisation, or the path of a saved state dict "
            "(torch.save(model.state_dict(), path))."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(f"could not read weights file '{path}' as safetensors ({type(exc).__name__}: {exc})") from exc
        return as_state_dict(obj, f"'{path}'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:
            raise ValueError(
                f"refusing to load '{path}': it holds arbitrary pickled objects (e.g. {found.group(1)}), not "
                "only tensors, and torch.load(weights_only=True) will not execute them. Save and pass a state "
                "dict instead: torch.save(model.state_dict(), path)."
            ) from exc
        raise ValueError(
            f"could not read weights file '{path}' as a PyTorch state dict ({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from exc
    return as_state_dict(obj, f"'{path}'")


def as_state_dict(obj, what: str) -> dict:
    """``obj`` as a flat state dict (see :func:`read_state_dict`); ``what`` names it in errors.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned, or a mapping.
    what : str
        How errors name it.

    Returns
    -------
    state_dict : dict of str to Tensor
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{what} is not a state dict (a mapping of parameter names to tensors, possibly under "
            "'state_dict' or 'model'); save one with torch.save(model.state_dict(), path)"
        )
    # Checkpoints of nn.DataParallel / DistributedDataParallel prefix every key.
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def user_weights(weights) -> tuple[dict | None, WeightsSource | None]:
    """Read weights given as ``None``, a path or a state dict.

    Parameters
    ----------
    weights : None, str, os.PathLike or mapping
        A string is a path here (names such as ``"DEFAULT"`` are the
        caller's business).

    Returns
    -------
    state_dict : dict or None
        ``None`` for ``weights=None``.
    source : WeightsSource or None
        ``kind="file"`` (absolute path, SHA-256 of the file) or
        ``kind="state dict"`` (SHA-256 of the tensors); ``None`` for ``None``.

    Raises
    ------
    TypeError
        Any other type.
    FileNotFoundError, ValueError
        See :func:`read_state_dict`.
    """
    if weights is None:
        return None, None
    if isinstance(weights, Mapping):
        state_dict = as_state_dict(weights, "the given mapping")
        return state_dict, WeightsSource("state dict", sha256=tensors_sha256(state_dict))
    if isinstance(weights, (str, os.PathLike)):
        state_dict = read_state_dict(weights)
        path = Path(weights).resolve()
        return state_dict, WeightsSource("file", path=str(path), sha256=file_sha256(path))
    raise TypeError(f"weights must be None, a string, a path or a state dict, got {type(weights).__name__}")


def what_of(source: WeightsSource | None) -> str:
    """How error messages name the weights of ``source``.

    Parameters
    ----------
    source : WeightsSource or None

    Returns
    -------
    name : str
    """
    if source is None:
        return "the weights"
    if source.kind == "file":
        return f"weights file '{source.path}'"
    if source.kind == "package":
        return f"the {source.name} weights"
    if source.kind == "torchvision":
        return f"torchvision weights {source.name}"
    return "the given state dict"


def load_strict(model: nn.Module, state_dict: Mapping, what: str):
    """Load ``state_dict`` into ``model``: every key and shape must match (a few mismatches are listed).

    Parameters
    ----------
    model : nn.Module
    state_dict : mapping of str to Tensor
    what : str
        How errors name the weights.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (file vs model)", shapes),
        ):
            if keys:
                parts.append(f"{len(keys)} {label}, e.g. {keys[:5]}")
        raise ValueError(
            f"{what} does not match the architecture {type(model).__name__}: " + "; ".join(parts)
            + ". Is it a checkpoint of a different architecture? Pass the backbone it was trained as."
        )
    on_meta = any(t.is_meta for t in own.values())
    if on_meta:
        # The model was built without initialising its tensors: adopt the loaded ones.
        state_dict = {k: v.to(own[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise RuntimeError(f"{type(model).__name__} has tensors outside its state dict; cannot load {what}")


def fit_classifiers(model: nn.Module, state_dict: Mapping, names) -> int | None:
    """Resize the final classifier(s) ``names`` of ``model`` to the class count of ``state_dict``.

    A checkpoint trained on another label set (Ecoset's 565 classes, a
    fine-tuned ResNet) differs from the ImageNet architecture only in the
    output size of its last linear layer, which no embedding uses. Each
    ``nn.Linear`` in ``names`` whose weight in ``state_dict`` reads the same
    inputs but has another number of rows is replaced by a fresh layer of
    that size (then loaded strictly with everything else).

    Parameters
    ----------
    model : nn.Module
    state_dict : mapping
    names : sequence of str
        Module names of the final classifiers (e.g. ``("classifier.6",)``).

    Returns
    -------
    n_classes : int or None
        Output size of the first classifier after loading, ``None`` if
        ``names`` is empty or absent from the model.
    """
    n_classes = None
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(old, nn.Linear):
            continue
        w = state_dict.get(f"{name}.weight")
        if w is not None and w.ndim == 2 and w.shape[1] == old.in_features and w.shape[0] != old.out_features:
            new = nn.Linear(old.in_features, w.shape[0], bias=f"{name}.bias" in state_dict,
                            device=old.weight.device, dtype=old.weight.dtype)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            old = new
        if n_classes is None:
            n_classes = old.out_features
    return n_classes


def load_weights(model: nn.Module, weights) -> nn.Module:
    """Load a local state dict into ``model`` (in place, strictly).

    Parameters
    ----------
    model : nn.Module
    weights : str, os.PathLike or mapping
        Path of a file saved with ``torch.save(model.state_dict(), path)``
        (read with ``torch.load(..., weights_only=True)``), or a state dict.
        A dict nested under ``"state_dict"`` or ``"model"`` is unwrapped and a
        ``"module."`` prefix (``DataParallel``) is stripped.

    Returns
    -------
    model : nn.Module

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a state dict, holds arbitrary pickled objects, or its
        keys or shapes do not match ``model`` (a few are listed).

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.backbones import load_weights
    >>> src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> bool(torch.equal(load_weights(dst, src.state_dict()).weight, src.weight))
    True
    """
    state_dict, source = user_weights(weights)
    if state_dict is None:
        raise TypeError("weights must be a path or a state dict, got None")
    load_strict(model, state_dict, what_of(source))
    return model
