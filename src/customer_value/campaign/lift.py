"""What a campaign earned: per segment and overall, treatment vs control on what customers did in the
window since it started, each difference with a 95 % interval.

- purchase rate (a purchase in the window) and retention (a purchase in the window's second half: still
  buying at its end): difference of proportions with the unpooled normal (Wald) interval;
- revenue per customer: difference of means with Welch's normal interval (large samples; heavy tails
  widen it honestly through the variances);
- incremental revenue: the revenue difference times the treated customers, with the same interval scaled.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy.stats import norm

from customer_value.campaign import power
from customer_value.campaign.assignment import CONTROL, TREATMENT

ALL = "all"


def slug(name: object) -> str:
    """A segment name as a file or metric name part: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "segment"


def outcomes(
    lists: pd.DataFrame, orders: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """One row per listed customer: ``purchased``, ``retained`` (a purchase in the window's second half)
    and ``revenue`` (NaN for a log without amounts) in the window (start, end]."""
    stamps = pd.to_datetime(orders["timestamp"] if "timestamp" in orders.columns else orders["date"])
    inside = (stamps > start) & (stamps <= end)
    window = orders.loc[inside].assign(stamp=stamps[inside])
    middle = start + (end - start) / 2
    by_customer = window.groupby(window["customer_id"].astype(str))
    table = lists.set_index(lists["customer_id"].astype(str))[["segment", "arm"]].copy()
    table["purchased"] = table.index.isin(by_customer.size().index)
    late = window.loc[window["stamp"] > middle, "customer_id"].astype(str)
    table["retained"] = table.index.isin(set(late))
    if "amount" in window.columns:
        table["revenue"] = by_customer["amount"].sum().reindex(table.index).fillna(0.0)
    else:
        table["revenue"] = np.nan
    return table


def _proportions(t: pd.Series, c: pd.Series, z: float) -> dict[str, float]:
    pt, pc = float(t.mean()), float(c.mean())
    se = np.sqrt(pt * (1 - pt) / len(t) + pc * (1 - pc) / len(c))
    diff = pt - pc
    return {"treatment": pt, "control": pc, "diff": diff, "ci_low": diff - z * se, "ci_high": diff + z * se}


def _means(t: pd.Series, c: pd.Series, z: float) -> dict[str, float]:
    mt, mc = float(t.mean()), float(c.mean())
    se = np.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
    diff = mt - mc
    return {"treatment": mt, "control": mc, "diff": diff, "ci_low": diff - z * se, "ci_high": diff + z * se}


def lift_table(
    outcome: pd.DataFrame,
    planned_lift: float,
    alpha: float = 0.05,
    power_level: float = 0.8,
) -> pd.DataFrame:
    """One row per segment and one for ``all``: sizes, each measure's treatment, control, difference and
    interval, incremental revenue, and whether the arms were large enough to detect ``planned_lift``."""
    z = float(norm.ppf(1 - alpha / 2))
    rows = []
    groups = [(ALL, outcome)] + [
        (str(name), part) for name, part in outcome.groupby("segment", observed=True)
    ]
    for name, part in groups:
        t, c = part[part["arm"] == TREATMENT], part[part["arm"] == CONTROL]
        row: dict[str, object] = {"segment": name, "treatment_customers": len(t), "control_customers": len(c)}
        if len(t) < 2 or len(c) < 2:
            rows.append(row)
            continue
        for measure, column, interval in (
            ("purchase_rate", "purchased", _proportions),
            ("retention", "retained", _proportions),
            ("revenue_per_customer", "revenue", _means),
        ):
            if part[column].isna().all():
                continue
            figures = interval(t[column].astype(float), c[column].astype(float), z)
            row |= {f"{measure}.{key}": value for key, value in figures.items()}
        if "revenue_per_customer.diff" in row:
            for key in ("diff", "ci_low", "ci_high"):
                row[f"incremental_revenue.{key}"] = float(row[f"revenue_per_customer.{key}"]) * len(t)
        control_rate = float(row["purchase_rate.control"])
        detectable = power.detectable_lift(
            len(t) + len(c), control_rate, len(c) / (len(t) + len(c)), alpha, power_level
        )
        row["detectable_lift"] = detectable
        row["powered"] = bool(detectable <= planned_lift)
        rows.append(row)
    return pd.DataFrame(rows)
