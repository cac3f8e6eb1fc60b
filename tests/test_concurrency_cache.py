"""DNNFeatureMapTransformer from several threads and processes, and its on-disk feature-map cache.

Issue 12 items 5 and 6: concurrent transforms must give every caller its own maps (bit for bit the
serial ones); the cache key must change with everything that determines the maps; a cache folder
must never run code (no pickles) nor serve a half-written file.
"""

import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time

import joblib
import numpy as np
import pytest
import torch
from joblib import Parallel, delayed
from torch import nn

from sklearn_ais import DNNFeatureMapTransformer, _feature_cache
from sklearn_ais.backbones import PoolingHead, get_backbone

from .conftest import CountingNet, tiny_transformer


class Pause(nn.Module):
    """Releases the GIL in the middle of the forward pass, so concurrent passes interleave."""

    def forward(self, x):
        time.sleep(0.002)
        return x


def slow_net(act=None):
    """test_feature_maps' CountingNet with a pause after its first activation (optionally another one)."""
    net = CountingNet()
    if act is not None:
        net.features[1] = act
    net.features.insert(2, Pause())
    return net


def slow_backbone(act=None, **kw):
    torch.manual_seed(0)
    return get_backbone(slow_net(act), layer="features", input_size=16, resize_size=16, **kw)


def image_sets(count, n=3, seed=0):
    return [np.random.default_rng(seed + s).integers(0, 256, (n, 18, 22, 3), dtype=np.uint8) for s in range(count)]


def _maps(t, X):
    return t.transform(X).maps


def _maps_one_thread(t, X):
    torch.set_num_threads(1)  # thread counts change float32 rounding: serial reference uses one too
    return t.transform(X).maps


# -- threads and processes -------------------------------------------------------------
def test_threads_give_each_caller_its_own_maps():
    t = DNNFeatureMapTransformer(slow_backbone(), batch_size=2, device="cpu").fit(None)
    sets = image_sets(20)
    serial = [_maps(t, X) for X in sets]
    assert len({s.tobytes() for s in serial}) == 20  # different inputs give different maps
    for _ in range(2):
        parallel = Parallel(n_jobs=4, prefer="threads")(delayed(_maps)(t, X) for X in sets)
        for s, p in zip(serial, parallel):
            np.testing.assert_array_equal(p, s)
    assert sum(len(m._forward_hooks) for m in t.backbone_.model.modules()) == 0


def test_threads_share_a_cache_folder(tmp_path):
    t = DNNFeatureMapTransformer(slow_backbone(), batch_size=2, device="cpu", memory=tmp_path).fit(None)
    sets = image_sets(6) * 2  # every set twice: the same files written and read concurrently
    serial = [_maps(DNNFeatureMapTransformer(slow_backbone(), batch_size=2).fit(None), X) for X in sets[:6]] * 2
    parallel = Parallel(n_jobs=4, prefer="threads")(delayed(_maps)(t, X) for X in sets)
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(p, s)
    _assert_clean_cache(tmp_path, n_files=18)


def test_processes_share_a_cache_folder_and_match_serial(tmp_path):
    torch.manual_seed(0)
    bb = get_backbone(nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2)), layer="2",
                      input_size=16, resize_size=16)
    t = DNNFeatureMapTransformer(bb, batch_size=2, device="cpu", memory=tmp_path).fit(None)
    sets = image_sets(2, n=4, seed=5) * 2
    threads = torch.get_num_threads()
    try:
        serial = [_maps_one_thread(DNNFeatureMapTransformer(bb, batch_size=2).fit(None), X) for X in sets]
    finally:
        torch.set_num_threads(threads)
    parallel = Parallel(n_jobs=2, backend="loky")(delayed(_maps_one_thread)(t, X) for X in sets)
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(p, s)
    _assert_clean_cache(tmp_path, n_files=8)
    # Served from the cache written by the workers, bit for bit.
    np.testing.assert_array_equal(_maps(t, sets[0]), serial[0])


def _assert_clean_cache(folder, n_files):
    """Every cache file is a complete float32 .npy (no pickle), no temporary file is left behind."""
    (sub,) = (folder / _feature_cache.SUBFOLDER).iterdir()
    files = sorted(sub.glob("*.npy"))
    assert len(files) == n_files
    for f in files:
        assert np.load(f, allow_pickle=False).dtype == np.float32
    assert not list(sub.glob("*.tmp")) and not list(sub.glob(".*"))
    assert json.loads((sub / "config.json").read_text())["format"] == _feature_cache.FORMAT


class _Recorder(nn.Linear):
    """Records the devices it is moved to (and stays on the CPU, which has no second device)."""

    def __init__(self):
        super().__init__(2, 2)
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))
        return self


def test_device_lease_moves_back_only_when_the_last_user_leaves():
    from sklearn_ais.backbones._capture import device_lease

    net = _Recorder()
    with device_lease(net, "cuda:0"):
        with device_lease(net, "cuda:0"):
            assert net.moves == ["cuda:0"]
        assert net.moves == ["cuda:0"]  # the outer holder still uses it
        with pytest.raises(RuntimeError, match="in use on cuda:0"):
            with device_lease(net, "cpu"):
                pass
    assert net.moves == ["cuda:0", "cpu"]
    with device_lease(net, "cpu"):  # already home: no move
        pass
    assert net.moves == ["cuda:0", "cpu"]


def test_capture_ignores_forward_passes_of_other_threads():
    """A pass that another thread runs on the same model (without the lock) is not captured."""
    import threading

    from sklearn_ais.backbones._capture import capture

    net = nn.Sequential(nn.Linear(3, 3), Pause(), nn.Linear(3, 2))
    other = threading.Thread(target=lambda: [net(torch.full((1, 3), 9.0)) for _ in range(20)])
    other.start()
    try:
        for _ in range(20):
            x = torch.randn(1, 3)
            _, out = capture(net, "0", lambda: net(x))
            torch.testing.assert_close(out, net[0](x), rtol=0, atol=0)
    finally:
        other.join()


# -- the cache key: every way the old key went stale ---------------------------------
def _transform_with(tmp_path, bb, X, **kw):
    t = DNNFeatureMapTransformer(bb, batch_size=2, memory=tmp_path, **kw).fit(None)
    return t, t.transform(X).maps


def _uncached(bb, X, **kw):
    return DNNFeatureMapTransformer(bb, batch_size=2, **kw).fit(None).transform(X).maps


@pytest.mark.parametrize(
    "other",
    [
        lambda: slow_backbone(act=nn.Tanh()),  # a parameter-free layer edited (ReLU -> Tanh)
        lambda: slow_backbone(act=nn.LeakyReLU(0.3)),  # same weights, other type
        lambda: slow_backbone(act=nn.ELU()),
    ],
    ids=["relu-to-tanh", "leaky", "elu"],
)
def test_parameter_free_layer_change_misses_the_cache(tmp_path, other):
    X = image_sets(1, n=4)[0]
    t, first = _transform_with(tmp_path, slow_backbone(), X)
    u, second = _transform_with(tmp_path, other(), X)
    assert t._cache_key() != u._cache_key()
    np.testing.assert_array_equal(second, _uncached(other(), X))
    assert np.abs(second - first).max() > 1e-3


def test_hyperparameter_change_misses_the_cache(tmp_path):
    X = image_sets(1, n=4)[0]
    a, b = slow_backbone(act=nn.LeakyReLU(0.1)), slow_backbone(act=nn.LeakyReLU(0.5))
    assert _transform_with(tmp_path, a, X)[0]._cache_key() != _transform_with(tmp_path, b, X)[0]._cache_key()
    np.testing.assert_array_equal(_transform_with(tmp_path, b, X)[1], _uncached(b, X))


def test_weights_file_replaced_with_same_size_and_mtime(tmp_path):
    X = image_sets(1, n=4)[0]
    path = tmp_path / "w.pt"
    torch.manual_seed(1)
    torch.save(slow_net().state_dict(), path)
    st = os.stat(path)
    kw = dict(weights=str(path), layer="features", device="cpu")
    t, first = _transform_with(tmp_path / "cache", slow_net(), X, **kw)
    torch.manual_seed(2)
    torch.save(slow_net().state_dict(), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    u, second = _transform_with(tmp_path / "cache", slow_net(), X, **kw)
    assert t.provenance_["weights_sha256"] != u.provenance_["weights_sha256"]
    np.testing.assert_array_equal(second, _uncached(slow_net(), X, **kw))
    assert not np.array_equal(first, second)


def test_in_place_edit_of_a_fitted_model_misses_the_cache(tmp_path):
    X = image_sets(1, n=4)[0]
    t, first = _transform_with(tmp_path, slow_backbone(), X)
    key = t._cache_key()
    with torch.no_grad():
        t.backbone_.model.features[0].bias += 0.5
    assert t._cache_key() != key
    calls = t.backbone_.model.calls
    second = t.transform(X).maps
    assert t.backbone_.model.calls > calls and not np.array_equal(first, second)
    t.backbone_.model.features[1] = nn.Tanh()  # a module replaced after fit
    third = t.transform(X).maps
    assert not np.array_equal(second, third)


def test_key_depends_on_layer_head_preprocessing_and_versions(tmp_path, monkeypatch):
    def key(**kw):
        bb = get_backbone(slow_backbone(), **kw)
        return DNNFeatureMapTransformer(bb, memory=tmp_path).fit(None)._cache_key()

    base = key()
    assert key() == base  # deterministic, and not fooled by the call counter
    variants = {
        "layer": key(layer="features.3"),
        "head": key(head=PoolingHead("max")),
        "input_size": key(input_size=14),
        "resize_size": key(resize_size=20),
        "crop": key(crop=False),
        "interpolation": key(interpolation="bicubic"),
        "mean": key(mean=(0.5, 0.5, 0.5)),
        "std": key(std=(0.5, 0.5, 0.5)),
    }
    monkeypatch.setattr(_feature_cache, "library_versions", lambda: {"torch": "0.0"})
    variants["versions"] = key()
    assert len({base, *variants.values()}) == len(variants) + 1, variants


def test_user_class_code_and_tensor_attributes_are_part_of_the_key(tmp_path, monkeypatch):
    """A user edits the forward of their class (same name, same module) and reloads it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    src = textwrap.dedent(
        """
        import torch
        from torch import nn
        class Scale(nn.Module):
            def __init__(self):
                super().__init__()
                self.mask = torch.ones(3, 1, 1)
            def forward(self, x):
                return x * self.mask * FACTOR
        """
    )
    keys = []
    for factor in ("2.0", "3.0"):
        (tmp_path / "user_scale.py").write_text(src.replace("FACTOR", factor))
        sys.modules.pop("user_scale", None)
        importlib.invalidate_caches()
        module = importlib.import_module("user_scale")
        torch.manual_seed(0)
        net = nn.Sequential(module.Scale(), nn.Conv2d(3, 2, 1))
        keys.append(_feature_cache.cache_config(get_backbone(net, layer="1")))
    assert keys[0]["structure"] != keys[1]["structure"] and keys[0]["weights"] == keys[1]["weights"]
    net[0].mask = torch.full((3, 1, 1), 2.0)  # a plain tensor attribute (not a buffer) that forward reads
    assert _feature_cache.cache_config(get_backbone(net, layer="1"))["structure"] != keys[1]["structure"]


# -- the cache files -----------------------------------------------------------------
class _Payload:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (exec, (f"open({self.flag!r}, 'w').close()",))


def _cache_files(folder):
    return sorted((folder / _feature_cache.SUBFOLDER).glob("*/*.npy"))


def test_poisoned_cache_file_runs_no_code_and_is_recomputed(tmp_path):
    X = image_sets(1, n=4)[0]
    want = _uncached(slow_backbone(), X)
    _transform_with(tmp_path / "cache", slow_backbone(), X)
    flag = tmp_path / "code_ran"
    victim = _cache_files(tmp_path / "cache")[0]
    np.save(victim, np.array([_Payload(str(flag))], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):  # the file really is a pickle
        np.load(victim)
    t, again = _transform_with(tmp_path / "cache", slow_backbone(), X)
    assert not flag.exists(), "the cache file's pickle was executed"
    np.testing.assert_array_equal(again, want)
    assert np.load(victim, allow_pickle=False).dtype == np.float32  # replaced by the recomputed maps
    # joblib.Memory pickles in the folder are never read either: no code runs.
    with open(tmp_path / "cache" / "output.pkl", "wb") as f:
        pickle.dump(_Payload(str(flag)), f)
    _transform_with(joblib.Memory(str(tmp_path / "cache"), verbose=0), slow_backbone(), X)
    assert not flag.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong shape", "float64"])
def test_damaged_cache_file_is_recomputed(tmp_path, damage):
    X = image_sets(1, n=4)[0]
    t, first = _transform_with(tmp_path, slow_backbone(), X)
    victim = _cache_files(tmp_path)[1]
    data = victim.read_bytes()
    if damage == "truncated":  # what a crashed non-atomic writer leaves
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "garbage":
        victim.write_bytes(b"\x93NUMPY garbage")
    elif damage == "wrong shape":
        np.save(victim, np.zeros((6, 2, 2), np.float32))
    else:
        np.save(victim, np.load(victim).astype(np.float64))
    calls = t.backbone_.model.calls
    np.testing.assert_array_equal(t.transform(X).maps, first)
    assert t.backbone_.model.calls == calls + 1  # the batch holding that image ran again
    np.testing.assert_array_equal(t.transform(X).maps, first)
    assert t.backbone_.model.calls == calls + 1  # and was cached again


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    X = image_sets(1, n=2)[0]
    t = DNNFeatureMapTransformer(slow_backbone(), memory=tmp_path).fit(None)
    real_save = np.save

    def dying_save(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        t.transform(X)
    monkeypatch.setattr(np, "save", real_save)
    assert _cache_files(tmp_path) == []
    assert not list((tmp_path / _feature_cache.SUBFOLDER).glob("*/.*.tmp"))


def test_memory_object_uses_its_location_only(tmp_path):
    X = image_sets(1, n=2)[0]
    t = DNNFeatureMapTransformer(slow_backbone(), memory=joblib.Memory(str(tmp_path), verbose=0)).fit(None)
    t.transform(X)
    assert len(_cache_files(tmp_path)) == 2
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".npy", ".json") and p.name != ".gitignore"]
    off = DNNFeatureMapTransformer(slow_backbone(), memory=joblib.Memory(None)).fit(None)
    calls = off.backbone_.model.calls
    off.transform(X)
    off.transform(X)
    assert off.backbone_.model.calls == calls + 2


def test_cache_is_shared_across_batch_sizes_and_subsets(tmp_path):
    X = image_sets(1, n=5)[0]
    t, full = _transform_with(tmp_path, slow_backbone(), X)
    u = DNNFeatureMapTransformer(slow_backbone(), batch_size=3, memory=tmp_path).fit(None)
    calls = u.backbone_.model.calls
    np.testing.assert_array_equal(u.transform(X[[4, 1, 2]]).maps, full[[4, 1, 2]])
    assert u.backbone_.model.calls == calls


def test_key_is_the_same_in_every_process(tmp_path):
    """Processes (other hash seeds) sharing a folder must find each other's files."""
    (tmp_path / "user_mode.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn
        class Mode(nn.Module):
            def __init__(self):
                super().__init__()
                self.mode, self.options = "a", {"b": 1, "a": 2}
            def forward(self, x):
                return x * 2 if self.mode in {"a", "b", "c", "d"} else x
        """
    ))
    script = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import user_mode; from torch import nn; "
              "from sklearn_ais.backbones import get_backbone; from sklearn_ais._feature_cache import cache_config, "
              "config_key; torch.manual_seed(0); "
              "print(config_key(cache_config(get_backbone(nn.Sequential(user_mode.Mode(), nn.Conv2d(3, 2, 1)), "
              "layer='1'))))")
    keys = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        keys.add(proc.stdout.strip())
    assert len(keys) == 1


# ---------------------------------------------------------------------------
# Resuming after a crash
# ---------------------------------------------------------------------------
def test_feature_cache_resumes_after_a_crash(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 20, 20, 3), dtype=np.uint8)
    want = tiny_transformer(batch_size=2).transform(images).maps  # no cache
    # joblib quirk: Memory(str) caches under <location>/joblib, Memory(Path) directly in <location>;
    # the transformer treats a str or a path like Memory(str), as scikit-learn's check_memory does.
    memory = joblib.Memory(str(tmp_path / "cache"), verbose=0)
    t = tiny_transformer(batch_size=2, memory=memory)
    net = t.backbone_.model
    net.calls, net.fail_at = 0, 3  # crash in the 3rd of 5 batches
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.transform(images)
    assert net.calls == 3
    net.calls, net.fail_at = 0, None
    np.testing.assert_array_equal(t.transform(images).maps, want)
    assert net.calls == 3  # batches 3, 4, 5 only: the first two came from the cache
    fresh = tiny_transformer(batch_size=2, memory=tmp_path / "cache")  # a new process, same configuration
    fresh.backbone_.model.calls = 0  # (fit ran one probe pass)
    np.testing.assert_array_equal(fresh.transform(images).maps, want)
    assert fresh.backbone_.model.calls == 0
