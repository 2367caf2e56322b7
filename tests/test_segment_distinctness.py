"""Segments one customer cannot break, and segments a marketer can tell apart on the KPIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.errors import ModelFitError
from customer_value.models.segments.distinctness import (
    distinctness_table,
    merge_indistinct,
    merge_small,
    tenure_r2_gain,
    variance_explained,
)
from customer_value.models.segments.segmentation import FeatureSet, SegmentModel, near_constant_columns
from customer_value.models.segments.selection import choose_k, eligibility
from test_segment_selection import _with_a_tiny_group
from test_segmentation import planted_customers


def test_a_column_shared_by_all_but_one_customer_is_near_constant() -> None:
    features, _ = planted_customers()
    features["T_days"] = 2190.0  # a single-day cohort ...
    features.loc[0, "T_days"] = 1500.0  # ... but for one customer whose free first order was dropped
    assert near_constant_columns(features, ["days_since_last", "n_orders", "T_days", "absent"]) == [
        "T_days",
        "absent",
    ]
    # 85 % one-time buyers are not "near-constant": frequency still separates the other 15 %.
    features["n_orders"] = np.where(np.arange(len(features)) % 20 < 17, 1.0, 5.0)
    assert "n_orders" not in near_constant_columns(features, ["n_orders"])


def test_the_lone_customer_owns_a_cluster_unless_the_column_is_left_out() -> None:
    features, truth = planted_customers()
    features["T_days"] = 2190.0
    features.loc[0, "T_days"] = 40.0
    owned = SegmentModel(n_clusters=3, seed=1, preprocessing="quantile").fit(features)
    assert owned.profile_["customers"].min() == 1  # the bug: 24 SD away, a cluster of its own
    robust = SegmentModel(n_clusters=3, seed=1, feature_set=FeatureSet(excluded=("T_days",))).fit(features)
    assert robust.profile_["share"].min() > 0.3
    assert robust.input_columns == ["days_since_last", "n_orders", "mean_order_value"]
    assert robust.predict(features.drop(columns="T_days"))["segment"].nunique() == 3


def test_winsorising_keeps_an_extreme_customer_from_owning_a_cluster() -> None:
    features, _ = planted_customers()
    features.loc[0, ["mean_order_value", "total_spend"]] = 1e7  # one whale
    model = SegmentModel(n_clusters=3, seed=1).fit(features)
    assert model.profile_["customers"].min() > 250


def test_a_cluster_below_min_share_joins_its_nearest_neighbour() -> None:
    features = _with_a_tiny_group()  # planted groups plus 15 customers (1.6 %) far from everyone
    plain = SegmentModel(n_clusters=4, seed=1).fit(features)
    assert plain.profile_["share"].min() < 0.05
    merged = SegmentModel(n_clusters=4, seed=1, min_share=0.05).fit(features)
    assert len(merged.names_) == 3 and merged.profile_["share"].min() >= 0.05
    labels = merged.predict(features)["segment"].to_numpy()
    # The tiny group (very frequent, high spend, recent) lands with the champions, its nearest neighbour.
    assert len(set(labels[-15:])) == 1 and labels[-15] == labels[0]
    assert merged.predict(features.iloc[-15:])["segment_name"].nunique() == 1


def test_merge_small_follows_centre_distance_and_maps_empty_clusters() -> None:
    space = np.array([[0.0], [0.1], [5.0], [5.1], [5.2], [5.3], [0.2], [0.3], [4.0]])
    raw = np.array([0, 0, 1, 1, 1, 1, 0, 0, 2])  # cluster 2 (1 customer) is nearer 1 than 0; 3 is empty
    mapping = merge_small(space, raw, 4, min_share=0.2)
    assert mapping.tolist() == [0, 1, 1, 1]  # 2 -> 1 (nearest), empty 3 -> 1 (the largest after merging)
    assert merge_small(space, raw, 4, min_share=0.0).tolist() == [0, 1, 2, 3]


def test_pairs_a_marketer_cannot_tell_apart_are_merged() -> None:
    features, truth = planted_customers()
    # Segments 1 (newcomers) and 2 (lapsed) differ in behaviour but share every KPI value here.
    kpis = pd.DataFrame(
        {"churn_probability": np.where(truth == 0, 0.1, 0.8), "log_clv": np.where(truth == 0, 5.0, 1.0)}
    )
    model = SegmentModel(n_clusters=3, seed=1, min_distinctness=0.5).fit(features, kpis)
    assert len(model.names_) == 2
    labels = model.predict(features)["segment"].to_numpy()
    assert len(set(labels[truth == 1]) | set(labels[truth == 2])) == 1
    assert len(set(labels[truth == 0])) == 1 and labels[truth == 0][0] != labels[truth == 1][0]
    # Distinct KPIs: nothing is merged.
    kpis["log_clv"] = truth.astype(float)
    assert len(SegmentModel(n_clusters=3, seed=1, min_distinctness=0.5).fit(features, kpis).names_) == 3


def test_merge_indistinct_merges_the_closest_pair_first() -> None:
    raw = np.repeat([0, 1, 2], 100)
    kpis = np.concatenate([np.full(100, 0.0), np.full(100, 0.05), np.full(100, 3.0)])[:, None]
    kpis = kpis + np.random.default_rng(0).normal(0, 0.01, kpis.shape)
    assert merge_indistinct(kpis, np.arange(3), raw, 0.5).tolist() == [0, 0, 1]
    assert merge_indistinct(kpis, np.arange(3), raw, 0.0).tolist() == [0, 1, 2]


def test_distinctness_and_variance_explained_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    segments = np.repeat([0, 1, 2], 200)
    kpis = pd.DataFrame({"churn": rng.normal(segments * 0.5, 1.0), "value": rng.normal(0, 1.0, 600)})
    table = distinctness_table(kpis, segments, {0: "A", 1: "B", 2: "C"})
    assert len(table) == 3 and table["distinctness_sd"].is_monotonic_increasing
    z = (kpis - kpis.mean()) / kpis.std(ddof=0)
    means = z.groupby(segments).mean()
    first = table.iloc[0]
    a, b = ({"A": 0, "B": 1, "C": 2}[first[key]] for key in ("segment_a", "segment_b"))
    assert first["distinctness_sd"] == pytest.approx((means.loc[a] - means.loc[b]).abs().max())
    explained = variance_explained(kpis, segments)
    direct = kpis["churn"].groupby(segments).transform("mean").var(ddof=0) / kpis["churn"].var(ddof=0)
    assert explained["churn"] == pytest.approx(direct)
    assert explained["value"] < 0.02 < explained["churn"]


def test_tenure_enters_only_when_it_separates_behaviour() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    features = pd.DataFrame(
        {
            "days_since_last": rng.uniform(1, 300, n),
            "n_orders": rng.integers(1, 10, n).astype(float),
            "mean_order_value": rng.lognormal(3, 0.5, n),
            "T_days": rng.uniform(300, 700, n),
        }
    )
    behaviour = np.log1p(features["n_orders"]) - 0.01 * features["days_since_last"]
    by_behaviour = pd.DataFrame({"kpi": behaviour + rng.normal(0, 0.1, n)})
    assert tenure_r2_gain(features, by_behaviour) < 0.02
    by_tenure = pd.DataFrame({"kpi": behaviour + 0.01 * features["T_days"] + rng.normal(0, 0.1, n)})
    assert tenure_r2_gain(features, by_tenure) > 0.2


def test_k_is_chosen_only_among_substantial_distinct_solutions() -> None:
    curves = pd.DataFrame(
        {
            "n_segments": [3, 4, 2],
            "smallest_segment_share": [0.2, 0.1, 0.3],
            "silhouette": [0.3, 0.4, 0.5],
            "min_distinctness": [0.9, 0.3, 1.2],
        },
        index=pd.Index([3, 4, 5], name="k"),
    )
    reasons = eligibility(curves, 0.05, min_segments=3, min_distinctness=0.5)
    assert reasons[3] == "" and "0.30 SD < 0.5" in reasons[4] and "2 segments after merging" in reasons[5]
    assert choose_k(curves, "silhouette", 0.05, 3, 0.5) == 3
    with pytest.raises(
        ModelFitError, match="no substantial, distinct segmentation exists.*k=3: least distinct"
    ):
        choose_k(curves, "silhouette", 0.05, 3, 1.0)


@pytest.mark.slow
def test_cdnow_default_segments_are_substantial_and_pairwise_distinct(
    cdnow_master, tracking_uri: str
) -> None:
    """The issue's acceptance on CDNOW: with the default segmentation, at least 3 segments of at least 5 %,
    every pair at least 0.5 SD apart on some KPI (the CLV outputs of a BG/NBD fit on the full history)."""
    import mlflow
    from hydra import compose, initialize_config_dir

    from customer_value.data.features import customer_features
    from customer_value.jobs.segments_stage import train_segments
    from customer_value.models.clv.model import CLVModel
    from customer_value.schema import register_configs
    from test_end_to_end import CONF

    orders, report = cdnow_master
    today = customer_features(orders, orders["date"].max())
    clv_outputs = CLVModel().fit(today).predict(today, 365.0)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"tracking.uri={tracking_uri}"])
    with mlflow.start_run() as run:
        metrics, _ = train_segments(cfg, orders, report, clv_outputs, today)
    assert metrics["segments.n_segments"] >= 3
    assert metrics["segments.smallest_segment_share"] >= 0.05
    assert metrics["segments.min_distinctness"] >= 0.5
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["segments.features_left_out"].startswith("T_days: explains")  # one cohort: tenure says when
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/segments/distinctness.csv")
    )
    assert (table["distinctness_sd"] >= 0.5).all() and len(table) == metrics["segments.n_segments"] * (
        metrics["segments.n_segments"] - 1
    ) / 2


def test_rfm_groups_keep_their_rule_names_unless_two_are_merged() -> None:
    features, _ = planted_customers()  # five of the six RFM groups occur; "At risk" holds 0.9 %
    plain = SegmentModel(algorithm="rfm_quintiles").fit(features)
    floored = SegmentModel(algorithm="rfm_quintiles", min_share=0.005).fit(features)  # only the empty group
    assert sorted(floored.names_.values()) == sorted(plain.names_.values())
    assert (floored.predict(features)["segment_name"] == plain.predict(features)["segment_name"]).all()
    merged = SegmentModel(algorithm="rfm_quintiles", min_share=0.01).fit(features)  # "At risk" joins another
    assert len(merged.names_) == 4 and "At risk" not in merged.names_.values()
