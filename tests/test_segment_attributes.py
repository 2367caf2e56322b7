"""Customer attributes: loaded with clear errors, protected ones refused as features and audited."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from customer_value.errors import DataError, UserError
from customer_value.models.segments.attributes import (
    join_attributes,
    load_attributes,
    protected_audit,
    refuse_protected_features,
)
from customer_value.models.segments.segmentation import FeatureSet, SegmentModel
from test_segmentation import planted_customers

PROTECTED = ["age", "gender", "race", "ethnicity", "religion", "disability", "marital_status"]


def _config(path: Path | None, numeric=(), categorical=()) -> object:
    return OmegaConf.create(
        {
            "path": None if path is None else str(path),
            "customer_id": "customer_id",
            "numeric": list(numeric),
            "categorical": list(categorical),
            "protected": PROTECTED,
        }
    )


@pytest.mark.parametrize("asked", ["gender", "Marital Status", "marital-status", "AGE"])
def test_a_protected_attribute_can_never_be_a_feature(asked: str) -> None:
    with pytest.raises(UserError, match="protected attribute"):
        refuse_protected_features(_config(Path("a.csv"), categorical=[asked]), [])
    refuse_protected_features(_config(Path("a.csv"), categorical=["region"]), [])  # fine


def test_bad_attribute_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_attributes(_config(tmp_path / "none.csv"))
    path = tmp_path / "attributes.csv"
    pd.DataFrame({"id": ["a"], "income": [1.0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['customer_id'\]"):
        load_attributes(_config(path, numeric=["income"]))
    pd.DataFrame({"customer_id": ["a", "b", "c"], "income": ["10", "lots", ""]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="column income has 1 non-numeric value"):
        load_attributes(_config(path, numeric=["income"]))
    pd.DataFrame({"customer_id": ["a", "a"], "income": [1, 2]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="repeats 1 id"):
        load_attributes(_config(path, numeric=["income"]))


def test_attributes_join_cluster_and_protected_columns_are_audited_not_used(tmp_path: Path) -> None:
    features, truth = planted_customers(n_per_group=100)
    features.index = [f"c{i}" for i in range(len(features))]
    rng = np.random.default_rng(0)
    attributes = pd.DataFrame(
        {
            "customer_id": features.index[:-10],  # ten customers have no attributes row
            "region": np.where(truth[:-10] == 1, "north", "south"),
            "income": rng.normal(50, 5, len(features) - 10),
            "Gender": rng.choice(["f", "m"], len(features) - 10),
        }
    )
    path = tmp_path / "attributes.parquet"
    attributes.to_parquet(path)
    table, protected = load_attributes(_config(path, numeric=["income"], categorical=["region"]))
    assert protected == ["Gender"] and set(table.columns) == {"income", "region", "Gender"}
    joined = join_attributes(features, table, ["income", "region"])
    assert joined["income"].isna().sum() == 10 and (joined["region"] == "(missing)").sum() == 10

    feature_set = FeatureSet(numeric=("income",), categorical=("region",))
    model = SegmentModel(n_clusters=3, seed=1, feature_set=feature_set).fit(joined)
    assert model.input_columns[-2:] == ["income", "region"] and "Gender" not in model.input_columns
    assert adjusted_rand_score(truth, model.predict(joined)["segment"]) >= 0.9
    unseen = joined.assign(region="west")  # a category training never saw is ignored, not an error
    assert len(model.predict(unseen)) == len(joined)

    segments = model.predict(joined)["segment"]
    audit = protected_audit(segments, table[protected])
    assert set(audit["attribute"]) == {"Gender"}
    assert audit.groupby("segment")["share_of_segment"].sum().round(9).eq(1.0).all()
    assert audit["customers"].sum() == len(joined)  # the ten without a row are counted as (missing)
    assert "(missing)" in set(audit["group"])
