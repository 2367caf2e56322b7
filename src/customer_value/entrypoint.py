"""What every job's ``main`` shares: user errors become one line on stderr and exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from customer_value.errors import UserError

T = TypeVar("T")


def run_job(job: Callable[[DictConfig], T], cfg: DictConfig, exit_on_error: bool = True) -> T | None:
    """Run ``job``; a user error prints ``error: <message>`` with no traceback and exits 1, or returns
    None when ``exit_on_error`` is false (one job of a sweep must not stop the others)."""
    try:
        return job(cfg)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "a required config value"
        message = f"{key} is required but not set (pass it on the command line, e.g. {key}=...)"
    except UserError as exc:
        message = str(exc)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if exit_on_error:
        sys.exit(1)
    return None
