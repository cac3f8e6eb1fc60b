"""WordNet similarity matrices (through nltk's WordNet reader) and the 2OI of an embedding with them.

Tarigopula et al. (2023) checked that pruned embeddings align better with the
WordNet hierarchy; :func:`wordnet_alignment` gives that check for any
selection of units or maps.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
from sklearn.utils import Bunch

from ._similarity import COMPARISONS, SIMILARITIES, correlation, similarity_matrix, upper_triangle
from ._validation import as_feature_mask, is_feature_maps

__all__ = ["WORDNET_MEASURES", "WordNetNotFoundError", "load_wordnet", "wordnet_alignment", "wordnet_similarity"]

WORDNET_MEASURES = ("path", "wup", "depth")
_OFFSET_ID = re.compile(r"^([nvars])(\d{8})$")
_DOWNLOAD = ("the WordNet corpus is not installed: run  python -m nltk.downloader wordnet  "
             "(once; or pass wordnet= a WordNetCorpusReader)")


class WordNetNotFoundError(LookupError):
    """nltk or its WordNet corpus is missing (the message says how to install it)."""

    def __str__(self):  # one line, whatever nltk's own LookupError says
        return str(self.args[0]) if self.args else _DOWNLOAD


def load_wordnet():
    """nltk's WordNet corpus reader, from nltk's data path (``nltk.data.path``, ``$NLTK_DATA``).

    Returns
    -------
    reader : nltk.corpus.reader.WordNetCorpusReader

    Raises
    ------
    WordNetNotFoundError
        nltk is not installed, or the corpus is not downloaded: a one-line
        message with the command that fixes it.
    """
    try:
        import nltk
        from nltk.corpus.reader import WordNetCorpusReader
    except ImportError:
        raise WordNetNotFoundError("WordNet similarities need nltk: pip install nltk  (or sklearn-ais[wordnet])") \
            from None
    try:
        root = nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            root = nltk.data.find("corpora/wordnet.zip/wordnet/")
        except LookupError:
            raise WordNetNotFoundError(_DOWNLOAD) from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNetCorpusReader(root, None)


def _synset(reader, key):
    key = str(key).strip()
    match = _OFFSET_ID.match(key)
    try:
        if match:  # ImageNet-style id: part of speech and the 8-digit offset
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = reader.synset_from_pos_and_offset(match.group(1), int(match.group(2)))
            if found is None:
                raise ValueError(f"no WordNet synset has the id {key!r}")
            return found
        if re.match(r"^.+\.[nvars]\.\d+$", key):  # a synset name such as 'dog.n.01'
            return reader.synset(key)
        found = reader.synsets(key.replace(" ", "_"), pos="n") or reader.synsets(key.replace(" ", "_"))
    except Exception as exc:  # nltk's WordNetError and friends
        if isinstance(exc, ValueError) and "no WordNet synset" in str(exc):
            raise
        raise ValueError(f"{key!r} is not a WordNet synset ({exc})") from None
    if not found:
        raise ValueError(f"{key!r} is not a WordNet lemma (pass a synset id like 'n01440764' or a name like 'dog.n.01')")
    return found[0]  # the most frequent sense


def _pair_similarity(a, b, measure):
    if measure == "path":
        v = a.path_similarity(b)
    elif measure == "wup":
        v = a.wup_similarity(b)
    else:
        common = a.lowest_common_hypernyms(b)
        v = max(c.max_depth() for c in common) if common else None
    return np.nan if v is None else float(v)


def wordnet_similarity(synsets, measure="wup", wordnet=None):
    """The WordNet similarity matrix of a list of synsets.

    Parameters
    ----------
    synsets : sequence of str
        ImageNet-style ids (``"n01440764"``: part of speech and the synset's
        8-digit offset in WordNet 3.0), synset names (``"dog.n.01"``), or
        lemmas (``"dog"``: its most frequent noun sense).
    measure : {"path", "wup", "depth"}, default="wup"
        ``"path"``: ``1 / (1 + shortest hypernym path)``; ``"wup"``:
        Wu-Palmer, ``2 d(lcs) / (d(a) + d(b))`` with depths counted from 1 at
        the root (nltk's definitions); ``"depth"``: the depth of the lowest
        common hypernym (the root is 0).
    wordnet : WordNetCorpusReader, optional
        Default: :func:`load_wordnet`.

    Returns
    -------
    S : ndarray of shape (n, n)
        Symmetric; the diagonal is each synset with itself (NaN for pairs
        nltk cannot relate, e.g. across parts of speech).

    Raises
    ------
    WordNetNotFoundError
        nltk or the corpus is missing (one line saying how to install it).
    ValueError
        Unknown measure or synset.
    """
    if measure not in WORDNET_MEASURES:
        raise ValueError(f"measure must be one of {WORDNET_MEASURES}, got {measure!r}")
    reader = load_wordnet() if wordnet is None else wordnet
    items = [_synset(reader, s) for s in synsets]
    n = len(items)
    S = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            S[i, j] = S[j, i] = _pair_similarity(items[i], items[j], measure)
    return S


def wordnet_alignment(X, synsets, *, keep=None, measure="wup", similarity="pearson", comparison="spearman",
                      wordnet=None):
    """2OI of an embedding with the WordNet hierarchy, before and after a selection of its units or maps.

    Parameters
    ----------
    X : array-like of shape (n_images, n_units) or FeatureMaps
        Embeddings (units: e.g. penultimate-layer activations), or feature
        maps embedded through their head.
    synsets : sequence of str
        One per image (see :func:`wordnet_similarity`).
    keep : array-like of bool or int, optional
        The selection (a pruner's or selector's ``support_``); ``None``
        reports the full embedding only.
    measure : {"path", "wup", "depth"}, default="wup"
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : str, default="spearman"
    wordnet : WordNetCorpusReader, optional

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        before : float
            2OI of the full embedding with the WordNet matrix.
        after : float or None
            2OI of the selected units (``None`` without ``keep``).
        wordnet_similarity : ndarray of shape (n, n)
            The WordNet matrix the embeddings were compared with.
    """
    if similarity not in SIMILARITIES or comparison not in COMPARISONS:
        raise ValueError(f"similarity must be in {SIMILARITIES} and comparison in {COMPARISONS}")
    S = wordnet_similarity(synsets, measure=measure, wordnet=wordnet)
    if is_feature_maps(X):
        full, K = X.embed(), X.n_maps
        embed_kept = (lambda mask: X.embed(keep=mask))
    else:
        full = np.asarray(X, dtype=np.float64)
        if full.ndim != 2 or not np.isfinite(full).all():
            raise ValueError(f"X must be a finite 2-D array (n_images, n_units), got shape {full.shape}")
        K = full.shape[1]
        embed_kept = (lambda mask: full * mask)  # an unselected unit is 0, as AISSelector ablates it
    if len(full) != len(S):
        raise ValueError(f"X has {len(full)} images but {len(S)} synsets were given")
    h = upper_triangle(S)

    def score(E):
        return correlation(upper_triangle(similarity_matrix(E, similarity)), h, comparison)

    after = None
    if keep is not None:
        after = score(embed_kept(as_feature_mask(keep, K, "keep")))
    return Bunch(before=score(full), after=after, wordnet_similarity=S)
