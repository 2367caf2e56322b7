"""Segments: planted clusters are recovered, ids follow value, names are unique, metrics are sane."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from customer_value.errors import ModelFitError
from customer_value.models.segments.segmentation import (
    SEGMENT_FEATURES,
    SegmentModel,
    evaluation_space,
    quality_metrics,
    value_order,
)


def planted_customers(n_per_group: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three behaviour groups far apart in log space: champions, newcomers, lapsed."""
    rng = np.random.default_rng(seed)
    centres = {  # days_since_last, n_orders, mean_order_value, T_days
        0: (10, 20, 80, 700),
        1: (15, 1, 20, 30),
        2: (500, 2, 25, 650),
    }
    rows, truth = [], []
    for group, centre in centres.items():
        noise = rng.lognormal(0.0, 0.12, (n_per_group, 4))
        rows.append(np.asarray(centre) * noise)
        truth.append(np.full(n_per_group, group))
    values = np.vstack(rows)
    frame = pd.DataFrame(values, columns=SEGMENT_FEATURES)
    frame["n_orders"] = np.maximum(np.round(frame["n_orders"]), 1)
    frame["days_since_last"] = np.minimum(frame["days_since_last"], frame["T_days"])
    frame["total_spend"] = frame["n_orders"] * frame["mean_order_value"]
    return frame, np.concatenate(truth)


def test_default_pipeline_recovers_planted_clusters() -> None:
    features, truth = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1).fit(features)
    predicted = model.predict(features)["segment"].to_numpy()
    assert adjusted_rand_score(truth, predicted) >= 0.9


def test_ids_follow_value_and_names_describe_behaviour() -> None:
    features, truth = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1).fit(features)
    predicted = model.predict(features)
    by_truth = pd.crosstab(truth, predicted["segment"]).idxmax(axis=1)
    assert by_truth[0] == 0  # the big spenders are segment 0
    assert model.names_[by_truth[0]] == "Champions"
    assert model.names_[by_truth[1]] == "Promising newcomers"
    assert model.names_[by_truth[2]] in {"Lost", "Hibernating"}
    assert len(set(model.names_.values())) == 3
    spend = model.profile_["mean_total_spend"].to_numpy()
    assert (np.diff(spend) <= 0).all()
    assert model.profile_["share"].sum() == pytest.approx(1.0)
    assert model.profile_["spend_share"].sum() == pytest.approx(1.0)


def test_duplicate_names_are_told_apart_by_how_the_segments_differ() -> None:
    features, _ = planted_customers()
    model = SegmentModel(n_clusters=6, seed=1).fit(features)
    names = list(model.names_.values())
    assert len(set(names)) == len(names) == 6
    qualified = [n for n in names if "(" in n]
    assert qualified and not any(n[-1].isdigit() for n in names)  # "Lost (longer tenure)", never "Lost 2"


def test_qualifiers_follow_the_dimension_with_the_largest_difference() -> None:
    from customer_value.models.segments.names import action_for, distinguish

    centres = pd.DataFrame(  # two lapsed, infrequent segments that differ mostly in tenure
        {
            "days_since_last": [1.0, 1.1],
            "n_orders": [-0.5, -0.6],
            "mean_order_value": [0.0, 0.1],
            "T_days": [1.5, -1.0],
        },
        index=[3, 4],
    )
    named = distinguish({3: "Lost", 4: "Lost"}, centres)
    assert named == {3: "Lost (longer tenure)", 4: "Lost (shorter tenure)"}
    assert action_for(named[3], {"Lost": "suppress"}) == "suppress"
    assert action_for("Unheard of", {"Lost": "suppress"}).startswith("Review manually")


def test_predict_reproduces_training_assignments_and_is_row_order_invariant() -> None:
    features, _ = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1).fit(features)
    labels = model.predict(features)["segment"]
    shuffled = features.sample(frac=1.0, random_state=3)
    assert (model.predict(shuffled)["segment"] == labels.loc[shuffled.index]).all()


def test_value_order_ranks_by_mean_spend() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    spend = np.array([1.0, 1.0, 10.0, 10.0, 5.0])
    assert list(value_order(labels, spend)) == [2, 0, 1]


def test_quality_metrics_prefer_the_true_partition() -> None:
    features, truth = planted_customers()
    space = evaluation_space(features)
    good = quality_metrics(space, truth, seed=0)
    shuffled = quality_metrics(space, np.random.default_rng(0).permutation(truth), seed=0)
    assert good["silhouette"] > 0.5 > shuffled["silhouette"]
    assert good["davies_bouldin"] < shuffled["davies_bouldin"]
    assert good["calinski_harabasz"] > shuffled["calinski_harabasz"]
    assert good["smallest_segment_share"] == pytest.approx(1 / 3)


def test_more_clusters_than_customers_is_a_clear_error() -> None:
    features, _ = planted_customers(n_per_group=1)
    with pytest.raises(ModelFitError, match="n_clusters=5 but only 3 customers"):
        SegmentModel(n_clusters=5).fit(features)


@pytest.mark.parametrize("algorithm", ["kmeans", "minibatch_kmeans", "gmm", "ward"])
def test_every_k_algorithm_recovers_planted_clusters(algorithm: str) -> None:
    features, truth = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1, algorithm=algorithm).fit(features)
    assert adjusted_rand_score(truth, model.predict(features)["segment"]) >= 0.9


def test_quantile_preprocessing_recovers_planted_clusters() -> None:
    features, truth = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1, preprocessing="quantile").fit(features)
    assert adjusted_rand_score(truth, model.predict(features)["segment"]) >= 0.9


def test_hdbscan_finds_the_planted_groups_without_being_told_k() -> None:
    features, truth = planted_customers()
    model = SegmentModel(algorithm="hdbscan", min_cluster_size=50, seed=1)
    labels = model.fit(features).predict(features)["segment"]
    assert labels.nunique() == 3 and adjusted_rand_score(truth, labels) >= 0.9
    assert 0 <= model.pipeline_.named_steps["cluster"].noise_share_ < 0.2


def test_ward_and_hdbscan_fit_on_a_sample_and_still_assign_everyone() -> None:
    features, truth = planted_customers()
    model = SegmentModel(n_clusters=3, seed=1, algorithm="ward", fit_sample=200).fit(features)
    labels = model.predict(features)["segment"]
    assert len(labels) == len(features) and adjusted_rand_score(truth, labels) >= 0.9


def test_rfm_quintiles_baseline_uses_the_classic_grid() -> None:
    features, truth = planted_customers()
    model = SegmentModel(algorithm="rfm_quintiles").fit(features)
    predicted = model.predict(features)
    champions = predicted.loc[truth == 0, "segment_name"].value_counts()
    lapsed = predicted.loc[truth == 2, "segment_name"].value_counts()
    assert champions.index[0] in {"Champions", "Loyal"} and lapsed.index[0] in {"At risk", "Hibernating"}
    assert set(predicted["segment_name"]) <= {
        "Champions",
        "Loyal",
        "At risk",
        "Promising newcomers",
        "Needs attention",
        "Hibernating",
    }
    # Quintile scores survive the monotone preprocessing: both give the same groups.
    quantile = SegmentModel(algorithm="rfm_quintiles", preprocessing="quantile").fit(features)
    assert (quantile.predict(features)["segment_name"] == predicted["segment_name"]).all()


def test_a_fit_started_from_a_sample_runs_once_from_its_centres_and_finds_the_same_segments() -> None:
    """``fit(start=...)``: what a large base's final fit does (k chosen on a sample, fitted on everyone)."""
    features, _ = planted_customers(n_per_group=2000, seed=4)
    features = features * np.random.default_rng(5).lognormal(0.0, 0.4, features.shape)  # overlapping
    sample = features.sample(n=1000, random_state=1)
    started_from = SegmentModel(n_clusters=5, seed=1).fit(sample)
    started = SegmentModel(n_clusters=5, seed=1).fit(features, start=started_from)
    plain = SegmentModel(n_clusters=5, seed=1).fit(features)
    ours, theirs = (m.pipeline_.named_steps["cluster"] for m in (started, plain))
    assert ours.n_init == 1 and theirs.n_init == 10
    np.testing.assert_array_equal(ours.init, started_from.pipeline_.named_steps["cluster"].cluster_centers_)
    assert ours.inertia_ <= 1.01 * theirs.inertia_
    labels = [m.predict(features)["segment"].to_numpy() for m in (started, plain)]
    assert adjusted_rand_score(*labels) >= 0.95
