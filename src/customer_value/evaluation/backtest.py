"""Rolling-origin backtests: refit at several earlier cut-offs and judge each on the window after it.

One split can flatter or punish a model by chance; the spread across origins says how much a holdout
metric can be trusted. Every fold uses only orders up to its own origin for fitting.

The configured folds suit a long log; ``plan_origins`` fits them to a shorter one (a smaller step, then
fewer folds) and says what it chose, and a fold whose purchase model cannot be fitted is left out, so the
backtest never fails a run the purchase model alone could do.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.errors import ModelFitError, UserError
from customer_value.evaluation.holdout_metrics import evaluate_clv
from customer_value.tracking import progress

# The earliest origin keeps at least this share of the calibration window as history for its fit.
MIN_HISTORY_SHARE = 0.5
MIN_STEP_DAYS = 7  # origins closer than a week apart judge almost the same window twice


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


def plan_origins(
    split: Split, folds: int, step_days: int, first_date: pd.Timestamp
) -> tuple[list[Split], str | None]:
    """The configured origins when the earliest keeps MIN_HISTORY_SHARE of the calibration window before
    it; else a smaller step (at least MIN_STEP_DAYS), else fewer folds. Returns the origins (none = no
    backtest) and, when they are not the configured ones, why (for a run tag)."""
    history = int((split.calibration_end - first_date).days)
    span = int(history * (1 - MIN_HISTORY_SHARE))  # how far back the earliest origin may go
    if (folds - 1) * step_days <= span:
        return rolling_origins(split, folds, step_days, first_date), None
    why = (
        f"configured {folds} folds {step_days} days apart reach {(folds - 1) * step_days} days back, more "
        f"than {1 - MIN_HISTORY_SHARE:.0%} of the {history}-day calibration window ({span} days)"
    )
    step = span // (folds - 1)
    if step < MIN_STEP_DAYS:
        folds, step = span // MIN_STEP_DAYS + 1, MIN_STEP_DAYS
    if folds < 2:
        return [], f"{why}, and two folds {MIN_STEP_DAYS} days apart do not fit either"
    return rolling_origins(split, folds, step, first_date), f"{why}: {folds} folds {step} days apart"


def backtest(
    orders: pd.DataFrame, origins: list[Split], fit: Callable[[pd.DataFrame], object]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row of holdout metrics per origin; ``fit(calibration_features)`` returns a fitted model.

    A fold whose model cannot be fitted is left out; its origin and the reason come back as the second
    value."""
    rows, failed = [], {}
    for number, split in enumerate(origins, start=1):  # a few folds, each fully vectorised
        origin = split.calibration_end.date().isoformat()
        progress.counted(number, len(origins), "clv.backtest fold")
        calibration, holdout = calibration_and_holdout(orders, split)
        try:
            model = fit(calibration)
        except ModelFitError as exc:
            failed[origin] = str(exc)
            continue
        predictions = model.predict(calibration, split.holdout_days)
        rows.append({"origin": origin} | evaluate_clv(predictions, holdout))
    table = pd.DataFrame(rows) if rows else pd.DataFrame({"origin": []})
    return table.set_index("origin"), failed


def summarise(folds: pd.DataFrame) -> dict[str, float]:
    """Mean and standard deviation (ddof=1) of every metric across folds."""
    summary: dict[str, float] = {}
    for column in folds.columns:
        summary[f"{column}.mean"] = float(folds[column].mean())
        summary[f"{column}.std"] = float(folds[column].std(ddof=1)) if len(folds) > 1 else 0.0
    return summary
