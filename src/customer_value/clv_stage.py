"""CLV stage of training: calibration fit, holdout metrics and baselines, diagnostics, refit, logged model.

The registered CLV model is **refit on the full history** (``clv.refit_full_history``) because scoring
happens at the end of the data and the last months carry the most information about today's customers;
the holdout metrics judge the calibration-window fit of the same configuration, and that fit travels with
the model so a later run can re-score this version on its own holdout (see ``registry``).
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value import evaluation, plots, registry, tracking
from customer_value.backtest import backtest, rolling_origins, summarise
from customer_value.churn_layer import fit_churn_layer
from customer_value.clv_model import CLVModel
from customer_value.clv_predict import expected_repeat_purchases
from customer_value.data import DataReport
from customer_value.errors import ModelFitError
from customer_value.features import Split, calibration_and_holdout, customer_features, resolve_split
from customer_value.inner_windows import inner_windows
from customer_value.pyfunc_models import clv_spec
from customer_value.schema import CLV_FAMILIES, TIME_UNITS_DAYS, parse_day
from customer_value.stage import (
    Candidate,
    card_facts,
    prefixed,
    require_metrics,
    sample_positions,
    version_tags,
)
from customer_value.value_layer import fit_value_layer

log = logging.getLogger(__name__)


def train_clv(
    cfg: DictConfig, orders: pd.DataFrame, report: DataReport
) -> tuple[dict[str, float], Candidate, pd.DataFrame]:
    """Calibration fit -> holdout metrics and baselines -> refit -> log the pyfunc model.

    Also returns the scoring model's outputs for every customer as of the last order (``clv.horizon_days``),
    which the segments stage profiles and may cluster on.
    """
    split = resolve_split(orders, cfg.split.calibration_end, cfg.split.calibration_share)
    calibration, holdout = calibration_and_holdout(orders, split)
    settings = model_settings(cfg)
    mlflow.log_params(
        {
            "time_unit": cfg.features.time_unit,
            "split.resolved_calibration_end": str(split.calibration_end.date()),
            "split.holdout_days": split.holdout_days,
        }
    )
    full_history = customer_features(orders, split.holdout_end) if cfg.clv.refit_full_history else None
    family, model, scoring_model, predictions, metrics = _choose_family(
        cfg, settings, calibration, holdout, split, full_history
    )
    settings["family"] = family
    if cfg.clv.layers.churn or cfg.clv.layers.value:
        metrics = _attach_layers(cfg, settings, model, orders, split, metrics)
    predictions = model.predict(calibration, split.holdout_days)
    metrics |= prefixed("holdout.", evaluation.evaluate_clv(predictions, holdout))
    # A customer's interval depends on its own row only, so a sample's intervals are the full run's.
    rows = sample_positions(len(calibration), cfg.clv.intervals.evaluation_sample, cfg.seed)
    sampled = model.predict(calibration.iloc[rows], split.holdout_days, intervals=True)
    metrics |= prefixed("holdout.", evaluation.interval_metrics(sampled, holdout.iloc[rows]))
    metrics["holdout.interval_customers"] = float(len(rows))
    metrics |= {f"fitted.{k}": v for k, v in model.params_.fitted().items()}
    metrics |= _fit_diagnostics(cfg, model)
    metrics["split.calibration_customers"] = float(len(calibration))
    if cfg.clv.backtest.folds > 1:
        origins = rolling_origins(
            split, cfg.clv.backtest.folds, cfg.clv.backtest.step_days, orders["date"].min()
        )
        folds = backtest(orders, origins, lambda features: CLVModel(**settings).fit(features))
        tracking.log_table(folds, "evaluation/backtest_folds.csv")
        metrics |= prefixed("backtest.", summarise(folds))
    metrics |= prefixed("baseline.", evaluation.evaluate_baseline(calibration, holdout, split.holdout_days))
    _log_clv_diagnostics(calibration, holdout, predictions)
    _log_tracking(model, orders, split)
    _log_model_matrices(model, calibration, split)

    if cfg.clv.refit_full_history:
        scoring_model.churn_layer_ = model.churn_layer_
        scoring_model.value_layer_ = model.value_layer_
        metrics |= {f"refit.{k}": v for k, v in scoring_model.params_.fitted().items()}
    metrics |= _anchor_metrics(cfg, split, metrics)
    tracking.log_metrics(metrics)
    require_metrics(metrics, cfg.clv.primary_metric, "clv.primary_metric")
    log.info(
        "CLV holdout: churn AUC %.3f (recency baseline %.3f), Brier %.3f, top-decile capture %.3f "
        "(historic spend %.3f), revenue Spearman %.3f (historic spend %.3f)",
        *(
            metrics.get(key, np.nan)
            for key in (
                "holdout.churn_auc",
                "baseline.churn_auc",
                "holdout.churn_brier",
                "holdout.top_decile_revenue_capture",
                "baseline.top_decile_revenue_capture",
                "holdout.revenue_spearman",
                "baseline.revenue_spearman",
            )
        ),
    )

    trained_through = split.holdout_end if cfg.clv.refit_full_history else split.calibration_end
    spec = clv_spec(
        model,
        scoring_model,
        horizon_days=cfg.clv.horizon_days,
        calibration_end=str(split.calibration_end.date()),
        trained_through=str(trained_through.date()),
    )
    info = registry.log_clv_model(spec, calibration)

    def judge(version: str) -> registry.ChampionJudgement:
        return _judge_clv_champion(cfg, version, split, calibration, holdout)

    window = {"calibration_end": spec["calibration_end"], "trained_through": spec["trained_through"]}

    candidate = Candidate(
        run_id=mlflow.active_run().info.run_id,
        model_uri=info.model_uri,
        name=cfg.tracking.clv_model,
        metric=cfg.clv.primary_metric,
        score=metrics[cfg.clv.primary_metric],
        judge=judge,
        tags=version_tags(cfg, report) | window,
        card=card_facts(
            cfg,
            report,
            {k: v for k, v in metrics.items() if k.startswith("holdout.")},
            ["clv", "features", "split"],
            window | {"data.calibration_customers": f"{len(calibration):,}"},
        ),
    )
    today = full_history if full_history is not None else customer_features(orders, split.holdout_end)
    return metrics, candidate, scoring_model.predict(today, cfg.clv.horizon_days)


def model_settings(cfg: DictConfig) -> dict[str, object]:
    """CLVModel's keyword arguments (all but the family) from a train config: one place maps the keys."""
    return {
        "penalizer": cfg.clv.penalizer,
        "fallback_penalizers": tuple(cfg.clv.fallback_penalizers),
        "spend_penalizer": cfg.clv.spend_penalizer,
        "spend_fallback_penalizers": tuple(cfg.clv.spend_fallback_penalizers),
        "heavy_tail_spend": cfg.clv.heavy_tail_spend,
        "heavy_tail_quantile": cfg.clv.heavy_tail_quantile,
        "time_unit_days": TIME_UNITS_DAYS[cfg.features.time_unit],
        "discount_rate": cfg.clv.discount_rate,
        "discount_step_days": cfg.clv.discount_step_days,
        "interval_level": cfg.clv.intervals.level,
        "interval_draws": cfg.clv.intervals.draws,
    }


def _attach_layers(
    cfg: DictConfig,
    settings: dict[str, object],
    model: CLVModel,
    orders: pd.DataFrame,
    split: Split,
    metrics: dict[str, float],
) -> dict[str, float]:
    """Fit the configured layers on inner windows before the calibration end (the holdout is never read).

    Returns ``metrics`` with the plain BTYD model's holdout figures renamed ``btyd.*``, so each run shows
    what the layers added; the caller re-scores the holdout with the layers attached.
    """
    windows = inner_windows(
        orders,
        split.calibration_end,
        list(cfg.clv.layers.inner_horizons_days),
        lambda features: CLVModel(**settings).fit(features),
    )
    if cfg.clv.layers.churn:
        model.churn_layer_ = fit_churn_layer(windows, seed=cfg.seed)
    if cfg.clv.layers.value:
        model.value_layer_ = fit_value_layer(windows)
    mlflow.set_tag("clv.layers", ",".join(k for k in ("churn", "value") if cfg.clv.layers[k]))
    btyd = {f"btyd.{k.removeprefix('holdout.')}": v for k, v in metrics.items() if k.startswith("holdout.")}
    return {k: v for k, v in metrics.items() if not k.startswith("holdout.")} | btyd


def _choose_family(
    cfg: DictConfig,
    settings: dict[str, object],
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    split: Split,
    full_history: pd.DataFrame | None,
) -> tuple[str, CLVModel, CLVModel, pd.DataFrame, dict[str, float]]:
    """Fit the configured family, or with ``clv.family=auto`` every family, keeping the best holdout score.

    Returns the family, its calibration fit, its scoring fit (refit on ``full_history`` when given), the
    holdout predictions and metrics. With ``auto``, a family whose calibration fit or refit fails is
    skipped (tag ``clv.skipped_families``); each candidate's holdout metrics are logged as
    ``family.<name>.<metric>``. Note the chosen family's holdout score is the best of several on the same
    holdout, so it is slightly optimistic.
    """
    auto = cfg.clv.family == "auto"
    families = CLV_FAMILIES if auto else (cfg.clv.family,)
    fitted, skipped = {}, {}
    for family in families:  # three families at most
        try:
            model = CLVModel(family=family, **settings).fit(calibration)
            scoring = model if full_history is None else CLVModel(family=family, **settings).fit(full_history)
        except ModelFitError as exc:
            if not auto:
                raise
            skipped[family] = str(exc)
            continue
        predictions = model.predict(calibration, split.holdout_days)
        scores = prefixed("holdout.", evaluation.evaluate_clv(predictions, holdout))
        fitted[family] = (model, scoring, predictions, scores)
    if skipped:
        mlflow.set_tag("clv.skipped_families", "; ".join(f"{f}: {m}" for f, m in skipped.items())[:5000])
        log.warning("clv=auto skipped %s", skipped)
    if not fitted:
        raise ModelFitError(f"clv=auto: no family could be fitted ({skipped})")
    best = max(fitted, key=lambda family: fitted[family][3].get(cfg.clv.primary_metric, -np.inf))
    mlflow.set_tag("clv.chosen_family", best)
    model, scoring, predictions, metrics = fitted[best]
    if len(fitted) > 1:
        for family, (*_, scores) in fitted.items():
            metrics = metrics | prefixed(f"family.{family}.", scores)
    return best, model, scoring, predictions, metrics


def _fit_diagnostics(cfg: DictConfig, model: CLVModel) -> dict[str, float]:
    """Which fallback the fit needed, and Gamma-Gamma's independence check (warned above a threshold)."""
    attempts = model.fit_attempts_
    mlflow.set_tags(
        {
            "clv.family": model.family,
            "clv.fallback": "none"
            if len(attempts) == 2
            else f"purchase penalizer {model.purchase_penalizer_used_}, "
            f"spend penalizer {model.spend_penalizer_used_}",
            "clv.fit_attempts": "; ".join(f"{part} {p}: {outcome}" for part, p, outcome in attempts)[:5000],
            "clv.spend_fallback": model.spend_fallback_ or "none",
        }
    )
    if model.spend_fallback_ is not None:
        log.warning("Gamma-Gamma: %s", model.spend_fallback_)
    correlation = model.spend_frequency_correlation_
    if abs(correlation) > cfg.clv.independence_threshold:
        log.warning(
            "Gamma-Gamma assumes spend is independent of frequency, but their correlation is %.3f "
            "(threshold %.2f): expected order values may be biased",
            correlation,
            cfg.clv.independence_threshold,
        )
        mlflow.set_tag("clv.independence_warning", f"corr {correlation:.3f}")
    return {
        "fit.purchase_penalizer_used": model.purchase_penalizer_used_,
        "fit.spend_penalizer_used": model.spend_penalizer_used_,
        "fit.attempts": float(len(attempts)),
        "fit.spend_mean_constrained": float(model.spend_fallback_ is not None),
        "fit.spend_frequency_correlation": correlation,
    }


def _anchor_metrics(cfg: DictConfig, split: Split, metrics: dict[str, float]) -> dict[str, float]:
    """The data's reference figures beside this run's, when they were measured on this run's split."""
    anchors = OmegaConf.to_container(cfg.data.anchors, resolve=True)
    measured_on = parse_day(anchors["calibration_end"], "data.anchors.calibration_end")
    if not anchors["figures"] or (measured_on is not None and measured_on != split.calibration_end):
        return {}
    table = evaluation.compare_with_anchors(metrics, anchors["figures"])
    tracking.log_table(table, "evaluation/anchors.csv")
    for name, row in table.iterrows():
        log.info(
            "anchor %s: %s %.3f vs anchor %.3f (%s is better) -> %s",
            name,
            row["metric"],
            row["project_value"],
            row["anchor_value"],
            row["better"],
            "beaten" if row["beaten"] else "NOT beaten",
        )
    return {f"anchor.{name}": row["anchor_value"] for name, row in table.iterrows()} | {
        f"anchor.{name}.beaten": float(row["beaten"]) for name, row in table.iterrows()
    }


def _log_clv_diagnostics(calibration: pd.DataFrame, holdout: pd.DataFrame, predictions: pd.DataFrame) -> None:
    by_frequency = evaluation.purchases_by_frequency(
        calibration["frequency"].to_numpy(),
        predictions["expected_purchases"].to_numpy(),
        holdout["purchases"].to_numpy(),
    )
    tracking.log_table(by_frequency, "evaluation/purchases_by_frequency.csv")
    tracking.log_figure(plots.purchases_by_frequency(by_frequency), "plots/purchases_by_frequency.png")
    tracking.log_figure(
        plots.churn_by_decile(predictions["churn_probability"].to_numpy(), evaluation.churned(holdout)),
        "plots/churn_by_decile.png",
    )
    curves = {
        "model": predictions["expected_revenue"].to_numpy(),
        "historic spend": calibration["total_spend"].to_numpy(),
    }
    tracking.log_figure(plots.gains_chart(curves, holdout["revenue"].to_numpy()), "plots/gains_chart.png")


def _log_tracking(model: CLVModel, orders: pd.DataFrame, split: Split) -> None:
    table = evaluation.cumulative_repeat_tracking(
        orders,
        split.calibration_end,
        split.holdout_end,
        lambda ages: expected_repeat_purchases(model.params_, ages),
    )
    tracking.log_table(table, "evaluation/cumulative_repeat_purchases.csv")
    figure = plots.cumulative_tracking(table, split.calibration_end)
    tracking.log_figure(figure, "plots/cumulative_repeat_purchases.png")


def _log_model_matrices(model: CLVModel, calibration: pd.DataFrame, split: Split) -> None:
    """P(alive) and expected holdout purchases over frequency x recency, for the oldest customers' age."""
    grid = evaluation.frequency_recency_grid(float(calibration["T_days"].max()))
    outputs = model.predict(grid, split.holdout_days)
    for column, title in (
        ("p_alive", "P(alive)"),
        ("expected_purchases", "Expected purchases in the holdout"),
    ):
        matrix = evaluation.grid_matrix(grid, outputs[column])
        tracking.log_table(matrix, f"evaluation/{column}_matrix.csv")
        tracking.log_figure(plots.matrix_heatmap(matrix, title, column), f"plots/{column}_matrix.png")


def _judge_clv_champion(
    cfg: DictConfig, version: str, split: Split, calibration: pd.DataFrame, holdout: pd.DataFrame
) -> registry.ChampionJudgement:
    """Re-score the champion's calibration fit on this run's holdout, if its fit has not seen it."""
    champion = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{version}").unwrap_python_model()
    champion_end = pd.Timestamp(champion.spec["calibration_end"])
    if champion_end > split.calibration_end:
        reason = (
            f"its calibration window ends {champion_end.date()}, after this run's "
            f"{split.calibration_end.date()}, so its fit may have seen this holdout"
        )
        return registry.ChampionJudgement(version, None, reason)
    judged = champion.evaluation_model().predict(calibration, split.holdout_days)
    scores = prefixed("holdout.", evaluation.evaluate_clv(judged, holdout))
    return registry.ChampionJudgement(
        version, scores.get(cfg.clv.primary_metric), "re-scored on this holdout", scores
    )
