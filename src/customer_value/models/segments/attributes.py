"""Customer attributes for segmentation (demographic, geographic, firmographic) and the fairness audit.

Attributes are columns of the dataset's customer file (``data.customers.path``, read by
``customer_value.data.customers``; an older ``segmentation.attributes.path`` still wins). Configured numeric
and categorical columns join the behaviour features. **Protected attributes** (age, gender, race, ethnicity,
religion, disability, marital status by default) are never clustering features: a config that asks for one
is refused before anything runs. When such columns are present in the file anyway, the run logs how each
segment is composed by group, so a reviewer can see whether segments (and the offers tied to them) fall
unevenly on protected groups. Only aggregates are logged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from customer_value.data.customers import CustomerFile, canonical_name, load_customers
from customer_value.errors import DataError, UserError

MISSING_CATEGORY = "(missing)"


def refuse_protected_features(attributes: DictConfig, features: list[str]) -> None:
    """A one-line UserError when a protected attribute is asked to be a clustering feature."""
    protected = {canonical_name(p) for p in attributes.protected}
    asked = [*attributes.numeric, *attributes.categorical, *features]
    refused = [name for name in asked if canonical_name(name) in protected]
    if refused:
        raise UserError(
            f"segmentation: {refused} protected attribute(s) can never be clustering features "
            "(segmentation.attributes.protected); remove them from segmentation.attributes.numeric / "
            "categorical"
        )


def attributes_file(cfg: DictConfig) -> CustomerFile | None:
    """The file segmentation reads attributes from: ``segmentation.attributes.path`` when set (older
    configs), else the dataset's customer file ``data.customers.path``, each with its own id column."""
    attributes = cfg.segmentation.attributes
    if attributes.path is not None:
        return CustomerFile(str(attributes.path), attributes.customer_id, "segmentation.attributes.path")
    customers = cfg.data.customers
    if customers.path is not None:
        return CustomerFile(str(customers.path), customers.id, "data.customers.path")
    return None


def load_attributes(
    attributes: DictConfig, file: CustomerFile | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The configured attribute columns indexed by customer id, and the protected columns found.

    ``file`` defaults to ``attributes.path`` / ``attributes.customer_id``. Numeric columns must parse as
    numbers (blank cells are allowed and imputed later); categorical ones are read as text. Protected
    columns present in the file are read for the audit only.
    """
    file = file or CustomerFile(str(attributes.path), attributes.customer_id, "segmentation.attributes.path")
    if not Path(file.path).is_file():
        raise DataError(f"{file.key} {file.path}: no such file")
    frame, protected = load_customers(
        file.path, file.id_column, [*attributes.numeric, *attributes.categorical], list(attributes.protected)
    )
    for column in attributes.numeric:
        parsed = pd.to_numeric(frame[column], errors="coerce")
        bad = parsed.isna() & frame[column].notna()
        if bad.any():
            raise DataError(
                f"{file.path}: column {column} has {int(bad.sum()):,} non-numeric value(s) "
                f"(e.g. {frame.loc[bad, column].iloc[0]!r}); numeric attributes must be numbers or blank"
            )
        frame[column] = parsed.astype("float64")
    for column in [*attributes.categorical, *protected]:
        frame[column] = _as_category(frame[column])
    return frame, protected


def _as_category(values: pd.Series) -> pd.Series:
    """Text groups, missing as '(missing)'; whole numbers read as float (codes, ages) print without '.0'."""
    known = values.dropna()
    if pd.api.types.is_float_dtype(values) and ((known % 1 == 0) & (known.abs() < 2**53)).all():
        values = values.astype("Int64")
    return values.astype("string").fillna(MISSING_CATEGORY).astype(str)


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
