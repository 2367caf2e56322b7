"""Shared fixtures: the bundled CDNOW data, generated orders, and a throw-away MLflow store per test."""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per test process (set before numpy loads, inherited by the jobs tests start):
# the suite runs on pytest-xdist workers (cores + 1), and a second thread spinning on a core another worker
# is using made scikit-learn's k-means on 800 customers 100 times slower (measured: 0.14 s a call).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from customer_value.data.loading import load_bundled  # noqa: E402
from customer_value.data.synthetic import generate_orders  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# Modules whose module-scoped fixture is a server or a JVM (10-30 s to start): run first, so that they stay
# on the first worker. Stealing takes tests from the end of a worker's queue; left in the middle, the Spark
# module was split between both workers and started two sessions.
SHARED_START_MODULES = ("test_spark_scoring.py", "test_team_server.py", "test_serving.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (those of SHARED_START_MODULES before the rest), each group in collection order.
    pytest-xdist's worksteal hands each worker a contiguous range and never steals a worker's last two
    tests: with the sweeps and the team server last (alphabetical), a worker could sit idle for a minute and
    a half at the end while the other ran them."""

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        slow = item.get_closest_marker("slow") is not None
        return (not slow, item.path.name not in SHARED_START_MODULES)

    items.sort(key=rank)


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


STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _use_store(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point MLflow (and the jobs a test starts) at ``uri`` for this test only: MLflow's setters also
    export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which would otherwise outlive the test."""
    for variable in STORE_VARIABLES:
        monkeypatch.setenv(variable, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def _store_copy(database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's own copy of ``database`` under ``tmp_path/mlruns``, MLflow pointed at it, with a default
    experiment (runs started without one would put artifacts in ./mlruns/0 of the checkout)."""
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(database, tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    _use_store(uri, monkeypatch)
    experiment = mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


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
    yield from _store_copy(empty_store, tmp_path, monkeypatch)


TRAINED_STORE_OVERRIDES = ["segmentation.n_clusters=4"]


@dataclass(frozen=True)
class TrainedStore:
    """A store in which ``train`` ran once on the generated 800-customer log: the default settings with
    four segments (``TRAINED_STORE_OVERRIDES``)."""

    database: Path
    orders_csv: Path
    artifact_root: Path
    metrics: dict[str, float]
    overrides: tuple[str, ...] = tuple(TRAINED_STORE_OVERRIDES)


@pytest.fixture(scope="session")
def trained_store(
    tmp_path_factory: pytest.TempPathFactory, synthetic_orders: pd.DataFrame, empty_store: Path
) -> TrainedStore:
    """One real training run per test process, shared by every test that only needs champions to read,
    score or serve (each gets its own copy of the database through ``trained_tracking_uri``)."""
    folder = tmp_path_factory.mktemp("trained-store")
    orders_csv = folder / "orders.csv"
    synthetic_orders.to_csv(orders_csv, index=False)
    return _train_store(folder, orders_csv, empty_store, TRAINED_STORE_OVERRIDES)


def _train_store(folder: Path, orders_csv: Path, empty_store: Path, extra: list[str]) -> TrainedStore:
    """``train`` once into a fresh store in ``folder`` (made read-only afterwards: tests take copies)."""
    from hydra import compose, initialize_config_dir

    from customer_value.jobs.train import train
    from customer_value.schema import CONF_DIR, register_configs

    database = folder / "mlflow.db"
    shutil.copyfile(empty_store, database)
    overrides = [
        "data=file",
        f"data.path={orders_csv}",
        f"tracking.uri=sqlite:///{database}",
        f"tracking.artifact_root={folder / 'artifacts'}",
        *extra,
    ]
    register_configs()
    exported = {variable: os.environ.get(variable) for variable in STORE_VARIABLES}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        metrics = train(compose(config_name="train", overrides=overrides))
    mlflow.set_tracking_uri(None)  # train pointed MLflow, and exported, at this store: not past here
    mlflow.set_registry_uri(None)
    for variable, value in exported.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    database.chmod(0o444)  # tests get copies: a write to this one is a bug (refused, except for root)
    return TrainedStore(database, orders_csv, folder / "artifacts", metrics, tuple(extra))


# A BG/NBD champion with covariates: 1,500 simulated customers whose channel and tenure_score move their
# purchase and dropout rates by known coefficients; the customer file also holds a protected column.
COVARIATE_OVERRIDES = [
    "clv=bgnbd",
    "clv.covariates.purchase=[channel,tenure_score]",
    "clv.covariates.dropout=[channel]",
    "clv.backtest.folds=0",
    "clv.intervals.draws=20",
    "segmentation.n_clusters=4",
    "segmentation.k_values=[]",
    "segmentation.stability.bootstrap_resamples=0",
]


@pytest.fixture(scope="session")
def covariate_store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> TrainedStore:
    """A store whose champions were trained with covariates from a customer file (``customers.csv`` beside
    the orders; ``overrides`` include its data.customers.path)."""
    from customer_value.data.synthetic import generate_covariate_world

    folder = tmp_path_factory.mktemp("covariate-store")
    world = generate_covariate_world(1_500, family="bgnbd", seed=3)
    orders_csv, customers_csv = folder / "orders.csv", folder / "customers.csv"
    world.orders.to_csv(orders_csv, index=False)
    genders = np.random.default_rng(3).choice(["female", "male"], len(world.customers))
    world.customers.assign(gender=genders).to_csv(customers_csv, index=False)
    return _train_store(
        folder, orders_csv, empty_store, [f"data.customers.path={customers_csv}", *COVARIATE_OVERRIDES]
    )


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its exit status and what it wrote to stderr (and stdout)."""

    returncode: int
    stderr: str
    stdout: str = ""


@pytest.fixture()
def job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[Callable[[], object], list[str], Path, str], Outcome]:
    """Run a job's ``main`` as its command would (``sys.argv``, working folder, environment) but in this
    process: a job's interpreter start is 7 s on a 2-core EPYC. An error that is not a user error reaches
    stderr as Hydra's traceback (the tests refuse it) or escapes ``main`` and fails the test. Tests where the
    process is the point (the CLI train and score, one bad input, kills, SIGTERM, sweeps) start the real
    commands instead."""
    from customer_value.schema import register_configs

    register_configs()

    def run(main: Callable[[], object], args: list[str], cwd: Path, uri: str) -> Outcome:
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setattr(sys, "argv", ["customer_value", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        written = capsys.readouterr()
        return Outcome(code, written.err, written.out)

    return run


@pytest.fixture()
def trained_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_store: TrainedStore) -> str:
    """``tracking_uri`` with both champions already registered: this test's own copy of the trained store's
    database (what it registers or logs stays here; the artifacts it adds go beside the shared ones)."""
    yield from _store_copy(trained_store.database, tmp_path, monkeypatch)
