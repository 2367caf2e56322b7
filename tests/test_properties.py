"""Properties that must hold for any input (hypothesis): the customer table's invariants, probabilities in
[0, 1], non-negative and ordered values and intervals, churn never rising with a more recent purchase, and
scoring that does not depend on row order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customer_value.data.features import calibration_and_holdout, customer_features, resolve_split
from customer_value.data.loading import clean_transactions, load_bundled
from customer_value.models.clv.btyd import BTYD_COLUMNS, INTERVAL_COLUMNS, model_inputs
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.predict import churn_probability, predict_arrays

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
START = pd.Timestamp("2024-01-01")


@pytest.fixture(scope="module", params=["bgnbd", "mbgnbd", "pareto_nbd", "mbgcnbd"])
def fitted(request: pytest.FixtureRequest) -> CLVModel:
    """Each family fitted on the CDNOW 1/10 sample's calibration window (its covariance gives intervals)."""
    orders, _ = load_bundled("cdnow_sample")
    calibration, _ = calibration_and_holdout(orders, resolve_split(orders, "1997-09-30", 0.5))
    return CLVModel(family=request.param, interval_draws=30).fit(calibration)


@st.composite
def order_logs(draw: st.DrawFn) -> pd.DataFrame:
    """Up to 60 orders of up to 8 customers over a year, amounts from a cent to a million."""
    n = draw(st.integers(1, 60))
    customers = draw(st.lists(st.sampled_from([f"c{i}" for i in range(8)]), min_size=n, max_size=n))
    days = draw(st.lists(st.integers(0, 365), min_size=n, max_size=n))
    amounts = draw(st.lists(st.floats(0.01, 1e6), min_size=n, max_size=n))
    return pd.DataFrame(
        {"customer_id": customers, "timestamp": START + pd.to_timedelta(days, unit="D"), "amount": amounts}
    )


@st.composite
def customer_tables(draw: st.DrawFn) -> pd.DataFrame:
    """1-40 customers with 0 <= recency <= T (days), frequency 0..60 and mean repeat spend."""
    n = draw(st.integers(1, 40))
    rows = []
    for _ in range(n):
        T = draw(st.floats(1.0, 730.0))
        frequency = float(draw(st.integers(0, 60)))
        recency = 0.0 if frequency == 0 else draw(st.floats(0.0, T))
        spend = 0.0 if frequency == 0 else draw(st.floats(0.5, 5_000.0))
        rows.append((frequency, recency, T, spend))
    table = pd.DataFrame(rows, columns=["frequency", "recency_days", "T_days", "monetary_value"])
    table["mean_order_value"] = table["monetary_value"]
    return table


@PROPERTY_SETTINGS
@given(order_logs(), st.randoms(use_true_random=False))
def test_customer_table_invariants_and_row_order(log: pd.DataFrame, random: object) -> None:
    orders, _ = clean_transactions(log, source="generated")
    as_of = orders["date"].max()
    table = customer_features(orders, as_of)
    assert (table["recency_days"] >= 0).all() and (table["recency_days"] <= table["T_days"]).all()
    assert (table["frequency"] >= 0).all() and (table["n_orders"] == table["frequency"] + 1).all()
    assert (table["monetary_value"] >= 0).all() and (table["total_spend"] > 0).all()
    assert (table["litt_days"] >= 0).all() and (table.loc[table["frequency"] == 0, "litt_days"] == 0).all()
    shuffled = log.sample(frac=1.0, random_state=random.randint(0, 2**31))  # type: ignore[attr-defined]
    again = customer_features(clean_transactions(shuffled, source="generated")[0], as_of)
    pd.testing.assert_frame_equal(again, table, rtol=1e-12)


@PROPERTY_SETTINGS
@given(customer_tables(), st.floats(1.0, 3_650.0))
def test_predictions_are_bounded_non_negative_and_ordered(
    fitted: CLVModel, table: pd.DataFrame, horizon: float
) -> None:
    out = fitted.predict(table, horizon, intervals=True)
    for column in ("p_alive", "churn_probability", "purchase_probability", "btyd_churn_probability"):
        assert out[column].between(0.0, 1.0).all(), column
    for column in (
        "expected_purchases",
        "expected_order_value",
        "expected_revenue",
        "clv",
        *INTERVAL_COLUMNS,
    ):
        assert (out[column] >= 0).all(), column
    assert (out["clv"] <= out["expected_revenue"] * (1 + 1e-12)).all()  # discounting never adds value
    for name in ("expected_purchases", "clv"):
        assert (out[f"{name}_low"] <= out[name] * (1 + 1e-9)).all()
        assert (out[name] <= out[f"{name}_high"] * (1 + 1e-9)).all()
    assert (out["purchases_low"] <= out["purchases_high"]).all()


@PROPERTY_SETTINGS
@given(
    st.integers(1, 60),
    st.floats(7.0, 730.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.floats(1.0, 730.0),
)
def test_a_more_recent_purchase_never_raises_churn(
    fitted: CLVModel, frequency: int, T: float, earlier: float, later: float, horizon: float
) -> None:
    """At equal frequency and T, a later last purchase (larger recency) never makes churn more likely.
    (MBG/CNBD-k only at k = 1, as its CDNOW fit is: a regular buyer who just bought is not due yet, see
    tests/test_mbgcnbd_family.py.)"""
    earlier, later = sorted((earlier, later))
    table = pd.DataFrame(
        {
            "frequency": [float(frequency)] * 2,
            "recency_days": [earlier * T, later * T],
            "T_days": [T, T],
            "monetary_value": [20.0, 20.0],
        }
    )
    params = fitted.params_
    inputs = model_inputs(table, params.time_unit_days)
    values = predict_arrays(params, inputs, horizon, 0.1, 30.4375)
    p_alive = values[:, BTYD_COLUMNS.index("p_alive")]
    churn = churn_probability(params, inputs, horizon / params.time_unit_days, p_alive)
    assert churn[1] <= churn[0] + 1e-12


@PROPERTY_SETTINGS
@given(customer_tables(), st.randoms(use_true_random=False))
def test_scoring_does_not_depend_on_row_order(fitted: CLVModel, table: pd.DataFrame, random: object) -> None:
    order = np.arange(len(table))
    random.shuffle(order)  # type: ignore[attr-defined]
    straight = fitted.predict(table, 365.0, intervals=True)
    shuffled = fitted.predict(table.iloc[order], 365.0, intervals=True)
    pd.testing.assert_frame_equal(shuffled, straight.iloc[order], rtol=1e-12)
