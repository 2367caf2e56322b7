"""The benchmark at a small size: every side-by-side comparison computes the same thing both ways.

Timings are never asserted here; `make bench` measures them (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from customer_value.bench.compare import run_benchmarks


@pytest.mark.slow
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


def test_the_train_row_counts_each_sides_fastest_run_and_highest_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs in turns, each in a folder of its own; the fastest time and the highest peak of each side."""
    from customer_value.bench import compare, engines

    calls: list[str] = []

    def lifetimes_once(orders: Path, folder: Path) -> dict[str, float]:
        calls.append(f"lifetimes {folder.name}")
        slow = folder.name == "run-1"
        return {
            "read_s": 0.5,
            "summary_s": 20.0 if slow else 15.0,
            "fit_s": 10.0,
            "peak_gib": 2.5 if slow else 2.6,
        }

    def train_once(orders: Path, folder: Path, engine: str) -> dict[str, float]:
        calls.append(f"train {folder.name}")
        slow = folder.name == "run-2"
        return {"seconds": 80.0 if slow else 60.0, "driver_peak_gib": 2.1 if slow else 1.9}

    monkeypatch.setattr(engines, "lifetimes_once", lifetimes_once)
    monkeypatch.setattr(engines, "train_once", train_once)
    row = compare.bench_train(tmp_path / "orders.parquet", tmp_path, repeats=2)
    assert calls == ["lifetimes run-1", "train run-1", "lifetimes run-2", "train run-2"]
    assert (row.project_s, row.baseline_s) == (60.0, 25.0)
    assert (row.project_peak_gib, row.baseline_peak_gib) == (2.1, 2.6)
    assert "train 60.0, 80.0 s, lifetimes 30.0, 25.0 s" in row.agreement and "NOT met" in row.agreement
    with pytest.raises(ValueError, match="at least one run"):
        compare.bench_train(tmp_path / "orders.parquet", tmp_path, repeats=0)
