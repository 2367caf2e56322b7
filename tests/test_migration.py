"""Segment migration between two scoring outputs: counts, shares, and clear errors for bad inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from customer_value.errors import DataError
from customer_value.models.segments.migration import (
    load_previous_scores,
    migration_summary,
    transition_matrix,
    transition_table,
)

PREVIOUS = pd.DataFrame(
    {
        "customer_id": ["a", "b", "c", "d", "gone"],
        "segment_name": ["Champions", "Champions", "Lost", "Lost", "Lost"],
    }
)
CURRENT = pd.DataFrame(
    {
        "customer_id": ["a", "b", "c", "d", "new"],
        "segment_name": ["Champions", "At risk", "Lost", "Lost", "Loyal"],
    }
)


def test_transitions_count_customers_in_both_tables_only() -> None:
    table = transition_table(PREVIOUS, CURRENT)
    counts = {
        (f, t): n for f, t, n in table[["from_segment", "to_segment", "customers"]].itertuples(index=False)
    }
    assert counts == {("Champions", "Champions"): 1, ("Champions", "At risk"): 1, ("Lost", "Lost"): 2}
    assert table.groupby("from_segment")["share_of_from"].sum().tolist() == [1.0, 1.0]
    matrix = transition_matrix(table)
    assert matrix.loc["Champions", "At risk"] == 1 and matrix.loc["Lost", "At risk"] == 0
    assert migration_summary(table) == {
        "migration.customers_matched": 4.0,
        "migration.share_changed_segment": 0.25,
    }


def test_a_previous_file_that_cannot_be_used_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_previous_scores(tmp_path / "missing.parquet")
    path = tmp_path / "orders.csv"
    pd.DataFrame({"customer_id": ["a"], "amount": [1.0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['segment_name'\]"):
        load_previous_scores(path)
    path = tmp_path / "twice.csv"
    pd.concat([PREVIOUS, PREVIOUS]).to_csv(path, index=False)
    with pytest.raises(DataError, match="customer_id repeats 5 id"):
        load_previous_scores(path)
