"""Choosing the number of segments: criterion curves over a k range, a configured rule, floors on size
and distinctness.

Every candidate k is fitted (with its small and indistinct clusters merged, see ``distinctness``)
and judged in the same model-independent space (``evaluation_space``), so curves are comparable across
algorithms and preprocessing. A solution is **eligible** only when every segment holds at least
``min_share`` of the customers, at least ``min_segments`` segments remain and every pair is at least
``min_distinctness`` SD apart on some KPI; the rule picks among eligible solutions only, and when none is
eligible the run stops with each k's reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from customer_value.errors import ModelFitError
from customer_value.models.segments.distinctness import distinctness_table
from customer_value.models.segments.segmentation import SegmentModel, evaluation_space, quality_metrics
from customer_value.tracking import progress

# rule -> (metric column, True when higher is better)
K_RULES = {
    "silhouette": ("silhouette", True),
    "calinski_harabasz": ("calinski_harabasz", True),
    "davies_bouldin": ("davies_bouldin", False),
    "bic": ("bic", False),  # Gaussian mixtures only
}


def criterion_curves(
    features: pd.DataFrame,
    k_values: list[int],
    make_model: Callable[[int], SegmentModel],
    seed: int,
    silhouette_sample: int,
    kpis: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[int, SegmentModel]]:
    """One row per k: silhouette, Davies-Bouldin, Calinski-Harabasz, BIC (mixtures), segment shares and
    counts after merging, and (with ``kpis``) the least distinct pair's gap in SD."""
    space = evaluation_space(features)
    rows, models = [], {}
    for number, k in enumerate(k_values, start=1):  # a handful of k, each fit vectorised
        progress.counted(number, len(k_values), f"segments: k selection, k={k}")
        model = make_model(k).fit(features, kpis)
        labels = model.predict(features)["segment"].to_numpy()
        row = {"k": k} | quality_metrics(space, labels, seed, silhouette_sample)
        if kpis is not None:
            row["min_distinctness"] = least_distinct(kpis, labels)
        clusterer = model.pipeline_.named_steps["cluster"]
        if hasattr(clusterer, "bic"):
            row["bic"] = float(clusterer.bic(model.pipeline_.named_steps["features"].transform(features)))
        rows.append(row)
        models[k] = model
    return pd.DataFrame(rows).set_index("k"), models


def least_distinct(kpis: pd.DataFrame, segments: np.ndarray) -> float:
    """The least distinct pair's largest KPI gap in SD (inf with a single segment)."""
    table = distinctness_table(kpis, segments, {})
    return float(table["distinctness_sd"].iloc[0]) if len(table) else float("inf")


def substantial(curves: pd.DataFrame, min_share: float) -> pd.Series:
    """Whether every segment of each k holds at least ``min_share`` of the customers."""
    return curves["smallest_segment_share"] >= min_share


def eligibility(
    curves: pd.DataFrame, min_share: float, min_segments: int = 2, min_distinctness: float = 0.0
) -> pd.Series:
    """Why each k cannot be chosen ("" when it can): too small a segment, too few segments after merging,
    or a pair of segments closer than ``min_distinctness`` on every KPI."""
    reasons = []
    for _, row in curves.iterrows():  # a handful of k
        why = []
        if row["smallest_segment_share"] < min_share:
            why.append(f"smallest segment {row['smallest_segment_share']:.3f} < min_share {min_share}")
        if row["n_segments"] < min_segments:
            why.append(f"{int(row['n_segments'])} segments after merging < min_segments {min_segments}")
        if "min_distinctness" in row and row["min_distinctness"] < min_distinctness:
            why.append(f"least distinct pair {row['min_distinctness']:.2f} SD < {min_distinctness}")
        reasons.append("; ".join(why))
    return pd.Series(reasons, index=curves.index, dtype=object)


def choose_k(
    curves: pd.DataFrame, rule: str, min_share: float, min_segments: int = 2, min_distinctness: float = 0.0
) -> int:
    """The best eligible k by ``rule``; a one-line ModelFitError naming each k's reason when none is."""
    column, higher_is_better = K_RULES[rule]
    reasons = eligibility(curves, min_share, min_segments, min_distinctness)
    ok = reasons == ""
    if not ok.any():
        if (curves["smallest_segment_share"] < min_share).all():
            shares = ", ".join(f"k={k}: {share:.3f}" for k, share in curves["smallest_segment_share"].items())
            raise ModelFitError(
                f"no segmentation is substantial: every segment must hold at least segmentation.min_share="
                f"{min_share} of customers, smallest shares were {shares}"
            )
        listed = ", ".join(f"k={k}: {why}" for k, why in reasons.items())
        raise ModelFitError(f"no substantial, distinct segmentation exists on this data ({listed})")
    if column not in curves.columns:
        raise ModelFitError(f"segmentation.k_rule={rule} needs {column}, which this algorithm does not give")
    scores = curves.loc[ok, column]
    return int(scores.idxmax() if higher_is_better else scores.idxmin())


def require_substantial(shares: pd.Series, min_share: float) -> None:
    """Reject a fixed-k (or k-free) solution with a segment below ``min_share``, naming it."""
    small = shares[shares < min_share]
    if len(small):
        listed = ", ".join(f"segment {s}: {share:.3f}" for s, share in small.items())
        raise ModelFitError(
            f"segmentation rejected as not substantial: {listed} below segmentation.min_share={min_share}"
        )


def require_segments(n_segments: int, min_segments: int) -> None:
    """Reject a solution that merging left with fewer than ``min_segments`` segments."""
    if n_segments < min_segments:
        raise ModelFitError(
            f"segmentation rejected: only {n_segments} substantial, distinct segment(s) remain after "
            f"merging, fewer than segmentation.min_segments={min_segments}"
        )
