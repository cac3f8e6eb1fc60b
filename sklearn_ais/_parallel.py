"""Independent work through ``joblib.Parallel``: the backend is the user's choice.

``n_jobs=None`` runs in this process unless a ``joblib.parallel_config`` says
otherwise; any joblib backend works unchanged, among them ``"loky"`` (processes
on this machine), ``"threading"`` and, with ``dask.distributed`` installed,
``"dask"`` (``with joblib.parallel_config(backend="dask"):`` on a
``LocalCluster`` or an HPC cluster from ``dask-jobqueue``). Nothing here
schedules anything itself: results come back in submission order, identical to a
serial run, and one progress bar counts them as they arrive.
"""

from __future__ import annotations

from joblib import Parallel, delayed, effective_n_jobs

__all__ = ["PROGRESS_DELAY", "effective_workers", "nested_calls_share_the_pool", "parallel_map", "progress_bar"]

# Seconds of work before a progress bar appears at verbose=1 (a call that ends sooner prints nothing).
PROGRESS_DELAY = 3.0


def progress_bar(verbose, **kwargs):
    """The package's one kind of progress bar (tqdm), by the ``verbose`` rule every long call follows.

    ``verbose=0`` (or False): no bar. ``verbose=1`` (the default of long
    calls): a bar on an interactive terminal once the work has taken
    :data:`PROGRESS_DELAY` seconds (tqdm's ``disable=None``: none when output
    goes to a file, a pipe or a log). ``verbose >= 2``: a bar from the start,
    wherever output goes.

    Parameters
    ----------
    verbose : int or bool
    **kwargs
        Passed to ``tqdm`` (``total``, ``desc``, ``unit``, ...).

    Returns
    -------
    bar : tqdm
        A disabled bar counts nothing and prints nothing.

    Examples
    --------
    >>> bar = progress_bar(0, total=3)
    >>> bar.disable
    True
    >>> bar.close()
    """
    from tqdm import tqdm

    level = int(verbose or 0)
    disable = True if level <= 0 else (None if level == 1 else False)
    return tqdm(disable=disable, delay=PROGRESS_DELAY if level == 1 else 0, **kwargs)


# Exceptions of the backends that mean a worker died (not an error in the task itself).
_WORKER_DEATHS = ("TerminatedWorkerError", "KilledWorker", "BrokenProcessPool", "CommClosedError",
                  "FutureCancelledError", "CancelledError")


def effective_workers(n_jobs) -> int:
    """How many tasks run at once for ``n_jobs`` under the active joblib backend (at least 1).

    Parameters
    ----------
    n_jobs : int or None

    Returns
    -------
    n : int
    """
    try:
        return max(1, int(effective_n_jobs(n_jobs)))
    except Exception:  # a backend that cannot tell (e.g. a cluster still scaling up)
        return 1


def nested_calls_share_the_pool(n_jobs) -> bool:
    """Whether a joblib call made inside a task runs on the same pool of workers as the call around it.

    True for dask's backend: a task's own ``Parallel`` call is scheduled on the
    whole cluster, and the task gives its slot back while it waits (joblib's
    ``secede``). False where nested calls run in threads of the one worker
    (loky, multiprocessing), for thread backends and when only one task runs
    at a time: there a task that waits for its own sub-tasks would keep a
    worker to itself.

    Parameters
    ----------
    n_jobs : int or None

    Returns
    -------
    shared : bool
    """
    from joblib.parallel import get_active_backend

    if effective_workers(n_jobs) == 1:
        return False
    backend, _ = get_active_backend()
    if getattr(backend, "uses_threads", False):
        return False
    nested, _ = backend.get_nested_backend()
    return type(nested) is type(backend)


def parallel_map(func, tasks, *, n_jobs=None, verbose=0, desc="tasks", unit="task", prefer=None, sizes=None,
                 progress=None) -> list:
    """``[func(*t) for t in tasks]`` through ``joblib.Parallel``, in order, with one progress bar.

    Parameters
    ----------
    func : callable
        A module-level function (picklable for process backends).
    tasks : sequence of tuple
        Positional arguments of each call.
    n_jobs : int or None, default=None
        joblib's ``n_jobs``; None runs serially unless a
        ``joblib.parallel_config`` sets it.
    verbose : int, default=0
        A progress bar over the tasks (see :func:`progress_bar`).
    desc, unit : str
        Label of the progress bar.
    prefer : {"processes", "threads"} or None
        joblib's soft hint, used when no backend is configured.
    sizes : sequence of int, optional
        Units of the progress bar each task counts for (default 1 each): a
        task that runs a backbone's whole grid moves the bar by its fits.
    progress : tqdm, optional
        A bar to move instead of a new one (left open): several calls of one
        job share one bar.

    Returns
    -------
    results : list
        One per task, in the order of ``tasks``.

    Raises
    ------
    RuntimeError
        A worker died (killed, out of memory, lost from the cluster) while a
        task ran: the call fails, never hangs, and says so.
    """
    tasks = list(tasks)
    if not tasks:
        return []
    results, own = [], progress is None and bool(verbose)
    if own:
        progress = progress_bar(verbose, total=len(tasks) if sizes is None else int(sum(sizes)), desc=desc, unit=unit)
    step = [1] * len(tasks) if sizes is None else list(sizes)
    try:
        if effective_workers(n_jobs) == 1 and n_jobs in (None, 1):
            for i, t in enumerate(tasks):
                results.append(func(*t))
                if progress is not None:
                    progress.update(step[i])
            return results
        # mmap_mode="c": large arrays reach loky workers as copy-on-write memmaps, writable as the caller's own
        # (read-only ones made torch warn, and share memory a tensor op could write to).
        runner = Parallel(n_jobs=n_jobs, return_as="generator", prefer=prefer, mmap_mode="c")
        for i, result in enumerate(runner(delayed(func)(*t) for t in tasks)):
            results.append(result)
            if progress is not None:
                progress.update(step[i])
        return results
    except Exception as exc:
        if type(exc).__name__ in _WORKER_DEATHS:
            counted = unit if sizes is None else "task"
            error = RuntimeError(
                f"a worker died while running {desc} ({type(exc).__name__}: {exc}); {len(results)} of "
                f"{len(tasks)} {counted}s had finished (kept in this error's .completed). Check the workers' memory "
                "and logs"
            )
            error.completed = list(results)  # the finished tasks' results, in order: nothing computed is lost
            raise error from exc
        raise
    finally:
        if own:
            progress.close()
