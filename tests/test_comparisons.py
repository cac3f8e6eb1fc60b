"""The comparisons of the kernel layer against their definitions, and the properties every route keeps.

References: ``tests/_reference.py`` (brute-force tau-a over all pairs, rsatoolbox's rho-a formula,
scipy), the package's tie rule written out (``tie_runs``). Both CPU rank routes (numpy sort keys,
numpy argsort) and the torch route that CUDA candidates take are checked, on CPU.
"""

import numpy as np
import pytest
import torch
from scipy import stats

import sklearn_ais._similarity as sim
from sklearn_ais import AISSelector
from sklearn_ais._similarity import COMPARISONS, TargetVector, _inversions, _row_sum, batched_correlation

from ._reference import kendall_tau_a, naive_compare, rho_a, tie_runs
from .conftest import H0, X0

NEW = ["pearson_r2", "kendall_tau_a", "rho_a"]
RANKS = ["spearman", "kendall_tau_a", "rho_a"]


def _tied_candidates(rng, B, m):
    """Model rows with exact ties, round-off near-ties (one tie run by the rule), a constant row."""
    c = np.round(np.tanh(rng.normal(size=(B, m))), 1)
    c[0, : m // 3] = 0.25 + 1e-15 * rng.standard_normal(m // 3)  # near-ties: one run by the tie rule
    c[1] = np.tanh(rng.normal(size=m))  # no ties
    c[2] = 0.5  # constant: 0 for every comparison
    c[3, 5:9] = c[3, 4] + np.array([2e-13, 4e-13, 6e-13, 8e-13])  # a chain: one run, spans several grid steps
    return c


@pytest.mark.parametrize("human_ties", [False, True])
@pytest.mark.parametrize("comparison", COMPARISONS)
@pytest.mark.parametrize("route", ["keyed", "argsort", "torch"])
def test_every_comparison_equals_its_definition(monkeypatch, comparison, route, human_ties):
    rng = np.random.default_rng(7)
    m = 57
    c = _tied_candidates(rng, 6, m)
    h = rng.normal(size=m)
    if human_ties:
        h = np.round(h * 2) / 2
    h[[3, 30]] = np.nan
    if route == "argsort":
        c[4] *= 1.5  # values outside [-1, 1]: the keyed route refuses them
    monkeypatch.setattr(sim, "_CPU_SORT", "torch" if route == "torch" else "numpy")
    got = batched_correlation(c, h, comparison)
    want = np.array([naive_compare(row, h, comparison) for row in c])
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    # a constant model row: no correlation (0); its cosine with the target is defined (rsatoolbox's, not centred)
    assert got[2] == 0.0 if comparison != "cosine" else got[2] != 0.0


def test_brute_force_references_match_scipy_and_rsatoolbox_identities():
    """The references themselves: tau-a = tau-b and rho-a = Spearman without ties; tau-a <= tau-b in size with ties."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=40)
    assert kendall_tau_a(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-14)
    assert rho_a(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-14)
    xt, yt = np.round(x), np.round(y)
    assert abs(kendall_tau_a(xt, yt)) <= abs(stats.kendalltau(xt, yt).statistic) + 1e-15


def test_pearson_r2_is_scipy_r_squared():
    rng = np.random.default_rng(1)
    c, h = np.tanh(rng.normal(size=(5, 30))), rng.normal(size=30)
    want = [stats.pearsonr(row, h).statistic ** 2 for row in c]
    np.testing.assert_allclose(batched_correlation(c, h, "pearson_r2"), want, atol=1e-14, rtol=0)


@pytest.mark.parametrize("m", [1, 2, 3, 7, 64, 65, 300])
def test_inversions_equal_pair_count(m):
    rng = np.random.default_rng(m)
    d = rng.integers(0, max(1, m // 3), size=(4, m))  # many ties: equal values are not inversions
    want = [int(sum(row[p] > row[q] for p in range(m) for q in range(p + 1, m))) for row in d]
    np.testing.assert_array_equal(_inversions(d.astype(np.int64), 8), want)
    np.testing.assert_array_equal(_inversions(torch.as_tensor(d), 8), want)


def test_row_sum_bits_do_not_depend_on_batch_layout_or_threads():
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(7, 70001)) * 10.0 ** rng.integers(-3, 4, size=(7, 1)))
    whole = _row_sum(x)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for r in range(7):
                assert _row_sum(x[r : r + 1])[0].item() == whole[r].item()
            assert torch.equal(_row_sum(x.T.contiguous().T), whole)  # Fortran layout
    finally:
        torch.set_num_threads(threads)
    import math

    np.testing.assert_allclose(whole.numpy(), [math.fsum(row) for row in x.numpy()], rtol=1e-13)


@pytest.mark.parametrize("comparison", COMPARISONS)
def test_a_row_scores_the_same_alone_or_in_any_batch(comparison):
    rng = np.random.default_rng(3)
    c = torch.as_tensor(np.tanh(rng.normal(size=(9, 5000))))
    tv = TargetVector(rng.normal(size=5000), comparison, similarities=True)
    whole = tv.correlate(c)
    for r in range(9):
        assert tv.correlate(c[r : r + 1])[0].item() == whole[r].item()
    assert torch.equal(tv.correlate(c.T.contiguous().T), whole)


def test_keyed_route_at_thing_size_pairs_matches_scipy():
    """m = 1.2 million pairs (n ~ 1550): the dense human ranks need 21 bits, so the keys carry the grid
    index relative to the block's minimum; exact against scipy, and the same bits as the argsort route."""
    rng = np.random.default_rng(4)
    m = 1_200_000
    h = rng.standard_normal(m)
    c = np.clip(0.3 + 0.2 * (0.5 * h + rng.standard_normal(m)), -1, 1)[None]
    c[0, :1000] = np.round(c[0, :1000], 2)  # some model ties
    tv = TargetVector(h, "spearman", similarities=True)
    cb = c.copy()
    assert sim._KeyedSort.lowest_grid(tv.ranks, cb, True) is not None  # the keyed route is taken
    got = float(tv.correlate(torch.as_tensor(c))[0])
    assert got == pytest.approx(stats.spearmanr(tie_runs(c[0]), h).statistic, abs=1e-12)
    wide = np.concatenate([c[0, :-2], [-1.0, 1.0]])[None]  # spans [-1, 1]: falls back to argsort, still exact
    assert sim._KeyedSort.lowest_grid(tv.ranks, wide, True) is None
    got_wide = float(tv.correlate(torch.as_tensor(wide))[0])
    assert got_wide == pytest.approx(stats.spearmanr(tie_runs(wide[0]), h).statistic, abs=1e-12)


def test_torch_sort_of_a_long_row_equals_numpys_unsigned_order():
    """Keys with the top bit set are negative as int64 (torch's order): swapped back into uint64 order."""
    rng = np.random.default_rng(11)
    m = 5000
    for top in (0, 1, m // 3, m):  # keys >= 2**63: none, one, some, all
        keys = rng.integers(0, 1 << 63, m, dtype=np.uint64)
        keys[rng.choice(m, top, replace=False)] |= np.uint64(1 << 63)
        keys[:10] = keys[10]  # repeated keys
        want = np.sort(keys)
        got = sim._torch_sort_row(keys[None].copy(), sim._KeyBuffers(1, 16, m))
        assert got.shape == (1, m) and np.array_equal(got[0], want)


@pytest.mark.parametrize("comparison", RANKS)
def test_long_rows_score_the_same_with_numpys_and_torchs_sort(monkeypatch, comparison):
    """Rows of m >= _LONG_ROW pairs may be sorted by torch (where it is faster): the same bits."""
    rng = np.random.default_rng(12)
    m = sim._LONG_ROW + 1234
    h = rng.standard_normal(m)
    h[::97] = np.round(h[::97], 1)  # some human ties
    c = np.clip(0.3 + 0.2 * (0.5 * h + rng.standard_normal(m)), -1, 1)[None].repeat(2, 0)
    c[1, :5000] = np.round(c[1, :5000], 3)  # model ties
    c[1, 5000:5100] = c[1, 4999] + 1e-14 * rng.standard_normal(100)  # a near-tie run (round-off)
    out = {}
    for route in ("numpy", "torch"):
        monkeypatch.setattr(sim, "_KEY_SORT", route)
        out[route] = TargetVector(h, comparison, similarities=True).correlate(c)
    assert np.array_equal(out["numpy"], out["torch"])
    want = [naive_compare(row, h, comparison) for row in c] if comparison != "kendall_tau_a" else None
    if want is not None:
        np.testing.assert_allclose(out["numpy"], want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("comparison", RANKS)
def test_torch_route_gives_the_same_bits_as_the_cpu_routes(monkeypatch, comparison):
    rng = np.random.default_rng(5)
    c = torch.as_tensor(_tied_candidates(rng, 8, 3000))
    h = np.round(rng.normal(size=3000), 1)
    tv = TargetVector(h, comparison, similarities=True)
    cpu = tv.correlate(c)
    monkeypatch.setattr(sim, "_CPU_SORT", "torch")
    assert torch.equal(tv.correlate(c), cpu)


@pytest.mark.parametrize("comparison", NEW)
def test_estimators_take_the_new_comparisons(comparison):
    """AISSelector and AISHeatmapper accept every comparison and equal the naive algorithm with it."""
    from sklearn_ais import AISHeatmapper, AISSelector, FeatureMaps
    from sklearn_ais.backbones import PoolingHead

    from ._reference import naive_ais, naive_image_scores

    rng = np.random.default_rng(6)
    X = (np.maximum(rng.normal(size=(12, 6)), 0) + 0.05).astype(np.float32).astype(np.float64)  # maps are float32
    A = rng.normal(size=(12, 12))
    H = np.round((A + A.T) / 2, 1)  # human ties
    sel = AISSelector(comparison=comparison, device="cpu").fit(X, H)
    base, ais = naive_ais(X, H, "pearson", comparison)
    assert sel.baseline_score_ == pytest.approx(base, abs=1e-12)
    np.testing.assert_allclose(sel.scores_, ais, atol=1e-12)
    hm = AISHeatmapper(comparison=comparison, device="cpu").fit(FeatureMaps(X[:, :, None, None], PoolingHead()), H)
    np.testing.assert_allclose(hm.image_scores_, naive_image_scores(X, H, "pearson", comparison), atol=1e-9)


# ---------------------------------------------------------------------------
# Memory layout
# ---------------------------------------------------------------------------
def test_memory_layout_does_not_change_bits():
    Xf = np.asfortranarray(X0)
    a = AISSelector(device="cpu", comparison="pearson").fit(X0, H0)
    b = AISSelector(device="cpu", comparison="pearson").fit(Xf, H0)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    t = np.random.default_rng(1000).normal(size=10)
    c = np.tanh(np.random.default_rng(0).normal(size=(3, 10)))  # (before the fix, layouts differed in the last bit)
    want = batched_correlation(c, t, "pearson")
    np.testing.assert_array_equal(batched_correlation(np.asfortranarray(c), t, "pearson"), want)
    # a (1, m) row whose first stride differs (as a boolean column mask returns): once a different last bit
    row = np.lib.stride_tricks.as_strided(c[:1].copy(), shape=(1, 10), strides=(8, 8))
    np.testing.assert_array_equal(batched_correlation(row, t, "pearson"), want[:1])


def test_cosine_equals_rsatoolbox():
    """rsatoolbox's cosine between RDM vectors, on the vectors as given (missing pairs left out on both sides)."""
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from sklearn_ais.metrics import second_order_isomorphism

    rng = np.random.default_rng(3)
    A, B = rng.random((9, 9)), rng.random((9, 9))
    A, B = A + A.T, B + B.T
    iu = np.triu_indices(9, 1)
    B[2, 5] = B[5, 2] = np.nan
    ok = ~np.isnan(B[iu])
    want = rsatoolbox.rdm.compare(rsatoolbox.rdm.RDMs(A[iu][ok][None]), rsatoolbox.rdm.RDMs(B[iu][ok][None]),
                                  method="cosine")[0, 0]
    assert second_order_isomorphism(A, B, comparison="cosine") == pytest.approx(want, abs=1e-12)
    # not centred: a constant added to one side changes it (Pearson would not move)
    assert abs(second_order_isomorphism(A + 5, B, comparison="cosine") - want) > 1e-3


def _documented_choices(obj, param="comparison"):
    """The set of choices in ``param : {...}`` of a numpydoc docstring (None when not written as a set)."""
    import re

    doc = obj.__doc__ or ""
    m = re.search(rf"^\s*{param} : \{{([^}}]*)\}}", doc, flags=re.M)
    return None if m is None else {v.strip().strip('"') for v in m.group(1).split(",")}


def test_every_docstring_lists_every_accepted_comparison():
    """Where a docstring spells out the choices of ``comparison``, they are the registry's (COMPARISONS)."""
    import importlib
    import inspect
    import pkgutil

    import sklearn_ais

    documented = {}
    for info in pkgutil.walk_packages(sklearn_ais.__path__, "sklearn_ais."):
        if info.name.endswith(("cli", "__main__")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == info.name:
                choices = _documented_choices(obj)
                if choices is not None:
                    documented[f"{info.name}.{name}"] = choices
    for required in ("sklearn_ais.metrics.second_order_isomorphism", "sklearn_ais.alignment._compare.compare_alignment",
                     "sklearn_ais._selector.AISSelector"):
        assert required in documented, required
    # pair_heatmaps accepts these two only (it refuses the others), and says so
    accepted = {"sklearn_ais._pair_heatmaps.pair_heatmaps": {"spearman", "pearson"}}
    # the estimators that also take odd-one-out triplets as y list the triplet comparisons too
    from sklearn_ais._triplets import TRIPLET_COMPARISONS

    for name in ("sklearn_ais._selector.AISSelector", "sklearn_ais._selector.AISSelectorCV",
                 "sklearn_ais._heatmaps.AISHeatmapper"):
        accepted[name] = set(COMPARISONS) | set(TRIPLET_COMPARISONS)
    for name in ("sklearn_ais._similarity.triplet_scores", "sklearn_ais._similarity.TripletTarget",
                 "sklearn_ais.metrics.triplet_score"):  # triplet-only scores
        accepted[name] = set(TRIPLET_COMPARISONS)
    wrong = {name: sorted(accepted.get(name, set(COMPARISONS)) ^ choices) for name, choices in documented.items()
             if choices != accepted.get(name, set(COMPARISONS))}
    assert not wrong, f"docstrings whose comparison choices differ from COMPARISONS: {wrong}"
