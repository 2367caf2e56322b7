"""Segment migration between two scoring runs: who moved from which segment to which.

Only customers present in both tables count. The matrix is aggregates only (counts and shares per
from -> to pair), so it can be logged to MLflow without any customer id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from customer_value.data.loading import read_columns
from customer_value.errors import DataError

KEY_COLUMNS = ["customer_id", "segment_name"]


def load_previous_scores(path: Path) -> pd.DataFrame:
    """The earlier scoring output's customer ids and segment names; a one-line error when unusable."""
    if not path.is_file():
        raise DataError(f"score.previous {path}: no such file (give an earlier scoring output)")
    previous = read_columns(path, KEY_COLUMNS)
    previous["customer_id"] = previous["customer_id"].astype(str)
    if previous["customer_id"].duplicated().any():
        count = int(previous["customer_id"].duplicated().sum())
        raise DataError(
            f"score.previous {path}: column customer_id repeats {count:,} id(s); is it a scoring output?"
        )
    return previous


def transition_table(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Long table: from_segment, to_segment, customers, share of the from-segment that went there."""
    both = previous.merge(
        current[KEY_COLUMNS].astype({"customer_id": str}), on="customer_id", suffixes=("_from", "_to")
    )
    counts = (
        both.groupby(["segment_name_from", "segment_name_to"], observed=True)
        .size()
        .rename("customers")
        .reset_index()
        .rename(columns={"segment_name_from": "from_segment", "segment_name_to": "to_segment"})
    )
    counts["share_of_from"] = counts["customers"] / counts.groupby("from_segment")["customers"].transform(
        "sum"
    )
    return counts.sort_values(["from_segment", "customers"], ascending=[True, False], ignore_index=True)


def transition_matrix(table: pd.DataFrame, value: str = "customers") -> pd.DataFrame:
    """The long table as a from x to matrix of ``value`` (customers or share_of_from), zeros filled."""
    return table.pivot_table(
        index="from_segment", columns="to_segment", values=value, fill_value=0, aggfunc="sum"
    )


def migration_summary(table: pd.DataFrame) -> dict[str, float]:
    """How many customers could be followed, and the share that changed segment."""
    matched = float(table["customers"].sum())
    stayed = float(table.loc[table["from_segment"] == table["to_segment"], "customers"].sum())
    return {
        "migration.customers_matched": matched,
        "migration.share_changed_segment": 1.0 - stayed / matched if matched else float("nan"),
    }
