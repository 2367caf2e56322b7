"""Loading and validating transaction logs: bundled CDNOW counts, file formats, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from customer_value.data.loading import LoadingRules, load_bundled, load_transactions
from customer_value.errors import DataError


def test_cdnow_master_matches_the_published_counts() -> None:
    orders, report = load_bundled("cdnow_master", LoadingRules(keep_zero_amounts=True))
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
    "placeholder date": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,1\nb,9999-12-31,2\n",
        ["'timestamp'", "1 of 2 rows", "not plausible order dates"],
    ),
    "absurd amount": (
        "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,1e308\nb,2024-01-02,2\n",
        ["'amount'", "1 of 2 rows", "not a plausible order"],
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
    orders, _ = load_transactions(path, rules=LoadingRules(timestamp_format="%d/%m/%Y"))
    assert orders["date"].iloc[0] == pd.Timestamp("2024-02-03")
    assert np.issubdtype(orders["date"].dtype, np.datetime64)


def test_duplicate_rows_are_counted_and_dropped_on_request(tmp_path: Path) -> None:
    """Issue 7: a row recorded twice is counted (and kept, merged as a same-day order) by default; with
    drop_duplicate_rows it is dropped and reported. Same customer and day at another time is no duplicate."""
    path = _write(
        tmp_path,
        "orders.csv",
        "customer_id,timestamp,amount\n"
        "a,2024-01-01 10:00,5\na,2024-01-01 10:00,5\na,2024-01-01 12:00,5\nb,2024-01-02 09:00,7\n"
        "b,2024-01-03 09:00,7\nb,2024-01-02 09:00,7\nb,2024-01-02 09:00,7\n",
    )
    kept, report = load_transactions(path)
    assert report.duplicate_rows == 3 and "duplicate_row" not in report.dropped
    assert kept.groupby("customer_id", observed=True)["amount"].sum().to_dict() == {"a": 15.0, "b": 28.0}
    dropped, report = load_transactions(path, rules=LoadingRules(drop_duplicate_rows=True))
    assert report.dropped["duplicate_row"] == 3 and report.rows_used == 4
    assert dropped.groupby("customer_id", observed=True)["amount"].sum().to_dict() == {"a": 10.0, "b": 14.0}


def test_mixed_utc_offsets_in_a_csv_are_read_as_one_utc_timeline(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "orders.csv",
        "customer_id,timestamp,amount\n"
        "a,2024-01-01T23:30:00-05:00,5\na,2024-01-02T01:00:00+02:00,6\nb,2024-01-01T00:30:00Z,7\n",
    )
    orders, _ = load_transactions(path)
    days = orders.assign(day=orders["date"].dt.strftime("%Y-%m-%d"))[["customer_id", "day", "amount"]]
    # 23:30 at -05:00 is 04:30 UTC on Jan 2; 01:00 at +02:00 is 23:00 UTC on Jan 1.
    assert sorted(map(tuple, days.astype({"customer_id": str}).to_numpy().tolist())) == [
        ("a", "2024-01-01", 6.0),
        ("a", "2024-01-02", 5.0),
        ("b", "2024-01-01", 7.0),
    ]


def test_a_few_bad_rows_are_dropped_and_counted_under_a_configured_share(tmp_path: Path) -> None:
    """Issue 7: with data.max_bad_row_share the load goes on without the bad rows and says how many; above
    the share (or with the default 0) it fails with the usual line."""
    text = (
        "customer_id,timestamp,amount\n"
        "a,2024-01-01,5\na,2024-02-01,6\n ,2024-01-03,7\nb,not a date,8\nb,2024-01-04,x\nb,2024-01-05,9\n"
        "c,2024-01-06,1e13\nc,2024-01-07,3\nd,2024-01-08,4\nd,2024-01-09,2\n"
    )
    path = _write(tmp_path, "orders.csv", text)
    orders, report = load_transactions(path, rules=LoadingRules(max_bad_row_share=0.4))
    assert report.dropped["blank_customer_id"] == 1 and report.dropped["bad_timestamp"] == 1
    assert report.dropped["bad_amount"] == 1 and report.dropped["absurd_amount"] == 1
    assert report.rows_used == 6 and len(orders) == 6 and orders["amount"].sum() == 29.0
    with pytest.raises(DataError, match=r"is blank in 1 of 10 rows .*more than data.max_bad_row_share=0.3"):
        load_transactions(path, rules=LoadingRules(max_bad_row_share=0.3))
    with pytest.raises(DataError, match=r"'customer_id' is blank in 1 of 10 rows \(e\.g\. data row 3"):
        load_transactions(path)


def test_iso_timestamps_parse_the_same_through_arrow_or_pandas(tmp_path: Path) -> None:
    """Plain local ISO timestamps are parsed by Arrow; one zone offset sends the column to pandas. Either
    way the days are pandas' own reading of the text."""
    from customer_value.data.parsing import coerce_timestamps

    stamps = ["2024-01-01", "2024-01-02 10:00", "2024-01-03T23:59:59.5", "2024-01-04 10", None]
    plain = pd.Series(stamps, dtype="str")
    expected = pd.to_datetime(pd.Series(stamps), format="ISO8601", errors="coerce")
    assert coerce_timestamps(plain, None).tolist() == expected.tolist()
    rows = "".join(f"c{i % 2},{stamp},1\n" for i, stamp in enumerate(stamps[:4]))
    arrow_read, _ = load_transactions(_write(tmp_path, "a.csv", "customer_id,timestamp,amount\n" + rows))
    offset = rows.replace("2024-01-04 10", "2024-01-04T12:00+02:00")
    pandas_read, _ = load_transactions(_write(tmp_path, "b.csv", "customer_id,timestamp,amount\n" + offset))
    assert arrow_read["date"].tolist() == pandas_read["date"].tolist()
    assert arrow_read["date"].dt.day.tolist() == [1, 3, 2, 4]
