"""Loading and validating transaction logs: bundled CDNOW counts, file formats, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from customer_value.data import load_bundled, load_transactions
from customer_value.errors import DataError


def test_cdnow_master_matches_the_published_counts() -> None:
    orders, report = load_bundled("cdnow_master", keep_zero_amounts=True)
    assert report.rows_read == 69_659
    assert report.customers == 23_570
    assert (report.first_date, report.last_date) == ("1997-01-01", "1998-06-30")
    assert report.dropped == {"negative_amount": 0}
    assert report.orders == len(orders) == report.rows_used - report.merged_same_day


def test_cdnow_master_drops_and_counts_zero_value_orders(cdnow_master) -> None:
    orders, report = cdnow_master
    assert report.dropped == {"negative_amount": 0, "zero_amount": 80}
    assert report.rows_used == 69_659 - 80
    assert (orders["amount"] > 0).all()
    assert not orders.duplicated(["customer_id", "date"]).any()
    assert orders["customer_id"].is_monotonic_increasing


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_same_day_orders_are_merged_and_named_columns_are_used(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "orders.csv",
        "cust,when,total\n"
        "a,2024-01-01T09:00:00,10\n"
        "a,2024-01-01T17:30:00,5\n"
        "a,2024-01-03,7.5\n"
        "b,2024-01-02,3\n"
        "b,2024-01-04,-2\n"
        "b,2024-01-05,0\n",
    )
    orders, report = load_transactions(path, customer_id="cust", timestamp="when", amount="total")
    assert orders.to_dict("list") == {
        "customer_id": ["a", "a", "b"],
        "date": list(pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-02"])),
        "amount": [15.0, 7.5, 3.0],
    }
    assert report.dropped == {"negative_amount": 1, "zero_amount": 1}
    assert report.merged_same_day == 1
    assert report.customers == 2


def test_parquet_with_timezones_is_read_in_utc(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["x", "x"],
            "timestamp": pd.to_datetime(["2024-03-01 23:30", "2024-03-05 01:00"]).tz_localize(
                "America/New_York"
            ),
            "amount": [1.0, 2.0],
        }
    )
    path = tmp_path / "orders.parquet"
    frame.to_parquet(path)
    orders, _ = load_transactions(path)
    # 23:30 in New York is the next day in UTC.
    assert list(orders["date"]) == list(pd.to_datetime(["2024-03-02", "2024-03-05"]))


def test_content_hash_changes_with_the_bytes(tmp_path: Path) -> None:
    one = _write(tmp_path, "one.csv", "customer_id,timestamp,amount\na,2024-01-01,1\n")
    two = _write(tmp_path, "two.csv", "customer_id,timestamp,amount\na,2024-01-01,2\n")
    assert load_transactions(one)[1].content_hash != load_transactions(two)[1].content_hash


BAD_FILES = {
    "missing column": ("orders.csv", "customer_id,timestamp\na,2024-01-01\n", ["orders.csv", "amount"]),
    "unparsable dates": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,1\nb,not a date,2\nc,31/31/2024,3\n",
        ["orders.csv", "'timestamp'", "2 of 3 rows"],
    ),
    "text amount": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,ten\nb,2024-01-02,2\n",
        ["orders.csv", "'amount'", "1 of 2 rows"],
    ),
    "infinite amount": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,inf\n",
        ["'amount'", "1 of 1 rows"],
    ),
    "blank customer": (
        "orders.csv",
        "customer_id,timestamp,amount\n ,2024-01-01,1\nb,2024-01-02,2\n",
        ["'customer_id'", "1 of 2 rows"],
    ),
    "empty file": ("orders.csv", "", ["orders.csv", "empty"]),
    "header only": ("orders.csv", "customer_id,timestamp,amount\n", ["orders.csv", "no rows"]),
    "only refunds": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,-5\n",
        ["'amount'", "no positive amount", "1 rows"],
    ),
    "wrong extension": ("orders.xlsx", "customer_id,timestamp,amount\n", ["orders.xlsx", "extension"]),
    "csv named parquet": ("orders.parquet", "customer_id,timestamp,amount\n", ["orders.parquet", "Parquet"]),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_files_raise_one_line_naming_file_column_and_rows(tmp_path: Path, case: str) -> None:
    name, text, expected = BAD_FILES[case]
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError) as caught:
        load_transactions(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes("customer_id,timestamp,amount\nJosé,2024-01-01,1\n".encode("utf-16"))
    with pytest.raises(DataError, match="orders.csv"):
        load_transactions(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_transactions(tmp_path / "nope.csv")


def test_timestamp_format_option(tmp_path: Path) -> None:
    path = _write(tmp_path, "orders.csv", "customer_id,timestamp,amount\na,03/02/2024,1\n")
    orders, _ = load_transactions(path, timestamp_format="%d/%m/%Y")
    assert orders["date"].iloc[0] == pd.Timestamp("2024-02-03")
    assert np.issubdtype(orders["date"].dtype, np.datetime64)
