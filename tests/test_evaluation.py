"""Holdout metrics on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.evaluation.holdout_metrics import (
    compare_with_anchors,
    evaluate_baseline,
    evaluate_clv,
    purchases_by_frequency,
    top_decile_capture,
)


def test_top_decile_capture() -> None:
    score = np.arange(20, dtype=float)  # top decile = the last two
    actual = np.zeros(20)
    actual[[18, 19, 0]] = [30.0, 30.0, 40.0]
    assert top_decile_capture(score, actual) == pytest.approx(0.6)


def test_evaluate_clv_on_a_perfect_and_a_wrong_model() -> None:
    holdout = pd.DataFrame({"purchases": [0.0, 0.0, 2.0, 5.0], "revenue": [0.0, 0.0, 40.0, 100.0]})
    perfect = pd.DataFrame(
        {
            "expected_purchases": holdout["purchases"],
            "churn_probability": [1.0, 1.0, 0.0, 0.0],
            "expected_revenue": holdout["revenue"],
        }
    )
    metrics = evaluate_clv(perfect, holdout)
    assert metrics["purchases_mae"] == 0
    assert metrics["aggregate_purchase_error_pct"] == 0
    assert metrics["churn_auc"] == 1.0
    assert metrics["churn_brier"] == 0.0
    assert metrics["revenue_spearman"] == pytest.approx(1.0)
    wrong = perfect.assign(churn_probability=[0.0, 0.0, 1.0, 1.0], expected_purchases=[1.0, 1.0, 1.0, 1.0])
    metrics = evaluate_clv(wrong, holdout)
    assert metrics["churn_auc"] == 0.0
    assert metrics["churn_brier"] == 1.0
    assert metrics["purchases_mae"] == pytest.approx((1 + 1 + 1 + 4) / 4)
    assert metrics["aggregate_purchase_error_pct"] == pytest.approx(100 * (4 - 7) / 7)


def test_baseline_uses_recency_and_historic_spend() -> None:
    features = pd.DataFrame(
        {
            "days_since_last": [300.0, 5.0, 10.0],
            "n_orders": [1.0, 4.0, 2.0],
            "frequency": [0.0, 3.0, 1.0],
            "T_days": [300.0, 100.0, 100.0],
            "total_spend": [10.0, 200.0, 50.0],
        }
    )
    holdout = pd.DataFrame({"purchases": [0.0, 3.0, 1.0], "revenue": [0.0, 90.0, 30.0]})
    metrics = evaluate_baseline(features, holdout, holdout_days=50.0)
    assert metrics["churn_auc"] == 1.0
    assert "churn_brier" not in metrics  # recency is a ranking, not a probability
    assert metrics["revenue_spearman"] == pytest.approx(1.0)
    # Repeat-purchase run rate: 0, 3/100 and 1/100 per day over 50 days.
    assert metrics["purchases_mae"] == pytest.approx(np.mean([0.0, 1.5, 0.5]))


def test_purchases_by_frequency_groups_the_tail() -> None:
    table = purchases_by_frequency(
        np.array([0, 0, 1, 9, 12]), np.array([0.1, 0.3, 1.0, 5.0, 7.0]), np.array([0, 1, 1, 4, 6]), max_bin=7
    )
    assert list(table.index) == ["0", "1", "7+"]
    assert table.loc["0", "predicted"] == pytest.approx(0.2)
    assert table.loc["7+", "actual"] == 5
    assert table.loc["7+", "customers"] == 2


def test_frequency_recency_grid_feeds_a_p_alive_matrix() -> None:
    from customer_value.evaluation.holdout_metrics import frequency_recency_grid, grid_matrix
    from customer_value.models.clv.btyd import CLVParams
    from customer_value.models.clv.model import CLVModel

    grid = frequency_recency_grid(T_days=273.0, max_frequency=5, n_recency=10)
    assert (grid.loc[grid["frequency"] == 0, "recency_days"] == 0).all()
    assert (grid["recency_days"] <= grid["T_days"]).all()
    params = CLVParams(
        "bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, {"p": 6.25, "q": 3.74, "v": 15.44}, 7.0
    )
    p_alive = CLVModel.from_params(params, 0.0, 7.0).predict(grid, 30.0)["p_alive"]
    matrix = grid_matrix(grid, p_alive)
    assert matrix.shape == (6, 10)
    assert matrix.loc[0.0].dropna().tolist() == [1.0]
    repeaters = matrix.loc[1.0:].to_numpy()
    assert (np.diff(repeaters, axis=1) >= 0).all()  # a more recent last purchase: more likely alive
    assert (np.diff(repeaters[:, 0]) <= 0).all()  # many purchases long ago: more likely gone


def test_anchor_comparison_honours_each_direction_and_missing_metrics() -> None:
    metrics = {
        "holdout.churn_auc": 0.77,
        "holdout.churn_brier": 0.16,
        "holdout.aggregate_revenue_error_pct": 20.0,
    }
    anchors = {
        "auc": {"metric": "holdout.churn_auc", "value": 0.759, "better": "higher"},
        "auc_too_high": {"metric": "holdout.churn_auc", "value": 0.78, "better": "higher"},
        "brier": {"metric": "holdout.churn_brier", "value": 0.165, "better": "lower"},
        "aggregate": {
            "metric": "holdout.aggregate_revenue_error_pct",
            "value": -17.0,
            "better": "closer_to_zero",
        },
        "absent": {"metric": "holdout.not_computed", "value": 0.5, "better": "higher"},
    }
    table = compare_with_anchors(metrics, anchors)
    assert table["beaten"].to_dict() == {
        "auc": True,
        "auc_too_high": False,
        "brier": True,
        "aggregate": False,  # |20| is further from zero than |-17|
        "absent": False,
    }
    assert table.loc["brier", "project_value"] == 0.16 and np.isnan(table.loc["absent", "project_value"])


def test_tracking_curve_equals_lifetimes_expected_cumulative_transactions() -> None:
    """The model curve is lifetimes' expected_cumulative_transactions (weekly, CDNOW sample, FHL 2005)."""
    import warnings

    from lifetimes import BetaGeoFitter
    from lifetimes.utils import expected_cumulative_transactions

    from customer_value.data.loading import load_bundled
    from customer_value.evaluation.holdout_metrics import cumulative_repeat_tracking
    from customer_value.models.clv.btyd import CLVParams
    from customer_value.models.clv.predict import expected_repeat_purchases

    orders, _ = load_bundled("cdnow_sample")
    purchase = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    params = CLVParams("bgnbd", purchase, {"p": 6.25, "q": 3.74, "v": 15.44}, 7.0)
    end = orders["date"].max()
    ours = cumulative_repeat_tracking(
        orders, pd.Timestamp("1997-09-30"), end, lambda ages: expected_repeat_purchases(params, ages)
    )
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(purchase)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = expected_cumulative_transactions(
            fitter, orders, "date", "customer_id", 78 * 7, freq="D", freq_multiplier=7
        )
    weekly = ours.iloc[:-1]  # the last row is the holdout end itself (1998-06-30, a partial week)
    np.testing.assert_allclose(
        weekly["expected"].to_numpy(), theirs["predicted"].to_numpy()[: len(weekly)], rtol=1e-9
    )
    repeats = (
        len(orders) - orders["customer_id"].nunique()
    )  # every customer's first day is in the calibration
    assert ours["actual"].iloc[-1] == repeats == theirs["actual"].iloc[-1]
    assert ours["actual"].is_monotonic_increasing and ours["holdout"].iloc[-1] and not ours["holdout"].iloc[0]


def test_tracking_curve_counts_the_cohorts_repeat_days_whatever_the_ids_and_row_order() -> None:
    """The actual curve against a plain pandas count, on the loader's orders and on shuffled text ids."""
    from customer_value.data.loading import load_bundled
    from customer_value.evaluation.holdout_metrics import cumulative_repeat_tracking

    orders, _ = load_bundled("cdnow_sample")
    cut, end = pd.Timestamp("1997-03-15"), pd.Timestamp("1998-01-31")  # a cohort still joining at the cut
    first = orders.groupby("customer_id", observed=True)["date"].transform("min")
    repeat = (first <= cut) & (orders["date"] > first) & (orders["date"] <= end)
    shuffled = orders.sample(frac=1.0, random_state=3).assign(
        customer_id=lambda frame: frame["customer_id"].astype(str)
    )
    # Sorted by customer but not by day within one (the loader's categories kept): the shortcut for the
    # loader's (customer, day) order must not take it.
    days_reversed = orders.sort_values(["customer_id", "date"], ascending=[True, False], ignore_index=True)
    for log in (orders, shuffled, days_reversed):
        curve = cumulative_repeat_tracking(log, cut, end, lambda ages: np.zeros_like(ages))
        expected = [int((repeat & (orders["date"] <= day)).sum()) for day in curve.index]
        assert curve["actual"].tolist() == expected
        assert (orders.loc[first <= cut, "customer_id"].nunique()) > 0 and curve["actual"].iloc[-1] > 0
