"""Segment membership a CRM can sync (issue 28, part 2): stable segment ids across retrains, the change set,
and a rescore of unchanged data changing nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from customer_value.crm.membership import apply_changes, assign_segment_ids, change_set, highest_issued
from customer_value.jobs import reporting
from customer_value.jobs import score as score_job
from customer_value.jobs import train as train_job
from test_end_to_end import PLUMBING_ONLY


def score_args(orders_csv: Path, output: Path, *extra: str) -> list[str]:
    """A quick scoring of the shared trained store's log (no intervals) into ``output``."""
    return ["data=file", f"data.path={orders_csv}", f"score.output={output}", "score.intervals=false", *extra]


def _scored(labels: np.ndarray, version: str, ids: list[str] | None = None) -> pd.DataFrame:
    ids = ids or [f"c{i}" for i in range(len(labels))]
    return pd.DataFrame(
        {
            "customer_id": ids,
            "segment": labels,
            "segment_name": [f"name {label}" for label in labels],
            "segments_model_version": version,
            "as_of": pd.Timestamp("2026-12-01"),
        }
    )


def test_a_retrained_model_that_renumbers_its_clusters_keeps_the_ids() -> None:
    rng = np.random.default_rng(0)
    old = rng.integers(0, 4, 10_000)
    first, issued = assign_segment_ids(_scored(old, "1"), None, 0)
    assert issued == 4 and first["customer_id"].is_unique and first["segment_id"].notna().all()
    # Version 2: the same clusters renumbered, 3 % of customers moved elsewhere.
    renumber = np.array([2, 0, 3, 1])
    new = renumber[old]
    moved = rng.random(len(new)) < 0.03
    new[moved] = rng.integers(0, 4, moved.sum())
    second, issued = assign_segment_ids(_scored(new, "2"), first, issued)
    kept = (second["segment_id"].to_numpy() == first["segment_id"].to_numpy()).mean()
    assert kept >= 0.95 and issued == 4  # no new id needed
    # Version 3 splits a segment in two: the larger part keeps the id, the other gets a new one (S5).
    split = new.copy()
    split[(new == 0) & (rng.random(len(new)) < 0.3)] = 4
    third, issued = assign_segment_ids(_scored(split, "3"), second, issued)
    assert issued == 5 and set(third["segment_id"]) == set(second["segment_id"]) | {"S5"}
    # Version 4 drops that new segment again; a later new segment gets S6, never S5 again.
    fourth, issued = assign_segment_ids(_scored(new, "4"), third, issued)
    assert "S5" not in set(fourth["segment_id"])
    fifth, issued = assign_segment_ids(_scored(split, "5"), fourth, highest_issued(fourth, issued))
    assert "S6" in set(fifth["segment_id"]) and "S5" not in set(fifth["segment_id"])


def test_the_change_set_takes_the_crm_from_the_previous_membership_to_the_current() -> None:
    rng = np.random.default_rng(1)
    before, issued = assign_segment_ids(_scored(rng.integers(0, 3, 500), "1"), None, 0)
    assert change_set(before, before).empty  # unchanged: nothing to sync
    labels = before["segment"].to_numpy().copy()
    labels[:40] = (labels[:40] + 1) % 3  # 40 move
    ids = [f"c{i}" for i in range(20, 520)]  # 20 left, 20 joined
    now, _ = assign_segment_ids(_scored(np.concatenate([labels[20:], [0] * 20]), "1", ids), before, issued)
    changes = change_set(before, now)
    counts = changes["change"].value_counts().to_dict()
    assert counts == {"added": 20, "removed": 20, "changed": 20}  # c20..c39 moved and stayed
    synced = apply_changes(before, changes)
    expected = now.set_index("customer_id")["segment_id"].sort_index()
    pd.testing.assert_series_equal(synced, expected, check_names=False)
    assert change_set(None, now)["change"].eq("added").all()


def test_a_rescore_of_unchanged_data_writes_an_empty_change_set(
    trained_tracking_uri: str, trained_store, tmp_path: Path, job
) -> None:
    output = tmp_path / "scores.parquet"
    args = score_args(trained_store.orders_csv, output, "score.report=false")
    first = job(score_job.main, args, tmp_path, trained_tracking_uri)
    assert first.returncode == 0, first.stderr[-2000:]
    membership = pd.read_parquet(reporting.membership_path(output))
    scores = pd.read_parquet(output)
    assert membership["customer_id"].is_unique and membership["customer_id"].notna().all()
    assert len(membership) == len(scores) and membership["segment_id"].str.fullmatch(r"S\d+").all()
    assert pd.read_parquet(reporting.changes_path(output))["change"].eq("added").all()
    again = job(score_job.main, args, tmp_path, trained_tracking_uri)
    assert again.returncode == 0, again.stderr[-2000:]
    assert pd.read_parquet(reporting.changes_path(output)).empty
    assert pd.read_csv(reporting.changes_path(output).with_suffix(".csv")).empty
    pd.testing.assert_frame_equal(pd.read_parquet(reporting.membership_path(output)), membership)


def test_a_failed_sink_leaves_every_output_as_it_was(
    trained_tracking_uri: str, trained_store, tmp_path: Path, job
) -> None:
    """The files are staged and swapped in only after the sink committed: a PostgreSQL that cannot be
    reached (or a password in the URL) is one line, and the previous scoring's files are untouched."""
    output = tmp_path / "scores.parquet"
    args = score_args(trained_store.orders_csv, output)
    assert job(score_job.main, args, tmp_path, trained_tracking_uri).returncode == 0
    before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert reporting.membership_path(output) in before and reporting.report_path(output) in before
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = job(
        score_job.main,
        [*args, f"score.sink=postgresql://crm@127.0.0.1:{port}/crm"],
        tmp_path,
        trained_tracking_uri,
    )
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert f"score.sink postgresql://crm@127.0.0.1:{port}/crm: cannot connect" in unreachable.stderr
    for url in (
        "postgresql://crm:hunter2@db.example/crm",
        "'postgresql://crm@db.example/crm?password=hunter2'",
    ):
        refused = job(score_job.main, [*args, f"score.sink={url}"], tmp_path, trained_tracking_uri)
        assert refused.returncode == 1 and "score.sink carries a password" in refused.stderr
        assert "hunter2" not in refused.stderr + refused.stdout
    shadowed = job(
        score_job.main,
        [
            *args,
            f"score.sink=postgresql://crm@127.0.0.1:{port}/crm",
            "score.sink_table=customer_value_sync_membership",
        ],
        tmp_path,
        trained_tracking_uri,
    )
    assert shadowed.returncode == 1 and "not starting with customer_value_sync_" in shadowed.stderr
    after = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert after == before  # same files, same bytes, no temporary file left behind


@pytest.mark.slow
def test_a_retrain_on_the_same_log_keeps_at_least_95_percent_of_segment_ids(
    trained_tracking_uri: str, trained_store, tmp_path: Path, job
) -> None:
    """Score, retrain both models with another seed (k-means may renumber its clusters), promote the new
    versions, rescore the same output: the membership is matched to the previous one by the customers."""
    output = tmp_path / "scores.parquet"
    data = ["data=file", f"data.path={trained_store.orders_csv}"]
    scoring = score_args(trained_store.orders_csv, output, "score.report=false")
    assert job(score_job.main, scoring, tmp_path, trained_tracking_uri).returncode == 0
    before = pd.read_parquet(reporting.membership_path(output)).set_index("customer_id")
    retrain = [*data, f"tracking.artifact_root={tmp_path / 'artifacts'}", "seed=7", *PLUMBING_ONLY]
    trained = job(train_job.main, [*retrain, *trained_store.overrides], tmp_path, trained_tracking_uri)
    assert trained.returncode == 0, trained.stderr[-2000:]
    client = MlflowClient(tracking_uri=trained_tracking_uri, registry_uri=trained_tracking_uri)
    for name in ("customer-clv", "customer-segments"):
        newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        client.set_registered_model_alias(name, "retrained", str(newest))
    rescored = job(score_job.main, [*scoring, "tracking.alias=retrained"], tmp_path, trained_tracking_uri)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    after = pd.read_parquet(reporting.membership_path(output)).set_index("customer_id")
    assert (after["segments_model_version"].astype(str) == "2").all()  # a new model, matched by customers
    kept = (after["segment_id"] == before["segment_id"].reindex(after.index)).mean()
    assert kept >= 0.95, f"{kept:.1%} of customers kept their segment id"
    changes = pd.read_parquet(reporting.changes_path(output))
    assert len(changes) == round((1 - kept) * len(after)) and changes["change"].eq("changed").all()
