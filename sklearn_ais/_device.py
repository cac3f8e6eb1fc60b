"""Where torch work runs."""

from __future__ import annotations

import threading

import numpy as np
import torch

# Kernels smaller than this (images^2 x maps) run on one torch thread: tiny ops on several
# threads that compete with other processes cost more than they share (4x measured, n = 30).
SMALL_PROBLEM = 1 << 23
_LOCK = threading.Lock()
_DEPTH = 0
_SAVED = None


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU.

    An explicit CUDA device on a machine without one (e.g. an estimator
    fitted on a GPU machine, unpickled on a laptop) is a ``ValueError`` that
    says so, rather than a driver error from deep inside torch.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device.

    Returns
    -------
    device : torch.device
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu' (e.g. estimator.set_params(device='cpu'))"
        )
    return resolved


class torch_threads:
    """Context manager: run torch on ``n`` threads inside, then restore the previous count.

    torch's thread count is global to the process; nested and concurrent uses
    (threads of one process) set it on the first entry and restore it on the
    last exit. ``n=None`` changes nothing.

    Parameters
    ----------
    n : int or None
    """

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        global _DEPTH, _SAVED
        if self.n is None:
            return self
        with _LOCK:
            if _DEPTH == 0:
                _SAVED = torch.get_num_threads()
                if _SAVED != self.n:
                    torch.set_num_threads(self.n)
            _DEPTH += 1
        return self

    def __exit__(self, *exc):
        global _DEPTH
        if self.n is None:
            return False
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and torch.get_num_threads() != _SAVED:
                torch.set_num_threads(_SAVED)
        return False


def threads_for(n_images: int, n_maps: int) -> torch_threads:
    """One torch thread for small kernels (see ``SMALL_PROBLEM``), the configured count otherwise.

    Parameters
    ----------
    n_images, n_maps : int

    Returns
    -------
    context : torch_threads
    """
    return torch_threads(1 if n_images * n_images * max(n_maps, 1) <= SMALL_PROBLEM else None)


def as_tensor(array, device=None, dtype=torch.float32) -> torch.Tensor:
    """``torch.as_tensor`` for the package's arrays, copying a read-only numpy array first.

    ``np.load(mmap_mode="r")``, joblib's memmaps and broadcast views are read-only: torch cannot mark a tensor
    read-only, so it warns and shares memory that a tensor op could then write to.

    Parameters
    ----------
    array : ndarray, tensor or array-like
    device : str or torch.device, optional
        Default: where a tensor already is, else the CPU.
    dtype : torch.dtype, default=torch.float32

    Returns
    -------
    tensor : Tensor
    """
    if isinstance(array, torch.Tensor):
        return array.to(device=device if device is not None else array.device, dtype=dtype)
    array = np.asarray(array)
    if not array.flags.writeable:
        array = np.array(array)
    return torch.as_tensor(array, device=device, dtype=dtype)
