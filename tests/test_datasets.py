"""Tests of sklearn_ais.datasets: real-data loaders (offline) and the synthetic task."""

import io
import shutil
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest

from sklearn_ais.datasets import (
    DataUnavailableError,
    _base,
    _kriegeskorte,
    _peterson,
    _synthetic,
    get_data_home,
    load_kriegeskorte92,
    load_peterson_animals,
    make_similarity_task,
)

K92_FILES = [r.filename for r in _kriegeskorte.REMOTES]
PETERSON_FILE = _peterson.REMOTES[0].filename


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test may reach the network: any real download attempt fails loudly."""

    def refuse(url, *args, **kwargs):
        raise URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(_base, "urlopen", refuse)


@pytest.fixture
def serve_shared(monkeypatch, data_home):
    """Replace urlopen by a fake serving the shared files' bytes; record the URLs."""
    by_name = {p.name: p for p in Path(data_home).glob("*/*.mat")}
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return io.BytesIO(by_name[url.rsplit("/", 1)[-1]].read_bytes())

    monkeypatch.setattr(_base, "urlopen", fake_urlopen)
    return requested


def _copy_dataset(data_home, dest, dataset):
    shutil.copytree(Path(data_home) / dataset, dest / dataset)
    for path in (dest / dataset).iterdir():
        path.chmod(0o644)  # the shared copy is read-only


# ----------------------------------------------------------------- data home


def test_get_data_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SKLEARN_AIS_DATA", str(tmp_path / "env"))
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_home() == tmp_path / "env"
    monkeypatch.delenv("SKLEARN_AIS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home() == tmp_path / "sklearn_ais_data"
    assert not (tmp_path / "sklearn_ais_data").exists()  # resolving creates nothing


# -------------------------------------------------------------- kriegeskorte


def test_kriegeskorte92_contents(data_home):
    data = load_kriegeskorte92(data_home=data_home, download=False)
    assert data.images.shape == (92, 175, 175, 3) and data.images.dtype == np.uint8
    rdms = data.subject_dissimilarities
    assert rdms.shape == (16, 92, 92) and rdms.dtype == np.float64
    np.testing.assert_allclose(rdms, rdms.transpose(0, 2, 1))
    assert np.all(np.einsum("sii->si", rdms) == 0)
    np.testing.assert_allclose(data.dissimilarity, rdms.mean(axis=0))
    assert list(data.subject_names) == [f"subject{i}" for i in range(1, 17)]
    assert len(set(data.ids)) == 92 and data.ids[0] == "img00"

    cats = data.categories
    assert isinstance(cats, pd.DataFrame) and list(cats.index) == list(data.ids)
    assert {"category", "human", "face", "animal", "natural"} <= set(cats.columns)
    assert cats["face"].dtype == bool and cats["face"].sum() == 24
    assert (cats["category"] == "human face").sum() == 12
    assert data.category_vectors.shape == (92, len(data.category_labels))
    for rdm in data.neural_dissimilarities.values():
        assert rdm.shape == (92, 92) and np.all(np.diag(rdm) == 0)
    assert "Kriegeskorte" in data.DESCR and "Mur" in data.DESCR and "MIT" in data.DESCR


def test_kriegeskorte92_similarity_orientation(data_home):
    data = load_kriegeskorte92(data_home=data_home)
    sim, dis = data.similarity, data.dissimilarity
    np.testing.assert_allclose(sim, sim.T)
    assert np.all(np.diag(sim) == sim.max())
    iu = np.triu_indices(92, 1)
    order = np.argsort(dis[iu], kind="stable")
    assert np.all(np.diff(sim[iu][order]) <= 0)  # decreasing in dissimilarity
    assert np.ptp(sim[iu]) > 0
    images, y = load_kriegeskorte92(data_home=data_home, return_X_y=True)
    np.testing.assert_array_equal(images, data.images)
    np.testing.assert_allclose(y, sim)


def test_missing_files_without_download_name_files_urls_folder(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_kriegeskorte92(data_home=tmp_path, download=False)
    assert isinstance(info.value, OSError)
    msg = str(info.value)
    for remote in _kriegeskorte.REMOTES:
        assert remote.filename in msg and remote.url in msg
    assert str(tmp_path / "kriegeskorte92") in msg
    assert not (tmp_path / "kriegeskorte92").exists()


def test_download_failure_is_reported(tmp_path):
    # The autouse fixture makes every download fail as if offline.
    with pytest.raises(DataUnavailableError, match="network disabled") as info:
        load_peterson_animals(data_home=tmp_path)
    msg = str(info.value)
    assert PETERSON_FILE in msg and _peterson.REMOTES[0].url in msg
    assert str(tmp_path / "peterson_animals") in msg
    assert list((tmp_path / "peterson_animals").iterdir()) == []  # no partial file


def test_corrupted_copy_is_detected(data_home, tmp_path):
    _copy_dataset(data_home, tmp_path, "kriegeskorte92")
    load_kriegeskorte92(data_home=tmp_path)  # intact copy loads (and is cached as verified)
    target = tmp_path / "kriegeskorte92" / K92_FILES[1]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataUnavailableError, match="sha256") as info:
        load_kriegeskorte92(data_home=tmp_path)
    assert K92_FILES[1] in str(info.value)
    assert target.read_bytes() == bytes(raw)  # a user's file is never overwritten


def test_download_with_fake_urlopen(data_home, tmp_path, serve_shared):
    # One file present, one missing: only the missing one is fetched.
    (tmp_path / "kriegeskorte92").mkdir()
    shutil.copy(Path(data_home) / "kriegeskorte92" / K92_FILES[0], tmp_path / "kriegeskorte92")
    data = load_kriegeskorte92(data_home=tmp_path)
    assert serve_shared == [_kriegeskorte.REMOTES[1].url]
    assert sorted(p.name for p in (tmp_path / "kriegeskorte92").iterdir()) == sorted(K92_FILES)
    reference = load_kriegeskorte92(data_home=data_home)
    np.testing.assert_array_equal(data.similarity, reference.similarity)

    peterson = load_peterson_animals(data_home=tmp_path)
    assert serve_shared[-1] == _peterson.REMOTES[0].url
    assert "raw.githubusercontent.com/jcpeterson/percept2vec/2f82c62" in serve_shared[-1]
    assert [p.name for p in (tmp_path / "peterson_animals").iterdir()] == [PETERSON_FILE]
    assert peterson.similarity.shape == (120, 120)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_base, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the file"))
    with pytest.raises(DataUnavailableError, match="checksum mismatch"):
        load_peterson_animals(data_home=tmp_path)
    assert list((tmp_path / "peterson_animals").iterdir()) == []


def test_existing_files_hashed_once_per_process(data_home, tmp_path, monkeypatch):
    _copy_dataset(data_home, tmp_path, "peterson_animals")
    calls = []
    real = _base._sha256
    monkeypatch.setattr(_base, "_sha256", lambda path: calls.append(path) or real(path))
    load_peterson_animals(data_home=tmp_path)
    load_peterson_animals(data_home=tmp_path)
    assert len(calls) == 1


# ------------------------------------------------------------------ peterson


def test_peterson_animals_contents(data_home):
    data = load_peterson_animals(data_home=data_home, download=False)
    sim, halves = data.similarity, data.similarity_halves
    assert sim.shape == (120, 120) and halves.shape == (2, 120, 120)
    assert sim.dtype == halves.dtype == np.float64
    np.testing.assert_allclose(sim, sim.T)
    assert np.all(np.diag(sim) == 10) and sim.min() >= 0 and sim.max() <= 10
    iu = np.triu_indices(120, 1)
    assert np.corrcoef(halves[0][iu], halves[1][iu])[0, 1] > 0.8
    assert data.names.shape == (120,) and data.names[0] == str(data.image_indices[0])
    assert "Peterson" in data.DESCR


# ------------------------------------------------------------ synthetic task


def test_make_similarity_task_shapes_and_labels():
    start = time.perf_counter()
    task = make_similarity_task(random_state=0)
    assert time.perf_counter() - start < 2.0  # typically ~0.05 s
    n = 48
    assert task.images.shape == (n, 128, 128, 3) and task.images.dtype == np.uint8
    assert task.masks.shape == (n, 128, 128) and task.masks.dtype == bool
    assert task.similarity.shape == (n, n) and task.similarity.dtype == np.float64
    np.testing.assert_allclose(task.similarity, task.similarity.T)
    assert np.all(np.diag(task.similarity) == task.similarity.max())
    # Balanced design: 48 images over 4 x 4 combinations and 4 backgrounds.
    assert pd.Series(list(zip(task.shapes, task.colors))).value_counts().eq(3).all()
    assert pd.Series(task.backgrounds).value_counts().eq(12).all()
    assert set(task.shapes) == set(task.shape_names) == {"circle", "square", "triangle", "star"}
    # Objects are large: roughly 15-35 % of the image.
    fractions = task.masks.mean(axis=(1, 2))
    assert fractions.min() > 0.12 and fractions.max() < 0.4
    np.testing.assert_allclose(fractions, task.areas, atol=0.03)


def test_make_similarity_task_deterministic():
    a = make_similarity_task(n_images=12, image_size=48, random_state=3)
    b = make_similarity_task(n_images=12, image_size=48, random_state=np.random.RandomState(3))
    for key in ("images", "similarity", "masks", "shapes", "colors", "backgrounds"):
        np.testing.assert_array_equal(a[key], b[key])
    c = make_similarity_task(n_images=12, image_size=48, random_state=4)
    assert not np.array_equal(a.images, c.images)
    g1 = make_similarity_task(n_images=12, image_size=48, random_state=np.random.default_rng(5))
    g2 = make_similarity_task(n_images=12, image_size=48, random_state=np.random.default_rng(5))
    np.testing.assert_array_equal(g1.images, g2.images)
    # The noise is drawn last: changing it leaves the images unchanged.
    d = make_similarity_task(n_images=12, image_size=48, random_state=3, noise=0.5)
    np.testing.assert_array_equal(a.images, d.images)
    assert not np.allclose(a.similarity, d.similarity)


def test_masks_match_object_pixels():
    task = make_similarity_task(n_images=16, image_size=64, n_shapes=6, n_colors=8, random_state=1)
    rgb = dict(zip(task.color_names, task.color_rgb))
    for i in range(16):
        # Every object pixel has the object's colour ...
        assert np.all(task.images[i][task.masks[i]] == rgb[task.colors[i]])
        # ... and the mask is exactly the rendered object.
        again = _synthetic._render_mask(
            task.shapes[i], task.centers[i], task.areas[i], task.rotations[i], 64
        )
        np.testing.assert_array_equal(again, task.masks[i])
    # On a uniform (muted) background the saturated object colour occurs only on the object.
    flat = make_similarity_task(n_images=8, image_size=64, backgrounds="uniform", random_state=2)
    for img, mask, color in zip(flat.images, flat.masks, flat.colors):
        np.testing.assert_array_equal(np.all(img == rgb[color], axis=-1), mask)


def test_similarity_equals_formula_without_noise():
    task = make_similarity_task(
        n_images=20, image_size=32, noise=0, shape_weight=2.0, color_weight=0.5, random_state=0
    )
    same_shape = task.shapes[:, None] == task.shapes[None, :]
    cidx = [list(task.color_names).index(c) for c in task.colors]
    expected = 2.0 * same_shape + 0.5 * task.color_similarity[np.ix_(cidx, cidx)]
    np.testing.assert_allclose(task.similarity, expected)
    # Graded colour similarity: 1 on the diagonal, symmetric, in [0, 1].
    cs = task.color_similarity
    np.testing.assert_allclose(np.diag(cs), 1)
    np.testing.assert_allclose(cs, cs.T)
    assert cs.min() >= 0 and cs.max() <= 1
    np.testing.assert_allclose(cs[0, 1], 0.75)  # red vs yellow, 60 degrees apart


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_images": 3}, "n_images"),
        ({"n_images": 10.0}, "n_images"),
        ({"image_size": 15}, "image_size"),
        ({"n_shapes": 0}, "n_shapes"),
        ({"n_shapes": 7}, "n_shapes"),
        ({"n_colors": 9}, "n_colors"),
        ({"noise": -0.1}, "noise"),
        ({"noise": np.nan}, "noise"),
        ({"color_weight": -1}, "color_weight"),
        ({"object_size": (0.3, 0.2)}, "object_size"),
        ({"object_size": 0.3}, "object_size"),
        ({"backgrounds": ["plaid"]}, "backgrounds"),
        ({"n_shapes": 1, "n_colors": 1, "noise": 0}, "constant"),
    ],
)
def test_make_similarity_task_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_similarity_task(**kwargs)


# ---------------------------------------------------------------------------
# make_similarity_task: bad parameters
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_images=3), "\'n_images\' parameter of make_similarity_task must be an int in the range \\[4"),
        (dict(n_images=4.5), "\'n_images\' parameter of make_similarity_task must be an int"),
        (dict(n_images="8"), "\'n_images\' parameter of make_similarity_task must be an int"),
        (dict(image_size=8), "\'image_size\' parameter .* range \\[16"),
        (dict(noise=-1), "\'noise\' parameter of make_similarity_task must be a float in the range \\[0.0"),
        (dict(noise=np.nan), "\'noise\' parameter of make_similarity_task must be a float in the range \\[0.0"),
        (dict(n_shapes=0), "\'n_shapes\' parameter .* range \\[1, 6\\]"),
        (dict(n_colors=9), "\'n_colors\' parameter .* range \\[1, 8\\]"),
        (dict(shape_weight=0, color_weight=0, noise=0), "the similarity would be constant"),
        (dict(backgrounds=["plaid"]), "backgrounds must be"),
        (dict(object_size=(0.9, 0.1)), "object_size must satisfy"),
    ],
)
def test_make_similarity_task_refuses_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        make_similarity_task(**{"n_images": 8, "image_size": 32, "random_state": 0, **kw})
