"""Sparsity schedules: pure functions of training progress ``t`` in [0, 1].

Each returns the target sparsity at ``t``, moving from ``start`` to ``end``.
"""

from __future__ import annotations

import math

__all__ = ["one_shot", "iterative_schedule", "agp", "one_cycle"]


def _clip(t: float) -> float:
    return min(1.0, max(0.0, t))


def one_shot(t: float, start: float = 0.0, end: float = 0.8, at: float = 0.45) -> float:
    """All at once at progress ``at``."""
    return end if _clip(t) >= at else start


def iterative_schedule(
    t: float, start: float = 0.0, end: float = 0.8, n: int = 3, t0: float = 0.2, t1: float = 1.0
) -> float:
    """``n`` equal steps at t0, t0 + (t1-t0)/n, ...; the last one leaves time to recover."""
    t = _clip(t)
    if t < t0:
        return start
    k = min(n, math.floor((t - t0) / ((t1 - t0) / n) + 1e-9) + 1)
    return start + (end - start) * k / n


def agp(t: float, start: float = 0.0, end: float = 0.8, t0: float = 0.2, t1: float = 1.0) -> float:
    """Automated gradual pruning (Zhu & Gupta, 2017): s_f + (s_i - s_f)(1 - (t-t0)/(t1-t0))^3."""
    t = _clip(t)
    if t <= t0:
        return start
    if t >= t1:
        return end
    return end + (start - end) * (1 - (t - t0) / (t1 - t0)) ** 3


def one_cycle(t: float, start: float = 0.0, end: float = 0.8, alpha: float = 14.0, beta: float = 5.0) -> float:
    """One-Cycle Pruning (Hubens et al., 2021): s_i + (s_f - s_i)(1 + e^(-α+β)) / (1 + e^(-αt+β))."""
    t = _clip(t)
    return start + (end - start) * (1 + math.exp(-alpha + beta)) / (1 + math.exp(-alpha * t + beta))
