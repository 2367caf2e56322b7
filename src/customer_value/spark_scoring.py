"""Scale-out scoring (``engine=spark``): customer features as Spark DataFrame operations, the champion
models applied with ``mlflow.pyfunc.spark_udf``, the table written as a Parquet directory.

The only module that imports pyspark, and only inside functions, so the project works without the
``[spark]`` extra. It produces the same table as ``score.score_customers`` (checked on generated data by
``tests/test_spark_scoring.py``):

- Raw values are parsed on the executors by the very functions ``data`` uses (``coerce_*``), so ids,
  timestamps (ISO 8601 or ``data.timestamp_format``, offsets converted to UTC) and amounts are read the
  same way; bad rows raise the same DataError (file, column, row count), with an example value but no
  row number (Spark rows have no stable position).
- Features follow ``features.customer_features`` column by column; the orders are merged to one row per
  customer and day first, as loading does.
- Segment models that cluster on customer attributes need ``score.attributes_path`` and stay pandas-only;
  so does ``score.previous`` (the segment migration).

On a cluster the executors need the same Python packages as the driver (``env_manager="local"``); the
models themselves are downloaded once by the driver and shipped to the executors by ``spark_udf``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value import registry, tracking
from customer_value.clv import INPUT_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS
from customer_value.data import (
    coerce_amounts,
    coerce_customer_ids,
    coerce_timestamps,
    load_bundled,
    require_columns,
)
from customer_value.errors import DataError, UserError
from customer_value.schema import parse_day, validate_score_config
from customer_value.segmentation import SEGMENT_FEATURES, FeatureSet

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

MISSING_EXTRA = "engine=spark needs the [spark] extra: pip install -e '.[spark]'"
# pandas.read_csv's default NA strings (pandas._libs.parsers.STR_NA_VALUES; a test keeps them in step):
# Spark reads every CSV field as text, so these are turned into missing values as pandas would.
PANDAS_CSV_NA_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"}
    | {"N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
PARSED_SCHEMA = (
    "customer_id string, day long, amount double, id_bad boolean, date_bad boolean, amount_bad boolean, "
    "id_example string, date_example string, amount_example string"
)
EPOCH = pd.Timestamp("1970-01-01")
NO_DATE_BEYOND_DAYS = 36_525  # as score.score_customers: beyond a century, "not expected", no date


def require_pyspark() -> None:
    """A one-line UserError instead of an ImportError deep inside a job."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise UserError(MISSING_EXTRA) from None


def score(cfg: DictConfig) -> str:
    """Score with Spark and write ``score.output`` as a Parquet directory; returns where it went."""
    validate_score_config(cfg)
    if cfg.score.previous is not None:
        raise UserError(
            "score.previous (segment migration) is pandas-engine only: drop it or use engine=pandas"
        )
    if not str(cfg.score.output).lower().endswith(".parquet"):
        raise UserError(
            f"engine=spark writes a Parquet directory: score.output '{cfg.score.output}' must end in .parquet"
        )
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
    tracking.configure(cfg.tracking.uri)
    clv_version = registry.require_champion(cfg.tracking.clv_model, cfg.tracking.alias)
    segments_version = registry.require_champion(cfg.tracking.segments_model, cfg.tracking.alias)
    clv_uri = f"models:/{cfg.tracking.clv_model}/{clv_version.version}"
    segments_uri = f"models:/{cfg.tracking.segments_model}/{segments_version.version}"
    feature_set = _segments_feature_set(segments_uri)  # refuses what this engine cannot feed, before any work
    orders, last_day = read_orders(spark, cfg.data)
    as_of = parse_day(cfg.score.as_of, "score.as_of") or last_day
    features = customer_features(orders, as_of)

    default = default_horizon(clv_uri)
    horizon = default if cfg.score.horizon_days is None else float(cfg.score.horizon_days)
    clv_columns = [*PREDICTION_COLUMNS, *(INTERVAL_COLUMNS if cfg.score.intervals else [])]
    clv_udf = _udf(
        spark, clv_uri, clv_columns, {"horizon_days": horizon, "intervals": bool(cfg.score.intervals)}
    )
    scored = features.withColumn("_clv", clv_udf(F.struct(*INPUT_COLUMNS)))

    inputs: list[Column] = [F.col(c) for c in SEGMENT_FEATURES]
    if "regularity" in feature_set.extra:
        scored = scored.join(purchase_regularity(orders, as_of), "customer_id", "left")
        inputs.append(F.col("regularity"))
    extra_clv = [c for c in feature_set.extra if c != "regularity"]
    if extra_clv:
        source = "_clv"
        if horizon != default:  # segments were trained on CLV outputs at the model's default horizon
            default_udf = _udf(spark, clv_uri, extra_clv, {"horizon_days": default, "intervals": False})
            scored = scored.withColumn("_clv_default", default_udf(F.struct(*INPUT_COLUMNS)))
            source = "_clv_default"
        inputs.extend(F.col(f"{source}.{c}").alias(c) for c in extra_clv)
    segments_udf = _udf(spark, segments_uri, ["segment", "segment_name"], types=("long", "string"))
    scored = scored.withColumn("_segments", segments_udf(F.struct(*inputs)))

    days = F.col("_clv.next_purchase_days")
    as_of_column = F.lit(as_of.date())
    return scored.select(
        "customer_id",
        "_segments.segment",
        "_segments.segment_name",
        *(F.col(f"_clv.{c}").alias(c) for c in clv_columns),
        F.when(days <= NO_DATE_BEYOND_DAYS, F.date_add(as_of_column, F.bround(days, 0).cast("int")))
        .cast("timestamp_ntz")
        .alias("next_purchase_date"),
        F.lit(float(horizon)).alias("horizon_days"),
        as_of_column.cast("timestamp_ntz").alias("as_of"),
        F.lit(str(clv_version.version)).alias("clv_model_version"),
        F.lit(str(segments_version.version)).alias("segments_model_version"),
    )


def default_horizon(clv_uri: str) -> float:
    """The registered CLV model's default ``horizon_days`` (from its signature; nothing is loaded)."""
    params = mlflow.models.get_model_info(clv_uri).signature.params
    return float(next(p.default for p in params.params if p.name == "horizon_days"))


def _segments_feature_set(segments_uri: str) -> FeatureSet:
    """What the segments champion clusters on; attribute-based models are refused (pandas-engine only)."""
    model = mlflow.pyfunc.load_model(segments_uri).unwrap_python_model().model
    feature_set = getattr(model, "feature_set", FeatureSet())
    attributes = [*feature_set.numeric, *feature_set.categorical]
    if attributes:
        raise UserError(
            f"the segments champion clusters on attribute columns {attributes}: "
            "engine=spark does not join attributes yet, use engine=pandas with score.attributes_path"
        )
    return feature_set


def _udf(
    spark: SparkSession,
    model_uri: str,
    columns: list[str],
    params: dict[str, Any] | None = None,
    types: tuple[str, ...] | None = None,
) -> Any:
    """A struct-returning pandas UDF around a registered pyfunc, run in the executors' own Python."""
    types = types or ("double",) * len(columns)
    result_type = ", ".join(f"{name} {kind}" for name, kind in zip(columns, types, strict=True))
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params=params
    )


def read_orders(spark: SparkSession, data: DictConfig) -> tuple[DataFrame, pd.Timestamp]:
    """Orders as Spark rows ``customer_id, day (date), amount``, one per customer and day, validated like
    ``data.load_transactions``; and the last order day (the default ``as_of``).

    Bundled datasets live inside an installed package on the driver, so they are loaded with pandas and
    handed to Spark (they are small); files are read by Spark itself: CSV (every field as text, pandas'
    NA strings) or Parquet, by extension; a Parquet path may also be a directory of part files.
    """
    from pyspark.sql import functions as F

    if data.bundled:
        orders, report = load_bundled(data.bundled, keep_zero_amounts=data.keep_zero_amounts)
        frame = pd.DataFrame(
            {
                "customer_id": orders["customer_id"].astype(object),
                "day": _epoch_days(orders["date"]),
                "amount": orders["amount"].astype("float64"),
            }
        )
        spark_orders = spark.createDataFrame(frame, "customer_id string, day long, amount double")
        return _with_dates(spark_orders), pd.Timestamp(report.last_date)
    if not data.path:
        raise UserError("data.path is required with data=file (e.g. data.path=orders.parquet)")

    path = str(data.path)
    columns = [data.columns.customer_id, data.columns.timestamp, data.columns.amount]
    raw, is_csv = _read_raw(spark, path, columns)
    parse = partial(
        _parse_batches,
        columns=columns,
        fmt=data.timestamp_format,
        na_values=PANDAS_CSV_NA_VALUES if is_csv else frozenset(),
    )
    # Not cached: the file is read once to validate it, then again by the scoring plan (no memory held).
    parsed = raw.mapInPandas(parse, PARSED_SCHEMA)
    last_day = _check(parsed, path, columns, keep_zero_amounts=bool(data.keep_zero_amounts))
    keep = ~F.col("id_bad") & ~F.col("date_bad") & ~F.col("amount_bad")
    keep &= (F.col("amount") >= 0) if data.keep_zero_amounts else (F.col("amount") > 0)
    orders = parsed.where(keep).groupBy("customer_id", "day").agg(F.sum("amount").alias("amount"))
    return _with_dates(orders), last_day


def _read_raw(spark: SparkSession, path: str, columns: list[str]) -> tuple[DataFrame, bool]:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    suffix = PurePosixPath(path.rstrip("/")).suffix.lower()
    if suffix not in {".parquet", ".pq", ".csv", ".txt", ".gz"}:
        raise DataError(f"{path}: unsupported file extension '{suffix}'; use .csv or .parquet")
    is_csv = suffix not in {".parquet", ".pq"}
    try:
        raw = spark.read.option("header", True).csv(path) if is_csv else spark.read.parquet(path)
    except (PySparkException, Py4JJavaError) as exc:
        reason = re.search(r"\[([A-Z_.]+)\]", str(exc))
        if reason and reason.group(1).startswith("PATH_NOT_FOUND"):
            raise DataError(f"{path}: file not found") from None
        kind = "CSV" if is_csv else "Parquet"
        detail = reason.group(1) if reason else str(exc).splitlines()[0]
        raise DataError(f"{path}: not readable by Spark as {kind} ({detail})") from None
    if not raw.columns:
        raise DataError(f"{path}: file is empty (0 rows, no header)")
    require_columns(path, columns, raw.columns)
    return raw.select(*(raw[f"`{name}`"] for name in columns)), is_csv


def _parse_batches(
    batches: Iterator[pd.DataFrame], columns: list[str], fmt: str | None, na_values: frozenset[str]
) -> Iterator[pd.DataFrame]:
    """Runs on the executors: each raw batch parsed by ``data``'s own coercion, bad values flagged."""
    id_column, timestamp_column, amount_column = columns
    for raw in batches:
        if na_values:
            raw = raw.apply(lambda column: column.mask(column.isin(na_values)))
        ids = coerce_customer_ids(raw[id_column])
        try:
            dates = coerce_timestamps(raw[timestamp_column], fmt)
        except (ValueError, TypeError):  # the loader rejects the whole column; here the batch is bad
            dates = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
        amounts = pd.Series(coerce_amounts(raw[amount_column]), index=raw.index)
        bad = {"id": ids.isna(), "date": dates.isna(), "amount": amounts.isna()}
        values = {"id": raw[id_column], "date": raw[timestamp_column], "amount": raw[amount_column]}
        yield pd.DataFrame(
            {
                "customer_id": ids.astype(object).where(~bad["id"], None),
                "day": _epoch_days(dates.where(~bad["date"], EPOCH)),
                "amount": amounts.where(~bad["amount"], 0.0).astype("float64"),
                **{f"{name}_bad": flags.astype(bool) for name, flags in bad.items()},
                **{
                    f"{name}_example": values[name].astype(str).str.slice(0, 40).where(bad[name], None)
                    for name in bad
                },
            }
        )


def _epoch_days(dates: pd.Series) -> pd.Series:
    """Whole days since 1970-01-01 of day-resolution timestamps (exact, any datetime64 unit)."""
    return ((dates.dt.normalize() - EPOCH) // pd.Timedelta(days=1)).astype("int64")


def _with_dates(orders: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return orders.select("customer_id", F.date_from_unix_date("day").alias("date"), "amount")


def _check(parsed: DataFrame, source: str, columns: list[str], *, keep_zero_amounts: bool) -> pd.Timestamp:
    """One pass over the parsed rows: the loader's checks, in its order and with its messages."""
    from pyspark.sql import functions as F

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    valid_amount = ~F.col("amount_bad")
    positive = F.col("amount") >= 0 if keep_zero_amounts else F.col("amount") > 0
    names = ("id", "date", "amount")
    row = parsed.agg(
        F.count(F.lit(1)).alias("rows"),
        *(count(F.col(f"{n}_bad")).alias(f"{n}_bad") for n in names),
        *(F.first(f"{n}_example", ignorenulls=True).alias(f"{n}_example") for n in names),
        count(valid_amount & (F.col("amount") < 0)).alias("negative"),
        count(valid_amount & (F.col("amount") == 0)).alias("zero"),
        count(valid_amount & positive).alias("kept"),
        F.max(F.when(valid_amount & positive, F.col("day"))).alias("last_day"),
    ).first()
    rows = int(row["rows"])
    if rows == 0:
        raise DataError(f"{source}: no rows (header only or empty table)")
    problems = {
        "id": "is blank in {n:,} of {rows:,} rows",
        "date": "has {n:,} of {rows:,} rows that are not valid timestamps",
        "amount": "has {n:,} of {rows:,} rows that are not finite numbers",
    }
    for (name, problem), column in zip(problems.items(), columns, strict=True):
        n = int(row[f"{name}_bad"])
        if n:
            hint = "; set data.timestamp_format if the format is unusual" if name == "date" else ""
            raise DataError(
                f"{source}: column '{column}' {problem.format(n=n, rows=rows)} "
                f"(e.g. {row[f'{name}_example']!r}){hint}"
            )
    if int(row["kept"]) == 0:
        raise DataError(f"{source}: column '{columns[2]}' has no positive amount in {rows:,} rows")
    dropped = {"negative_amount": int(row["negative"])}
    if not keep_zero_amounts:
        dropped["zero_amount"] = int(row["zero"])
    log.info(f"{source}: {rows:,} rows read, dropped {dropped}")
    return EPOCH + pd.Timedelta(days=int(row["last_day"]))


def customer_features(orders: DataFrame, as_of: pd.Timestamp) -> DataFrame:
    """``features.customer_features`` in Spark: one row per customer with orders on or before ``as_of``."""
    from pyspark.sql import functions as F

    day = F.lit(pd.Timestamp(as_of).normalize().date())
    seen = orders.where(F.col("date") <= day)
    if seen.limit(1).count() == 0:
        raise DataError(f"no orders on or before {as_of.date()}: nothing to build customer features from")
    grouped = seen.groupBy("customer_id").agg(
        F.min("date").alias("first"),
        F.max("date").alias("last"),
        F.count(F.lit(1)).alias("n"),
        F.sum("amount").alias("total"),
        F.min_by("amount", "date").alias("first_amount"),  # (customer, day) is unique: well defined
    )
    n = F.col("n").cast("double")
    return grouped.select(
        "customer_id",
        (n - 1).alias("frequency"),
        F.datediff("last", "first").cast("double").alias("recency_days"),
        F.datediff(day, "first").cast("double").alias("T_days"),
        F.when(n > 1, (F.col("total") - F.col("first_amount")) / (n - 1))
        .otherwise(0.0)
        .alias("monetary_value"),
        F.datediff(day, "last").cast("double").alias("days_since_last"),
        n.alias("n_orders"),
        F.col("total").cast("double").alias("total_spend"),
        (F.col("total") / n).alias("mean_order_value"),
    )


def purchase_regularity(orders: DataFrame, as_of: pd.Timestamp) -> DataFrame:
    """``features.purchase_regularity`` in Spark: CV of the gaps between purchase days (null under two)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seen = orders.where(F.col("date") <= F.lit(pd.Timestamp(as_of).normalize().date()))
    gap = F.datediff("date", F.lag("date").over(Window.partitionBy("customer_id").orderBy("date")))
    stats = seen.select("customer_id", gap.alias("gap")).groupBy("customer_id")
    stats = stats.agg(
        F.stddev_samp("gap").alias("std"), F.avg("gap").alias("mean"), F.count("gap").alias("k")
    )
    regularity = F.when(F.col("k") >= 2, F.col("std") / F.col("mean")).cast("double")
    return stats.select("customer_id", regularity.alias("regularity"))


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
