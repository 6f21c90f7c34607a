"""Time-step Mixup math: the ratio formula, its inverse, the cut law, targets and schedules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from tmkt.mixing import (
    RatioSchedule,
    expected_event_fraction,
    mag_targets,
    mrp_targets,
    sample_cut,
    solve_p,
)

RATIOS = (0.1, 0.25, 0.5, 0.75, 0.9)


def direct_event_fraction(p: float, T: int) -> float:
    """E[#event steps] / T summed straight from the law P(t* = t) = p q^(t-1)."""
    q = 1.0 - p
    return sum(p * q ** (t - 1) * (T - t + 1) for t in range(1, T + 1)) / T


@pytest.mark.parametrize("T", [1, 4, 10, 16])
@pytest.mark.parametrize("p", [1e-6, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999])
def test_closed_form_matches_the_direct_sum(p, T):
    assert expected_event_fraction(p, T) == pytest.approx(direct_event_fraction(p, T), rel=1e-9, abs=1e-12)


def test_ratio_limits_and_monotonicity():
    assert expected_event_fraction(0.0, 10) == 0.0
    assert expected_event_fraction(1.0, 10) == 1.0
    values = [expected_event_fraction(p, 10) for p in np.linspace(0, 1, 101)]
    assert np.all(np.diff(values) > 0)


@pytest.mark.parametrize("T", [4, 10, 16])
@pytest.mark.parametrize("r_m", RATIOS)
def test_solve_p_inverts_the_ratio(r_m, T):
    p = solve_p(r_m, T)
    assert 0 < p < 1
    assert expected_event_fraction(p, T) == pytest.approx(r_m, abs=1e-9)


def test_solve_p_at_T10_gives_the_published_values():
    p = [solve_p(r, 10) for r in RATIOS]
    np.testing.assert_allclose(p, [0.019, 0.053, 0.131, 0.278, 0.500], atol=1e-3)
    assert solve_p(0.0, 10) == 0.0 and solve_p(1.0, 10) == 1.0


@pytest.mark.parametrize("T", [4, 10, 16])
@pytest.mark.parametrize("r_m", RATIOS)
def test_empirical_event_fraction_is_within_three_standard_errors(r_m, T):
    rng = np.random.default_rng(1234)
    fractions = mrp_targets(sample_cut(solve_p(r_m, T), T, 40_000, rng), T).astype(np.float64)
    stderr = fractions.std() / np.sqrt(len(fractions))
    assert abs(fractions.mean() - r_m) < 3 * stderr


def truncated_geometric_counts(p: float, T: int, n: int) -> np.ndarray:
    q = 1.0 - p
    probs = [p * q ** (t - 1) for t in range(1, T + 1)] + [q**T]
    return n * np.array(probs)


def test_cut_law_is_the_truncated_geometric_law():
    T, p, n = 10, solve_p(0.5, 10), 50_000
    cut = sample_cut(p, T, n, np.random.default_rng(7))
    assert cut.min() >= 1 and cut.max() <= T + 1
    observed = np.bincount(cut, minlength=T + 2)[1:]
    assert chisquare(observed, truncated_geometric_counts(p, T, n)).pvalue > 1e-3
    # the test has power: a nearby wrong law is rejected
    assert chisquare(observed, truncated_geometric_counts(p * 1.15, T, n)).pvalue < 1e-6


def test_cut_extremes_and_generator_advance():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.all(sample_cut(0.0, 10, 50, rng_a) == 11)
    assert np.all(sample_cut(1.0, 10, 50, rng_a) == 1)
    sample_cut(0.3, 10, 100, rng_b)
    # every p consumes one uniform per sample, so later draws do not depend on the ratio
    assert rng_a.random() == rng_b.random()


def test_targets_follow_the_mask():
    T = 5
    cut = np.array([1, 3, 5, 6])
    mag = mag_targets(cut, T)
    np.testing.assert_array_equal(mag, [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    assert mag.dtype == np.float32
    np.testing.assert_allclose(mrp_targets(cut, T), [1.0, 0.6, 0.2, 0.0])
    np.testing.assert_allclose(mrp_targets(cut, T), mag.mean(axis=1))


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "power"])
@pytest.mark.parametrize("start,end", [(0.1, 0.9), (0.8, 0.2)])
def test_schedule_endpoints_and_monotonicity(kind, start, end):
    schedule = RatioSchedule(kind, start, end, power=3.0)
    values = np.array([schedule(x) for x in np.linspace(0, 1, 51)])
    assert values[0] == pytest.approx(start)
    if kind == "constant":
        assert np.all(values == start)
        return
    assert values[-1] == pytest.approx(end)
    steps = np.diff(values) * np.sign(end - start)
    assert np.all(steps >= 0) and steps.sum() > 0


def test_schedule_shapes_and_clamping():
    assert RatioSchedule("cosine", 0.2, 0.6)(0.5) == pytest.approx(0.4)
    assert RatioSchedule("linear", 0.2, 0.6)(0.25) == pytest.approx(0.3)
    assert RatioSchedule("power", 0.0, 1.0, power=2.0)(0.5) == pytest.approx(0.25)
    assert RatioSchedule("linear", 0.2, 0.6)(1.7) == pytest.approx(0.6)
    assert RatioSchedule("linear", 0.2, 0.6)(-1) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="kind"):
        RatioSchedule("step", 0.1, 0.2)
    with pytest.raises(ValueError, match="start"):
        RatioSchedule("linear", 1.5, 0.2)
