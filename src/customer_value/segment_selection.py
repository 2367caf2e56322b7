"""Choosing the number of segments: criterion curves over a k range, a configured rule, a size floor.

Every candidate k is fitted and judged in the same model-independent space (``evaluation_space``), so
curves are comparable across algorithms and preprocessing. A solution is **substantial** only when every
segment holds at least ``min_share`` of the customers; the rule picks among substantial solutions only,
and when none is substantial the run stops with the smallest shares as the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from customer_value.errors import ModelFitError
from customer_value.segmentation import SegmentModel, evaluation_space, quality_metrics

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
) -> tuple[pd.DataFrame, dict[int, SegmentModel]]:
    """One row per k: silhouette, Davies-Bouldin, Calinski-Harabasz, BIC (mixtures), segment shares."""
    space = evaluation_space(features)
    rows, models = [], {}
    for k in k_values:  # a handful of k, each fit vectorised
        model = make_model(k).fit(features)
        labels = model.predict(features)["segment"].to_numpy()
        row = {"k": k} | quality_metrics(space, labels, seed, silhouette_sample)
        clusterer = model.pipeline_.named_steps["cluster"]
        if hasattr(clusterer, "bic"):
            row["bic"] = float(clusterer.bic(model.pipeline_.named_steps["features"].transform(features)))
        rows.append(row)
        models[k] = model
    return pd.DataFrame(rows).set_index("k"), models


def substantial(curves: pd.DataFrame, min_share: float) -> pd.Series:
    """Whether every segment of each k holds at least ``min_share`` of the customers."""
    return curves["smallest_segment_share"] >= min_share


def choose_k(curves: pd.DataFrame, rule: str, min_share: float) -> int:
    """The best substantial k by ``rule``; a one-line ModelFitError when no k is substantial."""
    column, higher_is_better = K_RULES[rule]
    if column not in curves.columns:
        raise ModelFitError(f"segmentation.k_rule={rule} needs {column}, which this algorithm does not give")
    ok = substantial(curves, min_share)
    if not ok.any():
        shares = ", ".join(f"k={k}: {share:.3f}" for k, share in curves["smallest_segment_share"].items())
        raise ModelFitError(
            f"no segmentation is substantial: every segment must hold at least segmentation.min_share="
            f"{min_share} of customers, smallest shares were {shares}"
        )
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
