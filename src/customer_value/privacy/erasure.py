"""An erasure (or objection) request: the ids it names, and which rows of an output hold them.

A request file is a CSV with a ``customer_id`` column (or a single column of any name, or one id per
line); a customer is matched in an output by its id or by its pseudonym (``score.pseudonymise``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from customer_value.errors import DataError

ID_COLUMN = "customer_id"


def read_request_ids(path: str | Path) -> list[str]:
    """The request's ids as stripped text, in file order without repeats; one line for a bad file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file (forget --ids needs a file of customer ids)")
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: empty; give one customer id per line (or a customer_id column)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not a CSV or a list of ids ({type(exc).__name__})") from None
    if ID_COLUMN in frame.columns:
        values = frame[ID_COLUMN]
    elif len(frame.columns) == 1:  # one id per line: the first line is an id too unless it names a column
        header = str(frame.columns[0]).strip()
        values = (
            frame.iloc[:, 0]
            if _looks_like_a_name(header)
            else pd.concat([pd.Series([header]), frame.iloc[:, 0]])
        )
    else:
        raise DataError(  # not the header's values: without a header they would be ids
            f"{file}: has {len(frame.columns)} columns but none named {ID_COLUMN}; give a {ID_COLUMN} "
            "column or one id per line"
        )
    ids = values.astype(str).str.strip()
    blank = int((ids == "").sum())
    if blank:
        raise DataError(f"{file}: column {ID_COLUMN} is blank in {blank:,} of {len(ids):,} rows")
    if ids.empty:
        raise DataError(f"{file}: column {ID_COLUMN} has 0 rows")
    return list(dict.fromkeys(ids))


def _looks_like_a_name(header: str) -> bool:
    return header.lower() in {"id", "ids", "customer", "customer id", "customerid", "customer_id"}


def rows_of(table_ids: pd.Series, ids: set[str], pseudonyms: set[str]) -> pd.Series:
    """Which rows of an output's id column belong to the request's customers (by id or pseudonym)."""
    text = table_ids.astype(str).str.strip()
    return text.isin(ids) | text.isin(pseudonyms)
