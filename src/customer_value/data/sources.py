"""Pieces the jobs share: reading the configured data source, without the customers who may not be
profiled."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value.data.loading import DataReport, LoadingRules, load_bundled, load_transactions
from customer_value.errors import UserError
from customer_value.privacy.suppression import REASONS, Suppression, suppression_from_config

log = logging.getLogger(__name__)


def load_orders(data: DictConfig) -> tuple[pd.DataFrame, DataReport]:
    """Orders and data report for the ``data`` config node (bundled dataset or a file)."""
    rules = LoadingRules.from_config(data)
    if data.bundled:
        return load_bundled(data.bundled, rules)
    if not data.path:
        raise UserError("data.path is required with data=file (e.g. data.path=orders.parquet)")
    return load_transactions(
        data.path,
        customer_id=data.columns.customer_id,
        timestamp=data.columns.timestamp,
        amount=data.columns.amount,
        rules=rules,
    )


def load_permitted_orders(cfg: DictConfig, training: bool = False) -> tuple[pd.DataFrame, DataReport]:
    """``load_orders`` without the orders of customers who may not be profiled (``cfg.privacy``): the
    forgotten always; objecting and non-consenting ones too, except in training with
    ``privacy.objection_scope=outputs``. The report counts them per reason (``suppressed``)."""
    orders, report, _ = load_orders_withholding(cfg, training)
    return orders, report


def load_orders_withholding(
    cfg: DictConfig, training: bool = False
) -> tuple[pd.DataFrame, DataReport, pd.Series]:
    """``load_permitted_orders`` plus who was withheld: their ids (as text, the index) and reasons, for
    jobs that must also take them out of earlier outputs (``privacy.suppression.withhold``)."""
    orders, report = load_orders(cfg.data)
    rules = suppression_from_config(cfg)
    if training and cfg.privacy.objection_scope == "outputs":
        rules = Suppression(listed=rules.listed, key=rules.key)
    counts = dict.fromkeys(REASONS, 0)
    if not rules.active:  # the default: nothing to look up, no copy of the log
        return orders, dataclasses.replace(report, suppressed=counts), pd.Series(dtype=object)
    # Judged once per customer (the log's ids are categories), then mapped to the orders.
    ids = orders["customer_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):
        customers, codes = pd.Series(ids.cat.categories.astype(str)), ids.cat.codes.to_numpy()
    else:
        codes, uniques = pd.factorize(ids.astype(str))
        customers = pd.Series(uniques)
    per_customer = rules.reasons(customers)
    withheld = pd.Series(per_customer.to_numpy(), index=customers.to_numpy()).dropna()
    present = pd.unique(codes[codes >= 0])
    withheld = withheld[withheld.index.isin(customers.to_numpy()[present])]  # customers in this log
    counts |= {reason: int((withheld == reason).sum()) for reason in REASONS}
    if len(withheld):
        log.info(
            "privacy: %s customers left out (%s)",
            f"{len(withheld):,}",
            ", ".join(f"{reason} {n:,}" for reason, n in counts.items() if n),
        )
    allowed = per_customer.isna().to_numpy()
    kept = orders[np.where(codes >= 0, allowed[np.maximum(codes, 0)], True)].reset_index(drop=True)
    if kept.empty and len(withheld):
        raise UserError(
            f"{cfg.data.path or cfg.data.name}: the privacy rules leave none of its {len(withheld):,} "
            "customers to profile (privacy.objection_column / consent_column, the suppression list)"
        )
    return kept, dataclasses.replace(report, suppressed=counts), withheld
