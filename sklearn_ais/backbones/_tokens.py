"""Vision transformers: a block's tokens as feature maps, and the heads that embed them.

A ViT-style model (timm's ViT, DeiT, DINO, DINOv2, EVA; open_clip's CLIP
image tower) carries a sequence of tokens through its blocks: ``n_extra``
tokens of its own (CLS, registers, distillation) followed by one token per
patch, in row-major order on the patch grid ``(h, w)``. The *feature maps*
of a block are the ``D`` channels of its patch tokens laid out on the grid,
``(n, D, h, w)``, so that every estimator, kernel and heatmap of the package
works on them unchanged; the extra tokens are carried beside the grid
(:attr:`~sklearn_ais.FeatureMaps.extra_tokens`).

Two heads:

* :class:`TokenHead` (``token_pooling="cls"`` for a CLS-token model): the
  model's own remaining modules from the layer on (its later blocks, its
  final norm, its pooling and projection), run on the extra tokens followed
  by the patch tokens. Exact, scored by the batched brute-force kernel. The
  default layer is the input of the last block, so the head runs one block.
* ``PoolingHead("avg")`` (``token_pooling="mean"``): the mean of the patch
  tokens at the layer, scored by the exact rank-one pooling kernel.

Ablating map ``k`` sets channel ``k`` to zero in every patch token; the CLS
(and every other extra) token is the model's and is never ablated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._heads import Head

__all__ = ["TokenHead", "TokenLayout", "token_layout"]


@dataclass(frozen=True)
class TokenLayout:
    """Where a transformer keeps its tokens.

    Parameters
    ----------
    family : {"timm", "open_clip"}
    n_extra : int
        Tokens before the patch tokens (CLS, registers, distillation).
    grid : tuple of int
        ``(h, w)`` of the patch grid.
    blocks : tuple of str
        Names of the blocks in order, then the final norm when it is a module of its own.
    pooling : {"cls", "mean"}
        How the model itself embeds its tokens.
    seq_first : bool, default=False
        The blocks' outputs are ``(T, n, D)`` (open_clip's older towers), not ``(n, T, D)``.
    """

    family: str
    n_extra: int
    grid: tuple
    blocks: tuple
    pooling: str
    seq_first: bool = False

    def split(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (n, D, h, w), extra (n, n_extra, D))`` of a block's output tokens."""
        if tokens.ndim != 3:
            raise ValueError(f"a transformer block's output must be (n, T, D) tokens, got {tuple(tokens.shape)}")
        if self.seq_first:
            tokens = tokens.transpose(0, 1)
        n, T, D = tokens.shape
        h, w = self.grid
        if T != self.n_extra + h * w:
            raise ValueError(
                f"the layer gives {T} tokens, but {self.n_extra} extra tokens and a {h}x{w} patch grid make "
                f"{self.n_extra + h * w}: feed images of the model's input size"
            )
        extra = tokens[:, : self.n_extra]
        maps = tokens[:, self.n_extra:].transpose(1, 2).reshape(n, D, h, w)
        return maps, extra

    def rest(self, model: nn.Module, layer: str) -> nn.Module:
        """The model's own modules after ``layer``: tokens (n, T, D) -> embedding (n, E)."""
        names = list(self.blocks)
        if layer not in names:
            raise ValueError(f"layer {layer!r} is not one of this transformer's blocks {names}")
        start = names.index(layer) + 1
        if self.family == "timm":
            return _TimmRest(model, start)
        return _OpenClipRest(model, start, self.seq_first)


def _pooling_of_timm(model) -> str | None:
    pool = getattr(model, "global_pool", None)
    if getattr(model, "attn_pool", None) is not None:
        return None
    if pool == "token":
        return "cls"
    if pool == "avg":
        return "mean"
    return None


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The :class:`TokenLayout` of a ViT-style timm or open_clip model, or None (not a token model).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    layout : TokenLayout or None
    """
    blocks = getattr(model, "blocks", None)
    patch = getattr(model, "patch_embed", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and patch is not None and hasattr(model, "num_prefix_tokens") \
            and hasattr(model, "forward_head") and getattr(patch, "grid_size", None) is not None:
        pooling = _pooling_of_timm(model)
        if pooling is None or len(blocks) < 2:
            return None
        names = tuple(f"blocks.{i}" for i in range(len(blocks)))
        if isinstance(getattr(model, "norm", None), nn.Module):
            names += ("norm",)
        return TokenLayout("timm", int(model.num_prefix_tokens), tuple(int(g) for g in patch.grid_size), names, pooling)
    transformer = getattr(model, "transformer", None)
    resblocks = getattr(transformer, "resblocks", None)
    if resblocks is not None and hasattr(model, "class_embedding") and hasattr(model, "_pool") \
            and getattr(model, "attn_pool", None) is None and len(resblocks) >= 2:
        pooling = {"tok": "cls", "avg": "mean"}.get(getattr(model, "pool_type", None))
        if pooling is None:
            return None
        grid = tuple(int(g) for g in model.grid_size)
        names = tuple(f"transformer.resblocks.{i}" for i in range(len(resblocks)))
        return TokenLayout("open_clip", 1, grid, names, pooling, seq_first=not getattr(transformer, "batch_first", True))
    return None


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


class _TimmRest(nn.Module):
    """timm: blocks ``start:``, the final norm, then ``forward_head(pre_logits=True)``."""

    def __init__(self, model, start):
        super().__init__()
        self.model = model
        self.start = start
        self.block_kwargs = {}  # keyword arguments the model passes its blocks (EVA's rotary embedding)

    def record_kwargs(self, pixels):
        """Run the model once and keep what it passes its later blocks besides the tokens."""
        hooks = []
        for i, blk in enumerate(self.model.blocks):
            def hook(mod, args, kwargs, i=i):
                self.block_kwargs[i] = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            hooks.append(blk.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.model.forward_features(pixels)
        finally:
            for h in hooks:
                h.remove()

    def forward(self, x):
        blocks = self.model.blocks
        for i in range(self.start, len(blocks)):
            kwargs = {k: _to(v, x.device) for k, v in self.block_kwargs.get(i, {}).items()}
            x = blocks[i](x, **kwargs)
        if self.start <= len(blocks):
            x = self.model.norm(x)
        return self.model.forward_head(x, pre_logits=True)

    def extra_repr(self):
        return f"from block {self.start}"


class _OpenClipRest(nn.Module):
    """open_clip: resblocks ``start:``, then the tower's own pooling (with ``ln_post``) and projection."""

    def __init__(self, visual, start, seq_first=False):
        super().__init__()
        self.visual = visual
        self.start = start
        self.seq_first = seq_first

    def forward(self, x):
        blocks = self.visual.transformer.resblocks
        if self.seq_first:
            x = x.transpose(0, 1)
        for i in range(self.start, len(blocks)):
            x = blocks[i](x)
        if self.seq_first:
            x = x.transpose(0, 1)
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def extra_repr(self):
        return f"from block {self.start}"


class TokenHead(Head):
    """The transformer's own path from a block on, run on its extra tokens and its (ablated) patch tokens.

    Parameters
    ----------
    rest : nn.Module
        Tokens ``(n, n_extra + h * w, D)`` -> embedding ``(n, E)``: the
        model's later blocks, final norm, pooling and projection.
    n_extra : int, default=1
        Extra tokens placed before the patch tokens (CLS first).
    pooling : {"cls", "mean"}, default="cls"
        How ``rest`` pools the tokens (the model's own choice; for reports).
    layer : str, optional
        The block whose output the maps are (for the repr).

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.backbones import TokenHead
    >>> head = TokenHead(torch.nn.Flatten(1), n_extra=1)  # a toy "rest": all tokens, flattened
    >>> maps, cls = torch.ones(2, 3, 2, 2), torch.zeros(2, 1, 3)
    >>> head(maps, extra=cls).shape
    torch.Size([2, 15])
    """

    reads_extra_tokens = True

    def __init__(self, rest: nn.Module, n_extra: int = 1, pooling: str = "cls", layer: str | None = None):
        if not callable(rest):
            raise TypeError(f"rest must be callable (an nn.Module), got {type(rest).__name__}")
        self.rest = rest
        self.n_extra = int(n_extra)
        self.pooling = pooling
        self.layer = layer
        if isinstance(rest, nn.Module):
            rest.eval()

    def embed(self, maps: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The model's remaining modules on ``cat(extra, patch tokens)``.

        Parameters
        ----------
        maps : Tensor of shape (n, D, h, w)
            Patch tokens on the grid (channel ``k`` ablated: zero in every patch token).
        extra : Tensor of shape (n, n_extra, D)
            The tokens carried beside the grid (never ablated).

        Returns
        -------
        embeddings : Tensor of shape (n, E)
        """
        n, D = maps.shape[:2]
        patches = maps.flatten(2).transpose(1, 2)
        if self.n_extra:
            if extra is None or extra.shape[1] != self.n_extra:
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"this head needs the {self.n_extra} extra token(s) of each image, got {got}")
            patches = torch.cat([extra.to(device=patches.device, dtype=patches.dtype), patches], dim=1)
        rest = self._module_on(self.rest, maps.device, maps.dtype) if isinstance(self.rest, nn.Module) else self.rest
        out = rest(patches)
        return out if out.ndim == 2 else out.flatten(1)

    def __repr__(self):
        at = f", after={self.layer!r}" if self.layer else ""
        return f"TokenHead(pooling={self.pooling!r}, n_extra={self.n_extra}{at})"
