"""Why a customer is in its segment, computed exactly for the fitted clusterer.

The margin of an assignment is how much better the customer's segment fits it than the runner-up (the
best-fitting cluster of any other segment), in the model's own preprocessed space; it is split into one
part per input feature, and the parts sum to the margin exactly:

- centroid models (k-means, mini-batch k-means; Ward and HDBSCAN, which assign to the nearest centre):
  margin = |x - c2|^2 - |x - c1|^2 = sum_j [(x_j - c2_j)^2 - (x_j - c1_j)^2], one term per column;
- Gaussian mixtures (full covariance): margin = log-density gap = sum_j of each column's share of the
  quadratic forms, (x - m)_j [P (x - m)]_j / 2 for both components, plus a part that belongs to no feature
  (the components' weights and spreads), reported as ``segment size and spread``;
- the RFM rule has no margin (NaN): its reasons are its two scores.

A one-hot categorical's columns are summed into its attribute. The reasons are the features with the
largest positive parts (those that pull the customer toward its segment), in plain words with the value
and, for the behaviour columns, both segments' typical (median) values from training as context. Only
the model's input features can appear; protected attributes are never inputs
(segmentation.attributes.protected).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture

from customer_value.models.segments.clusterers import RFMQuintiles

N_REASONS = 3
UNASSIGNED_PART = "segment size and spread"  # GMM: the part of the margin no feature carries
PHRASES = {
    "days_since_last": lambda v: f"last purchase {v:,.0f} days ago",
    "n_orders": lambda v: f"{v:,.0f} purchase day{'' if v == 1 else 's'}",
    "mean_order_value": lambda v: f"average order {v:,.2f}",
    "T_days": lambda v: f"customer for {v:,.0f} days",
    "clv": lambda v: f"predicted value {v:,.2f}",
    "churn_probability": lambda v: f"churn risk {v:.0%}",
    "regularity": lambda v: f"purchase regularity {v:.2f}",
}
LABELS = {
    "days_since_last": "days since the last purchase",
    "n_orders": "purchase days",
    "mean_order_value": "average order value",
    "T_days": "tenure",
    "clv": "predicted value",
    "churn_probability": "churn risk",
    "regularity": "purchase regularity",
}
DIGITS = {"mean_order_value": 2, "clv": 2, "churn_probability": 2, "regularity": 2}  # as PHRASES show them
TYPICAL_FORMAT = {"mean_order_value": "{:,.2f}", "churn_probability": "{:.0%}", "clv": "{:,.2f}"}


def explanation_columns(model: object) -> list[str]:
    """The columns ``SegmentModel.explain`` returns for ``model``, in order."""
    clusterer = model.pipeline_.named_steps["cluster"]  # type: ignore[attr-defined]
    parts = [*model.input_columns]  # type: ignore[attr-defined]
    if isinstance(clusterer, GaussianMixture):
        parts.append(UNASSIGNED_PART)
    return [
        "segment_margin",
        "runner_up_segment",
        *(f"reason_{i + 1}" for i in range(N_REASONS)),
        *(f"margin_part.{c}" for c in parts),
    ]


def margin_parts(model: object, features: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per customer: each input feature's part of the margin (columns: the model's input columns, plus
    ``UNASSIGNED_PART`` for a mixture), the segment and the runner-up segment. The parts of a row sum to
    its margin; a model with one segment, or the RFM rule, gives NaN parts."""
    pipeline = model.pipeline_  # type: ignore[attr-defined]
    clusterer = pipeline.named_steps["cluster"]
    space = np.asarray(pipeline.named_steps["features"].transform(features), dtype="float64")
    groups = _column_groups(pipeline.named_steps["features"], model.input_columns)  # type: ignore[attr-defined]
    n = len(space)
    if isinstance(clusterer, RFMQuintiles):
        segments = model.raw_to_segment(clusterer.predict(space))  # type: ignore[attr-defined]
        return pd.DataFrame(np.nan, index=features.index, columns=list(groups)), segments, np.full(n, -1)
    if isinstance(clusterer, GaussianMixture):
        fits = _mixture_fits(clusterer, space)  # (n, K, p + 1): per-column terms, then the constant
    else:
        centres = np.asarray(clusterer.cluster_centers_, dtype="float64")
        fits = -((space[:, None, :] - centres[None, :, :]) ** 2)  # higher = better, per column
        fits = np.concatenate([fits, np.zeros((n, len(centres), 1))], axis=2)
    totals = fits.sum(axis=2)
    raw_segment = model.raw_to_segment(np.arange(fits.shape[1]))  # type: ignore[attr-defined]
    best = totals.argmax(axis=1)
    other = np.where(raw_segment[None, :] == raw_segment[best][:, None], -np.inf, totals)
    runner = other.argmax(axis=1)
    rows = np.arange(n)
    parts_columns = fits[rows, best, :] - fits[rows, runner, :]  # (n, p + 1)
    alone = ~np.isfinite(other[rows, runner])  # every cluster is this segment: no runner-up
    parts_columns[alone] = np.nan
    parts = pd.DataFrame(
        {name: parts_columns[:, idx].sum(axis=1) for name, idx in groups.items()}, index=features.index
    )
    if isinstance(clusterer, GaussianMixture):
        parts[UNASSIGNED_PART] = parts_columns[:, -1]
    return parts, raw_segment[best], np.where(alone, -1, raw_segment[runner])


def _mixture_fits(mixture: GaussianMixture, space: np.ndarray) -> np.ndarray:
    """log w_k + log N(x; m_k, S_k) per component, split: each column's share of -(x-m)'P(x-m)/2, and a
    last slot with log w_k - log|S_k|/2 - p log(2 pi)/2. Sums equal the mixture's weighted log-density."""
    if mixture.covariance_type != "full":
        raise ValueError("margins are computed for full-covariance mixtures (the project's setting)")
    n, p = space.shape
    k = len(mixture.weights_)
    fits = np.empty((n, k, p + 1))
    for component in range(k):
        centred = space - mixture.means_[component]
        precision = mixture.precisions_[component]
        fits[:, component, :p] = -0.5 * centred * (centred @ precision)
        _, log_det_precision = np.linalg.slogdet(precision)
        fits[:, component, p] = (
            np.log(mixture.weights_[component]) + 0.5 * log_det_precision - 0.5 * p * np.log(2 * np.pi)
        )
    return fits


def _column_groups(transformer: object, input_columns: list[str]) -> dict[str, np.ndarray]:
    """Input feature -> its column indices in the preprocessed space (a categorical's one-hot columns)."""
    groups: dict[str, list[int]] = {}
    position = 0
    for name, fitted, columns in transformer.transformers_:  # type: ignore[attr-defined]
        if name == "remainder" or fitted == "drop":
            continue
        widths = [len(c) for c in fitted.categories_] if name == "categorical" else [1] * len(columns)
        for column, width in zip(columns, widths, strict=True):
            groups[column] = list(range(position, position + width))
            position += width
    return {c: np.asarray(groups[c]) for c in input_columns if c in groups}


def reasons(
    parts: pd.DataFrame,
    features: pd.DataFrame,
    segment: np.ndarray,
    runner_up: np.ndarray,
    names: dict[int, str],
    typical: pd.DataFrame | None,
    rule_scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """``reason_1`` .. ``reason_3`` in plain words: the features with the largest positive parts."""
    out = pd.DataFrame(
        {f"reason_{i + 1}": pd.Series(None, index=parts.index, dtype=object) for i in range(N_REASONS)}
    )
    if rule_scores is not None:  # the RFM rule: its two scores are its reasons
        for rank, (column, name, score) in enumerate(
            zip(("days_since_last", "n_orders"), ("recency", "frequency"), rule_scores, strict=True)
        ):
            said = np.array([f" ({name} score {s} of 5)" for s in range(6)], dtype=object)
            words = _phrases(column, features[column].to_numpy()) + said[np.asarray(score, dtype="int64")]
            out[f"reason_{rank + 1}"] = pd.Series(words, index=out.index, dtype=object)
        return out
    feature_parts = parts.drop(columns=[UNASSIGNED_PART], errors="ignore")
    values = feature_parts.to_numpy()
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), axis=1)[:, :N_REASONS]
    rows = np.arange(len(values))
    for rank in range(min(N_REASONS, values.shape[1])):
        picked = order[:, rank]
        positive = values[rows, picked] > 0
        texts = np.full(len(values), None, dtype=object)
        for index in np.unique(picked[positive]):  # one column at a time: formatted for its rows only
            chosen = positive & (picked == index)
            column = feature_parts.columns[index]
            texts[chosen] = _phrases(column, features[column].to_numpy()[chosen])
            if typical is not None and f"median_{column}" in typical.columns:
                texts[chosen] += _comparisons(column, segment[chosen], runner_up[chosen], names, typical)
        out[f"reason_{rank + 1}"] = pd.Series(texts, index=out.index, dtype=object)  # missing = None
    return out


def _phrases(column: str, values: np.ndarray) -> np.ndarray:
    """The feature and the customer's value in words, for each of ``values`` (each distinct shown value
    formatted once: a million customers have a few thousand)."""
    if column in PHRASES:
        digits = DIGITS.get(column, 0)
        rounded = np.round(values.astype("float64"), digits)
        inverse, shown = pd.factorize(rounded, use_na_sentinel=False)  # hashing, no sort
        phrase = PHRASES[column]
        texts = [f"{LABELS[column]} unknown" if np.isnan(v) else phrase(float(v)) for v in shown]
        return np.array(texts, dtype=object)[inverse]
    if values.dtype.kind in "fiu":
        inverse, shown = pd.factorize(values.astype("float64"), use_na_sentinel=False)
        texts = [f"{column} missing" if np.isnan(v) else f"{column} {v:,.4g}" for v in shown]
        return np.array(texts, dtype=object)[inverse]
    return np.array(
        [f"{column} {v}" if isinstance(v, str) else f"{column} missing" for v in values], dtype=object
    )


def _comparisons(
    column: str, segment: np.ndarray, runner_up: np.ndarray, names: dict[int, str], typical: pd.DataFrame
) -> np.ndarray:
    """ " (<segment> typically <median>, <runner-up> <median>)" per row (one text per pair): the two
    segments' training medians as context. Not a claim that the value is nearer one of them: its part is
    measured in the model's space against one centre, not against these medians."""
    shown = TYPICAL_FORMAT.get(column, "{:,.0f}")
    medians = typical[f"median_{column}"]
    width = int(max(segment.max(initial=0), runner_up.max(initial=0))) + 2  # runner-up -1 (none): slot 0
    codes = (segment.astype("int64") + 1) * width + runner_up.astype("int64") + 1
    texts = np.full(width * width, "", dtype=object)
    for code in pd.unique(codes):
        own, other = int(code) // width - 1, int(code) % width - 1
        if own in medians.index and other in medians.index:
            mine, theirs = shown.format(medians[own]), shown.format(medians[other])
            if mine != theirs:  # equal typical values tell the reader nothing
                texts[(own + 1) * width + other + 1] = (
                    f" ({names.get(own, str(own))} typically {mine}, {names.get(other, str(other))} {theirs})"
                )
    return texts[codes]


def criteria_by_segment(parts: pd.DataFrame, segments: np.ndarray, top: int = 2) -> dict[int, str]:
    """Per segment, the features that most often are its customers' first reason, with their shares:
    the segment's membership criteria in words for the report."""
    feature_parts = parts.drop(columns=[UNASSIGNED_PART], errors="ignore")
    values = feature_parts.to_numpy(dtype="float64")
    known = np.isfinite(values).any(axis=1)
    first = pd.Series(
        np.where(
            known, np.asarray(feature_parts.columns)[np.nan_to_num(values, nan=-np.inf).argmax(axis=1)], None
        )
    )
    texts = {}
    for segment in np.unique(segments):
        mine = first[segments == segment].dropna()
        if mine.empty:
            continue
        shares = mine.value_counts(normalize=True).head(top)
        texts[int(segment)] = "mostly " + ", then ".join(
            f"{LABELS.get(feature, feature)} ({share:.0%} of its customers' first reason)"
            for feature, share in shares.items()
        )
    return texts
