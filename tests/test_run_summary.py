"""Runs a reviewer can tell apart (issue 17, part 4): every training run's name says the stage, model,
data and window; its description puts the headline metrics beside their baselines; the Datasets panel
shows the file it trained on. Read from the session's real training run (``trained_store``)."""

from __future__ import annotations

import json
import re

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from customer_value.data.loading import file_sha256
from customer_value.tracking.run_summary import DIGEST_CHARS, description


def _runs(uri: str) -> dict[str, mlflow.entities.Run]:
    client = MlflowClient(uri)
    found = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            found[experiment.name] = run
    return found


@pytest.mark.slow  # reads the session's training run (one train per worker)
def test_training_runs_are_named_described_and_list_their_data(
    trained_tracking_uri: str, trained_store
) -> None:
    runs = _runs(trained_tracking_uri)
    clv, segments = runs["customer-clv"], runs["customer-segments"]
    orders = pd.read_csv(trained_store.orders_csv, parse_dates=["timestamp"])
    first = orders["timestamp"].min().date().isoformat()
    last = orders["timestamp"].max().date().isoformat()
    family = clv.data.tags["clv.family"]

    assert re.fullmatch(rf"clv {family} · file · {first}\.\.\d{{4}}-\d\d-\d\d", clv.info.run_name)
    assert segments.info.run_name.startswith("segments ") and segments.info.run_name.endswith(f"as of {last}")
    k = sum(1 for tag in segments.data.tags if tag.startswith("segment."))
    assert f" k={k} " in segments.info.run_name

    note = clv.data.tags["mlflow.note.content"]
    auc, baseline = clv.data.metrics["holdout.churn_auc"], clv.data.metrics["baseline.churn_auc"]
    assert f"| churn AUC | {auc:.4g} | {baseline:.4g} |" in note
    assert f"holdout to {last}" in note
    assert "| silhouette |" in segments.data.tags["mlflow.note.content"]

    for run in (clv, segments):
        (dataset,) = [entry.dataset for entry in run.inputs.dataset_inputs]
        assert dataset.name == "file"
        assert dataset.digest == file_sha256(trained_store.orders_csv)[:DIGEST_CHARS]
        assert str(trained_store.orders_csv) in dataset.source
        assert [column["name"] for column in json.loads(dataset.schema)["mlflow_colspec"]] == [
            "customer_id",
            "date",
            "amount",
        ]


def test_a_description_leaves_out_metrics_the_run_does_not_have() -> None:
    text = description("t", {"a": 0.5, "b": float("nan")}, [("A", "a", "b"), ("C", "c", None)])
    assert text.splitlines()[-1] == "| A | 0.5 |  |"
    assert "| C |" not in text
