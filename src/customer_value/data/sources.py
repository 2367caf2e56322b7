"""Pieces the jobs share: reading the configured data source, without the customers who may not be
profiled."""

from __future__ import annotations

import dataclasses
import logging

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
    reasons = rules.reasons(orders["customer_id"]) if rules.active else pd.Series(None, index=orders.index)
    withheld = pd.Series(reasons.to_numpy(), index=orders["customer_id"].astype(str).to_numpy()).dropna()
    withheld = withheld[~withheld.index.duplicated()]
    counts = {reason: int((withheld == reason).sum()) for reason in REASONS}
    if len(withheld):
        log.info(
            "privacy: %s customers left out (%s)",
            f"{len(withheld):,}",
            ", ".join(f"{reason} {n:,}" for reason, n in counts.items() if n),
        )
    kept = orders[reasons.isna().to_numpy()].reset_index(drop=True)
    if kept.empty and len(withheld):
        raise UserError(
            f"{cfg.data.path or cfg.data.name}: the privacy rules leave none of its {len(withheld):,} "
            "customers to profile (privacy.objection_column / consent_column, the suppression list)"
        )
    return kept, dataclasses.replace(report, suppressed=counts), withheld
