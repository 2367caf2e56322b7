"""Has the customer base moved since training? The population stability index (PSI) of each model input,
and of the segment shares, between the training base and a later scoring base.

A training run logs each input's reference distribution (``reference_distribution``: decile edges of the
training base and the share of customers between them), so a monitoring job months later needs only that
small JSON artifact, not the training data. PSI = sum over bins of (current - reference) * ln(current /
reference). The usual reading is below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a shift worth
acting on; the monitoring config holds the thresholds that are acted on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_ARTIFACT = "reference/customer_features.json"  # in every CLV training run
SHARE_FLOOR = 1e-4  # an empty bin counts as this share: ln(0) would make any PSI infinite
QUANTILES = np.linspace(0.1, 0.9, 9)  # decile edges


def reference_distribution(base: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Per column of ``base`` (those present): the distinct decile edges and each bin's share of customers.
    Bins are (-inf, e1], (e1, e2], ..., (ek, inf); tied values (six in ten customers with frequency 0) give
    fewer, wider bins rather than empty ones."""
    reference = {}
    for column, values in _finite_columns(base, columns):
        edges = np.unique(np.quantile(values, QUANTILES))
        reference[column] = {"edges": edges.tolist(), "shares": _shares(values, edges).tolist()}
    return reference


def population_stability(reference: Mapping[str, Mapping[str, Any]], base: pd.DataFrame) -> pd.Series:
    """PSI of each referenced column that ``base`` has, named by column."""
    psi = {}
    for column, values in _finite_columns(base, list(reference)):
        current = _shares(values, np.asarray(reference[column]["edges"], dtype="float64"))
        psi[column] = stability_index(np.asarray(reference[column]["shares"], dtype="float64"), current)
    return pd.Series(psi, dtype="float64", name="psi")


def stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two share vectors over the same bins (segment shares, or an input's bins)."""
    expected = np.maximum(np.asarray(reference, dtype="float64"), SHARE_FLOOR)
    actual = np.maximum(np.asarray(current, dtype="float64"), SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="left")  # value == edge falls in the bin the edge closes
    return np.bincount(bins, minlength=len(edges) + 1) / len(values)


def _finite_columns(base: pd.DataFrame, columns: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Each wanted column ``base`` has, as its finite values; absent or all-missing columns are skipped."""
    for column in columns:
        if column not in base.columns:
            continue
        numbers = base[column].to_numpy(dtype="float64", na_value=np.nan)
        numbers = numbers[np.isfinite(numbers)]
        if len(numbers):
            yield column, numbers
