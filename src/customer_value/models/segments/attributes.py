"""Customer attributes for segmentation (demographic, geographic, firmographic) and the fairness audit.

An attributes file holds one row per customer: the id plus numeric and categorical columns. Configured
numeric and categorical columns join the behaviour features. **Protected attributes** (age, gender, race,
ethnicity, religion, disability, marital status by default) are never clustering features: a config that
asks for one is refused before anything runs. When such columns are present in the file anyway, the
run logs how each segment is composed by group, so a reviewer can see whether segments (and the offers
tied to them) fall unevenly on protected groups. Only aggregates are logged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from customer_value.data.loading import read_columns
from customer_value.errors import DataError, UserError

MISSING_CATEGORY = "(missing)"


def _canonical(name: str) -> str:
    """'Marital Status', 'marital-status' and 'marital_status' are one attribute."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def refuse_protected_features(attributes: DictConfig, features: list[str]) -> None:
    """A one-line UserError when a protected attribute is asked to be a clustering feature."""
    protected = {_canonical(p) for p in attributes.protected}
    asked = [*attributes.numeric, *attributes.categorical, *features]
    refused = [name for name in asked if _canonical(name) in protected]
    if refused:
        raise UserError(
            f"segmentation: {refused} protected attribute(s) can never be clustering features "
            "(segmentation.attributes.protected); remove them from segmentation.attributes.numeric / "
            "categorical"
        )


def load_attributes(attributes: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The configured attribute columns indexed by customer id, and the protected columns found.

    Numeric columns must parse as numbers (blank cells are allowed and imputed later); categorical ones
    are read as text. Protected columns present in the file are read for the audit only.
    """
    path = Path(attributes.path)
    if not path.is_file():
        raise DataError(f"segmentation.attributes.path {path}: no such file")
    available = _available_columns(path)
    protected = [c for c in available if _canonical(c) in {_canonical(p) for p in attributes.protected}]
    wanted = [attributes.customer_id, *attributes.numeric, *attributes.categorical, *protected]
    frame = read_columns(path, list(dict.fromkeys(wanted)))  # a missing column is a one-line DataError
    frame[attributes.customer_id] = frame[attributes.customer_id].astype(str)
    duplicated = frame[attributes.customer_id].duplicated()
    if duplicated.any():
        raise DataError(
            f"{path}: column {attributes.customer_id} repeats {int(duplicated.sum()):,} id(s); "
            "an attributes file needs one row per customer"
        )
    for column in attributes.numeric:
        parsed = pd.to_numeric(frame[column], errors="coerce")
        bad = parsed.isna() & frame[column].notna()
        if bad.any():
            raise DataError(
                f"{path}: column {column} has {int(bad.sum()):,} non-numeric value(s) "
                f"(e.g. {frame.loc[bad, column].iloc[0]!r}); numeric attributes must be numbers or blank"
            )
        frame[column] = parsed.astype("float64")
    for column in [*attributes.categorical, *protected]:
        frame[column] = frame[column].astype("string").fillna(MISSING_CATEGORY).astype(str)
    return frame.set_index(attributes.customer_id), protected


def _available_columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except Exception as exc:  # readers raise many types for unreadable bytes
        raise DataError(f"{path}: cannot read its header ({type(exc).__name__})") from None


def join_attributes(features: pd.DataFrame, attributes: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Customers without a row in the attributes file get NaN (numeric, imputed) or '(missing)'."""
    joined = features.join(attributes[columns], how="left")
    for column in columns:
        if not pd.api.types.is_numeric_dtype(joined[column]):
            joined[column] = joined[column].fillna(MISSING_CATEGORY).astype(str)
    return joined


def protected_audit(segments: pd.Series, groups: pd.DataFrame) -> pd.DataFrame:
    """Long table: attribute, group, segment, customers, share of the segment, share of the group overall.

    ``segments`` and ``groups`` are indexed by customer id. A segment whose share of a group is far from
    the group's overall share is one to look at before tying an offer to it.
    """
    rows = []
    for attribute in groups.columns:
        frame = pd.DataFrame({"segment": segments, "group": groups[attribute].reindex(segments.index)})
        frame["group"] = frame["group"].fillna(MISSING_CATEGORY)
        counts = frame.groupby(["segment", "group"]).size().rename("customers").reset_index()
        counts["share_of_segment"] = counts["customers"] / counts.groupby("segment")["customers"].transform(
            "sum"
        )
        overall = frame["group"].value_counts(normalize=True)
        counts["share_overall"] = counts["group"].map(overall)
        rows.append(counts.assign(attribute=attribute))
    columns = ["attribute", "group", "segment", "customers", "share_of_segment", "share_overall"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)
