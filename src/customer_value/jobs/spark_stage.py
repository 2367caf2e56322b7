"""What ``train engine=spark`` adds to the two runs: how much of the base the driver held, and the
trained models applied to everyone in Spark (segment sizes and predicted value of the whole base)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from omegaconf import DictConfig

from customer_value.tracking import run_logging

if TYPE_CHECKING:
    from customer_value.spark.training import SparkBase

log = logging.getLogger(__name__)


def log_sample(base: SparkBase) -> None:
    """Tag and count what the driver trained on: the whole base, or a seeded sample of it."""
    mlflow.set_tag(
        "engine.sample",
        f"seeded sample of {base.sampled_customers:,} of {base.report.customers:,} customers"
        if base.sampled
        else f"the whole base ({base.report.customers:,} customers)",
    )
    run_logging.log_metrics(
        {"engine.sampled_customers": base.sampled_customers, "engine.base_customers": base.report.customers}
    )


def log_everyone(cfg: DictConfig, base: SparkBase, model_uris: tuple[str, str]) -> dict[str, float]:
    """Apply the run's CLV and segment models to every customer with ``spark_udf`` (as of the last order,
    at ``clv.horizon_days``) and log each segment's size, share, predicted value and churn for the whole
    base (``segments/everyone.csv``); returns ``everyone.*`` metrics."""
    from pyspark.sql import functions as F

    from customer_value.spark.scoring import apply_models

    as_of = pd.Timestamp(base.report.last_date)
    scored, clv_columns = apply_models(
        base.spark, cfg.data, base.everyone, as_of, model_uris, float(cfg.clv.horizon_days), intervals=False
    )
    value = [F.sum("_clv.clv").alias("predicted_clv")] if "clv" in clv_columns else []
    table = (
        scored.groupBy("_segments.segment", "_segments.segment_name")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            *value,
            F.avg("_clv.churn_probability").alias("mean_churn_probability"),
            F.sum("_clv.expected_purchases").alias("expected_purchases"),
        )
        .toPandas()
        .sort_values("segment")
        .reset_index(drop=True)
    )
    table["share"] = table["customers"] / table["customers"].sum()
    if "predicted_clv" in table:
        table["value_share"] = table["predicted_clv"] / table["predicted_clv"].sum()
    run_logging.log_table(table, "segments/everyone.csv")
    log.info(
        "engine=spark: %s customers assigned in Spark: %s",
        f"{int(table['customers'].sum()):,}",
        ", ".join(f"{row.segment_name} {row.share:.1%}" for row in table.itertuples()),
    )
    metrics = {"everyone.customers": float(table["customers"].sum())}
    metrics |= {f"everyone.segment.{row.segment}.share": float(row.share) for row in table.itertuples()}
    run_logging.log_metrics(metrics)
    return metrics
