"""Scale-out scoring (``engine=spark``): customer features in Spark (``spark.features``), the champion
models applied with ``mlflow.pyfunc.spark_udf``, the table written as a Parquet directory.

This module and ``spark.features`` are the only ones that import pyspark, and only inside functions, so
the project works without the ``[spark]`` extra. It produces the same table as ``score.score_customers``
(checked on generated data by ``tests/test_spark_scoring.py``). Segment models that cluster on customer
attributes need ``score.attributes_path`` and stay pandas-only; so does ``score.previous`` (the segment
migration).

On a cluster the executors need the same Python packages as the driver (``env_manager="local"``); the
models themselves are downloaded once by the driver and shipped to the executors by ``spark_udf``.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from customer_value.errors import UserError
from customer_value.models.clv.btyd import INTERVAL_COLUMNS, NO_DATE_BEYOND_DAYS
from customer_value.models.segments.explanations import N_REASONS, explanation_columns
from customer_value.models.segments.segmentation import FeatureSet, SegmentModel
from customer_value.privacy.suppression import refuse_under_spark
from customer_value.schema import data_has_amounts, parse_day, validate_score_config
from customer_value.spark.features import InputSource, customer_features, purchase_regularity, read_orders
from customer_value.tracking import registry, run_logging

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

MISSING_EXTRA = "engine=spark needs the [spark] extra: pip install -e '.[spark]'"


def require_pyspark() -> None:
    """A one-line UserError instead of an ImportError deep inside a job."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise UserError(MISSING_EXTRA) from None


def score(cfg: DictConfig) -> str:
    """Score with Spark and write ``score.output`` as a Parquet directory; returns where it went."""
    validate_score_config(cfg)
    refuse_under_spark(cfg, "scoring")
    if cfg.score.pseudonymise or cfg.score.sink is not None:
        raise UserError(
            "score.pseudonymise and score.sink are pandas-engine only for now (Spark writes no membership "
            "to sync): drop them or use engine=pandas"
        )
    if cfg.score.previous is not None:
        raise UserError(
            "score.previous (segment migration) is pandas-engine only: drop it or use engine=pandas"
        )
    if not str(cfg.score.output).lower().endswith(".parquet"):
        raise UserError(
            f"engine=spark writes a Parquet directory: score.output '{cfg.score.output}' must end in .parquet"
        )
    refuse_logs_without_amounts(cfg)
    require_pyspark()
    spark, created = spark_session(cfg.engine)
    try:
        table = score_customers(spark, cfg)
        output = write_parquet_atomically(spark, table, str(cfg.score.output))
        log.info(
            f"scored {spark.read.parquet(output).count():,} customers with Spark "
            f"({spark.sparkContext.master}) -> {output}"
        )
        return output
    finally:
        if created:
            spark.stop()


def refuse_logs_without_amounts(cfg: DictConfig) -> None:
    """This engine reads logs with amounts only (its loader and features need them): one line, no Spark."""
    if not data_has_amounts(cfg.data):
        raise UserError(
            "engine=spark reads logs with amounts only: score a log without amounts "
            "(data.columns.amount=null) with engine=pandas"
        )


def spark_session(engine: DictConfig) -> tuple[SparkSession, bool]:
    """The active session if there is one (e.g. a notebook's or spark-submit's), else a new one from
    ``engine``; the flag says whether it was created here (and so should be stopped here)."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    if engine.master and str(engine.master).startswith("local"):
        # Local Python workers must run this interpreter (Spark's default is whatever `python3` is).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(engine.app_name)
    if engine.master:
        builder = builder.master(str(engine.master))
    # Defaults engine.conf may override: timestamps in UTC as pandas reads them, no progress bars in job logs.
    defaults = {"spark.sql.session.timeZone": "UTC", "spark.ui.showConsoleProgress": "false"}
    settings = defaults | spark_settings(engine.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate(), True
    except PySparkRuntimeError as exc:
        raise UserError(
            f"cannot start Spark ({str(exc).splitlines()[0]}); is Java 17+ installed (JAVA_HOME)?"
        ) from None


def spark_settings(conf: DictConfig | dict[str, Any]) -> dict[str, str]:
    """``engine.conf`` as flat Spark settings; nested keys (``+engine.conf.spark.x.y=v``) join with dots."""
    plain = OmegaConf.to_container(conf, resolve=True) if isinstance(conf, DictConfig) else dict(conf)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = str(node).lower() if isinstance(node, bool) else str(node)

    walk("", plain)
    return flat


def score_customers(spark: SparkSession, cfg: DictConfig) -> DataFrame:
    """The scoring table as a (lazy) Spark DataFrame: same columns and values as the pandas engine."""
    from pyspark.sql import functions as F

    validate_score_config(cfg)
    refuse_logs_without_amounts(cfg)
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    clv_version = registry.require_champion(cfg.tracking.clv_model, cfg.tracking.alias)
    segments_version = registry.require_champion(cfg.tracking.segments_model, cfg.tracking.alias)
    clv_uri = f"models:/{cfg.tracking.clv_model}/{clv_version.version}"
    segments_uri = f"models:/{cfg.tracking.segments_model}/{segments_version.version}"
    segment_model = _segments_model(segments_uri)  # refuses what this engine cannot feed, before any work
    feature_set = segment_model.input_features
    why = reason_columns(segment_model) if cfg.score.reasons else {}
    orders, last_day = read_orders(spark, cfg.data, InputSource.from_engine(cfg.engine))
    as_of = parse_day(cfg.score.as_of, "score.as_of") or last_day
    default = default_horizon(clv_uri)
    horizon = default if cfg.score.horizon_days is None else float(cfg.score.horizon_days)
    scored, clv_columns = apply_models(
        spark,
        cfg.data,
        orders,
        as_of,
        (clv_uri, segments_uri),
        horizon,
        bool(cfg.score.intervals),
        feature_set,
        why,
    )
    days = F.col("_clv.next_purchase_days")
    as_of_column = F.lit(as_of.date())
    return scored.select(
        "customer_id",
        "_segments.segment",
        "_segments.segment_name",
        *(_missing_as_null(F.col("_segments").getField(c), kind).alias(c) for c, kind in why.items()),
        *(F.col(f"_clv.{c}").alias(c) for c in clv_columns),
        F.when(days <= NO_DATE_BEYOND_DAYS, F.date_add(as_of_column, F.bround(days, 0).cast("int")))
        .cast("timestamp_ntz")
        .alias("next_purchase_date"),
        F.lit(float(horizon)).alias("horizon_days"),
        as_of_column.cast("timestamp_ntz").alias("as_of"),
        F.lit(str(clv_version.version)).alias("clv_model_version"),
        F.lit(str(segments_version.version)).alias("segments_model_version"),
    )


def apply_models(
    spark: SparkSession,
    data: DictConfig,
    orders: DataFrame,
    as_of: pd.Timestamp,
    model_uris: tuple[str, str],
    horizon: float,
    intervals: bool,
    feature_set: FeatureSet | None = None,
    why: dict[str, str] | None = None,
) -> tuple[DataFrame, list[str]]:
    """Everyone's features as of ``as_of`` with the CLV model's outputs (struct ``_clv``) and the segment
    model's (``_segments``) applied by ``spark_udf``; and the CLV output columns. ``model_uris``: the CLV
    and segments models (registered versions or a run's logged models); ``data``: the customer file;
    ``feature_set``: the segments model's, if already loaded; ``why``: the explanation columns
    (``reason_columns``) ``_segments`` should also hold, none by default."""
    from pyspark.sql import functions as F

    clv_uri, segments_uri = model_uris
    feature_set = feature_set or _segments_model(segments_uri).input_features
    features = customer_features(orders, as_of)
    default = default_horizon(clv_uri)
    # The model's own columns: a purchase-only model takes no monetary inputs and gives no value outputs.
    signature = mlflow.models.get_model_info(clv_uri).signature
    input_columns = signature.inputs.required_input_names()
    features = _with_covariates(spark, data, features, signature)
    clv_columns = [c for c in signature.outputs.input_names() if intervals or c not in INTERVAL_COLUMNS]
    clv_udf = _udf(spark, clv_uri, clv_columns, {"horizon_days": horizon, "intervals": intervals})
    scored = features.withColumn("_clv", clv_udf(F.struct(*input_columns)))

    inputs: list[Column] = [F.col(c) for c in feature_set.rfm]
    if "regularity" in feature_set.extra:
        scored = scored.join(purchase_regularity(orders, as_of), "customer_id", "left")
        inputs.append(F.col("regularity"))
    extra_clv = [c for c in feature_set.extra if c != "regularity"]
    if extra_clv:
        source = "_clv"
        if horizon != default:  # segments were trained on CLV outputs at the model's default horizon
            default_udf = _udf(spark, clv_uri, extra_clv, {"horizon_days": default, "intervals": False})
            scored = scored.withColumn("_clv_default", default_udf(F.struct(*input_columns)))
            source = "_clv_default"
        inputs.extend(F.col(f"{source}.{c}").alias(c) for c in extra_clv)
    why = why or {}
    columns, types = ["segment", "segment_name", *why], ["long", "string", *why.values()]
    segments_udf = _udf(spark, segments_uri, columns, {"reasons": bool(why)}, types=tuple(types))
    return scored.withColumn("_segments", segments_udf(F.struct(*inputs))), clv_columns


def _missing_as_null(column: Column, kind: str) -> Column:
    """mlflow's spark_udf casts a string field with ``astype(str)``: a missing reason arrives as 'None'
    (or 'nan'); back to null, as the pandas engine has it."""
    from pyspark.sql import functions as F

    if kind != "string":
        return column
    return F.when(column.isin("None", "nan"), F.lit(None).cast("string")).otherwise(column)


def reason_columns(model: SegmentModel) -> dict[str, str]:
    """The explanation's columns (``SegmentModel.explain``) with their Spark types, in the pandas order."""
    texts = {"runner_up_segment", *(f"reason_{i + 1}" for i in range(N_REASONS))}
    return {c: "string" if c in texts else "double" for c in explanation_columns(model)}


def _with_covariates(spark: SparkSession, data: DictConfig, features: DataFrame, signature: Any) -> DataFrame:
    """The customer table with the CLV champion's covariate columns (its signature's inputs beyond the
    history) joined from ``data.customers.path`` by customer id, typed as the signature says; customers
    missing from the file get nulls, which the model fills by its design's rule (as in the pandas engine)."""
    from pyspark.sql import functions as F

    types = {spec.name: spec.type.name for spec in signature.inputs.inputs}
    absent = [c for c in types if c not in features.columns]
    if not absent:
        return features
    if data.customers.path is None:
        raise UserError(
            f"the CLV model takes covariate column(s) {absent}: set data.customers.path (a customer file)"
        )
    path = str(data.customers.path)
    reader = spark.read if path.lower().endswith((".parquet", ".pq")) else spark.read.option("header", True)
    table = reader.parquet(path) if path.lower().endswith((".parquet", ".pq")) else reader.csv(path)
    missing = [c for c in [data.customers.id, *absent] if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column(s) {missing}")
    customers = table.select(
        F.trim(F.col(data.customers.id).cast("string")).alias("customer_id"),
        *(F.col(c).cast("double" if types[c] == "double" else "string").alias(c) for c in absent),
    )
    return features.join(customers, "customer_id", "left")


def default_horizon(clv_uri: str) -> float:
    """The registered CLV model's default ``horizon_days`` (from its signature; nothing is loaded)."""
    params = mlflow.models.get_model_info(clv_uri).signature.params
    return float(next(p.default for p in params.params if p.name == "horizon_days"))


def _segments_model(segments_uri: str) -> SegmentModel:
    """The segments champion's model; attribute-based models are refused (pandas-engine only)."""
    model = mlflow.pyfunc.load_model(segments_uri).unwrap_python_model().model
    feature_set = model.input_features
    attributes = [*feature_set.numeric, *feature_set.categorical]
    if attributes:
        raise UserError(
            f"the segments champion clusters on attribute columns {attributes}: "
            "engine=spark does not join attributes yet, use engine=pandas with score.attributes_path"
        )
    return model


def _udf(
    spark: SparkSession,
    model_uri: str,
    columns: list[str],
    params: dict[str, Any] | None = None,
    types: tuple[str, ...] | None = None,
) -> Any:
    """A struct-returning pandas UDF around a registered pyfunc, run in the executors' own Python."""
    types = types or ("double",) * len(columns)
    result_type = ", ".join(f"`{name}` {kind}" for name, kind in zip(columns, types, strict=True))
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params=params
    )


def write_parquet_atomically(spark: SparkSession, table: DataFrame, output: str) -> str:
    """Write to a hidden sibling directory, then swap it in with the Hadoop FileSystem API.

    Works the same for local paths (made absolute), hdfs://, s3a:// and abfss://: a failed job leaves the
    previous output (or nothing), never a partial table. The swap is a delete plus a rename: atomic per
    step on local disks and HDFS, a copy on object stores. Needs a classic (non-Connect) SparkSession.
    """
    if "://" not in output and not output.startswith("file:"):
        output = Path(output).absolute().as_uri()
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(output)
    filesystem = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    staging = jvm.org.apache.hadoop.fs.Path(target.getParent(), f".{target.getName()}.{uuid.uuid4().hex}.tmp")
    try:
        table.write.parquet(staging.toString())
        if filesystem.exists(target):
            filesystem.delete(target, True)
        if not filesystem.rename(staging, target):
            raise UserError(f"score.output {output}: could not move the finished table into place")
    finally:
        if filesystem.exists(staging):
            filesystem.delete(staging, True)
    return output
