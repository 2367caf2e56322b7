"""How well churn probabilities are calibrated and ranked, and whether one score out-ranks another.

Figures a reviewer compares across the model and its baselines: AUC (the Mann-Whitney statistic, ties
counting half), expected calibration error over equal-count bins, the calibration table by decile, the
Brier skill score against predicting the base rate for everyone, and a paired bootstrap interval of the
difference in AUC between two scores of the same customers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

BINS = 10
BOOTSTRAP_RESAMPLES = 200


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic; NaN when only one class occurs."""
    label = np.asarray(label)
    positives = int(label.sum())
    negatives = len(label) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[label == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibration_table(predicted: np.ndarray, label: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Mean predicted and observed churn per equal-count bin of the prediction (deciles by default)."""
    order = np.argsort(predicted, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    rows = [
        {
            "bin": i + 1,
            "customers": len(g),
            "predicted": float(np.mean(predicted[g])),
            "observed": float(np.mean(label[g])),
        }
        for i, g in enumerate(groups)
        if len(g)
    ]
    return pd.DataFrame(rows).set_index("bin")


def expected_calibration_error(predicted: np.ndarray, label: np.ndarray, bins: int = BINS) -> float:
    """Customer-weighted mean |observed - predicted| over equal-count bins of the prediction."""
    if len(predicted) == 0:
        return float("nan")
    table = calibration_table(np.asarray(predicted, dtype="float64"), np.asarray(label), bins)
    gap = (table["observed"] - table["predicted"]).abs()
    return float(np.average(gap, weights=table["customers"]))


def brier_skill_score(predicted: np.ndarray, label: np.ndarray) -> float:
    """1 - Brier / Brier of the base rate: 0 = no better than predicting the churn share for everyone."""
    base = float(np.mean(label))
    reference = base * (1 - base)
    if reference == 0:
        return float("nan")
    return float(1.0 - np.mean((np.asarray(predicted) - label) ** 2) / reference)


def churn_calibration(predicted: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """AUC, Brier, Brier skill score and expected calibration error of one churn probability."""
    return {
        "churn_auc": auc(label, predicted),
        "churn_brier": float(np.mean((np.asarray(predicted) - label) ** 2)),
        "churn_brier_skill": brier_skill_score(predicted, label),
        "churn_ece": expected_calibration_error(predicted, label),
    }


def score_groups(score: np.ndarray) -> np.ndarray:
    """Each row's position among the sorted distinct scores (tied scores share one), for ``weighted_auc``."""
    return np.unique(score, return_inverse=True)[1].ravel()


def weighted_auc(groups: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """The Mann-Whitney AUC (ties count half) with per-row weights of the churners (``positive``) and the
    others (``negative``); ``groups`` from ``score_groups``. With unit weights it is ``auc``; with Poisson(1)
    weights it is one bootstrap resample, computed in two weighted counts instead of a sort."""
    size = int(groups.max()) + 1
    churners = np.bincount(groups, positive, size)
    others = np.bincount(groups, negative, size)
    below = np.cumsum(others) - others
    return float((churners * (below + 0.5 * others)).sum() / (churners.sum() * others.sum()))


def paired_auc_difference(
    label: np.ndarray, score: np.ndarray, other: np.ndarray, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """AUC(score) - AUC(other) on the same customers, with a paired bootstrap percentile interval.

    Both scores are weighed with the same customers' Poisson(1) counts in each resample (the bootstrap's
    large-sample form), so the interval is that of the difference, far narrower than either AUC's own."""
    return paired_auc_differences(label, score, {"other": other}, seed, level)["other"]


def paired_auc_differences(
    label: np.ndarray, score: np.ndarray, others: dict[str, np.ndarray], seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """``paired_auc_difference`` against each of ``others``, every comparison on the same resamples (the
    ones each would draw alone with ``seed``): the Poisson draws, most of the cost at a million customers,
    are made once."""
    label, score = np.asarray(label), np.asarray(score)
    rng = np.random.default_rng(seed)
    ours = score_groups(score)
    theirs = {name: score_groups(np.asarray(other)) for name, other in others.items()}
    churned = label.astype("float64")
    draws: dict[str, list[float]] = {name: [] for name in others}
    for _ in range(BOOTSTRAP_RESAMPLES):  # a few hundred resamples, each O(customers)
        weight = rng.poisson(1.0, len(label)).astype("float64")
        positive, negative = weight * churned, weight * (1.0 - churned)
        if positive.sum() > 0 and negative.sum() > 0:
            mine = weighted_auc(ours, positive, negative)
            for name, groups in theirs.items():
                draws[name].append(mine - weighted_auc(groups, positive, negative))
    return {
        name: _with_interval(float(auc(label, score) - auc(label, np.asarray(other))), draws[name], level)
        for name, other in others.items()
    }


def paired_brier_difference(
    label: np.ndarray, predicted: np.ndarray, other: np.ndarray, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Brier(predicted) - Brier(other) on the same customers, with a paired bootstrap percentile interval
    (the same Poisson(1) weights for both in each resample, as ``paired_auc_difference``)."""
    label, predicted, other = (np.asarray(a, dtype="float64") for a in (label, predicted, other))
    gap = (predicted - label) ** 2 - (other - label) ** 2  # per customer: the difference's summand
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        weight = rng.poisson(1.0, len(label)).astype("float64")
        if weight.sum() > 0:
            draws.append(float(weight @ gap / weight.sum()))
    return _with_interval(float(gap.mean()), draws, level)


def _with_interval(difference: float, draws: list[float], level: float) -> dict[str, float]:
    """A difference with the percentile interval of its bootstrap ``draws`` (NaN without any)."""
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail]) if draws else (np.nan, np.nan)
    return {"diff": difference, "ci_low": float(low), "ci_high": float(high)}
