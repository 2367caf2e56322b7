"""A learned value layer on top of the BTYD outputs: holdout revenue, trained before the evaluation window.

BTYD x Gamma-Gamma ranks customers by a fixed functional form, and Gamma-Gamma ignores the first order's
amount. The layer is a Poisson GLM with the BTYD model's expected revenue as an **offset**:
revenue = BTYD revenue x exp(correction), the correction linear in RFM, the mean order value including
the first order, and the BTYD outputs. It is trained on the same inner windows as the churn layer (see
``inner_windows``), so the holdout is never read.

Why an offset and no horizon feature: the inner windows span a few months, the holdout and scoring
horizons up to a year. A free GLM with log(horizon) as a feature extrapolated its level badly (CDNOW
aggregate holdout revenue: -4% with BG/NBD but +51% with Pareto/NBD); with the offset the level and its
growth with the horizon come from the purchase model, and the layer only re-ranks within it.

Like the churn layer it is a handful of numbers stored as JSON in the registered model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import PoissonRegressor
from sklearn.preprocessing import StandardScaler

from customer_value.errors import NotEnoughDataError
from customer_value.inner_windows import InnerWindow

VALUE_LAYER_FEATURES = [
    "log_expected_purchases",
    "log_mean_order_value",
    "log_expected_order_value",
    "log_p_alive",
    "log_btyd_purchase_probability",
    "log_days_since_last",
    "log_frequency",
    "log_tenure",
]
L2_PENALTY = 0.1  # sklearn's alpha on standardised features: a light touch, results barely move 1e-4..1
OFFSET_FLOOR = 1e-6  # BTYD revenue is positive; the floor only guards the log


def value_layer_inputs(features: pd.DataFrame, btyd: pd.DataFrame) -> np.ndarray:
    """VALUE_LAYER_FEATURES from the model inputs (incl. ``mean_order_value``) and the BTYD outputs."""
    return np.column_stack(
        [
            np.log(btyd["expected_purchases"].to_numpy() + 1e-4),
            np.log1p(features["mean_order_value"].to_numpy()),
            np.log1p(btyd["expected_order_value"].to_numpy()),
            np.log(btyd["p_alive"].to_numpy() + 1e-6),
            np.log1p(1e-6 - btyd["churn_probability"].to_numpy()),
            np.log1p((features["T_days"] - features["recency_days"]).to_numpy()),
            np.log1p(features["frequency"].to_numpy()),
            np.log1p(features["T_days"].to_numpy()),
        ]
    )


@dataclass(frozen=True)
class ValueLayer:
    """Standardise, then a Poisson GLM offset by BTYD revenue: expected revenue over the horizon."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    inner_horizons_days: list[float]

    def predict(self, inputs: np.ndarray, btyd_revenue: np.ndarray) -> np.ndarray:
        z = (inputs - np.asarray(self.mean)) / np.asarray(self.scale)
        correction = np.exp(np.clip(z @ np.asarray(self.coef) + self.intercept, -50.0, 50.0))
        return np.maximum(btyd_revenue, OFFSET_FLOOR) * correction

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ValueLayer:
        return cls(**values)


def fit_value_layer(windows: list[InnerWindow]) -> ValueLayer:
    """Offset Poisson GLM on the pooled inner windows; target: revenue in (origin, calibration end]."""
    x = np.vstack([value_layer_inputs(w.features, w.btyd) for w in windows])
    y = np.concatenate([w.outcome["revenue"].to_numpy() for w in windows])
    offset = np.maximum(
        np.concatenate([w.btyd["expected_revenue"].to_numpy() for w in windows]), OFFSET_FLOOR
    )
    horizons = sorted(w.horizon_days for w in windows)
    if not (y > 0).any():
        raise NotEnoughDataError(
            f"clv.layers: inner windows of {horizons} days hold no revenue to learn from; "
            "shorten them or set clv.layers.value=false"
        )
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    # A Poisson GLM with offset log(o) is the GLM of y / o weighted by o (the deviances are equal).
    model = PoissonRegressor(alpha=L2_PENALTY, max_iter=3000).fit(
        (x - scaler.mean_) / scale, y / offset, sample_weight=offset
    )
    return ValueLayer(
        mean=scaler.mean_.tolist(),
        scale=scale.tolist(),
        coef=model.coef_.tolist(),
        intercept=float(model.intercept_),
        inner_horizons_days=horizons,
    )
