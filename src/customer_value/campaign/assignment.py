"""Deterministic random arms: each customer's position in [0, 1) is HMAC-SHA256(key, customer id), so a
rerun gives the same arms and nobody without the key can predict them.

The global holdout uses one standing key for every campaign (the same customers are held back from all of
them, so the long-run effect of marketing can be measured); each campaign's treatment / control split
uses that campaign's own key (derived from the secret and its id), independent of the holdout's.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

TREATMENT = "treatment"
CONTROL = "control"
HOLDOUT = "global_holdout"
SCALE = float(2**64)


def positions(customer_ids: pd.Series, key: bytes) -> np.ndarray:
    """Each id's keyed-hash position in [0, 1): the first 8 bytes of HMAC-SHA256(key, id) / 2**64."""
    values = np.empty(len(customer_ids), dtype="float64")
    for row, customer in enumerate(customer_ids.astype(str)):
        digest = hmac.new(key, customer.encode(), hashlib.sha256).digest()
        values[row] = int.from_bytes(digest[:8], "big") / SCALE
    return values


def assign_arms(
    customer_ids: pd.Series,
    campaign_key: bytes,
    holdout_key: bytes,
    control_share: float,
    global_holdout_share: float,
) -> pd.Series:
    """``global_holdout`` for the standing holdout's customers, else ``control`` for a ``control_share`` of
    the rest and ``treatment`` for the others (same index as ``customer_ids``)."""
    held = positions(customer_ids, holdout_key) < global_holdout_share
    control = positions(customer_ids, campaign_key) < control_share
    arms = np.where(held, HOLDOUT, np.where(control, CONTROL, TREATMENT))
    return pd.Series(arms, index=customer_ids.index, name="arm")
