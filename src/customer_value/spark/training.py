"""``train engine=spark``: the order log stays in Spark; the driver gets only what the fits need.

What reaches the driver: the **pattern counts** of the whole base (distinct (x, t_x, T) with how many
customers share each) for the purchase model's calibration and full-history fits, and a **seeded sample**
of customers (``engine.sample_customers``) with their daily orders, on which everything else runs as in
the pandas engine: Gamma-Gamma, the learned layers' inner windows, the holdout metrics, the backtest folds
and the segment fit. A base no larger than the sample is collected whole, so both engines then see the
same orders and give the same answers. The sample always holds a customer with an order on the log's
first day and one on its last, so every window the pandas code derives from the orders' dates is the
whole base's. Segments and outputs for everyone are assigned afterwards with ``mlflow.pyfunc.spark_udf``
(``assign_everyone``).

pyspark is imported inside functions only, so the project works without the ``[spark]`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value.data.grouping import customer_codes, days_to_timestamps
from customer_value.data.loading import DataReport
from customer_value.errors import UserError
from customer_value.spark.features import InputSource, customer_features, read_orders_with_report

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

PATTERN_COLUMNS = ["frequency", "recency_days", "T_days"]


@dataclass
class SparkBase:
    """The whole base in Spark, and the seeded sample of it the driver holds (``orders``: as
    ``data.load_orders`` returns them, for the sampled customers only)."""

    spark: SparkSession
    everyone: DataFrame  # daily orders of every customer (cached)
    report: DataReport  # the whole log's
    orders: pd.DataFrame
    sampled_customers: int
    _patterns: dict[pd.Timestamp, pd.DataFrame] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return self.sampled_customers < self.report.customers

    def purchase_counts(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Every customer first seen by ``as_of`` grouped by (frequency, recency_days, T_days) as of that
        day, with ``customers`` per pattern and their summed ``litt_days`` (MBG/CNBD-k chooses k with it):
        the only form of the base the purchase model needs."""
        from pyspark.sql import functions as F

        day = pd.Timestamp(as_of).normalize()
        if day not in self._patterns:
            table = customer_features(self.everyone, day).groupBy(*PATTERN_COLUMNS)
            counts = table.agg(
                F.count(F.lit(1)).alias("customers"), F.sum("litt_days").alias("litt_days")
            ).toPandas()
            self._patterns[day] = counts.astype("float64")
        return self._patterns[day]


@contextlib.contextmanager
def spark_base(cfg: DictConfig) -> Iterator[SparkBase]:
    """Start (or join) the Spark session, read and validate the log in Spark, collect the sample; the
    session is stopped on every exit when it was started here."""
    from customer_value.spark.scoring import refuse_logs_without_amounts, require_pyspark, spark_session

    refuse_logs_without_amounts(cfg)
    require_pyspark()
    spark, created = spark_session(cfg.engine)
    try:
        with spark_errors_as_user_errors(cfg):
            spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
            source = InputSource.from_engine(cfg.engine)
            everyone, report = read_orders_with_report(spark, cfg.data, source=source)
            everyone = everyone.cache()
            sample = sample_orders(everyone, report, cfg.engine.sample_customers, cfg.seed)
            base = SparkBase(spark, everyone, report, sample, int(sample["customer_id"].cat.categories.size))
            log.info(
                "engine=spark (%s): %s orders of %s customers in Spark; %s customers on the driver%s",
                spark.sparkContext.master,
                f"{report.orders:,}",
                f"{report.customers:,}",
                f"{base.sampled_customers:,}",
                f" (seeded sample, engine.sample_customers={cfg.engine.sample_customers:,})"
                if base.sampled
                else " (the whole base)",
            )
        with spark_errors_as_user_errors(cfg):
            yield base
    finally:
        if created:
            spark.stop()


@contextlib.contextmanager
def spark_errors_as_user_errors(cfg: DictConfig) -> Iterator[None]:
    """A failing Spark job (an executor task that died, a file that vanished mid-read) ends the run with
    one line naming the data, not a JVM stack trace; the runs it was in are marked FAILED by their
    context managers as for any other error."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        java = getattr(exc, "java_exception", None)  # Py4JJavaError: the JVM's own message says why
        text = str(java) if java is not None else str(exc)
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        source = cfg.data.bundled or cfg.data.path
        raise UserError(f"{source}: the Spark job failed ({first[:300]})") from None


def sample_orders(everyone: DataFrame, report: DataReport, size: int, seed: int) -> pd.DataFrame:
    """The daily orders of a seeded sample of ``size`` customers (everyone when the base is no larger),
    plus one customer with an order on the log's first day and one on its last; as ``load_orders``
    returns orders: categorical ids (sorted categories), sorted by customer then date."""
    from pyspark.sql import functions as F

    if report.customers <= size:
        chosen = everyone
    else:
        keyed = everyone.select("customer_id").distinct()
        keyed = keyed.withColumn("_key", F.xxhash64("customer_id", F.lit(int(seed))))
        picked = keyed.orderBy("_key", "customer_id").limit(size).select("customer_id")
        ends = [
            everyone.where(F.col("date") == F.lit(pd.Timestamp(day).date()))
            .select("customer_id")
            .orderBy("customer_id")
            .limit(1)
            for day in (report.first_date, report.last_date)
        ]
        ids = functools.reduce(lambda a, b: a.union(b), ends, picked).distinct()
        chosen = everyone.join(F.broadcast(ids), "customer_id")
    frame = chosen.select("customer_id", F.unix_date("date").alias("day"), "amount").toPandas()
    return orders_frame(frame)


def orders_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Spark's (customer_id, day, amount) rows as the loader's orders frame."""
    codes, ids = customer_codes(frame["customer_id"].to_numpy(dtype=object))
    days = frame["day"].to_numpy(dtype="int64")
    order = np.lexsort((days, codes))
    return pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(codes[order], categories=pd.Index(ids)),
            "date": days_to_timestamps(days[order]),
            "amount": frame["amount"].to_numpy(dtype="float64")[order],
        },
        copy=False,
    )
