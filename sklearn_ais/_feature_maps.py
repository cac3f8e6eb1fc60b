"""Images -> last-convolutional-layer feature maps (:class:`DNNFeatureMapTransformer`)."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import torch
from joblib import hash as joblib_hash
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, check_memory
from torch import nn
from tqdm import tqdm

from ._containers import FeatureMaps
from ._device import resolve_device
from .backbones._heads import Head
from .backbones._preprocess import as_image_source
from .backbones._registry import Backbone, get_backbone


def _state_dict_digest(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _batch_maps(pixels, config_key, extract):
    """One batch of feature maps; the unit cached by ``memory``.

    The cache key is the preprocessed pixels and ``config_key`` (backbone,
    weights, layer); ``extract`` (which holds the model) is not hashed.
    """
    return extract(pixels)


class _Extractor:
    """Runs the backbone up to its layer, moving the model to ``device`` on first use."""

    def __init__(self, backbone: Backbone, device: torch.device):
        self.backbone = backbone
        self.device = device
        self.home = backbone.device
        self.moved = False

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if not self.moved:
            self.backbone.to(self.device)
            self.moved = True
        with torch.inference_mode():
            maps = self.backbone.forward_maps(torch.from_numpy(pixels).to(self.device))
            return maps.float().cpu().numpy()

    def release(self):
        if self.moved:
            self.backbone.to(self.home)


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
        ``torch.nn.Module`` (then ``layer`` is required) or a
        :class:`~sklearn_ais.backbones.Backbone` (e.g. from
        :func:`~sklearn_ais.backbones.get_backbone` with custom
        preprocessing). Modules are copied at ``fit``, never modified.
    weights : str, path, mapping or None, default="DEFAULT"
        ``"DEFAULT"`` (or ``"imagenet"``): pretrained ImageNet weights
        (EfficientNet-Lite0 ships with the package's dependencies and works
        offline; torchvision weights are downloaded). A torchvision weights
        name (``"IMAGENET1K_V1"``), the path of a local state dict, or
        ``None`` for random initialisation seeded by ``random_state``. For a
        module or Backbone, ``"DEFAULT"`` and ``None`` keep its parameters.
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
        Cache feature maps batch by batch, keyed by the preprocessed pixels,
        backbone, weights and layer. An interrupted run resumes where it
        stopped, and cached batches never run the network.
    random_state : int, RandomState instance or None, default=0
        Seeds the random initialisation when ``weights=None`` (an int ``s``
        gives the same network as ``torch.manual_seed(s)``). The global
        torch random state is left untouched.

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
        ``(h, w)`` of each map.
    input_size_ : tuple of int
        ``(H, W)`` of the network input.
    device_ : torch.device
        Device the network runs on.

    See Also
    --------
    sklearn_ais.AISSelector : Alignment importance of each map.
    sklearn_ais.backbones.get_backbone : Build a backbone with custom settings.

    Notes
    -----
    Images are resized (shorter side), centre-cropped and normalised as the
    weights expect; see :mod:`sklearn_ais.backbones._preprocess` for the
    accepted inputs. The forward pass stops right after ``layer``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import DNNFeatureMapTransformer
    >>> images = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    >>> fm = DNNFeatureMapTransformer().fit_transform(images)
    >>> fm.shape
    (4, 1280, 7, 7)
    >>> fm.embed().shape
    (4, 1280)
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
        backbone = self.backbone
        if not isinstance(backbone, str):
            backbone = copy.deepcopy(backbone)
        seed = None
        if isinstance(backbone, str) and self.weights is None and self.random_state is not None:
            rs = self.random_state
            if isinstance(rs, Integral):
                seed = int(rs)
            else:
                seed = int(check_random_state(rs).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            bb = get_backbone(backbone, weights=self.weights, layer=self.layer, head=self.head)
        extract = _Extractor(bb, self.device_)
        try:
            probe = extract(np.zeros((1, 3, *bb.input_size), dtype=np.float32))
        finally:
            extract.release()
        self.backbone_ = bb
        self.head_ = bb.head
        self.layer_ = bb.layer
        self.n_maps_ = int(probe.shape[1])
        self.map_size_ = tuple(int(s) for s in probe.shape[2:])
        self.input_size_ = bb.input_size
        self._weights_id = self._identify_weights(seed)
        self._config_key = None
        return self

    def _transform_device(self) -> torch.device:
        """``device_``, unless it is a GPU this machine lacks (a transformer fitted elsewhere, unpickled here).

        With ``device="auto"`` the CPU is used instead; an explicit device is a clear error.
        """
        if self.device_.type == "cuda" and not torch.cuda.is_available():
            return resolve_device(self.device)
        return self.device_

    def _identify_weights(self, seed):
        """A cheap identity of the loaded weights, or None when only a content hash will do."""
        if not isinstance(self.backbone, str):
            return None
        desc = self.backbone_.weights
        if desc == "random":
            return None if seed is None else f"random:{seed}"
        if desc.startswith("file:"):
            st = os.stat(desc[len("file:"):])
            return f"{desc}:{st.st_size}:{st.st_mtime_ns}"
        return None if desc == "state dict" else desc

    def _cache_key(self) -> str:
        if self._config_key is None:
            import timm
            import torchvision

            weights_id = self._weights_id or f"sha1:{_state_dict_digest(self.backbone_.model)}"
            versions = (torch.__version__, torchvision.__version__, timm.__version__)
            self._config_key = joblib_hash((self.backbone_.name, weights_id, self.layer_, versions))
        return self._config_key

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
            ``maps.maps`` is float32 of shape ``(n_images, n_maps_, h, w)``;
            ``maps.ids`` are the file paths when X is a list of paths, else
            None (in-memory images carry no identity; set ``maps.ids`` to
            label them).
        """
        check_is_fitted(self)
        source = as_image_source(X)
        n = len(source)
        preprocessing = self.backbone_.preprocessing
        memory = check_memory(os.fspath(self.memory) if isinstance(self.memory, os.PathLike) else self.memory)
        key = self._cache_key() if self.memory is not None else None
        compute = memory.cache(_batch_maps, ignore=["extract"])
        extract = _Extractor(self.backbone_, self._transform_device())

        maps = np.empty((n, self.n_maps_, *self.map_size_), dtype=np.float32)
        geometry = np.empty((n, 6), dtype=np.int64)
        batches = tqdm(
            range(0, n, self.batch_size),
            disable=not self.verbose,
            desc=f"{self.backbone_.name} feature maps",
            unit="batch",
        )
        try:
            for start in batches:
                stop = min(start + self.batch_size, n)
                pixels, geometry[start:stop] = preprocessing.batch(source[start:stop])
                maps[start:stop] = compute(pixels, key, extract)
        finally:
            extract.release()
        return FeatureMaps(
            maps,
            self.head_,
            geometry=geometry,
            input_size=self.input_size_,
            ids=source.ids,
            backbone=self.backbone_.name,
            layer=self.layer_,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Inputs are images (paths, PIL, arrays of any rank), not a 2-D
        # feature matrix; scikit-learn 1.9 has no dedicated image tag.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []
        return tags
