"""Attention and saliency baselines from the same backbone as the feature maps.

:func:`attention_maps` returns maps in the format of
:class:`~sklearn_ais.AISHeatmapper`: ``(n_images, H, W)`` in [0, 1] on the
original image geometry, computed on exactly the network input the feature
maps were computed on (same preprocessing, same crop), so that AIS heatmaps
and attention maps can be compared pixel by pixel (see
:func:`sklearn_ais.metrics.relative_risk`).

Methods
-------
``"gradient"``
    Vanilla gradient (Simonyan et al., 2014): ``|d logit_c / d pixel|``, the
    maximum over colour channels (``captum.attr.Saliency``).
``"guided_backprop"``
    Guided backpropagation (Springenberg et al., 2015): negative gradients
    are zeroed at every ``nn.ReLU`` and ``nn.ReLU6`` module on the way back
    (``captum.attr.GuidedBackprop``); absolute value, maximum over colour
    channels. Other activations (SiLU, GELU...) and functional ReLU calls
    (``F.relu`` in a ``forward``) pass plain gradients (so on a GELU
    transformer it is the plain gradient).
``"gradcam"``
    Grad-CAM (Selvaraju et al., 2017) on the backbone's feature-map layer:
    ``ReLU(sum_k mean(d logit_c / d A_k) A_k)`` (``captum.attr.LayerGradCam``).
    On a vision transformer's block, ``A_k`` is channel k of the patch
    tokens on the patch grid, and so is its gradient (the extra tokens take
    no part), as for its AIS maps.
``"scorecam"``
    Score-CAM (Wang et al., 2020) on the same layer: each map, upsampled and
    rescaled to [0, 1], masks the input; its weight is the softmax
    probability of class c for the masked input. Costs one forward pass per
    map and image (batched), so it is slow for wide layers on a CPU.

The gradient methods need ``captum`` (``pip install captum``).
"""

from __future__ import annotations

import copy
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from ._geometry import minmax, to_original
from ._sklearn_compat import Interval, StrOptions, validate_params
from .backbones._capture import capture
from .backbones._preprocess import as_image_source, same_size_groups
from .backbones._registry import Backbone

__all__ = ["METHODS", "attention_maps"]

METHODS = ("gradient", "guided_backprop", "gradcam", "scorecam")


class _GuidedReLU6(nn.ReLU):
    """ReLU6 typed as ``nn.ReLU``: captum's guided backprop only hooks ``nn.ReLU`` modules.

    Its backward hook zeroes the negative part of the gradient with respect to
    the input, which for ReLU6 already holds the 0 < x < 6 mask.
    """

    def forward(self, x):
        return F.relu6(x)


def _resolve(transformer) -> tuple[Backbone, torch.device]:
    if isinstance(transformer, Backbone):
        return transformer, transformer.device
    check_is_fitted(transformer, "backbone_")
    return transformer.backbone_, transformer.runtime_device()  # as transform: GPU-fitted, unpickled on CPU


def _working_copy(model: nn.Module, device, guided: bool) -> nn.Module:
    """Eval-mode copy with in-place activations disabled (they break backward hooks) and frozen weights."""
    model = copy.deepcopy(model).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
        if guided:
            for name, child in module.named_children():
                if isinstance(child, nn.ReLU6):
                    setattr(module, name, _GuidedReLU6())
    return model


def _forward(model, layer, x):
    """Logits and the output of ``layer`` for a batch, without gradients."""
    # A copy of the maps: later in-place ops (DenseNet's F.relu(..., inplace=True)) must not alter them.
    with torch.inference_mode():
        logits, maps = capture(model, layer, lambda: model(x), stop=False, clone=True)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError("the model must return logits of shape (n_images, n_classes) for attention maps")
    return logits, maps


def _captum():
    try:
        import captum.attr
    except ImportError as exc:
        raise ImportError("gradient-based attention maps need captum: pip install captum") from exc
    return captum.attr


def _gradient_maps(model, layer, x, target, method):
    attr = _captum()
    x = x.detach().requires_grad_()
    if method == "gradcam":
        cam = attr.LayerGradCam(model, model.get_submodule(layer))
        return cam.attribute(x, target=target, relu_attributions=True)[:, 0]
    explainer = attr.Saliency(model) if method == "gradient" else attr.GuidedBackprop(model)
    with warnings.catch_warnings():
        # captum announces (every call) that it hooks the ReLUs of our private copy.
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
        return explainer.attribute(x, target=target).abs().amax(dim=1)


def _token_gradcam(model, layer, layout, x, target):
    """Grad-CAM on a transformer block: its patch tokens and their gradients reshaped to the grid (n, D, h, w)."""
    kept = []

    def hook(mod, args, out):
        out.retain_grad()
        kept.append(out)

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_())
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    tokens = kept[0]
    acts, _ = layout.split(tokens.detach())
    grads, _ = layout.split(tokens.grad)
    return F.relu(torch.einsum("nk,nkhw->nhw", grads.mean(dim=(2, 3)), acts))


def _scorecam_maps(model, x, acts, target, batch_size):
    out = []
    size = x.shape[-2:]
    for xi, ai, ti in zip(x, acts, target.tolist()):
        lo, hi = ai.amin(dim=(1, 2)), ai.amax(dim=(1, 2))
        # Constant maps carry no spatial information (and cannot be rescaled): weight 0.
        live = torch.nonzero(hi > lo).flatten()
        weights = torch.zeros(len(ai), dtype=ai.dtype, device=ai.device)
        for chunk in live.split(batch_size):
            up = F.interpolate(ai[chunk, None], size=size, mode="bilinear", align_corners=False)
            mask = (up - lo[chunk, None, None, None]) / (hi - lo)[chunk, None, None, None]
            with torch.inference_mode():
                weights[chunk] = F.softmax(model(xi[None] * mask), dim=1)[:, ti]
        # Upsampling is linear, so weighting the maps before it is the same as after.
        out.append(F.relu(torch.einsum("k,khw->hw", weights, ai)))
    return torch.stack(out)


def _check_target(target, n):
    if target is None:
        return None
    t = np.asarray(target)
    if t.ndim == 0:
        t = np.full(n, t)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"target must be None, a class index or {n} class indices (integers), got {target!r}")
    return t


@validate_params(
    {"method": [StrOptions(set(METHODS))], "batch_size": [Interval(Integral, 1, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def attention_maps(transformer, images, method="gradcam", target=None, batch_size=16):
    """Attention maps of images from a backbone, on the original image geometry.

    Parameters
    ----------
    transformer : DNNFeatureMapTransformer or Backbone
        A fitted transformer (its ``backbone_``, preprocessing and device
        are used) or a :class:`~sklearn_ais.backbones.Backbone`. The network
        must output class logits; its parameters are not modified.
    images : images
        Any input of ``DNNFeatureMapTransformer.transform`` (paths, PIL
        images, arrays, tensors).
    method : {"gradient", "guided_backprop", "gradcam", "scorecam"}, default="gradcam"
        See the module documentation. Grad-CAM and Score-CAM use the
        backbone's feature-map layer (the maps AIS scores).
    target : None, int or array-like of int of shape (n_images,), default=None
        Class explained for each image. ``None``: the network's top-1
        prediction for that image.
    batch_size : int, default=16
        Images per forward/backward pass; for Score-CAM, masked copies of an
        image per forward pass.

    Returns
    -------
    maps : ndarray of shape (n_images, H, W) or list of ndarray
        Maps in [0, 1] (a constant map is all zeros) at each original image's
        size (a list when sizes differ); 0 outside the centre crop the
        network saw.

    Raises
    ------
    ValueError
        Unknown method, invalid target or a network without logits.
    ImportError
        A gradient method without captum installed.

    Notes
    -----
    Computed on an eval-mode copy of the network with in-place activations
    disabled, in float32; results are deterministic on the CPU.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from sklearn_ais.backbones import get_backbone
    >>> from sklearn_ais.attention import attention_maps
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> bb = get_backbone(net, layer="1", input_size=32, resize_size=32)
    >>> images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8)
    >>> maps = attention_maps(bb, images, method="gradcam")
    >>> maps.shape, float(np.nanmin(maps)) >= 0, float(np.nanmax(maps)) <= 1  # NaN: outside the network's crop
    ((2, 40, 50), True, True)
    """
    backbone, device = _resolve(transformer)
    source = as_image_source(images)
    n = len(source)
    targets = _check_target(target, n)
    model = _working_copy(backbone.model, device, guided=method == "guided_backprop")
    preprocessing = backbone.preprocessing

    out = [None] * n
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pixels, geometry = preprocessing.batch(source[start:stop])
        for idx, batch in same_size_groups(pixels):  # one group, unless crop=False and the sizes differ
            x = torch.from_numpy(batch).to(device)
            logits, acts = _forward(model, backbone.layer, x)
            tokens = backbone.tokens if isinstance(acts, torch.Tensor) and acts.ndim == 3 else None
            if tokens is not None:  # a transformer block: its patch tokens on the grid
                acts = tokens.split(acts)[0]
            if targets is None:
                t = logits.argmax(dim=1)
            else:
                t = torch.as_tensor(targets[start + idx], device=device)
                if (t < 0).any() or (t >= logits.shape[1]).any():
                    raise ValueError(
                        f"target must be class indices in [0, {logits.shape[1]}), got {targets[start + idx]}")
            if method == "scorecam":
                raw = _scorecam_maps(model, x, acts, t, batch_size)
            elif method == "gradcam" and tokens is not None:
                raw = _token_gradcam(model, backbone.layer, tokens, x, t)
            else:
                raw = _gradient_maps(model, backbone.layer, x, t, method)
            maps = to_original(raw.detach().float().cpu(), geometry[idx], x.shape[-2:])
            for i, m in zip(idx, minmax(list(maps))):
                out[start + i] = m
    if len({m.shape for m in out}) == 1:
        return np.stack(out)
    return out
