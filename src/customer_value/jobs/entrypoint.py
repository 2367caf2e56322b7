"""What every job's ``main`` shares: user errors become one line on stderr and exit status 1; SIGTERM
(a scheduler or ``kill`` stopping the job) unwinds like Ctrl-C, so runs end FAILED and temporary files go."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import threadpoolctl
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from customer_value.errors import UserError
from customer_value.telemetry import telemetry_off
from customer_value.tracking.run_logging import permission_denied

T = TypeVar("T")


STOPPED = "stopped by SIGTERM: its runs are marked FAILED, nothing was registered or written"


class Terminated(SystemExit):
    """Raised in the job by SIGTERM; exits with the shell's status for it (143)."""


# Code a SIGTERM must not interrupt: an exception raised inside an SQL store call can leave its
# transaction open, and SQLite then answers the FAILED mark that follows with "database is locked".
STORE_MODULES = (
    "sqlalchemy.",
    "sqlite3.",
    "psycopg2.",
    "mlflow.store.db.",
    "mlflow.store.tracking.sqlalchemy",
    "mlflow.store.model_registry.sqlalchemy",
)
DEFER_RETRY_S = 0.05
DEFER_LIMIT_S = 10.0  # a store call stuck for longer is interrupted anyway


def _in_store_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(STORE_MODULES):
            return True
        frame = frame.f_back
    return False


class _Terminator:
    """The SIGTERM handler: raises ``Terminated`` at once, or, inside a store call, asks again every
    ``DEFER_RETRY_S`` until the call has returned (at most ``DEFER_LIMIT_S``). A retry that arrives after
    the job has returned meets the process's own handler: the stop it was asked for, without the line."""

    def __init__(self) -> None:
        self.deferred_since: float | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if _in_store_call(frame) and now - (self.deferred_since or now) < DEFER_LIMIT_S:
            self.deferred_since = self.deferred_since or now
            retry = threading.Timer(DEFER_RETRY_S, os.kill, (os.getpid(), signum))
            retry.daemon = True
            retry.start()
            return
        raise Terminated(128 + signum)


def one_blas_thread() -> threadpoolctl.threadpool_limits:
    """OpenBLAS on one thread for the job. Its calls here are dot products and small matrices, where a
    second thread only waits: measured at 1M customers (2-core Xeon), the layers' bootstrap spent 39 ms
    per 100,000-row dot product with OpenBLAS's two threads against 0.6 ms with one, and the train's CLV
    stage took 79 s instead of 125 s. scikit-learn's OpenMP loops (k-means) keep their threads."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def run_job(job: Callable[[DictConfig], T], cfg: DictConfig, exit_on_error: bool = True) -> T | None:
    """Run ``job``; a user error prints ``error: <message>`` with no traceback and exits 1, or returns
    None when ``exit_on_error`` is false (one job of a sweep must not stop the others). SIGTERM raises
    ``Terminated`` inside the job (Python's default would end the process on the spot, runs RUNNING)."""
    telemetry_off()  # before MLflow's first call: nothing leaves the machine unasked
    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _Terminator()) if main_thread else None
    try:
        with one_blas_thread():
            return job(cfg)
    except Terminated:
        print(f"error: {STOPPED}", file=sys.stderr, flush=True)
        raise
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "a required config value"
        message = f"{key} is required but not set (pass it on the command line, e.g. {key}=...)"
    except UserError as exc:
        message = str(exc)
    except MlflowException as exc:  # the team server refused this user: one line, not a traceback
        refused = permission_denied(exc)
        if refused is None:
            raise
        message = refused
    finally:
        if main_thread:  # None: a handler not set from Python; the default is the nearest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if exit_on_error:
        sys.exit(1)
    return None
