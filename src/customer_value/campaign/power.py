"""How many customers a campaign needs to detect a lift in purchase rate, and the smallest lift it can
detect: the two-sided test of two proportions with unequal arms (normal approximation)."""

from __future__ import annotations

import math

from scipy.stats import norm


def required_customers(
    base_rate: float, relative_lift: float, control_share: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Customers (treatment + control) needed to detect ``base_rate`` -> ``base_rate * (1 + lift)`` with
    ``control_share`` of them in control, at two-sided level ``alpha`` and ``power`` (inf: no lift)."""
    p0 = base_rate
    p1 = min(base_rate * (1 + relative_lift), 1 - 1e-9)
    if not 0 < p0 < 1 or p1 == p0:
        return math.inf  # no lift to detect, or a rate with no variance
    treated, control = 1 - control_share, control_share
    pooled = treated * p1 + control * p0
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    spread_null = math.sqrt(pooled * (1 - pooled) * (1 / treated + 1 / control))
    spread_alt = math.sqrt(p1 * (1 - p1) / treated + p0 * (1 - p0) / control)
    return math.ceil(((z_alpha * spread_null + z_power * spread_alt) / (p1 - p0)) ** 2)


def detectable_lift(
    customers: int, base_rate: float, control_share: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest relative lift ``customers`` can detect (bisection on ``required_customers``)."""
    if customers <= 0 or not 0 < base_rate < 1:
        return math.inf
    ceiling = 1 / base_rate - 1  # a rate cannot pass 1
    if required_customers(base_rate, ceiling, control_share, alpha, power) > customers:
        return math.inf
    low, high = 0.0, ceiling
    for _ in range(60):
        middle = (low + high) / 2
        if required_customers(base_rate, middle, control_share, alpha, power) <= customers:
            high = middle
        else:
            low = middle
    return high
