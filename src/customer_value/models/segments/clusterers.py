"""The clustering algorithms a segmentation can use, each with a ``predict`` so the pipeline can score.

KMeans, MiniBatchKMeans and GaussianMixture predict natively. Ward (agglomerative) and HDBSCAN do not,
and both cost O(n^2) memory: they are fitted on at most ``fit_sample`` customers and every customer is
then assigned to the nearest centre of the clusters found (HDBSCAN's noise points included, so every
customer gets a segment; the noise share is kept as ``noise_share_``). ``RFMQuintiles`` is the classic
rule-based baseline: recency and frequency quintile scores (1-5) mapped to six named groups.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.mixture import GaussianMixture

from customer_value.errors import ModelFitError

ALGORITHMS = ("kmeans", "minibatch_kmeans", "gmm", "ward", "hdbscan", "rfm_quintiles")
TAKES_K = ("kmeans", "minibatch_kmeans", "gmm", "ward")


class CentroidAssigner(BaseEstimator, ClusterMixin):
    """Fit a clusterer without ``predict`` on a sample, then assign everyone to the nearest cluster centre."""

    def __init__(self, clusterer: BaseEstimator, fit_sample: int = 20_000, seed: int = 0) -> None:
        self.clusterer = clusterer
        self.fit_sample = fit_sample
        self.seed = seed

    def fit(self, X: np.ndarray, y: None = None) -> CentroidAssigner:
        rng = np.random.default_rng(self.seed)
        rows = rng.choice(len(X), self.fit_sample, replace=False) if len(X) > self.fit_sample else slice(None)
        sample = X[rows]
        labels = clone(self.clusterer).fit(sample).labels_
        found = np.unique(labels[labels >= 0])
        if len(found) == 0:
            raise ModelFitError(
                f"{type(self.clusterer).__name__} found no cluster in {len(sample):,} customers (all noise); "
                "lower segmentation.min_cluster_size"
            )
        self.cluster_centers_ = np.vstack([sample[labels == label].mean(axis=0) for label in found])
        self.noise_share_ = float(np.mean(labels < 0))
        self.labels_ = self.predict(X)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        distances = ((X[:, None, :] - self.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)


# RFM grid on (recency score, frequency score), 5 = best; checked in this order.
RFM_GROUPS = (
    ("Champions", lambda r, f: (r >= 4) & (f >= 4)),
    ("Loyal", lambda r, f: (r >= 3) & (f >= 3)),
    ("At risk", lambda r, f: (r <= 2) & (f >= 3)),
    ("Promising newcomers", lambda r, f: r >= 4),
    ("Needs attention", lambda r, f: r == 3),
    ("Hibernating", lambda r, f: np.ones_like(r, dtype=bool)),
)


class RFMQuintiles(BaseEstimator, ClusterMixin):
    """Rule-based RFM baseline on the preprocessed matrix (quintiles survive any monotone transform).

    ``recency_column`` holds days since the last purchase (fewer = better), ``frequency_column`` the
    number of purchase days. Edges are the training data's quintiles; ties (many one-time buyers) share a
    score. Labels are the RFM_GROUPS indices, so a group nobody falls in is simply absent.
    """

    def __init__(self, recency_column: int = 0, frequency_column: int = 1) -> None:
        self.recency_column = recency_column
        self.frequency_column = frequency_column

    def fit(self, X: np.ndarray, y: None = None) -> RFMQuintiles:
        quantiles = [0.2, 0.4, 0.6, 0.8]
        self.recency_edges_ = np.quantile(X[:, self.recency_column], quantiles)
        self.frequency_edges_ = np.quantile(X[:, self.frequency_column], quantiles)
        self.group_names_ = [name for name, _ in RFM_GROUPS]
        self.labels_ = self.predict(X)
        return self

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        recency = 5 - np.searchsorted(self.recency_edges_, X[:, self.recency_column], side="left")
        frequency = 1 + np.searchsorted(self.frequency_edges_, X[:, self.frequency_column], side="left")
        return recency, frequency

    def predict(self, X: np.ndarray) -> np.ndarray:
        recency, frequency = self.scores(X)
        labels = np.full(len(X), -1)
        for index, (_, rule) in enumerate(RFM_GROUPS):
            labels = np.where((labels < 0) & rule(recency, frequency), index, labels)
        return labels


def make_clusterer(
    algorithm: str, n_clusters: int, seed: int, fit_sample: int = 20_000, min_cluster_size: int = 50
) -> BaseEstimator:
    """A fresh, unfitted clusterer for ``algorithm`` (see ALGORITHMS)."""
    if algorithm == "kmeans":
        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    if algorithm == "minibatch_kmeans":
        return MiniBatchKMeans(n_clusters=n_clusters, n_init=10, batch_size=4096, random_state=seed)
    if algorithm == "gmm":
        return GaussianMixture(n_components=n_clusters, covariance_type="full", n_init=3, random_state=seed)
    if algorithm == "ward":
        return CentroidAssigner(
            AgglomerativeClustering(n_clusters=n_clusters, linkage="ward"), fit_sample, seed
        )
    if algorithm == "hdbscan":
        return CentroidAssigner(HDBSCAN(min_cluster_size=min_cluster_size, copy=True), fit_sample, seed)
    if algorithm == "rfm_quintiles":
        return RFMQuintiles()
    raise ModelFitError(f"unknown segmentation.algorithm '{algorithm}'; choose one of {list(ALGORITHMS)}")
