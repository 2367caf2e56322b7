"""Who may not be profiled, and taking them out: customers who object (``privacy.objection_column`` of the
customer file, true = objects), who did not consent (``privacy.consent_column``: only true may be
profiled; a customer the file lacks has not consented) and those on the suppression list (erased or
objected by request).

Each excluded customer is counted once, under the first reason that applies (erased, objection,
no_consent); the counts are logged by every job, never who.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value.data.customers import load_customers
from customer_value.errors import DataError, UserError
from customer_value.privacy.hashing import is_pseudonymised, privacy_key, pseudonyms, suppression_hashes
from customer_value.privacy.suppression_list import SuppressionList

REASONS = ("erased", "objection", "no_consent")
SCOPES = ("all", "outputs")
TRUE = {"true", "t", "yes", "y", "1", "1.0"}
FALSE = {"false", "f", "no", "n", "0", "0.0", ""}


@dataclass(frozen=True)
class Suppression:
    """The rules of one job: raw ids from the customer file's columns, keyed hashes from the list."""

    objecting: frozenset[str] = frozenset()
    consenting: frozenset[str] | None = None  # None: no consent column, everyone may be profiled
    listed: frozenset[str] = frozenset()  # suppression-list hashes
    key: bytes | None = field(default=None, repr=False)  # needed only when ``listed`` is not empty

    @property
    def active(self) -> bool:
        return bool(self.objecting or self.listed) or self.consenting is not None

    def reasons(self, customer_ids: pd.Series) -> pd.Series:
        """Per id (as text): the reason it is excluded, or None."""
        ids = customer_ids.astype(str)
        reason = pd.Series(None, index=customer_ids.index, dtype=object)
        if self.consenting is not None:
            reason[~ids.isin(self.consenting)] = "no_consent"
        if self.objecting:
            reason[ids.isin(self.objecting)] = "objection"
        if self.listed:
            unique = ids.unique()
            hashed = dict(zip(unique, suppression_hashes(unique, self.key), strict=True))
            reason[ids.map(hashed).isin(self.listed)] = "erased"
        return reason

    def exclude(
        self, table: pd.DataFrame, id_column: str = "customer_id"
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        """``table`` without the excluded customers' rows, and how many customers each reason took out."""
        if not self.active or table.empty:
            return table, {r: 0 for r in REASONS}
        reason = self.reasons(table[id_column])
        per_customer = pd.DataFrame({"id": table[id_column].astype(str), "reason": reason}).drop_duplicates(
            "id"
        )
        counts = per_customer["reason"].value_counts()
        kept = table[reason.isna().to_numpy()]
        return kept, {r: int(counts.get(r, 0)) for r in REASONS}


def withhold(
    table: pd.DataFrame, withheld: pd.Series, key: bytes | None = None, id_column: str = "customer_id"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """An earlier output without the ``withheld`` customers (ids as text -> reason), matched by id, or by
    pseudonym when the table's ids are pseudonyms (``key`` needed then); and how many per reason."""
    ids = table[id_column].astype(str).str.strip()
    keys = withheld
    if is_pseudonymised(ids) and len(withheld):
        if key is None:
            raise UserError("a pseudonymised output needs the privacy key to take withheld customers out")
        keys = pd.Series(withheld.to_numpy(), index=pseudonyms(withheld.index, key))
    reason = ids.map(keys)
    counts = reason.dropna().groupby(ids[reason.notna()]).first().value_counts()
    return table[reason.isna().to_numpy()], {r: int(counts.get(r, 0)) for r in REASONS}


def meet_output(
    table: pd.DataFrame, orders: pd.DataFrame, withheld: pd.Series, privacy: DictConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """An earlier output (a scoring, campaign lists) read beside today's permitted log: the output
    without the customers withheld since it was made, the log in the output's ids (pseudonymised for a
    pseudonymised output), and how many each reason took out."""
    key = None
    if is_pseudonymised(table["customer_id"]):
        key = project_key(privacy)
        orders = orders.assign(customer_id=pseudonyms(orders["customer_id"], key))
    kept, counts = withhold(table, withheld, key)
    return kept.reset_index(drop=True), orders, counts


def suppression_from_config(cfg: DictConfig, columns: bool = True) -> Suppression:
    """The job's rules: ``cfg.privacy`` and, for the columns, the customer file ``cfg.data.customers``;
    ``columns=False``: the suppression list only (a job without a data group: the columns were applied
    when its input was scored)."""
    privacy = cfg.privacy
    if privacy.objection_scope not in SCOPES:
        raise UserError(
            f"privacy.objection_scope must be one of {list(SCOPES)}, got '{privacy.objection_scope}'"
        )
    listed = SuppressionList.read(privacy.suppression_list)
    key = project_key(privacy) if len(listed) else None
    objecting: frozenset[str] = frozenset()
    consenting = None
    columns = [c for c in (privacy.objection_column, privacy.consent_column) if c] if columns else []
    if columns:
        customers = _customer_file(cfg, columns)
        if privacy.objection_column:
            flags = _flags(customers[privacy.objection_column], cfg, privacy.objection_column, blank=False)
            objecting = frozenset(customers.index[flags])
        if privacy.consent_column:
            flags = _flags(customers[privacy.consent_column], cfg, privacy.consent_column, blank=False)
            consenting = frozenset(customers.index[flags])
    return Suppression(objecting, consenting, frozenset(listed.hashes()), key)


def project_key(privacy: DictConfig) -> bytes:
    """The privacy key for pseudonyms, checked against the suppression list's entries."""
    listed = SuppressionList.read(privacy.suppression_list)
    key = privacy_key(privacy.key_file, len(listed))
    listed.check_key(key)
    return key


def _customer_file(cfg: DictConfig, columns: list[str]) -> pd.DataFrame:
    path = cfg.data.customers.path if "data" in cfg else None
    if not path:
        raise UserError(
            f"privacy.objection_column / consent_column {columns} are columns of the customer file: "
            "set data.customers.path"
        )
    frame, _ = load_customers(str(path), cfg.data.customers.id, columns, [])
    return frame


def _flags(values: pd.Series, cfg: DictConfig, column: str, blank: bool) -> np.ndarray:
    """true/false text or 1/0 numbers as booleans; a blank cell is ``blank``; anything else is an error."""
    text = values.astype(str).str.strip().str.lower().where(values.notna(), "")
    unknown = ~text.isin(TRUE | FALSE)
    if unknown.any():
        example = text[unknown].iloc[0]
        raise DataError(
            f"{Path(cfg.data.customers.path)}: column {column} has {int(unknown.sum()):,} value(s) that are "
            f"neither true nor false (e.g. '{example}'); use true/false, yes/no or 1/0"
        )
    flags = text.isin(TRUE).to_numpy()
    return np.where(text.eq("").to_numpy(), blank, flags)


def refuse_under_spark(cfg: DictConfig, job: str) -> None:
    """engine=spark does not apply privacy rules yet: one line rather than outputs that would hold the
    customers who may not be in them."""
    if suppression_from_config(cfg).active:
        raise UserError(
            f"engine=spark {job} cannot yet leave out objecting, non-consenting or forgotten customers "
            "(privacy.*, the suppression list): run it with engine=pandas"
        )
