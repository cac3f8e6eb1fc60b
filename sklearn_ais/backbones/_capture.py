"""Capture a layer's output during a forward pass, safely from several threads.

Forward hooks live on the module, so they are shared by every thread that
runs the model: a hook registered by one call fires in another thread's
forward pass, and registering or removing a hook while another thread's pass
iterates the module's hooks breaks that pass. :func:`capture` therefore

* holds a per-model lock for the whole register -> forward -> remove sequence
  (forward passes of one model are serialised; everything else, such as
  decoding and resizing images, runs in parallel), and
* registers a hook that records only the output of its own thread's pass (a
  forward pass that some other code runs on the same model at the same time,
  without the lock, is left alone).

:func:`device_lease` moves a model to a device for the duration of a block
and back afterwards, counting nested and concurrent users so that one thread
never moves the model away from under another.

Separate processes (joblib's loky backend) each hold their own copy of the
model; nothing is shared between them.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch import nn

_REGISTRY_LOCK = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LEASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class LayerNotCalledError(RuntimeError, ValueError):
    """The feature-map layer did not run during the forward pass."""


class _StopForward(Exception):
    """Raised by the capture hook to skip the rest of the forward pass."""


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises hooked forward passes of ``model`` (created on first use).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    lock : threading.RLock
        Re-entrant: a thread holding it may run nested captures.
    """
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def capture(model: nn.Module, layer: str, run, *, stop: bool = True, clone: bool = False):
    """Run ``run()`` (a forward pass of ``model``) and capture the output of ``layer``.

    Parameters
    ----------
    model : nn.Module
    layer : str
        Name of the submodule (``model.get_submodule(layer)``).
    run : callable
        Runs the forward pass, e.g. ``lambda: model(x)``.
    stop : bool, default=True
        Skip the rest of the forward pass once ``layer`` has run (its first
        call in this thread is captured). ``run``'s result is then ``None``.
    clone : bool, default=False
        Keep a copy of the output (later in-place operations, such as
        DenseNet's ``F.relu(..., inplace=True)``, must not alter it).

    Returns
    -------
    result : object
        What ``run()`` returned (``None`` when ``stop``).
    output : Tensor
        The output of ``layer``.

    Raises
    ------
    LayerNotCalledError
        ``layer`` did not run (e.g. it is used through a functional call, or
        only its parameters are used). Also a ``ValueError``.
    """
    module = model.get_submodule(layer)
    owner = threading.get_ident()
    captured = []

    def hook(mod, inputs, output):
        if threading.get_ident() != owner or captured:
            return None
        captured.append(output.clone() if clone and isinstance(output, torch.Tensor) else output)
        if stop:
            raise _StopForward
        return None

    result = None
    with model_lock(model):
        handle = module.register_forward_hook(hook)
        try:
            result = run()
        except _StopForward:
            pass
        finally:
            handle.remove()
    if not captured:
        raise LayerNotCalledError(
            f"layer {layer!r} of {type(model).__name__} was not called during the forward pass "
            "(is it used through a module call? pick a layer from dict(model.named_modules()) whose module runs)"
        )
    return result, captured[0]


def capture_many(model: nn.Module, layers, run, *, clone: bool = False):
    """:func:`capture` of several layers in one forward pass, stopped once every one of them has run.

    Parameters
    ----------
    model : nn.Module
    layers : sequence of str
        Submodule names (repeats are captured once).
    run : callable
    clone : bool, default=False

    Returns
    -------
    result : None
        The pass always stops after the last requested layer.
    outputs : list of Tensor
        The output of each layer, in the order of ``layers``.

    Raises
    ------
    LayerNotCalledError
        A layer did not run.
    """
    names = list(dict.fromkeys(layers))
    owner = threading.get_ident()
    captured: dict = {}

    def make_hook(name):
        def hook(mod, inputs, output):
            if threading.get_ident() != owner or name in captured:
                return None
            captured[name] = output.clone() if clone and isinstance(output, torch.Tensor) else output
            if len(captured) == len(names):
                raise _StopForward
            return None
        return hook

    with model_lock(model):
        handles = [model.get_submodule(name).register_forward_hook(make_hook(name)) for name in names]
        try:
            run()
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise LayerNotCalledError(
            f"layer(s) {missing} of {type(model).__name__} were not called during the forward pass "
            "(pick layers from dict(model.named_modules()) whose modules run)"
        )
    return None, [captured[name] for name in layers]


@contextlib.contextmanager
def device_lease(model: nn.Module, device):
    """Hold ``model`` on ``device`` for the block; move it back when the last holder leaves.

    Parameters
    ----------
    model : nn.Module
    device : torch.device

    Yields
    ------
    model : nn.Module

    Raises
    ------
    RuntimeError
        Another thread holds the model on a different device.
    """
    device = torch.device(device)
    with model_lock(model):
        lease = _LEASES.get(model)
        if lease is None:
            p = next(model.parameters(), None)
            home = p.device if p is not None else torch.device("cpu")
            lease = _LEASES[model] = {"device": device, "home": home, "count": 0}
            if device != home:
                model.to(device)
        elif lease["device"] != device:
            raise RuntimeError(
                f"{type(model).__name__} is in use on {lease['device']} by another thread; "
                f"it cannot run on {device} at the same time (use one device per transformer)"
            )
        lease["count"] += 1
    try:
        yield model
    finally:
        with model_lock(model):
            lease["count"] -= 1
            if lease["count"] == 0:
                del _LEASES[model]
                if lease["device"] != lease["home"]:
                    model.to(lease["home"])
