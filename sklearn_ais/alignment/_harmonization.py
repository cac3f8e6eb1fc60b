"""Harmonization training: fine-tune a network so that its gradient saliency matches importance maps.

:class:`Harmonizer` trains any backbone the package supports with
:func:`~sklearn_ais.alignment.harmonization_loss` (Fel et al., 2022) on images,
class labels and one target map per image (human ClickMe-style maps, object
masks, or the package's own AIS heatmaps), and returns the fine-tuned network
as a :class:`~sklearn_ais.backbones.Backbone` that
:class:`~sklearn_ais.DNNFeatureMapTransformer` takes as its ``backbone``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import time
import warnings
from contextlib import contextmanager
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .._device import resolve_device
from .._feature_alignment import feature_alignment_score
from .._heatmaps import AISHeatmapper
from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..backbones._preprocess import as_image_source
from ..backbones._registry import Backbone, get_backbone
from ._harmonization_loss import clickme_blur, harmonization_loss

__all__ = ["Harmonizer", "prepare_target_maps"]

_MAP_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")
_CHECKPOINT_VERSION = 1


# -- target maps ---------------------------------------------------------------
def _read_map_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        m = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            m = np.asarray(im.convert("F") if im.mode not in ("L", "I;16", "I", "F") else im, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 3 and m.shape[-1] in (1, 3, 4):
        m = m[..., :3].mean(axis=-1)
    if m.ndim != 2:
        raise ValueError(f"target map {path} must be a 2-D array (h, w), got shape {m.shape}")
    return m


def _maps_from_folder(folder, ids) -> list:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"maps folder {folder} does not exist")
    if ids is None:
        raise ValueError(
            "maps is a folder, but the images have no ids to match files by: pass image paths, or ids=... to fit"
        )
    by_stem = {}
    for p in folder.iterdir():
        if p.suffix.lower() in _MAP_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(p)
    out = []
    for i in ids:
        stem = Path(str(i)).stem
        found = sorted(by_stem.get(stem, []), key=lambda p: _MAP_SUFFIXES.index(p.suffix.lower()))
        out.append(_read_map_file(found[0]) if found else None)
    if all(m is None for m in out):
        raise ValueError(f"no map file in {folder} matches an image id (looked for <id>.npy / <id>.png, e.g. "
                         f"{Path(str(ids[0])).stem}.npy)")
    return out


def _as_map_list(maps, n) -> list:
    if isinstance(maps, np.ndarray) or isinstance(maps, torch.Tensor):
        arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else maps
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise ValueError(f"maps must have shape (n_images, h, w), got {arr.shape}")
        items = list(arr)
    else:
        items = list(maps)
    if len(items) != n:
        raise ValueError(f"maps has {len(items)} entries but there are {n} images")
    out = []
    for i, m in enumerate(items):
        if m is None:
            out.append(None)
            continue
        m = np.asarray(m, dtype=np.float64)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.ndim != 2 or 0 in m.shape:
            raise ValueError(f"map {i} must be a non-empty 2-D array (h, w), got shape {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError(f"map {i} contains NaN or inf (give None, or map_mask=False, for an image without a map)")
        out.append(m)
    return out


def _to_input_grid(m: np.ndarray, geometry, input_size, preprocessing) -> np.ndarray:
    """One map covering the original image -> the network input's grid (the image's resize and crop)."""
    x = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    if preprocessing == "clickme":
        # The authors' ClickMe loader: bilinear resize to 64 x 64 (no antialiasing), their Gaussian blur.
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        x = clickme_blur(x[:, 0])[:, None]
    _, _, rh, rw, top, left = (int(g) for g in geometry)
    shrink = rh < x.shape[-2] or rw < x.shape[-1]
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False,
                      antialias=shrink and preprocessing != "clickme")
    H, W = input_size
    return x[0, 0, top:top + H, left:left + W].numpy()


def prepare_target_maps(maps, geometry, input_size, *, preprocessing=None, map_mask=None):
    """Target maps of the original images, brought onto the network input's grid.

    Each map is taken to cover its whole image: it is resized (bilinear) to
    the image's resized size and cropped as the image was (``geometry``
    from :meth:`Backbone.preprocess`).

    Parameters
    ----------
    maps : list of (2-D array or None)
        None = the image has no map.
    geometry : ndarray of shape (n, 6)
    input_size : (int, int)
    preprocessing : {None, "clickme"}, default=None
        ``"clickme"``: first resize to 64 x 64 and blur as the authors'
        ClickMe loader (:func:`~sklearn_ais.alignment._harmonization_loss.clickme_blur`),
        then resize to the image (no antialiasing, as theirs).
    map_mask : array-like of bool of shape (n,), optional
        False = ignore the image's map (token 0).

    Returns
    -------
    targets : ndarray of shape (n, H, W), float32
        Zeros where an image has no map.
    tokens : ndarray of shape (n,), float32
        1 where an image has a map, else 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais.alignment._harmonization import prepare_target_maps
    >>> geometry = np.array([[8, 8, 4, 4, 0, 0]])
    >>> t, tok = prepare_target_maps([np.ones((8, 8))], geometry, (4, 4))
    >>> t.shape, tok
    ((1, 4, 4), array([1.], dtype=float32))
    """
    n = len(maps)
    H, W = input_size
    targets = np.zeros((n, H, W), dtype=np.float32)
    tokens = np.zeros(n, dtype=np.float32)
    keep = np.ones(n, dtype=bool) if map_mask is None else np.asarray(map_mask, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"map_mask must have shape ({n},), got {keep.shape}")
    for i, m in enumerate(maps):
        if m is None or not keep[i]:
            continue
        targets[i] = _to_input_grid(m, geometry[i], (H, W), preprocessing)
        tokens[i] = 1.0
    if not tokens.any():
        raise ValueError("no image has a target map")
    return targets, tokens


# -- helpers -------------------------------------------------------------------
def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _state_sha(model: nn.Module) -> str:
    return _sha(*[v.detach().cpu().float().numpy() for v in model.state_dict().values()])


def _last_linear(model: nn.Module):
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    return last


def _set_module(model: nn.Module, name: str, new: nn.Module):
    parent = model
    *path, leaf = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, new)


@contextmanager
def _deterministic(on: bool):
    if not on:
        yield
        return
    was = torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.benchmark = bench


def _seed(random_state, *salt) -> int:
    base = 0 if random_state is None else int(random_state)
    return int.from_bytes(hashlib.sha256(repr((base, *salt)).encode()).digest()[:4], "little")


def _save_atomic(obj, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_device(v, device) for v in state)
    return state


# -- the trainer ---------------------------------------------------------------
class Harmonizer(BaseEstimator):
    """Fine-tune a network with the harmonization loss (Fel et al., 2022).

    The loss (:func:`~sklearn_ais.alignment.harmonization_loss`) is the
    label-smoothed cross-entropy of the class labels, plus ``map_weight``
    times the multi-scale distance between the network's gradient saliency
    and the target maps, plus weight decay; it is second order (the saliency
    is a gradient kept in the graph), so a step costs about three times a
    plain fine-tuning step.

    Parameters
    ----------
    backbone : str, nn.Module or Backbone, default="efficientnet_lite0"
        As for :class:`~sklearn_ais.DNNFeatureMapTransformer` (a name, any
        module with ``layer``, or a Backbone). Never modified: ``fit`` trains
        a copy. The module must return logits.
    weights : str, path, mapping or None, default="DEFAULT"
        As for :func:`~sklearn_ais.backbones.get_backbone`.
    layer : str, optional
        Feature-map layer of the fitted :attr:`model_` (default: the
        architecture's).
    epochs : int, default=10
    lr : float, default=1e-4
    optimizer : {"adam", "sgd"}, default="adam"
        Adam, or SGD with momentum 0.9. The weight decay is part of the loss
        (as in the authors' code), not of the optimiser.
    batch_size : int, default=16
    map_weight : float, default=1.0
        Weight of the map term; 0 = plain fine-tuning (the control).
    label_smoothing : float, default=0.1
    weight_decay : float, default=1e-5
    n_levels : int, default=5
        Levels of the Gaussian pyramid (level 0 = full resolution).
    map_preprocessing : {None, "clickme"}, default=None
        ``"clickme"``: maps are resized to 64 x 64 and blurred with the
        authors' ClickMe kernel (10 x 10, sigma 10) before they are brought
        to the network input, as their loader does.
    classifier : {"auto", "keep", "new"}, default="auto"
        ``"keep"``: the labels are indices of the network's outputs.
        ``"new"``: the last ``nn.Linear`` is replaced by a new one with one
        output per distinct label (initialised from ``random_state``).
        ``"auto"``: keep when every label is an integer index of the
        network's outputs, else new.
    validation_fraction : float or None, default=0.1
        Fraction of the images held out (stratified by label when possible)
        to stop early on: after each epoch the validation loss (cross-entropy
        + ``map_weight`` x map term, network in eval mode) is computed, the
        weights of the best epoch are kept, and training stops after
        ``n_iter_no_change`` epochs without an improvement larger than
        ``tol``. None: no validation split, every epoch is run, the last
        weights are kept.
    n_iter_no_change : int, default=3
    tol : float, default=0.0
    checkpoint : str, path or None, default=None
        File written atomically after every epoch (weights, optimiser state,
        history, early-stopping state). A fit that finds a checkpoint of the
        same settings, data and starting weights resumes after its last
        finished epoch (in deterministic CPU mode to the same final weights
        as an uninterrupted fit); one of other settings or data is refused.
        ``epochs``, ``verbose``, ``device`` and ``checkpoint`` itself may
        change between the runs (a larger ``epochs`` continues a finished
        fit).
    device : str, default="auto"
    amp : bool, default=False
        Mixed precision (bfloat16 autocast). Off by default: the map term
        differentiates a gradient, and reduced precision makes it noisy.
    deterministic : bool, default=False
        ``torch.use_deterministic_algorithms(True)`` (and no cuDNN
        benchmarking) during ``fit``; on a GPU also sets
        ``CUBLAS_WORKSPACE_CONFIG`` if unset. Restored afterwards.
    verbose : int, default=0
        > 0: a progress bar over the training steps; > 1: one line per epoch.
    random_state : int or None, default=0
        Seeds the validation split, the batch order, a new classifier and any
        dropout (each epoch from its own seed, so that a resumed fit draws
        what the uninterrupted one did). The global random states are left
        untouched.

    Attributes
    ----------
    model_ : Backbone
        The fine-tuned network (on the CPU, eval mode), with the original
        layer, head and preprocessing: ``DNNFeatureMapTransformer(backbone=
        harmonizer.model_)`` extracts its feature maps.
    initial_model_ : Backbone
        The network before fine-tuning (with the new classifier, if any).
    classes_ : ndarray
        The labels, in the order of the network's outputs.
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``cross_entropy``, ``map_term``,
        ``weight_term`` (training means), ``val_loss``, ``val_accuracy``
        (NaN without a validation split) and ``seconds``.
    best_epoch_ : int
        Epoch (1-based) whose weights :attr:`model_` holds.
    n_epochs_ : int
        Epochs run (including those of a resumed checkpoint).
    resumed_from_ : int
        Epochs taken from a checkpoint (0: none).
    train_ids_ : ndarray or None
        Ids of the images used in fit (paths, or ``ids`` given to fit).
    new_classifier_ : bool
        Whether the last ``nn.Linear`` was replaced (see ``classifier``).

    Notes
    -----
    **AIS heatmaps as targets.** ``maps`` may be a fitted
    :class:`~sklearn_ais.AISHeatmapper`: the trainer extracts the training
    images' feature maps with the starting network and draws their
    heatmaps. The heatmapper must have been fitted on training images only.
    A per-image AIS is computed from an image's similarities to *all* the
    images in the heatmapper's fit, so a heatmapper fitted with held-out
    images carries their human judgements into the training maps: a later
    held-out 2OI or alignment with those images is then not held-out. The
    trainer refuses a heatmapper fitted on any image that is not among the
    images passed to ``fit`` (recognised by id, or by the content of their
    feature maps when there are no ids); it cannot tell for a precomputed
    heatmap array, which is accepted like any other map.

    The saliency is the gradient with respect to the *normalised* network
    input (after the backbone's preprocessing).

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_ais.alignment import Harmonizer
    >>> from sklearn_ais.backbones import get_backbone
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    >>> labels, masks = np.arange(8) % 2, rng.random((8, 16, 16))
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> bb = get_backbone(net, layer="1", input_size=16, resize_size=16)
    >>> h = Harmonizer(bb, epochs=2, batch_size=4, validation_fraction=None).fit(images, labels, maps=masks)
    >>> len(h.history_), h.model_.layer
    (2, '1')
    >>> from sklearn_ais import DNNFeatureMapTransformer
    >>> DNNFeatureMapTransformer(backbone=h.model_).fit(images).transform(images).shape
    (8, 4, 16, 16)
    """

    _parameter_constraints: dict = {
        "backbone": [str, nn.Module, Backbone],
        "weights": [None, str, os.PathLike, dict],
        "layer": [None, str],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "map_weight": [Interval(Real, 0, None, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "n_levels": [Interval(Integral, 1, None, closed="left")],
        "map_preprocessing": [None, StrOptions({"clickme"})],
        "classifier": [StrOptions({"auto", "keep", "new"})],
        "validation_fraction": [None, Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "checkpoint": [None, str, os.PathLike],
        "device": [str, torch.device],
        "amp": ["boolean"],
        "deterministic": ["boolean"],
        "freeze_norm": ["boolean"],
        "verbose": ["verbose"],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        weights="DEFAULT",
        *,
        layer=None,
        epochs=10,
        lr=1e-4,
        optimizer="adam",
        batch_size=16,
        map_weight=1.0,
        label_smoothing=0.1,
        weight_decay=1e-5,
        n_levels=5,
        map_preprocessing=None,
        classifier="auto",
        validation_fraction=0.1,
        n_iter_no_change=3,
        tol=0.0,
        checkpoint=None,
        device="auto",
        amp=False,
        deterministic=False,
        freeze_norm=False,
        verbose=0,
        random_state=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.epochs = epochs
        self.lr = lr
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.map_weight = map_weight
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.n_levels = n_levels
        self.map_preprocessing = map_preprocessing
        self.classifier = classifier
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.checkpoint = checkpoint
        self.device = device
        self.amp = amp
        self.deterministic = deterministic
        self.freeze_norm = freeze_norm
        self.verbose = verbose
        self.random_state = random_state

    # -- preparation -----------------------------------------------------------
    def _base_backbone(self) -> Backbone:
        src = self.backbone
        if isinstance(src, (nn.Module, Backbone)):
            src = copy.deepcopy(src)  # the user's network is never modified
        weights = self.weights
        if isinstance(src, str) and weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.random_state, "init"))
                return get_backbone(src, weights=None, layer=self.layer)
        return get_backbone(src, weights=weights, layer=self.layer)

    def _encode_labels(self, labels, model: nn.Module, n_outputs: int):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        is_index = labels.dtype.kind in "iu" and labels.min() >= 0 and labels.max() < n_outputs
        keep = self.classifier == "keep" or (self.classifier == "auto" and is_index)
        if keep:
            if not is_index:
                raise ValueError(f"classifier='keep' needs integer labels in [0, {n_outputs}), the network's outputs")
            return np.arange(n_outputs), labels.astype(np.int64), False
        classes, y = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("labels must have at least 2 distinct classes")
        return classes, y.astype(np.int64), True

    def _new_classifier(self, model: nn.Module, n_classes: int):
        found = _last_linear(model)
        if found is None:
            raise ValueError("classifier='new' needs an nn.Linear final layer to replace; the network has none")
        name, old = found
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.random_state, "classifier"))
            new = nn.Linear(old.in_features, n_classes, bias=old.bias is not None)
        new.to(old.weight.device, old.weight.dtype)
        _set_module(model, name, new)

    def _targets(self, maps, images, pixels, geometry, bb, ids, map_mask):
        n = len(pixels)
        if maps is None:
            if self.map_weight != 0:
                raise ValueError("maps is required when map_weight > 0 (pass map_weight=0 for plain fine-tuning)")
            return np.zeros((n,) + tuple(pixels.shape[-2:]), np.float32), np.zeros(n, np.float32)
        if isinstance(maps, AISHeatmapper):
            heat = self._ais_maps(maps, images, bb, ids)
            keep = np.ones(n, dtype=bool) if map_mask is None else np.asarray(map_mask, dtype=bool)
            return heat.astype(np.float32) * keep[:, None, None], keep.astype(np.float32)
        if isinstance(maps, (str, os.PathLike)):
            maps = _maps_from_folder(maps, ids)
        return prepare_target_maps(_as_map_list(maps, n), geometry, bb.input_size,
                                   preprocessing=self.map_preprocessing, map_mask=map_mask)

    def _ais_maps(self, heatmapper, images, bb, ids):
        """Heatmaps of the training images from a heatmapper fitted on training images only."""
        from .._feature_maps import DNNFeatureMapTransformer

        check_is_fitted(heatmapper)
        if getattr(heatmapper, "_train_signatures", None) is None:
            raise ValueError("the AISHeatmapper was fitted on a 2-D array of units: it has no maps to draw")
        fm = DNNFeatureMapTransformer(backbone=copy.deepcopy(bb), device="cpu").fit(images).transform(images)
        if ids is not None and fm.ids is None:
            fm.ids = ids
        match = heatmapper._training_match(fm)
        fitted_on = len(heatmapper.image_scores_)
        outside = np.setdiff1d(np.arange(fitted_on), match[match >= 0])
        if len(outside):
            raise ValueError(
                f"the AISHeatmapper was fitted on {len(outside)} image(s) that are not among the training images "
                f"(e.g. {heatmapper.train_ids_[outside[:3]].tolist() if heatmapper.train_ids_ is not None else outside[:3].tolist()}): "  # noqa: E501
                "per-image AIS use the human similarities to every image of that fit, so held-out images would leak "
                "into the training maps. Fit the heatmapper on the training images only"
            )
        hm = copy.copy(heatmapper)
        hm.output = "input"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # all-zero maps are standardised to zeros anyway
            heat = hm.transform(fm)
        return np.asarray(heat, dtype=np.float32)

    def _config_key(self, pixels, y, targets, tokens, model) -> str:
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in ("epochs", "verbose", "device", "checkpoint", "backbone", "weights")}
        return _sha(np.frombuffer(repr(sorted(params.items())).encode(), dtype=np.uint8),
                    pixels.numpy(), y, targets, tokens, np.frombuffer(_state_sha(model).encode(), dtype=np.uint8))

    # -- fit -------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, images, labels, maps=None, *, ids=None, map_mask=None):
        """Fine-tune the network.

        Parameters
        ----------
        images : images
            Anything :class:`~sklearn_ais.DNNFeatureMapTransformer` takes
            (paths, PIL images, arrays, tensors); preprocessed once with the
            backbone's resize, crop and normalisation (all in memory).
        labels : array-like of shape (n_images,)
            Class of each image (see ``classifier``).
        maps : array-like, list, folder, AISHeatmapper or None
            One target map per image, covering the original image (it is
            resized and cropped with the image): an array ``(n, h, w)``; a
            list of 2-D arrays or None (no map: the image counts for the
            cross-entropy only); a folder of ``<id>.npy`` / ``<id>.png``
            files matched to the images by id (the file stem of each image
            path, or of ``ids``); or a fitted
            :class:`~sklearn_ais.AISHeatmapper` (see Notes). None only with
            ``map_weight=0``.
        ids : array-like of shape (n_images,), optional
            Image ids (default: the image paths, when images are paths).
        map_mask : array-like of bool of shape (n_images,), optional
            False = ignore that image's map (the ``tokens`` of the authors'
            code).

        Returns
        -------
        self : Harmonizer
        """
        device = resolve_device(self.device)
        bb = self._base_backbone()
        source = as_image_source(images)
        ids = np.asarray(ids) if ids is not None else source.ids
        if ids is not None and len(ids) != len(source):
            raise ValueError(f"ids has {len(ids)} entries but there are {len(source)} images")
        pixels, geometry = bb.preprocess(source)
        if isinstance(pixels, list):
            raise ValueError("images of different aspect ratios with crop=False cannot be batched for training")
        model = bb.model
        with torch.no_grad():
            n_outputs = model(pixels[:1]).shape[1]
        self.classes_, y, new = self._encode_labels(labels, model, n_outputs)
        if len(y) != len(pixels):
            raise ValueError(f"labels has {len(y)} entries but there are {len(pixels)} images")
        if new:
            self._new_classifier(model, len(self.classes_))
        targets, tokens = self._targets(maps, images, pixels, geometry, bb, ids, map_mask)
        self.train_ids_ = ids
        self.new_classifier_ = new
        self.initial_model_ = self._as_backbone(bb, copy.deepcopy(model))
        with _deterministic(self.deterministic):
            self._train(bb, model, pixels, y, targets, tokens, device)
        return self

    def _split(self, y):
        n = len(y)
        idx = np.arange(n)
        if self.validation_fraction is None:
            return idx, idx[:0]
        seed = _seed(self.random_state, "split")
        try:
            return train_test_split(idx, test_size=self.validation_fraction, random_state=seed % (2**31), stratify=y)
        except ValueError:  # too few images of a class to stratify
            return train_test_split(idx, test_size=self.validation_fraction, random_state=seed % (2**31))

    def _train_mode(self, model):
        model.train()
        if self.freeze_norm:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _make_optimizer(self, model):
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        return torch.optim.Adam(params, lr=self.lr)

    def _loss(self, model, x, yb, tb, kb, device, **kw):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(self.amp)):
            return harmonization_loss(
                model, x, yb, tb, kb, map_weight=self.map_weight, label_smoothing=self.label_smoothing,
                n_levels=self.n_levels, **kw)

    def _validate(self, model, pixels, y, targets, tokens, idx, device):
        if len(idx) == 0:
            return np.nan, np.nan
        model.eval()
        total, correct = 0.0, 0
        for start in range(0, len(idx), self.batch_size):
            b = idx[start:start + self.batch_size]
            x, yb = pixels[b].to(device), torch.from_numpy(y[b]).to(device)
            loss, parts = self._loss(model, x, yb, torch.from_numpy(targets[b]).to(device),
                                     torch.from_numpy(tokens[b]).to(device), device, weight_decay=0.0,
                                     return_parts=True)
            total += float(loss.detach()) * len(b)
            correct += int((parts["logits"].argmax(1) == yb).sum())
        return total / len(idx), correct / len(idx)

    def _train(self, bb, model, pixels, y, targets, tokens, device):
        model.to(device)
        opt = self._make_optimizer(model)
        train_idx, val_idx = self._split(y)
        key = self._config_key(pixels, y, targets, tokens, model)
        ckpt = Path(self.checkpoint) if self.checkpoint is not None else None
        state = {"epoch": 0, "best_loss": np.inf, "best_epoch": 0, "bad": 0, "stopped": False, "history": [],
                 "best": None}
        if ckpt is not None and ckpt.exists():
            saved = torch.load(ckpt, map_location="cpu", weights_only=False)
            if saved.get("version") != _CHECKPOINT_VERSION or saved.get("key") != key:
                raise ValueError(
                    f"checkpoint {ckpt} was written by a fit with other settings, data or starting weights; "
                    "delete it or choose another checkpoint path"
                )
            model.load_state_dict(saved["model"])
            opt.load_state_dict(_to_device(saved["optimizer"], device))
            state = saved["state"]
        self.resumed_from_ = state["epoch"]
        steps = -(-len(train_idx) // self.batch_size)
        remaining = 0 if state["stopped"] else max(self.epochs - state["epoch"], 0)
        bar = tqdm(total=remaining * steps, disable=not self.verbose, desc="harmonization", unit="step")
        try:
            for epoch in range(state["epoch"], state["epoch"] + remaining):
                t0 = time.perf_counter()
                order = np.random.default_rng(_seed(self.random_state, "order", epoch)).permutation(train_idx)
                sums = np.zeros(4)
                self._train_mode(model)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(_seed(self.random_state, "epoch", epoch))
                    for start in range(0, len(order), self.batch_size):
                        b = order[start:start + self.batch_size]
                        x, yb = pixels[b].to(device), torch.from_numpy(y[b]).to(device)
                        loss, parts = self._loss(model, x, yb, torch.from_numpy(targets[b]).to(device),
                                                 torch.from_numpy(tokens[b]).to(device), device,
                                                 weight_decay=self.weight_decay, return_parts=True)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"the loss became {float(loss)} at epoch {epoch + 1}; lower lr")
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sums += len(b) * np.array([float(loss.detach()), parts["cross_entropy"], parts["map_term"],
                                                   parts["weight_term"]])
                        bar.update(1)
                val_loss, val_acc = self._validate(model, pixels, y, targets, tokens, val_idx, device)
                means = [float(v) for v in sums / len(order)]
                val_loss, val_acc = float(val_loss), float(val_acc)
                record = {"epoch": epoch + 1, "loss": means[0], "cross_entropy": means[1], "map_term": means[2],
                          "weight_term": means[3], "val_loss": val_loss, "val_accuracy": val_acc,
                          "seconds": time.perf_counter() - t0}
                state["history"].append(record)
                state["epoch"] = epoch + 1
                if len(val_idx):
                    if val_loss < state["best_loss"] - self.tol:
                        state.update(best_loss=val_loss, best_epoch=epoch + 1, bad=0, best=_cpu_state(model))
                    else:
                        state["bad"] += 1
                        state["stopped"] = state["bad"] >= self.n_iter_no_change
                if self.verbose > 1:
                    bar.write(f"epoch {epoch + 1}: loss {means[0]:.4f} (ce {means[1]:.4f}, maps {means[2]:.4g}), "
                              f"val loss {val_loss:.4f}, val acc {val_acc:.3f}")
                if ckpt is not None:
                    _save_atomic({"version": _CHECKPOINT_VERSION, "key": key, "model": _cpu_state(model),
                                  "optimizer": _to_device(opt.state_dict(), "cpu"), "state": state}, ckpt)
                if state["stopped"]:
                    break
        finally:
            bar.close()
        if len(val_idx) and state["best"] is not None:
            model.load_state_dict(state["best"])
            self.best_epoch_ = state["best_epoch"]
        else:
            self.best_epoch_ = state["epoch"]
        self.history_ = state["history"]
        self.n_epochs_ = state["epoch"]
        self.model_ = self._as_backbone(bb, model.cpu())

    def _as_backbone(self, bb: Backbone, model: nn.Module) -> Backbone:
        model.eval()
        base = Backbone(bb.name, model, bb.layer, bb.head, **{k: getattr(bb, k) for k in (
            "input_size", "resize_size", "interpolation", "mean", "std", "crop")},
            weights=bb.weights, categories=[str(c) for c in self.classes_], weights_source=bb.weights_source)
        # Rebuilds a head that holds copies of the weights (VGG's fc6-fc7) from the trained ones.
        return get_backbone(base, weights={k: v.detach().clone() for k, v in model.state_dict().items()})

    # -- use -------------------------------------------------------------------
    def _pixels(self, images, model: Backbone):
        pixels, geometry = model.preprocess(images)
        if isinstance(pixels, list):
            raise ValueError("images of different aspect ratios with crop=False cannot be batched")
        return pixels, geometry

    def predict(self, images):
        """Predicted label of each image.

        Parameters
        ----------
        images : images

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        check_is_fitted(self, "model_")
        return self.classes_[self._logits(self.model_, self._pixels(images, self.model_)[0]).argmax(1)]

    def _logits(self, model: Backbone, pixels) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                out.append(model.model(pixels[start:start + self.batch_size]).float().numpy())
        return np.concatenate(out)

    def score(self, images, labels):
        """Top-1 accuracy on ``labels``.

        Parameters
        ----------
        images : images
        labels : array-like of shape (n_images,)

        Returns
        -------
        accuracy : float
        """
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def _label_index(self, labels):
        labels = np.asarray(labels)
        pos = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = [v for v in labels.tolist() if v not in pos]
        if unknown:
            raise ValueError(f"labels not seen in fit: {sorted(set(map(str, unknown)))[:5]}")
        return np.array([pos[v] for v in labels.tolist()], dtype=np.int64)

    def saliency_maps(self, images, labels=None, *, model="fitted"):
        """Gradient saliency of the network input: ``max_c |d logit_y / d x_c|``.

        The maps the authors score against ClickMe (Xplique's ``Saliency``),
        on the network input's grid.

        Parameters
        ----------
        images : images
        labels : array-like of shape (n_images,), optional
            Class whose logit is explained; default: the predicted class.
        model : {"fitted", "initial"}, default="fitted"
            :attr:`model_` or :attr:`initial_model_`.

        Returns
        -------
        maps : ndarray of shape (n_images, H, W)
        """
        check_is_fitted(self, "model_")
        bb = self.model_ if model == "fitted" else self.initial_model_
        pixels, _ = self._pixels(images, bb)
        y = None if labels is None else self._label_index(labels)
        out = []
        net = bb.model.eval()
        for start in range(0, len(pixels), self.batch_size):
            x = pixels[start:start + self.batch_size].clone().requires_grad_(True)
            logits = net(x)
            target = logits.argmax(1) if y is None else torch.from_numpy(y[start:start + len(x)])
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
            out.append(g.abs().amax(dim=1).numpy())
        return np.concatenate(out)

    def evaluate(self, images, labels, maps=None, similarity=None, *, ids=None, map_mask=None):
        """Held-out evaluation of the network before and after fine-tuning.

        Parameters
        ----------
        images : images
            Held-out images (not used in ``fit``).
        labels : array-like of shape (n_images,)
        maps : as in :meth:`fit` except an AISHeatmapper (draw the held-out
            heatmaps yourself), optional
            Target maps: the feature alignment score of the saliency maps
            (:meth:`saliency_maps` of the true class) against them.
        similarity : array-like of shape (n_images, n_images), optional
            Human similarity of the held-out images: the 2OI of the
            network's embedding (``DNNFeatureMapTransformer(backbone=model)``).
        ids, map_mask : as in :meth:`fit`

        Returns
        -------
        scores : dict
            ``{"before": {...}, "after": {...}}``, each with ``accuracy``
            (NaN before when the classifier is new: it is untrained),
            ``feature_alignment`` and ``2OI`` where their targets are given.
        """
        from ..metrics import alignment_score
        from .._feature_maps import DNNFeatureMapTransformer

        check_is_fitted(self, "model_")
        source = as_image_source(images)
        ids = np.asarray(ids) if ids is not None else source.ids
        if self.train_ids_ is not None and ids is not None and np.isin(ids, self.train_ids_).any():
            warnings.warn(f"{int(np.isin(ids, self.train_ids_).sum())} image(s) of evaluate were used in fit",
                          UserWarning, stacklevel=2)
        y = self._label_index(labels)
        pixels, geometry = self._pixels(source, self.model_)
        targets = None
        if maps is not None:
            if isinstance(maps, AISHeatmapper):
                raise TypeError("evaluate takes held-out target maps as arrays or files, not an AISHeatmapper")
            if isinstance(maps, (str, os.PathLike)):
                maps = _maps_from_folder(maps, ids)
            targets, tokens = prepare_target_maps(_as_map_list(maps, len(pixels)), geometry, self.model_.input_size,
                                                  preprocessing=self.map_preprocessing, map_mask=map_mask)
        out = {}
        for which, bb in (("before", self.initial_model_), ("after", self.model_)):
            logits = self._logits(bb, pixels)
            res = {"accuracy": float(np.mean(logits.argmax(1) == y))}
            if which == "before" and self.new_classifier_:
                res["accuracy"] = float("nan")
            if targets is not None:
                sal = self.saliency_maps(source, self.classes_[y], model="fitted" if which == "after" else "initial")
                keep = tokens > 0
                res["feature_alignment"] = feature_alignment_score(targets[keep], sal[keep], ceiling="none")
            if similarity is not None:
                emb = DNNFeatureMapTransformer(backbone=copy.deepcopy(bb), device="cpu").fit(source).transform(
                    source).embed()
                res["2OI"] = alignment_score(emb, np.asarray(similarity, dtype=np.float64))
            out[which] = res
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = not self.deterministic
        return tags
