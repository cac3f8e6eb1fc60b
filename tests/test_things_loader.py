"""load_things_similarity: the published .mat layout, .npy and text files, and every refusal."""

import numpy as np
import pytest
from scipy.io import savemat

from sklearn_ais.datasets import load_things_similarity


def _matrix(rng, n):
    A = rng.random((n, n))
    S = (A + A.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


def test_reads_the_published_mat_layout_with_labels(tmp_path, rng):
    """spose_similarity.mat holds ``spose_sim`` (1854 x 1854); unique_id.txt names the rows."""
    S = _matrix(rng, 1854)
    savemat(tmp_path / "spose_similarity.mat", {"spose_sim": S, "other": np.arange(3)})
    names = [f"concept{i}" for i in range(1854)]
    (tmp_path / "unique_id.txt").write_text("\n".join(names) + "\n")
    data = load_things_similarity(tmp_path / "spose_similarity.mat", labels=tmp_path / "unique_id.txt")
    off = ~np.eye(1854, dtype=bool)
    np.testing.assert_array_equal(data.similarity[off], S[off])
    assert np.isnan(np.diag(data.similarity)).all()
    assert data.labels[0] == "concept0" and data.labels[-1] == "concept1853"
    assert "Hebart" in data.DESCR


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_reads_npy_and_text(tmp_path, rng, suffix):
    S = _matrix(rng, 5)
    path = tmp_path / f"s{suffix}"
    if suffix == ".npy":
        np.save(path, S)
    else:
        np.savetxt(path, S, delimiter="," if suffix == ".csv" else " ", fmt="%.17g")
    got = load_things_similarity(path, expected_size=None).similarity
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_array_equal(got[off], S[off])


def test_refusals(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="OSF"):
        load_things_similarity(tmp_path / "missing.mat")
    S = _matrix(rng, 6)
    np.save(tmp_path / "s.npy", S)
    with pytest.raises(ValueError, match="expected 1854 x 1854"):
        load_things_similarity(tmp_path / "s.npy")
    bad = S.copy()
    bad[0, 1] += 0.5
    np.save(tmp_path / "asym.npy", bad)
    with pytest.raises(ValueError, match="not symmetric"):
        load_things_similarity(tmp_path / "asym.npy", expected_size=None)
    inf = S.copy()
    inf[0, 1] = inf[1, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    with pytest.raises(ValueError, match="inf"):
        load_things_similarity(tmp_path / "inf.npy", expected_size=None)
    np.save(tmp_path / "rect.npy", S[:, :4])
    with pytest.raises(ValueError, match="square"):
        load_things_similarity(tmp_path / "rect.npy", expected_size=None)
    savemat(tmp_path / "two.mat", {"a": S, "b": S})
    with pytest.raises(ValueError, match="pass variable="):
        load_things_similarity(tmp_path / "two.mat", expected_size=None)
    assert load_things_similarity(tmp_path / "two.mat", "b", expected_size=None).similarity.shape == (6, 6)
    with pytest.raises(ValueError, match="labels"):
        load_things_similarity(tmp_path / "s.npy", expected_size=None, labels=["a", "b"])
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported"):
        load_things_similarity(tmp_path / "s.json")
