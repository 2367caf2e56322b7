"""Keyed hashes of customer ids: the suppression list's entries and the pseudonyms of shared extracts.

HMAC-SHA256 under the privacy key (``PRIVACY_KEY``, else a 0600 key file), one derived key per purpose, so
a pseudonym in an agency's list cannot be matched against the suppression list and neither can be
reversed or recomputed without the key. Losing the key makes the suppression list unreadable: it is
refused, never silently replaced (see ``privacy_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from customer_value.errors import UserError
from customer_value.keys import derived_key, secret_key

KEY_ENV = "PRIVACY_KEY"
PSEUDONYM_PREFIX = "ps_"
PSEUDONYM_HEX = 32  # 128 bits: no collision among any customer base this project will see


def privacy_key(key_file: str | Path, list_entries: int = 0) -> bytes:
    """The privacy key; created on first use only while no list entry was hashed with an earlier one."""
    path = Path(key_file)
    if list_entries and not path.exists() and not os.environ.get(KEY_ENV):
        raise UserError(
            f"privacy key {path} is missing but the suppression list holds {list_entries:,} keyed hashes "
            f"made with it: restore the key file (or set {KEY_ENV}); a new key would let them back in"
        )
    return secret_key(KEY_ENV, path)


def key_id(key: bytes) -> str:
    """A short public fingerprint of the key, kept beside each list entry to catch a swapped key."""
    return hmac.new(key, b"customer-value key id", hashlib.sha256).hexdigest()[:12]


def _hashes(ids: Iterable[object], key: bytes, length: int) -> list[str]:
    base = hmac.new(key, digestmod=hashlib.sha256)  # the keyed state, copied per id (half the cost)
    out = []
    for customer in ids:
        mac = base.copy()
        mac.update(str(customer).encode())
        out.append(mac.hexdigest()[:length])
    return out


def suppression_hashes(ids: Iterable[object], key: bytes) -> list[str]:
    """The suppression list's form of each id (64 hex characters)."""
    return _hashes(ids, derived_key(key, "suppression"), 64)


def is_pseudonymised(ids: pd.Series) -> bool:
    """Whether an output's ids are all pseudonyms (``score.pseudonymise``); an empty one is not."""
    return bool(len(ids)) and bool(ids.astype(str).str.startswith(PSEUDONYM_PREFIX).all())


def pseudonyms(ids: Iterable[object], key: bytes) -> list[str]:
    """The id written in pseudonymised outputs: ``ps_`` + 32 hex characters."""
    return [PSEUDONYM_PREFIX + h for h in _hashes(ids, derived_key(key, "pseudonym"), PSEUDONYM_HEX)]
