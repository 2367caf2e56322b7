"""Per-customer (and per-customer-day) aggregation by sorting integer keys once, then ``reduceat``.

pandas' ``groupby`` on string ids and dates spends most of its time hashing and sorting the strings; at
12M orders that was 5.5 s for the same-day merge alone. Here customer ids are factorised once (sorted, so
customers come out in id order exactly as ``groupby(sort=True)`` gives them), days are integers, and
every aggregate is a ``reduceat`` over contiguous runs. Input that is already in (customer, day) order,
as ``data`` returns it, skips the sort.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from customer_value.threads import row_slices


@dataclass(frozen=True)
class Runs:
    """Rows sorted by (customer code, day) and where each run of equal keys starts.

    ``keys`` are the sorted (code << day_bits) | (day - first_day) keys, so a run's customer code and day
    come from its key by shifts, without gathering the codes and days through the permutation.
    """

    order: np.ndarray | None  # the sorting permutation; None when the input was already sorted
    starts: np.ndarray  # first row (in sorted order) of each run
    keys: np.ndarray  # sorted (code << day_bits) | (day - first_day)
    day_bits: int
    first_day: int

    def take(self, values: np.ndarray) -> np.ndarray:
        return values if self.order is None else values[self.order]

    def codes_at(self, rows: np.ndarray) -> np.ndarray:
        return self.keys[rows] >> self.day_bits

    def days_at(self, rows: np.ndarray) -> np.ndarray:
        days = self.keys[rows] & ((1 << self.day_bits) - 1)
        days += self.first_day
        return days


def sorted_runs(codes: np.ndarray, days: np.ndarray, *, by_day: bool) -> Runs:
    """Runs of equal customer code (and day, when ``by_day``) after sorting by (code, day).

    Keys are built in place in one array (shifts, not multiplications: at 12M rows every extra
    temporary and integer division shows in the time).
    """
    days = np.asarray(days)
    first_day = int(days.min()) if len(days) else 0
    day_bits = max(1, (int(days.max()) - first_day).bit_length()) if len(days) else 1
    codes = np.asarray(codes)
    if len(codes) and int(codes.max()) >= 1 << (62 - day_bits):
        raise ValueError("customer codes too large to pack with the days into 63-bit keys")
    keys = np.left_shift(codes, day_bits, dtype=np.int64)
    keys += days
    keys -= first_day
    order = None
    if len(keys) > 1 and not bool(np.all(keys[1:] >= keys[:-1])):
        keys, order = _sort_keys(keys)
    boundary = np.empty(len(keys), dtype=bool)
    if len(keys):
        boundary[0] = True
        if by_day:
            np.not_equal(keys[1:], keys[:-1], out=boundary[1:])
        elif order is None:  # already in order: the codes themselves, no shifted copy of the keys
            np.not_equal(codes[1:], codes[:-1], out=boundary[1:])
        else:
            customer = keys >> day_bits
            np.not_equal(customer[1:], customer[:-1], out=boundary[1:])
    return Runs(
        order=order, starts=np.flatnonzero(boundary), keys=keys, day_bits=day_bits, first_day=first_day
    )


def _sort_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted non-negative keys (sorted in place) and the stable permutation that sorts them.

    When key and row number fit in 63 bits together (a million customers x years of days x 12M rows do),
    they are packed into one integer and sorted by value: NumPy's SIMD sort of values is several times
    faster than ``argsort``, and the row number as low bits makes it stable. Otherwise: a stable argsort.
    """
    row_bits = max(1, (len(keys) - 1).bit_length())
    if int(keys.max()) < 1 << (63 - row_bits):
        keys <<= row_bits
        keys |= np.arange(len(keys), dtype=np.int64)
        keys.sort()
        order = keys & ((1 << row_bits) - 1)
        keys >>= row_bits
        return keys, order
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def run_sums(values: np.ndarray, runs: Runs) -> np.ndarray:
    if len(runs.starts) == len(runs.keys):  # every run is one row: nothing to add up
        return runs.take(values)
    return np.add.reduceat(runs.take(values), runs.starts) if len(runs.starts) else values[:0]


def run_lengths(runs: Runs, n_rows: int) -> np.ndarray:
    return np.diff(np.append(runs.starts, n_rows))


def customer_codes(ids: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes into the sorted unique ids (``-1`` for missing)."""
    codes, uniques = factorize(ids, sort=True)
    return codes, np.asarray(uniques, dtype=object)


def order_codes(customer_id: pd.Series) -> tuple[np.ndarray, np.ndarray | pd.Index]:
    """``customer_codes`` of an orders frame's ids, but the loader's categorical ids (sorted categories,
    none missing) are used as they are: no factorisation of millions of rows (nor its 8 bytes per order)
    and no million Python strings for every window; the ids come back as the categories themselves."""
    if isinstance(customer_id.dtype, pd.CategoricalDtype):
        codes = customer_id.cat.codes.to_numpy()
        categories = customer_id.cat.categories
        if categories.is_monotonic_increasing and (len(codes) == 0 or codes.min() >= 0):
            return codes, categories
    return customer_codes(customer_id)


def sorted_distinct(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """For ids known to be distinct and present: each one's position in sorted order, and the sorted ids
    (``customer_codes`` without hashing them again)."""
    text = arrow_text(ids)
    if text is None:
        return customer_codes(ids)
    rank, ordered = _ranks(text.combine_chunks(), np.int64)
    return rank, np.asarray(ordered.to_pandas(), dtype=object)


def aligned_rows(frame: pd.DataFrame, labels: pd.Index) -> pd.DataFrame:
    """``frame.reindex(labels)`` for a uniquely indexed ``frame`` (absent labels: a row of missing values,
    typed as reindex types it), the positions found by Arrow's hashing where both indexes are text: a
    million string ids joined in 0.42 s against reindex's 0.97 s (measured; the lookup alone 0.22 vs
    0.45 s). Anything else is reindex's, duplicates' error included."""
    plain = not frame.index.is_unique or any(isinstance(i, pd.MultiIndex) for i in (frame.index, labels))
    ours = None if plain else arrow_text(frame.index.array)
    theirs = None if plain else arrow_text(labels.array)
    if ours is None or theirs is None:
        return frame.reindex(labels)
    found = pc.index_in(theirs, value_set=ours.combine_chunks())
    positions = pc.fill_null(found, -1).to_numpy().astype(np.int64, copy=False)
    absent = positions < 0
    if absent.any():  # one row of missing values at the end, for the absent labels to take
        frame = pd.concat([frame, frame.iloc[:0].reindex(pd.Index([None], dtype=frame.index.dtype))])
        positions[absent] = len(frame) - 1
    out = frame.take(positions)
    out.index = labels
    return out


# Rows per thread below which hashing in threads costs more than it saves.
ROWS_PER_THREAD = 1_000_000


def factorize(values: pd.Series | np.ndarray, *, sort: bool = False) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize``, but Arrow-backed text (what the readers return) is hashed by Arrow on every core:
    the hashing of millions of string ids was the largest single cost of loading a log."""
    text = arrow_text(values)
    if text is None:
        codes, uniques = pd.factorize(values, sort=sort)
        return codes, pd.Index(uniques)
    codes, uniques = _dictionary_encode(text)
    if sort and len(uniques):
        rank, uniques = _ranks(uniques, codes.dtype)
        codes = np.where(codes >= 0, rank[codes], codes)
    return codes, pd.Index(uniques.to_pandas())


def _ranks(uniques: pa.Array, dtype: np.dtype) -> tuple[np.ndarray, pa.Array]:
    """Each distinct string's position in sorted order, and the strings sorted. Arrow orders strings by
    their UTF-8 bytes: code point order, as Python and pandas sort them."""
    order = pc.sort_indices(uniques).to_numpy()
    rank = np.empty(len(order), dtype=dtype)
    rank[order] = np.arange(len(order), dtype=dtype)
    return rank, uniques.take(pa.array(order))


def arrow_text(values: pd.Series | np.ndarray) -> pa.ChunkedArray | None:
    """The Arrow strings behind a pandas text column, or None for any other column."""
    array = values.array if isinstance(values, pd.Series) else values
    if not hasattr(array, "__arrow_array__") or not pd.api.types.is_string_dtype(array.dtype):
        return None
    data = pa.array(array)
    if isinstance(data, pa.Array):
        data = pa.chunked_array([data])
    is_text = pa.types.is_string(data.type) or pa.types.is_large_string(data.type)
    return data if is_text else None


def _dictionary_encode(text: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Per-row codes (``-1`` for null) into the uniques in order of first appearance. Each thread
    encodes a contiguous slice; the slices' dictionaries (each about as large as the whole's) are then
    unified, which hashes only the uniques again."""
    pieces = [
        text.slice(rows.start, rows.stop - rows.start) for rows in row_slices(len(text), ROWS_PER_THREAD)
    ]
    with ThreadPoolExecutor(len(pieces)) as pool:
        encoded = [_one_dictionary(piece) for piece in pool.map(pc.dictionary_encode, pieces)]
    if len(pieces) > 1:
        encoded = pa.chunked_array(encoded).unify_dictionaries().chunks
    codes = np.concatenate([pc.fill_null(piece.indices, -1).to_numpy() for piece in encoded])
    return codes, encoded[0].dictionary


def _one_dictionary(encoded: pa.ChunkedArray) -> pa.DictionaryArray:
    """An encoded slice as one array: its chunks share one dictionary, so only their indices are joined
    (unifying chunk by chunk would hash that dictionary once per chunk)."""
    if encoded.num_chunks == 0:
        return pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
    indices = pa.concat_arrays([chunk.indices for chunk in encoded.chunks])
    return pa.DictionaryArray.from_arrays(indices, encoded.chunk(0).dictionary)


NS_PER_DAY = 86_400 * 10**9


def epoch_days(dates: pd.Series | np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """Whole days since 1970-01-01 (floor) of timestamps (no NaT); integer division in the timestamps'
    own unit, no calendar conversion and no copy to nanoseconds. ``dtype=np.int32`` (days of years
    -5.8M to 5.9M) halves an order-sized array: the division writes it directly, no int64 in between."""
    values = np.asarray(dates)
    if values.dtype.kind != "M":
        values = values.astype("datetime64[ns]")
    unit, count = np.datetime_data(values.dtype)
    per_day = int(np.timedelta64(1, "D") // np.timedelta64(count, unit))
    out = np.empty(values.shape, dtype=dtype)
    return np.floor_divide(values.view(np.int64), per_day, out=out, casting="unsafe")


def days_to_timestamps(days: np.ndarray) -> np.ndarray:
    return (np.asarray(days, dtype=np.int64) * NS_PER_DAY).view("datetime64[ns]")
