"""Segment membership a CRM can sync: one row per customer (a unique, non-null key) with a segment id that
stays stable across retrains, and the change set since the previous membership.

A segments model numbers its clusters 0..k-1 in no lasting order, and a retrain may renumber them. So each
(model version, cluster) gets a stable id ``S<n>``: within a version the previous mapping is reused; for a
new version its clusters are matched to the previous membership's ids by the assignment that keeps the
most customers in their id (Hungarian algorithm on the overlap counts). A cluster matched to no id, or
only to one it shares no customer with, gets a new id; ids are never reused (the highest ever issued is
kept beside the table).
"""

from __future__ import annotations

import pandas as pd
from scipy.optimize import linear_sum_assignment

MEMBERSHIP_COLUMNS = [
    "customer_id",
    "segment_id",
    "segment_name",
    "segment",
    "segments_model_version",
    "as_of",
]
CHANGE_COLUMNS = ["customer_id", "change", "old_segment_id", "new_segment_id"]


def _number(segment_id: str) -> int:
    return int(str(segment_id).lstrip("S"))


def assign_segment_ids(
    current: pd.DataFrame, previous: pd.DataFrame | None, last_issued: int
) -> tuple[pd.DataFrame, int]:
    """``current`` (customer_id, segment, segment_name, segments_model_version, as_of) with a stable
    ``segment_id``; returns the membership table and the highest id number issued so far."""
    table = current.copy()
    table["customer_id"] = table["customer_id"].astype(str)
    version = str(table["segments_model_version"].iloc[0])
    mapping: dict[int, str] = {}
    if previous is not None and len(previous):
        previous = previous.assign(customer_id=previous["customer_id"].astype(str))
        same = previous[previous["segments_model_version"].astype(str) == version]
        if len(same):  # the same model: its clusters keep their ids
            mapping = dict(zip(same["segment"].astype(int), same["segment_id"].astype(str), strict=False))
        else:
            mapping = _match(table, previous)
    for cluster in sorted(set(table["segment"].astype(int)) - set(mapping)):
        last_issued += 1
        mapping[cluster] = f"S{last_issued}"
    table["segment_id"] = table["segment"].astype(int).map(mapping)
    return table[MEMBERSHIP_COLUMNS], last_issued


def _match(table: pd.DataFrame, previous: pd.DataFrame) -> dict[int, str]:
    """New clusters -> previous ids, maximising the customers who keep their id (overlap > 0 only)."""
    joined = table[["customer_id", "segment"]].merge(
        previous[["customer_id", "segment_id"]], on="customer_id"
    )
    if joined.empty:
        return {}
    overlap = pd.crosstab(joined["segment"].astype(int), joined["segment_id"].astype(str))
    rows, columns = linear_sum_assignment(overlap.to_numpy(), maximize=True)
    return {
        int(overlap.index[r]): str(overlap.columns[c])
        for r, c in zip(rows, columns, strict=True)
        if overlap.iat[r, c] > 0
    }


def change_set(previous: pd.DataFrame | None, current: pd.DataFrame) -> pd.DataFrame:
    """Customers added, removed, or whose segment id changed since ``previous`` (none: everyone added)."""
    now = current.set_index(current["customer_id"].astype(str))["segment_id"]
    before = (
        pd.Series(dtype=object)
        if previous is None
        else previous.set_index(previous["customer_id"].astype(str))["segment_id"].astype(str)
    )
    added = now.index.difference(before.index)
    removed = before.index.difference(now.index)
    both = now.index.intersection(before.index)
    changed = both[(now[both] != before[both]).to_numpy()]
    parts = [
        pd.DataFrame(
            {
                "customer_id": added,
                "change": "added",
                "old_segment_id": None,
                "new_segment_id": now[added].to_numpy(),
            }
        ),
        pd.DataFrame(
            {
                "customer_id": removed,
                "change": "removed",
                "old_segment_id": before[removed].to_numpy(),
                "new_segment_id": None,
            }
        ),
        pd.DataFrame(
            {
                "customer_id": changed,
                "change": "changed",
                "old_segment_id": before[changed].to_numpy(),
                "new_segment_id": now[changed].to_numpy(),
            }
        ),
    ]
    out = (
        pd.concat([p for p in parts if len(p)], ignore_index=True)
        if any(len(p) for p in parts)
        else pd.DataFrame(columns=CHANGE_COLUMNS)
    )
    return out[CHANGE_COLUMNS].sort_values(["change", "customer_id"], ignore_index=True)


def apply_changes(previous: pd.DataFrame, changes: pd.DataFrame) -> pd.Series:
    """``previous``'s customer -> segment id with ``changes`` applied (what a CRM holds after a sync)."""
    held = previous.set_index(previous["customer_id"].astype(str))["segment_id"].astype(str).to_dict()
    for row in changes.itertuples():
        if row.change == "removed":
            held.pop(row.customer_id, None)
        else:
            held[row.customer_id] = row.new_segment_id
    return pd.Series(held, name="segment_id").sort_index()


def highest_issued(previous: pd.DataFrame | None, recorded: int) -> int:
    """The highest id number ever issued: the record kept beside the table, or the previous table's."""
    seen = [] if previous is None or previous.empty else [_number(i) for i in previous["segment_id"].unique()]
    return int(max([recorded, *seen], default=0))
