"""The harmonization loss (Fel, Felipe, Linsley & Serre, NeurIPS 2022), in PyTorch.

A network is trained to classify and, at the same time, to make its gradient
saliency look like human importance maps (ClickMe) at several scales. The
details below follow the authors' TensorFlow code (the ``harmonization``
package, ``training/loss.py`` and ``training/pyramid.py``, version 0.0.9);
where it differs from the paper's text, the code is followed:

* saliency ``S`` = the channel mean of the *signed* gradient of the true-class
  logit with respect to the network input, kept in the graph (the loss is
  second order); the network runs in training mode for both the saliency and
  the logits (one forward pass);
* ``z(M) = ReLU((M - mean M) / (std M + 1e-5))`` per image, with the
  population standard deviation (``tf.math.reduce_std``);
* the human map is rescaled to the saliency's range:
  ``z(H) / (max z(H) + 1e-6) * (max z(S) + 1e-6)``, the saliency's maximum
  not differentiated (``tf.stop_gradient``);
* the Gaussian pyramid: level 0 is the map itself, level ``k`` the level
  ``k - 1`` convolved with the 5 x 5 binomial kernel (outer product of
  ``[1, 4, 6, 4, 1] / 16``) with stride 2 and TensorFlow's ``"SAME"`` zero
  padding (for an even side, one row/column before and two after). The code
  builds ``n_levels + 1`` levels and averages the first ``n_levels``: with
  the default 5, the full-resolution map and four downsampled ones (the
  paper speaks of five downsamplings);
* the map term is the mean over levels of the mean over the whole batch and
  all pixels of ``t_b (P_k z(S) - P_k Hhat)^2``: images without a map
  (``t_b = 0``) still count in the denominator;
* total = cross-entropy with label smoothing 0.1 (``(1 - eps) onehot + eps /
  C``, as Keras' ``CategoricalCrossentropy``; mean over the batch) +
  ``map_weight`` x the map term + ``weight_decay * sum ||theta||^2 / 2``
  (``tf.nn.l2_loss``) over the trainable parameters that are not
  normalisation, embedding or class-token parameters (the code selects them by
  name: ``bn/``, ``normalization``, ``norm``, ``Norm``, ``embed``,
  ``class_token``; here also by module type, see :func:`decay_parameters`).
  Biases are decayed, as in the code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "clickme_blur",
    "clickme_kernel",
    "decay_parameters",
    "gaussian_pyramid",
    "harmonization_loss",
    "input_saliency",
    "pyramidal_mse",
    "rescale_to",
    "standardize_cut",
]

# Module types whose parameters are never decayed (normalisation and embeddings).
_NO_DECAY_TYPES = tuple(
    t for t in (
        nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None), nn.Embedding, nn.EmbeddingBag,
    ) if t is not None
)
# Name fragments (lower case) of parameters never decayed, after the authors' name filter.
_NO_DECAY_NAMES = ("norm", "embed", "class_token", "cls_token")


def _binomial_kernel(dtype, device) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
    k = torch.outer(k, k)
    return (k / k.sum()).to(dtype=dtype, device=device)[None, None]


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding (before, after) of one axis.

    Parameters
    ----------
    size, kernel, stride : int

    Returns
    -------
    before, after : int
        The extra row or column goes after (bottom, right), as in TensorFlow.

    Examples
    --------
    >>> from sklearn_ais.alignment._harmonization_loss import tf_same_padding
    >>> tf_same_padding(224, 5, 2), tf_same_padding(7, 5, 2), tf_same_padding(64, 10, 1)
    ((1, 2), (2, 2), (4, 5))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """One pyramid step of (n, h, w) maps: binomial blur, stride 2, TF "SAME" zero padding."""
    top, bottom = tf_same_padding(x.shape[-2], 5, 2)
    left, right = tf_same_padding(x.shape[-1], 5, 2)
    padded = F.pad(x[:, None], (left, right, top, bottom))
    return F.conv2d(padded, _binomial_kernel(x.dtype, x.device), stride=2)[:, 0]


def gaussian_pyramid(maps: torch.Tensor, n_levels: int = 5) -> list[torch.Tensor]:
    """The first ``n_levels`` levels of the Gaussian pyramid of (n, h, w) maps.

    Level 0 is ``maps``; level ``k`` is level ``k - 1`` convolved with the
    5 x 5 binomial kernel with stride 2 and TensorFlow's ``"SAME"`` zero padding.

    Parameters
    ----------
    maps : Tensor of shape (n, h, w)
    n_levels : int, default=5

    Returns
    -------
    levels : list of Tensor
        ``levels[k]`` has shape ``(n, ceil(h / 2**k), ceil(w / 2**k))``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.alignment._harmonization_loss import gaussian_pyramid
    >>> [tuple(p.shape) for p in gaussian_pyramid(torch.ones(2, 224, 224))]
    [(2, 224, 224), (2, 112, 112), (2, 56, 56), (2, 28, 28), (2, 14, 14)]
    """
    levels = [maps]
    for _ in range(n_levels - 1):
        levels.append(_downsample(levels[-1]))
    return levels


def standardize_cut(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``ReLU((M - mean M) / (std M + eps))`` per map (population std).

    Parameters
    ----------
    maps : Tensor of shape (n, h, w)
    eps : float, default=1e-5

    Returns
    -------
    Tensor of shape (n, h, w)

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.alignment._harmonization_loss import standardize_cut
    >>> standardize_cut(torch.tensor([[[0.0, 2.0]]]))
    tensor([[[0.0000, 1.0000]]])
    """
    mean = maps.mean(dim=(-2, -1), keepdim=True)
    std = maps.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return F.relu((maps - mean) / (std + eps))


def rescale_to(human: torch.Tensor, saliency: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Human maps rescaled to the saliency's maximum (not differentiated), per image.

    ``human / (max human + eps) * (max saliency + eps)``, both already
    standardised and cut.

    Parameters
    ----------
    human, saliency : Tensor of shape (n, h, w)
    eps : float, default=1e-6

    Returns
    -------
    Tensor of shape (n, h, w)
    """
    h_max = human.amax(dim=(-2, -1), keepdim=True) + eps
    s_max = saliency.detach().amax(dim=(-2, -1), keepdim=True) + eps
    return human / h_max * s_max


def pyramidal_mse(a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor | None = None, n_levels: int = 5):
    """Mean over pyramid levels of the token-weighted mean squared difference.

    Parameters
    ----------
    a, b : Tensor of shape (n, h, w)
    tokens : Tensor of shape (n,) or None
        Per-image weight (1: the image has a target map, 0: none); None = all 1.
        The mean runs over the whole batch, flagged or not.
    n_levels : int, default=5

    Returns
    -------
    Tensor (scalar)

    Examples
    --------
    >>> import torch
    >>> from sklearn_ais.alignment._harmonization_loss import pyramidal_mse
    >>> a = torch.ones(2, 8, 8)
    >>> float(pyramidal_mse(a, torch.zeros(2, 8, 8), torch.tensor([1.0, 0.0]), n_levels=1))
    0.5
    """
    if tokens is None:
        tokens = torch.ones(a.shape[0], dtype=a.dtype, device=a.device)
    t = tokens.to(a.dtype)[:, None, None]
    pa, pb = gaussian_pyramid(a, n_levels), gaussian_pyramid(b, n_levels)
    return torch.stack([((x - y).square() * t).mean() for x, y in zip(pa, pb)]).mean()


def decay_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters the weight-decay term covers, with their names.

    Every parameter with ``requires_grad`` except those of normalisation
    (batch, layer, group, instance, RMS norms) and embedding modules, and
    those whose name contains ``norm``, ``embed``, ``class_token`` or
    ``cls_token`` (any case) or has a component ending in ``bn`` (``bn1``,
    ``conv1_bn``): the authors' filter (``'bn/'``, ``'normalization'``,
    ``'norm'``, ``'Norm'``, ``'embed'``, ``'class_token'`` in the Keras
    variable name) translated to PyTorch's module names, with the module
    types added because PyTorch names need not say what a module is.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of (str, Parameter)

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn_ais.alignment._harmonization_loss import decay_parameters
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    >>> [name for name, _ in decay_parameters(net[:2])]
    ['0.weight', '0.bias']
    """
    skip = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NO_DECAY_TYPES):
            skip.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    out = []
    for name, p in model.named_parameters():
        lower = name.lower()
        parts = lower.split(".")[:-1]
        if (not p.requires_grad or name in skip or any(s in lower for s in _NO_DECAY_NAMES)
                or any(part.endswith("bn") or part.startswith("bn") and part[2:].isdigit() for part in parts)):
            continue
        out.append((name, p))
    return out


def input_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, create_graph: bool = True):
    """Channel mean of the gradient of the true-class logit with respect to the input.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(n, n_classes)``; run in its current mode.
    images : Tensor of shape (n, 3, H, W)
        The network input (after preprocessing).
    labels : Tensor of shape (n,), int64
    create_graph : bool, default=True
        Keep the saliency in the graph so that a loss on it trains the
        parameters (second order).

    Returns
    -------
    saliency : Tensor of shape (n, H, W)
        Signed.
    logits : Tensor of shape (n, n_classes)
    """
    x = images.detach().requires_grad_(True)
    logits = model(x)
    picked = logits.gather(1, labels[:, None]).sum()
    (grad,) = torch.autograd.grad(picked, x, create_graph=create_graph)
    return grad.mean(dim=1), logits


def harmonization_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target_maps: torch.Tensor,
    tokens: torch.Tensor | None = None,
    *,
    map_weight: float = 1.0,
    label_smoothing: float = 0.1,
    weight_decay: float = 1e-5,
    n_levels: int = 5,
    parameters=None,
    return_parts: bool = False,
):
    """The harmonization loss of one batch (second order; differentiate it with ``backward``).

    See the module documentation for every step and where the authors' code
    is followed over the paper.

    Parameters
    ----------
    model : nn.Module
        Images -> logits. Run in its current mode (the trainer uses
        ``model.train()``, as the authors' ``model(images, training=True)``).
    images : Tensor of shape (n, 3, H, W)
        Network input (preprocessed).
    labels : Tensor of shape (n,)
        Class indices (int64).
    target_maps : Tensor of shape (n, H, W)
        Human (or AIS) importance maps on the network input's grid; any
        values where ``tokens`` is 0.
    tokens : Tensor of shape (n,) or None, default=None
        1 where an image has a target map, 0 where not; None = all 1.
    map_weight : float, default=1.0
        Weight of the map term (``lambda_harmonization``); 0 = plain
        fine-tuning with label smoothing and weight decay.
    label_smoothing : float, default=0.1
    weight_decay : float, default=1e-5
        Weight of ``sum ||theta||^2 / 2`` over :func:`decay_parameters`.
    n_levels : int, default=5
        Pyramid levels (level 0 = full resolution).
    parameters : list of Tensor, optional
        The decayed parameters; default :func:`decay_parameters` of ``model``.
    return_parts : bool, default=False
        Also return a dict with ``cross_entropy``, ``map_term``,
        ``weight_term`` (floats), ``logits`` (detached) and ``saliency``
        (detached, before standardisation; None when ``map_weight=0``: it
        is not computed).

    Returns
    -------
    loss : Tensor (scalar)
    parts : dict
        Only with ``return_parts=True``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_ais.alignment import harmonization_loss
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))
    >>> x, y, maps = torch.randn(2, 3, 16, 16), torch.tensor([0, 2]), torch.rand(2, 16, 16)
    >>> loss = harmonization_loss(net, x, y, maps)
    >>> loss.backward()
    >>> net[0].weight.grad.shape
    torch.Size([4, 3, 3, 3])
    """
    labels = labels.to(device=images.device, dtype=torch.int64)
    if map_weight != 0:
        saliency, logits = input_saliency(model, images, labels, create_graph=True)
    else:  # plain fine-tuning: no saliency is needed
        saliency, logits = None, model(images)
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss = ce
    if map_weight != 0:
        s = standardize_cut(saliency.float() if saliency.dtype in (torch.float16, torch.bfloat16) else saliency)
        h = standardize_cut(target_maps.to(device=s.device, dtype=s.dtype))
        h = rescale_to(h, s)
        t = None if tokens is None else tokens.to(device=s.device, dtype=s.dtype)
        map_term = pyramidal_mse(s, h, t, n_levels)
        loss = loss + map_weight * map_term
    else:
        map_term = torch.zeros((), dtype=ce.dtype, device=ce.device)
    if weight_decay:
        params = [p for _, p in decay_parameters(model)] if parameters is None else list(parameters)
        weight_term = sum(p.square().sum() for p in params) / 2 if params else torch.zeros((), device=ce.device)
        loss = loss + weight_decay * weight_term
    else:
        weight_term = torch.zeros((), dtype=ce.dtype, device=ce.device)
    if return_parts:
        return loss, {"cross_entropy": float(ce.detach()), "map_term": float(map_term.detach()),
                      "weight_term": float(torch.as_tensor(weight_term).detach()), "logits": logits.detach(),
                      "saliency": None if saliency is None else saliency.detach()}
    return loss


def clickme_kernel(size: int = 10, sigma: float = 10.0) -> np.ndarray:
    """The authors' ClickMe blur kernel (``common/blur.py``), as a (size, size) array.

    ``exp(-(x^2 + y^2) / (2 sigma^2))``, normalised to sum 1, with the code's
    offsets: for the default even size 10, ``x = -5..4`` across the columns
    and ``y = 4..-5`` down the rows, so the peak sits at row 4, column 5.

    Parameters
    ----------
    size : int, default=10
    sigma : float, default=10.0

    Returns
    -------
    ndarray of shape (size, size), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment._harmonization_loss import clickme_kernel
    >>> k = clickme_kernel()
    >>> np.unravel_index(k.argmax(), k.shape), bool(np.isclose(k.sum(), 1.0))
    ((np.int64(4), np.int64(5)), True)
    """
    # The code's ranges, with Python's floor division: -(size - 1) // 2 is -5 for size 10.
    x = np.arange(-(size - 1) // 2, (size - 1) // 2 + 1)
    y = np.arange((size - 1) // 2, -(size - 1) // 2 - 1, -1)
    X, Y = np.meshgrid(x, y)
    k = np.exp(-(X**2 + Y**2) / (2.0 * sigma**2))
    return k / k.sum()


def clickme_blur(maps: torch.Tensor, size: int = 10, sigma: float = 10.0) -> torch.Tensor:
    """Blur (n, h, w) maps as the authors' ClickMe loader does.

    A cross-correlation with :func:`clickme_kernel` and TensorFlow's
    ``"SAME"`` zero padding (4 before, 5 after for size 10), so the borders
    darken and, with the even kernel, the result is centred half a pixel off.

    Parameters
    ----------
    maps : Tensor of shape (n, h, w)
    size : int, default=10
    sigma : float, default=10.0

    Returns
    -------
    Tensor of shape (n, h, w)
    """
    k = torch.as_tensor(clickme_kernel(size, sigma), dtype=maps.dtype, device=maps.device)[None, None]
    top, bottom = tf_same_padding(maps.shape[-2], size, 1)
    left, right = tf_same_padding(maps.shape[-1], size, 1)
    return F.conv2d(F.pad(maps[:, None], (left, right, top, bottom)), k)[:, 0]
