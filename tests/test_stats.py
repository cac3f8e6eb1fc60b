"""Fold summaries and paired tests (``sklearn_ais._stats``) against hand computations and scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sklearn_ais._stats import fold_summary, paired_test
from sklearn_ais.model_selection import summarize_folds

A = np.array([0.42, 0.51, 0.47, 0.39, 0.55, 0.48, 0.44, 0.50, 0.46, 0.52])
B = np.array([0.40, 0.45, 0.46, 0.35, 0.50, 0.47, 0.40, 0.49, 0.41, 0.49])


def test_corrected_t_by_hand():
    """Nadeau & Bengio (2003) / Bouckaert & Frank (2004): t = mean(d) / sqrt((1/J + n_test/n_train) var(d))."""
    ratio = 18 / 74  # 92 images, 5 folds
    d = np.arctanh(A) - np.arctanh(B)
    t = d.mean() / np.sqrt((1 / len(d) + ratio) * d.var(ddof=1))
    res = paired_test(A, B, comparison="spearman", test="corrected_t", test_train_ratio=ratio)
    assert res["statistic"] == pytest.approx(t, rel=1e-12) and res["df"] == 9
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 9), rel=1e-12)
    greater = paired_test(A, B, comparison="spearman", test="corrected_t", test_train_ratio=ratio,
                          alternative="greater")
    assert greater["p_value"] == pytest.approx(stats.t.sf(t, 9), rel=1e-12)
    # the correction only ever makes the test more conservative
    assert res["p_value"] > paired_test(A, B, test="paired_t")["p_value"]


def test_paired_t_on_fisher_z_or_on_the_statistic_itself():
    fisher = paired_test(A, B, comparison="pearson", test="paired_t", alternative="greater")
    want = stats.ttest_rel(np.arctanh(A), np.arctanh(B), alternative="greater")
    assert fisher["statistic"] == pytest.approx(want.statistic) and fisher["p_value"] == pytest.approx(want.pvalue)
    r2 = paired_test(A**2, B**2, comparison="pearson_r2", test="paired_t")
    want = stats.ttest_rel(A**2, B**2)
    assert r2["scale"] == "raw" and r2["statistic"] == pytest.approx(want.statistic)
    w = paired_test(A, B, test="wilcoxon")
    assert w["p_value"] == pytest.approx(stats.wilcoxon(np.arctanh(A), np.arctanh(B)).pvalue)
    with pytest.raises(ValueError, match="test_train_ratio"):
        paired_test(A, B, test="corrected_t")
    with pytest.raises(ValueError, match="alternative"):
        paired_test(A, B, test="paired_t", alternative="bigger")


def test_one_summary_rule_for_both_tables():
    """summarize_folds and summarize_comparison give the same mean, s.e. and test on the same folds."""
    from sklearn_ais.alignment import summarize_comparison

    folds = pd.DataFrame({"test_score_full": B, "test_score_selected": A, "train_score_selected": A + 0.1,
                          "n_selected": 10, "n_train": 74, "n_test": 18})
    s = summarize_folds(folds)
    comp = pd.concat([
        pd.DataFrame({"backbone": "b", "method": "none", "fold": range(10), "test_2oi": B, "train_2oi": B,
                      "n_kept": 100, "n_train": 74, "n_test": 18}),
        pd.DataFrame({"backbone": "b", "method": "ais", "fold": range(10), "test_2oi": A, "train_2oi": A,
                      "n_kept": 10, "n_train": 74, "n_test": 18}),
    ])
    c = summarize_comparison(comp).set_index("method")
    assert s.test_score_selected == c.loc["ais", "test_2oi"] == pytest.approx(A.mean())
    assert s.test_score_selected_sem == c.loc["ais", "test_2oi_sem"] == pytest.approx(fold_summary(A)[1])
    assert s.p_value == pytest.approx(c.loc["ais", "p_value"]) and s.test == "corrected_t"
    assert s.p_paired_t == pytest.approx(stats.ttest_rel(np.arctanh(A), np.arctanh(B)).pvalue)
