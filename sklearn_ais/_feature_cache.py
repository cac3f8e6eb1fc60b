"""On-disk cache of feature maps for :class:`~sklearn_ais.DNNFeatureMapTransformer` (``memory=``).

Layout: ``<folder>/sklearn_ais_feature_maps/<key>/`` holds ``config.json``
(what the key was computed from, for people) and one ``<image>.npy`` per
image, named by the SHA-256 of the image's preprocessed pixels.

* **Key.** The SHA-256 of a JSON description of everything that determines
  the maps: the module's structure (class, ``extra_repr`` and plain
  attributes of every submodule, and the bytecode of classes defined outside
  torch/torchvision/timm), the content of every parameter and buffer, the
  layer, the head, the preprocessing and the versions of Python, torch,
  torchvision, timm and sklearn_ais. It is recomputed whenever the model's
  structure or tensors change (checked cheaply before every ``transform``).
* **Safe to read.** Files are read with ``np.load(..., allow_pickle=False)``:
  a cache folder never runs code (no pickles, unlike ``joblib.Memory``). A
  file that does not load as a float32 array of the expected number of maps
  (corrupt, truncated, tampered with) is recomputed and replaced.
* **Safe to write concurrently.** Each file is written to a temporary file
  in the same folder and moved into place with ``os.replace`` (atomic), so
  threads and processes sharing a folder never read a half-written file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones._weights import tensors_sha256

FORMAT = "sklearn_ais-feature-maps/1"
SUBFOLDER = "sklearn_ais_feature_maps"
_LIBRARY_ROOTS = ("torch", "torchvision", "timm")


def library_versions() -> dict:
    """Versions of Python and of the libraries that compute the maps.

    Returns
    -------
    versions : dict of str to str
    """
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "pillow", "sklearn-ais"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    from . import __version__

    out["sklearn-ais"] = out["sklearn-ais"] or __version__
    return out


def cache_folder(memory) -> Path | None:
    """The folder a ``memory=`` value designates.

    Parameters
    ----------
    memory : None, str, os.PathLike or joblib.Memory
        A ``joblib.Memory`` is used for its ``location`` only (``None`` when
        it caches nothing); its pickle-based caching is never used.

    Returns
    -------
    folder : Path or None
    """
    if memory is None:
        return None
    if isinstance(memory, (str, os.PathLike)):
        return Path(memory)
    location = getattr(memory, "location", None)
    return None if location is None else Path(location)


# -- what the key is made of ---------------------------------------------------
def _plain(value, depth: int = 0):
    """A JSON-able canonical form of an attribute value, or None for values that are not data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(value).detach().cpu()
        return {"tensor": tensors_sha256({"": t})}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return None


def _attributes(module: nn.Module) -> dict:
    """Public attributes that hold data (hyperparameters: kernel sizes, flags, plain tensors...)."""
    return {k: p for k, v in sorted(vars(module).items())
            if not k.startswith("_") and k != "training" and (p := _plain(v)) is not None}


def _is_library(cls: type) -> bool:
    return cls.__module__.split(".")[0] in _LIBRARY_ROOTS


def _code_digest(code: types.CodeType, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        elif isinstance(const, frozenset):  # `x in {"a", "b"}`: its repr's order varies with the hash seed
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())


def _class_code(cls: type) -> str | None:
    """SHA-256 of the bytecode of the functions of a user-defined class (and its user-defined bases)."""
    if _is_library(cls):
        return None
    h = hashlib.sha256()
    for klass in cls.__mro__:
        if klass is object or _is_library(klass):
            continue
        h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        for name, member in sorted(vars(klass).items()):
            fn = getattr(member, "__func__", member)
            if isinstance(fn, types.FunctionType):
                h.update(name.encode())
                _code_digest(fn.__code__, h)
    return h.hexdigest()


def structure(model: nn.Module, user_attributes: bool = True) -> list:
    """Every submodule as ``[name, class, extra_repr, attributes, code digest]``.

    Parameters
    ----------
    model : nn.Module
    user_attributes : bool, default=True
        Include the attributes of modules of user-defined classes (they may
        also hold run-time state, such as a call counter, which the cheap
        :func:`fingerprint` leaves out).

    Returns
    -------
    description : list of list
        JSON-able. Parameter-free layers (ReLU -> Tanh), hyperparameters
        (negative slopes, strides, ``transform_input``) and the code of
        user-defined classes all change it.
    """
    return [
        [name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr(),
         _attributes(m) if user_attributes or _is_library(type(m)) else None, _class_code(type(m))]
        for name, m in model.named_modules()
    ]


def fingerprint(model: nn.Module) -> tuple:
    """A cheap identity of the model's current state: its structure and which tensors it holds, in which version.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    fingerprint : tuple
        Changes when a module is replaced or reconfigured, or a parameter or
        buffer is replaced or modified in place (a tensor's version counter
        moves on every in-place operation). Attributes of user-defined
        modules are left out (they are part of the key when it is computed).
    """
    tensors = []
    for name, t in model.state_dict(keep_vars=True).items():
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter
            version = None
        tensors.append((name, id(t), t.data_ptr(), version))
    return json.dumps(structure(model, user_attributes=False), sort_keys=True), tuple(tensors)


def cache_config(backbone) -> dict:
    """Everything that determines a backbone's feature maps, as a JSON-able dict.

    Parameters
    ----------
    backbone : Backbone
        Its model, layer, head and preprocessing are read.

    Returns
    -------
    config : dict
        What the cache key hashes. Hashes the model's tensors (about 0.4 s for VGG16).
    """
    p = backbone.preprocessing
    return {
        "format": FORMAT,
        "structure": hashlib.sha256(json.dumps(structure(backbone.model), sort_keys=True).encode()).hexdigest(),
        "weights": tensors_sha256(backbone.model.state_dict()),
        "layer": backbone.layer,
        "head": repr(backbone.head),
        "preprocessing": {"input_size": list(p.input_size), "resize_size": p.resize_size, "crop": p.crop,
                          "interpolation": p.interpolation, "mean": list(p.mean), "std": list(p.std)},
        "dtype": "float32",
        "versions": library_versions(),
    }


def config_key(config: dict) -> str:
    """SHA-256 (hex) of a configuration's canonical JSON.

    Parameters
    ----------
    config : dict
        JSON-serialisable description of what determines the maps.

    Returns
    -------
    key : str
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# -- files -------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in its folder and ``os.replace`` (readers never see a partial file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class FeatureCache:
    """The cached maps of one configuration (see the module docs).

    Parameters
    ----------
    folder : path
        The ``memory`` folder.
    config : dict
        From :func:`cache_config`.
    """

    def __init__(self, folder, config: dict):
        self.config = config
        self.key = config_key(config)
        self.path = Path(folder) / SUBFOLDER / self.key
        self._ready = False

    @staticmethod
    def image_key(pixels: np.ndarray) -> str:
        """SHA-256 of one preprocessed image (its shape, dtype and bytes).

        Parameters
        ----------
        pixels : ndarray
            One preprocessed image, (3, H, W) float32.

        Returns
        -------
        key : str
        """
        pixels = np.ascontiguousarray(pixels)
        h = hashlib.sha256(f"{pixels.dtype}:{pixels.shape};".encode())
        h.update(pixels.data)
        return h.hexdigest()

    def load(self, key: str, shape: tuple) -> np.ndarray | None:
        """The cached maps of an image, or None when absent or unreadable (then recomputed).

        Parameters
        ----------
        key : str
            From :meth:`image_key`.
        shape : tuple
            Expected ``(n_maps, h, w)``; ``None`` for a size not known in advance.

        Returns
        -------
        maps : ndarray of shape (n_maps, h, w), float32, or None
        """
        try:
            maps = np.load(self.path / f"{key}.npy", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):  # truncated, not an .npy file, or an object (pickle) array
            return None
        if maps.dtype != np.float32 or maps.ndim != 3 or any(e is not None and e != s for e, s in zip(shape, maps.shape)):
            return None
        return maps

    def save(self, key: str, maps: np.ndarray) -> None:
        """Store the maps of an image (atomically).

        Parameters
        ----------
        key : str
        maps : ndarray of shape (n_maps, h, w), float32
        """
        if not self._ready:
            self.path.mkdir(parents=True, exist_ok=True)
            config = self.path / "config.json"
            if not config.exists():
                text = json.dumps(self.config, sort_keys=True, indent=1).encode()
                _atomic_write(config, lambda f: f.write(text))
            self._ready = True
        maps = np.ascontiguousarray(maps, dtype=np.float32)
        _atomic_write(self.path / f"{key}.npy", lambda f: np.save(f, maps, allow_pickle=False))
