"""Behavioural segments: a fitted scikit-learn pipeline, its quality metrics, profiles and names.

The pipeline (log1p -> standardise -> KMeans) is what gets registered, so scoring applies exactly the
preprocessing training used. Segment ids are renumbered by mean spend (0 = most valuable) so that the same
behaviour keeps the same id across refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, QuantileTransformer, StandardScaler

from customer_value.clusterers import RFMQuintiles, make_clusterer
from customer_value.errors import ModelFitError
from customer_value.segment_names import name_segments

SEGMENT_FEATURES = ["days_since_last", "n_orders", "mean_order_value", "T_days"]
PROFILE_COLUMNS = ["days_since_last", "n_orders", "mean_order_value", "total_spend", "T_days"]


PREPROCESSING = ("log", "quantile")
# Optional behaviour features: the CLV model's outputs, purchase regularity (features.purchase_regularity).
EXTRA_BEHAVIOUR = ("clv", "churn_probability", "regularity")


@dataclass(frozen=True)
class FeatureSet:
    """What a segmentation clusters on: RFM + tenure, optional CLV outputs, optional customer attributes."""

    extra: tuple[str, ...] = ()  # from EXTRA_BEHAVIOUR: transformed like the RFM columns
    numeric: tuple[str, ...] = ()  # numeric attributes: median-imputed, standardised
    categorical: tuple[str, ...] = ()  # categorical attributes: one-hot, unseen values ignored

    @property
    def behaviour(self) -> list[str]:
        return [*SEGMENT_FEATURES, *self.extra]

    @property
    def columns(self) -> list[str]:
        """The model's input columns, in order."""
        return [*self.behaviour, *self.numeric, *self.categorical]


def build_pipeline(
    n_clusters: int,
    seed: int,
    algorithm: str = "kmeans",
    preprocessing: str = "log",
    fit_sample: int = 20_000,
    min_cluster_size: int = 50,
    feature_set: FeatureSet = FeatureSet(),
) -> Pipeline:
    """Preprocess (behaviour: log1p or normal-quantile then standardise; numeric attributes: impute and
    standardise; categorical: one-hot), then cluster. The RFM columns come first (RFMQuintiles reads them)."""
    if preprocessing == "log":
        transform = FunctionTransformer(np.log1p)
    elif preprocessing == "quantile":
        transform = QuantileTransformer(output_distribution="normal", n_quantiles=1000, random_state=seed)
    else:
        raise ModelFitError(
            f"unknown segmentation.preprocessing '{preprocessing}'; choose one of {PREPROCESSING}"
        )
    steps = [("transform", transform), ("scale", StandardScaler())]
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
    """A model-independent space (standardised log RFM) in which any two segmentations are compared."""
    values = np.log1p(features[SEGMENT_FEATURES].to_numpy(dtype="float64"))
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


def value_order(labels: np.ndarray, spend: np.ndarray) -> np.ndarray:
    """Map raw cluster labels to ids ordered by mean spend, most valuable first."""
    n = int(labels.max()) + 1
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
        sample = min(sample_size, len(labels))
        metrics["silhouette"] = float(silhouette_score(space, labels, sample_size=sample, random_state=seed))
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
    columns = features[PROFILE_COLUMNS]
    if predicted is not None:
        columns = columns.join(predicted[["clv", "churn_probability"]])
    frame = columns.assign(segment=segments)
    grouped = frame.groupby("segment")
    table = pd.concat([grouped.mean().add_prefix("mean_"), grouped.median().add_prefix("median_")], axis=1)
    table.insert(0, "customers", grouped.size())
    table.insert(1, "share", table["customers"] / len(frame))
    table["spend_share"] = grouped["total_spend"].sum() / frame["total_spend"].sum()
    if predicted is not None:
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
    ) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.algorithm = algorithm
        self.preprocessing = preprocessing
        self.fit_sample = fit_sample
        self.min_cluster_size = min_cluster_size
        self.feature_set = feature_set

    @property
    def input_features(self) -> FeatureSet:
        """What it clusters on (models pickled before feature sets existed: the default, RFM + tenure)."""
        return getattr(self, "feature_set", FeatureSet())

    @property
    def input_columns(self) -> list[str]:
        """Columns ``predict`` needs."""
        return self.input_features.columns

    def fit(self, features: pd.DataFrame) -> SegmentModel:
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
        self.pipeline_ = pipeline.fit(features)
        clusterer = self.pipeline_.named_steps["cluster"]
        # Training labels; GaussianMixture keeps none, so only it pays a second pass through the pipeline.
        raw = clusterer.labels_ if hasattr(clusterer, "labels_") else self.pipeline_.predict(features)
        self.label_map_ = value_order(raw, features["total_spend"].to_numpy())
        segments = self.label_map_[raw]
        self.profile_ = profile(features, segments)
        if isinstance(clusterer, RFMQuintiles):  # the rule's own group names
            self.names_ = {int(self.label_map_[g]): clusterer.group_names_[g] for g in np.unique(raw)}
        else:
            self.names_ = name_segments(evaluation_space(features), SEGMENT_FEATURES, segments)
        self.profile_.insert(0, "segment_name", [self.names_[s] for s in self.profile_.index])
        return self

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        segments = self.label_map_[self.pipeline_.predict(features)]
        names = np.array(
            [self.names_.get(s, f"Segment {s}") for s in range(len(self.label_map_))], dtype=object
        )
        return pd.DataFrame(
            {"segment": segments.astype("int64"), "segment_name": names[segments]}, index=features.index
        )
