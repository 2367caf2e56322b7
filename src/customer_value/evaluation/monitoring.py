"""Did the predictions come true? A scoring's predictions beside what its customers then did.

A scoring output says when it was made (``as_of``) and how far it looked (``horizon_days``); once some of
that horizon has passed, the order log says what happened. The elapsed window is judged with the same
metrics as a training run's holdout (``holdout_metrics.evaluate_clv``), so a version's monitoring figures
sit beside its own holdout figures; predictions for exactly the elapsed window come from asking the
registered version again at the elapsed horizon (the caller does that: this module holds no model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from customer_value.evaluation.holdout_metrics import churned, evaluate_clv

# The metrics a retrain verdict may watch, and which way is better (Brier: lower).
WATCHABLE = {
    "churn_auc": "higher",
    "top_decile_revenue_capture": "higher",
    "revenue_spearman": "higher",
    "churn_brier": "lower",
}


@dataclass(frozen=True)
class ElapsedWindow:
    """The part of a scoring's horizon that the order log now covers: (as_of, end]."""

    as_of: pd.Timestamp
    horizon_days: float
    end: pd.Timestamp

    @property
    def days(self) -> float:
        return float((self.end - self.as_of).days)

    @property
    def share(self) -> float:
        """How much of the horizon has passed (1.0 = all of it)."""
        return self.days / self.horizon_days


def elapsed_window(as_of: pd.Timestamp, horizon_days: float, last_day: pd.Timestamp) -> ElapsedWindow | None:
    """The elapsed part of the horizon, or None when the log has no day after ``as_of`` yet."""
    end = min(as_of + pd.Timedelta(days=int(np.floor(horizon_days))), last_day.normalize())
    if end <= as_of:
        return None
    return ElapsedWindow(as_of, float(horizon_days), end)


def realised_metrics(predictions: pd.DataFrame, realised: pd.DataFrame) -> dict[str, float]:
    """The holdout metrics of a training run, on the elapsed window (same names, no prefix)."""
    return evaluate_clv(predictions, realised)


def calibration_by_decile(churn_probability: np.ndarray, realised: pd.DataFrame) -> pd.DataFrame:
    """Per decile of predicted churn (1 = least likely to churn): customers, mean predicted churn and the
    realised churn rate, so a reviewer sees where the probabilities stopped being honest."""
    label = churned(realised)
    ranks = pd.Series(churn_probability).rank(method="first")
    deciles = pd.qcut(ranks, min(10, len(ranks)), labels=False) + 1
    frame = pd.DataFrame({"decile": deciles, "predicted": churn_probability, "realised": label})
    table = frame.groupby("decile").agg(
        customers=("realised", "size"),
        predicted_churn=("predicted", "mean"),
        realised_churn=("realised", "mean"),
    )
    table["gap"] = table["realised_churn"] - table["predicted_churn"]
    return table


def segment_outcomes(
    segment_names: pd.Series, predictions: pd.DataFrame, realised: pd.DataFrame
) -> pd.DataFrame:
    """Per segment: predicted vs realised retention (a purchase in the window), purchases and revenue.

    All three inputs are aligned row by row (one row per customer). Revenue columns appear only when
    both the predictions and the log have amounts.
    """
    frame = pd.DataFrame(
        {
            "segment_name": segment_names.to_numpy(),
            "predicted_retention": 1.0 - predictions["churn_probability"].to_numpy(),
            "realised_retention": 1.0 - churned(realised),
            "predicted_purchases": predictions["expected_purchases"].to_numpy(),
            "realised_purchases": realised["purchases"].to_numpy(),
        }
    )
    sums = {"predicted_purchases": "sum", "realised_purchases": "sum"}
    if "expected_revenue" in predictions.columns and "revenue" in realised.columns:
        frame["predicted_revenue"] = predictions["expected_revenue"].to_numpy()
        frame["realised_revenue"] = realised["revenue"].to_numpy()
        sums |= {"predicted_revenue": "sum", "realised_revenue": "sum"}
    grouped = frame.groupby("segment_name", sort=False)
    table = grouped.agg({"predicted_retention": "mean", "realised_retention": "mean", **sums})
    table.insert(0, "customers", grouped.size())
    return table.sort_values("customers", ascending=False)


def retrain_verdict(
    observed: Mapping[str, float], own_holdout: Mapping[str, float], tolerances: Mapping[str, float]
) -> list[str]:
    """The watched metrics that fell short of the version's own holdout figure by more than their
    tolerance, as readable reasons (empty: no retrain needed). A metric either side lacks is not judged."""
    reasons = []
    for metric, tolerance in tolerances.items():
        if metric not in observed or metric not in own_holdout:
            continue
        now, then = float(observed[metric]), float(own_holdout[metric])
        shortfall = then - now if WATCHABLE[metric] == "higher" else now - then
        if shortfall > tolerance:
            reasons.append(f"{metric} {now:.4g} against its holdout {then:.4g} (tolerance {tolerance:g})")
    return reasons
