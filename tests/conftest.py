"""Shared fixtures: the bundled CDNOW data, generated orders, and a throw-away MLflow store per test."""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per test process (set before numpy loads, inherited by the jobs tests start):
# the suite runs on two pytest-xdist workers, and a second thread spinning on a core the other worker
# is using made scikit-learn's k-means on 800 customers 100 times slower (measured: 0.14 s a call).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from customer_value.data.loading import load_bundled  # noqa: E402
from customer_value.data.synthetic import generate_orders  # noqa: E402

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


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with every schema migration applied, made once per test process:
    creating a store runs MLflow's migrations, 4 s each time on a 2-core EPYC (the suite makes ~150)."""
    database = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments(max_results=1)
    return database


@pytest.fixture()
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A fresh SQLite tracking store and registry in a temporary folder (real MLflow, no mocks): a copy of
    the migrated empty store, which MLflow opens exactly as one it created itself."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Runs started without an experiment would put artifacts in ./mlruns/0 of the checkout.
    experiment = mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
