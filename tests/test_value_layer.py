"""The learned value layer: trained only on data before the calibration end, and it helps on CDNOW."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.errors import NotEnoughDataError
from customer_value.evaluation.holdout_metrics import evaluate_clv
from customer_value.models.clv.inner_windows import InnerWindow, inner_windows
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.value_layer import ValueLayer, fit_value_layer

CALIBRATION_END = pd.Timestamp("1997-09-30")
HORIZONS = [91, 133, 182]


def _fit(orders: pd.DataFrame, family: str = "bgnbd") -> ValueLayer:
    windows = inner_windows(orders, CALIBRATION_END, HORIZONS, lambda f: CLVModel(family=family).fit(f))
    return fit_value_layer(windows)


def test_the_value_layer_never_reads_the_holdout(cdnow_master) -> None:
    """Change every order after the calibration end (drop half, flatten amounts): the layer is identical."""
    orders, _ = cdnow_master
    after = orders["date"] > CALIBRATION_END
    tampered = pd.concat([orders[~after], orders[after].sample(frac=0.5, random_state=1).assign(amount=1.0)])
    assert _fit(orders) == _fit(tampered)


@pytest.mark.parametrize(
    "family",
    ["bgnbd", "mbgnbd", pytest.param("pareto_nbd", marks=pytest.mark.slow)],  # Pareto: ~70 s of hyp2f1
)
def test_the_value_layer_ranks_better_and_keeps_the_purchase_models_level(cdnow_master, family: str) -> None:
    """Issue 3's anchors: top-decile capture 0.516 (BG/NBD x Gamma-Gamma) and 0.504 (historic spend).
    The level stays the purchase model's: a layer with its own horizon term once missed by +51%."""
    orders, _ = cdnow_master
    split = Split(CALIBRATION_END, orders["date"].max())
    calibration, holdout = calibration_and_holdout(orders, split)
    model = CLVModel(family=family).fit(calibration)
    plain_predictions = model.predict(calibration, split.holdout_days)
    plain = evaluate_clv(plain_predictions, holdout)
    model.value_layer_ = _fit(orders, family)
    predictions = model.predict(calibration, split.holdout_days)
    layered = evaluate_clv(predictions, holdout)
    assert layered["top_decile_revenue_capture"] > max(0.516, plain["top_decile_revenue_capture"])
    assert layered["revenue_spearman"] > plain["revenue_spearman"]
    # Never much further from the actual total than the purchase model (measured: -19.5 vs -17.3 BG/NBD,
    # -14.7 vs -21.9 MBG/NBD, -9.9 vs -15.8 Pareto/NBD).
    assert abs(layered["aggregate_revenue_error_pct"]) < abs(plain["aggregate_revenue_error_pct"]) + 5.0
    # The layer replaces revenue and value only; the purchase model's outputs stay as they were.
    np.testing.assert_allclose(predictions["btyd_expected_revenue"], plain_predictions["expected_revenue"])
    for column in ("expected_purchases", "p_alive", "churn_probability"):
        np.testing.assert_allclose(predictions[column], plain_predictions[column])
    assert (predictions["clv"] <= predictions["expected_revenue"] + 1e-9).all()  # discounting only shrinks


def test_a_window_without_revenue_is_a_clear_error() -> None:
    features = pd.DataFrame(
        {
            "frequency": [0.0, 1.0],
            "recency_days": [0.0, 5.0],
            "T_days": [10.0, 10.0],
            "monetary_value": [0.0, 5.0],
            "mean_order_value": [5.0, 5.0],
        }
    )
    btyd = pd.DataFrame(
        {
            "expected_purchases": [0.1, 0.5],
            "expected_order_value": [5.0, 5.0],
            "p_alive": [1.0, 0.9],
            "churn_probability": [0.9, 0.5],
        }
    )
    btyd["expected_revenue"] = btyd["expected_purchases"] * btyd["expected_order_value"]
    window = InnerWindow(features, btyd, pd.DataFrame({"purchases": [0.0, 0.0], "revenue": [0.0, 0.0]}), 30.0)
    with pytest.raises(NotEnoughDataError, match="no revenue to learn from"):
        fit_value_layer([window])
