"""Scale-out through joblib: loky processes and a dask.distributed cluster give the tables of a serial run,
a dead worker is a clear error (never a hang), fitted estimators come back whole."""

import logging
import os
import pickle
import signal
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from joblib import parallel_config
from sklearn.model_selection import KFold

from sklearn_ais import AISSelector, FeatureMaps
from sklearn_ais.alignment import compare_alignment
from sklearn_ais.backbones import PoolingHead
from sklearn_ais.model_selection import cross_validate_alignment

distributed = pytest.importorskip("distributed", reason="pip install -e '.[distributed]'")

pytestmark = pytest.mark.slow  # starts worker processes


def _problem(n=24, K=10, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, K, 2, 2)).astype(np.float32)
    E = maps.mean(axis=(2, 3))
    H = np.corrcoef(E[:, :3] + 0.1 * rng.normal(size=(n, 3)))
    return [("a", FeatureMaps(maps, PoolingHead())), ("b", E[:, ::-1].copy())], H


CV = KFold(3, shuffle=True, random_state=0)
METHODS = ("none", "ais", "reweighting")


@contextmanager
def _deadline(seconds):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def alarm(*_):
        raise TimeoutError(f"no result after {seconds} s: the call hangs")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _serial():
    backbones, H = _problem()
    return (compare_alignment(backbones, None, H, methods=METHODS, cv=CV).table.drop(columns="fit_time"),
            cross_validate_alignment(AISSelector(device="cpu"), backbones[0][1], H,
                                     cv=CV, test="corrected_t").table.drop(columns="fit_time"))


def test_dask_cluster_gives_the_serial_tables(client):
    backbones, H = _problem()
    want_cmp, want_cv = _serial()
    with parallel_config(backend="dask"), _deadline(300):
        got_cmp = compare_alignment(backbones, None, H, methods=METHODS, cv=CV, n_jobs=-1).table
        got_cv = cross_validate_alignment(AISSelector(device="cpu"), backbones[0][1], H, cv=CV,
                                          n_jobs=-1, test="corrected_t").table
    pd.testing.assert_frame_equal(got_cmp.drop(columns="fit_time"), want_cmp)
    pd.testing.assert_frame_equal(got_cv.drop(columns="fit_time"), want_cv)


def test_loky_gives_the_serial_tables():
    backbones, H = _problem()
    want_cmp, want_cv = _serial()
    with _deadline(300):
        got_cmp = compare_alignment(backbones, None, H, methods=METHODS, cv=CV, n_jobs=2).table
        got_cv = cross_validate_alignment(AISSelector(device="cpu"), backbones[0][1], H, cv=CV,
                                          n_jobs=2, test="corrected_t").table
    pd.testing.assert_frame_equal(got_cmp.drop(columns="fit_time"), want_cmp)
    pd.testing.assert_frame_equal(got_cv.drop(columns="fit_time"), want_cv)


def test_estimators_from_the_cluster_pickle_and_score_on_the_client(client):
    backbones, H = _problem()
    X = backbones[0][1]
    with parallel_config(backend="dask"), _deadline(300):
        res = cross_validate_alignment(AISSelector(device="cpu"), X, H, cv=CV, n_jobs=-1,
                                       return_estimators=True, test="corrected_t")
    Hd = H.copy()
    np.fill_diagonal(Hd, np.nan)
    for (train, test), est, (_, row) in zip(CV.split(np.zeros(24)), res.estimators, res.table.iterrows()):
        local = pickle.loads(pickle.dumps(est))
        assert local.score(X[test], Hd[np.ix_(test, test)]) == row.test_score_selected


class _Crash(AISSelector):
    """Kills the process it is fitted in (as an out-of-memory kill or a lost node would)."""

    def fit(self, X, y):
        if len(X) < 20:  # a training fold, not the probe on all images
            os._exit(1)
        return super().fit(X, y)


def test_a_dead_worker_is_a_clear_error_not_a_hang(client):
    backbones, H = _problem()
    with pytest.raises(RuntimeError, match="a worker died") as died, _deadline(240):
        with parallel_config(backend="loky"):
            cross_validate_alignment(_Crash(device="cpu"), backbones[0][1], H, cv=CV, n_jobs=2, test="corrected_t")
    # What had finished is kept on the error (here: nothing, every fold's fit kills its worker).
    assert isinstance(died.value.completed, list) and len(died.value.completed) < CV.get_n_splits()
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(RuntimeError, match="a worker died"), _deadline(240):
            with parallel_config(backend="dask"):
                cross_validate_alignment(_Crash(device="cpu"), backbones[0][1], H, cv=CV, n_jobs=-1, test="corrected_t")


def test_feature_maps_cross_to_the_cluster_once_per_call_not_once_per_task(client, monkeypatch):
    """9 fold x method tasks on one backbone's maps: the client serialises the maps once (joblib's auto-scatter,
    which reads their __sizeof__), and the table is the serial one."""
    rng = np.random.default_rng(1)
    fm = FeatureMaps(rng.random((24, 16, 4, 4)).astype(np.float32), PoolingHead())
    H = np.corrcoef(fm.embed()[:, :3] + 0.1 * rng.normal(size=(24, 3)))
    serial = compare_alignment([("a", fm)], None, H, methods=METHODS, cv=CV).table
    sent = []
    plain = FeatureMaps.__reduce_ex__

    def counted(self, protocol):
        sent.append(protocol)
        return plain(self, protocol)

    monkeypatch.setattr(FeatureMaps, "__reduce_ex__", counted)
    # Both workers up (the dead-worker test's worker may still be restarting): with one core joblib would run the
    # tasks in this process, and nothing would cross.
    client.wait_for_workers(2, timeout=120)
    with _deadline(240), parallel_config(backend="dask"):
        clustered = compare_alignment([("a", fm)], None, H, methods=METHODS, cv=CV, n_jobs=-1).table
    assert len(sent) == 1, f"the maps were serialised {len(sent)} times for {len(clustered)} tasks"
    pd.testing.assert_frame_equal(serial.drop(columns="fit_time"), clustered.drop(columns="fit_time"))


def test_feature_maps_report_what_pickling_sends():
    # dask's sizeof (joblib's auto-scatter, task placement) reads __sizeof__: the maps and the head's weights.
    import sys

    import torch

    from sklearn_ais.backbones import MLPHead

    maps = np.zeros((4, 8, 4, 4), np.float32)
    fc6 = torch.zeros(16, 8 * 2 * 2)
    rest = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(16, 16))
    fm = FeatureMaps(maps, MLPHead(fc6, torch.zeros(16), rest, maxpool=None, output_size=(2, 2)))
    want = maps.nbytes + (fc6.numel() + 16 + 16 * 16 + 16) * 4
    assert want <= sys.getsizeof(fm) <= want + 1024
    assert len(pickle.dumps(fm)) <= sys.getsizeof(fm) + 8192


def test_head_weights_travel_as_one_buffer_each_and_come_back_as_tensors():
    # Pickle protocol 5 hands NumPy buffers out of band (dask sends them without a copy, loky maps them):
    # VGG16's fc6 would otherwise be written into a bytes object by torch's storage pickling.
    import torch

    from sklearn_ais.backbones import MLPHead

    fc6 = torch.randn(32, 8 * 2 * 2)
    rest = torch.nn.Sequential(torch.nn.ReLU())
    head = MLPHead(fc6, torch.randn(32), rest, maxpool=None, output_size=(2, 2))
    buffers = []
    data = pickle.dumps(head, protocol=5, buffer_callback=buffers.append)
    assert sum(memoryview(b).nbytes for b in buffers) == (fc6.numel() + 32) * 4
    # Received as read-only memory (bytes, as a network frame is): copied into writable tensors.
    back = pickle.loads(data, buffers=[bytes(b) for b in buffers])
    assert type(back.weight) is torch.Tensor and torch.equal(back.weight, head.weight)
    assert torch.equal(back.bias, head.bias)
    back.weight += 1  # a tensor over read-only memory would fail here
    maps = torch.rand(5, 8, 2, 2)
    assert torch.equal(pickle.loads(pickle.dumps(head))(maps), head(maps))


def _images(n=10, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8))


def test_dask_extracts_each_backbone_on_a_worker_and_sends_its_grid_from_there(client, capsys):
    """With transformers to run, each backbone's task extracts its maps on a worker and sends its fold x method
    tasks to the cluster from there: the table is the serial one, and the fits ran as tasks of their own."""
    from sklearn.base import clone

    from sklearn_ais import DNNFeatureMapTransformer

    images = _images()
    regnet = DNNFeatureMapTransformer("regnet_y_400mf", weights=None, random_state=0, device="cpu")
    backbones = [("random regnet", regnet), ("lite0", DNNFeatureMapTransformer("efficientnet_lite0", device="cpu"))]
    rng = np.random.default_rng(0)
    A = rng.normal(size=(10, 10))
    H = (A + A.T) / 2
    cv = KFold(2, shuffle=True, random_state=0)

    def run(**kw):
        return compare_alignment([(b, clone(t)) for b, t in backbones], images, H, methods=("none", "ais"), cv=cv,
                                 verbose=2, **kw).table.drop(columns="fit_time")

    serial = run()
    assert _bar_counts(capsys.readouterr().err) == ["10/10"]  # one bar: 2 extractions + 2 x 2 folds x 2 methods
    client.wait_for_workers(2, timeout=120)
    with _deadline(300), parallel_config(backend="dask"), distributed.get_task_stream(client) as stream:
        clustered = run(n_jobs=-1)
    pd.testing.assert_frame_equal(serial, clustered)
    assert _bar_counts(capsys.readouterr().err) == ["10/10"]
    keys = [t["key"] if isinstance(t["key"], str) else str(t["key"]) for t in stream.data]
    assert sum("_backbone_grid" in k for k in keys) == 2
    assert sum("_fit_and_score" in k for k in keys) >= 2  # batches of the 2 x 2 x 2 fits


def _bar_counts(err):
    """The final ``done/total`` of every tqdm bar written to ``err``."""
    import re

    lines = [line for line in err.replace("\r", "\n").splitlines() if "|" in line]
    finals = {}
    for line in lines:
        desc = line.split(":")[0]
        m = re.search(r"(\d+/\d+)", line)
        if m:
            finals[desc] = m.group(1)
    return list(finals.values())


def test_loky_maps_a_large_head_and_gives_the_serial_table():
    # fc6-like weights over joblib's 1 MB threshold reach loky workers as copy-on-write memory maps of the pickled
    # NumPy buffer; the tensors built on them must give the serial table, exactly.
    import torch

    from sklearn_ais.backbones import MLPHead

    rng = np.random.default_rng(0)
    K, D = 64, 4096
    head = MLPHead(torch.randn(D, K * 4) * 0.05, torch.zeros(D), torch.nn.Sequential(torch.nn.ReLU()), maxpool=None,
                   output_size=(2, 2))
    assert head.weight.nbytes > 2**20
    fm = FeatureMaps(rng.random((16, K, 2, 2)).astype(np.float32), head)
    H = np.corrcoef(fm.embed()[:, :5])
    cv = KFold(2, shuffle=True, random_state=0)
    serial = compare_alignment([("m", fm)], None, H, methods=("none", "ais"), cv=cv).table
    with _deadline(300):
        loky = compare_alignment([("m", fm)], None, H, methods=("none", "ais"), cv=cv, n_jobs=2).table
    pd.testing.assert_frame_equal(serial.drop(columns="fit_time"), loky.drop(columns="fit_time"), check_exact=True)
    if os.path.exists("/proc/self/maps"):  # where the worker's fc6 tensor lives: joblib's memory-mapped file
        from sklearn_ais._parallel import parallel_map

        with _deadline(120):
            files = parallel_map(_file_behind_weight, [(fm,), (fm,)], n_jobs=2)
        assert all("joblib_memmapping" in f for f in files), files


def _file_behind_weight(fm):
    """The file mapped at the address of ``fm.head.weight`` in this process ("" for anonymous memory)."""
    address = fm.head.weight.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5] if len(fields) > 5 else ""
    return ""
