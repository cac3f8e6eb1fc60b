"""Unit pruning companions (Tarigopula et al., 2023): classification agreement and occlusion maps.

Pruning penultimate units is :class:`~sklearn_ais.AISSelector` fitted on the
2-D embedding matrix (``FeatureMaps.embed()``), with the identity head:
ablating unit k sets column k to 0. This module adds the two analyses the
paper reports beside it:

* :func:`classification_agreement`: does the network still classify the
  images as before once the pruned units are zeroed in front of its
  classifier?
* :func:`occlusion_heatmaps`: an image-space baseline, where occluding a
  patch hurts the agreement of the image's similarity row with the human row.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._containers import FeatureMaps
from .._similarity import COMPARISONS, SIMILARITIES, TargetVector, standardize_rows
from .._sklearn_compat import Interval, StrOptions, validate_params
from .._targets import Y_KINDS, check_similarity_target
from .._validation import as_feature_mask
from ..backbones._heads import MLPHead
from ..backbones._registry import Backbone

__all__ = ["classification_agreement", "occlusion_heatmaps", "penultimate_classifier"]


# ---------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------
def _resolve_backbone(obj) -> Backbone:
    """A :class:`Backbone` from a Backbone, a (fitted or not) DNNFeatureMapTransformer or a name."""
    if isinstance(obj, Backbone):
        return obj
    if isinstance(obj, str):
        from ..backbones import get_backbone

        return get_backbone(obj)
    if hasattr(obj, "backbone") and hasattr(obj, "fit") and hasattr(obj, "transform"):
        if not hasattr(obj, "backbone_"):
            obj.fit(None)
        check_is_fitted(obj, "backbone_")
        return obj.backbone_
    raise TypeError(
        f"expected a Backbone, a DNNFeatureMapTransformer or a registered backbone name, got {type(obj).__name__}"
    )


def _last_linear(module) -> nn.Linear | None:
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Sequential):
        linears = [m for m in module if isinstance(m, nn.Linear)]
        others = [m for m in module if not isinstance(m, (nn.Linear, nn.Dropout, nn.Identity, nn.Flatten))]
        if len(linears) == 1 and not others:
            return linears[0]
    return None


def penultimate_classifier(backbone) -> nn.Module:
    """The layer that turns the backbone's embedding into ImageNet logits.

    The embedding is the head's output (:meth:`FeatureMaps.embed`): the
    globally pooled features for pooling heads (ResNet, EfficientNet,
    DenseNet, RegNet, Inception), fc7 after its ReLU for VGG. Dropout is
    inactive at inference, so the classifier is a single linear layer:

    * VGG (:class:`~sklearn_ais.backbones.MLPHead`): ``model.classifier[-1]`` (fc8);
    * timm models: ``model.get_classifier()``;
    * torchvision: ``model.fc`` (ResNet, ResNeXt, RegNet, Inception) or
      ``model.classifier`` (DenseNet; EfficientNet's ``Dropout, Linear``).

    Parameters
    ----------
    backbone : Backbone, DNNFeatureMapTransformer or str

    Returns
    -------
    classifier : torch.nn.Linear
        In eval mode, shared with the backbone's model (not copied).

    Raises
    ------
    ValueError
        No linear classifier is found whose input size matches the
        embedding; pass custom heads' logits yourself.

    Examples
    --------
    >>> from sklearn_ais.backbones import get_backbone
    >>> from sklearn_ais.alignment import penultimate_classifier
    >>> penultimate_classifier(get_backbone("efficientnet_lite0", weights=None))
    Linear(in_features=1280, out_features=1000, bias=True)
    """
    bb = _resolve_backbone(backbone)
    model = bb.model
    candidates = []
    if isinstance(bb.head, MLPHead):
        cls = getattr(model, "classifier", None)
        if isinstance(cls, nn.Sequential) and len(cls) and isinstance(cls[-1], nn.Linear):
            candidates.append(cls[-1])
    else:
        if hasattr(model, "get_classifier"):
            try:
                candidates.append(_last_linear(model.get_classifier()))
            except Exception:  # pragma: no cover - exotic timm models
                pass
        for attr in ("fc", "classifier", "head", "last_linear"):
            candidates.append(_last_linear(getattr(model, attr, None)))
    candidates = [c for c in candidates if c is not None]
    if not candidates:
        raise ValueError(
            f"no linear classifier found on {bb.name}: penultimate_classifier knows VGG (fc8), timm models "
            "(get_classifier()) and torchvision models with `fc` or `classifier`"
        )
    return candidates[0].eval()


def _maps_of(bb: Backbone, images, preprocessed: bool, batch_size: int):
    if isinstance(images, FeatureMaps):
        return images.maps
    if preprocessed:
        pixels = torch.as_tensor(images, dtype=torch.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"preprocessed pixels must have shape (n, 3, H, W), got {tuple(pixels.shape)}")
    else:
        pixels, _ = bb.preprocess(images)
    out = []
    with torch.inference_mode():
        for a in range(0, len(pixels), batch_size):
            out.append(bb.forward_maps(pixels[a : a + batch_size].to(bb.device)).float().cpu())
    return torch.cat(out).numpy()


@validate_params(
    {"preprocessed": ["boolean"], "batch_size": [Interval(Integral, 1, None, closed="left")],
     "return_predictions": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def classification_agreement(
    backbone, images, keep_units, *, preprocessed=False, batch_size=32, return_predictions=False
):
    """Agreement of top-1 ImageNet predictions with and without the pruned units.

    The penultimate units (the embedding of :meth:`FeatureMaps.embed`: the
    pooled features for pooling heads, fc7 after its ReLU for VGG) outside
    ``keep_units`` are set to 0 in front of the classifier
    (:func:`penultimate_classifier`); the agreement is the fraction of images
    whose top-1 class is unchanged (Tarigopula et al., 2023).

    Parameters
    ----------
    backbone : Backbone, DNNFeatureMapTransformer or str
        The network (a transformer is fitted if needed).
    images : images, preprocessed pixels or FeatureMaps
        Anything :meth:`Backbone.preprocess` accepts; a tensor or array of
        network inputs ``(n, 3, H, W)`` with ``preprocessed=True``; or the
        :class:`~sklearn_ais.FeatureMaps` of this backbone (no forward pass).
    keep_units : array-like of bool of shape (n_units,), array of int, or fitted selector
        Units kept (e.g. ``AISSelector().fit(fm.embed(), H)``, whose
        ``get_support()`` is used).
    preprocessed : bool, default=False
        ``images`` are already normalised network inputs.
    batch_size : int, default=32
    return_predictions : bool, default=False
        Also return both top-1 predictions.

    Returns
    -------
    agreement : float
        In [0, 1].
    top1_intact, top1_pruned : ndarray of shape (n_images,), int
        Only with ``return_predictions=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.backbones import get_backbone
    >>> from sklearn_ais.alignment import classification_agreement
    >>> bb = get_backbone("efficientnet_lite0", weights=None, input_size=32, resize_size=32)
    >>> images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    >>> classification_agreement(bb, images, np.ones(1280, dtype=bool))
    1.0
    """
    bb = _resolve_backbone(backbone)
    maps = _maps_of(bb, images, preprocessed, batch_size)
    classifier = penultimate_classifier(bb)
    dev = next(classifier.parameters()).device
    intact, pruned = [], []
    keep_t = None
    with torch.inference_mode():
        for a in range(0, len(maps), batch_size):
            E = bb.head(torch.as_tensor(maps[a : a + batch_size]), device=dev)
            if keep_t is None:
                if E.shape[1] != classifier.in_features:
                    raise ValueError(
                        f"the head gives {E.shape[1]} units but the classifier reads {classifier.in_features}"
                    )
                keep_t = torch.as_tensor(as_feature_mask(keep_units, E.shape[1], "keep_units"), device=dev)
            intact.append(classifier(E).argmax(1).cpu())
            pruned.append(classifier(E * keep_t).argmax(1).cpu())
    top1, top1_pruned = torch.cat(intact).numpy(), torch.cat(pruned).numpy()
    agreement = float(np.mean(top1 == top1_pruned))
    if return_predictions:
        return agreement, top1, top1_pruned
    return agreement


# ---------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------
def _pair(v, name):
    t = tuple(int(x) for x in np.broadcast_to(np.asarray(v), (2,)))
    if min(t) < 1:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return t


def _positions(size, window, stride):
    last = size - window
    pos = list(range(0, last + 1, stride))
    if pos[-1] != last:
        pos.append(last)  # cover the far border
    return pos


def _embed_pixels(bb, pixels, batch_size):
    out = []
    with torch.inference_mode():
        for a in range(0, len(pixels), batch_size):
            maps = bb.forward_maps(pixels[a : a + batch_size].to(bb.device))
            out.append(bb.head(maps.float()).double().cpu())
    return torch.cat(out)


@validate_params(
    {"fill": [Real], "similarity": [StrOptions(set(SIMILARITIES))], "comparison": [StrOptions(set(COMPARISONS))],
     "y_kind": [StrOptions(set(Y_KINDS))], "batch_size": [Interval(Integral, 1, None, closed="left")],
     "output": [StrOptions({"original", "resized", "input"})]},
    prefer_skip_nested_validation=True,
)
def occlusion_heatmaps(
    transformer,
    images,
    y_similarity,
    window=None,
    stride=None,
    *,
    fill=0.0,
    similarity="pearson",
    comparison="spearman",
    y_kind="similarity",
    batch_size=32,
    output="original",
):
    """Mask-sweep occlusion maps: where hiding a patch hurts the image's alignment.

    For image ``t``, a ``window`` patch of the network input is replaced by
    ``fill`` at every position of a grid with step ``stride``; the occluded
    image is embedded, its similarity row to the other (intact) images is
    recomputed and correlated with the human row ``y[t, others]``. The map is
    the drop of that row 2OI from the intact one, averaged over the windows
    covering each pixel, negative drops (occlusions that help) set to 0,
    divided by the image's largest value (so 0 means "no drop" and 1 the
    largest drop) and mapped back onto the original image
    (:func:`sklearn_ais._geometry.to_original`).

    Parameters
    ----------
    transformer : DNNFeatureMapTransformer, Backbone or str
    images : images
        Anything :meth:`Backbone.preprocess` accepts (n images).
    y_similarity : array-like of shape (n, n)
        Human similarity among the images (NaN = missing).
    window : int or (int, int), optional
        Patch size on the network input; default a quarter of the input side.
    stride : int or (int, int), optional
        Grid step; default half the window.
    fill : float, default=0.0
        Value of the occluded pixels in the *normalised* input (0 = the
        normalisation mean colour).
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : {"spearman", "pearson", "pearson_r2", "kendall_tau_a", "rho_a", "cosine"}, default="spearman"
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    batch_size : int, default=32
        Occluded images per forward pass.
    output : {"original", "resized", "input"}, default="original"
        Geometry of the maps (see :func:`sklearn_ais._geometry.to_original`).

    Returns
    -------
    heatmaps : ndarray of shape (n, H, W) or list of ndarray
        Values in [0, 1]; a list when the images differ in size. An image
        with fewer than 3 observed human pairs gets an all-zero map (warned).

    Notes
    -----
    Costs one forward pass per image and window position: ``n * P`` with
    ``P = ceil((224 - window) / stride + 1) ** 2`` (49 with the defaults on a
    224 px input). It is a baseline, not an efficient method.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.backbones import get_backbone
    >>> from sklearn_ais.alignment import occlusion_heatmaps
    >>> bb = get_backbone("efficientnet_lite0", weights=None, input_size=32, resize_size=32)
    >>> images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    >>> S = np.corrcoef(np.random.default_rng(1).normal(size=(5, 3)))
    >>> maps = occlusion_heatmaps(bb, images, S, window=16, stride=16)
    >>> maps.shape, bool(maps.min() >= 0 and maps.max() <= 1)
    ((5, 32, 32), True)
    """
    from .._geometry import to_original

    from ..backbones._preprocess import as_image_source

    bb = _resolve_backbone(transformer)
    source = as_image_source(images)
    H = check_similarity_target(y_similarity, len(source), y_kind, ids=source.ids)  # before any forward pass
    pixels, geometry = bb.preprocess(images)
    n, _, Hin, Win = pixels.shape
    window = _pair(window if window is not None else max(1, min(Hin, Win) // 4), "window")
    window = (min(window[0], Hin), min(window[1], Win))
    stride = _pair(stride if stride is not None else max(1, min(window) // 2), "stride")
    tops, lefts = _positions(Hin, window[0], stride[0]), _positions(Win, window[1], stride[1])
    grid = [(top, left) for top in tops for left in lefts]

    center = similarity == "pearson"
    E0 = _embed_pixels(bb, pixels, batch_size)
    E0n = standardize_rows(E0, center=center)
    heat = np.zeros((n, Hin, Win))
    coverage = np.zeros((Hin, Win))
    for top, left in grid:
        coverage[top : top + window[0], left : left + window[1]] += 1
    skipped = []
    for i in range(n):
        others = np.r_[0:i, i + 1 : n]
        row = H[i, others]
        if np.sum(~np.isnan(row)) < 3 or np.nanmax(row) == np.nanmin(row):
            skipped.append(i)
            continue
        target = TargetVector(row, comparison)
        base = float(target.correlate((E0n[i : i + 1] @ E0n[others].T).clamp(-1, 1))[0])
        occluded = pixels[i].repeat(len(grid), 1, 1, 1)
        for p, (top, left) in enumerate(grid):
            occluded[p, :, top : top + window[0], left : left + window[1]] = fill
        Eo = standardize_rows(_embed_pixels(bb, occluded, batch_size), center=center)
        scores = target.correlate((Eo @ E0n[others].T).clamp(-1, 1)).numpy()
        drop = base - scores
        acc = np.zeros((Hin, Win))
        for p, (top, left) in enumerate(grid):
            acc[top : top + window[0], left : left + window[1]] += drop[p]
        heat[i] = np.clip(acc / coverage, 0, None)
    if skipped:
        warnings.warn(
            f"{len(skipped)} image(s) have fewer than 3 observed (or only constant) human pairs; their occlusion "
            f"maps are 0 (rows {skipped[:10]})",
            UserWarning,
            stacklevel=2,
        )
    peak = heat.max(axis=(1, 2), keepdims=True)
    heat = np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)  # 0 = no drop, 1 = largest drop
    out = to_original(heat, geometry, (Hin, Win), output=output)
    if isinstance(out, list):
        return [np.clip(o, 0, 1) for o in out]
    return np.clip(out, 0, 1)
