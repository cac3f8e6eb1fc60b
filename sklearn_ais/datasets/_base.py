"""Data folder resolution and checksum-verified downloads of remote files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen  # module attribute: tests monkeypatch it

__all__ = ["DataUnavailableError", "get_data_home"]

DATA_HOME_ENV = "SKLEARN_AIS_DATA"
_DEFAULT_DATA_HOME = Path("~") / "sklearn_ais_data"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


class DataUnavailableError(OSError):
    """A dataset's files are missing locally and could not be downloaded.

    Raised by the ``load_*`` functions when ``download=False`` or when the
    download fails (no network, HTTP error, wrong checksum). The message names
    each missing file, its public URL and the folder to put it in, so the
    files can be fetched by hand on another machine. It is a subclass of
    :class:`OSError`, so ``except OSError`` catches it.
    """


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset: its name, public URL and sha256 checksum."""

    filename: str
    url: str
    sha256: str


def get_data_home(data_home=None) -> Path:
    """Folder that holds the datasets of ``sklearn_ais``.

    Resolution order: the ``data_home`` argument, then the environment
    variable ``SKLEARN_AIS_DATA``, then ``~/sklearn_ais_data``. The folder
    is not created here (a shared read-only copy is fine); it is created only
    when a download has to write into it.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Explicit folder; ``~`` is expanded.

    Returns
    -------
    data_home : pathlib.Path

    Examples
    --------
    >>> from sklearn_ais.datasets import get_data_home
    >>> str(get_data_home("/tmp/my_data"))
    '/tmp/my_data'
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or _DEFAULT_DATA_HOME
    return Path(data_home).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# Files already verified in this process, keyed by (path, size, mtime): a
# changed file has a new key and is verified again.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify(path: Path, remote: RemoteFile) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    actual = _sha256(path)
    if actual != remote.sha256:
        raise DataUnavailableError(
            f"{path} is corrupted or not the expected version: sha256 {actual}, "
            f"expected {remote.sha256}. Delete it and load again with "
            f"download=True, or replace it with a copy of {remote.url}"
        )
    _VERIFIED.add(key)


def _download(remote: RemoteFile, folder: Path) -> Path:
    """Download ``remote`` into ``folder`` atomically, verifying its sha256.

    The bytes go to a temporary file in the same folder, renamed onto the
    final name only after the checksum matches, so an interrupted or
    corrupted download never leaves a file that looks complete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urlopen(remote.url, timeout=_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != remote.sha256:
            raise OSError(
                f"checksum mismatch for {remote.url}: sha256 {digest.hexdigest()}, "
                f"expected {remote.sha256}"
            )
        final = folder / remote.filename
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _unavailable_message(dataset, folder, missing, reason=None):
    lines = [f"Dataset {dataset!r}: missing file(s) in {folder}:"]
    lines += [f"  {r.filename}  <-  {r.url}  (sha256 {r.sha256})" for r in missing]
    if reason:
        lines.append(f"Download failed: {reason}")
    else:
        lines.append("download=False, so nothing was fetched.")
    lines.append(
        f"Download the file(s) into {folder} (for example on a machine with internet "
        f"access), or point data_home / the {DATA_HOME_ENV} environment variable at a "
        f"folder that contains '{folder.name}/'."
    )
    return "\n".join(lines)


def fetch_files(dataset: str, remotes, data_home=None, download=True) -> dict[str, Path]:
    """Local, verified paths of a dataset's files, downloading missing ones.

    Files live in ``<data_home>/<dataset>/``. Existing files are checked
    against their sha256 (once per process and file version); a mismatch
    raises :class:`DataUnavailableError` rather than silently overwriting a
    file the user put there.

    Parameters
    ----------
    dataset : str
        Sub-folder of the data folder.
    remotes : sequence of RemoteFile
    data_home : str or path-like, optional
    download : bool, default=True

    Returns
    -------
    paths : dict of str to Path
        By file name.
    """
    folder = get_data_home(data_home) / dataset
    paths, missing = {}, []
    for remote in remotes:
        path = folder / remote.filename
        if path.is_file():
            _verify(path, remote)
            paths[remote.filename] = path
        else:
            missing.append(remote)
    if missing and not download:
        raise DataUnavailableError(_unavailable_message(dataset, folder, missing))
    for i, remote in enumerate(missing):
        try:
            path = _download(remote, folder)
        except Exception as exc:  # network, HTTP, permissions, checksum
            raise DataUnavailableError(
                _unavailable_message(dataset, folder, missing[i:], reason=f"{type(exc).__name__}: {exc}")
            ) from exc
        _verify(path, remote)  # cheap; records the new file as verified
        paths[remote.filename] = path
    return paths
