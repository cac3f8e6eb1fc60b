"""Image inputs: what the package accepts, how it is decoded and preprocessed.

Accepted inputs (see :func:`as_image_source`):

* a sequence of image files (``str`` / ``os.PathLike``), PIL images, arrays
  or tensors, possibly of different sizes and mixed;
* one array of shape ``(n, H, W, 3)``, ``(n, H, W, 4)`` (alpha dropped),
  ``(n, H, W, 1)`` or ``(n, H, W)`` (grayscale);
* one tensor of shape ``(n, C, H, W)`` or ``(C, H, W)`` with ``C`` in
  ``{1, 3}``;
* a single file path or PIL image (one image).

Pixel values: ``uint8`` arrays and tensors are 0..255, ``uint16`` arrays are
0..65535 and floating-point arrays and tensors must lie in [0, 1] (values
0..255 stored as floats are refused rather than guessed: pass ``uint8`` or
divide by 255). Every image is converted to 8-bit RGB, the format the
pretrained networks were trained on: grayscale is replicated, alpha is
dropped (as ``PIL.Image.convert("RGB")`` does), palette, CMYK and 16-bit
images are converted, files and in-memory PIL images are rotated by their
EXIF orientation (the image a viewer shows; overlays follow the same rule).
The range of integer pixels depends on the values' type, never on the
container: PIL ``"I;16"`` images are 16-bit like ``uint16`` arrays, PIL
``"I"`` images (32-bit integers) hold 0..255 like ``int32`` arrays, or are
refused. Float inputs are therefore quantised to 1/255 steps.

Preprocessing follows torchvision's convention: resize the shorter side to
``resize_size`` with PIL (antialiased), centre-crop ``input_size``, scale to
[0, 1] and normalise with ``mean`` and ``std``. With ``crop=False`` the whole
resized image is the network input (the aspect ratio is kept, so images of
different aspect ratios give inputs, and feature maps, of different sizes).

Every in-memory image is validated once, when :func:`as_image_source` reads
the input; files are checked when they are decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pixel values of float inputs may overshoot [0, 1] by rounding noise.
_FLOAT_TOL = 1e-3
# Above this many pixels, the resized image is not materialised: only the crop
# window is resampled (a 1 x 30000 strip would otherwise need 256 x 7.7M pixels).
_MAX_RESIZED_PIXELS = 1 << 24


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop (optional), normalise.

    Parameters
    ----------
    input_size : tuple of int
        ``(H, W)`` of the network input (the centre crop). With
        ``crop=False`` the nominal input size only (each image's input is
        its whole resized image).
    resize_size : int
        Length of the shorter side after resizing. With ``crop=True`` it
        must be at least ``max(input_size)`` so that the crop fits.
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos"}
    mean, std : tuple of float
        Per-channel normalisation of the [0, 1] RGB values.
    crop : bool, default=True
        Centre-crop ``input_size`` after resizing. ``False``: keep the whole
        resized image (aspect ratio preserved, no pixel discarded).

    Examples
    --------
    >>> from sklearn_ais.backbones._preprocess import Preprocessing
    >>> Preprocessing((224, 224), 256).geometry(300, 400)
    (300, 400, 256, 341, 16, 58)
    >>> Preprocessing((224, 224), 224, crop=False).geometry(300, 400)
    (300, 400, 224, 298, 0, 0)
    """

    input_size: tuple = (224, 224)
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop: bool = True

    def __post_init__(self):
        size = tuple(int(s) for s in np.broadcast_to(self.input_size, (2,)))
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.crop, (bool, np.bool_)):
            raise TypeError(f"crop must be True or False, got {self.crop!r}")
        object.__setattr__(self, "crop", bool(self.crop))
        if min(size) < 1 or self.resize_size < 1:
            raise ValueError(f"input_size and resize_size must be positive, got {size} and {self.resize_size}")
        if self.crop and self.resize_size < max(size):
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= max(input_size) = {max(size)} "
                "so that the centre crop fits (or pass crop=False to keep the whole resized image)"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must be 3 values (std > 0), got mean={self.mean}, std={self.std}")

    def geometry(self, height: int, width: int) -> tuple[int, int, int, int, int, int]:
        """``(orig_h, orig_w, resized_h, resized_w, crop_top, crop_left)`` of an image.

        Parameters
        ----------
        height, width : int
            Size of the original image.

        Returns
        -------
        geometry : tuple of 6 int
            With ``crop=False`` the offsets are 0 and the network input is
            the whole ``(resized_h, resized_w)`` image.
        """
        s = self.resize_size
        # torchvision's rule: the shorter side becomes s, the longer is truncated.
        if width <= height:
            new_w, new_h = s, int(s * height / width)
        else:
            new_h, new_w = s, int(s * width / height)
        if not self.crop:
            return height, width, new_h, new_w, 0, 0
        crop_h, crop_w = self.input_size
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        return height, width, new_h, new_w, top, left

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, tuple]:
        """Preprocess one RGB image.

        Parameters
        ----------
        image : PIL.Image.Image
            An RGB image.

        Returns
        -------
        pixels : ndarray of shape (3, H, W), float32
            ``(H, W)`` is ``input_size``, or the resized size with ``crop=False``.
        geometry : tuple of 6 int
            See :meth:`geometry`.

        Raises
        ------
        ValueError
            ``crop=False`` and the resized image would exceed 2**24 pixels
            (an extreme aspect ratio).
        """
        geom = self.geometry(image.height, image.width)
        _, _, new_h, new_w, top, left = geom
        crop_h, crop_w = self.input_size if self.crop else (new_h, new_w)
        if new_h * new_w <= _MAX_RESIZED_PIXELS:
            image = image.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
            if self.crop:
                image = image.crop((left, top, left + crop_w, top + crop_h))
        elif not self.crop:
            raise ValueError(
                f"a {image.height} x {image.width} image resized to a shorter side of {self.resize_size} without a "
                f"crop would be a {new_h} x {new_w} network input ({new_h * new_w} pixels, more than "
                f"{_MAX_RESIZED_PIXELS}); use crop=True or a smaller resize_size"
            )
        else:
            # Extreme aspect ratio: resample the crop window only, at the same scale
            # (equal to resize-then-crop up to rounding of the filter coefficients).
            sx, sy = image.width / new_w, image.height / new_h
            box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
            image = image.resize((crop_w, crop_h), INTERPOLATIONS[self.interpolation], box=box)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)), geom

    def batch(self, images) -> tuple[np.ndarray | list, np.ndarray]:
        """Preprocess RGB images.

        Parameters
        ----------
        images : iterable of PIL.Image.Image

        Returns
        -------
        pixels : ndarray of shape (n, 3, H, W) float32, or list of (3, H_i, W_i) arrays
            A list only when the inputs differ in size (``crop=False`` and
            different aspect ratios); see :func:`same_size_groups`.
        geometry : ndarray of shape (n, 6), int64
        """
        out = [self(im) for im in images]
        pixels = [o[0] for o in out]
        geometry = np.asarray([o[1] for o in out], dtype=np.int64).reshape(-1, 6)
        if len({p.shape for p in pixels}) <= 1:
            return np.stack(pixels) if pixels else np.zeros((0, 3, *self.input_size), np.float32), geometry
        return pixels, geometry


def same_size_groups(pixels) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split preprocessed ``pixels`` (an array, or a list of differently sized images) into batches.

    Parameters
    ----------
    pixels : ndarray of shape (n, 3, H, W) or list of ndarray of shape (3, H_i, W_i)

    Returns
    -------
    groups : list of (indices, batch)
        ``batch`` is ``(len(indices), 3, H, W)``: the images ``indices`` of
        ``pixels``, which share one size. Groups come in order of first
        appearance; one group when all sizes agree.
    """
    if isinstance(pixels, np.ndarray):
        return [(np.arange(len(pixels)), pixels)]
    by_shape: dict = {}
    for i, p in enumerate(pixels):
        by_shape.setdefault(p.shape, []).append(i)
    return [(np.asarray(idx), np.stack([pixels[i] for i in idx])) for idx in by_shape.values()]


# -- decoding ----------------------------------------------------------------
def _pil_to_rgb(image: Image.Image, label: str) -> Image.Image:
    """The one reader of PIL images (files and in-memory): EXIF orientation applied, then 8-bit RGB.

    The pixel range follows the container-free rule of arrays: ``"I;16"`` modes are 16-bit
    (as ``uint16`` arrays), ``"I"`` (32-bit integers, as ``int32`` arrays) must hold 0..255.
    """
    image = ImageOps.exif_transpose(image)  # the image a viewer shows (idempotent: the tag is removed)
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale: PIL's convert would clip at 255.
        arr = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.round(np.clip(arr, 0, 65535) / 257.0).astype(np.uint8)).convert("RGB")
    if mode.startswith("I"):
        # 32-bit integers carry no range of their own: the rule of an int32 array (0..255, else refused).
        arr = np.asarray(image)
        try:
            _check_pixels(arr, label)
        except ValueError as exc:
            raise ValueError(f"{exc} (a PIL image of mode {mode!r}; 16-bit pixels: pass "
                             "Image.fromarray(np.asarray(image).astype(np.uint16)) or a uint16 array)") from None
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(image)
        _check_pixels(arr, label)
        return Image.fromarray(_to_uint8(arr)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _check_pixels(arr: np.ndarray, label: str):
    """Raise unless ``arr`` holds valid pixel values for its dtype."""
    if arr.dtype in (np.uint8, np.uint16):
        return
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{label} contains NaN or infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_FLOAT_TOL or hi > 1 + _FLOAT_TOL:
            raise ValueError(
                f"{label}: float pixel values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                "for 0..255 values pass uint8 (x.astype(np.uint8)) or divide by 255"
            )
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{label}: integer pixel values must lie in 0..255 (uint16: 0..65535), got range [{lo}, {hi}]"
            )
    else:
        raise ValueError(f"{label}: unsupported pixel dtype {arr.dtype}; use uint8 (0..255) or float (0..1)")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixels already checked by :func:`_check_pixels` as 8-bit values."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.dtype == np.uint16:
        return np.round(arr / 257.0).astype(np.uint8)
    return arr.astype(np.uint8)


def _channels_last(arr: np.ndarray, label: str) -> np.ndarray:
    """One (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as (H, W) or (H, W, 3) (a view); shape checks only."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"{label}: expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{label} is empty (shape {arr.shape})")
    return arr


def _tensor_to_array(t: torch.Tensor, label: str) -> np.ndarray:
    """A (C, H, W) tensor, C in {1, 3} -> (H, W, C) array."""
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"{label}: expected a tensor of shape (C, H, W) with C in {{1, 3}}, got {tuple(t.shape)}")
    return t.detach().cpu().permute(1, 2, 0).numpy()


def _open_file(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _pil_to_rgb(image, f"image file {path!r}")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"could not read image file {path!r}: {exc}") from exc


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


class ImageSource(Sequence):
    """A lazily decoded sequence of RGB images.

    ``source[i]`` decodes image ``i`` into an RGB ``PIL.Image``; files are
    read only when indexed, so a large set can be processed batch by batch.
    Build one with :func:`as_image_source`, which validates in-memory images.

    Attributes
    ----------
    ids : ndarray of shape (n_images,) or None
        The file paths (as given, as ``str``) when every image is a file,
        else None: in-memory images carry no identity (a position is not
        one: ``images[[5]]`` would be "image 0" again).
    """

    def __init__(self, items, ids):
        # items: paths, PIL images, or validated (H, W) / (H, W, 3) arrays.
        self._items = items
        self.ids = ids

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self._items[i]
        if _is_path(item):
            return _open_file(os.fspath(item))
        if isinstance(item, Image.Image):
            return _pil_to_rgb(item, f"image {i}")
        return Image.fromarray(np.ascontiguousarray(_to_uint8(item))).convert("RGB")


def _stack_of_images(X) -> np.ndarray | None:
    """A tensor (n, C, H, W) / (C, H, W) or an array (n, H, W[, C]) as a validated (n, H, W[, 3]) array."""
    if isinstance(X, torch.Tensor):
        if X.ndim == 3:
            X = X[None]
        if X.ndim != 4 or X.shape[1] not in (1, 3):
            raise ValueError(
                f"a tensor of images must have shape (n, C, H, W) or (C, H, W) with C in {{1, 3}}, got {tuple(X.shape)}"
            )
        arr, what = X.detach().cpu().permute(0, 2, 3, 1).numpy(), "tensor of images"
    elif isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 3 and X.shape[-1] in (3, 4):
            raise ValueError(
                f"ambiguous array of shape {X.shape}: a 3-D array is read as n grayscale images (n, H, W); "
                "pass one RGB image as image[None] (shape (1, H, W, 3)) or a stack as (n, H, W, 3)"
            )
        if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[-1] not in (1, 3, 4)):
            raise ValueError(
                "an array of images must have shape (n, H, W), (n, H, W, 1), (n, H, W, 3) or (n, H, W, 4), "
                f"got {X.shape}"
            )
        arr, what = X, "array of images"
    else:
        return None
    if arr.shape[0] == 0:
        raise ValueError("no images given (empty input)")
    if 0 in arr.shape[1:3]:
        raise ValueError(f"{what} has empty images (shape {arr.shape})")
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 4 and arr.shape[3] == 4:
        arr = arr[..., :3]
    _check_pixels(arr, what)
    return arr


def _checked_item(item, i: int):
    """One element of a list of images: a path (checked to exist), a PIL image, or a validated array."""
    if _is_path(item):
        if not os.path.exists(item):
            raise FileNotFoundError(f"image file not found: {os.fspath(item)!r} (image {i})")
        if os.path.isdir(item):
            raise ValueError(
                f"image {i} is a directory, not an image file: {os.fspath(item)!r}; "
                "pass a list of files, e.g. sorted(Path(d).glob('*.jpg'))"
            )
        return item
    if isinstance(item, Image.Image):
        if item.mode.startswith("I") and not item.mode.startswith("I;16"):
            _pil_to_rgb(item, f"image {i}")  # the range rule, checked now (before any work)
        return item
    label = f"image {i}"
    if isinstance(item, torch.Tensor):
        item = _tensor_to_array(item, label)
    elif not isinstance(item, np.ndarray):
        raise TypeError(f"{label}: expected a path, PIL image, array or tensor, got {type(item).__name__}")
    arr = _channels_last(item, label)
    _check_pixels(arr, label)
    return arr


def as_image_source(X) -> ImageSource:
    """Interpret ``X`` as a set of images (see the module docstring).

    Files are checked for existence now and decoded only when indexed;
    in-memory arrays and tensors are validated now (once).

    Parameters
    ----------
    X : path, PIL image, sequence of them (or of arrays / tensors), array or tensor
        See the module docstring.

    Returns
    -------
    source : ImageSource

    Raises
    ------
    ValueError
        Empty input, unsupported shapes or dtypes, NaN/inf pixels, float
        pixels outside [0, 1].
    FileNotFoundError
        A path that does not exist.
    TypeError
        An element that is not a path, PIL image, array or tensor.
    """
    if _is_path(X) or isinstance(X, Image.Image):
        X = [X]
    stack = _stack_of_images(X)
    if stack is not None:
        return ImageSource(stack, None)
    if not hasattr(X, "__len__") or isinstance(X, (bytes, dict)):
        raise TypeError(
            "images must be a sequence of paths, PIL images, arrays or tensors, or one array/tensor; "
            f"got {type(X).__name__}"
        )
    items = [_checked_item(item, i) for i, item in enumerate(X)]
    if not items:
        raise ValueError("no images given (empty input)")
    ids = np.asarray([os.fspath(p) for p in items]) if all(_is_path(p) for p in items) else None
    return ImageSource(items, ids)
