"""How sure a comparison of two methods over seeds is, said in words for reports.

The rule, applied to accuracies of independent seeds (one value per training run):

- with fewer than two seeds on either side there is no estimate of the noise, and the report says
  that it cannot tell;
- a difference of means no larger than the larger of the two standard deviations over seeds is
  *within noise*: a new seed could reverse it;
- a larger difference is called a win only when Welch's t-test (unequal variances) also gives
  p < 0.05; otherwise the report calls it a lead that is not significant.

Seeds are few (three is typical), so the t-test alone would be fragile, and the spread alone says
nothing about how many seeds back a mean; the rule asks for both before it names a winner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the significance level of the Welch test
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; None for one value) of per-seed values."""

    n: int
    mean: float
    std: float | None

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("no values to summarize")
        return cls(int(arr.size), float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None)

    def percent(self) -> str:
        """``"82.1 ± 5.7 %"`` (``"82.1 %"`` for one seed) for values in [0, 1]."""
        spread = "" if self.std is None else f" ± {100 * self.std:.1f}"
        return f"{100 * self.mean:.1f}{spread} %"


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    diff: float  # mean of a minus mean of b
    noise: float | None  # the larger standard deviation over seeds
    p_value: float | None  # Welch's t-test; None when it cannot be computed
    verdict: str  # "win", "lead", "within noise" or "cannot tell"
    text: str  # one sentence for the report


def compare(a: str, a_values: list[float], b: str, b_values: list[float]) -> Comparison:
    """Compare method ``a`` with method ``b`` by their per-seed accuracies (see the module rule)."""
    sa, sb = Summary.of(a_values), Summary.of(b_values)
    diff = sa.mean - sb.mean
    points = f"{100 * abs(diff):.1f} points"
    if sa.std is None or sb.std is None:
        text = (
            f"cannot tell whether {a} or {b} is better: with one seed there is no estimate of the noise "
            f"(difference {100 * diff:+.1f} points)"
        )
        return Comparison(a, b, diff, None, None, "cannot tell", text)
    noise = max(sa.std, sb.std)
    p_value = _welch_p(a_values, b_values)
    ahead, behind = (a, b) if diff > 0 else (b, a)
    spread = f"the spread over seeds ({100 * noise:.1f} points)"
    if abs(diff) <= noise:
        verdict, text = "within noise", f"{a} and {b} differ by {points}, within {spread}: no winner"
    elif p_value is not None and p_value < ALPHA:
        verdict = "win"
        text = f"{ahead} beats {behind} by {points}, more than {spread}; Welch's t-test p = {p_value:.3f}"
    else:
        verdict = "lead"
        shown = "n/a" if p_value is None else f"{p_value:.2f}"
        text = (
            f"{ahead} is ahead of {behind} by {points}, more than {spread}, but not significantly "
            f"(Welch's t-test p = {shown} with {sa.n} and {sb.n} seeds)"
        )
    return Comparison(a, b, diff, noise, p_value, verdict, text)


def _welch_p(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return None if np.mean(a) == np.mean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)
