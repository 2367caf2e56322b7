"""The customer file: one row per customer, read the same way for every model that uses customer columns.

Segmentation attributes and (later) CLV covariates come from one file per dataset (``data.customers``), in
training and scoring, so a column means the same thing to every model. Bad input raises :class:`DataError`
with one line naming the file, the column and how many rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from customer_value.data.loading import read_columns
from customer_value.data.parsing import coerce_customer_ids
from customer_value.errors import DataError


class CustomerFile(NamedTuple):
    """Which file to read and its id column, with the config key that named it (for messages)."""

    path: str
    id_column: str
    key: str


def canonical_name(name: str) -> str:
    """'Marital Status', 'marital-status' and 'marital_status' are one attribute."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def available_columns(path: Path) -> list[str]:
    """The file's column names from its header alone (no data read)."""
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (0 rows, no header)") from None
    except Exception as exc:  # readers raise many types for unreadable bytes
        raise DataError(f"{path}: cannot read its header ({type(exc).__name__})") from None


def load_customers(
    path: str, id_column: str, columns: list[str], protected: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The asked-for columns indexed by customer id (text), plus the file's protected columns, and the
    protected columns found (matched by :func:`canonical_name`; read for the fairness audit only).

    Columns are returned as read: numeric ones as float64, others as text with blank cells missing (NaN),
    so each model decides how to treat a customer's missing value. Ids are stripped text, as in the order log.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    available = available_columns(file)
    wanted_protected = {canonical_name(p) for p in protected}
    found = [c for c in available if c != id_column and canonical_name(c) in wanted_protected]
    wanted = list(dict.fromkeys([id_column, *columns, *found]))  # the id first: read_columns reads it as text
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {missing}; the file has {available[:20]} "
            "(a customer file needs its id column, data.customers.id, and every column asked for)"
        )
    frame = read_columns(file, wanted)
    ids = coerce_customer_ids(frame.pop(id_column))
    _check_ids(file, id_column, ids)
    frame.index = pd.Index(ids.astype(str), name=id_column)
    for column in frame.columns:
        frame[column] = _as_read(frame[column])
    return frame, found


def _check_ids(file: Path, id_column: str, ids: pd.Series) -> None:
    """One row per customer, each with an id: anything else makes a join ambiguous."""
    if ids.empty:
        raise DataError(f"{file}: column {id_column} has 0 rows; a customer file needs one row per customer")
    blank = int(ids.isna().sum())
    if blank:
        raise DataError(f"{file}: column {id_column} is blank in {blank:,} of {len(ids):,} rows")
    repeated = int(ids.duplicated().sum())
    if repeated:
        raise DataError(
            f"{file}: column {id_column} repeats {repeated:,} id(s); "
            "a customer file needs one row per customer"
        )


def _as_read(values: pd.Series) -> pd.Series:
    """Numbers as float64; anything else as text with blank cells missing."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    text = values.astype(str)
    return text.mask(text.str.strip() == "")
