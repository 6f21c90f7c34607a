"""The words reports use for a comparison over seeds (rule in tmkt/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_ind

from tmkt.stats import Summary, compare


def test_summary_is_mean_and_sample_std():
    values = [0.8, 0.9, 0.7]
    summary = Summary.of(values)
    assert summary.n == 3 and summary.mean == pytest.approx(0.8)
    assert summary.std == pytest.approx(np.std(values, ddof=1)) and summary.percent() == "80.0 ± 10.0 %"
    assert Summary.of([0.5]).std is None and Summary.of([0.5]).percent() == "50.0 %"


def test_one_seed_cannot_tell():
    found = compare("tmkt", [0.9], "event", [0.5, 0.6])
    assert found.verdict == "cannot tell" and "one seed" in found.text and found.p_value is None


def test_a_difference_inside_the_spread_is_within_noise():
    found = compare("tmkt", [0.80, 0.86, 0.74], "event", [0.79, 0.81, 0.77])
    assert found.diff == pytest.approx(0.01) and found.noise == pytest.approx(0.06)
    assert found.verdict == "within noise" and "within the spread over seeds (6.0 points)" in found.text
    assert "no winner" in found.text


def test_a_steady_large_difference_is_a_win_with_its_p_value():
    a, b = [0.90, 0.91, 0.92], [0.70, 0.71, 0.73]
    found = compare("tmkt", a, "event", b)
    p = ttest_ind(a, b, equal_var=False).pvalue
    assert found.verdict == "win" and found.p_value == pytest.approx(p) and p < 0.05
    assert found.text.startswith("tmkt beats event by 19.7 points") and f"p = {p:.3f}" in found.text
    # the other way round names the same winner
    assert compare("event", b, "tmkt", a).text.startswith("tmkt beats event by 19.7 points")


def test_beyond_the_spread_but_not_significant_is_only_a_lead():
    a, b = [0.95, 0.60, 0.90], [0.60, 0.55, 0.62]
    found = compare("tmkt", a, "event", b)
    assert abs(found.diff) > found.noise and ttest_ind(a, b, equal_var=False).pvalue >= 0.05
    assert found.verdict == "lead" and "not significantly" in found.text and "3 and 3 seeds" in found.text
