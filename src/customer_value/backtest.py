"""Rolling-origin backtests: refit at several earlier cut-offs and judge each on the window after it.

One split can flatter or punish a model by chance; the spread across origins says how much a holdout
metric can be trusted. Every fold uses only orders up to its own origin for fitting.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from customer_value.errors import UserError
from customer_value.evaluation import evaluate_clv
from customer_value.features import Split, calibration_and_holdout


def rolling_origins(split: Split, folds: int, step_days: int, first_date: pd.Timestamp) -> list[Split]:
    """``folds`` cut-offs ending at the calibration end, ``step_days`` apart, each judged on a window as
    long as the main holdout (so every fold's evaluation stays inside the data)."""
    horizon = pd.Timedelta(days=split.holdout_days)
    origins = [split.calibration_end - pd.Timedelta(days=step_days * i) for i in range(folds)]
    too_early = [origin for origin in origins if origin <= first_date]
    if too_early:
        raise UserError(
            f"clv.backtest: origin {too_early[0].date()} is not after the first order ({first_date.date()}); "
            "use fewer folds or a smaller step_days"
        )
    return [Split(calibration_end=origin, holdout_end=origin + horizon) for origin in sorted(origins)]


def backtest(
    orders: pd.DataFrame, origins: list[Split], fit: Callable[[pd.DataFrame], object]
) -> pd.DataFrame:
    """One row of holdout metrics per origin; ``fit(calibration_features)`` returns a fitted model."""
    rows = []
    for split in origins:  # a few folds, each fully vectorised
        calibration, holdout = calibration_and_holdout(orders, split)
        model = fit(calibration)
        predictions = model.predict(calibration, split.holdout_days)
        rows.append({"origin": split.calibration_end.date().isoformat()} | evaluate_clv(predictions, holdout))
    return pd.DataFrame(rows).set_index("origin")


def summarise(folds: pd.DataFrame) -> dict[str, float]:
    """Mean and standard deviation (ddof=1) of every metric across folds."""
    summary: dict[str, float] = {}
    for column in folds.columns:
        summary[f"{column}.mean"] = float(folds[column].mean())
        summary[f"{column}.std"] = float(folds[column].std(ddof=1)) if len(folds) > 1 else 0.0
    return summary
