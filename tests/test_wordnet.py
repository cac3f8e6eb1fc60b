"""WordNet similarities on a small hierarchy written in WordNet 3.0's file format, against hand-computed values."""

import numpy as np
import pytest

from sklearn_ais.evaluation import WordNetNotFoundError, wordnet_alignment, wordnet_similarity

nltk = pytest.importorskip("nltk", reason="pip install -e '.[test]' (nltk)")

# entity -> animal -> {dog -> puppy, cat};  entity -> artifact -> car
HIERARCHY = {"entity": None, "animal": "entity", "dog": "animal", "puppy": "dog", "cat": "animal",
             "artifact": "entity", "car": "artifact"}


def _write_wordnet(root):
    """data.noun / index.noun (and the empty files the reader opens) under root/corpora/wordnet."""
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    names = list(HIERARCHY)
    children = {n: [c for c, p in HIERARCHY.items() if p == n] for n in names}
    # Offsets are byte positions of each line; lines have a fixed length so they can be computed first.
    width = 120

    def line(name, offset_of):
        ptrs = ([f"@ {offset_of[HIERARCHY[name]]:08d} n 0000"] if HIERARCHY[name] else []) + \
            [f"~ {offset_of[c]:08d} n 0000" for c in children[name]]
        text = f"{offset_of[name]:08d} 03 n 01 {name} 0 {len(ptrs):03d} {' '.join(ptrs)} | a {name}"
        return text.ljust(width - 1) + "\n"

    offset_of = {n: i * width for i, n in enumerate(names)}
    (folder / "data.noun").write_text("".join(line(n, offset_of) for n in names))
    index = "".join(f"{n} n 1 1 @ 1 0 {offset_of[n]:08d}  \n" for n in sorted(names))
    (folder / "index.noun").write_text(index)
    (folder / "lexnames").write_text("00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n03\tnoun.Tops\t1\n")
    for name in ("index.adj", "index.adv", "index.verb", "data.adj", "data.adv", "data.verb", "adj.exc", "adv.exc",
                 "noun.exc", "verb.exc", "index.sense", "cntlist.rev"):
        (folder / name).write_text("")
    return offset_of


@pytest.fixture
def tiny_wordnet(tmp_path, monkeypatch):
    offsets = _write_wordnet(tmp_path)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    return offsets


def test_similarities_equal_hand_computed_values(tiny_wordnet):
    words = ["dog", "cat", "puppy", "car"]
    # path = 1 / (1 + edges): dog-cat 2, dog-puppy 1, dog-car 4, cat-puppy 3, cat-car 4, puppy-car 5.
    path = np.array([[1, 1 / 3, 1 / 2, 1 / 5], [1 / 3, 1, 1 / 4, 1 / 5], [1 / 2, 1 / 4, 1, 1 / 6],
                     [1 / 5, 1 / 5, 1 / 6, 1]])
    np.testing.assert_allclose(wordnet_similarity(words, "path"), path)
    # Wu-Palmer with depths from 1 at the root: entity 1, animal/artifact 2, dog/cat/car 3, puppy 4.
    # 2 d(lcs) / (d(a) + d(b)): dog-cat 4/6, dog-puppy 6/7, dog-car 2/6, cat-puppy 4/7, cat-car 2/6, puppy-car 2/7.
    wup = np.array([[1, 4 / 6, 6 / 7, 2 / 6], [4 / 6, 1, 4 / 7, 2 / 6], [6 / 7, 4 / 7, 1, 2 / 7],
                    [2 / 6, 2 / 6, 2 / 7, 1]])
    np.testing.assert_allclose(wordnet_similarity(words, "wup"), wup)
    # Depth of the lowest common hypernym (root 0): dog-cat animal 1, dog-puppy dog 2, anything-car entity 0.
    depth = np.array([[2, 1, 2, 0], [1, 2, 1, 0], [2, 1, 3, 0], [0, 0, 0, 2]])
    np.testing.assert_allclose(wordnet_similarity(words, "depth"), depth)
    # The same synsets by ImageNet-style ids and by synset names.
    ids = [f"n{tiny_wordnet[w]:08d}" for w in words]
    np.testing.assert_allclose(wordnet_similarity(ids, "wup"), wup)
    np.testing.assert_allclose(wordnet_similarity([f"{w}.n.01" for w in words], "path"), path)
    with pytest.raises(ValueError, match="not a WordNet lemma"):
        wordnet_similarity(["dog", "unicorn"])
    with pytest.raises(ValueError, match="measure"):
        wordnet_similarity(words, "lin")


def test_alignment_before_and_after_selection(tiny_wordnet):
    from scipy.stats import spearmanr

    words = ["dog", "cat", "puppy", "car", "animal", "artifact"]
    S = wordnet_similarity(words, "wup")
    rng = np.random.default_rng(0)
    informative = np.linalg.cholesky(S + 1e-6 * np.eye(6)) * 3  # units whose Gram matrix is S
    X = np.hstack([informative, rng.normal(size=(6, 20)) * 2])
    keep = np.r_[np.ones(6, bool), np.zeros(20, bool)]
    res = wordnet_alignment(X, words, keep=keep, measure="wup")
    iu = np.triu_indices(6, 1)
    assert np.isclose(res.before, spearmanr(np.corrcoef(X)[iu], S[iu]).statistic)
    assert np.isclose(res.after, spearmanr(np.corrcoef(X * keep)[iu], S[iu]).statistic)
    assert res.after > res.before
    assert wordnet_alignment(X, words).after is None


def test_missing_corpus_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(WordNetNotFoundError) as info:
        wordnet_similarity(["dog", "cat"])
    message = str(info.value)
    assert "python -m nltk.downloader wordnet" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # not nltk's long LookupError
