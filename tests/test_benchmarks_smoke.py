"""Smoke test of benchmarks/run.py: the agreement checks of cases 1-3 on tiny sizes (no timings)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    if not (BENCH / "run.py").is_file():
        pytest.skip("benchmarks/ not present")
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("sklearn_ais_benchmarks_run", BENCH / "run.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("case", ["1", "2", "3"])
def test_benchmark_case_agrees_with_naive(bench, case):
    res = bench.run_case_inprocess(case, bench.TINY, "cpu")
    assert res["max_abs_diff"] <= bench.AGREE_TOL, res
    assert res["ranking_identical"], res
    assert res["agreement_ok"]
    assert res["ours_s"] > 0 and res["naive_s"] > 0
    # The table and the target check read every field a case writes.
    table = bench.print_table({case: res}, bench.evaluate_targets({case: res}), False)
    assert table.splitlines()[2].startswith(f"{case}:") and "Targets:" in table


def test_ranking_agreement_ignores_ties_only(bench):
    ok, n_disc, _, _ = bench.ranking_agreement([3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 2.0 + 1e-12, 1.0])
    assert ok and n_disc == 0
    ok, n_disc, _, _ = bench.ranking_agreement([3.0, 2.0, 1.0], [3.0, 1.0, 2.0])
    assert not ok and n_disc == 1


def test_things_case_agrees_with_naive_and_reports_the_floor(bench):
    """Case 6's worker on a tiny size: agreement on the subset, the sorting floor and the presorting timings."""
    res = bench.things_point(bench.TINY["case6"], "cpu")
    assert res["agreement_ok"] and res["max_abs_diff"] <= bench.AGREE_TOL, res
    assert res["floor_s"] > 0 and res["ours_over_floor"] > 0
    assert "presorted_mergesort_s" in res["sorts"]["after"]
    res["points"] = [dict(n=res["n"], K=res["K"], ours_s=res["ours_s"], peak_rss_mb=res["peak_rss_fit_mb"])]
    table = bench.print_table({"6": res}, bench.evaluate_targets({"6": res}), False)
    assert "sorting floor" in table and "case 6" in table
