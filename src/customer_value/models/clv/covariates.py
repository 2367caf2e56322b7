"""Time-invariant customer covariates in the purchase models: the design and each customer's parameters.

Parametrisation (Fader & Hardie's note on time-invariant covariates; CLVTools), z_i a customer's design row:
- both families: purchase heterogeneity alpha_i = alpha0 * exp(-gamma_purchase . z_i), so a positive
  coefficient raises the purchase rate (E[lambda_i] = r / alpha_i);
- Pareto/NBD: beta_i = beta0 * exp(-gamma_dropout . z_i) (a positive coefficient raises the dropout rate);
- BG/NBD: a_i = a0 * exp(gamma_a . z_i), b_i = b0 * exp(gamma_b . z_i), separate coefficients (CLVTools ties
  gamma_a = gamma_b, which leaves the mean dropout probability a / (a + b) where it was).

The design is learned on the training base (:func:`fit_encoding`): a numeric column is standardised with the
base's mean and standard deviation, a text column one-hot against its most frequent level (the reference).
Rules for what the base did not show, counted by :func:`encode`: a missing numeric value (or a customer absent
from the customer file) takes the base's mean (z = 0); a missing text value is the level ``(missing)``, which
is a level of its own when the base had it and otherwise scores as the reference, like any unseen level.
With every coefficient 0, each customer's parameters are the population's: the model without covariates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from customer_value.errors import ModelFitError

MISSING_LEVEL = "(missing)"
# Each family's coefficient sets: the parameter a set moves, the sign, and whose columns it reads.
COEFFICIENT_SETS = {
    "bgnbd": {
        "purchase": ("alpha", -1.0, "purchase"),
        "a": ("a", 1.0, "dropout"),
        "b": ("b", 1.0, "dropout"),
    },
    "pareto_nbd": {"purchase": ("alpha", -1.0, "purchase"), "dropout": ("beta", -1.0, "dropout")},
}
COVARIATE_FAMILIES = tuple(COEFFICIENT_SETS)


@dataclass(frozen=True)
class EncodingReport:
    """What the base did not show, counted per raw column when a table is encoded."""

    missing: dict[str, int] = field(
        default_factory=dict
    )  # missing values (or customers absent from the file)
    unseen: dict[str, int] = field(
        default_factory=dict
    )  # text values the base did not have: scored as reference

    def describe(self) -> str:
        parts = [f"{c}: {n:,} missing" for c, n in self.missing.items() if n]
        parts += [f"{c}: {n:,} unseen level(s) scored as the reference" for c, n in self.unseen.items() if n]
        return "; ".join(parts) or "none"


def fit_encoding(frame: pd.DataFrame, purchase: list[str], dropout: list[str]) -> dict[str, object]:
    """The design learned on the training base ``frame`` (one row per customer): a JSON-able dict.

    A column that does not vary on the base identifies no coefficient: a one-line ModelFitError.
    """
    numeric: dict[str, list[float]] = {}
    categorical: dict[str, list[str]] = {}
    for column in dict.fromkeys([*purchase, *dropout]):
        if column not in frame.columns:
            raise ModelFitError(f"clv.covariates: the customer table has no column {column!r}")
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype="float64", na_value=np.nan)
            known = numbers[np.isfinite(numbers)]
            sd = float(known.std()) if len(known) > 1 else 0.0
            if not sd > 0:
                raise ModelFitError(
                    f"clv.covariates: column {column!r} is constant on the {len(frame):,} customers of the "
                    "training base, so its coefficient cannot be estimated; remove it"
                )
            numeric[column] = [float(known.mean()), sd]
        else:
            counts = _levels(values).value_counts()
            if len(counts) < 2:
                raise ModelFitError(
                    f"clv.covariates: column {column!r} has a single level on the {len(frame):,} customers "
                    "of the training base, so its coefficients cannot be estimated; remove it"
                )
            # The most frequent level is the reference (ties: the first in sorted order).
            ordered = sorted(counts.index, key=lambda level: (-counts[level], level))
            categorical[column] = [str(level) for level in ordered]
    return {
        "numeric": numeric,
        "categorical": categorical,
        "columns": {"purchase": list(purchase), "dropout": list(dropout)},
    }


def _levels(values: pd.Series) -> pd.Series:
    return values.astype("string").fillna(MISSING_LEVEL).astype(str)


def _level_codes(values: pd.Series, levels: list[str]) -> tuple[np.ndarray, int]:
    """Each row's position in ``levels`` (-1: a level the base did not have) and how many rows are missing.

    ``_levels`` of each distinct value, not of every row: hashing a million values and mapping the few
    distinct ones took 0.04 s at a million rows, converting every row to text and looking it up 0.14 s
    (measured). Not for Python objects, which hash 1, 1.0 and True alike though their text differs, nor for
    floats (0.0 and -0.0 hash alike)."""
    if values.dtype == object or values.dtype.kind in "fc":
        names = _levels(values)
        return pd.Index(levels).get_indexer(names), int((names == MISSING_LEVEL).sum())
    raw, distinct = pd.factorize(values, use_na_sentinel=False)
    names = _levels(pd.Series(distinct, dtype=values.dtype))
    level_of = pd.Index(levels).get_indexer(names)
    missing = int(np.bincount(raw, minlength=len(names))[(names == MISSING_LEVEL).to_numpy()].sum())
    return level_of[raw], missing


def raw_columns(encoding: dict[str, object]) -> list[str]:
    """The customer-file columns the design reads, each once (the registered model's covariate inputs)."""
    columns = encoding["columns"]
    return list(dict.fromkeys([*columns["purchase"], *columns["dropout"]]))


def design_columns(encoding: dict[str, object], raw: list[str] | None = None) -> list[str]:
    """Design column names of the given raw columns (all by default): ``col`` or ``col=level``."""
    names = []
    for column in raw_columns(encoding) if raw is None else raw:
        if column in encoding["numeric"]:
            names.append(column)
        else:
            names += [f"{column}={level}" for level in encoding["categorical"][column][1:]]
    return names


def coefficient_design(family: str, encoding: dict[str, object]) -> dict[str, list[str]]:
    """Each coefficient set of the family and the design columns it has coefficients for."""
    return {
        name: design_columns(encoding, encoding["columns"][reads])
        for name, (_, _, reads) in COEFFICIENT_SETS[family].items()
    }


def coefficient_positions(family: str, encoding: dict[str, object]) -> dict[str, list[int]]:
    """Each coefficient set's columns as positions in the design matrix (``encode``'s column order)."""
    names = design_columns(encoding)
    return {
        name: [names.index(c) for c in columns]
        for name, columns in coefficient_design(family, encoding).items()
    }


def encode(encoding: dict[str, object], frame: pd.DataFrame) -> tuple[np.ndarray, EncodingReport]:
    """The design matrix (customers x ``design_columns(encoding)``) of ``frame`` and what was filled in."""
    columns = design_columns(encoding)
    design = np.zeros((len(frame), len(columns)), dtype="float64")
    position = {name: index for index, name in enumerate(columns)}
    missing, unseen = {}, {}
    for column in raw_columns(encoding):
        if column not in frame.columns:
            raise ModelFitError(f"clv.covariates: the customer table has no column {column!r}")
        if column in encoding["numeric"]:
            mean, sd = encoding["numeric"][column]
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            known = np.isfinite(values)
            missing[column] = int((~known).sum())
            design[:, position[column]] = np.where(known, (values - mean) / sd, 0.0)
            continue
        levels = encoding["categorical"][column]
        codes, missing[column] = _level_codes(frame[column], levels)
        unseen[column] = int((codes < 0).sum())
        for code, level in enumerate(levels[1:], start=1):
            design[:, position[f"{column}={level}"]] = codes == code
    return design, EncodingReport(missing, unseen)


def customer_values(
    family: str, purchase: dict[str, float], covariates: dict[str, object] | None, design: np.ndarray | None
) -> dict[str, float | np.ndarray]:
    """Each customer's purchase-model parameters: the population's scaled by exp(+-gamma . z_i).

    Without covariates (or without a design) the population's scalars are returned unchanged.
    """
    if covariates is None or design is None:
        return dict(purchase)
    values: dict[str, float | np.ndarray] = dict(purchase)
    names = design_columns(covariates)
    for name, (parameter, sign, _) in COEFFICIENT_SETS[family].items():
        gammas = covariates["coefficients"][name]
        if not gammas:
            continue
        vector = np.array([gammas.get(column, 0.0) for column in names])
        values[parameter] = purchase[parameter] * np.exp(sign * (design @ vector))
    return values


def row_codes(*columns: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's distinct (columns...) combination, numbered 0.. in order of first appearance, and how many.

    Why not ``np.unique(axis=0)``: it sorts rows as structured records, seconds at a million customers.
    Here each column is factorized by hashing (exact: equal values, and only those, share a code) and the
    codes are combined in mixed radix, renumbered before the key could overflow. A 2-d column is taken
    column by column; a column whose values are all distinct ends the work (every row is distinct).
    """
    flat = [c for column in columns for c in (column.T if np.ndim(column) == 2 else [column])]
    n = len(flat[0]) if flat else 0
    key, n_keys = np.zeros(n, dtype="int64"), 1
    for column in flat:
        codes, distinct = pd.factorize(np.asarray(column, dtype="float64"), use_na_sentinel=False)
        if len(distinct) == n:  # all rows distinct (a numeric covariate): numbered as they come
            return np.arange(n, dtype="int64"), n
        if n_keys * len(distinct) >= 2**62:
            key, n_keys = _renumber(key)
        key, n_keys = key * len(distinct) + codes, n_keys * max(len(distinct), 1)
    return _renumber(key)


def codes_all_distinct(codes: np.ndarray) -> bool:
    """Whether a ``row_codes`` numbering (0..K-1, every code used) gives each row a code of its own: then
    K is the number of rows. O(n), where hashing a million distinct codes again takes 0.2 s."""
    return len(codes) > 0 and int(codes.max()) + 1 == len(codes)


def _renumber(key: np.ndarray) -> tuple[np.ndarray, int]:
    codes, distinct = pd.factorize(key)
    return codes.astype("int64"), len(distinct)
