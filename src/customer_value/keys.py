"""The secrets behind the keyed hashes (campaign arms and the global holdout; the privacy suppression list
and pseudonyms): from the environment or a 0600 key file created on first use, never in a config, a log
or git."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from customer_value.errors import UserError

KEY_BYTES = 32


def secret_key(env_var: str, key_file: str | Path) -> bytes:
    """``env_var``'s value when set, else the key in ``key_file`` (created 0600 when missing)."""
    from_env = os.environ.get(env_var)
    if from_env:
        return from_env.encode()
    path = Path(key_file)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written whole aside, then linked into place: never seen empty, and a job that races this one
        # keeps whichever key got there first (os.link fails on an existing file).
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    return _read(path)


def _read(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise UserError(
            f"key file {path}: readable by others (mode {path.stat().st_mode & 0o777:o}); chmod 600 it"
        )
    key = path.read_text().strip()
    if not key:
        raise UserError(f"key file {path}: empty")
    return key.encode()


def derived_key(key: bytes, purpose: str) -> bytes:
    """A key for one purpose (a campaign's salt, the global holdout) from the secret: HMAC-SHA256."""
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()
