"""engine=spark against engine=pandas on generated data: same orders, same features, same scores.

One local SparkSession (local[2]) serves the slow tests of this module; real MLflow and real Spark, no
mocks. The fast tests need no pyspark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from customer_value.data.features import FEATURE_COLUMNS, customer_features, purchase_regularity
from customer_value.data.loading import LoadingRules, load_bundled, load_transactions
from customer_value.errors import DataError, UserError
from customer_value.jobs.score import score, score_customers
from customer_value.jobs.train import train
from customer_value.models.clv.btyd import INTERVAL_COLUMNS
from customer_value.schema import register_configs
from customer_value.spark import features as spark_features
from customer_value.spark import scoring as spark_scoring
from test_data import BAD_FILES

CONF = Path(__file__).resolve().parents[1] / "conf"
# Every JVM this module starts (Spark's launcher and drivers, the score command's too): C1 compiler only and
# one GC thread. The jobs here are small and short, and C2's compile threads competed with the other test
# worker for the cores (this module alone, 2-core Xeon: 176 s -> 134-150 s).
SHORT_JOB_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="module", autouse=True)
def short_job_jvm() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAVA_TOOL_OPTIONS", SHORT_JOB_JVM)
        yield


@pytest.fixture(scope="module")
def spark():
    # No skip: `make test` installs the [spark] extra, so a missing pyspark must fail, not hide the tests.
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("customer-value-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def _data(path: Path, *extra: str):
    return _compose("score", ["data=file", f"data.path={path}", *extra]).data


def _spark_orders(spark, data) -> pd.DataFrame:
    orders, _ = spark_features.read_orders(spark, data)
    table = orders.toPandas().sort_values(["customer_id", "date"], ignore_index=True)
    table["date"] = pd.to_datetime(table["date"])
    return table


def _assert_same_columns(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Every column equal: floats to 1e-9, dates to the second, the rest as text (missing = missing)."""
    for column in expected.columns:
        want, got = expected[column], actual[column]
        if pd.api.types.is_float_dtype(want):
            np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-9, atol=1e-12, err_msg=column)
        elif pd.api.types.is_datetime64_any_dtype(want):
            assert (pd.to_datetime(got).astype("datetime64[s]") == want.astype("datetime64[s]")).all(), column
        else:  # text; a missing value (a customer with fewer than three reasons) is missing on both sides

            def text(values: pd.Series) -> list[str | None]:
                return [None if pd.isna(v) else str(v) for v in values]

            assert text(got) == text(want), column


@pytest.fixture(scope="module")
def spark_champion(
    tmp_path_factory: pytest.TempPathFactory, synthetic_orders: pd.DataFrame, empty_store
) -> tuple[list[str], str]:
    """A champion that segments on CLV outputs and regularity, with covariates from a customer file (every
    input path: features, the covariate join, both CLV calls, regularity, segments, dates), trained once for
    this module's parity tests: their ``data`` overrides and the store. The customer file lacks one customer
    and has a blank channel, so both engines must fill them in alike."""
    folder = tmp_path_factory.mktemp("spark-champion")
    orders_csv, database = folder / "orders.csv", folder / "mlflow.db"
    synthetic_orders.to_csv(orders_csv, index=False)
    ids = synthetic_orders["customer_id"].unique()[1:]  # the first customer is not in the file
    rng = np.random.default_rng(4)
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "channel": rng.choice(["web", "email", "social"], len(ids)),
            "score": rng.normal(size=len(ids)),
        }
    )
    customers.loc[3, "channel"] = None
    customers.to_csv(folder / "customers.csv", index=False)
    shutil.copyfile(empty_store, database)
    tracking_uri, tmp_path = f"sqlite:///{database}", folder
    data = [
        "data=file",
        f"data.path={orders_csv}",
        f"data.customers.path={folder / 'customers.csv'}",
        f"tracking.uri={tracking_uri}",
    ]
    train(
        _compose(
            "train",
            [
                *data,
                f"tracking.artifact_root={tmp_path / 'artifacts'}",
                "segmentation.extra_features=[clv,churn_probability,regularity]",
                "segmentation.k_values=[]",
                "segmentation.n_clusters=4",
                "segmentation.stability.bootstrap_resamples=0",
                "clv.backtest.folds=0",
                "clv.intervals.draws=20",  # intervals still drawn in the UDF, at a fifth of the cost
                "tracking.plots=false",
                "clv.covariates.purchase=[channel,score]",
                "clv.covariates.dropout=[channel]",
            ],
        )
    )
    return data, tracking_uri


@pytest.mark.slow
def test_the_spark_score_command_writes_the_pandas_table(
    spark_champion: tuple[list[str], str], tmp_path: Path
) -> None:
    """The command a user runs, with its own local session (started and stopped by the job): the pandas
    engine's table at an earlier as_of (orders after it ignored the same way) and a horizon other than the
    champion's default, intervals included, written without staging leftovers. One core: one executor
    Python to start and load the models in, beside the module's own session."""
    data, tracking_uri = spark_champion
    scoring = [*data, "score.as_of=2024-03-01", "score.horizon_days=90"]
    expected = score_customers(_compose("score", scoring)).sort_values("customer_id", ignore_index=True)
    output = tmp_path / "cli" / "scores.parquet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "customer_value.score",
            *scoring,
            "engine=spark",
            "engine.master='local[1]'",
            "+engine.conf.spark.sql.shuffle.partitions=2",
            f"score.output={output}",
        ],
        cwd=tmp_path,
        env=os.environ | {"MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-> {output.as_uri()}" in result.stdout + result.stderr
    assert [p.name for p in output.parent.iterdir()] == ["scores.parquet"]  # no staging leftovers
    from_cli = pd.read_parquet(output).sort_values("customer_id", ignore_index=True)
    assert set(INTERVAL_COLUMNS) <= set(from_cli.columns)
    assert list(from_cli.columns) == list(expected.columns) and len(from_cli) == len(expected) < 800
    assert from_cli["customer_id"].tolist() == expected["customer_id"].tolist()
    _assert_same_columns(from_cli, expected)
    assert from_cli["next_purchase_date"].notna().any() and from_cli["segment"].nunique() > 1


def _string_ids(orders: pd.DataFrame) -> pd.DataFrame:
    """pandas loading returns customer ids as a categorical; Spark rows carry them as text."""
    return orders.assign(customer_id=orders["customer_id"].astype(str))


@pytest.mark.slow
def test_spark_reads_orders_like_pandas(spark, tmp_path: Path) -> None:
    """Same-day merging, dropped refunds and zero amounts, offsets in UTC, pandas' NA strings, Parquet."""
    text = (
        "cust,when,total\n"
        "a,2024-01-01T09:00:00,10\n"
        "a,2024-01-01T17:30:00,5\n"
        "a,2024-01-03T23:30:00-05:00,7.5\n"
        "b,2024-01-02,3\n"
        "b,2024-01-04,-2\n"
        "b,2024-01-05,0\n"
        "c,2024-01-06, 4.25\n"
    )
    path = tmp_path / "orders.csv"
    path.write_text(text)
    columns = ["data.columns.customer_id=cust", "data.columns.timestamp=when", "data.columns.amount=total"]
    for keep_zero in (False, True):
        data = _data(path, *columns, f"data.keep_zero_amounts={keep_zero}")
        expected, report = load_transactions(
            path,
            customer_id="cust",
            timestamp="when",
            amount="total",
            rules=LoadingRules(keep_zero_amounts=keep_zero),
        )
        pd.testing.assert_frame_equal(_spark_orders(spark, data), _string_ids(expected), check_dtype=False)
        assert spark_features.read_orders(spark, data)[1] == pd.Timestamp(report.last_date)

    frame = pd.DataFrame(
        {
            "customer_id": ["x", "x", "y", "y", "y"],
            "timestamp": pd.to_datetime(
                [
                    "2024-03-01 23:30",
                    "2024-03-05 01:00",
                    "2024-03-02 08:00",
                    "2024-03-09 08:00",
                    "2024-03-10 08:00",
                ]
            ).tz_localize("America/New_York"),
            "amount": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    parquet = tmp_path / "orders.parquet"
    frame.to_parquet(parquet)
    expected, _ = load_transactions(parquet)
    pd.testing.assert_frame_equal(
        _spark_orders(spark, _data(parquet)), _string_ids(expected), check_dtype=False
    )

    # A bundled dataset goes through pandas on the driver, then Spark.
    bundled = _compose("score", ["data=cdnow_sample"]).data
    expected_bundled, report = load_bundled("cdnow_sample")
    pd.testing.assert_frame_equal(
        _spark_orders(spark, bundled), _string_ids(expected_bundled), check_dtype=False
    )
    assert spark_features.read_orders(spark, bundled)[1] == pd.Timestamp(report.last_date)

    # Features and regularity, compared column by column with the pandas functions.
    orders, _ = spark_features.read_orders(spark, _data(parquet))
    as_of = pd.Timestamp("2024-03-09")
    got = spark_features.customer_features(orders, as_of).toPandas().set_index("customer_id").sort_index()
    pd.testing.assert_frame_equal(got[FEATURE_COLUMNS], customer_features(expected, as_of), check_names=False)
    regularity = spark_features.purchase_regularity(orders, pd.Timestamp("2024-03-10")).toPandas()
    want = purchase_regularity(expected, pd.Timestamp("2024-03-10"))
    assert regularity.set_index("customer_id")["regularity"].sort_index().to_dict() == pytest.approx(
        want.sort_index().to_dict(), nan_ok=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_files_fail_as_they_do_with_pandas(spark, tmp_path: Path, case: str) -> None:
    name, text, expected = BAD_FILES[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as pandas_error:
        load_transactions(path)
    with pytest.raises(DataError) as spark_error:
        spark_features.read_orders(spark, _data(path))
    message = str(spark_error.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message
    # Up to the example value (pandas also gives a row number), the messages are the same.
    assert message.split(" (e.g.")[0] == str(pandas_error.value).split(" (e.g.")[0] or case in {
        "csv named parquet",
        "missing column",
    }


@pytest.mark.slow
def test_tolerated_bad_rows_and_duplicates_are_handled_as_pandas_does(spark, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,timestamp,amount\n"
        "a,2024-01-01 09:00,10\n"
        "a,2024-01-01 09:00,10\n"  # the same order recorded twice
        "a,2024-01-01 17:00,10\n"  # another order that day
        "a,2024-02-01,5\n"
        " ,2024-01-03,4\n"  # blank id
        "b,not a date,3\n"
        "b,2024-01-05,ten\n"
        "b,2024-01-06,1e300\n"  # no single order is worth that
        "b,2024-01-07,7\n"
        "c,2024-01-08,-2\n"
        "c,2024-01-09,8\n"
        "c,9999-12-31,9\n"  # a placeholder for "unknown"
    )
    for drop in ("false", "true"):
        data = _data(path, "data.max_bad_row_share=0.5", f"data.drop_duplicate_rows={drop}")
        expected, report = load_transactions(
            path, rules=LoadingRules(max_bad_row_share=0.5, drop_duplicate_rows=drop == "true")
        )
        assert report.dropped["absurd_amount"] == report.dropped["implausible_timestamp"] == 1
        assert report.duplicate_rows == 1
        pd.testing.assert_frame_equal(_spark_orders(spark, data), _string_ids(expected), check_dtype=False)
    # Above the tolerance, the first problem's line (the loader's wording) says so.
    with pytest.raises(DataError) as pandas_error:
        load_transactions(path, rules=LoadingRules(max_bad_row_share=0.2))
    with pytest.raises(DataError) as spark_error:
        spark_features.read_orders(spark, _data(path, "data.max_bad_row_share=0.2"))
    assert "more than data.max_bad_row_share=0.2" in str(spark_error.value)
    assert str(spark_error.value).split(" (e.g.")[0] == str(pandas_error.value).split(" (e.g.")[0]


@pytest.mark.slow
@pytest.mark.parametrize("zone", [None, "Europe/Berlin"], ids=["naive", "with offset"])
def test_parquet_timestamps_beyond_2262_are_bad_rows_as_with_pandas(spark, tmp_path: Path, zone) -> None:
    """A Parquet timestamp column with a placeholder date: Arrow's nanoseconds cannot hold it, the loaders'
    rules must still see it (tolerated, or the same line)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    days = ["2024-01-01T09:00", "2024-02-01T23:30", "9999-12-31T00:00", "2024-01-05T00:00"]
    when = pd.to_datetime(days, format="ISO8601").as_unit("us")
    stamps = pa.array(when.tz_localize(zone) if zone else when, type=pa.timestamp("us", tz=zone))
    table = pa.table(
        {"customer_id": ["a", "a", "b", "b"], "timestamp": stamps, "amount": [1.0, 2.0, 3.0, 4.0]}
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)

    expected, report = load_transactions(path, rules=LoadingRules(max_bad_row_share=0.3))
    assert report.dropped["implausible_timestamp"] == 1
    got = _spark_orders(spark, _data(path, "data.max_bad_row_share=0.3"))
    pd.testing.assert_frame_equal(got, _string_ids(expected), check_dtype=False)
    with pytest.raises(DataError) as pandas_error:
        load_transactions(path)
    with pytest.raises(DataError) as spark_error:
        spark_features.read_orders(spark, _data(path))
    assert str(spark_error.value).split(" (e.g.")[0] == str(pandas_error.value).split(" (e.g.")[0]


def test_na_strings_follow_pandas() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    assert spark_features.PANDAS_CSV_NA_VALUES == STR_NA_VALUES


def test_engine_conf_is_flattened_to_spark_settings() -> None:
    conf = OmegaConf.create({"spark": {"executor": {"memory": "4g"}}, "spark.ui.enabled": False})
    assert spark_scoring.spark_settings(conf) == {"spark.executor.memory": "4g", "spark.ui.enabled": "false"}


def test_pandas_only_options_are_refused_before_spark_starts(tmp_path: Path) -> None:
    base = ["engine=spark", "data=file", f"data.path={tmp_path / 'o.csv'}"]
    with pytest.raises(UserError, match="Parquet directory"):
        score(_compose("score", [*base, f"score.output={tmp_path / 's.csv'}"]))
    with pytest.raises(UserError, match="pandas-engine only"):
        score(_compose("score", [*base, f"score.previous={tmp_path / 'old.parquet'}"]))


def test_a_missing_spark_extra_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # what `import pyspark` meets without the extra
    cfg = _compose("score", ["engine=spark", "data=file", f"data.path={tmp_path / 'o.csv'}"])
    with pytest.raises(UserError) as caught:
        score(cfg)
    assert str(caught.value) == "engine=spark needs the [spark] extra: pip install -e '.[spark]'"


# --- train engine=spark ----------------------------------------------------------------------------------


def _registered(tracking_uri: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Each registered model's champion version and the ``registered.*`` gate tags of its run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = {}
    for model in client.search_registered_models():
        version = client.get_model_version_by_alias(model.name, "champion")
        tags = client.get_run(version.run_id).data.tags
        found[model.name] = (version.version, {k: v for k, v in tags.items() if k.startswith("registered.")})
    return found


@pytest.mark.slow
def test_spark_training_gives_the_pandas_answers(spark, trained_store, empty_store, tmp_path: Path) -> None:
    """Below engine.sample_customers the driver holds the whole base: the same fitted parameters (the
    purchase model fitted to pattern counts grouped in Spark), metrics, registered versions and gate
    decisions as the pandas engine's run (the session's trained store), plus everyone's segments assigned
    by spark_udf, which match the pandas segment sizes."""
    database = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, database)
    uri = f"sqlite:///{database}"
    metrics = train(
        _compose(
            "train",
            [
                "data=file",
                f"data.path={trained_store.orders_csv}",
                f"tracking.uri={uri}",
                f"tracking.artifact_root={tmp_path / 'artifacts'}",
                "engine=spark",
                *trained_store.overrides,
                "tracking.plots=false",  # figures change no metric or version
            ],
        )
    )
    expected = trained_store.metrics
    assert set(metrics) - set(expected) == {k for k in metrics if k.startswith("everyone.")}
    assert set(expected) <= set(metrics)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    assert metrics["everyone.customers"] == 800
    shares = sorted(v for k, v in metrics.items() if k.startswith("everyone.segment."))
    sizes = sorted(v for k, v in expected.items() if k.startswith("segments.size.") and k.count(".") == 2)
    assert sizes and shares == pytest.approx([s / 800 for s in sizes])
    assert _registered(uri) == _registered(f"sqlite:///{trained_store.database}")


@pytest.mark.slow  # a JVM: the design keeps Spark out of the fast suite
def test_spark_sample_is_seeded_and_spans_the_log(
    spark, synthetic_orders: pd.DataFrame, tmp_path: Path
) -> None:
    """Above engine.sample_customers: a seeded sample of that many customers (plus one on the log's first
    and one on its last day), their orders exactly the loader's, and the same sample every time."""
    from customer_value.spark.training import sample_orders

    path = tmp_path / "orders.csv"
    synthetic_orders.to_csv(path, index=False)
    everyone, report = spark_features.read_orders_with_report(spark, _data(path))
    orders, expected_report = load_transactions(path, timestamp="timestamp")
    assert report == expected_report
    first = sample_orders(everyone, report, 100, seed=3)
    again = sample_orders(everyone, report, 100, seed=3)
    other = sample_orders(everyone, report, 100, seed=4)
    pd.testing.assert_frame_equal(first, again)
    ids = set(first["customer_id"].cat.categories)
    assert 100 <= len(ids) <= 102 and ids != set(other["customer_id"].cat.categories)
    assert first["date"].min() == orders["date"].min() and first["date"].max() == orders["date"].max()
    mine = orders[orders["customer_id"].isin(ids)].reset_index(drop=True)
    mine["customer_id"] = mine["customer_id"].cat.remove_unused_categories()
    pd.testing.assert_frame_equal(first, mine, check_exact=False, rtol=1e-12)


def _bad_amounts(orders: pd.DataFrame, folder: Path) -> Path:
    path = folder / "orders.csv"
    bad = orders.astype({"amount": object})
    bad.loc[: len(bad) // 2, "amount"] = "n/a?"
    bad.to_csv(path, index=False)
    return path


def _corrupt_part(orders: pd.DataFrame, folder: Path) -> Path:
    """A Parquet directory whose second part file is garbage: an executor task fails reading it."""
    path = folder / "orders.parquet"
    path.mkdir()
    orders.to_parquet(path / "part-0.parquet", index=False)
    good = (path / "part-0.parquet").read_bytes()
    (path / "part-1.parquet").write_bytes(good[:4] + b"x" * 2000 + good[-8:])
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (_bad_amounts, DataError, r"orders\.csv: column 'amount'"),
        (_corrupt_part, UserError, r"orders\.parquet: the Spark job failed \(.*FAILED_READ_FILE"),
    ],
    ids=["bad file", "failing executor task"],
)
def test_a_failing_spark_training_is_one_line_failed_and_registers_nothing(
    spark, synthetic_orders: pd.DataFrame, empty_store, tmp_path: Path, make, error, match
) -> None:
    """A bad file, or an executor task that fails: one line, the run FAILED, no model registered, and the
    session the job joined still running."""
    from mlflow import MlflowClient

    path = make(synthetic_orders, tmp_path)
    database = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, database)
    uri = f"sqlite:///{database}"
    config = _compose("train", ["data=file", f"data.path={path}", f"tracking.uri={uri}", "engine=spark"])
    with pytest.raises(error, match=match) as raised:
        train(config)
    assert "\n" not in str(raised.value)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["FAILED"]
    assert client.search_registered_models() == []
    assert spark.range(3).count() == 3  # a session the job joined is left running


@pytest.mark.slow  # a JVM: the design keeps Spark out of the fast suite
def test_spark_reads_other_formats_and_tables(spark, synthetic_orders: pd.DataFrame, tmp_path: Path) -> None:
    """engine.input_format: an ORC directory and a table (here a temporary view) read as the CSV is."""
    path = tmp_path / "orders.csv"
    synthetic_orders.to_csv(path, index=False)
    expected = _spark_orders(spark, _data(path))
    frame = spark.read.option("header", True).csv(str(path))
    frame.write.orc(str(tmp_path / "orders_orc"))
    frame.createOrReplaceTempView("orders_view")
    for source, where in (("orc", tmp_path / "orders_orc"), ("table", "orders_view")):
        orders, _ = spark_features.read_orders(spark, _data(where), spark_features.InputSource(source))
        table = orders.toPandas().sort_values(["customer_id", "date"], ignore_index=True)
        table["date"] = pd.to_datetime(table["date"])
        pd.testing.assert_frame_equal(table, expected)
    with pytest.raises(DataError, match="no_such_table: table not found"):
        spark_features.read_orders(spark, _data("no_such_table"), spark_features.InputSource("table"))
