"""What a reviewer reads first in the MLflow UI: a run name that says what was trained on which data and
window, a short Markdown description (the run page's "Description") with the headline metrics beside
their baselines, and the training data as a dataset input (name, digest, schema: the Datasets panel).

Without them every run is "bouncy-owl-42" and a reviewer opens each one to learn what it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import mlflow
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.spark_dataset_source import SparkDatasetSource
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from customer_value.data.loading import DataReport

# (label, the run's metric, the baseline's metric or None): the rows of a run's description.
CLV_HEADLINES: tuple[tuple[str, str, str | None], ...] = (
    ("churn AUC", "holdout.churn_auc", "baseline.churn_auc"),
    ("churn Brier", "holdout.churn_brier", "baseline.churn_brier"),
    ("purchases MAE", "holdout.purchases_mae", "baseline.purchases_mae"),
    (
        "top-decile revenue capture",
        "holdout.top_decile_revenue_capture",
        "baseline.top_decile_revenue_capture",
    ),
    ("revenue Spearman", "holdout.revenue_spearman", "baseline.revenue_spearman"),
)
SEGMENT_HEADLINES: tuple[tuple[str, str, str | None], ...] = (
    ("silhouette", "segments.silhouette", None),
    ("Davies-Bouldin", "segments.davies_bouldin", None),
    ("bootstrap ARI (stability)", "segments.stability.bootstrap_ari_mean", None),
)
DIGEST_CHARS = 16  # MLflow's SQL store keeps dataset digests of up to 36 characters
SCHEMA_TYPES = {"customer_id": "string", "date": "datetime", "amount": "double"}


def run_name(stage: str, model: str, data_name: str, window: str) -> str:
    """'clv bgnbd · cdnow_master · 1997-01-01..1997-09-30': stage, model, data and window at a glance."""
    return f"{stage} {model} · {data_name} · {window}"


def description(
    title: str, metrics: Mapping[str, float], headlines: Sequence[tuple[str, str, str | None]]
) -> str:
    """A Markdown table of the headline metrics the run has, each beside its baseline when it has one."""
    rows = [
        f"| {label} | {_number(metrics[metric])} | {_number(metrics.get(baseline)) if baseline else ''} |"
        for label, metric, baseline in headlines
        if metric in metrics
    ]
    table = ["| metric | this run | baseline |", "| --- | ---: | ---: |", *rows] if rows else []
    return "\n".join([f"**{title}**", "", *table])


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"


def name_and_describe(run_id: str, name: str | None, text: str) -> None:
    """Set the run's name (unless the user gave one: ``name`` None keeps it) and its description."""
    client = MlflowClient()
    if name is not None:
        client.set_tag(run_id, "mlflow.runName", name)
    client.set_tag(run_id, "mlflow.note.content", text)


def log_training_data(report: DataReport, data_name: str, orders: pd.DataFrame) -> None:
    """The orders the run trained on as an MLflow dataset input: the source file, the file's content hash
    as digest (so runs on the same bytes match) and the loaded orders' schema. No rows are stored."""
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path matches both.
        warnings.simplefilter("ignore", UserWarning)
        try:
            source = resolve_dataset_source(report.source)
        except Exception:  # not a location MLflow knows: a table the Spark engine read
            source = SparkDatasetSource(table_name=report.source)
    schema = Schema(
        [ColSpec(SCHEMA_TYPES[column], column) for column in orders.columns if column in SCHEMA_TYPES]
    )
    dataset = MetaDataset(
        source, name=data_name, digest=report.content_hash[:DIGEST_CHARS] or None, schema=schema
    )
    mlflow.log_input(dataset, context="training")


def summarise_clv_run(
    run_id: str,
    given_name: str | None,
    data_name: str,
    report: DataReport,
    calibration_end: str,
    metrics: Mapping[str, float],
) -> None:
    """Name and describe a CLV training run from its chosen family (tag ``clv.family``) and window."""
    family = MlflowClient().get_run(run_id).data.tags.get("clv.family", "clv")
    window = f"{report.first_date}..{calibration_end}"
    title = (
        f"{family} on {data_name}: {report.customers:,} customers, {report.orders:,} orders; calibration "
        f"{window}, holdout to {report.last_date}"
    )
    name = None if given_name else run_name("clv", family, data_name, window)
    name_and_describe(run_id, name, description(title, metrics, CLV_HEADLINES))


def summarise_segments_run(
    run_id: str,
    given_name: str | None,
    data_name: str,
    report: DataReport,
    version_tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """Name and describe a segments run from its model's algorithm and number of segments (the tags its
    registered version gets) and the as-of day."""
    model = f"{version_tags['algorithm']} k={version_tags['n_segments']}"
    title = f"{model} on {data_name}: {report.customers:,} customers as of {report.last_date}"
    name = None if given_name else run_name("segments", model, data_name, f"as of {report.last_date}")
    name_and_describe(run_id, name, description(title, metrics, SEGMENT_HEADLINES))
