"""Who a campaign targets: rules over a scoring output's columns.

A rule is a mapping with any of
- ``segments``: segment names (``segment_name``) the customer must be in;
- ``where``: ``{column: {min: x, max: y}}`` bounds on numeric columns (``churn_probability``, ``clv``, ...);
- ``top``: ``{column: share}``: the highest ``share`` of the rule's customers by that column (ties by id),
  e.g. the top CLV decile of a segment.
Conditions of one rule all hold (and); a customer matching any rule is in the audience (or), with the
first rule it matched recorded, so "Champions and the top CLV decile of At risk" is two rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from customer_value.errors import UserError

RULE_KEYS = {"segments", "where", "top", "name"}


def select_audience(scores: pd.DataFrame, rules: Sequence[Mapping], source: str) -> pd.DataFrame:
    """The rows of ``scores`` that match a rule, with column ``rule`` (its name, or its position); a rule
    naming an unknown column, segment or key is a UserError naming ``source``."""
    if not rules:
        raise UserError(f"{source}: campaign.audience has no rule (list at least one)")
    chosen = pd.Series(-1, index=scores.index)
    for number, rule in enumerate(rules):
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise UserError(
                f"campaign.audience[{number}]: unknown key(s) {sorted(unknown)}; use {sorted(RULE_KEYS)}"
            )
        matched = _matches(scores, rule, number, source)
        chosen[(chosen < 0) & matched] = number
    names = [str(rule.get("name") or f"rule {number}") for number, rule in enumerate(rules)]
    picked = scores.loc[chosen >= 0].copy()
    picked["rule"] = [names[k] for k in chosen[chosen >= 0]]
    return picked


def _matches(scores: pd.DataFrame, rule: Mapping, number: int, source: str) -> pd.Series:
    where = f"campaign.audience[{number}]"
    _check_types(rule, where)
    keep = pd.Series(True, index=scores.index)
    if rule.get("segments"):
        wanted = [str(name) for name in rule["segments"]]
        known = set(scores["segment_name"].astype(str))
        missing = [name for name in wanted if name not in known]
        if missing:
            raise UserError(
                f"{source}: {where} names segment(s) {missing}, not in the scoring ({sorted(known)})"
            )
        keep &= scores["segment_name"].astype(str).isin(wanted)
    for column, bounds in (rule.get("where") or {}).items():
        values = _numeric(scores, column, where, source)
        if bounds.get("min") is not None:
            keep &= values >= float(bounds["min"])
        if bounds.get("max") is not None:
            keep &= values <= float(bounds["max"])
    for column, share in (rule.get("top") or {}).items():
        if not 0 < float(share) <= 1:
            raise UserError(f"{where}: top.{column} must be a share in (0, 1], got {share}")
        values = _numeric(scores, column, where, source)[keep]
        count = int(np.ceil(float(share) * len(values)))
        order = pd.DataFrame({"value": values, "id": scores.loc[keep, "customer_id"].astype(str)})
        best = order.sort_values(["value", "id"], ascending=[False, True]).index[:count]
        keep &= scores.index.isin(best)
    return keep


def _check_types(rule: Mapping, where: str) -> None:
    """segments: a list of names; where: {column: {min, max}} numbers; top: {column: share} numbers."""
    if "segments" in rule and not isinstance(rule["segments"], (list, tuple)):
        raise UserError(f"{where}.segments must be a list of segment names, e.g. [Champions]")
    for column, bounds in (rule.get("where") or {}).items():
        if not isinstance(bounds, Mapping) or not set(bounds) <= {"min", "max"}:
            raise UserError(f"{where}.where.{column} must be {{min: x, max: y}} (either may be left out)")
        for key, value in bounds.items():
            if value is not None and not isinstance(value, (int, float)):
                raise UserError(f"{where}.where.{column}.{key} must be a number, got {value!r}")
    for column, share in (rule.get("top") or {}).items():
        if not isinstance(share, (int, float)) or isinstance(share, bool):
            raise UserError(f"{where}.top.{column} must be a share in (0, 1], got {share!r}")


def _numeric(scores: pd.DataFrame, column: str, where: str, source: str) -> pd.Series:
    if column not in scores.columns:
        raise UserError(f"{source}: {where} uses column {column!r}, not in the scoring output")
    values = pd.to_numeric(scores[column], errors="coerce")
    if values.isna().any():
        raise UserError(
            f"{source}: column {column!r} has {int(values.isna().sum())} non-numeric or missing value(s); "
            f"{where} cannot rank or bound it"
        )
    return values
