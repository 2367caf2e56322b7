"""The customer file: read with one-line errors, found by segmentation and scoring, covariates checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from customer_value.data.customers import load_customers
from customer_value.errors import DataError, UserError
from customer_value.jobs.score import _segment_extras
from customer_value.jobs.segments_stage import segment_attributes
from customer_value.models.segments.attributes import attributes_file
from customer_value.models.segments.segmentation import FeatureSet
from customer_value.schema import validate_train_config
from test_config import _compose

PROTECTED = ["age", "gender", "marital_status"]


def _customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["c1", " c2", "c3", "c4"],  # ids are stripped, as in the order log
            "income": [10.5, np.nan, 30.0, 40.0],
            "region": ["north", "", "south", None],
            "Gender": ["f", "m", "f", "x"],
            "notes": ["not", "read", "at", "all"],
        }
    )


def test_a_csv_customer_file_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    _customers().to_csv(path, index=False)
    frame, protected = load_customers(str(path), "customer_id", ["income", "region"], PROTECTED)
    assert protected == ["Gender"] and list(frame.columns) == ["income", "region", "Gender"]
    assert list(frame.index) == ["c1", "c2", "c3", "c4"] and frame.index.name == "customer_id"
    assert frame["income"].dtype == "float64" and frame["income"].isna().sum() == 1
    assert frame["region"].tolist()[0::2] == ["north", "south"] and frame["region"].isna().sum() == 2


def test_a_parquet_customer_file_gives_text_ids_and_float_numbers(tmp_path: Path) -> None:
    path = tmp_path / "customers.parquet"
    pd.DataFrame({"cust": [101, 102], "employees": [3, 40], "tier": ["gold", " "]}).to_parquet(path)
    frame, protected = load_customers(str(path), "cust", ["employees", "tier"], PROTECTED)
    assert protected == [] and list(frame.index) == ["101", "102"]  # as the order log's ids
    assert frame["employees"].dtype == "float64" and frame["employees"].tolist() == [3.0, 40.0]
    assert frame["tier"].iloc[0] == "gold" and pd.isna(frame["tier"].iloc[1])  # blank is missing


BAD_FILES = {
    "missing": (None, "no such file"),
    "empty": (b"", "file is empty (0 rows, no header)"),
    "unreadable": (b"customer_id,\xff\xfe\n", "cannot read its header (UnicodeDecodeError)"),
    "no_rows": (b"customer_id,income\n", "column customer_id has 0 rows; a customer file needs one row"),
    "missing_column": (b"id,income\na,1\n", "missing column(s) ['customer_id']; the file has ['id', 'inc"),
    "blank_id": (b"customer_id,income\na,1\n ,2\n,3\n", "column customer_id is blank in 2 of 3 rows"),
    "repeated_id": (
        b"customer_id,income\na,1\na,2\nb,3\nb,4\n",
        "column customer_id repeats 2 id(s); a customer file needs one row per customer",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_customer_file_is_a_one_line_error_naming_the_file(case: str, tmp_path: Path) -> None:
    content, message = BAD_FILES[case]
    path = tmp_path / "customers.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        load_customers(str(path), "customer_id", ["income"], PROTECTED)
    assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_segmentation_reads_the_dataset_customer_file_unless_its_own_path_is_set(tmp_path: Path) -> None:
    assert attributes_file(_compose("train", [])) is None
    customers = tmp_path / "customers.csv"
    _customers().rename(columns={"customer_id": "cust"}).to_csv(customers, index=False)
    data_only = ["data.customers.id=cust", f"data.customers.path={customers}"]
    file = attributes_file(_compose("train", [*data_only, "segmentation.attributes.customer_id=ignored"]))
    assert file == (str(customers), "cust", "data.customers.path")  # data.customers.id goes with its path
    older = ["segmentation.attributes.path=old.csv", "segmentation.attributes.customer_id=id"]
    assert attributes_file(_compose("train", [*data_only, *older])) == (
        "old.csv",
        "id",
        "segmentation.attributes.path",
    )

    cfg = _compose("train", [*data_only, "segmentation.attributes.categorical=[region]"])
    validate_train_config(cfg)  # attributes without segmentation.attributes.path are fine now
    table, protected = segment_attributes(cfg)
    assert protected == ["Gender"] and table.loc["c2", "region"] == "(missing)" and table.index.name == "cust"
    missing = _compose("train", ["data.customers.path=nowhere.csv", "segmentation.attributes.numeric=[x]"])
    with pytest.raises(DataError, match=r"^data.customers.path nowhere.csv: no such file$"):
        segment_attributes(missing)


def test_scoring_joins_attributes_from_the_customer_file_or_the_older_override(tmp_path: Path) -> None:
    customers, older = tmp_path / "customers.csv", tmp_path / "older.csv"
    _customers().rename(columns={"customer_id": "cust"}).to_csv(customers, index=False)
    _customers().assign(region="west").to_csv(older, index=False)
    features = pd.DataFrame(index=pd.Index(["c1", "c2", "c9"], name="customer_id"))  # c9: no row in the file
    feature_set = FeatureSet(numeric=("income",), categorical=("region",))

    def extras(overrides: list[str]) -> pd.DataFrame:
        cfg = _compose("score", overrides)
        return _segment_extras(cfg, feature_set, features, pd.DataFrame(), pd.Timestamp("2024-01-01"))

    data = [f"data.customers.path={customers}", "data.customers.id=cust"]
    assert extras(data)["region"].tolist() == ["north", "(missing)", "(missing)"]
    overridden = extras([*data, f"score.attributes_path={older}"])  # ids in customer_id, as before
    assert overridden["region"].tolist() == ["west", "west", "(missing)"]
    with pytest.raises(UserError, match=r"\['income', 'region'\]: set data.customers.path"):
        extras([])


WITH_FILE = "data.customers.path=customers.csv"
BAD_COVARIATES = {
    ("segmentation.attributes.numeric=[income]",): (
        "segmentation.attributes.numeric / categorical need a customer file: set data.customers.path "
        "(or segmentation.attributes.path)"
    ),
    ("clv.covariates.purchase=[income]",): (
        "clv.covariates need a customer file: set data.customers.path (its columns are the covariates)"
    ),
    (WITH_FILE, "clv.covariates.purchase=[income]", "clv.covariates.dropout=[Gender,Marital-Status]"): (
        "clv.covariates: ['Gender', 'Marital-Status'] protected attribute(s) can never be covariates "
        "(segmentation.attributes.protected); remove them from clv.covariates.purchase / dropout"
    ),
    (WITH_FILE, "clv=mbgnbd", "clv.covariates.dropout=[income]"): (
        "clv.covariates need clv.family bgnbd, pareto_nbd or auto (MBG/NBD has no covariate model)"
    ),
    (WITH_FILE, "clv=mbgcnbd", "clv.covariates.purchase=[income]"): (
        "clv.covariates need clv.family bgnbd, pareto_nbd or auto (MBG/CNBD-k has no covariate model)"
    ),
    (WITH_FILE, "clv.covariates.purchase=[income,region,income]"): (
        "clv.covariates.purchase lists ['income'] twice; name each column once"
    ),
}


@pytest.mark.parametrize("overrides", BAD_COVARIATES, ids=[BAD_COVARIATES[o][:40] for o in BAD_COVARIATES])
def test_bad_customer_columns_are_refused_before_anything_runs(overrides: tuple[str, ...]) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(BAD_COVARIATES[overrides])}$"):
        validate_train_config(_compose("train", list(overrides)))


@pytest.mark.parametrize("family", ["bgnbd", "pareto_nbd", "auto"])
def test_covariates_of_a_customer_file_are_accepted(family: str) -> None:
    both = ["clv.covariates.purchase=[income,region]", "clv.covariates.dropout=[income]"]  # one column, both
    cfg = _compose("train", [f"clv={family}", WITH_FILE, *both])
    validate_train_config(cfg)
    assert list(cfg.clv.covariates.purchase) == ["income", "region"]
    assert cfg.data.customers.id == "customer_id"
