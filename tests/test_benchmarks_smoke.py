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


def test_calibration_reports_every_test_and_the_coverage(capsys):
    """benchmarks/calibration.py on one tiny dataset per kind: every test is run (no permutation test for two feature
    sets) and the table and the coverage rows are printed."""
    spec = importlib.util.spec_from_file_location("sklearn_ais_benchmarks_calibration", BENCH / "calibration.py")
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    # the two feature sets of null_two come from one distribution: the same mapping of Z, fresh unit noise
    d = cal.simulate(0, "null_two", n=30)
    assert d["X"].shape == d["X2"].shape == (30, 8) and not (d["X"] == d["X2"]).all()
    jobs = [(0, "planted", 30), (0, "null_two", 30), (0, "null_ais", 30)]
    results = [cal.run_tests(*jobs[0], 5, 2, 3, 0.05), cal.run_tests(*jobs[1], 5, 2, 3, 0.05),
               cal.run_tests(*jobs[2], 5, 2, 3, 0.05, False)]
    assert set(cal.TESTS) <= set(results[0]) and "permutation" not in results[1] and "intervals" not in results[2]
    table = cal.tabulate(jobs, results)
    assert table["planted n=30"]["coverage"]["normal delta"]["n"] == 1 and "coverage" not in table["null_ais n=30"]
    args = type("Args", (), dict(datasets=1, alpha=0.05, permutations=5, stop_after=2, bootstrap=3))()
    out = cal.report(table, args, 1.0)
    for test in cal.TESTS:
        assert f"| {test} |" in out
    assert "| normal, delta |" in out and "| percentile, delta |" in out and "n/a" in out
