"""What every job's ``main`` shares: user errors become one line on stderr and exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from customer_value.errors import UserError

T = TypeVar("T")


def run_job(job: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``job``; a user error prints ``error: <message>`` and exits 1 with no traceback."""
    try:
        return job(cfg)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "a required config value"
        _fail(f"{key} is required but not set (pass it on the command line, e.g. {key}=...)")
    except UserError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
