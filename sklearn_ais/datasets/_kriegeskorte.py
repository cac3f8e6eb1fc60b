"""The 92-image set of Kriegeskorte et al. (2008) with human similarity judgments."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.io import loadmat
from scipy.spatial.distance import squareform
from sklearn.utils import Bunch

from ._base import RemoteFile, fetch_files

_COMMIT = "f1f83cadb7243492a1aae7460466e0f0140b20ac"
_URL = f"https://raw.githubusercontent.com/rsagroup/rsatoolbox/{_COMMIT}/demos/92imageData/"
_BEHAVIOUR = RemoteFile(
    "92_behavRDMs.mat",
    _URL + "92_behavRDMs.mat",
    "7a8e118c144c3840adeeeef6ea0706a0be2b3e80df719af15fbb56fc62562f5f",
)
_STIMULI = RemoteFile(
    "Kriegeskorte_Neuron2008_supplementalData.mat",
    _URL + "Kriegeskorte_Neuron2008_supplementalData.mat",
    "06f21214399a5d43dc264eed19a7f4b8daf11c8622a59eec3e106064ce5e3504",
)
REMOTES = (_STIMULI, _BEHAVIOUR)

DESCR = f"""\
.. _kriegeskorte92_dataset:

Kriegeskorte et al. (2008) 92 images with human similarity judgments
--------------------------------------------------------------------

92 colour photographs (175 x 175 pixels) of isolated objects on a grey
background: human and animal faces and bodies, natural objects (fruit,
vegetables, plants, scenes) and artificial objects, originally shown to
monkeys and humans in the inferior-temporal-cortex study of Kriegeskorte et
al. (2008). Mur et al. (2013) asked 16 human subjects to arrange the images
by similarity (multi-arrangement); each subject gives a 92 x 92
dissimilarity matrix (RDM: symmetric, zero diagonal, values in about
[0, 0.03]). The mean inter-subject correlation of the RDMs is about 0.36.

``dissimilarity`` is the mean of the 16 subject RDMs. ``similarity`` is
``dissimilarity.max() - dissimilarity``: a decreasing affine function of the
mean RDM, non-negative, whose diagonal equals its maximum. Downstream
comparisons are rank- or affine-invariant, so the shift does not matter.
``neural_dissimilarities`` holds the two brain RDMs distributed with the
stimuli (monkey IT, 674 neurons; human IT, 316 fMRI voxels).

Source: ``demos/92imageData/`` of the rsatoolbox repository
(https://github.com/rsagroup/rsatoolbox, MIT licence), commit {_COMMIT}.

References

- Kriegeskorte, N., Mur, M., Ruff, D. A., Kiani, R., Bodurka, J., Esteky,
  H., Tanaka, K., & Bandettini, P. A. (2008). Matching categorical object
  representations in inferior temporal cortex of man and monkey. Neuron,
  60(6), 1126-1141.
- Mur, M., Meys, M., Bodurka, J., Goebel, R., Bandettini, P. A., &
  Kriegeskorte, N. (2013). Human object-similarity judgments reflect and
  transcend the primate-IT object representation. Frontiers in Psychology,
  4, 128.
"""


def load_kriegeskorte92(data_home=None, download=True, return_X_y=False):
    """Load the 92 object images and 16 subjects' similarity judgments.

    Files are read from ``<data_home>/kriegeskorte92/`` (about 4.6 MB) and
    checked against their sha256; missing files are downloaded from a
    pinned commit of the rsatoolbox repository when ``download=True``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Data folder; ``None`` uses ``$SKLEARN_AIS_DATA`` or else
        ``~/sklearn_ais_data`` (see :func:`get_data_home`).
    download : bool, default=True
        Fetch missing images and judgments (4.6 MB). With ``False`` a missing
        file raises :class:`DataUnavailableError`.
    return_X_y : bool, default=False
        Return ``(images, similarity)`` instead of a Bunch, ready for
        ``estimator.fit(X, y)``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : ndarray of shape (92, 175, 175, 3), uint8
            The photographs, RGB.
        similarity : ndarray of shape (92, 92), float64
            Mean human similarity, ``dissimilarity.max() - dissimilarity``.
        dissimilarity : ndarray of shape (92, 92), float64
            Mean of the subject RDMs (zero diagonal).
        subject_dissimilarities : ndarray of shape (16, 92, 92), float64
            One RDM per subject.
        subject_names : ndarray of shape (16,), str
            ``'subject1'`` ... ``'subject16'``.
        ids : ndarray of shape (92,), str
            Stable image identifiers ``'img00'`` ... ``'img91'`` in file order.
        categories : pandas.DataFrame of shape (92, 5)
            Indexed by ``ids``; ``category`` (e.g. ``'human face'``) and the
            boolean flags ``human``, ``face``, ``animal``, ``natural``.
        category_labels : ndarray of shape (12,), str
            Names of the columns of ``category_vectors`` (``'animate'``,
            ``'face'``, ``'natObj'``, ...).
        category_vectors : ndarray of shape (92, 12), bool
            Membership of each image in each label.
        neural_dissimilarities : dict of str -> ndarray of shape (92, 92)
            Monkey and human inferior-temporal RDMs from the original study.
        DESCR : str
            Description, sources, licence and references.
    (images, similarity) : tuple
        If ``return_X_y`` is True.

    Raises
    ------
    DataUnavailableError
        (an :class:`OSError`) if a file is missing and ``download=False``
        or the download fails; the message lists the files, their URLs and
        the folder to put them in. Also raised when a local file's sha256
        does not match.

    Examples
    --------
    >>> from sklearn_ais.datasets import load_kriegeskorte92
    >>> data = load_kriegeskorte92()  # doctest: +SKIP
    >>> data.images.shape, data.similarity.shape  # doctest: +SKIP
    ((92, 175, 175, 3), (92, 92))
    >>> data.categories["face"].sum()  # doctest: +SKIP
    np.int64(24)
    """
    paths = fetch_files("kriegeskorte92", REMOTES, data_home=data_home, download=download)
    stim = loadmat(paths[_STIMULI.filename], simplify_cells=True)
    behav = loadmat(paths[_BEHAVIOUR.filename], simplify_cells=True)

    objects = stim["stimuli_92objs"]
    images = np.stack([np.asarray(o["image"], dtype=np.uint8) for o in objects])
    if return_X_y:
        rdms = np.stack([np.asarray(s["RDM"], dtype=np.float64) for s in behav["rdms_behav_92"]])
        dissimilarity = rdms.mean(axis=0)
        return images, dissimilarity.max() - dissimilarity

    n = len(objects)
    ids = np.array([f"img{i:02d}" for i in range(n)])
    categories = pd.DataFrame(
        {
            "category": pd.Categorical([str(o["category"]) for o in objects]),
            **{flag: np.array([bool(o[flag]) for o in objects]) for flag in ("human", "face", "animal", "natural")},
        },
        index=pd.Index(ids, name="id"),
    )

    subjects = behav["rdms_behav_92"]
    rdms = np.stack([np.asarray(s["RDM"], dtype=np.float64) for s in subjects])
    # Names look like 'simJudge | subject1'; keep the subject part.
    subject_names = np.array([str(s["name"]).split("|")[-1].strip() for s in subjects])
    dissimilarity = rdms.mean(axis=0)

    # Brain RDMs are stored condensed (MATLAB pdist order == scipy's).
    neural = {
        str(r["name"]): squareform(np.asarray(r["RDM"], dtype=np.float64), checks=False)
        for r in np.atleast_1d(stim.get("RDMs_mIT_hIT_fig1", []))
    }

    return Bunch(
        images=images,
        similarity=dissimilarity.max() - dissimilarity,
        dissimilarity=dissimilarity,
        subject_dissimilarities=rdms,
        subject_names=subject_names,
        ids=ids,
        categories=categories,
        category_labels=np.array([str(c) for c in stim["categoryLabels"]]),
        category_vectors=np.asarray(stim["categoryVectors"]).astype(bool),
        neural_dissimilarities=neural,
        DESCR=DESCR,
    )
