"""The benchmark at a small size: every side-by-side comparison computes the same thing both ways.

Timings are never asserted here; `make bench` measures them (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from customer_value.bench.compare import run_benchmarks

pytestmark = pytest.mark.slow


def test_every_comparison_agrees_at_a_small_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    streamed: list[str] = []  # each row handed over as soon as it is measured (make bench prints it)
    result = run_benchmarks(
        3_000,
        seed=3,
        workdir=tmp_path,
        train=True,
        subsample=2_000,
        on_row=lambda r: streamed.append(r["task"]),
        train_repeats=1,
    )
    rows = {row["task"]: row for row in result["rows"]}
    assert streamed == [row["task"] for row in result["rows"]]
    assert set(rows) == {
        "features (log -> customer table)",
        "features only (clean orders -> table)",
        "features vs plain pandas",
        "parquet file -> customer table",
        "csv file -> customer table",
        "parquet file -> validated orders frame",
        "BG/NBD + Gamma-Gamma fit",
        "Pareto/NBD fit, 3,000 customers",
        "scoring vs lifetimes incl. CLV",
        "scoring vs lifetimes, no CLV",
        "segmentation fit",
        "BG/NBD fit with 2 covariates",
        "train end to end",
    }
    assert all(row["agrees"] for row in rows.values()), [r["agreement"] for r in rows.values()]
    assert result["customers"] == 3_000
    assert result["orders_file"] > 10 * result["customers"]  # about 12 orders per customer, as at 1M
    assert all(row["project_s"] > 0 and row["baseline_s"] > 0 for row in rows.values())
    train = rows["train end to end"]  # both sides in processes of their own, with their peak memory
    assert 0 < train["baseline_peak_gib"] < train["project_peak_gib"] < 4
    assert "lifetimes' fastest: read" in train["agreement"] and "issue 30's targets" in train["agreement"]
    assert "1 run(s) each" in train["agreement"]  # make bench: TRAIN_REPEATS of each, every one listed
    covariates = rows["BG/NBD fit with 2 covariates"]  # each fit's added memory beside its time
    assert covariates["project_peak_gib"] >= 0 and covariates["baseline_peak_gib"] >= 0
