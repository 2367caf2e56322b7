"""Generated buyers who break BG/NBD's assumptions: each shape has the behaviour it is named for, and on
regular buyers "days since last purchase" ranks next-180-day churners better than BG/NBD does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter
from lifetimes.utils import ConvergenceError
from sklearn.metrics import roc_auc_score

from customer_value.data.behaviour_shapes import (
    BEHAVIOUR_SHAPES,
    MIXED_REAL_SHARES,
    generate_behaviour_shape,
    mixed_real_sources,
)

SHAPES = sorted(BEHAVIOUR_SHAPES)
DAY = pd.Timedelta(days=1)


def _gap_days(orders: pd.DataFrame) -> pd.Series:
    """Days since the customer's previous order, one row per repeat order (orders come sorted)."""
    gaps = orders.groupby("customer_id")["timestamp"].diff() / DAY
    return gaps.dropna()


def _median_gap_cv(orders: pd.DataFrame, min_gaps: int = 4) -> float:
    """Median over customers with at least ``min_gaps`` gaps of their gaps' coefficient of variation."""
    gaps = _gap_days(orders)
    stats = gaps.groupby(orders.loc[gaps.index, "customer_id"]).agg(["std", "mean", "size"])
    stats = stats[stats["size"] >= min_gaps]
    return float((stats["std"] / stats["mean"]).median())


def _share_returning_after(orders: pd.DataFrame, days: float) -> float:
    """Share of customers with a gap of more than ``days`` that ended in an order (they came back)."""
    gaps = _gap_days(orders)
    returned = orders.loc[gaps.index[gaps > days], "customer_id"].unique()
    return len(returned) / orders["customer_id"].nunique()


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_is_an_orders_log_in_its_window_and_fixed_by_its_seed(name: str) -> None:
    shape = BEHAVIOUR_SHAPES[name]
    orders = generate_behaviour_shape(name, seed=3)

    assert list(orders.columns) == ["customer_id", "timestamp", "amount"]
    assert pd.api.types.is_string_dtype(orders["customer_id"])
    assert orders["timestamp"].dtype == "datetime64[ns]" and orders["amount"].dtype == "float64"
    assert orders["customer_id"].str.fullmatch(r"c\d{6}").all()
    assert orders["customer_id"].nunique() == shape.customers == 800
    assert (orders["amount"] > 0).all() and np.isfinite(orders["amount"]).all()
    # Sorted by customer then time, so each customer's first row is their first order.
    assert (orders["customer_id"].to_numpy()[1:] >= orders["customer_id"].to_numpy()[:-1]).all()
    assert (_gap_days(orders) >= 0).all()
    # Acquired in the acquisition window; nothing before the start or after the end of observation.
    start = pd.Timestamp(shape.start)
    first = orders.groupby("customer_id")["timestamp"].min()
    assert first.between(start, start + pd.Timedelta(days=shape.acquisition_days)).all()
    assert orders["timestamp"].max() <= shape.end and orders["timestamp"].min() >= start
    assert orders["timestamp"].max() > shape.end - pd.Timedelta(days=30)  # observed to the end

    pd.testing.assert_frame_equal(orders, generate_behaviour_shape(name, seed=3))
    other = generate_behaviour_shape(name, seed=4)
    assert len(other) != len(orders) or not other["timestamp"].equals(orders["timestamp"])
    assert generate_behaviour_shape(name, seed=3, customers=50)["customer_id"].nunique() == 50


def test_regular_buyers_have_regular_gaps_and_bursts_clustered_ones() -> None:
    """Exponential (BG/NBD) gaps have a coefficient of variation of 1; Erlang k = 2..5 gaps 0.45-0.71."""
    assert _median_gap_cv(generate_behaviour_shape("regular_buyers")) < 0.7
    assert _median_gap_cv(generate_behaviour_shape("bursts")) > 1.5
    # Bursts: most gaps are the few days inside a burst, most of the time is spent in the quiet between.
    gaps = _gap_days(generate_behaviour_shape("bursts"))
    assert (gaps < 7).mean() > 0.6 and gaps[gaps >= 7].sum() > 0.8 * gaps.sum()


def test_decaying_rates_buy_much_less_in_their_second_year() -> None:
    orders = generate_behaviour_shape("decaying_rates")
    age = orders["timestamp"] - orders.groupby("customer_id")["timestamp"].transform("min")
    year = (age / pd.Timedelta(days=365)).astype(int)
    counts = pd.crosstab(orders["customer_id"], year)
    both = counts[(counts[0] > 0) & (counts[1] > 0)]  # still buying in both years
    assert len(both) > 0.5 * len(counts)  # no dropout: most customers still buy in year two (all observed)
    assert both[1].sum() < 0.5 * both[0].sum()


def test_pause_and_return_customers_come_back_after_long_gaps() -> None:
    assert _share_returning_after(generate_behaviour_shape("pause_and_return"), days=90) > 0.4
    # Weekly regular buyers never go quiet for three months and come back: the pause is the shape's own.
    assert _share_returning_after(generate_behaviour_shape("regular_buyers"), days=90) < 0.02


def test_mixed_real_holds_every_behaviour_under_distinct_ids() -> None:
    orders = generate_behaviour_shape("mixed_real", seed=1)
    sources = mixed_real_sources(800)
    assert orders["customer_id"].nunique() == 800 and set(orders["customer_id"]) == set(sources.index)
    counts = sources.value_counts()
    for source, share in MIXED_REAL_SHARES.items():
        assert abs(counts[source] - share * 800) < 1
    part = orders["customer_id"].map(sources)
    assert _median_gap_cv(orders[part == "regular_buyers"]) < 0.7
    assert _median_gap_cv(orders[part == "bursts"]) > 1.5
    assert _share_returning_after(orders[part == "pause_and_return"], days=90) > 0.4
    # The BG/NBD buyers are the base's one-time buyers (synthetic.generate_orders' defaults).
    per_customer = orders.groupby("customer_id").size()
    assert (per_customer[sources == "bgnbd"] == 1).mean() > 0.3


def _bgnbd_no_purchase(x: np.ndarray, t_x: np.ndarray, t: np.ndarray, horizon: float) -> np.ndarray:
    """BG/NBD's P(no purchase in the next ``horizon``), fitted on (x, t_x, T) in weeks:
    1 - P(alive) * (1 - ((alpha + T) / (alpha + T + h)) ** (r + x)).

    The project's fallback penalizers (conf/clv/auto.yaml) are tried in turn if a fit does not converge.
    """
    for penalizer in (0.0, 0.001, 0.01, 0.1):
        try:
            model = BetaGeoFitter(penalizer_coef=penalizer).fit(x, t_x, t)
        except ConvergenceError:
            continue
        r, alpha = model.params_["r"], model.params_["alpha"]
        alive = model.conditional_probability_alive(x, t_x, t)
        return 1.0 - alive * (1.0 - ((alpha + t) / (alpha + t + horizon)) ** (r + x))
    raise AssertionError("BG/NBD did not converge with any penalizer")


def test_days_since_last_purchase_ranks_regular_buyers_churn_better_than_bgnbd() -> None:
    """The point of the corpus: on weekly shoppers who stop for good, cut after 10 months (4-10 months of
    history each), the rule beats BG/NBD at ranking who makes no purchase in the next 180 days."""
    shape = BEHAVIOUR_SHAPES["regular_buyers"]
    orders = generate_behaviour_shape("regular_buyers")
    cut = pd.Timestamp(shape.start) + pd.Timedelta(days=300)
    horizon = pd.Timedelta(days=180)
    before = orders[orders["timestamp"] < cut].groupby("customer_id")["timestamp"].agg(["min", "max", "size"])
    bought = orders.loc[orders["timestamp"].between(cut, cut + horizon, inclusive="left"), "customer_id"]
    churned = ~before.index.isin(bought.unique())
    week = pd.Timedelta(days=7)
    x = (before["size"] - 1).to_numpy(dtype=float)
    t_x = ((before["max"] - before["min"]) / week).to_numpy()
    t = ((cut - before["min"]) / week).to_numpy()
    days_since_last = ((cut - before["max"]) / DAY).to_numpy()
    no_purchase = _bgnbd_no_purchase(x, t_x, t, horizon / week)

    assert 0.2 < churned.mean() < 0.5
    rule_auc = roc_auc_score(churned, days_since_last)
    bgnbd_auc = roc_auc_score(churned, no_purchase)
    assert rule_auc > 0.95 and rule_auc > bgnbd_auc + 0.02, (rule_auc, bgnbd_auc)
    # Why: customers who died before a second order. BG/NBD cannot let a one-time buyer drop out
    # (P(alive) = 1 at x = 0) and, with the tight rate prior regular buyers give it, says they will buy
    # again almost surely; every one of them is gone.
    one_time = x == 0
    assert one_time.sum() >= 5 and churned[one_time].all()
    assert no_purchase[one_time].max() < 0.05 < np.median(no_purchase[churned & ~one_time])
