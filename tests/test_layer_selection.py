"""Layers and backtest adapt to the history: derived windows, the keep check, the value layer's level."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

from customer_value.data.features import Split, calibration_and_holdout, resolve_split
from customer_value.data.loading import load_transactions
from customer_value.data.log_shapes import generate_shape
from customer_value.data.sources import load_orders
from customer_value.errors import ModelFitError
from customer_value.evaluation.backtest import plan_origins
from customer_value.evaluation.holdout_metrics import evaluate_clv
from customer_value.jobs.clv_stage import train_clv
from customer_value.models.clv.inner_windows import InnerWindow, choose_inner_horizons, inner_windows
from customer_value.models.clv.layer_selection import check_churn_layer, check_value_layer, select_layers
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.value_layer import (
    LEVEL_HORIZONS_DAYS,
    ValueLayer,
    fit_value_layer,
    level_with_purchase_model,
    value_layer_inputs,
)
from customer_value.schema import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
FIRST = pd.Timestamp("2024-01-01")


def _days(days: int) -> pd.Timestamp:
    return FIRST + pd.Timedelta(days=days)


def _loaded(tmp_path: Path, shape: str) -> pd.DataFrame:
    """A corpus shape as ``train`` reads it (same-day orders merged, zero amounts dropped)."""
    path = tmp_path / f"{shape}.csv"
    generate_shape(shape).to_csv(path, index=False)
    return load_transactions(path)[0]


def _btyd_at(model: CLVModel, features: pd.DataFrame):
    return lambda days: CLVModel.from_params(model.params_, 0.0, days).predict(features, days)


def test_inner_windows_that_do_not_fit_are_derived_from_the_calibration_window() -> None:
    configured = [182, 91, 133]
    # CDNOW: 272 days, its 182-day window leaves a third of them before the origin.
    assert choose_inner_horizons(FIRST, _days(272), configured) == ([91, 133, 182], "configured")
    horizons, why = choose_inner_horizons(FIRST, _days(45), configured)  # a three-month shop, split in half
    assert horizons == [11, 15, 22]
    assert "45-day calibration window" in why and "derived" in why
    horizons, why = choose_inner_horizons(FIRST, _days(20), configured)
    assert horizons == [] and "under 7 days" in why


def test_backtest_folds_adapt_to_a_short_history() -> None:
    long = Split(_days(365), _days(700))
    origins, why = plan_origins(long, folds=3, step_days=30, first_date=FIRST)
    assert why is None and [o.calibration_end for o in origins] == [_days(305), _days(335), _days(365)]
    short = Split(_days(45), _days(91))
    origins, why = plan_origins(short, folds=3, step_days=30, first_date=FIRST)
    assert [o.calibration_end for o in origins] == [_days(23), _days(34), _days(45)]
    assert all(o.holdout_days == short.holdout_days for o in origins)
    assert "3 folds 11 days apart" in why
    origins, why = plan_origins(short, folds=10, step_days=30, first_date=FIRST)  # steps under a week
    assert [o.calibration_end for o in origins] == [_days(24), _days(31), _days(38), _days(45)]
    origins, why = plan_origins(Split(_days(10), _days(20)), folds=3, step_days=30, first_date=FIRST)
    assert origins == [] and "do not fit either" in why


@pytest.fixture(scope="module")
def synthetic_windows(synthetic_orders: pd.DataFrame) -> tuple[list[InnerWindow], InnerWindow]:
    """Inner windows ending 91 days before the end of a generated log, and the check window after them."""
    orders = synthetic_orders.assign(date=synthetic_orders["timestamp"].dt.normalize())
    orders = orders.groupby(["customer_id", "date"], as_index=False)["amount"].sum()
    end = orders["date"].max() - pd.Timedelta(days=150)
    fit = lambda features: CLVModel().fit(features)  # noqa: E731
    train = inner_windows(orders, end - pd.Timedelta(days=91), [60, 91, 120], fit)
    (check,) = inner_windows(orders, end, [91], fit)
    return train, check


def test_a_layer_that_loses_the_check_is_dropped(synthetic_windows) -> None:
    """Layers taught the opposite of what happened (buyers labelled churners, revenue turned upside down)
    lose to the purchase model on the check window and are dropped, with the figures that decided it."""
    train, check = synthetic_windows
    inverted = []
    for window in train:
        outcome = window.outcome.assign(
            purchases=(window.outcome["purchases"] == 0).astype(float),
            revenue=window.outcome["revenue"].max() - window.outcome["revenue"],
        )
        inverted.append(replace(window, outcome=outcome))
    churn, value = check_churn_layer(inverted, check), check_value_layer(inverted, check)
    assert not churn.kept and churn.check["layer.churn_auc"] < churn.check["btyd.churn_auc"]
    assert churn.tag().startswith("dropped (91-day check: AUC")
    assert not value.kept
    assert value.check["layer.revenue_spearman"] < value.check["btyd.revenue_spearman"]
    # Levelled on the check window, the layer's total is the purchase model's there.
    assert value.check["layer.aggregate_revenue_error_pct"] == pytest.approx(
        value.check["btyd.aggregate_revenue_error_pct"], abs=1e-6
    )


def test_the_value_layer_keeps_the_purchase_models_level_at_every_horizon(synthetic_windows) -> None:
    """Re-ranking only: at each stored horizon the layer's total equals the purchase model's, in between
    it stays close, and the ranking is the unlevelled layer's."""
    train, check = synthetic_windows
    features = check.features
    model = CLVModel().fit(features)
    btyd_at = _btyd_at(model, features)
    raw = fit_value_layer(train)
    layer = level_with_purchase_model(raw, features, btyd_at)
    assert ValueLayer.from_dict(layer.as_dict()) == layer
    legacy = {k: v for k, v in layer.as_dict().items() if not k.startswith("level_")}
    assert ValueLayer.from_dict(legacy).level_shift(365.0) == 0.0  # a layer stored before the level

    for days in (*LEVEL_HORIZONS_DAYS[:4], 273.0, 1000.0):
        btyd = btyd_at(days)
        revenue = btyd["expected_revenue"].to_numpy()
        inputs = value_layer_inputs(features, btyd)
        levelled = layer.predict(inputs, revenue, days)
        tolerance = 1e-6 if days in LEVEL_HORIZONS_DAYS else 0.02
        assert levelled.sum() == pytest.approx(revenue.sum(), rel=tolerance), days
        assert spearmanr(levelled, raw.predict(inputs, revenue)).statistic == pytest.approx(1.0)


def test_layers_and_backtest_adapt_to_a_three_month_log(tmp_path: Path, tracking_uri: str) -> None:
    """A young shop trains: inner windows and backtest folds derived from its 45-day calibration window,
    every decision tagged, and without a kept value layer the revenue outputs are the purchase model's."""
    path = tmp_path / "orders.csv"
    generate_shape("three_months").to_csv(path, index=False)
    register_configs()
    overrides = ["data=file", f"data.path={path}", f"tracking.uri={tracking_uri}", "clv.intervals.draws=0"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with mlflow.start_run() as run:
        orders, report = load_orders(cfg.data)
        metrics, _, _, _ = train_clv(cfg, orders, report)
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.params["clv.layers.inner_horizons_used"] == "[11, 15, 22]"
    assert "derived" in logged.tags["clv.layers.inner_horizons"]
    assert "3 folds 11 days apart" in logged.tags["clv.backtest"]
    assert {"backtest.churn_auc.mean", "backtest.churn_auc.std"} <= set(metrics)
    decided = logged.tags.get("clv.layers.value", "")
    assert decided.startswith(("kept (", "dropped (")) or "clv.layers.skipped" in logged.tags
    assert "clv.layers.churn" not in logged.tags  # the churn layer is a candidate of clv.churn now
    # The churn output is chosen on windows derived from the 45-day calibration window, and says so.
    assert "the longest the history allows" in logged.tags["clv.churn.band_91"]
    if logged.tags["clv.layers"] == "none":
        for name in ("revenue_spearman", "aggregate_revenue_error_pct"):
            assert metrics[f"holdout.{name}"] == metrics[f"btyd.{name}"]


@pytest.mark.parametrize("shape", ["single_day_cohort", "six_years"])
def test_no_layer_makes_the_aggregate_revenue_error_worse(tmp_path: Path, shape: str) -> None:
    """The apparel-like single-day cohort and a six-year log (before: +46.8% with layers, +27.1% without)."""
    orders = _loaded(tmp_path, shape)
    split = resolve_split(orders, None, 0.5)
    calibration, holdout = calibration_and_holdout(orders, split)
    model = CLVModel().fit(calibration)
    plain = evaluate_clv(model.predict(calibration, split.holdout_days), holdout)
    selection = select_layers(
        orders,
        split.calibration_end,
        [91, 133, 182],
        lambda features: CLVModel().fit(features),
        ("churn", "value"),
        (calibration, _btyd_at(model, calibration)),
    )
    model.churn_layer_, model.value_layer_ = selection.churn, selection.value
    layered = evaluate_clv(model.predict(calibration, split.holdout_days), holdout)
    error, btyd_error = layered["aggregate_revenue_error_pct"], plain["aggregate_revenue_error_pct"]
    assert abs(error) <= abs(btyd_error) + 0.5, (selection.decisions, error, btyd_error)
    assert np.isfinite(error)


def test_without_the_check_every_layer_that_can_be_fitted_is_kept(tmp_path: Path) -> None:
    orders = _loaded(tmp_path, "quarter_cohort")
    split = resolve_split(orders, None, 0.5)
    calibration = calibration_and_holdout(orders, split)[0]
    model = CLVModel().fit(calibration)
    oldest_origin = split.calibration_end - pd.Timedelta(days=182)
    oldest_history = (oldest_origin - orders["date"].min()).days

    def fit(features: pd.DataFrame) -> CLVModel:
        """The purchase model, refused at the 182-day window's origin: that window is left out, said so."""
        if features["T_days"].max() <= oldest_history:
            raise ModelFitError("too little history before the oldest origin (this test's rule)")
        return CLVModel().fit(features)

    wanted, level_on = ("churn", "value"), (calibration, _btyd_at(model, calibration))
    checked = select_layers(orders, split.calibration_end, [91, 133, 182], fit, wanted, level_on)
    assert checked.churn is None and checked.value is None  # both lose the check on this log
    unchecked = select_layers(
        orders, split.calibration_end, [91, 133, 182], fit, wanted, level_on, check=False
    )
    assert unchecked.churn is not None and unchecked.value is not None
    assert unchecked.value.level_horizons_days and unchecked.decisions["churn"].tag() == (
        "kept (unchecked: clv.layers.check=false)"
    )
    assert unchecked.horizons_days == [91, 133] and "left out [182] days" in unchecked.horizons_reason


def test_a_weighted_resample_gives_the_drawn_rows_statistics_exactly() -> None:
    """The layers' paired bootstrap hands each resample over as multiplicities (issue 30: no sort per
    resample at a million customers); Spearman and AUC computed with them equal scipy's and sklearn's on
    the drawn rows, ties included."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from customer_value.evaluation.calibration import score_groups, weighted_auc
    from customer_value.models.clv.layer_selection import weighted_midranks, weighted_pearson

    rng = np.random.default_rng(8)
    n = 2_000
    actual = np.where(rng.random(n) < 0.6, 0.0, rng.gamma(2, 30, n)).round(0)  # many ties at 0
    predicted = (actual * rng.uniform(0.5, 1.5, n) + rng.gamma(1, 10, n)).round(1)
    label = (actual == 0).astype(float)
    for _ in range(5):
        rows = rng.integers(0, n, n)
        weight = np.bincount(rows, minlength=n).astype(float)
        ranks = [weighted_midranks(score_groups(v), weight) for v in (predicted, actual)]
        assert weighted_pearson(*ranks, weight) == pytest.approx(
            spearmanr(predicted[rows], actual[rows]).statistic, abs=1e-12
        )
        auc = weighted_auc(score_groups(predicted), weight * label, weight * (1 - label))
        assert auc == pytest.approx(roc_auc_score(label[rows], predicted[rows]), abs=1e-12)
