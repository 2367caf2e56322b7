"""Training rows for the learned layers, taken strictly before the calibration end.

At each inner origin ``c`` (``h`` days before the calibration end) a BTYD model is fitted on orders up to
``c`` only, it predicts over ``(c, calibration end]``, and what customers actually did in that window is
the label. Orders after the calibration end are dropped first, so the holdout is never read; an origin
with too little history for a purchase model is skipped. Several horizons, pooled, let a layer that sees
log(horizon) extrapolate to the scoring horizon.

The configured horizons suit a log with a year or more before the calibration end; on a younger log they
are derived from the calibration window's own length (``choose_inner_horizons``), so the layers adapt to
the history instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.errors import ModelFitError, NotEnoughDataError

# An inner origin must leave at least this share of the calibration window before it: the purchase model
# fitted there needs history (CDNOW's 182-day window leaves 89 of 272 days, a third).
MIN_HISTORY_SHARE = 0.25
# Derived windows, as shares of the calibration window: the longest still leaves half of it as history.
DERIVED_SHARES = (0.25, 1 / 3, 0.5)
MIN_WINDOW_DAYS = 7  # a shorter window mostly measures the weekday a customer shops on


# The purchase model's outputs the layers and their checks read (the rest would only hold memory: a
# million customers' dozen prediction columns in each of several windows).
LAYER_INPUTS = (
    "churn_probability",
    "p_alive",
    "expected_purchases",
    "expected_order_value",
    "expected_revenue",
)


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


def choose_inner_horizons(
    first_date: pd.Timestamp, calibration_end: pd.Timestamp, configured: list[int]
) -> tuple[list[int], str]:
    """The configured horizons when they all fit the calibration window, else shares of its length.

    Returns the horizons (empty when even the derived ones are under MIN_WINDOW_DAYS) and why they were
    chosen, in words for a run tag.
    """
    length = int((calibration_end - first_date).days)
    longest = int(length * (1 - MIN_HISTORY_SHARE))
    if max(configured) <= longest:
        return sorted(configured), "configured"
    derived = sorted({round(length * share) for share in DERIVED_SHARES})
    why = (
        f"configured {sorted(configured)} days do not fit a {length}-day calibration window (an origin "
        f"must leave {MIN_HISTORY_SHARE:.0%} of it, so at most {longest} days)"
    )
    if derived[0] < MIN_WINDOW_DAYS:
        return [], f"{why}, and its shares {derived} days are under {MIN_WINDOW_DAYS} days"
    return derived, f"{why}: derived as {', '.join(f'{s:.2f}' for s in DERIVED_SHARES)} of it"


def inner_windows(
    orders: pd.DataFrame,
    calibration_end: pd.Timestamp,
    horizons_days: list[int],
    fit_btyd: Callable[[pd.DataFrame], object],
) -> list[InnerWindow]:
    """The usable inner windows, oldest origin last; a clear error when none is usable."""
    # A caller that already cut the log at this day (select_layers) passes it as is: no second copy.
    known = orders if orders["date"].max() <= calibration_end else orders[orders["date"] <= calibration_end]
    windows = []
    for split in inner_origins(calibration_end, horizons_days):  # a few origins, each vectorised
        if split.calibration_end <= known["date"].min():
            continue
        features, outcome = calibration_and_holdout(known, split)
        try:
            btyd = fit_btyd(features).predict(features, split.holdout_days)
        except ModelFitError:  # too little history before this origin for a purchase model: skip it
            continue
        btyd = btyd[[c for c in LAYER_INPUTS if c in btyd.columns]]  # what the layers read, kept only
        windows.append(InnerWindow(features, btyd, outcome, split.holdout_days))
    if not windows:
        raise NotEnoughDataError(
            f"clv.layers: no inner window of {sorted(horizons_days)} days before {calibration_end.date()} "
            "has enough history for a purchase model; shorten them or disable the layers "
            "(clv.layers.churn=false clv.layers.value=false)"
        )
    return windows
