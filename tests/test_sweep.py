"""Sweeps through the real CLI: Hydra multirun, joblib launcher with 2 workers, a fresh SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _sweep(
    args: list[str], tmp_path: Path, uri: str, name: str = "multirun", parallel: bool = True
) -> subprocess.CompletedProcess:
    """A sweep as `make sweep` runs it (joblib, 2 workers) or, ``parallel=False``, as the plain
    `python -m customer_value.train hparams_search=...` does: Hydra's basic launcher, jobs one after another
    in the sweep's own process."""
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if parallel else []
    command = [
        sys.executable,
        "-m",
        "customer_value.train",
        *launcher,
        f"hydra.sweep.dir={tmp_path / name}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        # what a sweep's plumbing does not need: intervals, backtest folds, stability resamples, figures
        "clv.intervals.draws=0",
        "clv.backtest.folds=0",
        "segmentation.stability.bootstrap_resamples=0",
        "tracking.plots=false",
        *args,
    ]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_parallel_sweeps_group_their_runs_register_only_the_best_and_go_through_the_gate(
    orders_csv: Path, tmp_path: Path
) -> None:
    """Two workers on a store that does not exist yet: every job's runs recorded under one parent run per
    experiment, a failing cell (k=5000: more clusters than customers) reported without stopping the
    others, and one version per model registered: the best finished child's, through the gate. Then a
    second sweep on the same store, judged against the first one's champion: with the basic launcher (jobs
    in the sweep's process, what the plain command does), which also spares two workers' imports."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = _sweep(
        [
            "hparams_search=clv_grid",
            "data=file",
            f"data.path={orders_csv}",
            "clv=bgnbd,mbgnbd",
            "clv.penalizer=0.0",
            "segmentation.k_values=[]",
            "segmentation.n_clusters=6,5000",
        ],
        tmp_path,
        uri,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    assert result.stderr.count("error: ") == 2  # the two k=5000 cells, one line each
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    for experiment, metric, finished in (
        ("customer-clv", "holdout.revenue_spearman", 4),
        ("customer-segments", "segments.silhouette", 2),
    ):
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
        parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("sweep.role") == "child"]
        assert len(parents) == 1 and len(children) == 4
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
        assert sum(r.info.status == "FINISHED" for r in children) == finished
        assert parent.data.metrics["sweep.children"] == 4
        # Only runs whose whole job succeeded are candidates; the best of them is the registered one.
        candidates = [r for r in children if "sweep.candidate.score" in r.data.tags]
        assert len(candidates) == 2  # the k=6 jobs
        best = next(r for r in candidates if r.info.run_id == parent.data.tags["sweep.best_run_id"])
        best_score = float(best.data.tags["sweep.candidate.score"])
        assert best_score == max(float(r.data.tags["sweep.candidate.score"]) for r in candidates)
        assert best.data.metrics[metric] == pytest.approx(best_score)
        versions = client.search_model_versions(f"name = '{experiment}'")
        assert len(versions) == 1
        assert versions[0].run_id == best.info.run_id
        assert client.get_model_version_by_alias(experiment, "champion").version == versions[0].version
        assert versions[0].tags["sweep.id"] == parent.data.tags["sweep.id"]
        assert versions[0].description  # the model card

    # A second sweep: its jobs re-score the current champion on their own holdout; the best of the second
    # sweep is registered with that comparison, and the champion moves only if it is beaten.
    common = ["data=file", f"data.path={orders_csv}", "segmentation.k_values=[]", "segmentation.n_clusters=6"]
    second = _sweep(
        ["hparams_search=clv_grid", "clv=mbgnbd", "clv.penalizer=0.0,0.001", *common],
        tmp_path,
        uri,
        name="second-multirun",
        parallel=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    version = client.get_model_version("customer-clv", "2")
    assert version.tags["gate.champion_version"] == "1"
    champion_score = float(version.tags["gate.champion_score"])
    new_score = float(version.tags["gate.new_score"])
    expected = "champion" if new_score > champion_score else "challenger"
    assert str(client.get_model_version_by_alias("customer-clv", expected).version) == "2"
    assert "| champion v1 (same data) |" in version.description


def test_optuna_search_runs_trials_as_child_runs_and_registers_the_best(
    orders_csv: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = _sweep(
        [
            "hparams_search=clv_optuna",
            "hydra.sweeper.n_trials=2",
            "data=file",
            f"data.path={orders_csv}",
            "segmentation.k_values=[]",
            "segmentation.n_clusters=6",
        ],
        tmp_path,
        uri,
        parallel=False,  # the joblib launcher is the test above's; trials in the sweep's process here
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["customer-clv"], output_format="list")
    children = [r for r in runs if r.data.tags.get("sweep.role") == "child"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    best = max(r.data.metrics["holdout.revenue_spearman"] for r in children)
    # Optuna optimised what `main` returned: the run metric named by optimized_metric.
    assert f"Best value: {best}" in result.stdout + result.stderr
    version = MlflowClient(registry_uri=uri).get_model_version_by_alias("customer-clv", "champion")
    assert version.run_id in {r.info.run_id for r in children}
