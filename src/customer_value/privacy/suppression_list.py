"""The suppression list: customers who asked to be forgotten (or objected through a request rather than
the customer file), kept as keyed hashes with why and when, never as ids.

A CSV (``id_hash,reason,added,key_id``), rewritten whole aside and renamed on every change (a crash leaves
the old list or the new one) with mode 0600; ``key_id`` is the fingerprint of the key each hash was made
with, so a job run with another key stops instead of letting those customers back in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from customer_value.errors import DataError, UserError
from customer_value.privacy.hashing import key_id

COLUMNS = ["id_hash", "reason", "added", "key_id"]
REASONS = ("erasure", "objection")


@dataclass(frozen=True)
class SuppressionList:
    path: Path
    entries: pd.DataFrame  # COLUMNS, one row per hash

    @classmethod
    def read(cls, path: str | Path) -> SuppressionList:
        path = Path(path)
        if not path.exists():
            return cls(path, pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS}))
        try:
            entries = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a suppression list ({type(exc).__name__})") from None
        missing = [c for c in COLUMNS if c not in entries.columns]
        if missing:
            raise DataError(f"{path}: not a suppression list (columns {missing} missing)")
        return cls(path, entries[COLUMNS])

    def __len__(self) -> int:
        return len(self.entries)

    def check_key(self, key: bytes) -> None:
        """Every entry was hashed with ``key``: else one line (a swapped key would let them back in)."""
        others = int((self.entries["key_id"] != key_id(key)).sum())
        if others:
            raise UserError(
                f"{self.path}: {others:,} of {len(self):,} entries were hashed with another privacy key than "
                "this one: restore the key they were made with (PRIVACY_KEY or privacy.key_file)"
            )

    def hashes(self) -> set[str]:
        return set(self.entries["id_hash"])

    def with_added(
        self, hashes: list[str], reason: str, added: str, key: bytes
    ) -> tuple[SuppressionList, int]:
        """The list with ``hashes`` added (those already listed keep their first entry); returns it and how
        many were new."""
        if reason not in REASONS:
            raise UserError(f"reason '{reason}' must be one of {list(REASONS)}")
        known = self.hashes()
        new = list(dict.fromkeys(h for h in hashes if h not in known))
        rows = pd.DataFrame({"id_hash": new, "reason": reason, "added": added, "key_id": key_id(key)})
        return SuppressionList(self.path, pd.concat([self.entries, rows], ignore_index=True)), len(new)

    @staticmethod
    def stamp(path: str | Path) -> tuple[int, int] | None:
        """When and how big the list file is (None: no list): a job compares it before it commits."""
        try:
            status = Path(path).stat()
        except FileNotFoundError:
            return None
        return status.st_mtime_ns, status.st_size

    @staticmethod
    @contextlib.contextmanager
    def locked(path: str | Path) -> Iterator[None]:
        """Hold the list's lock (``<list>.lock``, flock) for a read-modify-write: two forgets at once
        would otherwise each write the list as they read it, and one request would be lost."""
        lock_path = Path(path).with_name(Path(path).name + ".lock")
        lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self) -> None:
        """Rewrite the list aside (0600) and rename it into place."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(descriptor, "w", newline="") as handle:
                self.entries.to_csv(handle, index=False)
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
