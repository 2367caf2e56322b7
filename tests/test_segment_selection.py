"""Choosing k, rejecting solutions that are not substantial, and measuring stability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.data.features import customer_features
from customer_value.errors import ModelFitError
from customer_value.models.segments.segmentation import SegmentModel
from customer_value.models.segments.selection import choose_k, criterion_curves, require_substantial
from customer_value.models.segments.stability import bootstrap_ari, window_ari
from test_segmentation import planted_customers


def test_the_rule_finds_the_planted_k() -> None:
    features, _ = planted_customers()
    curves, models = criterion_curves(
        features,
        [2, 3, 4, 5, 6],
        lambda k: SegmentModel(n_clusters=k, seed=1),
        seed=0,
        silhouette_sample=2000,
    )
    assert list(curves.index) == [2, 3, 4, 5, 6] and set(models) == {2, 3, 4, 5, 6}
    for rule in ("silhouette", "calinski_harabasz", "davies_bouldin"):
        assert choose_k(curves, rule, min_share=0.05) == 3, rule


def test_bic_picks_the_planted_k_for_mixtures() -> None:
    features, _ = planted_customers()
    curves, _ = criterion_curves(
        features, [2, 3, 4], lambda k: SegmentModel(n_clusters=k, seed=1, algorithm="gmm"), 0, 2000
    )
    assert choose_k(curves, "bic", min_share=0.05) == 3
    with pytest.raises(ModelFitError, match="needs bic"):
        choose_k(curves.drop(columns="bic"), "bic", min_share=0.05)


def _with_a_tiny_group() -> pd.DataFrame:
    """The planted groups plus 15 customers (1.6%) far from everyone."""
    features, _ = planted_customers()
    tiny = pd.DataFrame(
        {"days_since_last": 3.0, "n_orders": 200.0, "mean_order_value": 2000.0, "T_days": 60.0},
        index=range(15),
    )
    tiny["total_spend"] = tiny["n_orders"] * tiny["mean_order_value"]
    return pd.concat([features, tiny], ignore_index=True)


def test_a_solution_with_a_tiny_segment_is_rejected_with_the_reason() -> None:
    features = _with_a_tiny_group()
    model = SegmentModel(n_clusters=4, seed=1).fit(features)
    assert model.profile_["share"].min() < 0.05  # KMeans does give the outliers their own segment
    with pytest.raises(
        ModelFitError, match=r"not substantial: segment \d: 0\.016 below segmentation.min_share=0.05"
    ):
        require_substantial(model.profile_["share"], 0.05)
    require_substantial(model.profile_["share"], 0.01)  # a looser floor accepts it


def test_the_rule_skips_insubstantial_k_and_fails_when_none_is_left() -> None:
    features = _with_a_tiny_group()
    curves, _ = criterion_curves(features, [3, 4, 5], lambda k: SegmentModel(n_clusters=k, seed=1), 0, 2000)
    assert curves.loc[3, "smallest_segment_share"] > 0.05 > curves.loc[4, "smallest_segment_share"]
    assert choose_k(curves, "silhouette", min_share=0.05) == 3
    with pytest.raises(ModelFitError, match="no segmentation is substantial.*k=3: "):
        choose_k(curves, "silhouette", min_share=0.5)


def test_stability_is_high_for_planted_clusters_and_in_range_for_generated_orders(synthetic_orders) -> None:
    features, _ = planted_customers()
    labels = SegmentModel(n_clusters=3, seed=1).fit(features).predict(features)["segment"].to_numpy()
    mean, sd = bootstrap_ari(features, labels, lambda: SegmentModel(n_clusters=3, seed=1), 4, seed=0)
    assert mean > 0.95 and 0 <= sd < 0.05
    orders = synthetic_orders.rename(columns={"timestamp": "date"})
    orders["date"] = pd.to_datetime(orders["date"]).dt.normalize()
    as_of = orders["date"].max()
    assert len(customer_features(orders, as_of - pd.Timedelta(days=90))) > 100
    ari = window_ari(orders, as_of, 90, lambda: SegmentModel(n_clusters=3, seed=1))
    assert -1 <= ari <= 1 and np.isfinite(ari)


def test_the_compiled_silhouette_is_scikit_learns_on_the_same_sample() -> None:
    """k selection's silhouette (pairs in one compiled pass) against scikit-learn's silhouette_score with
    the same sample_size and random_state: unequal clusters, a singleton, the whole set unsampled, and the
    same refusal of a single cluster."""
    from sklearn.metrics import silhouette_score

    from customer_value.models.segments.silhouette import silhouette

    rng = np.random.default_rng(3)
    space = np.vstack([rng.normal(centre, 1.0, (n, 3)) for centre, n in ((0, 3000), (2.5, 1500), (6, 400))])
    labels = np.repeat([4, 1, 7], [3000, 1500, 400])
    labels[5] = 9  # a cluster of one
    for sample in (1000, None):
        theirs = silhouette_score(space, labels, sample_size=sample, random_state=11)
        assert silhouette(space, labels, sample, 11) == pytest.approx(theirs, rel=1e-12, abs=1e-14)
    with pytest.raises(ValueError, match="Number of labels is 1"):
        silhouette(space, np.zeros(len(space), dtype=int), 500, 0)
