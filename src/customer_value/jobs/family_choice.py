"""``clv.family``: fit the configured purchase-model family, or with ``auto`` choose one on an inner window.

The choice is judged on what customers did between an inner origin and the calibration end, so the
holdout judges one model, not the best of four (see ``choose_family``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.errors import ModelFitError
from customer_value.evaluation import holdout_metrics
from customer_value.jobs.stage import prefixed
from customer_value.models.clv.covariates import COVARIATE_FAMILIES
from customer_value.models.clv.inner_windows import choose_inner_horizons, inner_origins
from customer_value.models.clv.model import CLVModel
from customer_value.schema import CLV_FAMILIES

log = logging.getLogger(__name__)

# The whole base's purchase patterns as of a day (frequency, recency_days, T_days, customers, litt_days).
PurchaseCounts = Callable[[pd.Timestamp], pd.DataFrame]


def choose_family(
    cfg: DictConfig,
    settings: dict[str, object],
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    split: Split,
    full_history: pd.DataFrame | None,
    primary: str,
    orders: pd.DataFrame,
    base: PurchaseCounts | None = None,
) -> tuple[str, CLVModel, CLVModel, pd.DataFrame, dict[str, float]]:
    """Fit the configured family, or with ``clv.family=auto`` choose one on an inner window first.

    Returns the family, its calibration fit, its scoring fit (refit on ``full_history`` when given), the
    holdout predictions and metrics. With ``auto`` every family is fitted on the calibration orders up to
    an inner origin and scored with ``primary`` on what customers did between it and the calibration end
    (``family.<name>.inner.<metric>``); only the best is then fitted on the calibration window, so the
    holdout judges one model, not the best of four. The inner window is as long as the holdout when that
    leaves enough history before it, else derived from the calibration window's length (the layers'
    ``choose_inner_horizons``). When none fits the history, or no family can be fitted on it, the families
    are compared on the holdout as before (optimistic: best of four), and tag ``clv.family_selection``
    says so and why. A NaN score ranks last; a family whose fit fails is skipped (tag
    ``clv.skipped_families``), and one that failed only on the inner window is tried last.
    """
    if cfg.clv.family != "auto":
        family = cfg.clv.family
        model, scoring, predictions, scores = _fit_family(
            family, settings, calibration, holdout, split, full_history, base
        )
        return family, model, scoring, predictions, scores
    skipped: dict[str, str] = {}
    # Covariates: only the families that have a covariate model (MBG/NBD and MBG/CNBD-k have none).
    families = [f for f in CLV_FAMILIES if settings.get("covariates") is None or f in COVARIATE_FAMILIES]
    inner, reason = _inner_family_window(orders, split)
    metrics: dict[str, float] = {}
    order: list[str] = []  # families to try on the calibration window, best on the inner window first
    if inner is not None:
        features, outcome = calibration_and_holdout(orders[orders["date"] <= split.calibration_end], inner)
        inner_scores = {}
        for family in families:  # four families at most
            try:
                model = CLVModel(family=family, covariance=False, **settings).fit(features)
            except ModelFitError as exc:
                skipped[family] = f"inner window: {exc}"
                continue
            scores = holdout_metrics.evaluate_clv(model.predict(features, inner.holdout_days), outcome)
            inner_scores[family] = scores
            metrics |= prefixed(f"family.{family}.inner.", scores)
        inner_primary = primary.removeprefix("holdout.")
        ranked = sorted(
            inner_scores, key=lambda f: _finite_or_worst(inner_scores[f], inner_primary), reverse=True
        )
        if ranked:  # a family that failed on the inner window comes last: it may still fit the longer one
            order = ranked + [family for family in families if family not in inner_scores]
            window = f"{inner.calibration_end.date()}..{split.calibration_end.date()}"
            mlflow.set_tag("clv.family_selection", f"inner_window {window} ({reason})"[:5000])
        else:
            reason = "no family could be fitted on the inner window"
    chosen = None
    if order:
        for family in order:  # the best on the inner window that also fits the calibration window
            try:
                fitted = _fit_family(family, settings, calibration, holdout, split, full_history, base)
            except ModelFitError as exc:
                skipped[family] = str(exc)
                continue
            chosen = family
            break
    else:
        mlflow.set_tag("clv.family_selection", f"holdout (best of the families; {reason})"[:5000])
        candidates = {}
        for family in families:
            try:
                candidates[family] = _fit_family(
                    family, settings, calibration, holdout, split, full_history, base
                )
            except ModelFitError as exc:
                skipped[family] = str(exc)
        if candidates:
            chosen = max(candidates, key=lambda f: _finite_or_worst(candidates[f][3], primary))
            fitted = candidates[chosen]
        if len(candidates) > 1:
            for family, (*_, scores) in candidates.items():
                metrics |= prefixed(f"family.{family}.", scores)
    if skipped:
        mlflow.set_tag("clv.skipped_families", "; ".join(f"{f}: {m}" for f, m in skipped.items())[:5000])
        log.warning("clv=auto skipped %s", skipped)
    if chosen is None:
        raise ModelFitError(f"clv=auto: no family could be fitted ({skipped})")
    mlflow.set_tag("clv.chosen_family", chosen)
    model, scoring, predictions, scores = fitted
    return chosen, model, scoring, predictions, scores | metrics


def _finite_or_worst(scores: dict[str, float], metric: str) -> float:
    """A family's score for ranking: a NaN or missing metric (no purchases in a short window) ranks last."""
    value = scores.get(metric, np.nan)
    return float(value) if np.isfinite(value) else -np.inf


def _fit_family(
    family: str,
    settings: dict[str, object],
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    split: Split,
    full_history: pd.DataFrame | None,
    base: PurchaseCounts | None = None,
) -> tuple[CLVModel, CLVModel, pd.DataFrame, dict[str, float]]:
    """One family's calibration fit, scoring fit, holdout predictions and holdout metrics; with ``base``
    the purchase model is fitted to the whole base's patterns of the same windows."""

    def fit(table: pd.DataFrame, day: pd.Timestamp) -> CLVModel:
        model = CLVModel(family=family, **settings)
        return model.fit(table) if base is None else model.fit(table, base(day))

    model = fit(calibration, split.calibration_end)
    scoring = model if full_history is None else fit(full_history, split.holdout_end)
    predictions = model.predict(calibration, split.holdout_days)
    scores = prefixed("holdout.", holdout_metrics.evaluate_clv(predictions, holdout))
    return model, scoring, predictions, scores


def _inner_family_window(orders: pd.DataFrame, split: Split) -> tuple[Split | None, str]:
    """The inner window clv=auto chooses its family on: as long as the holdout if that fits the history
    before the calibration end, else the longest window derived from the calibration window's length."""
    horizons, reason = choose_inner_horizons(
        orders["date"].min(), split.calibration_end, [int(round(split.holdout_days))]
    )
    if not horizons:
        return None, f"no inner window fits the history: {reason}"
    why = "as long as the holdout" if reason == "configured" else reason
    return inner_origins(split.calibration_end, [max(horizons)])[0], why
