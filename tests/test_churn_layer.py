"""The learned churn layer: trained only on data before the calibration end, and it helps on CDNOW."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.errors import NotEnoughDataError
from customer_value.models.clv.btyd import CLVParams
from customer_value.models.clv.churn_layer import ChurnLayer, fit_churn_layer
from customer_value.models.clv.inner_windows import inner_origins, inner_windows
from customer_value.models.clv.model import CLVModel

CALIBRATION_END = pd.Timestamp("1997-09-30")
HORIZONS = [91, 133, 182]


def _fit(orders: pd.DataFrame) -> ChurnLayer:
    return fit_churn_layer(inner_windows(orders, CALIBRATION_END, HORIZONS, lambda f: CLVModel().fit(f)))


def test_the_layer_never_reads_the_holdout(cdnow_master) -> None:
    """Change every order after the calibration end (drop half, scramble amounts): the layer is identical."""
    orders, _ = cdnow_master
    after = orders["date"] > CALIBRATION_END
    tampered = pd.concat([orders[~after], orders[after].sample(frac=0.5, random_state=0).assign(amount=1.0)])
    assert _fit(orders) == _fit(tampered)


def test_inner_origins_end_at_the_calibration_end() -> None:
    origins = inner_origins(CALIBRATION_END, [182, 91])
    assert [o.holdout_days for o in origins] == [91.0, 182.0]
    assert all(o.holdout_end == CALIBRATION_END for o in origins)


def test_the_layer_beats_btyd_and_recency_on_the_cdnow_holdout(cdnow_master) -> None:
    orders, _ = cdnow_master
    split = Split(CALIBRATION_END, orders["date"].max())
    calibration, holdout = calibration_and_holdout(orders, split)
    model = CLVModel().fit(calibration)
    plain = model.predict(calibration, split.holdout_days)
    model.churn_layer_ = _fit(orders)
    layered = model.predict(calibration, split.holdout_days)
    churned = (holdout["purchases"] == 0).astype(int)
    auc = roc_auc_score(churned, layered["churn_probability"])
    assert auc > roc_auc_score(churned, plain["churn_probability"])  # BG/NBD: 0.746
    assert auc > roc_auc_score(churned, calibration["days_since_last"])  # recency: 0.759
    assert brier_score_loss(churned, layered["churn_probability"]) <= 0.165
    np.testing.assert_allclose(layered["btyd_churn_probability"], plain["churn_probability"])
    np.testing.assert_allclose(layered["purchase_probability"], 1 - layered["churn_probability"])


def test_a_window_with_no_churners_is_a_clear_error() -> None:
    days = pd.date_range("1997-01-01", "1997-09-30", freq="D")
    orders = pd.DataFrame(
        {"customer_id": ["a"] * len(days) + ["b"] * len(days), "date": list(days) * 2, "amount": 10.0}
    )
    pinned = CLVModel.from_params(  # published CDNOW estimates: no fit needed to produce layer inputs
        CLVParams(
            "bgnbd",
            {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
            {"p": 6.25, "q": 3.74, "v": 15.44},
            7.0,
        ),
        0.0,
        30.0,
    )
    with pytest.raises(NotEnoughDataError, match="no churners and buyers"):
        fit_churn_layer(inner_windows(orders, CALIBRATION_END, [30], lambda features: pinned))


def test_the_layer_scales_a_copy_in_place_and_leaves_its_inputs_alone() -> None:
    """predict standardises its own copy of the used columns in place (one customers x features array at a
    time, not three): the same numbers as (used - mean) / scale, the inputs untouched."""
    from customer_value.models.clv.churn_layer import AVAILABLE_FEATURES, ChurnLayer

    names = list(AVAILABLE_FEATURES[:3])
    layer = ChurnLayer([0.5, -1.0, 2.0], [2.0, 0.5, 3.0], [0.3, -0.7, 1.1], -0.2, [91.0], names)
    inputs = np.random.default_rng(4).normal(size=(200, len(AVAILABLE_FEATURES)))
    before = inputs.copy()
    used = inputs[:, [AVAILABLE_FEATURES.index(name) for name in names]]
    z = (used - np.asarray(layer.mean)) / np.asarray(layer.scale)
    expected = 1.0 / (1.0 + np.exp(-(z @ np.asarray(layer.coef) + layer.intercept)))
    np.testing.assert_array_equal(layer.predict(inputs), expected)
    np.testing.assert_array_equal(inputs, before)
