"""``make evaluate`` in small: a generated log cut at a date, trained with the defaults, judged on what came
after (jobs/evaluate.py); the full run over CDNOW and every shape is `make evaluate`, not the suite."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from customer_value.data.behaviour_shapes import generate_behaviour_shape
from customer_value.jobs.evaluate import AUC_TOLERANCE, Future, _cleaned, evaluate_future, summary_table


@pytest.mark.slow
def test_a_cut_log_is_judged_on_its_future_beside_the_baselines(tmp_path: Path, tracking_uri: str) -> None:
    """Regular buyers (Erlang gaps, death in calendar time): the log BG/NBD reads worst. The registered
    model's churn ranks at least as well as days since the last purchase, every figure comes from the
    future the training never saw, and the calibration deciles cover every customer."""
    orders = _cleaned(generate_behaviour_shape("regular_buyers", seed=1, customers=400))
    cut = orders["date"].max() - pd.Timedelta(days=200)
    future = Future("regular buyers", orders, cut, (90, 181))
    rows, deciles = evaluate_future(future, tmp_path / "future")
    assert [row["horizon_days"] for row in rows] == [90, 181]
    for row in rows:
        seen = orders[orders["date"] <= cut]["customer_id"].nunique()
        assert row["customers"] == seen
        after = orders[
            (orders["date"] > cut) & (orders["date"] <= cut + pd.Timedelta(days=row["horizon_days"]))
        ]
        assert row["churn_share"] == pytest.approx(1 - after["customer_id"].nunique() / seen)
        assert row["model.churn_auc"] >= row["recency.churn_auc"] - AUC_TOLERANCE
        assert row["auc_ok"] is (row["model.churn_auc"] >= row["best_baseline.churn_auc"] - AUC_TOLERANCE)
        assert row["registered_as"] in ("champion", "challenger")
        for name in ("model", "purchase model alone", "calibrated recency", "calibrated layer"):
            assert 0 < row[f"{name}.churn_brier"] < 0.25
    per_score = deciles.groupby(["horizon_days", "score"])["customers"].sum()
    assert (per_score == rows[0]["customers"]).all()
    table = summary_table(rows)
    assert list(table["horizon"]) == [90, 181] and table["model AUC"].between(0.5, 1).all()
