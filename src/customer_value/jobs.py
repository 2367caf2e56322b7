"""Pieces the train and score jobs share: reading the configured data source."""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from customer_value.data import DataReport, load_bundled, load_transactions
from customer_value.errors import UserError


def load_orders(data: DictConfig) -> tuple[pd.DataFrame, DataReport]:
    """Orders and data report for the ``data`` config node (bundled dataset or a file)."""
    if data.bundled:
        return load_bundled(data.bundled, keep_zero_amounts=data.keep_zero_amounts)
    if not data.path:
        raise UserError("data.path is required with data=file (e.g. data.path=orders.parquet)")
    return load_transactions(
        data.path,
        customer_id=data.columns.customer_id,
        timestamp=data.columns.timestamp,
        amount=data.columns.amount,
        timestamp_format=data.timestamp_format,
        keep_zero_amounts=data.keep_zero_amounts,
        drop_duplicate_rows=data.drop_duplicate_rows,
        max_bad_row_share=data.max_bad_row_share,
    )
