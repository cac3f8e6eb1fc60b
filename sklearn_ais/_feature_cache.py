"""On-disk cache of feature maps for :class:`~sklearn_ais.DNNFeatureMapTransformer` (``memory=``).

Layout: ``<folder>/sklearn_ais_feature_maps/<key>/`` holds ``config.json``
(what the key was computed from, for people) and one ``<image>.npy`` per
image, named by the SHA-256 of the image's preprocessed pixels.

* **Key.** The SHA-256 of a JSON description of everything that determines
  the maps: the module's structure (class, ``extra_repr`` and plain
  attributes of every submodule, and the bytecode of classes defined outside
  torch/torchvision/timm, with what their functions reach outside torch and
  the standard library: module-level constants, helper functions and their
  own references, user classes, closure cells, defaults, user forward
  hooks), the content of every parameter and buffer, the layer, the head,
  the preprocessing and the versions of Python, torch, torchvision, timm and
  sklearn_ais. It is checked before every ``transform``, on the tensors'
  *values* (an edit through ``.data``, which bumps no version counter, is
  seen). What the key cannot follow (a closure over an arbitrary object, a
  global module instance or C function that ``forward`` calls) is warned
  once: a change to it is not seen, so clear the cache after editing it.
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
import sys
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


def _is_library_module(module) -> bool:
    """Modules whose code the key does not follow: torch & co, the standard library, installed packages."""
    root = (getattr(module, "__name__", "") or "").split(".")[0]
    if root in _LIBRARY_ROOTS or root in sys.stdlib_module_names or root in ("builtins", "numpy", "scipy"):
        return True
    where = getattr(module, "__file__", None) or ""
    return "site-packages" in where or "dist-packages" in where


def _code_names(code: types.CodeType) -> set:
    """Global (and attribute) names a code object and its nested functions refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


# What a key could not follow (closures over objects, C functions, global objects): warned once each.
_INCOMPLETE_WARNED: set = set()


def _function_digest(fn, h, seen: set, incomplete: list) -> None:
    """Bytecode of a user function, and the values of what it reaches outside torch: module-level constants,
    helper functions (recursively), user classes, closure cells and defaults."""
    if id(fn) in seen:
        return
    seen.add(id(fn))
    h.update(f"{fn.__module__}.{fn.__qualname__}".encode())
    _code_digest(fn.__code__, h)
    g = fn.__globals__
    names = sorted(_code_names(fn.__code__))
    for name in names:
        if name in g:
            _value_digest(name, g[name], h, seen, incomplete, names, where=fn.__qualname__)
    for i, cell in enumerate(fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _value_digest(f"<closure {i}>", value, h, seen, incomplete, names, where=fn.__qualname__)
    for i, value in enumerate(fn.__defaults__ or ()):
        _value_digest(f"<default {i}>", value, h, seen, incomplete, names, where=fn.__qualname__)


def _value_digest(name, value, h, seen, incomplete, names, where) -> None:
    h.update(f"|{name}=".encode())
    if isinstance(value, types.ModuleType):
        h.update(value.__name__.encode())
        if not _is_library_module(value) and id(value) not in seen:  # a user's helper module: what is used of it
            seen.add(id(value))
            for attr in names:
                if attr in vars(value):
                    _value_digest(f"{value.__name__}.{attr}", vars(value)[attr], h, seen, incomplete, names, where)
        return
    if isinstance(value, types.FunctionType):
        if _is_library_module(sys.modules.get(value.__module__)):
            h.update(f"{value.__module__}.{value.__qualname__}".encode())
        else:
            _function_digest(value, h, seen, incomplete)
        return
    if isinstance(value, type):
        h.update((_class_code(value, seen, incomplete) or f"{value.__module__}.{value.__qualname__}").encode())
        return
    plain = _plain(value)
    if plain is not None:
        h.update(json.dumps(plain, sort_keys=True).encode())
        return
    if isinstance(value, (types.BuiltinFunctionType, types.MethodWrapperType)) or (
            isinstance(getattr(value, "__module__", None), str)
            and _is_library_module(sys.modules.get(value.__module__.split(".")[0]))):
        h.update(repr(getattr(value, "__qualname__", type(value).__qualname__)).encode())
        return
    if isinstance(value, nn.Module) or callable(value) or hasattr(value, "__dict__"):
        incomplete.append(f"{name} ({type(value).__qualname__}) reached from {where}")


def _class_code(cls: type, seen=None, incomplete=None) -> str | None:
    """SHA-256 of the bytecode of the functions of a user-defined class (and its user-defined bases), and of
    what they reach outside torch (see :func:`_function_digest`)."""
    if _is_library(cls):
        return None
    own = incomplete is None
    seen = set() if seen is None else seen
    incomplete = [] if incomplete is None else incomplete
    h = hashlib.sha256()
    for klass in cls.__mro__:
        if klass is object or _is_library(klass):
            continue
        h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        for name, member in sorted(vars(klass).items()):
            fn = getattr(member, "__func__", member)
            if isinstance(fn, types.FunctionType):
                h.update(name.encode())
                _function_digest(fn, h, seen, incomplete)
    if own:
        _warn_incomplete(incomplete, cls)
    return h.hexdigest()


def _hooks_code(module: nn.Module, incomplete: list) -> str | None:
    """Digest of the user forward (pre-)hooks of a module, which run inside ``forward``."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    hooks = [fn for fn in hooks if isinstance(fn, types.FunctionType) and not fn.__module__.startswith("sklearn_ais")]
    if not hooks:
        return None
    h, seen = hashlib.sha256(), set()
    for fn in hooks:
        _function_digest(fn, h, seen, incomplete)
    return h.hexdigest()


def _warn_incomplete(incomplete, what) -> None:
    import warnings

    for item in incomplete:
        if item not in _INCOMPLETE_WARNED:
            _INCOMPLETE_WARNED.add(item)
            warnings.warn(
                f"the feature cache key of {getattr(what, '__qualname__', what)} cannot follow {item}: a change "
                "to it is not seen by the cache (clear the cache folder, or pass memory=None, after editing it)",
                UserWarning,
                stacklevel=4,
            )


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
    incomplete: list = []
    out = [
        [name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr(),
         _attributes(m) if user_attributes or _is_library(type(m)) else None, _class_code(type(m)),
         _hooks_code(m, incomplete)]
        for name, m in model.named_modules()
    ]
    _warn_incomplete(incomplete, "a forward hook")
    return out


def fingerprint(model: nn.Module) -> tuple:
    """The identity of the model's current state: its structure and the *values* of its tensors.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    fingerprint : tuple
        ``(structure, weights)``: changes when a module is replaced or
        reconfigured, when the code or a module-level value that ``forward``
        reaches is edited, and when a parameter or buffer changes value by
        any route, ``.data`` included (which bumps no version counter): the
        weights are the SHA-256 of the tensors' bytes, recomputed at every
        ``transform`` with a cache (about 0.4 s for VGG16). Attributes of
        user-defined modules are left out (they are part of the key when it
        is computed).
    """
    return json.dumps(structure(model, user_attributes=False), sort_keys=True), tensors_sha256(model.state_dict())


def cache_config(backbone, weights: str | None = None) -> dict:
    """Everything that determines a backbone's feature maps, as a JSON-able dict.

    Parameters
    ----------
    backbone : Backbone
        Its model, layer, head and preprocessing are read.
    weights : str, optional
        The SHA-256 of the model's tensors when already computed (:func:`fingerprint`).

    Returns
    -------
    config : dict
        What the cache key hashes. Hashes the model's tensors (about 0.4 s for VGG16).
    """
    p = backbone.preprocessing
    return {
        "format": FORMAT,
        "structure": hashlib.sha256(json.dumps(structure(backbone.model), sort_keys=True).encode()).hexdigest(),
        "weights": weights or tensors_sha256(backbone.model.state_dict()),
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
