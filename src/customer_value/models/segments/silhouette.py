"""The silhouette of a clustering on a seeded sample: scikit-learn's ``silhouette_score(sample_size=...)``
(the same sample, the same formula) with the pairwise distances in one compiled pass.

k selection computes it for every candidate k on 10,000 customers: 50 million pairs each. scikit-learn
builds the distance matrix in chunks (the dot-product form, then a square root) and reduces it per
cluster: 0.76 s per k on 10,000 customers on the 2-core Xeon. Here each pair is visited once, its
distance (the plain difference form, no cancellation) added to both customers' sums for the other's
cluster: 0.25 s. Same value to ~1e-12 (tested against scikit-learn).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from sklearn.utils import check_random_state


@njit(cache=True, fastmath=False)
def _distance_sums(points: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Each point's summed distance to the points of every cluster (itself excluded: distance 0)."""
    n, width = points.shape
    sums = np.zeros((n, n_clusters))
    for i in range(n):
        for j in range(i + 1, n):
            total = 0.0
            for f in range(width):
                gap = points[i, f] - points[j, f]
                total += gap * gap
            distance = math.sqrt(total)
            sums[i, labels[j]] += distance
            sums[j, labels[i]] += distance
    return sums


def silhouette(space: np.ndarray, labels: np.ndarray, sample_size: int | None, seed: int) -> float:
    """Mean silhouette of ``labels`` in ``space`` on ``sample_size`` customers drawn as scikit-learn draws
    them for ``random_state=seed`` (all of them when None); a ValueError when the sample holds fewer than
    two clusters or as many clusters as customers, as scikit-learn's."""
    points, labels = np.asarray(space, dtype="float64"), np.asarray(labels)
    if sample_size is not None:
        rows = check_random_state(seed).permutation(points.shape[0])[:sample_size]
        points, labels = points[rows], labels[rows]
    codes = np.unique(labels, return_inverse=True)[1].ravel()
    n_clusters, n = int(codes.max()) + 1 if len(codes) else 0, len(codes)
    if not 1 < n_clusters < n:
        raise ValueError(f"Number of labels is {n_clusters}. Valid values are 2 to n_samples - 1 (inclusive)")
    sizes = np.bincount(codes, minlength=n_clusters).astype("float64")
    sums = _distance_sums(np.ascontiguousarray(points), codes.astype(np.int64), n_clusters)
    own = sums[np.arange(n), codes]
    mates = sizes[codes] - 1.0
    intra = np.divide(own, mates, out=np.zeros(n), where=mates > 0)
    means = sums / sizes
    means[np.arange(n), codes] = np.inf
    inter = means.min(axis=1)
    spread = np.maximum(intra, inter)
    values = np.divide(inter - intra, spread, out=np.zeros(n), where=spread > 0)
    return float(np.mean(np.where(mates > 0, values, 0.0)))  # a customer alone in its cluster scores 0
