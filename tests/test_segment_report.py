"""The segment report marketing opens (issue 17, part 3), checked in a real headless Chromium: it renders,
every segment appears with its KPIs, every embedded image loads, nothing is fetched, no customer id."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from browser import render, screenshot
from customer_value.evaluation.segment_report import ReportInputs
from customer_value.evaluation.segment_report import render as render_page
from customer_value.jobs.monitor import monitor
from customer_value.jobs.reporting import REPORT_ARTIFACT, report_path
from customer_value.jobs.score import score
from test_end_to_end import _compose, _overrides


def _self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page), "the page fetches something"


def _profile() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment_name": ["Champions", "At risk", "Lost"],
            "recommended_action": ["Reward", "Win back now", "Suppress"],
            "customers": [120, 300, 580],
            "share": [0.12, 0.30, 0.58],
            "mean_days_since_last": [12.0, 140.0, 400.0],
            "mean_clv": [310.0, 80.0, 4.0],
            "mean_churn_probability": [0.1, 0.5, 0.9],
            "value_share": [0.55, 0.40, 0.05],
        },
        index=pd.Index([0, 1, 2], name="segment"),
    )


def test_a_rendered_report_shows_every_segment_and_loads_its_images(tmp_path: Path) -> None:
    figure = Figure(figsize=(3, 2))
    figure.subplots().plot([0, 1], [1, 0])
    outcomes = pd.DataFrame(
        {"predicted_retention": [0.9, 0.5, 0.1], "realised_retention": [0.85, 0.45, 0.12]},
        index=["Champions", "At risk", "Lost"],
    )
    page = render_page(
        ReportInputs(
            "Segments as of 2024-06-30", {"data": "test"}, _profile(), outcomes, figures={"a plot": figure}
        )
    )
    _self_contained(page)
    path = tmp_path / "report.html"
    path.write_text(page)
    shown = render(path, tmp_path)
    assert shown.title == "Segments as of 2024-06-30"
    assert shown.segments == ["Champions", "At risk", "Lost"]
    assert shown.images == shown.loaded == 1
    for kpi in ("Win back now", "58.0%", "realised retention", "85.0%", "share of predicted value", "55.0%"):
        assert kpi in shown.text


@pytest.mark.slow  # scores the session's trained store twice and monitors the earlier scoring
def test_scoring_and_training_reports_open_in_a_browser_with_every_segment(
    trained_store, trained_tracking_uri: str, tmp_path: Path
) -> None:
    orders_csv = trained_store.orders_csv
    last = pd.read_csv(orders_csv, parse_dates=["timestamp"])["timestamp"].max().normalize()
    earlier, latest = tmp_path / "earlier.parquet", tmp_path / "latest.parquet"
    data = _overrides(orders_csv, trained_tracking_uri, tmp_path)
    quick = ["score.intervals=false", "score.horizon_days=90"]
    score(
        _compose(
            "score",
            [
                *data,
                *quick,
                f"score.as_of={(last - pd.Timedelta(days=120)).date()}",
                f"score.output={earlier}",
            ],
        )
    )
    score(_compose("score", [*data, *quick, f"score.output={latest}", f"score.previous={earlier}"]))
    monitor(_compose("monitor", [*data, f"monitor.scores=[{earlier}]"]))

    client = MlflowClient()
    segments_run = client.get_model_version_by_alias("customer-segments", "champion").run_id
    names = sorted(
        v for k, v in client.get_run(segments_run).data.tags.items() if re.fullmatch(r"segment\.\d+", k)
    )
    training_page = tmp_path / "training.html"
    training_page.write_text(mlflow.artifacts.load_text(f"runs:/{segments_run}/{REPORT_ARTIFACT}"))
    scored = pd.read_parquet(latest)
    for path, expect in (
        (report_path(latest), "stayed since the previous scoring"),
        (report_path(earlier), "realised retention"),
        (training_page, "share of predicted value"),
    ):
        page = path.read_text()
        _self_contained(page)
        assert not any(
            f">{customer}<" in page or f" {customer} " in page for customer in scored["customer_id"]
        )
        shown = render(path, tmp_path)
        assert sorted(shown.segments) == sorted(set(shown.segments)) and set(shown.segments) <= set(names)
        assert shown.images >= 2 and shown.loaded == shown.images, path
        assert expect in shown.text, path
    # Every segment the latest scoring assigned has its card, and the card's share is the table's.
    shown = render(report_path(latest), tmp_path)
    shares = scored["segment_name"].value_counts(normalize=True)
    assert set(shown.segments) == set(shares.index)
    for name, share in shares.items():
        assert f"{share:.1%}" in shown.text, name
    # Each card says why its customers are there (from the explanations' first reasons).
    assert shown.text.count("Why customers are here: mostly ") == len(shares)
    # The scoring run logged the page; the monitoring run logged the rewritten one.
    scoring_runs = mlflow.search_runs(experiment_names=["customer-scoring"])
    assert len(scoring_runs) == 2
    for run_id in scoring_runs["run_id"]:
        assert [a.path for a in client.list_artifacts(run_id, "report")] == [
            f"report/{latest.stem}.report.html"
        ] or [a.path for a in client.list_artifacts(run_id, "report")] == [
            f"report/{earlier.stem}.report.html"
        ]
    picture = screenshot(report_path(latest), tmp_path / "report.png", tmp_path)
    assert picture.stat().st_size > 20_000  # a drawn page, not a blank one
