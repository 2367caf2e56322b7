"""Pieces the train and score jobs share: reading the configured data source."""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from customer_value.data.loading import DataReport, LoadingRules, load_bundled, load_transactions
from customer_value.errors import UserError


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
