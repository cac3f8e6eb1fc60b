"""Heads: the part of a network that turns last-conv feature maps into an embedding.

Ablating feature map ``k`` means setting it to zero *before* the head. How
cheaply that can be evaluated depends on the head's structure, so the
ablation kernels dispatch on the head class:

* :class:`PoolingHead` — every embedding coordinate is a function of one map
  only (global average/max pooling, optionally after an element-wise
  activation with ``act(0) = 0``). Ablating map k zeroes coordinate k: the
  2-D ``(n, K)`` embedding *is* the whole story (rank-one kernels).
* :class:`MLPHead` — a channel-wise pool to ``P`` values per map, then a
  linear layer, then anything (``rest``). Ablating map k subtracts one
  block of the first layer's pre-activation (VGG: maxpool, 7x7 avgpool,
  fc6, ReLU, fc7, ReLU).
* :class:`ModuleHead` — any callable; ablation is evaluated by brute force
  (batched), which is exact but slower.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._device import as_tensor
from .._sklearn_compat import StrOptions, validate_params

_ACTIVATIONS = {
    None: lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
}


class Head:
    """Base class of heads: ``head(maps) -> embeddings`` with maps of shape (n, K, h, w).

    A new head is added by subclassing and implementing :meth:`embed`; that is
    all it needs to work everywhere (the exact brute-force kernel scores its
    ablations). A head whose structure lets ablations share work names an
    existing kernel and its arrays in :meth:`kernel_spec`, or brings its own
    in :meth:`ablation_kernel`: the estimators never look at the head
    themselves, and the kernels never know head classes.
    """

    def embed(self, maps: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Embeddings of maps: the override point of a new head.

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)
            Called under ``torch.inference_mode()`` by :meth:`__call__`; an
            ablated map is all zeros.

        Returns
        -------
        embeddings : Tensor of shape (n, D)
        """
        raise NotImplementedError

    #: True for a head that reads the tokens carried beside the patch grid (a CLS token): its
    #: :meth:`embed` then takes ``(maps, extra)``.
    reads_extra_tokens = False

    def embed_maps(self, maps: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`embed`, handing the extra tokens on to a head that reads them (what callers use).

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)
        extra : Tensor of shape (n, T, K) or None
            Tokens carried beside the patch grid (CLS, registers), never ablated.

        Returns
        -------
        embeddings : Tensor of shape (n, D)
        """
        if self.reads_extra_tokens:
            return self.embed(maps, extra)
        return self.embed(maps)

    def kernel_spec(self, maps, device) -> tuple[str, dict]:
        """Which exact kernel of :mod:`sklearn_ais._ablation` scores ablations through this head,
        and the arrays it reads (the kernels know weights and shapes, never head classes).

        Parameters
        ----------
        maps : FeatureMaps
            The maps, with this head.
        device : torch.device

        Returns
        -------
        kind : {"brute force", "pooled", "first layer"}
            ``"brute force"`` (the default): every ablated batch is embedded (exact, batched).
        arguments : dict
            Keyword arguments of that kernel (``"pooled"``: the (n, K) embedding ``E``;
            ``"first layer"``: ``pooled``, ``weight``, ``bias`` and ``rest``).
        """
        return "brute force", {}

    def ablation_kernel(self, maps, similarity: str, device):
        """A kernel of the head's own (the override point of a head that brings one); default None.

        ``None`` means: the kernel that :meth:`kernel_spec` names. A head
        whose structure lets ablations share work in a way no existing
        kernel does returns an :class:`~sklearn_ais._ablation.AblationKernel`
        here.

        Parameters
        ----------
        maps : FeatureMaps
            The maps, with this head.
        similarity : {"pearson", "cosine"}
        device : str or torch.device

        Returns
        -------
        kernel : AblationKernel or None
        """
        return None

    def __call__(self, maps, device=None, dtype=torch.float32, extra=None) -> torch.Tensor:
        t = as_tensor(maps, device=device, dtype=dtype)
        if t.ndim != 4:
            raise ValueError(f"feature maps must have shape (n, K, h, w), got {tuple(t.shape)}")
        e = None if extra is None else as_tensor(extra, device=t.device, dtype=dtype)
        with torch.inference_mode():
            return self.embed_maps(t, e)

    def _module_on(self, module: nn.Module, device, dtype) -> nn.Module:
        """``module`` on ``device``/``dtype``: itself when its parameters already are, else a
        cached copy, so the head (and any model it shares layers with) never moves and
        pickles stay portable."""
        p = next(module.parameters(), None)
        if p is None or (p.device == torch.device(device) and p.dtype == dtype):
            return module
        key = (str(device), dtype)
        cache = self.__dict__.setdefault("_device_copies", {})
        if key not in cache:
            cache[key] = copy.deepcopy(module).to(device=device, dtype=dtype)
        return cache[key]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_device_copies", None)  # device copies are rebuilt on demand
        # CPU tensors travel as NumPy arrays: torch pickles a tensor by writing its storage into a bytes
        # object (two copies; ~2 s each way for VGG16's fc6), where an array is one buffer that pickle
        # protocol 5 (dask) sends without copying and loky memory-maps once per call.
        arrays = [k for k, v in state.items() if _travels_as_array(v)]
        for k in arrays:
            state[k] = state[k].numpy()
        state["_arrays"] = arrays
        return state

    def __setstate__(self, state):
        state = dict(state)
        for k in state.pop("_arrays", ()):
            a = state[k]
            # A buffer that arrives read-only (bytes, a read-only map) is copied: tensors assume they may write.
            state[k] = torch.from_numpy(a if a.flags.writeable else a.copy())
        self.__dict__.update(state)


class PoolingHead(Head):
    """Global pooling per map, optionally after an element-wise activation.

    Parameters
    ----------
    pool : {"avg", "max"}, default="avg"
    activation : {None, "relu", "relu6", "silu"}, default=None
        Applied to the maps before pooling (DenseNet applies a ReLU after its
        last norm layer). Every choice maps 0 to 0, so an ablated map still
        gives a zero coordinate.
    """

    @validate_params(
        {"pool": [StrOptions({"avg", "max"})], "activation": [None, StrOptions({k for k in _ACTIVATIONS if k})]},
        prefer_skip_nested_validation=True,
    )
    def __init__(self, pool: str = "avg", activation: str | None = None):
        self.pool = pool
        self.activation = activation

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled (optionally activated) maps: one coordinate per map.

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)
            Activated first (``activation``), then pooled over ``h x w``.

        Returns
        -------
        embeddings : Tensor of shape (n, K)
        """
        x = _ACTIVATIONS[self.activation](maps)
        return x.mean(dim=(2, 3)) if self.pool == "avg" else x.amax(dim=(2, 3))

    def kernel_spec(self, maps, device):
        """Rank-one updates: ablating map k changes coordinate k of the embedding only.

        Parameters
        ----------
        maps : FeatureMaps
            Only their pooled embedding (n, K) is read.
        device : torch.device

        Returns
        -------
        kind : "pooled"
        arguments : dict
            ``{"E": maps.embed()}``.
        """
        return "pooled", {"E": maps.embed()}

    def __repr__(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"PoolingHead(pool={self.pool!r}{act})"


class MLPHead(Head):
    """Channel-wise pooling, a first linear layer, then the rest of the head.

    This is the VGG head: ``maxpool(2) -> adaptive avgpool(7x7) -> flatten ->
    fc6 -> ReLU -> fc7 -> ReLU`` (dropout is inactive at inference).

    Parameters
    ----------
    weight : Tensor of shape (D1, K * P)
        First linear layer's weight; columns are grouped by map (``P`` pooled
        values per map, as ``torch.flatten`` orders them).
    bias : Tensor of shape (D1,)
    rest : nn.Module
        Applied to the first layer's pre-activation (e.g. ReLU, fc7, ReLU).
    maxpool : int or None, default=2
        Kernel (and stride) of the max-pool applied to each map first.
    output_size : tuple of int, default=(7, 7)
        Adaptive average pool output; ``P = output_size[0] * output_size[1]``.
    """

    def __init__(self, weight, bias, rest: nn.Module, maxpool: int | None = 2, output_size=(7, 7)):
        self.weight = torch.as_tensor(weight).detach().float().cpu()
        self.bias = torch.as_tensor(bias).detach().float().cpu()
        # A private CPU copy: the caller's layers (often the model's own) never move.
        self.rest = copy.deepcopy(rest).eval().cpu().float()
        for p in self.rest.parameters():
            p.requires_grad_(False)
        self.maxpool = maxpool
        self.output_size = tuple(output_size)

    @property
    def n_pooled(self) -> int:
        return int(np.prod(self.output_size))

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-map pooled values, (n, K, P).

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)
            Max-pooled by ``maxpool`` (when set), then average-pooled to ``output_size``.

        Returns
        -------
        pooled : Tensor of shape (n, K, P)
        """
        x = maps
        if self.maxpool:
            x = F.max_pool2d(x, kernel_size=self.maxpool, stride=self.maxpool)
        x = F.adaptive_avg_pool2d(x, self.output_size)
        return x.flatten(2)

    def first_layer(self, pooled: torch.Tensor) -> torch.Tensor:
        """The first linear layer's pre-activation (before its ReLU).

        Parameters
        ----------
        pooled : Tensor of shape (n, K, P)
            As :meth:`pooled` returns them; flattened map by map.

        Returns
        -------
        pre : Tensor of shape (n, D1)
        """
        w = self.weight.to(device=pooled.device, dtype=pooled.dtype)
        b = self.bias.to(device=pooled.device, dtype=pooled.dtype)
        return pooled.flatten(1) @ w.T + b

    def rest_on(self, device, dtype) -> nn.Module:
        """``rest`` on ``device``/``dtype`` (see ``Head._module_on``).

        Parameters
        ----------
        device : torch.device or str
        dtype : torch.dtype

        Returns
        -------
        rest : nn.Module
        """
        return self._module_on(self.rest, device, dtype)

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """Pool, first layer, rest of the head.

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)

        Returns
        -------
        embeddings : Tensor of shape (n, D)
            The output of ``rest`` (D = 4096 for VGG's fc7).
        """
        pooled = self.pooled(maps)
        pre = self.first_layer(pooled)
        return self.rest_on(maps.device, maps.dtype)(pre)

    def kernel_spec(self, maps, device):
        """First-layer updates: removing map k subtracts one block of the first layer's pre-activation.

        Parameters
        ----------
        maps : FeatureMaps
            Pooled once to (n, K, P) on ``device`` (:meth:`FeatureMaps.pooled`).
        device : torch.device

        Returns
        -------
        kind : "first layer"
        arguments : dict
            ``pooled`` (n, K, P), ``weight`` (D1, K * P), ``bias`` (D1,) and ``rest`` (on ``device``).
        """
        self.block_weight(maps.n_maps)  # checks that the maps fit the first layer
        return "first layer", {"pooled": maps.pooled(device), "weight": self.weight, "bias": self.bias,
                               "rest": self.rest_on(device, torch.float32)}

    def block_weight(self, n_maps: int) -> torch.Tensor:
        """First-layer weight viewed as (D1, K, P): ``block_weight[:, k]`` reads map k.

        Parameters
        ----------
        n_maps : int

        Returns
        -------
        weight : Tensor of shape (D1, n_maps, P)
        """
        if self.weight.shape[1] != n_maps * self.n_pooled:
            raise ValueError(
                f"this head's first layer reads {self.weight.shape[1]} inputs, but {n_maps} maps pooled to "
                f"{self.output_size} give {n_maps * self.n_pooled}: the maps do not come from this head's network"
            )
        return self.weight.view(self.weight.shape[0], n_maps, self.n_pooled)

    def __repr__(self):
        return (
            f"MLPHead(in={self.weight.shape[1]}, hidden={self.weight.shape[0]}, "
            f"maxpool={self.maxpool}, output_size={self.output_size})"
        )


class ModuleHead(Head):
    """Any callable head (an ``nn.Module`` or a function of a (n, K, h, w) tensor).

    Ablation through a generic head is exact but evaluated by brute force.
    """

    def __init__(self, module):
        if not callable(module):
            raise TypeError(f"head must be callable (an nn.Module or a function), got {type(module).__name__}")
        self.module = module
        if isinstance(module, nn.Module):
            module.eval()

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """The module's output, flattened to 2-D.

        Parameters
        ----------
        maps : Tensor of shape (n, K, h, w)
            On the device and dtype the module is run with (a cached copy moves there).

        Returns
        -------
        embeddings : Tensor of shape (n, D)
        """
        module = self.module
        if isinstance(module, nn.Module):
            module = self._module_on(module, maps.device, maps.dtype)
        out = module(maps)
        if out.ndim != 2:
            out = out.flatten(1)
        return out

    def __repr__(self):
        return f"ModuleHead({self.module!r})"


def _travels_as_array(value) -> bool:
    """A plain CPU tensor that NumPy holds exactly (no autograd, no subclass, a NumPy dtype)."""
    return (type(value) is torch.Tensor and value.device.type == "cpu" and not value.requires_grad
            and value.layout == torch.strided and value.dtype in _NUMPY_DTYPES)


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool)
