"""Realistic transaction logs generated from the models themselves (BG/NBD purchases, Gamma-Gamma spend).

Used by tests and benchmarks: the true parameters are known, so recovery can be checked. Vectorised over
customers with a cap on purchases per customer (``max_repeats``), never a per-customer Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TrueParams:
    """Population parameters; BG/NBD rates are per ``time_unit_days`` days (weeks by default)."""

    r: float = 0.25
    alpha: float = 4.0
    a: float = 0.8
    b: float = 2.5
    p: float = 6.0
    q: float = 4.0
    v: float = 15.0
    time_unit_days: float = 7.0


def generate_orders(
    n_customers: int,
    *,
    seed: int = 0,
    params: TrueParams = TrueParams(),
    start: str = "2024-01-01",
    acquisition_days: int = 84,
    observation_days: int = 546,
    max_repeats: int = 60,
) -> pd.DataFrame:
    """Orders (customer_id, timestamp, amount) for customers acquired in the first ``acquisition_days``.

    Each customer buys at rate lambda ~ Gamma(r, alpha) while alive, drops out after any repeat purchase
    with probability p ~ Beta(a, b), and spends Gamma(p, nu) per order with nu ~ Gamma(q, v).
    """
    rng = np.random.default_rng(seed)
    unit = params.time_unit_days
    rate = rng.gamma(params.r, 1.0 / params.alpha, n_customers)  # purchases per unit
    dropout = rng.beta(params.a, params.b, n_customers)
    spend_rate = rng.gamma(params.q, 1.0 / params.v, n_customers)
    first_day = rng.uniform(0, acquisition_days, n_customers)

    # Dropout can only follow a repeat purchase, so the last possible one is L ~ Geometric(p) >= 1:
    # alive after x repeats with probability (1 - p)^x, as in the BG/NBD likelihood.
    lifetime_repeats = np.minimum(rng.geometric(dropout), max_repeats)
    gaps = rng.exponential(1.0, (n_customers, max_repeats)) / np.maximum(rate, 1e-12)[:, None]
    repeat_days = first_day[:, None] + np.cumsum(gaps, axis=1) * unit
    keep = (np.arange(max_repeats)[None, :] < lifetime_repeats[:, None]) & (repeat_days < observation_days)

    customer = np.concatenate([np.arange(n_customers), np.nonzero(keep)[0]])
    day = np.concatenate([first_day, repeat_days[keep]])
    amount = rng.gamma(params.p, 1.0 / spend_rate[customer])
    order = np.lexsort((day, customer))
    timestamps = pd.Timestamp(start) + pd.to_timedelta(np.round(day[order] * 86_400), unit="s")
    return pd.DataFrame(
        {
            "customer_id": np.char.add("c", customer[order].astype(str)),
            "timestamp": timestamps,
            "amount": np.round(amount[order], 2).clip(min=0.01),
        }
    )
