"""One row per customer, computed the same way for training and scoring.

Durations are kept in **days** in the table so that a registered model never depends on the time unit the
scoring job was configured with; each model converts to its own unit (weeks by default) at its boundary.

Columns (index ``customer_id``):

- ``frequency``: repeat purchase days (distinct purchase days minus one), as in Fader & Hardie.
- ``recency_days``: days between first and last purchase (lifetimes' ``recency``).
- ``T_days``: days between first purchase and ``as_of``; the customer's tenure (lifetimes' ``T``).
- ``monetary_value``: mean spend of the repeat purchase days (0 without repeats), Gamma-Gamma's input.
- ``days_since_last``: days since the last purchase, the "R" of RFM.
- ``n_orders``, ``total_spend``, ``mean_order_value``: over all purchase days, the "F" and "M" of RFM.
- ``litt_days``: the sum over repeat purchase days of log(days since the previous purchase day) (0 without
  repeats). MBG/CNBD-k chooses its number of Erlang phases k with it (its likelihood's (k - 1) * litt
  term); in a model's time unit it is ``litt_days - frequency * log(time_unit_days)``.

A log without amounts (orders without an ``amount`` column, see ``loading``) gives the same table without
the VALUE_FEATURES: they are left out, not zero-filled, so nothing downstream mistakes a visit for a sale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from customer_value.data.grouping import (
    Runs,
    epoch_days,
    order_codes,
    run_lengths,
    run_sums,
    sorted_runs,
)
from customer_value.errors import DataError

FEATURE_COLUMNS = [
    "frequency",
    "recency_days",
    "T_days",
    "monetary_value",
    "days_since_last",
    "n_orders",
    "total_spend",
    "mean_order_value",
    "litt_days",
]
VALUE_FEATURES = ("monetary_value", "total_spend", "mean_order_value")  # only when the log has amounts


def customer_features(orders: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Customer table from orders on or before ``as_of`` (orders as returned by ``loading``)."""
    as_of = pd.Timestamp(as_of).normalize()
    days = epoch_days(orders["date"], np.int32)  # int32: half the order-sized temporaries
    as_of_day = int(epoch_days(np.array([as_of.to_datetime64()]))[0])
    seen = days <= as_of_day
    if not seen.any():
        raise DataError(f"no orders on or before {as_of.date()}: nothing to build customer features from")
    has_amounts = "amount" in orders.columns
    codes, ids = order_codes(orders["customer_id"])
    amounts = orders["amount"].to_numpy(dtype="float64") if has_amounts else None
    if not seen.all():  # copies only when some orders are after as_of
        codes, days = codes[seen], days[seen]
        amounts = None if amounts is None else amounts[seen]
    # (customer, day) is unique after loading, so each customer's first row is its first purchase day.
    runs = sorted_runs(codes, days, by_day=False)
    n_rows = len(days)
    del codes, days  # the runs' keys hold both: the cut copies (when there are) go before the gaps' array
    last_rows = np.append(runs.starts[1:], n_rows) - 1
    first_day, last_day = runs.days_at(runs.starts), runs.days_at(last_rows)
    n_orders = run_lengths(runs, n_rows).astype("float64")

    frequency = n_orders - 1
    columns = {
        "frequency": frequency,
        "recency_days": (last_day - first_day).astype("float64"),
        "T_days": (as_of_day - first_day).astype("float64"),
        "days_since_last": (as_of_day - last_day).astype("float64"),
        "n_orders": n_orders,
        "litt_days": _log_gap_sums(runs),
    }
    if amounts is not None:
        total = run_sums(amounts, runs)
        first_amount = runs.take(amounts)[runs.starts]
        columns["monetary_value"] = np.where(
            frequency > 0, (total - first_amount) / np.maximum(frequency, 1), 0.0
        )
        columns["total_spend"] = total
        columns["mean_order_value"] = total / n_orders
    table = pd.DataFrame(
        {name: columns[name] for name in FEATURE_COLUMNS if name in columns},
        index=pd.Index(ids[runs.codes_at(runs.starts)], name="customer_id"),
    )
    return table


def _log_gap_sums(runs: Runs) -> np.ndarray:
    """Each customer's sum of log(days between consecutive purchase days), over ``runs`` of customers.

    One diff over the sorted purchase days; a customer's first day has no gap (log 1 = 0 there). The
    days are distinct per customer (loading merges same-day orders), so every gap is at least a day.
    Within a customer consecutive keys differ by exactly the days between (the code part cancels), so
    the keys' own differences serve: one order-sized temporary."""
    if not len(runs.keys):
        return np.zeros(0)
    log_gaps = np.empty(len(runs.keys))
    log_gaps[0] = 0.0
    np.subtract(runs.keys[1:], runs.keys[:-1], out=log_gaps[1:], casting="unsafe")  # gaps, as floats
    log_gaps[runs.starts] = 1.0  # across two customers a gap may be <= 0: a customer's first day is log 1
    positive = log_gaps > 0  # a same-day repeat (a table not from the loader) counts log 1 = 0, as before
    log_gaps[~positive] = 1.0
    np.log(log_gaps, out=log_gaps)  # in place: one order-sized float temporary, not an int and a float
    return np.add.reduceat(log_gaps, runs.starts) if len(runs.starts) else log_gaps


def purchase_regularity(orders: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """Coefficient of variation of each customer's gaps between purchase days, up to ``as_of``.

    0 = clockwork, around 1 = as irregular as a Poisson process, above 1 = bursty. Customers with fewer
    than two gaps (under three purchase days) have no measurable regularity: NaN, imputed by the model.
    Computed only when a segmentation asks for it (one sort and a grouped diff over the orders).
    """
    seen = orders.loc[orders["date"] <= pd.Timestamp(as_of).normalize(), ["customer_id", "date"]]
    seen = seen.sort_values(["customer_id", "date"], kind="stable")
    gaps = seen.groupby("customer_id", observed=True)["date"].diff().dt.days
    stats = gaps.groupby(seen["customer_id"], observed=True).agg(["mean", "std", "count"])
    regularity = (stats["std"] / stats["mean"]).where(stats["count"] >= 2)
    return regularity.rename("regularity").astype("float64")


@dataclass(frozen=True)
class Split:
    """Calibration window (model fitting) and the holdout window that judges it."""

    calibration_end: pd.Timestamp
    holdout_end: pd.Timestamp

    @property
    def holdout_days(self) -> float:
        return float((self.holdout_end - self.calibration_end).days)


def resolve_split(orders: pd.DataFrame, calibration_end: str | None, calibration_share: float) -> Split:
    """Use the configured calibration end, or cut the observed time range at ``calibration_share``."""
    first, last = orders["date"].min(), orders["date"].max()
    if calibration_end is not None:
        end = pd.Timestamp(calibration_end).normalize()
    else:
        if not 0.0 < calibration_share < 1.0:
            raise DataError(f"split.calibration_share must be in (0, 1), got {calibration_share}")
        end = (first + (last - first) * calibration_share).normalize()
    if not first <= end < last:
        raise DataError(
            f"split.calibration_end {end.date()} leaves no calibration or no holdout window inside the "
            f"data's range {first.date()} to {last.date()}"
        )
    return Split(calibration_end=end, holdout_end=last)


def calibration_and_holdout(orders: pd.DataFrame, split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features as of the calibration end, and what each of those customers did in the holdout.

    Only customers first seen in the calibration window are included: the holdout judges predictions
    for customers the model knew about. Holdout columns: ``purchases`` (purchase days) and ``revenue``
    (only when the log has amounts).
    """
    calibration = customer_features(orders, split.calibration_end)
    return calibration, holdout_outcome(orders, calibration.index, split)


def holdout_outcome(orders: pd.DataFrame, customers: pd.Index, split: Split) -> pd.DataFrame:
    """What each of ``customers`` did after ``split.calibration_end`` up to ``split.holdout_end``: the
    holdout half of ``calibration_and_holdout``, for callers that already hold the features."""
    in_holdout = ((orders["date"] > split.calibration_end) & (orders["date"] <= split.holdout_end)).to_numpy()
    # Counted by customer code (the loader's category codes: a million customers' window in 0.1 s, not
    # 2.5 s); a missing id (code -1) is no customer.
    codes, ids = order_codes(orders["customer_id"])
    counted = in_holdout & (codes >= 0)
    codes = codes[counted]
    totals = {"purchases": np.bincount(codes, minlength=len(ids)).astype("float64")}
    if "amount" in orders.columns:
        totals["revenue"] = np.bincount(codes, orders["amount"].to_numpy()[counted], minlength=len(ids))
    # The loader's categories are one Index for the whole job: its hash table, built on the first call, is
    # reused by every window (0.04 s against 0.3 s a call at a million ids); a fresh Index rebuilds it.
    positions = (ids if isinstance(ids, pd.Index) else pd.Index(ids)).get_indexer(customers)
    seen = positions >= 0  # customers with no order in this frame did nothing in the holdout
    return pd.DataFrame(
        {name: np.where(seen, values[positions], 0.0) for name, values in totals.items()}, index=customers
    )
