"""Time-step Mixup math: the cut-point law, its expected event fraction, targets and ratio schedules.

Convention (used everywhere in tmkt): time-steps are numbered ``t = 1..T``. Frames before the cut
``t*`` are static, frames from ``t*`` on are events. ``t* = T + 1`` means "no cut": the whole
sequence is static and its event fraction is 0.

The cut has the truncated geometric law ``P(t* = t) = p q^(t-1)`` for ``t = 1..T`` (``q = 1 - p``),
and ``P(no cut) = q^T``. Small ``p`` keeps sequences mostly static, ``p = 1`` makes them all events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def expected_event_fraction(p: float, T: int) -> float:
    """Expected share of event time-steps, ``r(p) = 1 - q (1 - q^T) / (p T)`` with ``q = 1 - p``.

    Derivation (checked numerically in tests/test_mixing.py against the direct sum): a sample has
    ``T - t* + 1`` event steps, so ``E[#event steps] = sum_t p q^(t-1) (T - t + 1)``. Writing
    ``T - t + 1 = sum_{s >= t} 1`` and swapping the sums gives ``sum_{s=1..T} P(t* <= s)
    = sum_s (1 - q^s) = T - q (1 - q^T) / p``; dividing by T gives ``r(p)``.
    ``r`` increases from ``r(0) = 0`` (the limit: q(1-q^T)/p -> T) to ``r(1) = 1``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if p == 0.0:
        return 0.0
    q = 1.0 - p
    # q (1 - q^T) / p, written with expm1/log1p so that tiny p keeps its precision
    tail = -q * math.expm1(T * math.log1p(-p)) / p if p < 1.0 else 0.0
    return 1.0 - tail / T


def solve_p(r_m: float, T: int, tol: float = 1e-12) -> float:
    """The cut probability ``p`` whose expected event fraction is ``r_m`` (bisection; r is increasing)."""
    if not 0.0 <= r_m <= 1.0:
        raise ValueError(f"r_m must be in [0, 1], got {r_m}")
    if r_m == 0.0:
        return 0.0
    if r_m == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if expected_event_fraction(mid, T) < r_m:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sample_cut(p: float, T: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` cut points in ``1..T+1`` (``T+1`` = no cut), int64, from one uniform draw each.

    Inversion of the geometric law: ``t* = 1 + floor(ln u / ln(1 - p))`` with ``u ~ U(0, 1]``.
    The uniform is always drawn (also for p = 0 or 1) so that the generator advances the same way
    whatever the ratio, which keeps later draws reproducible when the schedule changes.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    u = 1.0 - rng.random(n)  # random() is in [0, 1); this maps it to (0, 1]
    if p == 0.0:
        return np.full(n, T + 1, dtype=np.int64)
    if p == 1.0:
        return np.ones(n, dtype=np.int64)
    cut = 1.0 + np.floor(np.log(u) / math.log1p(-p))
    return np.minimum(cut, T + 1).astype(np.int64)


def mag_targets(cut: np.ndarray, T: int) -> np.ndarray:
    """Per-step modality targets ``1[t >= t*]`` for ``t = 1..T``: float32 ``[n, T]``, 1 = event frame."""
    steps = np.arange(1, T + 1)
    return (steps[None, :] >= np.asarray(cut)[:, None]).astype(np.float32)


def mrp_targets(cut: np.ndarray, T: int) -> np.ndarray:
    """Per-sequence event fraction ``(T - t* + 1) / T`` (0 with no cut): float32 ``[n]``."""
    events = np.clip(T + 1 - np.asarray(cut, dtype=np.int64), 0, T)
    return (events.astype(np.float32) / np.float32(T)).astype(np.float32)


SCHEDULE_KINDS = ("constant", "linear", "cosine", "power")


@dataclass
class RatioSchedule:
    """Target event ratio ``r_m`` over training progress in [0, 1].

    ``linear``, ``cosine`` and ``power`` move from ``start`` to ``end``; ``cosine`` eases in and out,
    ``power`` stays near ``start`` for longer (``progress ** power``), so the network sees mostly
    static frames early. ``constant`` always returns ``start``.

    The defaults are the trainer's: ``progress ** 8`` from 0 to 1, all static at the start and
    all events at the end (so BatchNorm ends on event statistics). The mixed sequences stay mostly
    static for most of the run (``r_m`` reaches 0.1 at 75 % of the steps and 0.5 at 92 %; 0.11 on
    average), because the trainer already fits the pure event sequence of every batch
    (``l_event``): the mixed sequence's job is to carry the static images' knowledge into the event
    network, and up to a point the more static frames it holds, the more it carries. With 10
    N-MNIST recordings per class, measured on the 500 recordings not trained on against
    ``progress ** 3`` on the same draws: power 8 +0.6 ± 0.6 (10 seeds; higher on seven, level on
    two), power 5 +0.3 ± 0.6 (10 seeds), power 2 -0.2 ± 0.6 (5 seeds); power 12 fell back below
    power 8 on every seed run. ``progress ** 3`` had in turn beaten linear 0.25 -> 1.0 on each of
    three seeds (+1.2 ± 0.4).
    """

    kind: str = "power"
    start: float = 0.0
    end: float = 1.0
    power: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    def __call__(self, progress: float) -> float:
        x = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            w = x
        elif self.kind == "cosine":
            w = 0.5 * (1.0 - math.cos(math.pi * x))
        else:
            w = x**self.power
        return self.start + (self.end - self.start) * w
