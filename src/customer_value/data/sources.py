"""Pieces the jobs share: reading the configured data source, without the customers who may not be
profiled."""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd
from omegaconf import DictConfig

from customer_value.data.loading import DataReport, LoadingRules, load_bundled, load_transactions
from customer_value.errors import UserError
from customer_value.privacy.suppression import Suppression, suppression_from_config

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
    orders, report = load_orders(cfg.data)
    rules = suppression_from_config(cfg)
    if training and cfg.privacy.objection_scope == "outputs":
        rules = Suppression(listed=rules.listed, key=rules.key)
    return exclude_suppressed(orders, report, rules)


def exclude_suppressed(
    orders: pd.DataFrame, report: DataReport, rules: Suppression
) -> tuple[pd.DataFrame, DataReport]:
    """``orders`` without ``rules``' customers; the report still describes the file as read, plus how many
    customers each privacy reason left out (``suppressed``)."""
    kept, counts = rules.exclude(orders)
    excluded = sum(counts.values())
    if excluded:
        log.info(
            "privacy: %s customers left out (%s)",
            f"{excluded:,}",
            ", ".join(f"{reason} {n:,}" for reason, n in counts.items() if n),
        )
    return kept.reset_index(drop=True), dataclasses.replace(report, suppressed=counts)
