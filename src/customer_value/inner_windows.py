"""Training rows for the learned layers, taken strictly before the calibration end.

At each inner origin ``c`` (``h`` days before the calibration end) a BTYD model is fitted on orders up to
``c`` only, it predicts over ``(c, calibration end]``, and what customers actually did in that window is
the label. Orders after the calibration end are dropped first, so the holdout is never read; an origin
with too little history for a purchase model is skipped. Several horizons, pooled, let a layer that sees
log(horizon) extrapolate to the scoring horizon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from customer_value.errors import ModelFitError, NotEnoughDataError
from customer_value.features import Split, calibration_and_holdout


@dataclass(frozen=True)
class InnerWindow:
    """One inner origin: customers as of it, the BTYD model's view of the window, and what happened."""

    features: pd.DataFrame  # customer table as of the origin
    btyd: pd.DataFrame  # BTYD predictions over the window, from a model fitted up to the origin
    outcome: pd.DataFrame  # purchases and revenue in (origin, calibration end]
    horizon_days: float


def inner_origins(calibration_end: pd.Timestamp, horizons_days: list[int]) -> list[Split]:
    """Origins ``h`` days before the calibration end, each labelled over (origin, calibration end]."""
    return [Split(calibration_end - pd.Timedelta(days=h), calibration_end) for h in sorted(horizons_days)]


def inner_windows(
    orders: pd.DataFrame,
    calibration_end: pd.Timestamp,
    horizons_days: list[int],
    fit_btyd: Callable[[pd.DataFrame], object],
) -> list[InnerWindow]:
    """The usable inner windows, oldest origin last; a clear error when none is usable."""
    known = orders[orders["date"] <= calibration_end]
    windows = []
    for split in inner_origins(calibration_end, horizons_days):  # a few origins, each vectorised
        if split.calibration_end <= known["date"].min():
            continue
        features, outcome = calibration_and_holdout(known, split)
        try:
            btyd = fit_btyd(features).predict(features, split.holdout_days)
        except ModelFitError:  # too little history before this origin for a purchase model: skip it
            continue
        windows.append(InnerWindow(features, btyd, outcome, split.holdout_days))
    if not windows:
        raise NotEnoughDataError(
            f"clv.layers: no inner window of {sorted(horizons_days)} days before {calibration_end.date()} "
            "has enough history for a purchase model; shorten them or disable the layers "
            "(clv.layers.churn=false clv.layers.value=false)"
        )
    return windows
