"""Where torch work runs."""

from __future__ import annotations

import torch


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
