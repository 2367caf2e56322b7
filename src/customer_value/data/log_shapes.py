"""A corpus of realistic transaction-log shapes that every default setting must survive.

CDNOW is one cohort of one business. A data team's log is more often a single-day launch cohort, a young
shop with a few months of history, a visit log without amounts or a base with a few whales. Each shape
here is generated from the BTYD models (``synthetic.generate_orders``) and then bent into that shape, so
tests and ``docs/log-shapes.md`` can run ``train`` and ``score`` on all of them with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from customer_value.data.synthetic import TrueParams, generate_orders

YEAR = 365


@dataclass(frozen=True)
class LogShape:
    """One kind of log: how to generate it and whether it has an amount column."""

    description: str
    generate: Callable[[int, int], pd.DataFrame]  # (customers, seed) -> orders
    customers: int = 600
    has_amounts: bool = True


def _single_day_cohort(n: int, seed: int) -> pd.DataFrame:
    """Everyone's first order on launch day, six years of orders; one repeat buyer's first order was free
    (so after zero amounts are dropped, their first paid order comes later) and a few others are free."""
    orders = generate_orders(n, seed=seed, acquisition_days=0, observation_days=6 * YEAR)
    return _with_zero_orders(_free_first_order(orders), share=0.005, seed=seed)


def _free_first_order(orders: pd.DataFrame) -> pd.DataFrame:
    """The first order of the first repeat buyer costs nothing."""
    counts = orders["customer_id"].value_counts()
    repeat = counts[counts > 2].index[0]
    first = orders.index[orders["customer_id"] == repeat][0]
    orders.loc[first, "amount"] = 0.0
    return orders


def _with_zero_orders(orders: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    orders.loc[rng.random(len(orders)) < share, "amount"] = 0.0
    return orders


def _heavy_tailed(n: int, seed: int) -> pd.DataFrame:
    """Log-normal spend per customer and a few whales spending a hundred times the typical order."""
    orders = generate_orders(n, seed=seed, acquisition_days=180, observation_days=2 * YEAR)
    rng = np.random.default_rng(seed + 2)
    codes, ids = pd.factorize(orders["customer_id"])
    scale = rng.lognormal(0.0, 1.5, len(ids))
    scale[rng.choice(len(ids), size=max(1, len(ids) // 200), replace=False)] *= 100.0
    orders["amount"] = (orders["amount"] * scale[codes]).round(2).clip(lower=0.01)
    return orders


def _mostly_one_time(n: int, seed: int) -> pd.DataFrame:
    """About 85 % of customers never come back (low purchase rates, quick dropout)."""
    params = TrueParams(r=0.08, alpha=12.0, a=2.0, b=1.0)
    return generate_orders(n, seed=seed, params=params, acquisition_days=180, observation_days=2 * YEAR)


def _seasonal(n: int, seed: int) -> pd.DataFrame:
    """Repeat orders thinned outside the year-end peak: most repeat buying happens in November-December."""
    orders = generate_orders(n, seed=seed, acquisition_days=365, observation_days=3 * YEAR)
    first = orders.groupby("customer_id")["timestamp"].transform("min") == orders["timestamp"]
    month = orders["timestamp"].dt.month
    keep_share = np.where(month.isin([11, 12]), 1.0, 0.25)
    keep = first | (np.random.default_rng(seed + 3).random(len(orders)) < keep_share)
    return orders[keep].reset_index(drop=True)


def _visits(n: int, seed: int) -> pd.DataFrame:
    """A membership visit log: who came in when, no amounts."""
    params = TrueParams(r=0.6, alpha=3.0, a=0.5, b=4.0)
    orders = generate_orders(n, seed=seed, params=params, acquisition_days=365, observation_days=2 * YEAR)
    return orders.drop(columns="amount")


def _plain(acquisition_days: int, observation_days: int) -> Callable[[int, int], pd.DataFrame]:
    def generate(n: int, seed: int) -> pd.DataFrame:
        return generate_orders(
            n, seed=seed, acquisition_days=acquisition_days, observation_days=observation_days
        )

    return generate


LOG_SHAPES: dict[str, LogShape] = {
    "single_day_cohort": LogShape("one acquisition day, six years, free orders", _single_day_cohort),
    "quarter_cohort": LogShape("one-quarter cohort, 18 months (CDNOW-like)", _plain(91, 546)),
    "continuous_acquisition": LogShape(
        "customers joining over three years, four years", _plain(3 * YEAR, 4 * YEAR)
    ),
    "three_months": LogShape("a young shop: three months of history", _plain(60, 91)),
    "six_years": LogShape("six and a half years of history", _plain(YEAR, int(6.5 * YEAR))),
    "mostly_one_time": LogShape("about 85 % one-time buyers", _mostly_one_time),
    "heavy_tailed_spend": LogShape("log-normal spend with a few whales", _heavy_tailed),
    "zero_value_orders": LogShape(
        "2 % free orders", lambda n, seed: _with_zero_orders(_plain(91, 546)(n, seed), 0.02, seed)
    ),
    "no_amounts": LogShape("a visit log without amounts", _visits, has_amounts=False),
    "small_base": LogShape("300 customers", _plain(91, 546), customers=300),
    "seasonal": LogShape("repeat buying peaks at year end", _seasonal),
}


def generate_shape(name: str, seed: int = 0, customers: int | None = None) -> pd.DataFrame:
    """Orders (customer_id, timestamp[, amount]) of one corpus shape."""
    shape = LOG_SHAPES[name]
    return shape.generate(shape.customers if customers is None else customers, seed)
