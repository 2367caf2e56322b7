"""Scoring job: load the champion models, score every customer as of a date, write one table.

The output is written to a temporary file beside the target and renamed into place, so an interrupted
or failed job never leaves a partial table.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value import plots, registry, spark_scoring, tracking
from customer_value.clv import INPUT_COLUMNS, NO_DATE_BEYOND_DAYS
from customer_value.entrypoint import run_job
from customer_value.errors import UserError
from customer_value.features import customer_features, purchase_regularity
from customer_value.jobs import load_orders
from customer_value.migration import (
    load_previous_scores,
    migration_summary,
    transition_matrix,
    transition_table,
)
from customer_value.schema import parse_day, register_configs, validate_score_config
from customer_value.segment_attributes import join_attributes, load_attributes
from customer_value.segmentation import SEGMENT_FEATURES, FeatureSet

log = logging.getLogger(__name__)


def score_customers(cfg: DictConfig) -> pd.DataFrame:
    """One row per customer seen on or before ``score.as_of``, with segment and every CLV output."""
    validate_score_config(cfg)
    tracking.configure(cfg.tracking.uri)
    clv_version = registry.require_champion(cfg.tracking.clv_model, cfg.tracking.alias)
    segments_version = registry.require_champion(cfg.tracking.segments_model, cfg.tracking.alias)

    orders, report = load_orders(cfg.data)
    as_of = parse_day(cfg.score.as_of, "score.as_of") or pd.Timestamp(report.last_date)
    features = customer_features(orders, as_of)
    rows = features.reset_index(drop=True)

    clv_model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{clv_version.version}")
    horizon = cfg.score.horizon_days
    if horizon is None:
        horizon = default_horizon(clv_model)
    params = {"horizon_days": float(horizon), "intervals": bool(cfg.score.intervals)}
    values = clv_model.predict(rows[INPUT_COLUMNS], params=params)
    segments_model = mlflow.pyfunc.load_model(
        f"models:/{cfg.tracking.segments_model}/{segments_version.version}"
    )
    segment_inputs = _segment_inputs(cfg, segments_model, features, clv_model, horizon, values, orders, as_of)
    segments = segments_model.predict(segment_inputs)

    table = pd.concat([pd.DataFrame({"customer_id": features.index.to_numpy()}), segments, values], axis=1)
    days = table["next_purchase_days"].where(table["next_purchase_days"] <= NO_DATE_BEYOND_DAYS)
    table["next_purchase_date"] = as_of + pd.to_timedelta(days, unit="D").dt.round("D")
    table["horizon_days"] = float(horizon)
    table["as_of"] = as_of
    table["clv_model_version"] = str(clv_version.version)
    table["segments_model_version"] = str(segments_version.version)
    return table


def default_horizon(clv_model: mlflow.pyfunc.PyFuncModel) -> float:
    """The registered CLV model's default horizon (its ``horizon_days`` parameter)."""
    return next(p.default for p in clv_model.metadata.get_params_schema().params if p.name == "horizon_days")


def _segment_inputs(
    cfg: DictConfig,
    segments_model: mlflow.pyfunc.PyFuncModel,
    features: pd.DataFrame,
    clv_model: mlflow.pyfunc.PyFuncModel,
    horizon: float,
    values: pd.DataFrame,
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """What the segments champion clusters on: RFM, and when it was trained so, CLV outputs (at the CLV
    model's own default horizon, as in training), purchase regularity and customer attributes
    (``score.attributes_path``)."""
    model = segments_model.unwrap_python_model().model
    feature_set = getattr(model, "feature_set", FeatureSet())
    rows = features.reset_index(drop=True)[SEGMENT_FEATURES]
    if "regularity" in feature_set.extra:
        rows["regularity"] = purchase_regularity(orders, as_of).reindex(features.index).to_numpy()
    clv_columns = [c for c in feature_set.extra if c != "regularity"]
    if clv_columns:
        default = default_horizon(clv_model)
        if float(default) != float(horizon):
            values = clv_model.predict(
                features.reset_index(drop=True)[INPUT_COLUMNS],
                params={"horizon_days": float(default), "intervals": False},
            )
        rows = rows.join(values[clv_columns])
    attributes = [*feature_set.numeric, *feature_set.categorical]
    if attributes:
        if cfg.score.attributes_path is None:
            raise UserError(
                f"the segments champion clusters on attribute columns {attributes}: set score.attributes_path"
            )
        spec = OmegaConf.create(
            {
                "path": cfg.score.attributes_path,
                "customer_id": "customer_id",
                "numeric": list(feature_set.numeric),
                "categorical": list(feature_set.categorical),
                "protected": [],
            }
        )
        table, _ = load_attributes(spec)
        joined = join_attributes(features[[]], table, attributes).reset_index(drop=True)
        rows = rows.join(joined)
    return rows


def write_table_atomically(table: pd.DataFrame, output: Path) -> Path:
    """Write to a temporary file in the target folder, then rename: readers see all or nothing."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise UserError(f"score.output {output}: cannot write there ({exc.strerror})") from None
    os.close(handle)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp creates 0600; the table should read like any other file
    try:
        if output.suffix.lower() == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def score(cfg: DictConfig) -> Path | str:
    """Score, then write the table (and, given ``score.previous``, the segment migration) atomically.

    ``engine=spark`` hands the whole job to ``spark_scoring`` (its output may be a remote URI: a str)."""
    if cfg.engine.name == "spark":
        return spark_scoring.score(cfg)
    previous = None if cfg.score.previous is None else load_previous_scores(Path(cfg.score.previous))
    table = score_customers(cfg)
    migration = None if previous is None else transition_table(previous, table)
    output = write_table_atomically(table, Path(cfg.score.output))
    if migration is not None:
        _write_and_log_migration(cfg, migration, output, table)
    log.info(
        f"scored {len(table):,} customers as of {table['as_of'].iloc[0].date()} with "
        f"{cfg.tracking.clv_model} v{table['clv_model_version'].iloc[0]} and {cfg.tracking.segments_model} "
        f"v{table['segments_model_version'].iloc[0]} -> {output}"
    )
    return output


def _write_and_log_migration(
    cfg: DictConfig, migration: pd.DataFrame, output: Path, table: pd.DataFrame
) -> None:
    """Beside the scores as ``<name>.migration.csv``, and as a run in the scoring experiment (aggregates)."""
    path = write_table_atomically(migration, output.with_name(f"{output.stem}.migration.csv"))
    summary = migration_summary(migration)
    tags = tracking.git_state() | {"data.name": cfg.data.name}
    with tracking.run(cfg.tracking.scoring_experiment, cfg.tracking.artifact_root, None, tags):
        mlflow.log_params(
            {
                "as_of": str(table["as_of"].iloc[0].date()),
                "previous": str(cfg.score.previous),
                "clv_model_version": table["clv_model_version"].iloc[0],
                "segments_model_version": table["segments_model_version"].iloc[0],
            }
        )
        tracking.log_metrics(summary)
        tracking.log_table(migration, "migration/transitions.csv")
        shares = transition_matrix(migration, "share_of_from")
        tracking.log_figure(plots.migration_heatmap(shares), "plots/migration.png")
    log.info(
        "migration: %s customers followed, %.1f%% changed segment -> %s",
        f"{summary['migration.customers_matched']:,.0f}",
        100 * summary["migration.share_changed_segment"],
        path,
    )


@hydra.main(version_base="1.3", config_path="../../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    run_job(score, cfg)


if __name__ == "__main__":
    register_configs()
    main()
