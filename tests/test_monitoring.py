"""Monitoring (issue 17, part 1): a scoring judged on what its customers did next.

The store tests score the session's trained store part-way through its generated log, so the log's
later orders are a future the test knows: the monitoring run's figures must equal a direct computation
from the raw file, and a future that no longer follows the past (its customers' ids shuffled) must make
monitoring recommend a retrain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import brier_score_loss, roc_auc_score

from customer_value.data.features import FEATURE_COLUMNS, customer_features
from customer_value.data.loading import load_transactions
from customer_value.errors import DataError
from customer_value.evaluation import monitoring
from customer_value.jobs.monitor import SCORE_COLUMNS, monitor, read_scoring
from customer_value.jobs.reporting import report_path
from customer_value.jobs.score import score
from customer_value.jobs.train import train
from test_end_to_end import PLUMBING_ONLY, _compose, _overrides

HORIZON_DAYS = 90


def test_elapsed_window_is_the_part_of_the_horizon_the_log_covers() -> None:
    as_of = pd.Timestamp("2024-03-31")
    assert monitoring.elapsed_window(as_of, 90, as_of) is None
    partial = monitoring.elapsed_window(as_of, 90, pd.Timestamp("2024-04-30 13:00"))
    assert partial is not None and partial.end == pd.Timestamp("2024-04-30") and partial.days == 30
    assert partial.share == pytest.approx(30 / 90)
    full = monitoring.elapsed_window(as_of, 90, pd.Timestamp("2025-01-01"))
    assert full is not None and full.days == 90 and full.share == 1.0


def test_retrain_verdict_watches_each_metric_in_its_own_direction() -> None:
    own = {"churn_auc": 0.80, "churn_brier": 0.15, "top_decile_revenue_capture": 0.5}
    tolerances = {"churn_auc": 0.05, "churn_brier": 0.02, "revenue_spearman": 0.05}
    assert monitoring.retrain_verdict({"churn_auc": 0.76, "churn_brier": 0.16}, own, tolerances) == []
    reasons = monitoring.retrain_verdict({"churn_auc": 0.70, "churn_brier": 0.20}, own, tolerances)
    assert [r.split()[0] for r in reasons] == ["churn_auc", "churn_brier"]
    assert "0.7 against its holdout 0.8" in reasons[0]
    # A metric one side lacks (revenue_spearman here) is not judged.
    assert monitoring.retrain_verdict({"revenue_spearman": 0.0}, own, tolerances) == []


def test_calibration_and_segment_tables_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    churn = rng.uniform(0, 1, n)
    realised = pd.DataFrame({"purchases": rng.poisson(1 - churn), "revenue": rng.gamma(2, 20, n)})
    predictions = pd.DataFrame(
        {"churn_probability": churn, "expected_purchases": 1 - churn, "expected_revenue": 40 * (1 - churn)}
    )
    deciles = monitoring.calibration_by_decile(churn, realised)
    order = np.argsort(churn, kind="stable")
    label = (realised["purchases"].to_numpy() == 0).astype(float)
    for decile, rows in enumerate(np.array_split(order, 10), start=1):
        assert deciles.loc[decile, "customers"] == len(rows)
        assert deciles.loc[decile, "predicted_churn"] == pytest.approx(churn[rows].mean())
        assert deciles.loc[decile, "realised_churn"] == pytest.approx(label[rows].mean())

    names = pd.Series(rng.choice(["Loyal", "Lost", "At risk"], n))
    table = monitoring.segment_outcomes(names, predictions, realised)
    for name in ("Loyal", "Lost", "At risk"):
        rows = (names == name).to_numpy()
        assert table.loc[name, "customers"] == rows.sum()
        assert table.loc[name, "realised_retention"] == pytest.approx(1 - label[rows].mean())
        assert table.loc[name, "predicted_retention"] == pytest.approx(1 - churn[rows].mean())
        assert table.loc[name, "realised_revenue"] == pytest.approx(realised["revenue"][rows].sum())
    without_amounts = monitoring.segment_outcomes(
        names, predictions.drop(columns="expected_revenue"), realised
    )
    assert "predicted_revenue" not in without_amounts.columns


def _direct(orders_csv: Path, as_of: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """What each customer first seen by ``as_of`` did in (as_of, end], from the raw file: purchase days
    (same-day orders are one purchase, as the loader merges them) and revenue."""
    raw = pd.read_csv(orders_csv, dtype={"customer_id": str}, parse_dates=["timestamp"])
    raw["day"] = raw["timestamp"].dt.normalize()
    known = raw.loc[raw["day"] <= as_of, "customer_id"].unique()
    later = raw[(raw["day"] > as_of) & (raw["day"] <= end)]
    grouped = later.groupby("customer_id")
    frame = pd.DataFrame({"purchases": grouped["day"].nunique(), "revenue": grouped["amount"].sum()})
    return frame.reindex(pd.Index(sorted(known), name="customer_id"), fill_value=0)


def _shuffled_future(orders_csv: Path, as_of: pd.Timestamp, output: Path) -> Path:
    """The same log up to ``as_of``; after it, every order handed to a random other customer: a future
    that no longer follows from the past, which is what a stale champion meets."""
    raw = pd.read_csv(orders_csv, dtype={"customer_id": str})
    later = pd.to_datetime(raw["timestamp"]).dt.normalize() > as_of
    ids = raw["customer_id"].unique()
    permuted = dict(zip(ids, np.random.default_rng(1).permutation(ids), strict=True))
    raw.loc[later, "customer_id"] = raw.loc[later, "customer_id"].map(permuted)
    raw.to_csv(output, index=False)
    return output


@pytest.mark.slow  # scores the session's trained store, then two monitoring runs
def test_monitoring_equals_a_direct_computation_and_a_stale_champion_is_told_to_retrain(
    trained_store, trained_tracking_uri: str, tmp_path: Path
) -> None:
    orders_csv = trained_store.orders_csv
    last = pd.read_csv(orders_csv, parse_dates=["timestamp"])["timestamp"].max().normalize()
    as_of = last - pd.Timedelta(days=150)
    output = tmp_path / "scores.parquet"
    data = _overrides(orders_csv, trained_tracking_uri, tmp_path)
    score(
        _compose(
            "score",
            [
                *data,
                f"score.as_of={as_of.date()}",
                f"score.output={output}",
                f"score.horizon_days={HORIZON_DAYS}",
                "score.intervals=false",
            ],
        )
    )
    assert report_path(output).is_file()

    results = monitor(_compose("monitor", [*data, f"monitor.scores=[{output}]"]))
    metrics = results[str(output)]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("customer-monitoring").experiment_id])
    assert run.info.status == "FINISHED"
    champion = client.get_model_version_by_alias("customer-clv", "champion")
    assert run.data.tags["clv_model_version"] == str(champion.version)
    assert float(run.data.params["elapsed_days"]) == HORIZON_DAYS

    # The direct computation: the champion asked for exactly the 90 days, judged on the raw file.
    actual = _direct(orders_csv, as_of, as_of + pd.Timedelta(days=HORIZON_DAYS))
    orders, _ = load_transactions(orders_csv)
    features = customer_features(orders, as_of)
    features.index = features.index.astype(str)
    assert features.index.equals(actual.index)
    model = mlflow.pyfunc.load_model(f"models:/customer-clv/{champion.version}")
    inputs = model.metadata.get_input_schema().required_input_names()
    predicted = model.predict(
        features[inputs].reset_index(drop=True), params={"horizon_days": float(HORIZON_DAYS)}
    )
    churned = (actual["purchases"].to_numpy() == 0).astype(int)
    churn = predicted["churn_probability"].to_numpy()
    assert metrics["realised.churn_auc"] == pytest.approx(roc_auc_score(churned, churn), rel=1e-12)
    assert metrics["realised.churn_brier"] == pytest.approx(brier_score_loss(churned, churn), rel=1e-12)
    errors = predicted["expected_purchases"].to_numpy() - actual["purchases"].to_numpy()
    assert metrics["realised.purchases_mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-12)
    revenue = actual["revenue"].to_numpy()
    error_pct = 100 * (predicted["expected_revenue"].sum() - revenue.sum()) / revenue.sum()
    assert metrics["realised.aggregate_revenue_error_pct"] == pytest.approx(error_pct, rel=1e-9)
    top = np.argsort(-predicted["expected_revenue"].to_numpy(), kind="stable")[
        : int(np.ceil(len(revenue) / 10))
    ]
    assert metrics["realised.top_decile_revenue_capture"] == pytest.approx(revenue[top].sum() / revenue.sum())
    assert (
        metrics["training.holdout.churn_auc"]
        == client.get_run(champion.run_id).data.metrics["holdout.churn_auc"]
    )
    assert run.data.tags["monitor.retrain_recommended"] == "false", run.data.tags["monitor.retrain_reason"]
    assert {"drift.psi.frequency", "drift.psi.T_days", "drift.psi.segment_shares"} <= set(metrics)
    assert run.data.tags["monitor.drift"] in {"stable", "moderate", "major"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/drift.png", "plots/churn_calibration.png", "plots/retention_by_segment.png"} <= artifacts
    segments = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/monitor/segments.csv")
    assert "realised_retention" in segments and "c0" not in segments
    page = report_path(output).read_text()
    assert "realised retention" in page and "not known yet" not in page

    stale_log = _shuffled_future(orders_csv, as_of, tmp_path / "shuffled.csv")
    stale_data = _overrides(stale_log, trained_tracking_uri, tmp_path)
    stale = monitor(_compose("monitor", [*stale_data, f"monitor.scores=[{output}]"]))[str(output)]
    newest = client.search_runs(
        [client.get_experiment_by_name("customer-monitoring").experiment_id], order_by=["start_time DESC"]
    )[0]
    assert stale["realised.churn_auc"] < metrics["realised.churn_auc"] - 0.1
    assert newest.data.tags["monitor.retrain_recommended"] == "true"
    assert newest.data.tags["monitor.retrain_reason"].startswith("churn_auc ")


def test_an_unusable_scoring_output_is_a_one_line_error(tmp_path: Path, orders_csv: Path) -> None:
    with pytest.raises(DataError, match=r"monitor.scores .*nope.parquet: no such file"):
        read_scoring(tmp_path / "nope.parquet")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['segment', 'segment_name'.*is it a scoring output"
    ):
        read_scoring(orders_csv)
    table = pd.DataFrame({column: ["x", "y"] for column in SCORE_COLUMNS})
    table["as_of"] = pd.to_datetime(["2024-01-01", "2024-02-01"])
    table.to_parquet(tmp_path / "two_days.parquet")
    with pytest.raises(DataError, match="column as_of holds 2 values, one expected"):
        read_scoring(tmp_path / "two_days.parquet")


def test_the_monitor_command_fails_in_one_line_before_any_run(tmp_path: Path) -> None:
    missing = tmp_path / "never_scored.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "customer_value.monitor", f"monitor.scores=[{missing}]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: monitor.scores {missing}: no such file (give a scoring output, score.output)"
    )
    assert not (tmp_path / "mlruns").exists()  # refused before the store was opened


@pytest.mark.slow  # trains on CDNOW (the published data is the point: issue 17's "done when")
def test_cdnow_scored_at_the_calibration_end_and_monitored_on_the_full_log_gives_the_holdout_figures(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A champion fit on CDNOW's calibration window (to 1997-09-30), scored as of that day for the 39
    weeks ahead, then monitored on the full log: the realised figures are the training run's holdout."""
    store = [f"tracking.uri={tracking_uri}", f"tracking.artifact_root={tmp_path / 'artifacts'}"]
    metrics = train(
        _compose(
            "train",
            [*store, "clv=bgnbd", "clv.refit_full_history=false", *PLUMBING_ONLY, "segmentation.k_values=[]"],
        )
    )
    output = tmp_path / "cdnow_scores.parquet"
    holdout_days = _holdout_days()
    score(
        _compose(
            "score",
            [
                *store,
                "score.as_of=1997-09-30",
                f"score.horizon_days={holdout_days}",
                f"score.output={output}",
            ],
        )
    )
    realised = monitor(_compose("monitor", [*store, f"monitor.scores=[{output}]"]))[str(output)]
    # CDNOW's 23,570 customers less the 70 whose only orders were worth $0 (dropped by default).
    assert realised["realised.customers"] == metrics["split.calibration_customers"] == 23_500
    assert len(pd.read_parquet(output)) == 23_500
    assert realised["realised.elapsed_share"] == 1.0
    for name in (
        "churn_auc",
        "churn_brier",
        "purchases_mae",
        "aggregate_purchase_error_pct",
        "top_decile_revenue_capture",
        "revenue_spearman",
        "aggregate_revenue_error_pct",
    ):
        assert realised[f"realised.{name}"] == pytest.approx(
            metrics[f"holdout.{name}"], rel=1e-9, abs=1e-12
        ), name
        assert realised[f"training.holdout.{name}"] == metrics[f"holdout.{name}"]
    # The scored base is the base the champion was fit to, so no input has drifted.
    inputs = [key for key in realised if key.startswith("drift.psi.") and key != "drift.psi.segment_shares"]
    assert len(inputs) == len(FEATURE_COLUMNS) and all(abs(realised[key]) < 1e-12 for key in inputs)
    page = report_path(output).read_text()
    assert "realised retention" in page and "Customer segments as of 1997-09-30" in page


def _holdout_days() -> float:
    """The CLV run's holdout length in days (39 weeks on CDNOW: 273)."""
    run = mlflow.search_runs(experiment_names=["customer-clv"], order_by=["start_time DESC"]).iloc[0]
    return float(run["params.split.holdout_days"])
