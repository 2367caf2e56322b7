"""CLV stage of training: calibration fit, holdout metrics and baselines, diagnostics, refit, logged model.

The registered CLV model is **refit on the full history** (``clv.refit_full_history``) because scoring
happens at the end of the data and the last months carry the most information about today's customers;
the holdout metrics judge the calibration-window fit of the same configuration, and that fit travels with
the model so a later run can re-score this version on its own holdout (see ``registry``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value.data.customers import load_customers
from customer_value.data.features import (
    FEATURE_COLUMNS,
    Split,
    calibration_and_holdout,
    customer_features,
    resolve_split,
)
from customer_value.data.loading import DataReport
from customer_value.evaluation import holdout_metrics, plots
from customer_value.evaluation.backtest import backtest, plan_origins, summarise
from customer_value.evaluation.drift import REFERENCE_ARTIFACT, reference_distribution
from customer_value.evaluation.fairness import prediction_audit
from customer_value.jobs.churn_stage import (
    choose_churn,
    churn_evidence,
    record_churn_selection,
)
from customer_value.jobs.family_choice import PurchaseCounts, choose_family
from customer_value.jobs.stage import (
    Candidate,
    card_facts,
    prefixed,
    require_metrics,
    sample_customer_orders,
    sample_positions,
    version_tags,
)
from customer_value.models.clv.btyd import model_inputs
from customer_value.models.clv.covariates import encode, raw_columns
from customer_value.models.clv.inference import (
    covariate_table,
    likelihood_ratio_test,
    log_likelihood,
    parameter_table,
)
from customer_value.models.clv.layer_selection import select_layers
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.predict import expected_repeat_purchases
from customer_value.schema import TIME_UNITS_DAYS, clv_metric_for, parse_day
from customer_value.tracking import progress, registry, run_logging
from customer_value.tracking.pyfunc import clv_spec, spec_covariate_columns, spec_has_amounts

log = logging.getLogger(__name__)

NO_AMOUNTS_NOTE = (
    "Purchase-only model: the log had no amounts (data.columns.amount=null), so there is no spend model "
    "and no value outputs (expected_order_value, expected_revenue, clv); churn, P(alive), expected "
    "purchases and the next purchase date are predicted."
)


def train_clv(
    cfg: DictConfig, orders: pd.DataFrame, report: DataReport, base: PurchaseCounts | None = None
) -> tuple[dict[str, float], Candidate, pd.DataFrame, pd.DataFrame]:
    """Calibration fit -> holdout metrics and baselines -> refit -> log the pyfunc model.

    ``base`` (``engine=spark``): the whole base's purchase patterns as of a day, when ``orders`` are a
    sample of it; the purchase model's calibration and full-history fits use them (see ``spark.training``).
    Also returns the scoring model's outputs for every customer as of the last order (``clv.horizon_days``),
    which the segments stage profiles and may cluster on, and their customer table (it need not build it
    again from the orders).
    """
    split = resolve_split(orders, cfg.split.calibration_end, cfg.split.calibration_share)
    with progress.step("clv.windows", "clv: calibration and holdout tables"):
        calibration, holdout = calibration_and_holdout(orders, split)
    has_amounts = report.has_amounts
    primary = gate_metric(cfg, has_amounts)
    covariates = covariate_columns(cfg)
    customers, protected = load_customer_file(cfg, covariates)
    settings = model_settings(cfg, has_amounts, customers)
    mlflow.log_params(
        {
            "time_unit": cfg.features.time_unit,
            "split.resolved_calibration_end": str(split.calibration_end.date()),
            "split.holdout_days": split.holdout_days,
        }
    )
    full_history = customer_features(orders, split.holdout_end) if cfg.clv.refit_full_history else None
    sample = evaluation_orders(cfg, orders, report)
    with progress.step("clv.fit", "clv: purchase and spend models (calibration and full history)"):
        # Its predictions are not kept: the evidence step predicts again with the churn selection attached
        # (held until then they were 95 MB at 1M customers through the selection's peak).
        family, model, scoring_model, _, metrics = choose_family(
            cfg, settings, calibration, holdout, split, full_history, primary, sample, base
        )
    settings["family"] = family
    # The whole history's churn selection runs in a thread beside the calibration window's layers, churn
    # selection, evidence, intervals, backtest and plots: at 1M customers its ~17 s hide behind them, where
    # started after the evidence (as until December 2026) the train waited ~7 s for it on one busy core.
    # It needs only the full-history fit. The same selection, logged in the main thread once it is done.
    # The holdout's intervals take the pool's second thread once the evidence is in (see below).
    # ``stop`` is set when this block ends, failed or not: the whole history's selection ends at its next
    # window; the pool still waits for a window or the intervals under way (seconds at 1M) before the
    # failure goes on.
    stop = threading.Event()
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="clv-beside") as beside,
        contextlib.ExitStack() as on_exit,  # left first: the stop is set before the pool waits
    ):
        on_exit.callback(stop.set)
        whole_history = None
        if cfg.clv.refit_full_history and cfg.clv.churn.select:
            end = split.holdout_end
            whole_history = beside.submit(
                choose_churn, cfg, settings, scoring_model, orders, end, full_history, True, stop
            )
        if cfg.clv.layers.value and not has_amounts:
            mlflow.set_tag("clv.value_layer", "off: the log has no amounts")
        if cfg.clv.layers.churn or (cfg.clv.layers.value and has_amounts):
            with progress.step("clv.layers", "clv: learned layers (inner windows, then their check)"):
                metrics = _attach_layers(cfg, settings, model, sample, split, calibration, metrics)
        calibrated_baselines = {}
        if cfg.clv.churn.select:
            with progress.step("clv.churn_selection", "clv: churn selection per horizon band (calibration)"):
                chosen = choose_churn(cfg, settings, model, orders, split.calibration_end, calibration)
                selection, calibrated_baselines = record_churn_selection(model, *chosen)
            metrics |= selection
        with progress.step("clv.holdout", "clv: holdout metrics and the evidence against the baselines"):
            predictions = model.predict(calibration, split.holdout_days)
            metrics |= prefixed("holdout.", holdout_metrics.evaluate_clv(predictions, holdout))
            evidence, blocked = churn_evidence(
                cfg, model, predictions, calibration, holdout, split.holdout_days, calibrated_baselines
            )
            metrics |= evidence
        # A customer's interval depends on its own row only, so a sample's intervals are the full run's.
        # Computed beside the diagnostics, backtest and plots (the whole history's selection is done by
        # now at 1M customers): they read the model, nothing of theirs changes it.
        rows = sample_positions(len(calibration), cfg.clv.intervals.evaluation_sample, cfg.seed)
        durations: dict[str, float] = {}
        customers_drawn, their_holdout = calibration.iloc[rows], holdout.iloc[rows]
        intervals = beside.submit(
            _holdout_intervals, model, customers_drawn, their_holdout, split.holdout_days, durations
        )
        metrics["holdout.interval_customers"] = float(len(rows))
        metrics |= {f"fitted.{k}": v for k, v in model.params_.fitted().items()}
        with progress.step("clv.diagnostics", "clv: inference and fit diagnostics"):
            metrics |= _log_inference(model)
            if covariates is not None:
                metrics |= _covariate_evidence(cfg, settings, model, calibration, holdout, split)
            metrics |= _fit_diagnostics(cfg, model)
        metrics["split.calibration_customers"] = float(len(calibration))
        if cfg.clv.backtest.folds > 1:
            with progress.step("clv.backtest", f"clv: backtest ({cfg.clv.backtest.folds} folds)"):
                metrics |= _backtest(cfg, settings, sample, split)
        metrics |= prefixed(
            "baseline.", holdout_metrics.evaluate_baseline(calibration, holdout, split.holdout_days)
        )
        with progress.step("clv.plots", "clv: diagnostic plots and tables"):
            _log_clv_diagnostics(calibration, holdout, predictions)  # value plots only with amounts
            _log_tracking(model, orders, split, calibration)
            _log_model_matrices(model, calibration, split)
        metrics |= intervals.result()
        mlflow.log_metrics(durations)

        if cfg.clv.refit_full_history:
            scoring_model.churn_layer_ = model.churn_layer_
            if whole_history is not None:  # the procedure the holdout judged above, on the whole history
                label = "clv: churn selection on the whole history (wait for it, log it)"
                with progress.step("clv.churn_selection_scoring", label):
                    chosen = whole_history.result()
                    metrics |= record_churn_selection(scoring_model, *chosen, scoring=True)[0]
            scoring_model.value_layer_ = model.value_layer_
            metrics |= {f"refit.{k}": v for k, v in scoring_model.params_.fitted().items()}
    del predictions, sample  # judged and logged: not held through the scoring of today's base (1M: 130 MB)
    metrics |= _anchor_metrics(cfg, split, metrics)
    run_logging.log_metrics(metrics)
    require_metrics(metrics, primary, "clv.primary_metric")
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
    example = (
        calibration
        if covariates is None
        else model.with_covariate_columns(calibration, raw_columns(model.params_.covariates))
    )
    info = registry.log_clv_model(spec, example)

    def judge(version: str) -> registry.ChampionJudgement:
        return _judge_clv_champion(cfg, version, split, calibration, holdout, primary, customers)

    window = {"calibration_end": spec["calibration_end"], "trained_through": spec["trained_through"]}

    candidate = Candidate(
        run_id=mlflow.active_run().info.run_id,
        model_uri=info.model_uri,
        name=cfg.tracking.clv_model,
        metric=primary,
        score=metrics[primary],
        judge=judge,
        tags=version_tags(cfg, report) | window,
        card=card_facts(
            cfg,
            report,
            {k: v for k, v in metrics.items() if k.startswith("holdout.")},
            ["clv", "features", "split"],
            window | {"data.calibration_customers": f"{len(calibration):,}"},
            _card_notes(scoring_model, has_amounts, blocked),
        ),
        blocked=blocked,
    )
    today = full_history if full_history is not None else customer_features(orders, split.holdout_end)
    # What monitoring compares a later scoring base with (evaluation.drift): the base the registered model
    # was fit to (the calibration base when it is the calibration fit, clv.refit_full_history=false).
    fitted_base = today if cfg.clv.refit_full_history else calibration
    run_logging.log_json(reference_distribution(fitted_base, FEATURE_COLUMNS), REFERENCE_ARTIFACT)
    outputs = scoring_model.predict(today, cfg.clv.horizon_days)
    if protected:
        _log_fairness_audit(outputs, customers[protected])
    return metrics, candidate, outputs, today


def evaluation_orders(cfg: DictConfig, orders: pd.DataFrame, report: DataReport) -> pd.DataFrame:
    """The orders the family choice, the layers and the backtest fit and judge on: a seeded sample of
    ``clv.evaluation_sample`` customers on a larger base (logged), else all. Their figures are estimates
    with that many customers' noise, which their bootstrap intervals carry. The churn selection keeps the
    whole log: its window purchase models must be fitted like the shipped one (fitted on the sample they
    miscalibrated it: 1M customers, holdout Brier 0.167 vs 0.158); it compares its candidates on a sample
    of its own (``churn_selection.WINDOW_CUSTOMERS``)."""
    sample = sample_customer_orders(orders, cfg.clv.evaluation_sample, cfg.seed)
    customers = sample["customer_id"].nunique()
    mlflow.log_param("clv.evaluation_customers", customers)
    if sample is not orders:
        note = (
            f"seeded sample of {customers:,} of {report.customers:,} customers (clv.evaluation_sample): "
            "family choice, layers, gate bootstrap and backtest"
        )
        mlflow.set_tag("clv.evaluation_sample", note)
        log.info("clv: evaluation on a %s", note)
    return sample


def _card_notes(model: CLVModel, has_amounts: bool, blocked: str | None) -> tuple[str, ...]:
    notes = [] if has_amounts else [NO_AMOUNTS_NOTE]
    if model.churn_selector_ is not None:
        notes.append(
            "Churn probability by horizon band (the band nearest the asked horizon serves): "
            + model.churn_selector_.describe()
        )
    if blocked is not None:
        notes.append(f"Not eligible for champion: {blocked}.")
    return tuple(notes)


def covariate_columns(cfg: DictConfig) -> dict[str, list[str]] | None:
    """``clv.covariates`` as {"purchase": [...], "dropout": [...]}, or None when both lists are empty."""
    wanted = {k: list(cfg.clv.covariates[k]) for k in ("purchase", "dropout")}
    return wanted if any(wanted.values()) else None


def load_customer_file(
    cfg: DictConfig, covariates: dict[str, list[str]] | None
) -> tuple[pd.DataFrame | None, list[str]]:
    """The customer file's covariate columns (indexed by customer id) and the protected columns found in it
    (read for the fairness audit only); (None, []) without ``data.customers.path``."""
    if cfg.data.customers.path is None:
        return None, []
    columns = (
        [] if covariates is None else list(dict.fromkeys([*covariates["purchase"], *covariates["dropout"]]))
    )
    table, protected = load_customers(
        cfg.data.customers.path, cfg.data.customers.id, columns, list(cfg.segmentation.attributes.protected)
    )
    mlflow.log_param("data.customers.rows", len(table))
    return table, protected


def _holdout_intervals(
    model: CLVModel,
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    days: float,
    durations: dict[str, float],
) -> dict[str, float]:
    """The prediction intervals' coverage and widths on (a sample of) the holdout's customers; no logging
    but the progress lines (run in a thread: its duration goes to ``durations``)."""
    with progress.step("clv.intervals", "clv: prediction intervals on the holdout", durations):
        sampled = model.predict(calibration, days, intervals=True)
        return prefixed("holdout.", holdout_metrics.interval_metrics(sampled, holdout))


def _log_inference(model: CLVModel) -> dict[str, float]:
    """Every parameter with its standard error and 95 % interval (evaluation/parameters.csv, metrics)."""
    table = parameter_table(model.params_)
    run_logging.log_table(table, "evaluation/parameters.csv")
    metrics = {}
    for name, row in table.iterrows():
        prefix = "fit." if row["model"] == "covariate" else "fitted."
        if row["model"] == "covariate":
            metrics[f"{prefix}{name}"] = row["estimate"]
        metrics |= {f"{prefix}{name}.{k}": row[k] for k in ("se", "ci_low", "ci_high")}
    return metrics


def _covariate_evidence(
    cfg: DictConfig,
    settings: dict[str, object],
    model: CLVModel,
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    split: Split,
) -> dict[str, float]:
    """The coefficients' table and plot, the likelihood-ratio test against the same family without
    covariates (fitted on the same calibration window) and that model's holdout metrics beside this one's."""
    params = model.params_
    table = covariate_table(params)
    run_logging.log_table(table, "evaluation/covariates.csv")
    run_logging.log_figure(lambda: plots.covariate_coefficients(table), "plots/covariates.png")
    plain = CLVModel(**(settings | {"family": model.family, "covariates": None})).fit(calibration)
    joined = model.with_covariate_columns(calibration, raw_columns(params.covariates))
    inputs = model_inputs(joined, params.time_unit_days, spend=False, covariates=params.covariates)
    test = likelihood_ratio_test(
        log_likelihood(params, inputs), log_likelihood(plain.params_, inputs), len(table)
    )
    log.info(
        "covariates: likelihood ratio %.2f on %d degrees of freedom, p = %.3g; %s",
        test["lr_statistic"],
        len(table),
        test["lr_p_value"],
        ", ".join(
            f"gamma_{row.set}.{row.column} {row.estimate:+.3f} ({row.ci_low:+.3f}..{row.ci_high:+.3f})"
            for row in table.itertuples()
        ),
    )
    scores = holdout_metrics.evaluate_clv(plain.predict(calibration, split.holdout_days), holdout)
    # What the customer file did not say about the training base (filled in by the design's rule).
    absent = int((~calibration.index.isin(model.customers.index)).sum())
    filled = {"customers_not_in_file": float(absent)}
    filled |= {
        f"missing.{column}": float(n) for column, n in encode(params.covariates, joined)[1].missing.items()
    }
    log.info(
        "covariates: %s of %s calibration customers are not in the customer file",
        f"{absent:,}",
        f"{len(calibration):,}",
    )
    return prefixed("covariates.", test | filled) | prefixed("without_covariates.holdout.", scores)


def _log_fairness_audit(outputs: pd.DataFrame, groups: pd.DataFrame) -> None:
    """Predicted CLV and churn by protected group (aggregates only), when the customer file has them."""
    columns = [c for c in ("clv", "churn_probability") if c in outputs.columns]
    audit = prediction_audit(outputs, groups, columns)
    run_logging.log_table(audit, "evaluation/fairness_audit.csv")
    mlflow.set_tag(
        "clv.fairness_audit", f"{len(groups.columns)} protected attribute(s): {list(groups.columns)}"
    )


def gate_metric(cfg: DictConfig, has_amounts: bool) -> str:
    """``clv.primary_metric``, or on a log without amounts a purchase metric instead of a revenue one (the
    substitution is tagged, so the gate and a reviewer read the same metric)."""
    metric = clv_metric_for(cfg.clv.primary_metric, has_amounts)
    if metric != cfg.clv.primary_metric:
        reason = f"{cfg.clv.primary_metric} -> {metric} (the log has no amounts)"
        mlflow.set_tag("clv.primary_metric_substituted", reason)
        log.info("clv.primary_metric: %s", reason)
    return metric


def model_settings(
    cfg: DictConfig, has_amounts: bool = True, customers: pd.DataFrame | None = None
) -> dict[str, object]:
    """CLVModel's keyword arguments (all but the family) from a train config: one place maps the keys.
    A log without amounts gets the purchase model only; ``customers``: the customer file (covariates)."""
    return {
        "covariates": covariate_columns(cfg),
        "customers": customers,
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
        "spend_model": has_amounts,
    }


def _attach_layers(
    cfg: DictConfig,
    settings: dict[str, object],
    model: CLVModel,
    orders: pd.DataFrame,
    split: Split,
    calibration: pd.DataFrame,
    metrics: dict[str, float],
) -> dict[str, float]:
    """Fit the configured layers on inner windows before the calibration end, keeping only those that pass
    their check (see ``layer_selection``; the holdout is never read), and log every decision.

    Returns ``metrics`` with the plain BTYD model's holdout figures renamed ``btyd.*``, so each run shows
    what the layers added, and the check's figures as ``layers.check.*``; the caller re-scores the holdout
    with the kept layers attached.
    """
    # No revenue to learn from without amounts: the value layer is not wanted then.
    wanted = tuple(
        name
        for name in ("churn", "value")
        if cfg.clv.layers[name] and (name == "churn" or bool(settings["spend_model"]))
    )
    selection = select_layers(
        orders,
        split.calibration_end,
        list(cfg.clv.layers.inner_horizons_days),
        lambda features: CLVModel(**settings, covariance=False).fit(features),  # point predictions only
        wanted,
        (  # a fresh model carries no layer; one discount step is enough for revenue
            calibration,
            lambda days: CLVModel.from_params(model.params_, 0.0, days, customers=model.customers).predict(
                calibration, days
            ),
        ),
        seed=cfg.seed,
        check=cfg.clv.layers.check,
    )
    mlflow.log_param("clv.layers.inner_horizons_used", str(selection.horizons_days))
    tags = {"clv.layers.inner_horizons": selection.horizons_reason[:5000]}
    if selection.skipped is not None:
        tags["clv.layers.skipped"] = selection.skipped[:5000]
        log.warning("clv.layers step aside, the model is the plain purchase model: %s", selection.skipped)
    for name, decision in selection.decisions.items():
        tags[f"clv.layers.{name}"] = decision.tag()[:5000]
        (log.info if decision.kept else log.warning)("clv.layers.%s %s", name, decision.tag())
        metrics = metrics | {f"layers.check.{name}.{k}": v for k, v in decision.check.items()}
    if selection.check_horizon_days is not None:
        metrics["layers.check.horizon_days"] = selection.check_horizon_days
    model.churn_layer_, model.value_layer_ = selection.churn, selection.value
    kept = [name for name in wanted if getattr(model, f"{name}_layer_") is not None]
    tags["clv.layers"] = ",".join(kept) or "none"
    mlflow.set_tags(tags)
    btyd = {f"btyd.{k.removeprefix('holdout.')}": v for k, v in metrics.items() if k.startswith("holdout.")}
    return {k: v for k, v in metrics.items() if not k.startswith("holdout.")} | btyd


def _backtest(
    cfg: DictConfig, settings: dict[str, object], orders: pd.DataFrame, split: Split
) -> dict[str, float]:
    """The purchase model's rolling-origin backtest, its folds fitted to the history (see ``plan_origins``).

    The origins used are logged (``clv.backtest.origins_used``) and tagged ``clv.backtest`` with why when
    they are not the configured ones; a backtest that cannot run is skipped with a warning, never fatal.
    """
    origins, adapted = plan_origins(
        split, cfg.clv.backtest.folds, cfg.clv.backtest.step_days, orders["date"].min()
    )

    def fit(features: pd.DataFrame) -> CLVModel:  # point predictions only: no covariance
        return CLVModel(**settings, covariance=False).fit(features)

    folds, failed = backtest(orders, origins, fit)
    notes = [adapted] if adapted else []
    notes += [f"fold {origin} left out ({reason})" for origin, reason in failed.items()]
    mlflow.log_param("clv.backtest.origins_used", str(list(folds.index)))
    if notes or folds.empty:
        tag = ("skipped: " if folds.empty else f"{len(folds)} folds: ") + "; ".join(notes)
        mlflow.set_tag("clv.backtest", tag[:5000])
        log.warning("clv.backtest %s", tag)
    if folds.empty:
        return {}
    run_logging.log_table(folds, "evaluation/backtest_folds.csv")
    return prefixed("backtest.", summarise(folds))


def _fit_diagnostics(cfg: DictConfig, model: CLVModel) -> dict[str, float]:
    """Which fallback the fit needed, and Gamma-Gamma's independence check (warned above a threshold)."""
    attempts = model.fit_attempts_
    mlflow.set_tags(
        {
            "clv.family": model.family,
            "clv.fallback": "none"
            if len(attempts) == (2 if model.has_spend else 1)
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
    metrics = {
        "fit.purchase_penalizer_used": model.purchase_penalizer_used_,
        "fit.attempts": float(len(attempts)),
        "fit.spend_mean_constrained": float(model.spend_fallback_ is not None),
    }
    if model.has_spend:
        metrics["fit.spend_penalizer_used"] = model.spend_penalizer_used_
        metrics["fit.spend_frequency_correlation"] = correlation
    return metrics


def _anchor_metrics(cfg: DictConfig, split: Split, metrics: dict[str, float]) -> dict[str, float]:
    """The data's reference figures beside this run's, when they were measured on this run's split."""
    anchors = OmegaConf.to_container(cfg.data.anchors, resolve=True)
    measured_on = parse_day(anchors["calibration_end"], "data.anchors.calibration_end")
    if not anchors["figures"] or (measured_on is not None and measured_on != split.calibration_end):
        return {}
    table = holdout_metrics.compare_with_anchors(metrics, anchors["figures"])
    run_logging.log_table(table, "evaluation/anchors.csv")
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
    by_frequency = holdout_metrics.purchases_by_frequency(
        calibration["frequency"].to_numpy(),
        predictions["expected_purchases"].to_numpy(),
        holdout["purchases"].to_numpy(),
    )
    run_logging.log_table(by_frequency, "evaluation/purchases_by_frequency.csv")
    run_logging.log_figure(
        lambda: plots.purchases_by_frequency(by_frequency), "plots/purchases_by_frequency.png"
    )
    run_logging.log_figure(
        lambda: plots.churn_by_decile(
            predictions["churn_probability"].to_numpy(), holdout_metrics.churned(holdout)
        ),
        "plots/churn_by_decile.png",
    )
    if "expected_revenue" not in predictions.columns:  # a log without amounts: no gains chart
        return
    curves = {
        "model": predictions["expected_revenue"].to_numpy(),
        "historic spend": calibration["total_spend"].to_numpy(),
    }
    run_logging.log_figure(
        lambda: plots.gains_chart(curves, holdout["revenue"].to_numpy()), "plots/gains_chart.png"
    )


def _log_tracking(model: CLVModel, orders: pd.DataFrame, split: Split, calibration: pd.DataFrame) -> None:
    design = None
    if model.params_.covariates is not None:  # the curve averages the calibration customers' own curves
        joined = model.with_covariate_columns(calibration, raw_columns(model.params_.covariates))
        design = model_inputs(
            joined, model.time_unit_days, spend=False, covariates=model.params_.covariates
        ).design
    table = holdout_metrics.cumulative_repeat_tracking(
        orders,
        split.calibration_end,
        split.holdout_end,
        lambda ages: expected_repeat_purchases(model.params_, ages, design),
    )
    run_logging.log_table(table, "evaluation/cumulative_repeat_purchases.csv")
    run_logging.log_figure(
        lambda: plots.cumulative_tracking(table, split.calibration_end),
        "plots/cumulative_repeat_purchases.png",
    )


def _log_model_matrices(model: CLVModel, calibration: pd.DataFrame, split: Split) -> None:
    """P(alive) and expected holdout purchases over frequency x recency, for the oldest customers' age."""
    grid = holdout_metrics.frequency_recency_grid(float(calibration["T_days"].max()))
    outputs = model.predict(grid, split.holdout_days)
    for column, title in (
        ("p_alive", "P(alive)"),
        ("expected_purchases", "Expected purchases in the holdout"),
    ):
        matrix = holdout_metrics.grid_matrix(grid, outputs[column])
        run_logging.log_table(matrix, f"evaluation/{column}_matrix.csv")
        run_logging.log_figure(
            lambda: plots.matrix_heatmap(matrix, title, column),  # noqa: B023 (drawn before the next pass)
            f"plots/{column}_matrix.png",
        )


def _judge_clv_champion(
    cfg: DictConfig,
    version: str,
    split: Split,
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    metric: str,
    customers: pd.DataFrame | None = None,
) -> registry.ChampionJudgement:
    """Re-score the champion's calibration fit on this run's holdout, if its fit has not seen it and it can
    be judged on ``metric`` (a champion with a spend model needs amounts this run may not have, and a
    purchase-only champion has no revenue metrics)."""
    champion = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{version}").unwrap_python_model()
    champion_end = pd.Timestamp(champion.spec["calibration_end"])
    if champion_end > split.calibration_end:
        reason = (
            f"its calibration window ends {champion_end.date()}, after this run's "
            f"{split.calibration_end.date()}, so its fit may have seen this holdout"
        )
        return registry.ChampionJudgement(version, None, reason)
    champion_amounts = spec_has_amounts(champion.spec)
    if champion_amounts and "monetary_value" not in calibration.columns:
        reason = "it was trained on a log with amounts and needs monetary inputs this run's log has not"
        return registry.ChampionJudgement(version, None, reason)
    needed = spec_covariate_columns(champion.spec)
    absent = [c for c in needed if customers is None or c not in customers.columns]
    if absent:
        reason = f"it takes covariate column(s) {absent} that this run's customer file does not give"
        return registry.ChampionJudgement(version, None, reason)
    judged = champion.evaluation_model(customers).predict(calibration, split.holdout_days)
    scores = prefixed("holdout.", holdout_metrics.evaluate_clv(judged, holdout))
    if metric not in scores:
        kind = "" if champion_amounts else " (a purchase-only model)"
        reason = f"it has no {metric} on this holdout{kind}"
        return registry.ChampionJudgement(version, None, reason, scores)
    return registry.ChampionJudgement(version, scores[metric], "re-scored on this holdout", scores)
