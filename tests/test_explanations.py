"""Why this segment (issue 29, part 4): margins split exactly per feature for every clusterer, reasons in
plain words, only the model's own features, and the pyfunc's answer carrying them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.data.features import customer_features
from customer_value.data.synthetic import generate_orders
from customer_value.models.segments.clusterers import ALGORITHMS
from customer_value.models.segments.explanations import UNASSIGNED_PART, criteria_by_segment, margin_parts
from customer_value.models.segments.segmentation import FeatureSet, SegmentModel


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    orders = generate_orders(1_500, seed=5)
    orders["date"] = pd.to_datetime(orders["timestamp"]).dt.normalize()
    table = customer_features(orders, orders["date"].max())
    rng = np.random.default_rng(5)
    table["channel"] = rng.choice(["web", "store", "phone"], len(table))
    table["age"] = rng.normal(40, 10, len(table))
    table["gender"] = rng.choice(["female", "male"], len(table))  # protected: never a model input
    return table


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_parts_sum_to_the_margin_and_the_segment_is_the_models(algorithm: str, features) -> None:
    model = SegmentModel(n_clusters=4, algorithm=algorithm, seed=1, min_cluster_size=15).fit(features)
    rows = features[model.input_columns]
    explained = model.explain(rows)
    predicted = model.predict(rows)
    parts = explained[[c for c in explained.columns if c.startswith("margin_part.")]]
    assert [c.removeprefix("margin_part.") for c in parts.columns if UNASSIGNED_PART not in c] == (
        model.input_columns
    )
    if algorithm == "rfm_quintiles":  # a rule: no margin; its two scores are the reasons
        assert explained["segment_margin"].isna().all()
        assert explained["reason_1"].str.contains(r"recency score [1-5] of 5").all()
        assert explained["reason_2"].str.contains(r"frequency score [1-5] of 5").all()
        return
    _, segments, runner_up = margin_parts(model, rows)
    np.testing.assert_array_equal(segments, predicted["segment"].to_numpy())
    assert (runner_up != segments).all()
    np.testing.assert_allclose(parts.sum(axis=1), explained["segment_margin"], rtol=1e-12, atol=1e-12)
    assert (explained["segment_margin"] >= 0).all() and explained["reason_1"].notna().all()
    # The margin is the clusterer's own: squared-distance gap for centres, log-density gap for a mixture.
    clusterer = model.pipeline_.named_steps["cluster"]
    space = model.pipeline_.named_steps["features"].transform(rows)
    raw_segment = model.raw_to_segment(np.arange(len(model.merge_map_)))
    if algorithm == "gmm":
        fit = np.log(np.clip(clusterer.predict_proba(space), 1e-300, None))
    else:
        centres = clusterer.cluster_centers_
        fit = -((space[:, None, :] - centres[None]) ** 2).sum(axis=2)
    best = fit.max(axis=1)
    runner = np.where(raw_segment[None, :] == segments[:, None], -np.inf, fit).max(axis=1)
    usable = runner > np.log(1e-250) if algorithm == "gmm" else np.ones(len(rows), bool)
    np.testing.assert_allclose(
        explained["segment_margin"][usable], (best - runner)[usable], rtol=1e-8, atol=1e-9
    )


def test_a_customer_off_a_centre_in_one_feature_only_has_that_feature_as_first_reason(features) -> None:
    """Take one segment's centre and move a single feature until the customer belongs to another segment:
    that feature is the only one pulling it there, so it is reason 1 and every other part is <= 0."""
    model = SegmentModel(n_clusters=4, algorithm="kmeans", preprocessing="robust", seed=1).fit(features)
    scaler = model.pipeline_.named_steps["features"].named_transformers_["rfm"].named_steps["scale"]
    centres = model.pipeline_.named_steps["cluster"].cluster_centers_
    raw_segment = model.raw_to_segment(np.arange(len(centres)))
    tested = 0
    for home in range(len(centres)):
        for j, column in enumerate(model.input_columns):
            for step in np.linspace(0.5, 6, 23):
                point = centres[home].copy()
                point[j] += step * np.sign(np.mean(centres[:, j]) - centres[home, j] or 1.0)
                raw = pd.DataFrame(
                    np.expm1(scaler.inverse_transform(point[None, :])), columns=model.input_columns
                )
                if model.predict(raw)["segment"].iloc[0] == raw_segment[home]:
                    continue  # still at home: move further
                explained = model.explain(raw).iloc[0]
                if explained["runner_up_segment"] != model.names_[int(raw_segment[home])]:
                    break  # a third segment's centre is nearer than home: not this test's situation
                parts = explained[[f"margin_part.{c}" for c in model.input_columns]].astype(float)
                assert parts.idxmax() == f"margin_part.{column}"
                assert (parts.drop(f"margin_part.{column}") <= 1e-9).all()
                tested += 1
                break
    assert tested >= 4  # several (segment, feature) pairs crossed a boundary


def test_reasons_are_plain_words_about_the_models_own_features_only(features) -> None:
    feature_set = FeatureSet(numeric=("age",), categorical=("channel",))
    model = SegmentModel(n_clusters=4, seed=1, feature_set=feature_set).fit(features)
    explained = model.explain(features[model.input_columns])
    parts = [c for c in explained.columns if c.startswith("margin_part.")]
    assert parts == [
        f"margin_part.{c}" for c in [*model.input_columns]
    ]  # one-hot columns summed into channel
    texts = explained[["reason_1", "reason_2", "reason_3"]].stack().dropna()
    assert not texts.str.contains("gender|female|male").any()
    assert texts.str.match(
        r"^(last purchase [\d,]+ days ago|[\d,]+ purchase days?|average order [\d,.]+|"
        r"customer for [\d,]+ days|age [-\d,.e]+|channel (web|store|phone))"
    ).all()
    some = explained.loc[explained["reason_1"].str.startswith("last purchase"), "reason_1"]
    assert some.str.contains(r"\(.+ typically [\d,]+, .+ [\d,]+\)$").any()  # both segments' medians
    criteria = criteria_by_segment(
        explained[parts].rename(columns=lambda c: c.removeprefix("margin_part.")),
        model.predict(features[model.input_columns])["segment"].to_numpy(),
    )
    assert set(criteria) == set(model.names_) and all(t.startswith("mostly ") for t in criteria.values())


def test_each_value_is_worded_once_and_a_missing_one_says_so() -> None:
    from customer_value.models.segments.explanations import _phrases

    assert _phrases("regularity", np.array([0.5, np.nan, 0.5])).tolist() == [
        "purchase regularity 0.50",
        "purchase regularity unknown",
        "purchase regularity 0.50",
    ]
    assert _phrases("n_orders", np.array([1.0, 2.0])).tolist() == ["1 purchase day", "2 purchase days"]
    assert _phrases("age", np.array([31.5, np.nan])).tolist() == ["age 31.5", "age missing"]
    assert _phrases("channel", np.array(["web", None], dtype=object)).tolist() == [
        "channel web",
        "channel missing",
    ]
