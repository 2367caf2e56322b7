"""Behavioural segments: a fitted scikit-learn pipeline, its quality metrics, profiles and names.

The pipeline (log1p -> winsorise -> standardise -> KMeans) is what gets registered, so scoring applies
exactly the preprocessing training used. Winsorising at the training base's 1st and 99th percentiles keeps
one extreme customer from owning a cluster. Clusters below ``min_share`` are merged into their nearest
neighbour and pairs of segments that a marketer could not tell apart on the KPIs (see
``distinctness``) are merged, so the registered model maps raw clusters to merged segments.
Segment ids are renumbered by mean spend (0 = most valuable) so that the same behaviour keeps the same id
across refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)

from customer_value.errors import ModelFitError
from customer_value.models.segments.clusterers import RFMQuintiles, make_clusterer
from customer_value.models.segments.distinctness import merge_indistinct, merge_small
from customer_value.models.segments.explanations import margin_parts, reasons
from customer_value.models.segments.names import name_segments

SEGMENT_FEATURES = ["days_since_last", "n_orders", "mean_order_value", "T_days"]
PROFILE_COLUMNS = ["days_since_last", "n_orders", "mean_order_value", "total_spend", "T_days"]
# Share of customers cut off at each end before standardising (behaviour columns and evaluation space).
WINSORIZE_SHARE = 0.01
# A column whose central 98 % of customers share one value carries no segmentation (single-day cohorts'
# tenure): left out of that fit, and said so.
NEAR_CONSTANT_TAIL = 0.01


PREPROCESSING = ("log", "quantile", "robust")
# Optional behaviour features: the CLV model's outputs, purchase regularity (features.purchase_regularity).
EXTRA_BEHAVIOUR = ("clv", "churn_probability", "regularity")


@dataclass(frozen=True)
class FeatureSet:
    """What a segmentation clusters on: RFM + tenure, optional CLV outputs, optional customer attributes."""

    extra: tuple[str, ...] = ()  # from EXTRA_BEHAVIOUR: transformed like the RFM columns
    numeric: tuple[str, ...] = ()  # numeric attributes: median-imputed, standardised
    categorical: tuple[str, ...] = ()  # categorical attributes: one-hot, unseen values ignored
    # RFM/tenure columns left out of this fit (near-constant, absent, or tenure that does not separate
    # behaviour); a class default, so models pickled before it existed read ().
    excluded: tuple[str, ...] = ()

    @property
    def rfm(self) -> list[str]:
        """The RFM and tenure columns clustered on."""
        return [c for c in SEGMENT_FEATURES if c not in self.excluded]

    @property
    def behaviour(self) -> list[str]:
        return [*self.rfm, *self.extra]

    @property
    def columns(self) -> list[str]:
        """The model's input columns, in order."""
        return [*self.behaviour, *self.numeric, *self.categorical]


class Winsorizer(TransformerMixin, BaseEstimator):
    """Clip each column to the training data's ``share`` and ``1 - share`` quantiles (0 = no clipping)."""

    def __init__(self, share: float = WINSORIZE_SHARE) -> None:
        self.share = share

    def fit(self, X: np.ndarray, y: None = None) -> Winsorizer:
        values = np.asarray(X, dtype="float64")
        self.low_, self.high_ = np.nanquantile(values, [self.share, 1.0 - self.share], axis=0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(X, dtype="float64"), self.low_, self.high_)


def near_constant_columns(features: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns whose central 98 % of customers share one value (or that are absent)."""
    found = []
    for column in columns:  # a handful of columns
        if column not in features.columns:
            found.append(column)
            continue
        values = features[column].to_numpy(dtype="float64")
        low, high = np.nanquantile(values, [NEAR_CONSTANT_TAIL, 1.0 - NEAR_CONSTANT_TAIL])
        if not high > low:
            found.append(column)
    return found


def build_pipeline(
    n_clusters: int,
    seed: int,
    algorithm: str = "kmeans",
    preprocessing: str = "log",
    fit_sample: int = 20_000,
    min_cluster_size: int = 50,
    feature_set: FeatureSet = FeatureSet(),
) -> Pipeline:
    """Preprocess (behaviour: log1p, winsorised, standardised; or normal-quantile then standardised; or
    log1p then median/IQR scaling; numeric attributes: impute and standardise; categorical: one-hot), then
    cluster. The RFM columns come first (RFMQuintiles reads them)."""
    if preprocessing == "log":
        steps = [
            ("transform", FunctionTransformer(np.log1p)),
            ("winsorize", Winsorizer()),
            ("scale", StandardScaler()),
        ]
    elif preprocessing == "quantile":
        transform = QuantileTransformer(output_distribution="normal", n_quantiles=1000, random_state=seed)
        steps = [("transform", transform), ("scale", StandardScaler())]
    elif preprocessing == "robust":
        steps = [("transform", FunctionTransformer(np.log1p)), ("scale", RobustScaler())]
    else:
        raise ModelFitError(
            f"unknown segmentation.preprocessing '{preprocessing}'; choose one of {PREPROCESSING}"
        )
    if "regularity" in feature_set.extra:  # NaN for customers with under three purchase days
        steps.insert(0, ("impute", SimpleImputer(strategy="median")))
    parts = [("rfm", Pipeline(steps), feature_set.behaviour)]
    if feature_set.numeric:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        parts.append(("numeric", numeric, list(feature_set.numeric)))
    if feature_set.categorical:
        one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts.append(("categorical", one_hot, list(feature_set.categorical)))
    return Pipeline(
        [
            ("features", ColumnTransformer(parts, remainder="drop")),
            ("cluster", make_clusterer(algorithm, n_clusters, seed, fit_sample, min_cluster_size)),
        ]
    )


def evaluation_space(features: pd.DataFrame) -> np.ndarray:
    """A model-independent space in which any two segmentations are compared: log RFM and tenure,
    winsorised and standardised (a column the data lacks, or a constant one, is 0 throughout)."""
    values = np.zeros((len(features), len(SEGMENT_FEATURES)))
    for index, column in enumerate(SEGMENT_FEATURES):
        if column in features.columns:
            values[:, index] = np.log1p(features[column].to_numpy(dtype="float64"))
    values = Winsorizer().fit_transform(values)
    spread = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def projection_2d(
    model: SegmentModel, features: pd.DataFrame, seed: int, sample: int = 5_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the model's own preprocessed inputs for a sample: (2-D points, segments, explained ratio)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(features), size=min(sample, len(features)), replace=False)
    chosen = features.iloc[np.sort(rows)]
    space = model.pipeline_.named_steps["features"].transform(chosen)
    pca = PCA(n_components=2, random_state=seed).fit(space)
    return pca.transform(space), model.predict(chosen)["segment"].to_numpy(), pca.explained_variance_ratio_


def value_measure(features: pd.DataFrame) -> np.ndarray:
    """What orders segment ids: total spend, or purchase days for a log without amounts."""
    column = "total_spend" if "total_spend" in features.columns else "n_orders"
    return features[column].to_numpy(dtype="float64")


def value_order(labels: np.ndarray, spend: np.ndarray, n: int | None = None) -> np.ndarray:
    """Map ``n`` cluster labels (default: those seen) to ids ordered by mean spend, most valuable first."""
    n = int(labels.max()) + 1 if n is None else n
    sums = np.bincount(labels, weights=spend, minlength=n)
    counts = np.maximum(np.bincount(labels, minlength=n), 1)
    ranking = np.argsort(-(sums / counts), kind="stable")
    mapping = np.empty(n, dtype=int)
    mapping[ranking] = np.arange(n)
    return mapping


def quality_metrics(
    space: np.ndarray, labels: np.ndarray, seed: int, sample_size: int = 10_000
) -> dict[str, float]:
    """Silhouette (on a sample above ``sample_size`` rows), Davies-Bouldin, Calinski-Harabasz, sizes."""
    n_segments = len(np.unique(labels))
    sizes = np.bincount(labels)
    metrics: dict[str, float] = {
        "n_segments": float(n_segments),
        "smallest_segment_share": float(sizes[sizes > 0].min() / len(labels)),
        "largest_segment_share": float(sizes.max() / len(labels)),
    }
    if 1 < n_segments < len(labels):
        # scikit-learn's sampled silhouette, its pairs in one compiled pass (no distance matrix at all).
        # Imported here: numba and LLVM are ~50 MB of RSS, kept out of a train's CLV stage (its peak).
        from customer_value.models.segments.silhouette import silhouette

        metrics["silhouette"] = silhouette(space, labels, min(sample_size, len(labels)), seed)
        metrics["davies_bouldin"] = float(davies_bouldin_score(space, labels))
        metrics["calinski_harabasz"] = float(calinski_harabasz_score(space, labels))
    return metrics


def profile(
    features: pd.DataFrame, segments: np.ndarray, predicted: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per segment: size, share, mean and median of each RFM/tenure column, share of total spend.

    With ``predicted`` (the CLV model's ``clv`` and ``churn_probability`` for the same customers), also
    their means and medians and each segment's share of total predicted value.
    """
    columns = features[[c for c in PROFILE_COLUMNS if c in features.columns]]
    if predicted is not None:
        columns = columns.join(predicted[[c for c in ("clv", "churn_probability") if c in predicted.columns]])
    frame = columns.assign(segment=segments)
    grouped = frame.groupby("segment")
    table = pd.concat([grouped.mean().add_prefix("mean_"), grouped.median().add_prefix("median_")], axis=1)
    table.insert(0, "customers", grouped.size())
    table.insert(1, "share", table["customers"] / len(frame))
    if "total_spend" in frame.columns:
        table["spend_share"] = grouped["total_spend"].sum() / frame["total_spend"].sum()
    if "clv" in frame.columns:
        table["value_share"] = grouped["clv"].sum() / frame["clv"].sum()
    return table


class SegmentModel:
    """Fitted pipeline + value-ordered ids + names: the object behind the registered segments model."""

    def __init__(
        self,
        n_clusters: int = 5,
        seed: int = 42,
        algorithm: str = "kmeans",
        preprocessing: str = "log",
        fit_sample: int = 20_000,
        min_cluster_size: int = 50,
        feature_set: FeatureSet = FeatureSet(),
        min_share: float = 0.0,
        min_distinctness: float = 0.0,
    ) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.algorithm = algorithm
        self.preprocessing = preprocessing
        self.fit_sample = fit_sample
        self.min_cluster_size = min_cluster_size
        self.feature_set = feature_set
        self.min_share = min_share  # smaller clusters are merged into their nearest neighbour
        self.min_distinctness = min_distinctness  # closer pairs (KPI gap in SD) are merged

    # Raw cluster -> merged segment before value ordering; models pickled before merging had none.
    merge_map_: np.ndarray | None = None

    @property
    def input_features(self) -> FeatureSet:
        """What it clusters on (models pickled before feature sets existed: the default, RFM + tenure)."""
        return getattr(self, "feature_set", FeatureSet())

    @property
    def input_columns(self) -> list[str]:
        """Columns ``predict`` needs."""
        return self.input_features.columns

    def fit(
        self, features: pd.DataFrame, kpis: pd.DataFrame | None = None, start: SegmentModel | None = None
    ) -> SegmentModel:
        """Cluster, merge clusters below ``min_share`` into their nearest neighbour, then merge pairs less
        than ``min_distinctness`` SD apart on every KPI (``kpis``: one row per customer, aligned with
        ``features``; None = no distinctness merging), then order and name the segments.

        ``start``: the same configuration fitted on a sample of these customers; k-means then runs once
        from its centres instead of from ``n_init`` random starts (at a million customers the random
        starts cost ten full runs; the sample's best start is already near the optimum)."""
        if len(features) < self.n_clusters:
            raise ModelFitError(
                f"segmentation.n_clusters={self.n_clusters} but only {len(features)} customers to cluster"
            )
        pipeline = build_pipeline(
            self.n_clusters,
            self.seed,
            self.algorithm,
            self.preprocessing,
            self.fit_sample,
            self.min_cluster_size,
            self.feature_set,
        )
        if self.preprocessing == "quantile":  # no more quantiles than customers
            pipeline.set_params(features__rfm__transform__n_quantiles=min(1000, len(features)))
        started = None if start is None else start.pipeline_.named_steps["cluster"]
        # Not with categorical attributes: a level the sample missed widens the one-hot space.
        same_k = getattr(started, "n_clusters", 0) == self.n_clusters
        if same_k and not self.input_features.categorical and isinstance(started, KMeans | MiniBatchKMeans):
            pipeline.set_params(cluster__init=started.cluster_centers_, cluster__n_init=1)
        self.pipeline_ = pipeline.fit(features)
        clusterer = self.pipeline_.named_steps["cluster"]
        # Training labels; GaussianMixture keeps none, so only it pays a second pass through the pipeline.
        raw = clusterer.labels_ if hasattr(clusterer, "labels_") else self.pipeline_.predict(features)
        raw = np.asarray(raw, dtype="int64")
        n_raw = max(int(raw.max()) + 1, self._n_raw_clusters(clusterer))
        space = self.pipeline_.named_steps["features"].transform(features)
        merge = merge_small(space, raw, n_raw, self.min_share)
        if kpis is not None and self.min_distinctness > 0:
            merge = merge_indistinct(kpis.to_numpy(dtype="float64"), merge, raw, self.min_distinctness)
        self.merge_map_ = merge
        merged = merge[raw]
        self.label_map_ = value_order(merged, value_measure(features), int(merge.max()) + 1)
        segments = self.label_map_[merged]
        self.profile_ = profile(features, segments)
        present = np.unique(raw)
        if isinstance(clusterer, RFMQuintiles) and len(np.unique(merge[present])) == len(present):
            self.names_ = {int(self.label_map_[merge[g]]): clusterer.group_names_[g] for g in present}
        else:  # the rule's own group names only while no two of its groups were merged
            self.names_ = name_segments(evaluation_space(features), SEGMENT_FEATURES, segments)
        self.profile_.insert(0, "segment_name", [self.names_[s] for s in self.profile_.index])
        return self

    @staticmethod
    def _n_raw_clusters(clusterer: object) -> int:
        """How many raw labels ``predict`` can give (more than training used, for RFM groups or GMM)."""
        if isinstance(clusterer, RFMQuintiles):
            return len(clusterer.group_names_)
        centres = getattr(clusterer, "cluster_centers_", getattr(clusterer, "means_", None))
        return 0 if centres is None else len(centres)

    def raw_to_segment(self, raw: np.ndarray) -> np.ndarray:
        """Segment ids (value order) of raw cluster labels, through the merges."""
        merged = raw if self.merge_map_ is None else self.merge_map_[raw]
        return self.label_map_[merged]

    def explain(self, features: pd.DataFrame) -> pd.DataFrame:
        """Why each customer is in its segment (explanations.py): ``segment_margin`` (how much better its
        segment fits than the runner-up, in the model's space), ``runner_up_segment``, ``reason_1..3`` in
        plain words and ``margin_part.<feature>`` (the parts; they sum to the margin)."""
        parts, segments, runner_up = margin_parts(self, features)
        clusterer = self.pipeline_.named_steps["cluster"]
        rule = None
        if isinstance(clusterer, RFMQuintiles):
            rule = clusterer.scores(self.pipeline_.named_steps["features"].transform(features))
        profile_table = getattr(self, "profile_", None)
        words = reasons(parts, features, segments, runner_up, self.names_, profile_table, rule)
        names = pd.Series(self.names_)
        table = pd.DataFrame(
            {
                "segment_margin": parts.sum(axis=1, min_count=1).to_numpy(),
                "runner_up_segment": names.reindex(runner_up)
                .astype(object)
                .where(runner_up >= 0, None)
                .to_numpy(),
            },
            index=features.index,
        )
        return pd.concat([table, words, parts.add_prefix("margin_part.")], axis=1)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        segments = self.raw_to_segment(self.pipeline_.predict(features))
        names = np.array(
            [self.names_.get(s, f"Segment {s}") for s in range(len(self.label_map_))], dtype=object
        )
        return pd.DataFrame(
            {"segment": segments.astype("int64"), "segment_name": names[segments]}, index=features.index
        )
