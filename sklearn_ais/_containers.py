"""FeatureMaps: last-conv feature maps of n images together with the head.

This is what :class:`~sklearn_ais.DNNFeatureMapTransformer` returns and what
:class:`~sklearn_ais.AISSelector` and :class:`~sklearn_ais.AISHeatmapper`
accept. It behaves like an array of n samples for scikit-learn's tooling
(``shape``, ``len`` and row indexing), so ``cross_validate`` and
``GridSearchCV`` can slice it image-wise.

Maps of different sizes
-----------------------
Without a centre crop (``crop=False``), images of different aspect ratios
give maps of different sizes. ``maps`` is then a list of ``(n_maps, h_i,
w_i)`` arrays ("ragged"), ``shape`` is ``(n_images, n_maps, None, None)``
and ``input_size`` holds one ``(H_i, W_i)`` per image. Everything the
estimators need works image by image (:meth:`FeatureMaps.embed`,
:meth:`FeatureMaps.pooled`, :meth:`FeatureMaps.weighted_sum`,
:meth:`FeatureMaps.masked`, indexing). Whenever all maps share one size,
``maps`` is a plain 4-D array.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._device import as_tensor
from .backbones._heads import Head


def _as_maps(maps):
    """A 4-D array, or a list of 3-D arrays when their sizes differ (equal sizes are stacked)."""
    if isinstance(maps, (list, tuple)) and len(maps):
        items = [np.asarray(m) for m in maps]
        for i, m in enumerate(items):
            if m.ndim != 3:
                raise ValueError(f"maps[{i}] must have shape (n_maps, h, w), got {m.shape}")
        if len({m.shape[0] for m in items}) > 1:
            raise ValueError(f"every image must have the same number of maps, got {sorted({m.shape[0] for m in items})}")
        if len({m.shape for m in items}) == 1:
            maps = np.stack(items)
        else:
            kinds = {m.dtype.kind for m in items}
            if not kinds <= set("biuf"):
                raise TypeError(f"maps must be real numeric arrays (float32 activations), got dtypes {kinds}")
            return items
    maps = np.asarray(maps)
    if maps.dtype.kind not in "biuf":
        raise TypeError(f"maps must be a real numeric array (float32 activations), got dtype {maps.dtype}")
    if maps.ndim != 4:
        raise ValueError(f"maps must have shape (n_images, n_maps, h, w), got {maps.shape}")
    return maps


def _as_input_size(input_size, n: int):
    """A shared ``(H, W)`` tuple, or an (n, 2) int array when the images' inputs differ."""
    if input_size is None:
        return None
    arr = np.asarray(input_size)
    if arr.ndim <= 1:
        return tuple(int(s) for s in np.broadcast_to(arr, (2,)))
    if arr.shape != (n, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"input_size must be (H, W) or an integer array of shape ({n}, 2), got {arr.shape}")
    if n and (arr == arr[0]).all():
        return tuple(int(s) for s in arr[0])
    return arr.astype(np.int64)


class FeatureMaps:
    """Feature maps of n images, the head that embeds them, and their geometry.

    Parameters
    ----------
    maps : ndarray of shape (n_images, n_maps, h, w), or list of ndarray of shape (n_maps, h_i, w_i)
        Activations of the last convolutional layer (float32). A list of
        maps of different sizes is kept as a list ("ragged"); a list of maps
        of one size is stacked.
    head : Head
        Turns maps into embeddings (see :mod:`sklearn_ais.backbones`).
    geometry : ndarray of shape (n_images, 6), dtype int, optional
        Per image ``(orig_h, orig_w, resized_h, resized_w, crop_top,
        crop_left)``: the original image was resized to ``(resized_h,
        resized_w)`` and a window of the input size starting at
        ``(crop_top, crop_left)`` was fed to the network. Used to map a
        heatmap back onto the original image.
    input_size : tuple of int, or array-like of shape (n_images, 2), optional
        ``(H, W)`` of the network input, shared or one per image (without a
        crop the input is the whole resized image).
    ids : array-like of shape (n_images,), optional
        Unique image identifiers (file names, dataset ids). When set, a
        labelled ``y`` (a DataFrame, see
        :func:`~sklearn_ais.model_selection.similarity_frame`) is aligned to
        the images by these labels, and :class:`~sklearn_ais.AISHeatmapper`
        recognises its training images by them. None: the images have no
        identity beyond their position in this container.
    backbone, layer : str, optional
        Provenance, for reports.
    extra_tokens : ndarray of shape (n_images, n_extra, n_maps), optional
        For a transformer's block: the tokens carried beside the patch grid
        (CLS, registers, distillation), in the model's order. A head that
        reads them (the CLS-token head) receives them with their image; they
        are never ablated (ablating map k zeroes channel k of every *patch*
        token only).
    token_pooling : {"cls", "mean"} or None, optional
        How the head embeds a transformer's tokens: ``"cls"`` through the
        CLS token (the model's remaining blocks, norm and projection),
        ``"mean"`` the mean of the patch tokens (an exact pooling kernel);
        None for a CNN's maps.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import FeatureMaps
    >>> from sklearn_ais.backbones import PoolingHead
    >>> fm = FeatureMaps(np.ones((5, 3, 2, 2), dtype=np.float32), PoolingHead())
    >>> fm.shape, fm[[0, 2]].shape
    ((5, 3, 2, 2), (2, 3, 2, 2))
    >>> fm.embed().shape
    (5, 3)
    >>> ragged = FeatureMaps([np.ones((3, 2, 2)), np.ones((3, 2, 4))], PoolingHead())
    >>> ragged.shape, ragged.map_sizes.tolist()
    ((2, 3, None, None), [[2, 2], [2, 4]])
    """

    def __init__(self, maps, head: Head, geometry=None, input_size=None, ids=None, backbone=None, layer=None,
                 extra_tokens=None, token_pooling=None):
        maps = _as_maps(maps)
        if not isinstance(head, Head):
            raise TypeError(f"head must be a sklearn_ais.backbones Head, got {type(head).__name__}")
        n = len(maps)
        self.maps = maps
        self.head = head
        self.geometry = None if geometry is None else np.asarray(geometry)
        if self.geometry is not None and self.geometry.shape != (n, 6):
            raise ValueError(f"geometry must have shape ({n}, 6), got {self.geometry.shape}")
        self.input_size = _as_input_size(input_size, n)
        self.ids = ids
        self.backbone = backbone
        self.layer = layer
        if extra_tokens is not None:
            extra_tokens = np.asarray(extra_tokens)
            if extra_tokens.ndim != 3 or len(extra_tokens) != n or extra_tokens.shape[2] != self.n_maps:
                raise ValueError(f"extra_tokens must have shape ({n}, n_extra, {self.n_maps}), got {extra_tokens.shape}")
        if getattr(head, "reads_extra_tokens", False) and extra_tokens is None:
            raise ValueError(f"{head!r} reads the tokens beside the patch grid (CLS): pass extra_tokens")
        if token_pooling not in (None, "cls", "mean"):
            raise ValueError(f"token_pooling must be 'cls', 'mean' or None, got {token_pooling!r}")
        self.extra_tokens = extra_tokens
        self.token_pooling = token_pooling

    @property
    def ids(self):
        """Unique image identifiers (ndarray of shape (n_images,)) or None."""
        return self._ids

    @ids.setter
    def ids(self, ids):
        if ids is not None:
            ids = np.asarray(ids)
            if ids.ndim != 1 or len(ids) != len(self.maps):
                raise ValueError(f"ids must be a 1-D array of {len(self.maps)} entries, got shape {ids.shape}")
            values, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"ids must be unique; {values[counts > 1][:3].tolist()} appear more than once")
        self._ids = ids

    # -- array-like protocol used by scikit-learn's slicing -------------------
    @property
    def ragged(self) -> bool:
        """True when the maps differ in size (``maps`` is a list)."""
        return isinstance(self.maps, list)

    @property
    def shape(self):
        """``(n_images, n_maps, h, w)``; ``h`` and ``w`` are ``None`` for ragged maps."""
        if self.ragged:
            return (len(self.maps), self.n_maps, None, None)
        return self.maps.shape

    @property
    def ndim(self):
        return 4

    @property
    def n_maps(self) -> int:
        """Number of maps K."""
        return self.maps[0].shape[0] if self.ragged else self.maps.shape[1]

    @property
    def map_sizes(self) -> np.ndarray:
        """``(h_i, w_i)`` of each image's maps, shape (n_images, 2)."""
        if self.ragged:
            return np.asarray([m.shape[1:] for m in self.maps], dtype=np.int64).reshape(-1, 2)
        return np.tile(np.asarray(self.maps.shape[2:], dtype=np.int64), (len(self), 1))

    @property
    def input_sizes(self) -> np.ndarray | None:
        """``(H_i, W_i)`` of each image's network input, shape (n_images, 2), or None if unknown."""
        if self.input_size is None or isinstance(self.input_size, np.ndarray):
            return self.input_size
        return np.tile(np.asarray(self.input_size, dtype=np.int64), (len(self), 1))

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, key):
        # scikit-learn's _safe_indexing calls X[key, ...]
        if isinstance(key, tuple):
            if len(key) == 2 and key[1] is Ellipsis:
                key = key[0]
            else:
                raise IndexError("FeatureMaps supports row (image) indexing only")
        if isinstance(key, numbers.Integral):
            key = [key]
        try:
            idx = np.arange(len(self))[key]
        except IndexError as exc:
            raise IndexError(
                f"{exc} (FeatureMaps of {len(self)} images). If scikit-learn's cross_validate or GridSearchCV was "
                "given a splitter over matrix entries (PairKFold, RepeatedPairKFold, PairShuffleSplit), those index "
                "pairs, not images: use sklearn_ais.model_selection.cross_validate_alignment instead"
            ) from None
        if self.ids is not None and len(np.unique(idx)) != len(idx):
            raise ValueError(
                "this index repeats images, but image ids must stay unique (a labelled y is aligned by them): "
                "to resample with repetition, drop the ids first (X.ids = None) and index y by position"
            )
        maps = [self.maps[i] for i in idx] if self.ragged else self.maps[idx]
        sizes = self.input_size[idx] if isinstance(self.input_size, np.ndarray) else self.input_size
        return self._with(maps, geometry=None if self.geometry is None else self.geometry[idx], input_size=sizes,
                          ids=None if self.ids is None else self.ids[idx],
                          extra_tokens=None if self.extra_tokens is None else self.extra_tokens[idx])

    def _with(self, maps, **fields) -> FeatureMaps:
        """A FeatureMaps with other ``maps`` (and fields), the same head and provenance."""
        kw = dict(geometry=self.geometry, input_size=self.input_size, ids=self.ids, backbone=self.backbone,
                  layer=self.layer, extra_tokens=self.extra_tokens, token_pooling=self.token_pooling)
        return FeatureMaps(maps, self.head, **{**kw, **fields})

    def __sizeof__(self):
        # What pickling this object sends: the maps and the head's weights (VGG16's fc6 and fc7 are
        # ~470 MB). Schedulers (dask's sizeof, through joblib) weigh it to scatter large arguments once
        # instead of sending them with every task, and to place tasks near their data.
        maps = self.maps if self.ragged else [self.maps]
        extra = 0 if self.extra_tokens is None else self.extra_tokens.nbytes
        return object.__sizeof__(self) + int(sum(m.nbytes for m in maps)) + extra + _tensor_bytes(self.head)

    def __repr__(self):
        n, K = len(self), self.n_maps
        if self.ragged:
            lo, hi = self.map_sizes.min(0), self.map_sizes.max(0)
            size = f"{lo[0]}..{hi[0]}x{lo[1]}..{hi[1]} (ragged)"
        else:
            size = "{}x{}".format(*self.maps.shape[2:])
        src = f", backbone={self.backbone!r}" if self.backbone else ""
        tok = f", token_pooling={self.token_pooling!r}" if self.token_pooling else ""
        return f"FeatureMaps(n_images={n}, n_maps={K}, map_size={size}, head={self.head!r}{tok}{src})"

    # -- image-by-image access ------------------------------------------------
    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The images in batches of one map size.

        Returns
        -------
        groups : list of (indices, maps)
            ``maps`` is ``(len(indices), n_maps, h, w)``; a single group
            ``(arange(n), self.maps)`` unless the maps are ragged.
        """
        if not self.ragged:
            return [(np.arange(len(self)), self.maps)]
        by_size: dict = {}
        for i, m in enumerate(self.maps):
            by_size.setdefault(m.shape, []).append(i)
        return [(np.asarray(idx), np.stack([self.maps[i] for i in idx])) for idx in by_size.values()]

    def all_finite(self) -> bool:
        """True when no map holds NaN or inf."""
        if self.ragged:
            return all(bool(np.isfinite(m).all()) for m in self.maps)
        return bool(np.isfinite(self.maps).all())

    def tensors(self, device="cpu", dtype=torch.float32):
        """The maps as torch tensors on ``device``.

        Parameters
        ----------
        device : str or torch.device, default="cpu"
        dtype : torch.dtype, default=torch.float32
            A copy is made only when the stored maps differ in device or dtype.

        Returns
        -------
        maps : Tensor of shape (n, K, h, w), or list of (K, h_i, w_i) tensors when ragged
        """
        if self.ragged:
            return [as_tensor(m, device, dtype) for m in self.maps]
        return as_tensor(self.maps, device, dtype)

    def _check_keep(self, keep) -> np.ndarray:
        from ._validation import as_feature_mask

        return as_feature_mask(keep, self.n_maps, "keep")

    # -- embeddings -----------------------------------------------------------
    def _apply(self, fn, device, dtype=torch.float32, batch_size=None, with_extra=False):
        """``fn`` of the maps (a tensor batch of one map size; with ``with_extra``, and of their extra
        tokens) for every image, in image order: (n, ...)."""
        out = None
        for idx, maps in self.groups():
            step = batch_size or max(1, len(idx))
            for start in range(0, len(idx), step):
                x = as_tensor(maps[start : start + step], device, dtype)
                if with_extra:
                    extra = None if self.extra_tokens is None else as_tensor(
                        self.extra_tokens[idx[start : start + step]], device, dtype)
                    r = fn(x, extra)
                else:
                    r = fn(x)
                if out is None:
                    out = r.new_empty((len(self), *r.shape[1:]))
                out[torch.as_tensor(idx[start : start + step], device=r.device)] = r
        return out

    def embed(self, keep=None, device="cpu", batch_size: int = 256) -> np.ndarray:
        """Embeddings (n, D) through the head, with maps outside ``keep`` set to 0.

        Parameters
        ----------
        keep : array-like of bool of shape (n_maps,) or array of int, optional
            Maps to keep (a boolean mask or map indices); the others are
            ablated. Default keeps all.
        device : str or torch.device, default="cpu"
        batch_size : int, default=256
            Images embedded together (ragged maps: images of one map size).

        Returns
        -------
        embeddings : ndarray of shape (n_images, D), float64
        """
        keep_t = None if keep is None else torch.as_tensor(self._check_keep(keep), device=device)

        def embed(x, extra):
            return self.head(x if keep_t is None else x * keep_t[None, :, None, None], extra=extra).double()

        out = self._apply(embed, device, batch_size=batch_size, with_extra=True)
        return out.cpu().numpy() if out is not None else np.zeros((0, 0))

    def pooled(self, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Per-map pooled values (n, K, P) of an :class:`~sklearn_ais.backbones.MLPHead`.

        The head's channel-wise pooling (max-pool, then adaptive average
        pool to ``output_size``) gives every image ``P`` values per map,
        whatever its map size: what the VGG ablation kernels read.

        Parameters
        ----------
        device : str or torch.device, default="cpu"
            Where the pooling runs and the result lives.
        dtype : torch.dtype, default=torch.float32

        Returns
        -------
        pooled : Tensor of shape (n_images, n_maps, P)

        Raises
        ------
        TypeError
            The head has no channel-wise pooling (not an MLPHead).
        """
        if not hasattr(self.head, "pooled"):
            raise TypeError(f"pooled values need an MLPHead, got {type(self.head).__name__}")
        with torch.inference_mode():
            return self._apply(self.head.pooled, device, dtype)

    # -- maps the estimators derive ------------------------------------------
    def weighted_sum(self, weights):
        """``sum_k weights[i, k] * maps[i, k]`` per image (float64): the raw heatmaps.

        Parameters
        ----------
        weights : array-like of shape (n_images, n_maps)

        Returns
        -------
        heatmaps : ndarray of shape (n_images, h, w), or list of (h_i, w_i) arrays when ragged
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self), self.n_maps):
            raise ValueError(f"weights must have shape ({len(self)}, {self.n_maps}), got {w.shape}")
        if self.ragged:
            return [np.einsum("k,khw->hw", wi, m.astype(np.float64)) for wi, m in zip(w, self.maps)]
        return np.einsum("nk,nkhw->nhw", w, self.maps.astype(np.float64))

    def masked(self, keep) -> FeatureMaps:
        """A copy with the maps outside ``keep`` set to 0 (the head still applies).

        Parameters
        ----------
        keep : array-like of bool of shape (n_maps,) or array of int

        Returns
        -------
        FeatureMaps
        """
        keep = self._check_keep(keep)
        if self.ragged:
            return self._with([m * keep[:, None, None].astype(m.dtype) for m in self.maps])
        return self._with(self.maps * keep[None, :, None, None].astype(self.maps.dtype))


def _tensor_bytes(obj) -> int:
    """Bytes of the torch parameters and buffers an object holds in its attributes (each tensor counted once)."""
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    if isinstance(obj, torch.nn.Module):
        values.append(obj)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    for module in (v for v in values if isinstance(v, torch.nn.Module)):
        tensors += [*module.parameters(), *module.buffers()]
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
    return int(sum(unique.values()))


class LayerFeatureMaps(dict):
    """Feature maps of several layers of one network, from one forward pass: ``{layer: FeatureMaps}``.

    What :class:`~sklearn_ais.DNNFeatureMapTransformer` returns for
    ``layer=[...]`` or ``layer="all_blocks"``. It is a dict in the layers'
    order, so :func:`~sklearn_ais.alignment.compare_alignment` takes it as
    it is (each layer a candidate model) and
    :class:`~sklearn_ais.LayerSelector` chooses among its layers.

    Parameters
    ----------
    maps : mapping of str to FeatureMaps
        The same images (same number, same ids) in every layer.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ais import FeatureMaps, LayerFeatureMaps
    >>> from sklearn_ais.backbones import PoolingHead
    >>> fm = FeatureMaps(np.ones((4, 3, 2, 2), dtype=np.float32), PoolingHead())
    >>> layers = LayerFeatureMaps({"a": fm, "b": fm})
    >>> layers.layers, layers.n_images, layers.subset([0, 1])["b"].shape
    (['a', 'b'], 4, (2, 3, 2, 2))
    """

    def __init__(self, maps):
        super().__init__(maps)
        if not self:
            raise ValueError("LayerFeatureMaps needs at least one layer")
        for name, fm in self.items():
            if not isinstance(fm, FeatureMaps):
                raise TypeError(f"layer {name!r} must hold FeatureMaps, got {type(fm).__name__}")
        sizes = {len(fm) for fm in self.values()}
        if len(sizes) > 1:
            raise ValueError(f"every layer must hold the same images, got {sorted(sizes)} images")

    @property
    def layers(self) -> list:
        """The layer names, in order."""
        return list(self)

    @property
    def n_images(self) -> int:
        """Number of images (the same in every layer)."""
        return len(next(iter(self.values())))

    def subset(self, idx) -> LayerFeatureMaps:
        """The same layers for images ``idx``.

        Parameters
        ----------
        idx : array-like of int

        Returns
        -------
        LayerFeatureMaps
        """
        return LayerFeatureMaps({name: fm[np.asarray(idx)] for name, fm in self.items()})

    def __repr__(self):
        return f"LayerFeatureMaps(n_images={self.n_images}, layers={self.layers})"
