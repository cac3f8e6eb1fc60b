"""FeatureMaps: last-conv feature maps of n images together with the head.

This is what :class:`~sklearn_ais.DNNFeatureMapTransformer` returns and what
:class:`~sklearn_ais.AISSelector` and :class:`~sklearn_ais.AISHeatmapper`
accept. It behaves like an array of n samples for scikit-learn's tooling
(``shape``, ``len`` and row indexing), so ``cross_validate`` and
``GridSearchCV`` can slice it image-wise.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .backbones._heads import Head


class FeatureMaps:
    """Feature maps of n images, the head that embeds them, and their geometry.

    Parameters
    ----------
    maps : ndarray of shape (n_images, n_maps, h, w)
        Activations of the last convolutional layer (float32).
    head : Head
        Turns maps into embeddings (see :mod:`sklearn_ais.backbones`).
    geometry : ndarray of shape (n_images, 6), dtype int, optional
        Per image ``(orig_h, orig_w, resized_h, resized_w, crop_top,
        crop_left)``: the original image was resized to ``(resized_h,
        resized_w)`` and a window of ``input_size`` starting at
        ``(crop_top, crop_left)`` was fed to the network. Used to map a
        heatmap back onto the original image.
    input_size : tuple of int, optional
        ``(H, W)`` of the network input.
    ids : array-like of shape (n_images,), optional
        Unique image identifiers (file names, dataset ids). When set, a
        labelled ``y`` (a DataFrame, see
        :func:`~sklearn_ais.model_selection.similarity_frame`) is aligned to
        the images by these labels, and :class:`~sklearn_ais.AISHeatmapper`
        recognises its training images by them. None: the images have no
        identity beyond their position in this container.
    backbone, layer : str, optional
        Provenance, for reports.

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
    """

    def __init__(self, maps, head: Head, geometry=None, input_size=None, ids=None, backbone=None, layer=None):
        maps = np.asarray(maps)
        if maps.dtype.kind not in "biuf":
            raise TypeError(
                f"maps must be a real numeric array (float32 activations), got dtype {maps.dtype}"
            )
        if maps.ndim != 4:
            raise ValueError(f"maps must have shape (n_images, n_maps, h, w), got {maps.shape}")
        if not isinstance(head, Head):
            raise TypeError(f"head must be a sklearn_ais.backbones Head, got {type(head).__name__}")
        self.maps = maps
        self.head = head
        self.geometry = None if geometry is None else np.asarray(geometry)
        if self.geometry is not None and self.geometry.shape != (maps.shape[0], 6):
            raise ValueError(f"geometry must have shape ({maps.shape[0]}, 6), got {self.geometry.shape}")
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.ids = ids
        self.backbone = backbone
        self.layer = layer

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
    def shape(self):
        return self.maps.shape

    @property
    def ndim(self):
        return 4

    @property
    def n_maps(self) -> int:
        return self.maps.shape[1]

    def __len__(self):
        return self.maps.shape[0]

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
        return FeatureMaps(
            self.maps[idx],
            self.head,
            geometry=None if self.geometry is None else self.geometry[idx],
            input_size=self.input_size,
            ids=None if self.ids is None else self.ids[idx],
            backbone=self.backbone,
            layer=self.layer,
        )

    def __repr__(self):
        n, K, h, w = self.shape
        src = f", backbone={self.backbone!r}" if self.backbone else ""
        return f"FeatureMaps(n_images={n}, n_maps={K}, map_size={h}x{w}, head={self.head!r}{src})"

    # -- embeddings -----------------------------------------------------------
    def embed(self, keep=None, device="cpu", batch_size: int = 256) -> np.ndarray:
        """Embeddings (n, D) through the head, with maps outside ``keep`` set to 0.

        Parameters
        ----------
        keep : array-like of bool of shape (n_maps,) or array of int, optional
            Maps to keep (a boolean mask or map indices); the others are
            ablated. Default keeps all.
        """
        out = []
        keep_t = None
        if keep is not None:
            from ._validation import as_feature_mask

            keep_t = torch.as_tensor(as_feature_mask(keep, self.n_maps, "keep"), device=device)
        for start in range(0, len(self), batch_size):
            x = torch.as_tensor(self.maps[start : start + batch_size], device=device, dtype=torch.float32)
            if keep_t is not None:
                x = x * keep_t[None, :, None, None]
            out.append(self.head(x).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))
