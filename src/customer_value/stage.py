"""What both training stages share: the candidate handed to registration, and run-logging helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from omegaconf import DictConfig, OmegaConf

from customer_value import registry, tracking
from customer_value.data import DataReport
from customer_value.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A logged model waiting for registration, with what the gate needs to judge it."""

    run_id: str
    model_uri: str
    name: str
    metric: str
    score: float
    judge: Callable[[str], registry.ChampionJudgement]  # champion version -> its judgement
    tags: dict[str, str]


def version_tags(cfg: DictConfig, report: DataReport) -> dict[str, str]:
    return {
        "run_id": mlflow.active_run().info.run_id,
        "data.name": cfg.data.name,
        "data.content_hash": report.content_hash,
        "data.last_date": report.last_date,
    }


def require_metrics(metrics: dict[str, float], metric: str, key: str) -> None:
    if metric not in metrics:
        raise UserError(
            f"{key}={metric} could not be computed on this data (e.g. nobody churned, revenue is constant); "
            "choose another metric"
        )


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}


def log_config(cfg: DictConfig) -> None:
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved_config.yaml")
    tracking.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))


def log_data_report(report: DataReport) -> None:
    tracking.log_json(report.as_dict(), "data/summary.json")
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
    log.info(
        "data: %s orders of %s customers, %s to %s, dropped %s",
        f"{report.orders:,}",
        f"{report.customers:,}",
        report.first_date,
        report.last_date,
        report.dropped,
    )
