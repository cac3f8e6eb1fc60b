"""Any CNN by name: its feature-map layer and its own head, found by running it once.

The default layer of a network the package has no entry for is the last
module whose output is a spatial grid ``(n, C, h, w)`` with ``h * w > 1``
before the global pool (of the modules that give that very tensor, the
outermost one that is not an ``Identity``). The head is the model's own
path from there to its penultimate output (the input of its final
classifier), and is **checked**: on a random probe, the head applied to the
layer's output must equal the model's own penultimate output. Candidates, in
order of speed of their exact ablation kernels:

1. global average pooling (:class:`PoolingHead`: rank-one updates);
2. average pooling, a linear layer (or 1x1 convolution) and element-wise
   modules (:class:`MLPHead`: first-layer updates; MobileNetV3);
3. the model's own head module (timm's ``forward_head(pre_logits=True)``,
   torchvision's ``avgpool`` + ``classifier[:-1]``) as a :class:`ModuleHead`
   (exact brute force; ConvNeXt's pooled LayerNorm).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._heads import Head, MLPHead, ModuleHead, PoolingHead

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Dropout, nn.Identity, nn.Flatten, nn.Hardsigmoid,
                nn.Tanh, nn.Sigmoid)


@dataclass
class Probe:
    """What one forward pass of a random batch showed."""

    layer: str
    maps: torch.Tensor  # the layer's output
    penultimate: torch.Tensor | None  # the model's own embedding (input of its final classifier)


def _penultimate_timm(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


def probe(model: nn.Module, input_size, layer: str | None = None) -> Probe:
    """Run ``model`` on one seeded random image; find the layer (unless given) and the penultimate output.

    Parameters
    ----------
    model : nn.Module
    input_size : tuple of int
    layer : str, optional

    Returns
    -------
    Probe
    """
    gen = torch.Generator().manual_seed(0)
    p = next(model.parameters(), None)
    x = torch.randn(1, 3, *input_size, generator=gen).to(p.device if p is not None else "cpu")
    records, calls, hooks = [], {}, []
    last_linear = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, name=name):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                records.append((name, mod, out))
            if isinstance(mod, nn.Linear) and args and isinstance(args[0], torch.Tensor):
                last_linear.append(args[0])

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if layer is None:
        spatial = [(n, m, o) for n, m, o in records if o.ndim == 4 and o.shape[2] * o.shape[3] > 1]
        if not spatial:
            raise ValueError(f"{type(model).__name__} has no module with a spatial (n, C, h, w) output: pass layer=...")
        target = spatial[-1][2]
        same = [(n, m) for n, m, o in records if o is target and calls.get(n) == 1]
        named = [n for n, m in same if not isinstance(m, nn.Identity)] or [n for n, _ in same] or [spatial[-1][0]]
        layer = min(named, key=lambda n: (n.count("."), named.index(n)))
        maps = target
    else:
        found = [o for n, _, o in records if n == layer]
        if not found:
            raise ValueError(f"layer {layer!r} of {type(model).__name__} did not run")
        maps = found[0]
    with torch.no_grad():
        if hasattr(model, "forward_head") and hasattr(model, "forward_features"):
            pen = _penultimate_timm(model, x)
        else:
            pen = last_linear[-1] if last_linear else None
    return Probe(layer, maps.detach(), None if pen is None else pen.detach().flatten(1))


class _TimmHead(nn.Module):
    """timm's own head: ``forward_head(maps, pre_logits=True)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(x, pre_logits=True)

    def __repr__(self):
        return f"{type(self.model).__name__}.forward_head(pre_logits=True)"


def _candidates(model: nn.Module):
    """Heads that may be the model's own path from its last spatial layer, fastest kernel first."""
    yield lambda: PoolingHead("avg")
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):
        conv, norm, act = (getattr(model, a, None) for a in ("conv_head", "norm_head", "act2"))
        pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and pool == "avg" \
                and isinstance(norm, (nn.Identity, type(None))) and isinstance(act, nn.Module):
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            yield lambda: MLPHead(conv.weight.flatten(1), bias, nn.Sequential(act, nn.Flatten(1)), maxpool=None,
                                  output_size=(1, 1))
        yield lambda: ModuleHead(_TimmHead(model))
        return
    pool, classifier, fc = (getattr(model, a, None) for a in ("avgpool", "classifier", "fc"))
    if isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(classifier, nn.Sequential) and len(classifier) >= 2 \
            and isinstance(classifier[-1], nn.Linear):
        first, rest = classifier[0], list(classifier)[1:-1]
        size = tuple(int(s) for s in np.broadcast_to(np.asarray(pool.output_size), (2,)))
        if isinstance(first, nn.Linear) and all(isinstance(m, _ELEMENTWISE) for m in rest):
            yield lambda: MLPHead(first.weight, first.bias if first.bias is not None else torch.zeros(first.out_features),
                                  nn.Sequential(*rest), maxpool=None, output_size=size)
        yield lambda: ModuleHead(nn.Sequential(pool, nn.Flatten(1), *list(classifier)[:-1]))
    elif isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(fc, nn.Linear):
        yield lambda: ModuleHead(nn.Sequential(pool, nn.Flatten(1)))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(b.abs().max()))
    return bool((a.double() - b.double()).abs().max() <= 1e-5 * scale)


def own_head(model: nn.Module, found: Probe, name: str) -> Head:
    """The fastest candidate head that reproduces the model's own penultimate output on the probe.

    Parameters
    ----------
    model : nn.Module
    found : Probe
    name : str
        For the warning.

    Returns
    -------
    head : Head
        Global average pooling (with a warning) when no candidate matches.
    """
    if found.penultimate is not None:
        for make in _candidates(model):
            try:
                head = make()
                with torch.no_grad():
                    out = head(found.maps.cpu()).to(found.penultimate.device)
            except Exception:  # a candidate that does not even fit the maps is simply not the model's head
                continue
            if _close(out, found.penultimate):
                return head
    warnings.warn(
        f"{name}: no head reproduces the model's own penultimate output from layer {found.layer!r}; using global "
        "average pooling of the maps (pass head=... to choose)", UserWarning, stacklevel=4,
    )
    return PoolingHead("avg")
