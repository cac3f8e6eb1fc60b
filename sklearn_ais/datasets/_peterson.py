"""Human similarity ratings for 120 animal images (Peterson et al.)."""

from __future__ import annotations

import numpy as np
from scipy.io import loadmat
from sklearn.utils import Bunch

from ._base import RemoteFile, fetch_files

# Full hash of commit 2f82c62 (the raw host resolves full hashes reliably).
_COMMIT = "2f82c622a8c4677101364e0b22883fc32e782faf"
_FILE = RemoteFile(
    "turkResults_CogSci2016.mat",
    f"https://raw.githubusercontent.com/jcpeterson/percept2vec/{_COMMIT}/turkResults_CogSci2016.mat",
    "57317121aaa43f553b6551d523eaf0740269e695c0dc438f36735f2ccb85977e",
)
REMOTES = (_FILE,)

DESCR = f"""\
.. _peterson_animals_dataset:

Peterson et al. animal similarity ratings (120 images)
------------------------------------------------------

Mean human similarity ratings (scale 0-10, diagonal 10) for all pairs of
120 photographs of animals, collected on Amazon Mechanical Turk by Peterson,
Abbott & Griffiths. The raters were split into two batches whose mean
matrices are given separately (``similarity_halves``), which gives a
split-half reliability / noise ceiling (the two halves correlate at about
0.91 on the upper triangle). The images themselves are not included, so this
dataset serves matrix-level code (similarity metrics, splitters, noise
ceilings), not feature extraction.

Source: ``turkResults_CogSci2016.mat`` in
https://github.com/jcpeterson/percept2vec, commit {_COMMIT[:7]}. The images
in that repository were scraped from the web and are not redistributed
here; see the repository for its terms.

References

- Peterson, J. C., Abbott, J. T., & Griffiths, T. L. (2016). Adapting deep
  network features to capture psychological representations. Proceedings
  of the 38th Annual Conference of the Cognitive Science Society.
- Peterson, J. C., Abbott, J. T., & Griffiths, T. L. (2018). Evaluating
  (and improving) the correspondence between deep neural networks and human
  representations. Cognitive Science, 42(8), 2648-2669.
"""


def load_peterson_animals(data_home=None, download=True):
    """Load the 120 x 120 human similarity matrix for animal images.

    The file is read from ``<data_home>/peterson_animals/`` (66 kB) and
    checked against its sha256; it is downloaded from a pinned commit of the
    percept2vec repository when missing and ``download=True``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Data folder (see :func:`get_data_home`: ``$SKLEARN_AIS_DATA``, else
        ``~/sklearn_ais_data``).
    download : bool, default=True
        Download the file if missing. With ``False`` a missing file raises.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        similarity : ndarray of shape (120, 120), float64
            Mean similarity rating, 0-10, symmetric, diagonal 10.
        similarity_halves : ndarray of shape (2, 120, 120), float64
            The same from each of the two batches of raters.
        names : ndarray of shape (120,), str
            Image identifiers from the source (e.g. ``'7'``).
        image_indices : ndarray of shape (120,), int
            The same identifiers as integers.
        DESCR : str
            Description, source and references.

    Raises
    ------
    DataUnavailableError
        (an :class:`OSError`) if the file is missing and ``download=False``
        or the download fails, or if the local file's sha256 does not match.

    Examples
    --------
    >>> from sklearn_ais.datasets import load_peterson_animals
    >>> data = load_peterson_animals()  # doctest: +SKIP
    >>> data.similarity.shape, data.similarity_halves.shape  # doctest: +SKIP
    ((120, 120), (2, 120, 120))
    """
    paths = fetch_files("peterson_animals", REMOTES, data_home=data_home, download=download)
    mat = loadmat(paths[_FILE.filename], simplify_cells=True)
    return Bunch(
        similarity=np.asarray(mat["simMatrix"], dtype=np.float64),
        similarity_halves=np.stack(
            [np.asarray(mat[k], dtype=np.float64) for k in ("simMatrixFirstBatch", "simMatrixSecondBatch")]
        ),
        names=np.array([str(s).strip() for s in mat["animals_big_names"]]),
        image_indices=np.asarray(mat["animals_big_idx"], dtype=np.int64),
        DESCR=DESCR,
    )
