"""Customer features in Spark for ``engine=spark``: the orders file read and validated on the executors,
then ``features.customer_features`` (and ``purchase_regularity``) column by column.

Raw values are parsed by the very functions ``data`` uses (``coerce_*``), so ids, timestamps (ISO 8601 or
``data.timestamp_format``, offsets converted to UTC) and amounts are read the same way; bad rows raise the
same DataError (file, column, row count), with an example value but no row number (Spark rows have no
stable position), or are dropped and counted under ``data.max_bad_row_share``. Exact duplicate rows are
dropped with ``data.drop_duplicate_rows`` (counted then: one more pass over the log; without it they are
merged like any same-day orders, uncounted). The orders are merged to one row per customer and day first,
as loading does.
pyspark is imported inside functions only, so the project works without the ``[spark]`` extra.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig

from customer_value.data.grouping import epoch_days
from customer_value.data.loading import DataReport, LoadingRules, file_sha256, load_bundled, require_columns
from customer_value.data.parsing import (
    MAX_AMOUNT,
    bad_rows_message,
    coerce_amounts,
    coerce_customer_ids,
    coerce_timestamps,
    implausible_dates,
    over_tolerance,
)
from customer_value.errors import DataError, UserError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

# pandas.read_csv's default NA strings (pandas._libs.parsers.STR_NA_VALUES; a test keeps them in step):
# Spark reads every CSV field as text, so these are turned into missing values as pandas would.
PANDAS_CSV_NA_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"}
    | {"N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)

# What each row can be wrong in, in the loader's order of checks.
PROBLEMS = ("id", "date", "era", "amount", "absurd")
PARSED_SCHEMA = (
    "customer_id string, day long, instant long, amount double, "
    + ", ".join(f"{name}_bad boolean" for name in PROBLEMS)
    + ", "
    + ", ".join(f"{name}_example string" for name in PROBLEMS)
)

EPOCH = pd.Timestamp("1970-01-01")


def read_orders(
    spark: SparkSession, data: DictConfig, source: InputSource | None = None
) -> tuple[DataFrame, pd.Timestamp]:
    """Orders as Spark rows ``customer_id, day (date), amount``, one per customer and day, validated like
    ``data.load_transactions``; and the last order day (the default ``as_of``).

    Bundled datasets live inside an installed package on the driver, so they are loaded with pandas and
    handed to Spark (they are small); files are read by Spark itself: CSV (every field as text, pandas'
    NA strings) or Parquet, by extension; a Parquet path may also be a directory of part files. ``source``
    (``engine.input_format`` / ``input_options``) names any other format Spark reads, or ``table``.
    """
    orders, report = read_orders_with_report(spark, data, count=False, source=source)
    return orders, pd.Timestamp(report.last_date)


def read_orders_with_report(
    spark: SparkSession, data: DictConfig, count: bool = True, source: InputSource | None = None
) -> tuple[DataFrame, DataReport]:
    """``read_orders`` plus the loader's ``DataReport``; ``count=False`` skips the passes that only the
    report needs (orders, customers, duplicate rows: scoring does not log them, they stay 0 then)."""
    from pyspark.sql import functions as F

    rules = LoadingRules.from_config(data)
    if data.bundled:
        orders, report = load_bundled(data.bundled, rules)
        frame = pd.DataFrame(
            {
                "customer_id": orders["customer_id"].astype(object),
                "day": epoch_days(orders["date"]),
                "amount": orders["amount"].astype("float64"),
            }
        )
        spark_orders = spark.createDataFrame(frame, "customer_id string, day long, amount double")
        return _with_dates(spark_orders), report
    if not data.path:
        raise UserError("data.path is required with data=file (e.g. data.path=orders.parquet)")

    path = str(data.path)
    columns = [data.columns.customer_id, data.columns.timestamp, data.columns.amount]
    raw, is_csv = _read_raw(spark, path, columns, source or InputSource())
    parse = partial(
        _parse_batches,
        columns=columns,
        fmt=rules.timestamp_format,
        na_values=PANDAS_CSV_NA_VALUES if is_csv else frozenset(),
    )
    # Not cached: the file is read once to validate it, then again by the plan that uses it.
    parsed = raw.mapInPandas(parse, PARSED_SCHEMA)
    checked = _check(parsed, path, columns, rules)
    kept = parsed.where(_usable(rules.keep_zero_amounts))
    dropped, duplicates, used = dict(checked.dropped), 0, checked.kept
    if rules.drop_duplicate_rows or count:
        # The loader's duplicate rows: equal to another kept row in customer, timestamp and amount.
        distinct = kept.select("customer_id", "instant", "amount").distinct().count()
        duplicates = checked.kept - distinct
    if rules.drop_duplicate_rows:
        kept = kept.dropDuplicates(["customer_id", "instant", "amount"])
        log.info(f"{path}: dropped {duplicates:,} duplicate rows")
        if duplicates:
            dropped["duplicate_row"] = duplicates
            used -= duplicates
    orders = kept.groupBy("customer_id", "day").agg(F.sum("amount").alias("amount"))
    n_orders = n_customers = 0
    if count:
        sizes = orders.agg(
            F.count(F.lit(1)).alias("orders"), F.countDistinct("customer_id").alias("n")
        ).first()
        n_orders, n_customers = int(sizes["orders"]), int(sizes["n"])
    local = Path(path)
    report = DataReport(
        source=path,
        rows_read=checked.rows,
        rows_used=used,
        orders=n_orders,
        customers=n_customers,
        first_date=str((EPOCH + pd.Timedelta(days=checked.first_day)).date()),
        last_date=str((EPOCH + pd.Timedelta(days=checked.last_day)).date()),
        content_hash=file_sha256(local) if count and "://" not in path and local.is_file() else "",
        dropped=dropped,
        duplicate_rows=duplicates,
        has_amounts=True,
    )
    return _with_dates(orders), report


@dataclass(frozen=True)
class InputSource:
    """How Spark reads ``data.path``: ``format`` None = CSV or Parquet by extension; any format Spark
    reads (``orc``, ``json``, ``delta``, ...) with ``options``; ``table``: ``data.path`` names a table."""

    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_engine(cls, engine: DictConfig) -> InputSource:
        options = {str(k): str(v) for k, v in (engine.get("input_options") or {}).items()}
        return cls(engine.get("input_format"), options)


def _read_raw(
    spark: SparkSession, path: str, columns: list[str], source: InputSource
) -> tuple[DataFrame, bool]:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    kind = source.format
    if kind is None:
        suffix = PurePosixPath(path.rstrip("/")).suffix.lower()
        if suffix not in {".parquet", ".pq", ".csv", ".txt", ".gz"}:
            raise DataError(f"{path}: unsupported file extension '{suffix}'; use .csv or .parquet")
        kind = "parquet" if suffix in {".parquet", ".pq"} else "csv"
    is_csv = kind.lower() == "csv"
    try:
        if kind == "table":
            raw = spark.table(path)
        elif is_csv:
            raw = spark.read.option("header", True).options(**source.options).csv(path)
        else:
            raw = spark.read.format(kind).options(**source.options).load(path)
    except (PySparkException, Py4JJavaError) as exc:
        reason = re.search(r"\[([A-Z_.]+)\]", str(exc))
        if reason and reason.group(1).startswith(("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND")):
            raise DataError(f"{path}: {'table' if kind == 'table' else 'file'} not found") from None
        label = {"csv": "CSV", "parquet": "Parquet"}.get(kind.lower(), kind)
        detail = reason.group(1) if reason else str(exc).splitlines()[0]
        raise DataError(f"{path}: not readable by Spark as {label} ({detail})") from None
    if not raw.columns:
        raise DataError(f"{path}: file is empty (0 rows, no header)")
    require_columns(path, columns, raw.columns)
    selected = [raw[f"`{name}`"] for name in columns]
    selected[1] = _timestamps_as_text(raw, columns[1])
    return raw.select(*selected), is_csv


def _timestamps_as_text(raw: DataFrame, name: str) -> Column:
    """A Spark timestamp column as ISO 8601 text (with its offset when it has one), parsed on the
    executors like a CSV value: handed over as a timestamp, Arrow would convert it to nanoseconds and
    fail on dates after 2262 (placeholders such as 9999-12-31) before the loader's rules could see them."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    column = raw[f"`{name}`"]
    kind = raw.schema[name].dataType
    if isinstance(kind, TimestampType):
        return F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(name)
    if isinstance(kind, TimestampNTZType):
        return F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS").alias(name)
    return column


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
        bad = {
            "id": ids.isna(),
            "date": dates.isna(),
            "era": pd.Series(implausible_dates(dates), index=raw.index),
            "amount": amounts.isna(),
            "absurd": amounts.abs() > MAX_AMOUNT,
        }
        values = {
            "id": raw[id_column],
            "date": raw[timestamp_column],
            "era": raw[timestamp_column],
            "amount": raw[amount_column],
            "absurd": raw[amount_column],
        }
        # microseconds, Spark's own precision: nanoseconds would overflow after 2262 where pandas reads on
        known_dates = dates.where(~(bad["date"] | bad["era"]), EPOCH).astype("datetime64[us]")
        yield pd.DataFrame(
            {
                "customer_id": ids.astype(object).where(~bad["id"], None),
                "day": epoch_days(known_dates),
                "instant": known_dates.to_numpy().view("int64"),  # to recognise duplicate rows
                "amount": amounts.where(~bad["amount"], 0.0).astype("float64"),
                **{f"{name}_bad": flags.astype(bool) for name, flags in bad.items()},
                **{
                    f"{name}_example": values[name].astype(str).str.slice(0, 40).where(bad[name], None)
                    for name in bad
                },
            }
        )


def _with_dates(orders: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return orders.select("customer_id", F.date_from_unix_date("day").alias("date"), "amount")


def _usable(keep_zero_amounts: bool) -> Column:
    """Rows the loader keeps: nothing wrong with them and a positive (or, if kept, zero) amount."""
    from pyspark.sql import functions as F

    fine = ~F.greatest(*(F.col(f"{name}_bad") for name in PROBLEMS))
    return fine & ((F.col("amount") >= 0) if keep_zero_amounts else (F.col("amount") > 0))


@dataclass(frozen=True)
class CheckedRows:
    """What the validation pass found: rows read and kept, the usable rows' first and last day (days
    since 1970-01-01), and the dropped rows by the loader's reasons."""

    rows: int
    kept: int
    first_day: int
    last_day: int
    dropped: dict[str, int]


def _check(parsed: DataFrame, source: str, columns: list[str], rules: LoadingRules) -> CheckedRows:
    """One pass over the parsed rows: the loader's checks, in its order and with its messages; bad rows
    within ``rules.max_bad_row_share`` of the rows are dropped and counted as the loader counts them."""
    from pyspark.sql import functions as F

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    valid_amount = ~F.col("amount_bad")
    usable = _usable(rules.keep_zero_amounts)
    row = parsed.agg(
        F.count(F.lit(1)).alias("rows"),
        *(count(F.col(f"{n}_bad")).alias(f"{n}_bad") for n in PROBLEMS),
        *(F.first(f"{n}_example", ignorenulls=True).alias(f"{n}_example") for n in PROBLEMS),
        count(F.greatest(*(F.col(f"{n}_bad") for n in PROBLEMS))).alias("any_bad"),
        count(valid_amount & (F.col("amount") < 0)).alias("negative"),
        count(valid_amount & (F.col("amount") == 0)).alias("zero"),
        count(usable).alias("kept"),
        F.min(F.when(usable, F.col("day"))).alias("first_day"),
        F.max(F.when(usable, F.col("day"))).alias("last_day"),
    ).first()
    rows = int(row["rows"])
    if rows == 0:
        raise DataError(f"{source}: no rows (header only or empty table)")
    id_column, timestamp_column, amount_column = columns
    problems = {  # our flag -> (the loader's reason, column)
        "id": ("blank_customer_id", id_column),
        "date": ("bad_timestamp", timestamp_column),
        "era": ("implausible_timestamp", timestamp_column),
        "amount": ("bad_amount", amount_column),
        "absurd": ("absurd_amount", amount_column),
    }
    found = {name: int(row[f"{name}_bad"]) for name in PROBLEMS if row[f"{name}_bad"]}
    if found and int(row["any_bad"]) > rules.max_bad_row_share * rows:
        name = next(iter(found))
        reason, column = problems[name]
        example = f"e.g. {row[f'{name}_example']!r}"
        message = bad_rows_message(source, column, reason, found[name], rows, example)
        raise DataError(message + over_tolerance(rules.max_bad_row_share))
    dropped = {problems[name][0]: n for name, n in found.items()}
    if int(row["kept"]) == 0:
        raise DataError(f"{source}: column '{amount_column}' has no positive amount in {rows:,} rows")
    dropped["negative_amount"] = int(row["negative"])
    if not rules.keep_zero_amounts:
        dropped["zero_amount"] = int(row["zero"])
    log.info(f"{source}: {rows:,} rows read, dropped {dropped}")
    return CheckedRows(rows, int(row["kept"]), int(row["first_day"]), int(row["last_day"]), dropped)


def customer_features(orders: DataFrame, as_of: pd.Timestamp) -> DataFrame:
    """``features.customer_features`` in Spark: one row per customer with orders on or before ``as_of``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    day = F.lit(pd.Timestamp(as_of).normalize().date())
    seen = orders.where(F.col("date") <= day)
    if seen.limit(1).count() == 0:
        raise DataError(f"no orders on or before {as_of.date()}: nothing to build customer features from")
    # litt_days: log of the days since the customer's previous purchase day (null on the first), summed.
    # The window is partitioned by customer, so the grouping below needs no second shuffle.
    gap = F.datediff("date", F.lag("date").over(Window.partitionBy("customer_id").orderBy("date")))
    seen = seen.withColumn("log_gap", F.log(gap.cast("double")))
    grouped = seen.groupBy("customer_id").agg(
        F.min("date").alias("first"),
        F.max("date").alias("last"),
        F.count(F.lit(1)).alias("n"),
        F.sum("amount").alias("total"),
        F.min_by("amount", "date").alias("first_amount"),  # (customer, day) is unique: well defined
        F.sum("log_gap").alias("litt"),
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
        F.coalesce(F.col("litt"), F.lit(0.0)).alias("litt_days"),
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
