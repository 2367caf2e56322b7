"""A learned churn layer on top of the BTYD outputs, trained strictly before the evaluation window.

BTYD churn ranks customers by a fixed functional form; recency and spend carry a little more signal
(on CDNOW recency alone out-ranks BG/NBD). The layer is a logistic regression on RFM plus the BTYD
model's own outputs. Its training rows come from *inner* origins inside the calibration window: at each
origin ``c`` a BTYD model is fitted on orders up to ``c`` only, and the label is "no purchase in
(c, calibration end]"; an origin with too little history for a purchase model is skipped. Nothing
after the calibration end is read, so the holdout stays unseen. Pooling several inner horizons, with
log(horizon) as a feature, lets the layer extrapolate to the scoring horizon.

The fitted layer is a handful of numbers (scaler and coefficients), stored as JSON inside the registered
model and applied row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from customer_value.errors import ModelFitError, NotEnoughDataError
from customer_value.features import Split, calibration_and_holdout

LAYER_FEATURES = [
    "log_days_since_last",
    "log_frequency",
    "log_tenure",
    "log_monetary",
    "btyd_churn_logit",
    "btyd_alive_logit",
    "log_expected_purchases",
    "log_horizon",
]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def layer_inputs(features: pd.DataFrame, btyd: pd.DataFrame, horizon_days: float) -> np.ndarray:
    """Layer features from the model inputs (INPUT_COLUMNS) and the BTYD outputs at ``horizon_days``."""
    return np.column_stack(
        [
            np.log1p((features["T_days"] - features["recency_days"]).to_numpy()),  # days since last purchase
            np.log1p(features["frequency"].to_numpy()),
            np.log1p(features["T_days"].to_numpy()),
            np.log1p(features["monetary_value"].to_numpy()),
            _logit(btyd["churn_probability"].to_numpy()),
            _logit(btyd["p_alive"].to_numpy()),
            np.log1p(btyd["expected_purchases"].to_numpy()),
            np.full(len(features), np.log(horizon_days)),
        ]
    )


@dataclass(frozen=True)
class ChurnLayer:
    """Standardise, then logistic regression: P(no purchase in the horizon)."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    inner_horizons_days: list[float]

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        z = (inputs - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ChurnLayer:
        return cls(**values)


def inner_origins(calibration_end: pd.Timestamp, horizons_days: list[int]) -> list[Split]:
    """Origins ``h`` days before the calibration end, each labelled over (origin, calibration end]."""
    return [Split(calibration_end - pd.Timedelta(days=h), calibration_end) for h in sorted(horizons_days)]


def fit_churn_layer(
    orders: pd.DataFrame,
    calibration_end: pd.Timestamp,
    horizons_days: list[int],
    fit_btyd: Callable[[pd.DataFrame], object],
    seed: int = 0,
) -> ChurnLayer:
    """Train on inner origins before ``calibration_end``; orders after it are dropped first."""
    known = orders[orders["date"] <= calibration_end]
    inputs, labels = [], []
    for split in inner_origins(calibration_end, horizons_days):  # a few origins, each vectorised
        if split.calibration_end <= known["date"].min():
            continue
        features, window = calibration_and_holdout(known, split)
        try:
            btyd = fit_btyd(features).predict(features, split.holdout_days)
        except ModelFitError:  # too little history before this origin for a purchase model: skip it
            continue
        inputs.append(layer_inputs(features, btyd, split.holdout_days))
        labels.append((window["purchases"].to_numpy() == 0).astype(int))
    if not labels or len(np.unique(np.concatenate(labels))) < 2:
        raise NotEnoughDataError(
            f"clv.churn_layer: inner windows of {horizons_days} days before {calibration_end.date()} hold no "
            "churners and buyers to learn from; shorten them or set clv.churn_layer.enabled=false"
        )
    x, y = np.vstack(inputs), np.concatenate(labels)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(max_iter=2000, random_state=seed).fit((x - scaler.mean_) / scale, y)
    return ChurnLayer(
        mean=scaler.mean_.tolist(),
        scale=scale.tolist(),
        coef=model.coef_[0].tolist(),
        intercept=float(model.intercept_[0]),
        inner_horizons_days=[float(h) for h in sorted(horizons_days)],
    )
