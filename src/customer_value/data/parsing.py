"""Column parsing shared by the pandas loader (``loading``) and the Spark engine: coercion of ids, timestamps
and amounts, and which rows a column cannot give a value for (``BadRows``), with the one-line error that
names the file, column and row count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from customer_value.data.grouping import (
    arrow_text,
    customer_codes,
    epoch_days,
    factorize,
    sorted_distinct,
)
from customer_value.errors import DataError


@dataclass(frozen=True)
class BadRows:
    """Rows one column cannot give a value for, and the one-line error that names them."""

    reason: str  # the key counted in DataReport.dropped when they are tolerated
    rows: np.ndarray  # boolean mask over the input rows
    message: str


def tolerate(
    problems: list[BadRows], rows_read: int, max_share: float, dropped: dict[str, int]
) -> np.ndarray | None:
    """The rows to drop, counted in ``dropped``; the first problem's error when they exceed ``max_share``."""
    if not problems:
        return None
    bad = np.logical_or.reduce([problem.rows for problem in problems])
    if bad.sum() > max_share * rows_read:
        raise DataError(problems[0].message + over_tolerance(max_share))
    for problem in problems:
        dropped[problem.reason] = dropped.get(problem.reason, 0) + int(problem.rows.sum())
    return bad


def over_tolerance(max_share: float) -> str:
    """What a bad-row line adds when a tolerance was set and exceeded."""
    return f" (more than data.max_bad_row_share={max_share:g} of the rows)" if max_share > 0 else ""


# No single order is worth more than this; beyond it sums and the spend model's likelihood overflow.
MAX_AMOUNT = 1e12
# Orders are dated within these years (inclusive); outside them a date is a placeholder such as
# 9999-12-31 or 0001-01-01, and days beyond 2262 do not fit the nanosecond timestamps used downstream.
PLAUSIBLE_YEARS = (1900, 2199)

# How each kind of bad row is worded in its one-line error (shared with the Spark engine):
# reason -> (verb before the count, words after "rows", hint after the example).
WORDING = {
    "blank_customer_id": ("is blank in", "", ""),
    "bad_timestamp": (
        "has",
        " that are not valid timestamps",
        "; set data.timestamp_format if the format is unusual",
    ),
    "implausible_timestamp": (
        "has",
        f" dated before {PLAUSIBLE_YEARS[0]} or after {PLAUSIBLE_YEARS[1]}, not plausible order dates",
        "; remove placeholder dates such as 9999-12-31 or allow them with data.max_bad_row_share",
    ),
    "bad_amount": ("has", " that are not finite numbers", ""),
    "absurd_amount": (
        "has",
        f" above {MAX_AMOUNT:.0e} in absolute value, not a plausible order",
        "; check the column's units",
    ),
}


def bad_rows_message(source: str, column: str, reason: str, count: int, rows: int, example: str) -> str:
    """'<source>: column '<column>' has N of M rows that ... (e.g. ...)<hint>'."""
    verb, middle, hint = WORDING[reason]
    return f"{source}: column '{column}' {verb} {count:,} of {rows:,} rows{middle} ({example}){hint}"


def _bad_rows(reason: str, rows: np.ndarray, values: pd.Series, source: str, column: str) -> list[BadRows]:
    """No problem when no row is bad; else one naming the file, column, count and the first bad row."""
    if not rows.any():
        return []
    index = int(np.flatnonzero(rows)[0])
    example = f"e.g. data row {index + 1}: {str(values.iloc[index])[:40]!r}"
    message = bad_rows_message(source, column, reason, int(rows.sum()), len(values), example)
    return [BadRows(reason, rows, message)]


def coerce_customer_ids(values: pd.Series) -> pd.Series:
    """Customer ids as stripped text; blank or missing ids become <NA> (shared with the Spark engine)."""
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def coerce_timestamps(values: pd.Series, fmt: str | None) -> pd.Series:
    """Naive UTC timestamps; unparsable values become NaT. May raise ValueError/TypeError on a bad format."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed
    if fmt is None:
        parsed = _arrow_iso_timestamps(values)
        if parsed is not None:
            return parsed
    text = values.astype("string") if fmt else values
    return pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True).dt.tz_localize(None)


def _arrow_iso_timestamps(values: pd.Series) -> pd.Series | None:
    """Arrow's ISO 8601 parse of Arrow-backed text (twenty times faster than pandas' at millions of rows),
    or None when any value is not a plain local ISO timestamp (a zone offset, a compact or unpadded date,
    garbage): pandas then parses, with its wider rules and the bad rows' wording."""
    text = arrow_text(values)
    if text is None:
        return None
    try:
        parsed = pc.cast(text, pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pd.Series(parsed.to_pandas(), index=values.index, name=values.name)


def coerce_amounts(values: pd.Series) -> np.ndarray:
    """Amounts as float64; anything that is not a finite number becomes NaN."""
    if not pd.api.types.is_float_dtype(values):
        values = pd.to_numeric(values, errors="coerce")
    numbers = values.to_numpy(dtype="float64", na_value=np.nan)
    finite = np.isfinite(numbers)
    return numbers if finite.all() else np.where(finite, numbers, np.nan)


def parse_customer_ids(
    values: pd.Series, source: str, column: str
) -> tuple[np.ndarray, np.ndarray, list[BadRows]]:
    """Per-row codes into the sorted unique ids. Ids are cleaned once per distinct value, not per row:
    a million customers' ids instead of twelve million orders' (ids equal after stripping merge)."""
    raw_codes, raw_ids = factorize(values)
    raw = pd.Series(raw_ids, dtype=raw_ids.dtype)
    text = coerce_customer_ids(raw)
    blank_id = np.append(text.isna().to_numpy(), True)  # the extra slot is code -1: missing
    blank = blank_id[raw_codes]
    problems = _bad_rows("blank_customer_id", blank, values, source, column)
    if not blank_id[:-1].any() and bool((text == raw).all()):
        codes, ids = sorted_distinct(text)  # stripping changed nothing: the ids are already distinct
    else:
        codes, ids = customer_codes(text)
    return codes[raw_codes], ids, problems


def parse_days(
    values: pd.Series, source: str, column: str, fmt: str | None
) -> tuple[np.ndarray, np.ndarray, list[BadRows]]:
    """Whole days since 1970-01-01 of each timestamp (what every model uses), and the timestamps as
    integers in their own unit (only to recognise duplicate rows); unparsable rows hold garbage and are
    returned as a problem."""
    try:
        parsed = coerce_timestamps(values, fmt)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: column '{column}' cannot be read as timestamps ({exc})") from None
    bad = parsed.isna().to_numpy()
    implausible = implausible_dates(parsed)
    problems = _bad_rows("bad_timestamp", bad, values, source, column)
    problems += _bad_rows("implausible_timestamp", implausible, values, source, column)
    if problems:  # placeholder days; these rows are dropped or the load fails
        parsed = parsed.mask(bad | implausible, pd.Timestamp(0))
    return epoch_days(parsed), np.asarray(parsed).view(np.int64), problems


def implausible_dates(dates: pd.Series) -> np.ndarray:
    """Which (naive UTC) timestamps fall outside ``PLAUSIBLE_YEARS``; NaT is not one of them."""
    first, last = (pd.Timestamp(year=y, month=1, day=1) for y in (PLAUSIBLE_YEARS[0], PLAUSIBLE_YEARS[1] + 1))
    return ((dates < first) | (dates >= last)).to_numpy()


def parse_amounts(values: pd.Series, source: str, column: str) -> tuple[np.ndarray, list[BadRows]]:
    numbers = coerce_amounts(values)
    with np.errstate(invalid="ignore"):
        absurd = np.abs(numbers) > MAX_AMOUNT
    problems = _bad_rows("bad_amount", ~np.isfinite(numbers), values, source, column)
    return numbers, problems + _bad_rows("absurd_amount", absurd, values, source, column)
