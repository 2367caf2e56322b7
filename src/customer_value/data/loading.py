"""Load and validate a transaction log: one row per order (customer, timestamp, amount).

Everything downstream trusts the frame returned here: one row per customer and day (same-day orders
merged), customer ids as a categorical (sorted categories), timestamps at day resolution, positive float
amounts, sorted by customer then date. A log without amounts (visits, logins: ``amount=None``) gives a
frame with no ``amount`` column at all, and ``DataReport.has_amounts`` is False.
Bad input raises :class:`DataError` with a message naming the file, the column and how many rows.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from customer_value import memory
from customer_value.data.grouping import (
    Runs,
    days_to_timestamps,
    run_sums,
    sorted_runs,
)
from customer_value.data.parsing import parse_amounts, parse_customer_ids, parse_days, tolerate
from customer_value.errors import DataError

ORDER_COLUMNS = ["customer_id", "date", "amount"]


@dataclass(frozen=True)
class BundledDataset:
    """A transaction log shipped inside an installed package (read without ``pkg_resources``)."""

    package: str
    resource: str
    column_names: tuple[str, ...]
    skip_header: bool
    timestamp_format: str
    description: str


BUNDLED = {
    "cdnow_master": BundledDataset(
        package="lifetimes",
        resource="datasets/CDNOW_master.txt",
        column_names=("customer_id", "date", "number_of_cds", "amount"),
        skip_header=True,
        timestamp_format="%Y%m%d",
        description="CDNOW master log: 69,659 orders of 23,570 customers, 1997-01-01 to 1998-06-30",
    ),
    "cdnow_sample": BundledDataset(
        package="lifetimes",
        resource="datasets/CDNOW_sample.txt",
        column_names=("customer_id", "original_id", "date", "number_of_cds", "amount"),
        skip_header=False,
        timestamp_format="%Y%m%d",
        description="CDNOW 1/10 sample used by Fader, Hardie & Lee (2005): 2,357 customers",
    ),
}


@dataclass(frozen=True)
class LoadingRules:
    """How a log is read and how strict to be with it: one object from the ``data`` config to every
    loader (pandas and Spark), so an option cannot be honoured by one and forgotten by another."""

    timestamp_format: str | None = None  # None: ISO 8601
    keep_zero_amounts: bool = False
    drop_duplicate_rows: bool = False  # drop rows equal to another in customer, timestamp and amount
    max_bad_row_share: float = 0.0  # bad rows up to this share are dropped and counted instead of failing

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> LoadingRules:
        """The rules of a ``data`` config node (its keys of the same names)."""
        return cls(**{rule.name: data[rule.name] for rule in fields(cls)})


@dataclass
class DataReport:
    """What loading did to the file: reviewers read this before trusting any metric."""

    source: str
    rows_read: int
    rows_used: int
    orders: int
    customers: int
    first_date: str
    last_date: str
    content_hash: str
    dropped: dict[str, int] = field(default_factory=dict)
    duplicate_rows: int = 0  # rows equal to another row in customer, timestamp and amount
    has_amounts: bool = True  # False: a visit log; no spend model, no value outputs downstream
    suppressed: dict[str, int] = field(default_factory=dict)  # customers left out per privacy reason

    @property
    def merged_same_day(self) -> int:
        return self.rows_used - self.orders

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "orders": self.orders,
            "customers": self.customers,
            "merged_same_day": self.merged_same_day,
            "first_date": self.first_date,
            "last_date": self.last_date,
            "content_hash": self.content_hash,
            "dropped": dict(self.dropped),
            "duplicate_rows": self.duplicate_rows,
            "has_amounts": self.has_amounts,
            "suppressed": dict(self.suppressed),
        }


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset file, found through ``importlib.resources``."""
    if name not in BUNDLED:
        raise DataError(f"unknown bundled dataset '{name}'; choose one of {sorted(BUNDLED)}")
    spec = BUNDLED[name]
    resource = importlib.resources.files(spec.package).joinpath(spec.resource)
    return Path(str(resource))


def file_sha256(path: Path) -> str:
    """Content hash of the input file, so runs on the same bytes can be matched."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundled(name: str, rules: LoadingRules = LoadingRules()) -> tuple[pd.DataFrame, DataReport]:
    """Load a bundled dataset through the same validation as a user's file (in its own timestamp format)."""
    path = bundled_path(name)
    spec = BUNDLED[name]
    raw = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        skiprows=1 if spec.skip_header else 0,
        names=list(spec.column_names),
        dtype={"customer_id": str, "date": str},
    )
    return clean_transactions(
        raw,
        source=str(path),
        customer_id="customer_id",
        timestamp="date",
        amount="amount",
        rules=replace(rules, timestamp_format=spec.timestamp_format),
        content_hash=file_sha256(path),
    )


def load_transactions(
    path: str | Path,
    *,
    customer_id: str = "customer_id",
    timestamp: str = "timestamp",
    amount: str | None = "amount",
    rules: LoadingRules = LoadingRules(),
) -> tuple[pd.DataFrame, DataReport]:
    """Load a CSV or Parquet transaction log (chosen by extension) and validate it; ``amount=None`` reads
    a log without amounts (any amount column in the file is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    columns = [customer_id, timestamp] if amount is None else [customer_id, timestamp, amount]
    return clean_transactions(  # no reference kept here: the raw columns are freed as they are parsed
        read_columns(path, columns, text=columns[:2]),  # ids and timestamps: the loader parses them
        source=str(path),
        customer_id=customer_id,
        timestamp=timestamp,
        amount=amount,
        rules=rules,
        content_hash=file_sha256(path),
    )


def read_columns(path: Path, columns: list[str], text: list[str] | None = None) -> pd.DataFrame:
    """Read only the needed columns, those in ``text`` (default: the first) from a CSV as text, not as
    whatever they look like; any reader failure becomes a one-line DataError."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return _read_parquet(path, columns)
    if suffix in {".csv", ".txt", ".gz"}:
        return _read_csv(path, columns, columns[:1] if text is None else text)
    raise DataError(f"{path}: unsupported file extension '{suffix}'; use .csv or .parquet")


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        available = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for non-Parquet bytes
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    require_columns(path, columns, available)
    frame = pq.read_table(path, columns=columns).to_pandas()  # Arrow-backed text, as the CSV reader gives
    memory.release()  # the pages' decoding buffers (a third of the table's size again at 11M rows)
    return frame


def _read_csv(path: Path, columns: list[str], text: list[str]) -> pd.DataFrame:
    """Arrow's multi-threaded CSV reader (several times faster than pandas' at millions of rows); the
    ``text`` columns stay text (so only the loader's rules, e.g. ``data.timestamp_format``, parse
    timestamps), and the same null markers as pandas' (``NA``, empty, ...) mark missing values."""
    import pyarrow as pa
    import pyarrow.csv as csv

    not_utf8 = f"{path}: not UTF-8 text; save the file as UTF-8 CSV"
    try:
        header = pd.read_csv(path, nrows=0)  # pandas' wording for empty and non-UTF-8 files
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (0 rows, no header)") from None
    except UnicodeDecodeError:
        raise DataError(not_utf8) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({_first_line(exc)})") from None
    require_columns(path, columns, list(header.columns))
    options = csv.ConvertOptions(
        include_columns=columns,
        column_types=dict.fromkeys(text, pa.string()),
        strings_can_be_null=True,
    )
    try:
        table = csv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            raise DataError(not_utf8) from None
        raise DataError(f"{path}: cannot be parsed as CSV ({_first_line(exc)})") from None
    return table.to_pandas()


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def require_columns(path: Path | str, wanted: list[str], available: list[str]) -> None:
    """A one-line DataError naming the missing columns and what the file has."""
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(available)[:20]} "
            "(set data.columns.customer_id / timestamp / amount; amount=null for a log without amounts)"
        )


def clean_transactions(
    raw: pd.DataFrame,
    *,
    source: str,
    customer_id: str = "customer_id",
    timestamp: str = "timestamp",
    amount: str | None = "amount",
    rules: LoadingRules = LoadingRules(),
    content_hash: str = "",
) -> tuple[pd.DataFrame, DataReport]:
    """Validate raw columns and merge same-day orders; returns orders and what was done to them.

    Rows equal to another in customer, timestamp and amount are counted (``duplicate_rows``); they are
    merged like any same-day orders unless ``rules.drop_duplicate_rows`` (a log recorded twice).
    Day-resolution logs such as CDNOW legitimately repeat rows, so dropping is opt-in. Rows with a blank
    id, an unparsable or implausible timestamp or an unusable amount fail the load, unless they are at
    most ``rules.max_bad_row_share`` of the rows: then they are dropped and counted (``dropped``).
    With ``amount=None`` (a log without amounts) the orders have no ``amount`` column and the zero and
    negative amount rules do not apply.
    """
    rows_read = len(raw)
    if rows_read == 0:
        raise DataError(f"{source}: no rows (header only or empty table)")

    # Each raw column is let go once parsed: when the caller kept no reference to ``raw`` (the loader
    # does not), its memory is free before the sort's.
    unparsed = {name: raw[name] for name in (customer_id, timestamp, amount) if name is not None}
    del raw
    codes, ids, blank_ids = parse_customer_ids(unparsed.pop(customer_id), source, customer_id)
    days, instants, bad_days = parse_days(unparsed.pop(timestamp), source, timestamp, rules.timestamp_format)
    has_amounts = amount is not None
    amounts, bad_amounts = parse_amounts(unparsed.pop(amount), source, amount) if has_amounts else (None, [])
    dropped: dict[str, int] = {}
    bad = tolerate([*blank_ids, *bad_days, *bad_amounts], rows_read, rules.max_bad_row_share, dropped)

    keep = np.ones(rows_read, dtype=bool)
    if has_amounts:
        negative = amounts < 0
        zero = amounts == 0
        keep = ~negative if rules.keep_zero_amounts else ~(negative | zero)
        dropped["negative_amount"] = int(negative.sum())
        if not rules.keep_zero_amounts:
            dropped["zero_amount"] = int(zero.sum())
    if bad is not None:
        keep &= ~bad
    if not keep.any():
        raise DataError(
            f"{source}: column '{amount}' has no positive amount in {rows_read:,} rows"
            if has_amounts
            else f"{source}: no usable row in {rows_read:,} rows"
        )

    # Same-day orders merged: one row per (customer, day), sorted by customer id then day.
    if not keep.all():  # copies of every column only when something is dropped
        codes, days, instants = codes[keep], days[keep], instants[keep]
        amounts = None if amounts is None else amounts[keep]
    runs = sorted_runs(codes, days, by_day=True)
    duplicate = _duplicate_rows(runs, codes, instants, amounts)
    if rules.drop_duplicate_rows and duplicate.any():
        dropped["duplicate_row"] = int(duplicate.sum())
        codes, days = codes[~duplicate], days[~duplicate]
        amounts = None if amounts is None else amounts[~duplicate]
        keep[np.flatnonzero(keep)[duplicate]] = False
        runs = sorted_runs(codes, days, by_day=True)
    del codes, days, instants  # the runs' keys hold codes and days from here on
    order_codes = runs.codes_at(runs.starts)
    order_days = runs.days_at(runs.starts)
    columns = {
        # Categorical: every later per-customer step reuses these codes instead of re-hashing strings.
        "customer_id": pd.Categorical.from_codes(order_codes, categories=pd.Index(ids)),
        "date": days_to_timestamps(order_days),
    }
    if amounts is not None:
        columns["amount"] = run_sums(amounts, runs)
    orders = pd.DataFrame(columns, copy=False)
    report = DataReport(
        source=source,
        rows_read=rows_read,
        rows_used=int(keep.sum()),
        orders=len(orders),
        customers=int(np.count_nonzero(np.diff(order_codes))) + 1,
        first_date=str(np.datetime64(int(order_days.min()), "D")),
        last_date=str(np.datetime64(int(order_days.max()), "D")),
        content_hash=content_hash,
        dropped=dropped,
        duplicate_rows=int(duplicate.sum()),
        has_amounts=has_amounts,
    )
    return orders, report


def _duplicate_rows(
    runs: Runs, codes: np.ndarray, instants: np.ndarray, amounts: np.ndarray | None
) -> np.ndarray:
    """Rows (input order) equal to an earlier row in customer, timestamp and amount (customer and timestamp
    for a log without amounts). Only rows sharing
    a (customer, day) with another row can be one, so only those few are compared; they are the rows whose
    sorted (customer, day) key equals a neighbour's (``runs`` must be by day)."""
    duplicate = np.zeros(len(codes), dtype=bool)
    same_as_next = runs.keys[1:] == runs.keys[:-1]
    shared = np.zeros(len(codes), dtype=bool)  # in sorted order
    shared[1:] |= same_as_next
    shared[:-1] |= same_as_next
    if shared.any():
        rows = np.flatnonzero(shared) if runs.order is None else runs.order[shared]
        candidates = pd.DataFrame({"code": codes[rows], "instant": instants[rows]})
        if amounts is not None:
            candidates["amount"] = amounts[rows]
        duplicate[rows[candidates.duplicated().to_numpy()]] = True
    return duplicate
