"""Registered pyfunc models: round trip through a real MLflow store, a fresh process, and the gate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from customer_value.models.clv.bounds import MAX_HORIZON_DAYS
from customer_value.models.clv.btyd import INPUT_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS, CLVParams
from customer_value.models.clv.model import CLVModel
from customer_value.models.segments.explanations import explanation_columns
from customer_value.models.segments.segmentation import SEGMENT_FEATURES, SegmentModel
from customer_value.tracking import registry
from customer_value.tracking.pyfunc import clv_spec
from test_segmentation import planted_customers

PINNED = CLVParams(
    "bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, {"p": 6.25, "q": 3.74, "v": 15.44}, 7.0
)
LOAD_AND_PREDICT = """
import sys, json, mlflow, pandas as pd
uri, rows, out, calls = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
model = mlflow.pyfunc.load_model(uri)
for number, params in enumerate(calls):
    model.predict(pd.read_parquet(rows), params=params or None).to_parquet(f"{out}.{number}")
"""


def _customers() -> pd.DataFrame:
    features, _ = planted_customers(n_per_group=20)
    features["frequency"] = features["n_orders"] - 1
    features["recency_days"] = features["T_days"] - features["days_since_last"]
    features["monetary_value"] = np.where(features["frequency"] > 0, features["mean_order_value"], 0.0)
    return features


REFIT = CLVParams(
    "bgnbd",
    {"r": 0.3, "alpha": 5.0, "a": 0.6, "b": 2.0},
    {"p": 5.0, "q": 4.0, "v": 20.0},
    7.0,
    log_covariance=(np.eye(7) * 0.01).tolist(),  # so the registered model draws real intervals
)


def _clv_spec(horizon_days: float = 365.0) -> dict:
    """Calibration fit = the published CDNOW parameters; scoring (refit) = different ones."""
    calibration = CLVModel.from_params(PINNED, discount_rate=0.1, discount_step_days=30.4375)
    scoring = CLVModel.from_params(REFIT, discount_rate=0.1, discount_step_days=30.4375)
    return clv_spec(
        calibration,
        scoring,
        horizon_days=horizon_days,
        calibration_end="2024-01-01",
        trained_through="2024-06-30",
    )


def _predict_in_fresh_process(
    uri: str, rows: pd.DataFrame, tmp_path: Path, *calls: dict
) -> list[pd.DataFrame]:
    """The model loaded in one new interpreter, which predicts once per parameter set in ``calls``."""
    rows_path, out_path = tmp_path / "rows.parquet", tmp_path / "out.parquet"
    rows.reset_index(drop=True).to_parquet(rows_path)
    calls = calls or ({},)
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, uri, str(rows_path), str(out_path), json.dumps(calls)],
        check=True,
        timeout=300,
    )
    return [pd.read_parquet(f"{out_path}.{number}") for number in range(len(calls))]


def test_clv_model_round_trip_in_a_fresh_process(tracking_uri: str, tmp_path: Path) -> None:
    customers = _customers()
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)
    version = mlflow.register_model(info.model_uri, "customer-clv").version
    uri = f"models:/customer-clv/{version}"

    loaded = mlflow.pyfunc.load_model(uri)
    assert loaded.metadata.signature.inputs.required_input_names() == INPUT_COLUMNS
    assert loaded.metadata.signature.outputs.input_names() == [*PREDICTION_COLUMNS, *INTERVAL_COLUMNS]
    params = {p.name: p.default for p in loaded.metadata.get_params_schema().params}
    assert params == {"horizon_days": 365.0, "intervals": True}
    assert loaded.metadata.saved_input_example_info is not None

    # Scoring uses the refit; the calibration fit is kept for judging the version on a later holdout.
    expected = CLVModel.from_params(REFIT, 0.1, 30.4375).predict(customers, 180.0, intervals=True)
    fresh, without, default_horizon = _predict_in_fresh_process(
        uri,
        customers[INPUT_COLUMNS],
        tmp_path,
        {"horizon_days": 180.0},
        {"horizon_days": 180.0, "intervals": False},
        {},
    )
    pd.testing.assert_frame_equal(fresh, expected.reset_index(drop=True), check_dtype=False)
    assert (fresh["clv_high"] > fresh["clv_low"]).any()  # bootstrap draws, not a collapsed interval
    assert list(without.columns) == PREDICTION_COLUMNS
    judged = loaded.unwrap_python_model().evaluation_model().predict(customers, 180.0).reset_index(drop=True)
    calibration = CLVModel.from_params(PINNED, 0.1, 30.4375).predict(customers, 180.0).reset_index(drop=True)
    pd.testing.assert_frame_equal(judged, calibration)
    assert not np.allclose(judged["clv"], expected["clv"])
    assert (default_horizon["expected_purchases"] >= fresh["expected_purchases"]).all()
    assert (default_horizon["expected_purchases"] > fresh["expected_purchases"]).any()


def test_segments_model_round_trip_in_a_fresh_process(tracking_uri: str, tmp_path: Path) -> None:
    customers = _customers()
    model = SegmentModel(n_clusters=3, seed=0).fit(customers)
    with mlflow.start_run():
        info = registry.log_segments_model(model, customers)
    version = mlflow.register_model(info.model_uri, "customer-segments").version
    fresh, plain = _predict_in_fresh_process(
        f"models:/customer-segments/{version}", customers[SEGMENT_FEATURES], tmp_path, {}, {"reasons": False}
    )
    expected = model.predict(customers).reset_index(drop=True)
    assert list(fresh.columns) == ["segment", "segment_name", *explanation_columns(model)]  # why, by default
    assert list(plain.columns) == ["segment", "segment_name"]
    np.testing.assert_allclose(fresh.filter(like="margin_part.").sum(axis=1), fresh["segment_margin"])
    assert (fresh["segment"].to_numpy() == expected["segment"].to_numpy()).all()
    assert (fresh["segment_name"].to_numpy() == expected["segment_name"].to_numpy()).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(T_days=np.nan), "missing or non-numeric"),
        (lambda f: f.assign(frequency=-1.0), "negative"),
        (lambda f: f.assign(recency_days=f["T_days"] + 1), "recency_days > T_days"),
        (lambda f: f.iloc[0:0], "no customer rows"),
    ],
    ids=["nan", "negative", "recency-after-T", "empty"],
)
def test_clv_model_rejects_what_schema_enforcement_lets_through(
    tracking_uri: str, change, message: str
) -> None:
    customers = _customers()[INPUT_COLUMNS]
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(MlflowException, match=message) as caught:
        loaded.predict(change(customers.reset_index(drop=True)))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"  # a 400 from `mlflow models serve`


@pytest.mark.parametrize("horizon", [0.0, -5.0])
def test_clv_model_rejects_a_non_positive_horizon(tracking_uri: str, horizon: float) -> None:
    customers = _customers()[INPUT_COLUMNS].reset_index(drop=True)
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)
    with pytest.raises(MlflowException, match="horizon_days must be positive"):
        mlflow.pyfunc.load_model(info.model_uri).predict(customers, params={"horizon_days": horizon})


@pytest.mark.parametrize(
    ("horizon", "message"),
    [
        (1e9, "horizon_days=1e+09 is beyond the bound of 7,305 days (20 years)"),
        (float("inf"), "horizon_days=inf is beyond the bound of 7,305 days"),
        (float("nan"), "horizon_days must be positive, got nan"),
    ],
    ids=["1e9", "inf", "nan"],
)
def test_clv_model_refuses_a_horizon_beyond_the_bound_as_a_400(
    tracking_uri: str, horizon: float, message: str
) -> None:
    """The issue's horizon_days=1e9 held `mlflow models serve`'s only worker for minutes: refused at once."""
    customers = _customers()[INPUT_COLUMNS].reset_index(drop=True)
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(MlflowException, match=re.escape(message)) as caught:
        loaded.predict(customers, params={"horizon_days": horizon})
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"  # a 400 from `mlflow models serve`
    assert "\n" not in str(caught.value.message)


def test_a_horizon_at_the_bound_is_predicted(tracking_uri: str) -> None:
    """20 years = 240 monthly discount steps, intervals included: it completes with finite outputs
    (its cost is measured by `python -m customer_value.bench.bounds`, not asserted here)."""
    customers = _customers()[INPUT_COLUMNS].reset_index(drop=True).iloc[:12]
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    at_bound = loaded.predict(customers, params={"horizon_days": MAX_HORIZON_DAYS})
    year = loaded.predict(customers, params={"horizon_days": 365.0})
    assert np.isfinite(at_bound[[*PREDICTION_COLUMNS, *INTERVAL_COLUMNS]].to_numpy()).all()
    assert (at_bound["clv"] >= year["clv"]).all() and (at_bound["clv"] > year["clv"]).any()


def test_gate_moves_champion_only_for_a_better_comparable_score(tracking_uri: str) -> None:
    customers = _customers()
    with mlflow.start_run():
        info = registry.log_clv_model(_clv_spec(), customers)

    def register(score: float, comparable: bool = True) -> registry.GateDecision:
        champion = registry.champion_version("customer-clv", "champion")
        judgement = None
        if champion is not None:
            old = float(champion.tags["gate.new_score"]) if comparable else None
            judgement = registry.ChampionJudgement(str(champion.version), old, "test")
        return registry.register_with_gate(
            info.model_uri,
            "customer-clv",
            alias="champion",
            metric="m",
            new_score=score,
            champion=judgement,
            tags={"test": "yes"},
        )

    decisions = [register(0.5), register(0.5), register(0.4), register(0.9, comparable=False), register(0.6)]
    first, _, worse, not_compared, better = decisions
    assert [d.alias for d in decisions] == ["champion", "challenger", "challenger", "challenger", "champion"]
    assert not_compared.reason == "not compared: test"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("customer-clv", "champion").version) == better.version
    assert (
        str(client.get_model_version_by_alias("customer-clv", "challenger").version) == not_compared.version
    )
    tags = client.get_model_version("customer-clv", worse.version).tags
    assert tags["gate.champion_version"] == first.version
    assert tags["gate.champion_score"] == "0.5"
    assert tags["gate.reason"] == f"does not beat champion v{first.version}"
    assert tags["test"] == "yes"


def test_missing_champion_is_a_clear_registry_error(tracking_uri: str) -> None:
    with pytest.raises(registry.RegistryError, match="customer-clv@champion"):
        registry.require_champion("customer-clv", "champion")


def test_a_champion_that_cannot_be_rescored_is_not_compared() -> None:
    from customer_value.jobs.stage import Candidate
    from customer_value.jobs.train import _judge_safely

    def broken(version: str) -> registry.ChampionJudgement:
        raise TypeError("unexpected keyword argument 'r'")

    candidate = Candidate("run", "models:/m-1", "customer-clv", "m", 0.5, broken, {})
    judgement = _judge_safely(candidate, "3")
    assert judgement.score is None and judgement.version == "3"
    assert "could not be re-scored (TypeError" in judgement.reason
    assert registry.decide(0.9, judgement) == (False, f"not compared: {judgement.reason}")


def test_a_failure_that_is_not_about_the_old_champion_still_stops_the_job() -> None:
    from customer_value.jobs.stage import Candidate
    from customer_value.jobs.train import _judge_safely

    def out_of_memory(version: str) -> registry.ChampionJudgement:
        raise MemoryError

    candidate = Candidate("run", "models:/m-1", "customer-clv", "m", 0.5, out_of_memory, {})
    with pytest.raises(MemoryError):
        _judge_safely(candidate, "3")
