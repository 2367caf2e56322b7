"""Training job: fit CLV and segment models, evaluate on the holdout, log to MLflow, register with a gate.

``train(cfg)`` is pure orchestration that tests call directly; ``main`` is the Hydra entry point and
returns ``cfg.optimized_metric`` so a sweeper can optimise it.

The registered CLV model is **refit on the full history** (``clv.refit_full_history``) because scoring
happens at the end of the data and the last months carry the most information about today's customers;
the holdout metrics judge the calibration-window fit of the same configuration, and that fit travels with
the model so a later run can re-score this version on its own holdout (see ``registry``).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value import evaluation, plots, registry, tracking
from customer_value.clv import CLVModel
from customer_value.data import DataReport
from customer_value.entrypoint import run_job
from customer_value.features import calibration_and_holdout, customer_features, resolve_split
from customer_value.jobs import load_orders, time_unit_days
from customer_value.pyfunc_models import clv_spec
from customer_value.schema import register_configs
from customer_value.segmentation import SEGMENT_FEATURES, SegmentModel, evaluation_space, quality_metrics

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run both training stages; returns every logged metric (CLV and segments) by name."""
    tracking.configure(cfg.tracking.uri)
    commit = tracking.git_commit()
    tags = {"mlflow.source.git.commit": commit, "git_commit": commit, "data.name": cfg.data.name}
    run_name = cfg.run_name
    metrics: dict[str, float] = {}
    with tracking.run(cfg.tracking.clv_experiment, cfg.tracking.artifact_root, run_name, tags):
        _log_config(cfg)
        orders, report = load_orders(cfg.data)
        _log_data_report(report)
        log.info(
            "data: %s orders of %s customers, %s to %s, dropped %s",
            f"{report.orders:,}",
            f"{report.customers:,}",
            report.first_date,
            report.last_date,
            report.dropped,
        )
        metrics |= train_clv(cfg, orders)
        log.info(
            "CLV holdout: churn AUC %.3f (recency baseline %.3f), Brier %.3f, top-decile capture %.3f "
            "(historic spend %.3f), revenue Spearman %.3f",
            *(
                metrics.get(k, float("nan"))
                for k in (
                    "holdout.churn_auc",
                    "baseline.churn_auc",
                    "holdout.churn_brier",
                    "holdout.top_decile_revenue_capture",
                    "baseline.top_decile_revenue_capture",
                    "holdout.revenue_spearman",
                )
            ),
        )
    with tracking.run(cfg.tracking.segments_experiment, cfg.tracking.artifact_root, run_name, tags):
        _log_config(cfg)
        _log_data_report(report)
        metrics |= train_segments(cfg, orders)
        log.info(
            "segments: silhouette %.3f, Davies-Bouldin %.3f, sizes %s",
            metrics.get("segments.silhouette", float("nan")),
            metrics.get("segments.davies_bouldin", float("nan")),
            [int(v) for k, v in sorted(metrics.items()) if k.startswith("segments.size.")],
        )
    return metrics


def _log_config(cfg: DictConfig) -> None:
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved_config.yaml")
    tracking.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))


def _log_data_report(report: DataReport) -> None:
    summary = report.as_dict()
    tracking.log_json(summary, "data/summary.json")
    mlflow.set_tags(
        {
            "data.content_hash": report.content_hash,
            "data.first_date": report.first_date,
            "data.last_date": report.last_date,
        }
    )
    tracking.log_metrics(
        {
            "data.rows_read": report.rows_read,
            "data.rows_used": report.rows_used,
            "data.orders": report.orders,
            "data.customers": report.customers,
            "data.merged_same_day": report.merged_same_day,
        }
        | {f"data.dropped.{reason}": count for reason, count in report.dropped.items()}
    )


def train_clv(cfg: DictConfig, orders: pd.DataFrame) -> dict[str, float]:
    """Calibration fit -> holdout metrics and baselines -> refit -> log and register the pyfunc model."""
    unit_days = time_unit_days(cfg.features.time_unit)
    split = resolve_split(orders, cfg.split.calibration_end, cfg.split.calibration_share)
    calibration, holdout = calibration_and_holdout(orders, split)
    settings = {
        "penalizer": cfg.clv.penalizer,
        "time_unit_days": unit_days,
        "discount_rate": cfg.clv.discount_rate,
        "discount_step_days": cfg.clv.discount_step_days,
    }
    model = CLVModel(**settings).fit(calibration)
    mlflow.log_params(
        {
            "time_unit": cfg.features.time_unit,
            "split.resolved_calibration_end": str(split.calibration_end.date()),
            "split.holdout_days": split.holdout_days,
        }
    )
    metrics = {f"fitted.{k}": v for k, v in model.params_.fitted().items()}
    metrics["split.calibration_customers"] = float(len(calibration))

    predictions = model.predict(calibration, split.holdout_days)
    metrics |= _prefixed("holdout.", evaluation.evaluate_clv(predictions, holdout))
    metrics |= _prefixed("baseline.", evaluation.evaluate_baseline(calibration, holdout, split.holdout_days))
    by_frequency = evaluation.purchases_by_frequency(
        calibration["frequency"].to_numpy(),
        predictions["expected_purchases"].to_numpy(),
        holdout["purchases"].to_numpy(),
    )
    tracking.log_table(by_frequency, "evaluation/purchases_by_frequency.csv")
    tracking.log_figure(plots.purchases_by_frequency(by_frequency), "plots/purchases_by_frequency.png")
    churned = (holdout["purchases"].to_numpy() == 0).astype(float)
    tracking.log_figure(
        plots.churn_by_decile(predictions["churn_probability"].to_numpy(), churned),
        "plots/churn_by_decile.png",
    )

    scoring_model = model
    if cfg.clv.refit_full_history:
        scoring_model = CLVModel(**settings).fit(customer_features(orders, split.holdout_end))
        metrics |= {f"refit.{k}": v for k, v in scoring_model.params_.fitted().items()}
    tracking.log_metrics(metrics)

    trained_through = split.holdout_end if cfg.clv.refit_full_history else split.calibration_end
    spec = clv_spec(
        model,
        scoring_model,
        horizon_days=cfg.clv.horizon_days,
        calibration_end=str(split.calibration_end.date()),
        trained_through=str(trained_through.date()),
    )
    info = registry.log_clv_model(spec, calibration)
    if cfg.tracking.register:

        def champion_score(champion: Any) -> float:
            loaded = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{champion.version}")
            judged = loaded.unwrap_python_model().evaluation_model().predict(calibration, split.holdout_days)
            return _prefixed("holdout.", evaluation.evaluate_clv(judged, holdout))[cfg.clv.primary_metric]

        _register(
            cfg, info.model_uri, cfg.tracking.clv_model, cfg.clv.primary_metric, metrics, champion_score
        )
    return metrics


def train_segments(cfg: DictConfig, orders: pd.DataFrame) -> dict[str, float]:
    """Fit segments on every customer as of the last order; log quality, profile and plots; register."""
    features = customer_features(orders, orders["date"].max())
    model = SegmentModel(n_clusters=cfg.segmentation.n_clusters, seed=cfg.seed).fit(features)
    segments = model.predict(features)["segment"].to_numpy()
    space = evaluation_space(features)

    def silhouette_like(labels: Any) -> dict[str, float]:
        return _prefixed(
            "segments.", quality_metrics(space, labels, cfg.seed, cfg.segmentation.silhouette_sample)
        )

    metrics = silhouette_like(segments)
    sizes = model.profile_["customers"]
    metrics |= {f"segments.size.{segment}": float(size) for segment, size in sizes.items()}
    tracking.log_metrics(metrics)
    mlflow.set_tags({f"segment.{s}": name for s, name in model.names_.items()})
    tracking.log_table(model.profile_, "segments/profile.csv")
    tracking.log_figure(plots.segment_sizes(model.profile_), "plots/segment_sizes.png")
    tracking.log_figure(
        plots.segment_scatter(features, segments, model.names_, cfg.seed), "plots/segments.png"
    )

    info = registry.log_segments_model(model, features)
    if cfg.tracking.register:

        def champion_score(champion: Any) -> float:
            loaded = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.segments_model}/{champion.version}")
            labels = loaded.predict(features[SEGMENT_FEATURES].reset_index(drop=True))["segment"].to_numpy()
            return silhouette_like(labels)[cfg.segmentation.primary_metric]

        _register(
            cfg,
            info.model_uri,
            cfg.tracking.segments_model,
            cfg.segmentation.primary_metric,
            metrics,
            champion_score,
        )
    return metrics


def _register(
    cfg: DictConfig, model_uri: str, name: str, metric: str, metrics: dict[str, float], champion_score: Any
) -> registry.GateDecision:
    champion = registry.champion_version(name, cfg.tracking.alias)
    old = None if champion is None else float(champion_score(champion))
    run = mlflow.active_run()
    decision = registry.register_with_gate(
        model_uri,
        name,
        alias=cfg.tracking.alias,
        metric=metric,
        new_score=metrics[metric],
        champion=champion,
        champion_score=old,
        higher_is_better=True,
        tags={"run_id": run.info.run_id, "data.name": cfg.data.name},
    )
    log.info(
        "%s version %s -> %s (%s %.4f vs champion %s)",
        name,
        decision.version,
        decision.alias,
        metric,
        decision.new_score,
        "none" if old is None else f"v{decision.champion_version} {old:.4f}",
    )
    mlflow.set_tags(
        {f"registered.{k}": v for k, v in decision.as_tags().items()}
        | {"registered.version": decision.version}
    )
    return decision


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_job(train, cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    register_configs()
    main()
