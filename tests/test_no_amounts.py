"""Logs without amounts (visits, logins, bookings; issue 13 item 4): loaded without an amount column,
customer tables without value features, a purchase-only CLV model whose outputs are the purchase part of
a full model's, and metrics and gate metric that need no revenue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from customer_value.data.features import (
    FEATURE_COLUMNS,
    VALUE_FEATURES,
    calibration_and_holdout,
    customer_features,
    resolve_split,
)
from customer_value.data.loading import clean_transactions, load_transactions
from customer_value.data.log_shapes import generate_shape
from customer_value.data.sources import load_orders
from customer_value.errors import DataError, UserError
from customer_value.evaluation.holdout_metrics import evaluate_baseline, evaluate_clv, interval_metrics
from customer_value.jobs.clv_stage import _judge_clv_champion, train_clv
from customer_value.jobs.score import score, score_customers
from customer_value.jobs.stage import log_data_report
from customer_value.jobs.train import _register
from customer_value.models.clv.btyd import (
    PURCHASE_INPUT_COLUMNS,
    VALUE_COLUMNS,
    CLVParams,
    interval_columns,
    prediction_columns,
)
from customer_value.models.clv.churn_layer import PURCHASE_ONLY_FEATURES, fit_churn_layer
from customer_value.models.clv.inner_windows import inner_windows
from customer_value.models.clv.model import CLVModel
from customer_value.models.segments.segmentation import SegmentModel
from customer_value.schema import (
    PURCHASE_ONLY_GATE_METRIC,
    clv_metric_for,
    register_configs,
    validate_train_config,
)
from customer_value.tracking import registry, run_logging
from customer_value.tracking.pyfunc import clv_model_from_spec, clv_spec, spec_has_amounts

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def visits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("visits") / "visits.csv"
    generate_shape("no_amounts", customers=300).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def shop_orders() -> pd.DataFrame:
    """A log with amounts, and the same log as a visit log (amounts ignored)."""
    return generate_shape("quarter_cohort", customers=400)


def test_a_visit_log_loads_without_an_amount_column(visits_csv: Path) -> None:
    assert "amount" not in pd.read_csv(visits_csv, nrows=0).columns
    orders, report = load_transactions(visits_csv, amount=None)
    assert list(orders.columns) == ["customer_id", "date"]
    assert report.has_amounts is False and report.as_dict()["has_amounts"] is False
    assert report.dropped == {}  # zero and negative amount rules do not apply
    assert report.customers == 300 and report.orders == len(orders)
    assert not orders.duplicated().any() and orders["customer_id"].is_monotonic_increasing


def test_amount_null_on_a_log_with_amounts_ignores_them(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,timestamp,amount\na,2024-01-01,10\na,2024-01-01,-3\na,2024-02-01,0\nb,2024-01-05,x\n"
    )
    orders, report = load_transactions(path, amount=None)  # negative, zero and text amounts: all visits
    assert orders.to_dict("list") == {
        "customer_id": ["a", "a", "b"],
        "date": list(pd.to_datetime(["2024-01-01", "2024-02-01", "2024-01-05"])),
    }
    assert report.dropped == {} and report.merged_same_day == 1
    assert report.duplicate_rows == 1  # without amounts, equal in customer and timestamp is equal
    with pytest.raises(DataError, match="'amount'"):  # read as amounts, the text one is a bad row
        load_transactions(path)


def test_missing_timestamp_column_is_still_one_line(visits_csv: Path) -> None:
    with pytest.raises(DataError) as error:
        load_transactions(visits_csv, timestamp="visited_at", amount=None)
    message = str(error.value)
    assert "\n" not in message and "'visited_at'" in message and "visits.csv" in message


def test_customer_features_leave_the_value_columns_out(shop_orders: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    shop_orders.to_csv(path, index=False)
    full_orders, _ = load_transactions(path)
    visit_orders, _ = load_transactions(path, amount=None)
    as_of = full_orders["date"].max()
    full = customer_features(full_orders, as_of)
    visits = customer_features(visit_orders, as_of)
    assert list(visits.columns) == [c for c in FEATURE_COLUMNS if c not in VALUE_FEATURES]
    pd.testing.assert_frame_equal(visits, full.drop(columns=list(VALUE_FEATURES)))
    split = resolve_split(visit_orders, None, 0.5)
    _, holdout = calibration_and_holdout(visit_orders, split)
    assert list(holdout.columns) == ["purchases"]


def test_purchase_only_model_predicts_the_purchase_part_of_a_full_model(shop_orders: pd.DataFrame) -> None:
    orders, _ = clean_transactions(shop_orders, source="shop")
    visits, report = clean_transactions(shop_orders.drop(columns="amount"), source="visits", amount=None)
    assert not report.has_amounts
    as_of = orders["date"].max()
    full_table, visit_table = customer_features(orders, as_of), customer_features(visits, as_of)
    full = CLVModel().fit(full_table)
    purchase_only = CLVModel(spend_model=False).fit(visit_table)
    assert purchase_only.params_.spend is None and not purchase_only.has_spend
    assert purchase_only.params_.purchase == full.params_.purchase
    assert len(purchase_only.params_.log_covariance) == 4  # the purchase block only

    predicted = purchase_only.predict(visit_table, 180.0, intervals=True)
    expected_columns = [*prediction_columns(False), *interval_columns(False)]
    assert list(predicted.columns) == expected_columns
    assert not set(VALUE_COLUMNS) & set(predicted.columns)
    reference = full.predict(full_table, 180.0, intervals=True)
    exact = [c for c in expected_columns if not c.startswith("expected_purchases_")]  # bootstrap draws differ
    pd.testing.assert_frame_equal(predicted[exact], reference[exact])
    assert (predicted["expected_purchases_low"] <= predicted["expected_purchases"]).all()
    assert (predicted["expected_purchases"] <= predicted["expected_purchases_high"]).all()


def test_a_purchase_only_spec_round_trips_and_older_specs_still_have_a_spend_model(
    shop_orders: pd.DataFrame,
) -> None:
    visits, _ = clean_transactions(shop_orders.drop(columns="amount"), source="v", amount=None)
    table = customer_features(visits, visits["date"].max())
    model = CLVModel(spend_model=False, interval_draws=0).fit(table)
    spec = clv_spec(
        model, model, horizon_days=90.0, calibration_end="2024-01-01", trained_through="2024-06-01"
    )
    assert spec["has_amounts"] is False and spec["scoring_params"]["spend"] is None
    loaded = clv_model_from_spec(spec, "scoring_params")
    pd.testing.assert_frame_equal(
        loaded.predict(table[PURCHASE_INPUT_COLUMNS], 90.0), model.predict(table, 90.0)
    )
    older = {k: v for k, v in spec.items() if k != "has_amounts"}
    assert spec_has_amounts(older)
    assert CLVParams.from_dict(spec["scoring_params"]).fitted() == model.params_.purchase


def test_metrics_without_amounts_skip_revenue(shop_orders: pd.DataFrame) -> None:
    visits, _ = clean_transactions(shop_orders.drop(columns="amount"), source="v", amount=None)
    split = resolve_split(visits, None, 0.5)
    calibration, holdout = calibration_and_holdout(visits, split)
    model = CLVModel(spend_model=False, interval_draws=10).fit(calibration)
    predictions = model.predict(calibration, split.holdout_days, intervals=True)
    metrics = evaluate_clv(predictions, holdout) | interval_metrics(predictions, holdout)
    assert {"churn_auc", "churn_brier", "purchases_mae", "purchases_interval_coverage"} <= set(metrics)
    assert not [name for name in metrics if "revenue" in name or name.startswith("clv")]
    baseline = evaluate_baseline(calibration, holdout, split.holdout_days)
    assert "churn_auc" in baseline and not [name for name in baseline if "revenue" in name]


def test_the_churn_layer_learns_without_spend(shop_orders: pd.DataFrame) -> None:
    visits, _ = clean_transactions(shop_orders.drop(columns="amount"), source="v", amount=None)
    split = resolve_split(visits, None, 0.6)
    windows = inner_windows(
        visits, split.calibration_end, [91, 133], lambda table: CLVModel(spend_model=False).fit(table)
    )
    layer = fit_churn_layer(windows, seed=0)
    assert layer.features == PURCHASE_ONLY_FEATURES and "log_monetary" not in layer.features
    calibration, _ = calibration_and_holdout(visits, split)
    model = CLVModel(spend_model=False).fit(calibration)
    model.churn_layer_ = layer
    churn = model.predict(calibration, 90.0)["churn_probability"]
    assert churn.between(0, 1).all() and not churn.equals(
        model.predict(calibration, 90.0)["btyd_churn_probability"]
    )


@pytest.mark.parametrize(
    ("metric", "has_amounts", "expected"),
    [
        ("holdout.revenue_spearman", False, PURCHASE_ONLY_GATE_METRIC),
        ("holdout.top_decile_revenue_capture", False, PURCHASE_ONLY_GATE_METRIC),
        ("holdout.churn_auc", False, "holdout.churn_auc"),
        ("holdout.purchases_mae", False, "holdout.purchases_mae"),
        ("holdout.revenue_spearman", True, "holdout.revenue_spearman"),
    ],
)
def test_a_revenue_gate_metric_becomes_a_churn_metric_without_amounts(
    metric: str, has_amounts: bool, expected: str
) -> None:
    assert clv_metric_for(metric, has_amounts) == expected


def test_purchase_only_draws_and_intervals_stay_finite() -> None:
    frame = generate_shape("no_amounts", customers=200)
    visits, _ = clean_transactions(frame, source="v", amount=None)
    table = customer_features(visits, visits["date"].max())
    predicted = (
        CLVModel(spend_model=False, interval_draws=20).fit(table).predict(table, 365.0, intervals=True)
    )
    assert np.isfinite(predicted.to_numpy()).all()


def _compose(config: str, overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def _plant_champions(shop_csv: Path) -> None:
    """An amounts-trained CLV champion (v1) and a segments champion, logged and registered directly."""
    orders, _ = load_transactions(shop_csv)
    table = customer_features(orders, orders["date"].max())
    model = CLVModel(interval_draws=10).fit(table)
    spec = clv_spec(
        model, model, horizon_days=365, calibration_end="2000-01-01", trained_through="2000-01-01"
    )
    with mlflow.start_run():
        clv = registry.log_clv_model(spec, table)
        segments = registry.log_segments_model(SegmentModel(n_clusters=3).fit(table), table)
    for info, name in ((clv, "customer-clv"), (segments, "customer-segments")):
        registry.register_with_gate(
            info.model_uri, name, alias="champion", metric="m", new_score=0.0, champion=None, tags={}
        )


@pytest.mark.slow
def test_a_visit_log_registers_a_purchase_only_model_that_scores_without_value_columns(
    tracking_uri: str, tmp_path: Path
) -> None:
    shop_csv, visits_csv = tmp_path / "shop.csv", tmp_path / "visits.csv"
    generate_shape("quarter_cohort", customers=300).to_csv(shop_csv, index=False)
    generate_shape("no_amounts", customers=300).to_csv(visits_csv, index=False)
    _plant_champions(shop_csv)
    store = [f"tracking.uri={tracking_uri}", f"tracking.artifact_root={tmp_path / 'artifacts'}"]
    visits = ["data=file", f"data.path={visits_csv}", "data.columns.amount=null", *store]
    cfg = _compose("train", [*visits, "clv.backtest.folds=0", "clv.intervals.draws=20"])

    with run_logging.run(cfg.tracking.clv_experiment, cfg.tracking.artifact_root, None, {}) as run:
        orders, report = load_orders(cfg.data)
        log_data_report(report)
        metrics, candidate, outputs, _ = train_clv(cfg, orders, report)
    decision = _register(cfg, candidate)  # the amounts champion cannot be re-scored on visits: not compared
    assert (decision.version, decision.alias, decision.metric) == (
        "2",
        "challenger",
        PURCHASE_ONLY_GATE_METRIC,
    )
    assert "needs monetary inputs" in decision.reason
    # Never below recency: its ranking is the reference unless a candidate beats it on the backtest.
    assert metrics["holdout.churn_auc"] >= metrics["baseline.churn_auc"] > 0.5
    assert metrics["gate.loses_to_baseline"] == 0.0
    assert not [name for name in metrics if "revenue" in name or name.startswith("refit.p")]
    assert not set(VALUE_COLUMNS) & set(outputs.columns)
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["data.has_amounts"] == "false" and tags["clv.value_layer"].startswith("off")
    # The churn output is chosen among candidates that need no spend; no value layer is even tried.
    assert "clv.churn.selection" in tags and "clv.layers.value" not in tags
    assert tags["clv.primary_metric_substituted"].startswith("holdout.revenue_spearman -> holdout.churn_auc")

    client = MlflowClient()
    version = client.get_model_version("customer-clv", "2")
    assert "no value outputs" in version.description and "no amounts" in version.description
    assert version.tags["card.data.has_amounts"] == "false" and "no amounts" in version.tags["card.notes"]
    signature = mlflow.models.get_model_info("models:/customer-clv/2").signature
    assert signature.inputs.required_input_names() == PURCHASE_INPUT_COLUMNS
    assert signature.outputs.input_names() == [*prediction_columns(False), *interval_columns(False)]

    # A fresh process loads the registered model and scores three-column rows.
    rows = pd.DataFrame({"frequency": [0.0, 4.0], "recency_days": [0.0, 200.0], "T_days": [30.0, 300.0]})
    script = (
        "import sys, json, mlflow, pandas as pd; "
        "m = mlflow.pyfunc.load_model('models:/customer-clv/2'); "
        "out = m.predict(pd.read_json(sys.stdin).astype(float), params={'horizon_days': 90.0}); "
        "print(json.dumps(list(out.columns)))"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=rows.to_json(),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [*prediction_columns(False), *interval_columns(False)]

    # Promoted, it scores a shop log (the segments champion still has its amounts): no value columns.
    client.set_registered_model_alias("customer-clv", "champion", "2")
    shop = ["data=file", f"data.path={shop_csv}", *store]
    table = score_customers(_compose("score", [*shop, "score.intervals=false"]))
    assert list(table.columns[:3]) == ["customer_id", "segment", "segment_name"]
    assert set(prediction_columns(False)) <= set(table.columns) and not set(VALUE_COLUMNS) & set(
        table.columns
    )
    assert table["next_purchase_date"].notna().any() and len(table) == 300

    # The visit log cannot feed a segments model clustering on spend, nor an amounts CLV model: one line each.
    with pytest.raises(UserError, match=r"customer-segments v1 clusters on \['mean_order_value'\]"):
        score_customers(_compose("score", visits))
    client.set_registered_model_alias("customer-clv", "champion", "1")
    with pytest.raises(
        UserError, match=r"customer-clv v1 needs column\(s\) \['monetary_value', 'mean_order_value'\]"
    ):
        score_customers(_compose("score", visits))

    # The other way round: a purchase-only champion has no revenue metric to compare on a shop log.
    shop_orders, _ = load_transactions(shop_csv)
    split = resolve_split(shop_orders, "2025-02-01", 0.5)  # after the visit model's calibration end
    calibration, holdout = calibration_and_holdout(shop_orders, split)
    shop_cfg = _compose("train", shop)
    judgement = _judge_clv_champion(shop_cfg, "2", split, calibration, holdout, "holdout.revenue_spearman")
    assert judgement.score is None and "purchase-only" in judgement.reason
    assert "holdout.churn_auc" in judgement.metrics


def test_config_refuses_what_a_visit_log_cannot_give(visits_csv: Path, tmp_path: Path) -> None:
    visits = ["data=file", f"data.path={visits_csv}", "data.columns.amount=null"]
    with pytest.raises(UserError, match=r"segmentation.extra_features=\[clv\] needs amounts"):
        validate_train_config(_compose("train", [*visits, "segmentation.extra_features=[clv]"]))
    validate_train_config(_compose("train", [*visits, "segmentation.extra_features=[churn_probability]"]))
    spark = [*visits, "engine=spark", f"score.output={tmp_path / 's.parquet'}"]
    with pytest.raises(UserError, match="engine=spark reads logs with amounts only") as caught:
        score(_compose("score", spark))
    assert "\n" not in str(caught.value)
