"""A folder of your own images and, optionally, the matrix file of their human (dis)similarities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .._files import InputFileError, display_name, list_image_files, read_matrix_for


def load_image_folder(folder, similarity=None, *, similarity_key=None):
    """A folder of images and the matrix file that judges them, returned aligned.

    The images are read in natural order of their file names (``im2`` before
    ``im10``; a sorted glob would put ``im10`` first), hidden files
    (``.x.png``, macOS' ``._x.png``) and sub-folders skipped. A matrix file
    that carries labels (a header row and/or an index column, as pandas'
    ``to_csv`` writes) is matched to the images by name: a label is a file
    name, with or without its suffix; a missing, extra or repeated label is
    an error naming it, and a header that disagrees with the index is an
    error. A file without labels (``.npy``, ``.mat``, a bare CSV) is paired
    with the images by position, in the order above.

    Parameters
    ----------
    folder : str or path-like
        The folder of image files (``.png``, ``.jpg``, ``.tif``, ...).
    similarity : str or path-like, optional
        A ``.csv``/``.tsv``/``.txt``, ``.npy`` or ``.mat`` file holding the
        n x n human similarity (or dissimilarity) matrix.
    similarity_key : str, optional
        The variable of a ``.mat`` file holding the matrix.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : list of str
            The image files, in the order of every output.
        ids : list of str
            Their file names.
        similarity : ndarray of shape (n, n) or None
            The matrix, rows and columns in the order of ``images``; pass it
            as ``y`` (with ``y_kind="dissimilarity"`` for an RDM).
        order : str
            How the images were ordered and the matrix paired with them.

    Raises
    ------
    InputFileError
        No such folder, no images in it, an unreadable matrix file, a matrix
        whose size or labels do not match the images.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from sklearn_ais.datasets import load_image_folder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["im10.png", "im2.png", "im1.png"]:
    ...     Image.new("RGB", (8, 8)).save(d / name)
    >>> _ = (d / "judgments.csv").write_text(",im1,im10,im2\\nim1,1,0.1,0.9\\nim10,0.1,1,0.2\\nim2,0.9,0.2,1\\n")
    >>> data = load_image_folder(d, similarity=d / "judgments.csv")
    >>> data.ids
    ['im1.png', 'im2.png', 'im10.png']
    >>> data.similarity
    array([[1. , 0.9, 0.1],
           [0.9, 1. , 0.2],
           [0.1, 0.2, 1. ]])
    """
    p = Path(folder)
    if not p.is_dir():
        hint = " (a file: give the folder of images)" if p.is_file() else ""
        raise InputFileError(f"{display_name(folder)}: no such folder{hint}")
    files = list_image_files(p)
    if not files:
        raise InputFileError(f"{display_name(folder)}: the folder holds no image files")
    ids = [display_name(f.name) for f in files]
    order = f"{len(ids)} images of {display_name(folder)} in natural order of their file names"
    S = None
    if similarity is not None:
        S, how = read_matrix_for(similarity, ids, similarity_key)
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise InputFileError(f"{display_name(similarity)}: expected a square matrix, got shape {S.shape}")
        if S.shape[0] != len(ids):
            raise InputFileError(
                f"{display_name(similarity)} is {S.shape[0]} x {S.shape[1]} but {display_name(folder)} holds "
                f"{len(ids)} images; they must match"
            )
        order += f"; {display_name(similarity)}: {how}"
    return Bunch(images=[str(f) for f in files], ids=ids, similarity=None if S is None else np.asarray(S), order=order)


def write_example_folder(path="stim", n_images=30, *, image_size=96, random_state=0):
    """Write a folder of images and its labelled judgments file, laid out as your own study would be.

    The images of :func:`~sklearn_ais.datasets.make_similarity_task` (a
    simulated observer who judges shape and colour) as ``path/im1.png`` ..
    ``path/imN.png``, and the observer's similarity matrix as
    ``path/judgments.csv``, labelled with the images' names in alphabetical
    order (``im1, im10, im11, ..., im2``), as a spreadsheet sorts them:
    :func:`load_image_folder` matches the rows by name.

    Parameters
    ----------
    path : str or path-like, default="stim"
        The folder (created; it may hold an earlier example, rewritten, but no
        other image files).
    n_images : int, default=30
    image_size : int, default=96
    random_state : int, default=0

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        folder : Path
        similarity_file : Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sklearn_ais.datasets import load_image_folder, write_example_folder
    >>> example = write_example_folder(pathlib.Path(tempfile.mkdtemp()) / "stim", n_images=12, image_size=32)
    >>> data = load_image_folder(example.folder, similarity=example.similarity_file)
    >>> data.ids[:3], data.similarity.shape
    (['im1.png', 'im2.png', 'im3.png'], (12, 12))
    """
    import pandas as pd
    from PIL import Image

    from ._synthetic import make_similarity_task

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"im{i + 1}" for i in range(n_images)]
    others = [f.name for f in list_image_files(folder) if f.name not in {f"{n}.png" for n in names}]
    if others:  # an earlier example folder is rewritten; a folder of other images is never touched
        raise InputFileError(f"{display_name(folder)}: the folder holds other image files (e.g. {others[:2]}); "
                             "choose another one")
    task = make_similarity_task(n_images=n_images, image_size=image_size, random_state=random_state)
    for name, image in zip(names, task.images):
        Image.fromarray(image).save(folder / f"{name}.png")
    order = sorted(range(n_images), key=lambda i: names[i])  # alphabetical: im1, im10, im11, ..., im2, ...
    labels = [names[i] for i in order]
    S = np.asarray(task.similarity)[np.ix_(order, order)]
    pd.DataFrame(S, index=labels, columns=labels).to_csv(folder / "judgments.csv")
    return Bunch(folder=folder, similarity_file=folder / "judgments.csv")
