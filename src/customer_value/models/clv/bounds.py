"""Bounds on the CLV model's predict-time parameters, so that every allowed value costs a bounded amount.

Why: the discounted value sums the purchases expected in every discount step, so the work grows with the
number of steps, horizon_days / discount_step_days, times 1 + the bootstrap draws with intervals (and the
purchase-count interval searches further with a longer horizon). `score.horizon_days=1e9` (32.9 million
monthly steps) ran for more than nine minutes at 1.5 GiB before it was stopped, and one such REST request
held `mlflow models serve`'s only worker. The bounds, and the cost measured at them for every family, are
in docs/configuration.md "Bounds on predict-time parameters" (``python -m customer_value.bench.bounds``
measures them).

One place checks them for training (`clv.horizon_days`, `clv.discount_step_days`), the score job (before
any data is read) and the served model (an HTTP 400); this module imports nothing heavy.
"""

from __future__ import annotations

import math

from customer_value.errors import UserError

DAYS_PER_YEAR = 365.25
MAX_HORIZON_YEARS = 20
MAX_HORIZON_DAYS = MAX_HORIZON_YEARS * DAYS_PER_YEAR  # 7,305 days; 10 % a year discounts year 20 to 0.15
MAX_DISCOUNT_STEPS = 240  # 20 years of monthly steps (the default step, 365.25 / 12 days): the cost bound
MIN_DISCOUNT_STEP_DAYS = 1.0  # the data's resolution: orders are cut to the day


class PredictionBoundError(UserError):
    """A predict-time parameter outside its documented bound."""


def discount_steps(horizon_days: float, discount_step_days: float) -> int:
    """Steps at whose ends value is discounted (the last one may be shorter)."""
    return max(1, math.ceil(horizon_days / discount_step_days - 1e-9))


def check_horizon(horizon_days: float, discount_step_days: float | None, key: str = "horizon_days") -> float:
    """``horizon_days`` as a float if a model with this discount step may predict over it, else one line.

    ``discount_step_days`` None checks the horizon's own bound only (the model is not known yet).
    """
    try:
        horizon = float(horizon_days)
    except (TypeError, ValueError):
        raise PredictionBoundError(f"{key} must be a number of days, got {horizon_days!r}") from None
    if not horizon > 0:  # NaN included
        raise PredictionBoundError(f"{key} must be positive, got {horizon}")
    if not horizon <= MAX_HORIZON_DAYS:  # inf included
        raise PredictionBoundError(
            f"{key}={horizon:g} is beyond the bound of {MAX_HORIZON_DAYS:,.0f} days "
            f"({MAX_HORIZON_YEARS} years)"
        )
    if discount_step_days is not None:
        steps = discount_steps(horizon, discount_step_days)
        if steps > MAX_DISCOUNT_STEPS:
            raise PredictionBoundError(
                f"{key}={horizon:g} needs {steps:,} discount steps of {discount_step_days:g} day(s); at most "
                f"{MAX_DISCOUNT_STEPS:,} are allowed, so this model predicts up to "
                f"{MAX_DISCOUNT_STEPS * discount_step_days:,.0f} days"
            )
    return horizon


def check_discount_step(discount_step_days: float, key: str = "clv.discount_step_days") -> float:
    """A discount step of at least a day (finer steps only multiply the work on day-resolution data)."""
    step = float(discount_step_days)
    if not (math.isfinite(step) and step >= MIN_DISCOUNT_STEP_DAYS):
        raise PredictionBoundError(f"{key} must be >= {MIN_DISCOUNT_STEP_DAYS:g} day, got {step:g}")
    return step
