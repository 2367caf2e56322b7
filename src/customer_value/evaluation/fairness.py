"""The audit of predictions by protected group: do predicted value and churn fall unevenly on a group?

Protected attributes (the segmentation's list) are never model inputs; when the customer file holds such
columns anyway, the run logs, per attribute and group, how many customers and their mean predicted CLV and
churn beside the whole base's, so a reviewer sees a disparity before an offer is tied to a prediction.
Only aggregates: no customer id leaves this function.
"""

from __future__ import annotations

import pandas as pd

MISSING_GROUP = "(missing)"


def prediction_audit(predictions: pd.DataFrame, groups: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Long table: attribute, group, customers, share, mean of each prediction column and its ratio to the
    base's mean. ``predictions`` and ``groups`` are indexed by customer id."""
    rows = []
    overall = predictions[columns].mean()
    for attribute in groups.columns:
        group = groups[attribute].reindex(predictions.index).astype("string").fillna(MISSING_GROUP)
        means = predictions[columns].groupby(group.to_numpy()).mean()
        counts = group.value_counts()
        for name, values in means.iterrows():
            row = {"attribute": attribute, "group": name, "customers": int(counts[name])}
            row["share"] = row["customers"] / len(predictions)
            for column in columns:
                row[f"mean_{column}"] = values[column]
                row[f"{column}_ratio_to_base"] = (
                    values[column] / overall[column] if overall[column] else float("nan")
                )
            rows.append(row)
    return pd.DataFrame(rows)
