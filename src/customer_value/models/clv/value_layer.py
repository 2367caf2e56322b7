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

The offset alone did not keep the level: the GLM's intercept learns the purchase model's bias over a few
months, and that bias does not hold over years (six-year log: aggregate holdout revenue +47% with the
layer vs +27% without; a seasonal log -50% vs -5%). So ``level_with_purchase_model`` stores, for a few
horizons from a month to ten years, the shift of the intercept that makes the layer's total over the
calibration customers equal the purchase model's; a prediction uses the shift at its own horizon
(interpolated in log horizon). The shift depends on the horizon only, so predictions stay row by row,
and a constant factor leaves every ranking metric as it was.

Like the churn layer it is a handful of numbers stored as JSON in the registered model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.linear_model import PoissonRegressor
from sklearn.preprocessing import StandardScaler

from customer_value.errors import ModelFitError, NotEnoughDataError
from customer_value.models.clv.inner_windows import InnerWindow

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
LEVEL_HORIZONS_DAYS = (30.0, 91.0, 182.0, 365.0, 730.0, 1461.0, 3652.0)  # where the level is set


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
    # Intercept shifts that give the purchase model's level at these horizons; empty = none (older layers).
    level_horizons_days: list[float] = field(default_factory=list)
    level_shifts: list[float] = field(default_factory=list)

    def predict(
        self, inputs: np.ndarray, btyd_revenue: np.ndarray, horizon_days: float | None = None
    ) -> np.ndarray:
        """``horizon_days``: the horizon of ``btyd_revenue``, for the level shift (None = no shift)."""
        z = inputs - np.asarray(self.mean)
        z /= np.asarray(self.scale)  # in place: one customers x features temporary, not two
        linear = z @ np.asarray(self.coef) + self.intercept + self.level_shift(horizon_days)
        return np.maximum(btyd_revenue, OFFSET_FLOOR) * np.exp(np.clip(linear, -50.0, 50.0))

    def level_shift(self, horizon_days: float | None) -> float:
        """The stored shift at ``horizon_days``: linear in log horizon between stored ones, flat beyond."""
        if horizon_days is None or not self.level_shifts:
            return 0.0
        grid = np.log(np.asarray(self.level_horizons_days))
        return float(np.interp(np.log(horizon_days), grid, np.asarray(self.level_shifts)))

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


def level_with_purchase_model(
    layer: ValueLayer,
    features: pd.DataFrame,
    btyd_at: Callable[[float], pd.DataFrame],
    horizons_days: tuple[float, ...] = LEVEL_HORIZONS_DAYS,
) -> ValueLayer:
    """The layer with a level shift per horizon, so its total revenue over ``features`` equals the purchase
    model's (``btyd_at(h)``: its predictions at h days): the layer re-ranks, the purchase model sets the
    level. A correction so extreme that its clip keeps the total off the target is a ModelFitError."""
    shifts = []
    for horizon in horizons_days:  # a few horizons, each one vectorised prediction
        btyd = btyd_at(horizon)
        inputs, btyd_revenue = value_layer_inputs(features, btyd), btyd["expected_revenue"].to_numpy()
        target, shift = np.log(np.maximum(btyd_revenue, OFFSET_FLOOR).sum()), 0.0
        probe = replace(layer, level_horizons_days=[horizon], level_shifts=[0.0])
        for _ in range(20):  # one step is exact unless the clip binds; then a few more
            step = target - np.log(probe.predict(inputs, btyd_revenue, horizon).sum())
            shift += float(step)
            probe = replace(probe, level_shifts=[shift])
            if abs(step) < 1e-9:
                break
        else:
            raise ModelFitError(
                f"clv.layers: the value layer's correction saturates; its total at {horizon:.0f} days "
                "cannot be set to the purchase model's"
            )
        shifts.append(shift)
    return replace(layer, level_horizons_days=[float(h) for h in horizons_days], level_shifts=shifts)
