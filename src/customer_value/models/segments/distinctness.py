"""Are the segments different in what a marketer acts on? Distinctness on the KPIs, and the merges it drives.

Cluster geometry alone can split one group in two: on CDNOW "Hibernating" and "Lost" were 0.09 SD apart on
churn, value and expected purchases, separated only by when they joined. A pair's **distinctness** is the
largest gap between their mean KPIs (churn probability, log CLV, log expected purchases, log expected
order value), each in customer-level standard deviations; a segmentation is as distinct as its least
distinct pair. Two merges keep a solution substantial and distinct: clusters below a size floor join
their nearest neighbour in the clustering space, and pairs below a distinctness floor are merged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# KPI name -> (CLV output column, whether it is taken as log1p).
KPIS = {
    "churn_probability": ("churn_probability", False),
    "log_clv": ("clv", True),
    "log_expected_purchases": ("expected_purchases", True),
    "log_expected_order_value": ("expected_order_value", True),
}


def kpi_table(clv_outputs: pd.DataFrame) -> pd.DataFrame:
    """The KPIs of each customer from the CLV model's outputs (the columns it has: a log without amounts
    has no value KPIs)."""
    columns = {}
    for name, (column, logged) in KPIS.items():
        if column in clv_outputs.columns:
            values = clv_outputs[column].to_numpy(dtype="float64")
            columns[name] = np.log1p(values) if logged else values
    return pd.DataFrame(columns, index=clv_outputs.index)


def _group_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.maximum(np.bincount(labels, minlength=n), 1)
    return (
        np.column_stack([np.bincount(labels, values[:, j], minlength=n) for j in range(values.shape[1])])
        / (counts[:, None])
    )


def _standardised(kpis: np.ndarray) -> np.ndarray:
    """KPIs in customer-level SDs; a constant KPI is 0 throughout (it separates nobody)."""
    spread = kpis.std(axis=0)
    return np.where(spread > 0, (kpis - kpis.mean(axis=0)) / np.where(spread > 0, spread, 1.0), 0.0)


def _renumbered(mapping: np.ndarray) -> np.ndarray:
    """Group ids 0..g-1 in order of each group's first raw cluster."""
    _, first, inverse = np.unique(mapping, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse]


def merge_small(space: np.ndarray, raw: np.ndarray, n_raw: int, min_share: float) -> np.ndarray:
    """Raw cluster -> group: the smallest cluster below ``min_share`` joins the cluster with the nearest
    centre (in ``space``, the model's preprocessed inputs), until none is below it or one is left. Raw
    clusters no training customer fell in join the largest group. ``min_share`` 0: identity."""
    mapping = np.arange(n_raw)
    if min_share <= 0:
        return mapping
    sizes = np.bincount(raw, minlength=n_raw).astype("float64")
    sums = np.vstack(
        [space[raw == c].sum(axis=0) if sizes[c] else np.zeros(space.shape[1]) for c in range(n_raw)]
    )
    floor = min_share * len(raw)
    active = [c for c in range(n_raw) if sizes[c] > 0]
    while len(active) > 1:  # at most k merges
        smallest = min(active, key=lambda c: sizes[c])
        if sizes[smallest] >= floor:
            break
        centres = sums[active] / sizes[active][:, None]
        own = sums[smallest] / sizes[smallest]
        distances = ((centres - own) ** 2).sum(axis=1)
        distances[active.index(smallest)] = np.inf
        target = active[int(np.argmin(distances))]
        sizes[target] += sizes[smallest]
        sums[target] += sums[smallest]
        mapping[mapping == smallest] = target
        active.remove(smallest)
    largest = max(active, key=lambda c: sizes[c])
    mapping[np.bincount(raw, minlength=n_raw) == 0] = largest
    return _renumbered(mapping)


def merge_indistinct(
    kpis: np.ndarray, mapping: np.ndarray, raw: np.ndarray, min_distinctness: float
) -> np.ndarray:
    """``mapping`` (raw cluster -> group) with the least distinct pair of groups merged, again and again,
    while it is less than ``min_distinctness`` SD apart on every KPI."""
    z = _standardised(kpis)
    mapping = mapping.copy()
    while mapping.max() > 0:  # at most k merges
        labels = mapping[raw]
        n = int(mapping.max()) + 1
        gaps = pairwise_gaps(_group_means(z, labels, n))
        a, b = np.unravel_index(np.argmin(gaps), gaps.shape)
        if gaps[a, b] >= min_distinctness:
            break
        mapping[mapping == b] = a
        mapping = _renumbered(mapping)
    return mapping


def pairwise_gaps(means: np.ndarray) -> np.ndarray:
    """Largest absolute gap between each pair of rows (group means in SDs); inf on the diagonal."""
    gaps = (
        np.abs(means[:, None, :] - means[None, :, :]).max(axis=2)
        if means.shape[1]
        else np.zeros((len(means),) * 2)
    )
    np.fill_diagonal(gaps, np.inf)
    return gaps


def distinctness_table(kpis: pd.DataFrame, segments: np.ndarray, names: dict[int, str]) -> pd.DataFrame:
    """One row per pair of segments: their largest standardised KPI gap and the KPI it is on, least
    distinct pair first."""
    z = _standardised(kpis.to_numpy(dtype="float64"))
    ids = np.unique(segments)
    means = _group_means(z, segments, int(ids.max()) + 1)
    rows = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            gap = np.abs(means[a] - means[b])
            best = int(np.argmax(gap))
            rows.append(
                {
                    "segment_a": names.get(int(a), str(a)),
                    "segment_b": names.get(int(b), str(b)),
                    "distinctness_sd": float(gap[best]),
                    "on_kpi": kpis.columns[best],
                }
            )
    columns = ["segment_a", "segment_b", "distinctness_sd", "on_kpi"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("distinctness_sd", kind="stable").reset_index(drop=True)


def variance_explained(kpis: pd.DataFrame, segments: np.ndarray) -> dict[str, float]:
    """Share of each KPI's variance between segments (eta squared): how much of it the segments carry."""
    explained = {}
    n = int(segments.max()) + 1
    for column in kpis.columns:
        values = kpis[column].to_numpy(dtype="float64")
        total = values.var()
        if total > 0:
            means = _group_means(values[:, None], segments, n)[:, 0]
            explained[column] = float(((means[segments] - values.mean()) ** 2).mean() / total)
    return explained


def tenure_r2_gain(features: pd.DataFrame, kpis: pd.DataFrame) -> float:
    """The largest share of a KPI's variance that log tenure (and its interactions with log recency,
    frequency and spend) explains beyond those three alone, in a least-squares fit: whether tenure
    separates behaviour or only says when customers joined."""
    behaviour = [c for c in ("days_since_last", "n_orders", "mean_order_value") if c in features.columns]
    base = np.column_stack(
        [np.ones(len(features)), *(np.log1p(features[c].to_numpy(dtype="float64")) for c in behaviour)]
    )
    tenure = np.log1p(features["T_days"].to_numpy(dtype="float64"))[:, None]
    with_tenure = np.column_stack([base, tenure, tenure * base[:, 1:]])
    gains = [0.0]
    for column in kpis.columns:
        y = kpis[column].to_numpy(dtype="float64")
        if y.var() > 0:
            gains.append(_r_squared(with_tenure, y) - _r_squared(base, y))
    return float(max(gains))


def _r_squared(x: np.ndarray, y: np.ndarray) -> float:
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return 1.0 - float(np.var(y - x @ coef) / np.var(y))
