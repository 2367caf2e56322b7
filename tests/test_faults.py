"""Issue 7 faults and concurrency, with real processes and a real SQLite store: a train killed mid-run
registers nothing and the next run works; two trains at once both record their runs; an unreachable
tracking server fails fast with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
MODELS = ("customer-clv", "customer-segments")


def _train_command(orders_csv: Path, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "customer_value.train",
        "data=file",
        f"data.path={orders_csv}",
        f"tracking.artifact_root={folder / 'artifacts'}",
        f"hydra.run.dir={folder / 'outputs' / str(time.monotonic_ns())}",
    ]


def _env(uri: str) -> dict[str, str]:
    return os.environ | {"MLFLOW_TRACKING_URI": uri}


def _versions(uri: str) -> dict[str, list[str]]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    return {m: sorted(v.version for v in client.search_model_versions(f"name='{m}'")) for m in MODELS}


def test_train_killed_mid_run_registers_nothing_and_the_next_run_works(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    first = subprocess.run(
        _train_command(orders_csv, tmp_path), env=_env(tracking_uri), capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    before = _versions(tracking_uri)
    champion = MlflowClient().get_model_version_by_alias("customer-clv", "champion").version

    victim = subprocess.Popen(
        _train_command(orders_csv, tmp_path),
        env=_env(tracking_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert victim.stdout is not None
    for line in victim.stdout:  # kill it once it is fitting, well before registration
        if "data:" in line:
            break
    time.sleep(2.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert _versions(tracking_uri) == before
    assert MlflowClient().get_model_version_by_alias("customer-clv", "champion").version == champion

    after = subprocess.run(
        _train_command(orders_csv, tmp_path), env=_env(tracking_uri), capture_output=True, text=True
    )
    assert after.returncode == 0, after.stderr
    assert all(len(v) == len(before[m]) + 1 for m, v in _versions(tracking_uri).items())


def test_two_trains_at_once_on_a_fresh_sqlite_store_both_record_their_runs(
    orders_csv: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not created yet: both processes race to create it
    processes = [
        subprocess.Popen(
            _train_command(orders_csv, tmp_path),
            env=_env(uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=900), *p.communicate()) for p in processes]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "database is locked" not in stderr
    mlflow.set_tracking_uri(uri)
    for experiment in MODELS:
        runs = mlflow.search_runs(experiment_names=[experiment])
        assert len(runs) == 2 and (runs["status"] == "FINISHED").all()
    versions = _versions(uri)
    assert all(len(v) == 2 for v in versions.values())
    client = MlflowClient()
    for model in MODELS:  # an alias names one version: one champion, whichever registered first or won
        aliases = [a for version in versions[model] for a in client.get_model_version(model, version).aliases]
        assert aliases.count("champion") == 1, aliases


def test_an_unreachable_tracking_server_fails_fast_with_one_line(orders_csv: Path, tmp_path: Path) -> None:
    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    start = time.monotonic()
    result = subprocess.run(
        [*_train_command(orders_csv, tmp_path), f"tracking.uri={uri}"],
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - start
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0], result.stderr[-2000:]
    assert took < 60
