"""What both training stages share: the candidate handed to registration, and run-logging helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value.data.loading import DataReport
from customer_value.errors import UserError
from customer_value.tracking import registry, run_logging
from customer_value.tracking.model_card import CardFacts

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
    card: CardFacts | None = None
    blocked: str | None = None  # why this model may not take the alias (it loses to a baseline), or None


def version_tags(cfg: DictConfig, report: DataReport) -> dict[str, str]:
    return {
        "run_id": mlflow.active_run().info.run_id,
        "data.name": cfg.data.name,
        "data.content_hash": report.content_hash,
        "data.last_date": report.last_date,
        "data.has_amounts": str(report.has_amounts).lower(),
    }


def card_facts(
    cfg: DictConfig,
    report: DataReport,
    metrics: dict[str, float],
    config_sections: list[str],
    window: dict[str, str],
    notes: tuple[str, ...] = (),
) -> CardFacts:
    """Model-card facts of the active run: ``window`` names the dates this model saw."""
    data = {"data.name": cfg.data.name, "data.source": report.source}
    data["data.has_amounts"] = str(report.has_amounts).lower()
    data |= {"data.first_date": report.first_date, "data.last_date": report.last_date, **window}
    data |= {
        f"data.{key}": f"{value:,}"
        for key, value in {
            "rows_read": report.rows_read,
            "rows_used": report.rows_used,
            "orders": report.orders,
            "customers": report.customers,
        }.items()
    }
    return CardFacts(
        run_id=mlflow.active_run().info.run_id,
        commit=run_logging.git_state()["mlflow.source.git.commit"],
        data=data,
        metrics=metrics,
        config={section: OmegaConf.to_container(cfg[section], resolve=True) for section in config_sections},
        notes=notes,
    )


def require_metrics(metrics: dict[str, float], metric: str, key: str) -> None:
    if metric not in metrics:
        raise UserError(
            f"{key}={metric} could not be computed on this data (e.g. nobody churned, revenue is constant); "
            "choose another metric"
        )


def sample_positions(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random sample of ``size`` rows (all rows when there are fewer): what a
    large base's evaluation-only work runs on."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def sample_customer_orders(orders: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """The orders of a seeded sample of ``size`` customers (``orders`` itself when the base is no larger),
    plus a customer with an order on the log's first day and one on its last, so every window planned
    from the log's dates is the one the whole base gives (as ``spark.training.sample_orders`` does).
    ``orders`` as ``loading`` returns them: categorical ids, sorted by customer then date."""
    ids = orders["customer_id"].cat
    codes = ids.codes.to_numpy()
    # Customers with orders here (the categories also hold customers whose rows were all dropped).
    present = np.flatnonzero(np.bincount(codes, minlength=len(ids.categories)) > 0)
    if len(present) <= size:
        return orders
    chosen = np.zeros(len(ids.categories), dtype=bool)
    chosen[present[sample_positions(len(present), size, seed)]] = True
    dates = orders["date"].to_numpy()
    chosen[codes[[dates.argmin(), dates.argmax()]]] = True
    sample = orders[chosen[codes]]
    return sample.assign(customer_id=sample["customer_id"].cat.remove_unused_categories())


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}


def log_config(cfg: DictConfig) -> None:
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved_config.yaml")
    run_logging.log_params(run_logging.flatten(OmegaConf.to_container(cfg, resolve=True)))


def log_data_report(report: DataReport) -> None:
    run_logging.log_json(report.as_dict(), "data/summary.json")
    mlflow.set_tags(
        {
            "data.content_hash": report.content_hash,
            "data.first_date": report.first_date,
            "data.last_date": report.last_date,
            "data.has_amounts": str(report.has_amounts).lower(),
        }
    )
    run_logging.log_metrics(
        {
            "data.rows_read": report.rows_read,
            "data.rows_used": report.rows_used,
            "data.orders": report.orders,
            "data.customers": report.customers,
            "data.merged_same_day": report.merged_same_day,
            "data.duplicate_rows": report.duplicate_rows,
        }
        | {f"data.dropped.{reason}": count for reason, count in report.dropped.items()}
        | {f"privacy.excluded.{reason}": count for reason, count in report.suppressed.items()}
    )
    log.info(
        "data: %s orders of %s customers, %s to %s, dropped %s",
        f"{report.orders:,}",
        f"{report.customers:,}",
        report.first_date,
        report.last_date,
        report.dropped,
    )
    if report.duplicate_rows and "duplicate_row" not in report.dropped:
        log.warning(
            "data: %s rows equal another row in customer, timestamp and amount; merged as same-day orders "
            "(set data.drop_duplicate_rows=true if the log recorded them twice)",
            f"{report.duplicate_rows:,}",
        )
