"""Exactness of the ablation kernels against the naive algorithm (tests/_reference.py)."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import ConstantInputWarning
from torch import nn

from sklearn_ais import AISHeatmapper, AISSelector
from sklearn_ais._ablation import make_kernel
from sklearn_ais._containers import FeatureMaps
from sklearn_ais._similarity import COMPARISONS
from sklearn_ais.backbones import ModuleHead, PoolingHead

from ._reference import naive_ais, naive_image_scores, naive_path
from .conftest import SETTINGS
from .conftest import human as _human
from .conftest import vgg_like as _vgg_like


def _run(problem, H, similarity, comparison, K):
    iu = np.triu_indices(len(H), 1)
    tv = problem.target(H[iu], comparison)
    base, loo = problem.leave_one_out(tv)
    order = np.argsort(-(base - loo), kind="stable")
    return base, base - loo, order, problem.sweep(order, tv, np.arange(1, K + 1))


@pytest.mark.parametrize("similarity,comparison", SETTINGS)
@pytest.mark.parametrize("nan_frac", [0.0, 0.3])
def test_pooled_kernels_match_naive(rng, similarity, comparison, nan_frac):
    n, K = 14, 9
    X = rng.normal(size=(n, K)) + 0.5
    X[:, 3] = 0.0  # a dead unit
    H = _human(rng, n, nan_frac)
    base, ais, order, path = _run(make_kernel(X, similarity), H, similarity, comparison, K)
    ref_base, ref_ais = naive_ais(X, H, similarity, comparison)
    np.testing.assert_allclose(base, ref_base, atol=1e-9)
    np.testing.assert_allclose(ais, ref_ais, atol=1e-9)
    assert ais[3] == 0.0  # dead map: exactly no effect
    np.testing.assert_allclose(path, naive_path(X, H, order, similarity, comparison), atol=1e-9)


@pytest.mark.parametrize("similarity,comparison", SETTINGS)
def test_mlp_kernels_match_naive(rng, similarity, comparison):
    n, K = 10, 6
    head = _vgg_like(K=K)
    maps = rng.normal(size=(n, K, 4, 4)).astype(np.float32)
    maps[:, 2] = 0  # dead map
    maps[3, 4] = 0  # map dead in one image only: the kernel skips that pair
    H = _human(rng, n, 0.2)
    fm = FeatureMaps(maps, head)
    base, ais, order, path = _run(make_kernel(fm, similarity), H, similarity, comparison, K)
    ref_base, ref_ais = naive_ais(maps, H, similarity, comparison, head=head)
    np.testing.assert_allclose(base, ref_base, atol=1e-6)
    np.testing.assert_allclose(ais, ref_ais, atol=1e-6)
    np.testing.assert_allclose(path, naive_path(maps, H, order, similarity, comparison, head), atol=1e-6)


@pytest.mark.parametrize("similarity,comparison", SETTINGS[:5])
def test_generic_head_matches_naive(rng, similarity, comparison):
    n, K = 9, 5
    lin = nn.Linear(K, 7)
    head = ModuleHead(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin, nn.Tanh()))
    maps = rng.normal(size=(n, K, 3, 3)).astype(np.float32)
    H = _human(rng, n)
    fm = FeatureMaps(maps, head)
    base, ais, order, path = _run(make_kernel(fm, similarity), H, similarity, comparison, K)
    ref_base, ref_ais = naive_ais(maps, H, similarity, comparison, head=head)
    np.testing.assert_allclose(ais, ref_ais, atol=1e-6)
    np.testing.assert_allclose(path, naive_path(maps, H, order, similarity, comparison, head), atol=1e-6)


def test_pooling_head_feature_maps_equal_2d(rng):
    maps = rng.random(size=(8, 5, 3, 3)).astype(np.float32)
    H = _human(rng, 8)
    fm = FeatureMaps(maps, PoolingHead("avg"))
    E = maps.astype(np.float64).mean(axis=(2, 3))
    a = _run(make_kernel(fm, "pearson"), H, "pearson", "spearman", 5)
    b = _run(make_kernel(E, "pearson"), H, "pearson", "spearman", 5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


@pytest.mark.parametrize("kind", ["pooled", "mlp", "generic"])
@pytest.mark.parametrize("similarity,comparison", [("pearson", "spearman"), ("cosine", "pearson"),
                                                   ("pearson", "pearson_r2"), ("cosine", "kendall_tau_a"),
                                                   ("pearson", "rho_a")])
def test_per_image_scores_match_naive(rng, kind, similarity, comparison):
    n, K = 8, 5
    H = _human(rng, n, 0.2)
    if kind == "pooled":
        X, head = rng.normal(size=(n, K)) + 0.3, None
        problem = make_kernel(X, similarity)
    else:
        X = rng.normal(size=(n, K, 4, 4)).astype(np.float32)
        X[2, 1] = 0
        if kind == "mlp":
            head = _vgg_like(K=K)
        else:
            head = ModuleHead(nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(K, 6), nn.ReLU()))
        problem = make_kernel(FeatureMaps(X, head), similarity)
    base, ablated = problem.per_image(H, comparison)
    ref = naive_image_scores(X, H, similarity, comparison, head)
    np.testing.assert_allclose(base[:, None] - ablated, ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["pooled", "vgg"])
def test_chunking_does_not_change_results(rng, monkeypatch, kind):
    import sklearn_ais._ablation as ab

    K = 20
    if kind == "pooled":
        X = rng.normal(size=(12, K))
    else:
        X = FeatureMaps(np.maximum(rng.normal(size=(12, K, 4, 4)), 0).astype(np.float32), _vgg_like(K=K))
    H = _human(rng, 12)
    full = _run(make_kernel(X, "pearson"), H, "pearson", "spearman", K)
    sizes = []
    chunk = ab._chunk
    monkeypatch.setattr(ab, "_chunk", lambda *a, **k: sizes.append(chunk(*a, **k)) or sizes[-1])
    monkeypatch.setattr(ab, "_ELEMENT_BUDGET", 200)  # forces many tiny chunks
    monkeypatch.setattr(ab, "_POOLED_BUDGET", 200)
    monkeypatch.setattr(ab, "_ROW_BLOCK", 24)  # pooled: two rows per block
    tiny = _run(make_kernel(X, "pearson"), H, "pearson", "spearman", K)
    assert sizes and max(sizes) < K  # the kernels did run in several chunks
    if kind == "pooled":  # element-wise arithmetic only: chunks and row blocks do not change a bit
        np.testing.assert_array_equal(full[1], tiny[1])
        np.testing.assert_array_equal(full[3], tiny[3])
    else:  # the head's float32 GEMMs round by shape
        np.testing.assert_allclose(full[1], tiny[1], atol=1e-6)
        np.testing.assert_allclose(full[3], tiny[3], atol=1e-6)


@pytest.mark.parametrize("kind", ["gap", "vgg"])
def test_subsets_read_the_parents_leave_one_out_stack(rng, kind, monkeypatch):
    """A subset's leave-one-out is a gather from the parent's cached stack, equal to the
    naive leave-one-out on those images (any order of the indices), and the subset
    never runs its own kernels."""
    n, K = 14, 5
    maps = np.maximum(rng.normal(size=(n, K, 4, 4)), 0).astype(np.float32)
    maps[rng.random((n, K)) < 0.3] = 0
    head = PoolingHead("avg") if kind == "gap" else _vgg_like(K=K)
    H = _human(rng, n, nan_frac=0.2)
    parent = make_kernel(FeatureMaps(maps, head), "pearson", "cpu")
    parent.cache_loo = True
    idx = np.array([9, 2, 13, 4, 0, 7, 11, 5])  # unsorted: pairs map to (min, max) in the parent
    sub = parent.subset(idx)
    monkeypatch.setattr(sub, "_loo_uppers", lambda maps: pytest.fail("subset recomputed"))
    Hs = H[np.ix_(idx, idx)]
    base, loo = sub.leave_one_out(sub.target(Hs[np.triu_indices(len(idx), 1)], "spearman"))
    assert parent._loo_stack is not None and parent._loo_stack[0].shape == (K, n * (n - 1) // 2)
    want_base, want_ais = naive_ais(maps[idx], Hs, "pearson", "spearman", head=head)
    assert base == pytest.approx(want_base, abs=1e-6)
    np.testing.assert_allclose(base - loo, want_ais, atol=1e-6)
    dead = ~(maps[idx] != 0).any(axis=(0, 2, 3))
    assert np.all((base - loo)[dead] == 0)  # same arithmetic for the base and a dead map


def test_vgg_kernels_nearly_constant_embeddings_match_naive(rng):
    """Embeddings with a large common offset (centred energy < 1e-4 of the raw one) are
    centred explicitly instead of through G - s s^T / D: still equal to the naive algorithm."""
    n, K = 12, 5
    head = _vgg_like(K=K)
    with torch.no_grad():
        fc7 = head.rest[1]
        fc7.weight.mul_(1e-3)
        fc7.bias.fill_(50.0)  # every output ~50 +/- 0.05: Pearson needs the small spread
    maps = np.maximum(rng.normal(size=(n, K, 4, 4)), 0).astype(np.float32)
    maps[rng.random((n, K)) < 0.3] = 0
    X = FeatureMaps(maps, head)
    problem = make_kernel(X, "pearson", "cpu")
    E0 = problem.E0
    v = ((E0 - E0.mean(1, keepdim=True)) ** 2).sum(1)
    assert bool((v < 1e-4 * (E0 * E0).sum(1)).all())  # the case under test
    H = _human(rng, n)
    base, ais, order, path = _run(problem, H, "pearson", "spearman", K)
    want_base, want_ais = naive_ais(maps, H, "pearson", "spearman", head=head)
    assert base == pytest.approx(want_base, abs=1e-6)
    np.testing.assert_allclose(ais, want_ais, atol=1e-6)
    np.testing.assert_allclose(path, naive_path(maps, H, order, "pearson", "spearman", head=head), atol=1e-6)


def _problem_of_kind(rng, kind, n, K):
    """A problem whose map 1 is zero in every image and map 3 zero in image 2 only."""
    if kind == "pooled":
        X = np.maximum(rng.normal(size=(n, K)), 0) + 0.1
        X[:, 1] = 0
        X[2, 3] = 0
        return X, make_kernel(X, "pearson")
    maps = np.maximum(rng.normal(size=(n, K, 4, 4)), 0).astype(np.float32)
    maps[:, 1] = 0
    maps[2, 3] = 0
    if kind == "mlp":
        head = _vgg_like(K=K)
    else:
        head = ModuleHead(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * K, 6), nn.Tanh()))
    return maps, make_kernel(FeatureMaps(maps, head), "pearson")


@pytest.mark.parametrize("kind", ["pooled", "mlp", "generic"])
@pytest.mark.parametrize("comparison", COMPARISONS)
def test_dead_map_has_exactly_zero_ais(rng, kind, comparison):
    """The base and a dead map's candidate take the same arithmetic: AIS exactly 0, globally
    (map zero in every image) and per image (map zero in that image), on every route."""
    n, K = 9, 6
    X, problem = _problem_of_kind(rng, kind, n, K)
    H = _human(rng, n, 0.1)
    tv = problem.target(H[np.triu_indices(n, 1)], comparison)
    base, loo = problem.leave_one_out(tv)
    assert base - loo[1] == 0.0
    assert np.abs(base - loo).max() > 0  # the other maps do change the score
    row_base, ablated = problem.per_image(H, comparison)
    assert (row_base[:, None] - ablated)[:, 1].tolist() == [0.0] * n
    assert row_base[2] - ablated[2, 3] == 0.0


def test_torch_rank_route_through_the_kernels_gives_the_same_bits(rng, monkeypatch):
    """The CUDA code path (torch sort) run on CPU through the selector: identical to the numpy route."""
    import sklearn_ais._similarity as sim
    from sklearn_ais import AISSelector

    X = np.round(np.maximum(rng.normal(size=(16, 7)), 0), 1)  # ties in the model similarities
    H = np.round(_human(rng, 16, 0.2), 1)
    for comparison in ("spearman", "kendall_tau_a", "rho_a"):
        a = AISSelector(comparison=comparison, device="cpu").fit(X, H)
        monkeypatch.setattr(sim, "_CPU_SORT", "torch")
        b = AISSelector(comparison=comparison, device="cpu").fit(X, H)
        monkeypatch.setattr(sim, "_CPU_SORT", "numpy")
        np.testing.assert_array_equal(a.scores_, b.scores_)
        np.testing.assert_array_equal(a.path_scores_, b.path_scores_)


def test_leave_one_out_stack_is_not_kept_beyond_its_budget(rng, monkeypatch):
    """At large n the K x n_pairs stack would not fit: the parent keeps nothing, subsets compute
    their own leave-one-out (still equal to the naive algorithm)."""
    import sklearn_ais._ablation as ab

    n, K = 10, 4
    X = np.maximum(rng.normal(size=(n, K)), 0) + 0.1
    H = _human(rng, n)
    monkeypatch.setattr(ab, "_STACK_BUDGET", K * n * (n - 1) // 2 - 1)  # one element short
    parent = make_kernel(X, "pearson")
    parent.cache_loo = True
    parent.leave_one_out(parent.target(H[np.triu_indices(n, 1)], "spearman"))
    assert parent._loo_stack is None and parent.loo_stack() is None
    idx = np.arange(7)
    sub = parent.subset(idx)
    Hs = H[np.ix_(idx, idx)]
    base, loo = sub.leave_one_out(sub.target(Hs[np.triu_indices(7, 1)], "spearman"))
    np.testing.assert_allclose(base - loo, naive_ais(X[idx], Hs, "pearson", "spearman")[1], atol=1e-9)


def test_a_new_head_needs_only_embed_and_may_bring_its_kernel(rng):
    """The documented extension point: Head.embed alone gives exact scores (brute force); a head that
    overrides Head.ablation_kernel is scored by its own kernel, and the estimators never look at its type."""
    from sklearn_ais import AISSelector, FeatureMaps
    from sklearn_ais.backbones import Head

    class CentreHead(Head):  # embedding: each map's centre value (one coordinate per map)
        def embed(self, maps):
            return maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2]

    maps = rng.random((10, 5, 3, 3)).astype(np.float32)
    H = _human(rng, 10)
    fm = FeatureMaps(maps, CentreHead())
    E = maps[:, :, 1, 1].astype(np.float64)
    want = naive_ais(E, H, "pearson", "spearman")[1]
    np.testing.assert_allclose(AISSelector(device="cpu").fit(fm, H).scores_, want, atol=1e-9)

    calls = []

    class FastCentreHead(CentreHead):
        def ablation_kernel(self, maps, similarity, device):
            calls.append(similarity)
            from sklearn_ais._ablation import PooledKernel

            return PooledKernel(maps.embed(), similarity, device)  # one coordinate per map: rank-one updates

    fast = AISSelector(device="cpu").fit(FeatureMaps(maps, FastCentreHead()), H)
    assert calls == ["pearson"]
    np.testing.assert_allclose(fast.scores_, want, atol=1e-9)


# ---------------------------------------------------------------------------
# Numbers at the edges (tiny, dominated and offset rows), bounded memory
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", ["pearson", "cosine"])
@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_sweep_counts_tiny_top_maps(similarity, comparison):
    """Kept maps 1e-6 smaller than the others were once declared dead along the sweep (2OI = 0)."""
    rng = np.random.default_rng(0)
    X = rng.random((9, 6)) + 0.5
    X[:, :3] *= 1e-6
    A = rng.normal(size=(9, 9))
    H = (A + A.T) / 2
    problem = make_kernel(X, similarity, "cpu")
    target = problem.target(H[np.triu_indices(9, 1)], comparison)
    order = np.arange(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # scipy: the t = 1 model side is constant for Pearson
        ref = np.nan_to_num(naive_path(X, H, order, similarity, comparison))
    # t = 2, 3 keep only the tiny maps (once all "dead": 2OI 0). From t = 4 on the tiny maps move the
    # model similarities by ~1e-12 only, which no float64 route resolves: not compared.
    got = problem.sweep(order, target, np.array([2, 3]))
    np.testing.assert_allclose(got, ref[1:3], atol=1e-9)
    assert np.abs(got).min() > 0.01


@pytest.mark.parametrize("similarity", ["pearson", "cosine"])
def test_dominated_rows_are_exact(similarity):
    """A map carrying ~all of a row's energy: the rank-one downdate loses every digit; recomputed directly."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 4))
    X[:, 1:] *= 1e-5  # map 0 dominates every row; ablating it leaves 1e-10 of the energy
    A = rng.normal(size=(10, 10))
    H = (A + A.T) / 2
    base, ais = naive_ais(X, H, similarity, "spearman")
    sel = AISSelector(similarity=similarity, device="cpu").fit(X, H)
    np.testing.assert_allclose(sel.scores_, ais, atol=1e-9)
    hm = AISHeatmapper(similarity=similarity, device="cpu").fit(X, H)
    np.testing.assert_allclose(hm.image_scores_, naive_image_scores(X, H, similarity, "spearman"), atol=1e-9)


@pytest.mark.parametrize("offset, atol", [(1e2, 1e-11), (1e3, 1e-9), (1e4, 1e-8), (1e5, 1e-6)])
def test_pearson_rows_with_a_large_offset(offset, atol):
    """Rows c + N(0, 1): the raw identity q - s^2/K cancels (at c = 1e5 every row was 'constant' and the
    AIS off by 0.03); centred statistics do not. The ablated similarities are themselves resolved to
    ~1e-16 c^2 only (all near 1), hence the tolerance."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 10)) + offset
    A = rng.normal(size=(20, 20))
    H = (A + A.T) / 2
    sel = AISSelector(comparison="pearson", device="cpu").fit(X, H)
    base, ais = naive_ais(X, H, "pearson", "pearson")
    np.testing.assert_allclose(sel.baseline_score_, base, atol=1e-12)
    np.testing.assert_allclose(sel.scores_, ais, atol=atol)


@pytest.mark.parametrize("seed", range(4))
def test_vgg_head_ablating_an_images_only_map(seed):
    """An image whose only non-zero map is ablated embeds as rest(bias) exactly: such images tie.
    A - contribution in float32 left ~1e-7 noise that broke the ties (AIS off by up to 0.3)."""
    rng = np.random.default_rng(seed)
    maps = np.maximum(rng.normal(size=(7, 3, 4, 4)), 0).astype(np.float32)
    maps[:, 0] = 0  # dead everywhere: map 1 or 2 is often an image's only map
    maps[rng.random(7) < 0.5, 2] = 0
    head = _vgg_like(K=3, seed=seed)
    A = rng.normal(size=(7, 7))
    H = (A + A.T) / 2
    sel = AISSelector(device="cpu").fit(FeatureMaps(maps, head), H)
    np.testing.assert_allclose(sel.scores_, naive_ais(maps, H, "pearson", "spearman", head=head)[1], atol=1e-6)
    hm = AISHeatmapper(device="cpu").fit(FeatureMaps(maps, head), H)
    ok = np.isfinite(hm.image_scores_).all(axis=1)
    np.testing.assert_allclose(hm.image_scores_[ok], naive_image_scores(maps, H, "pearson", "spearman", head)[ok],
                               atol=1e-6)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, numpy as np, torch
    from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
    from sklearn_ais.backbones import PoolingHead
    which, n, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(n, n)); H = (A + A.T) / 2
    if which == "selector":
        AISSelector(device="cpu").fit(np.maximum(rng.normal(size=(n, K)), 0), H)
    else:
        maps = np.maximum(rng.normal(size=(n, K, 7, 7)).astype(np.float32), 0)
        fm = FeatureMaps(maps, PoolingHead(), input_size=(224, 224))
        AISHeatmapper(device="cpu", output="maps").fit(fm, H).transform(fm)
    # VmHWM: this process's own peak. ru_maxrss would also count the pages of a large parent
    # (pytest) that the child held between fork and exec.
    try:
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print(int(hwm.split()[1]) * 1024)
    except (OSError, IndexError):
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def _peak_rss(which, n, K):
    """Peak resident memory (bytes) of a fresh process that builds the inputs and fits."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, which, str(n), str(K)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("which", ["selector", "heatmapper"])
def test_peak_memory_small(which):
    assert _peak_rss(which, 100, 256) < 2 * 2**30
