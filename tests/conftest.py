"""Shared fixtures: the bundled CDNOW data, generated orders, and a throw-away MLflow store per test."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from customer_value.data.loading import load_bundled
from customer_value.data.synthetic import generate_orders

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cdnow_master() -> tuple[pd.DataFrame, object]:
    return load_bundled("cdnow_master")


@pytest.fixture(scope="session")
def synthetic_orders() -> pd.DataFrame:
    """About 3,000 orders of 800 customers drawn from known BG/NBD and Gamma-Gamma parameters."""
    return generate_orders(800, seed=7)


@pytest.fixture()
def orders_csv(tmp_path: Path, synthetic_orders: pd.DataFrame) -> Path:
    path = tmp_path / "orders.csv"
    synthetic_orders.to_csv(path, index=False)
    return path


@pytest.fixture()
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store and registry in a temporary folder (real MLflow, no mocks)."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Runs started without an experiment would put artifacts in ./mlruns/0 of the checkout.
    experiment = mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
