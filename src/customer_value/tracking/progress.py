"""Progress a person can follow: each long step of a job logs when it starts and when it ends, with its
duration, and the active run records the duration as ``time.<name>_s`` (compare runs in the UI). Freed
memory is given back when a step starts and when it ends (``memory.release``), so a step's peak starts
from what is still held, not from the last one's garbage."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import mlflow

from customer_value import memory

log = logging.getLogger("customer_value.progress")


@contextlib.contextmanager
def step(name: str, label: str, durations: dict[str, float] | None = None) -> Iterator[None]:
    """``label ...`` now, ``label: done in N s`` at the end (nothing more if the step fails: the job's
    error says why); the run, if one is active, gets the metric ``time.<name>_s``. ``durations``: for a
    step in a thread of its own (MLflow's active run is the main thread's), where to put that metric
    for the caller to log."""
    memory.release()  # what the work before it left behind
    log.info("%s ...", label)
    start = time.perf_counter()
    yield
    memory.release()
    seconds = time.perf_counter() - start
    log.info("%s: done in %.1f s", label, seconds)
    if durations is not None:
        durations[f"time.{name}_s"] = seconds
    elif mlflow.active_run() is not None:
        mlflow.log_metric(f"time.{name}_s", seconds)


def counted(index: int, total: int, label: str) -> None:
    """One line per item of a counted loop (``label 3/12``): plain text, readable in a CI log. The last
    item's freed memory is given back first (items are windows and refits of a million customers)."""
    memory.release()
    log.info("%s %d/%d", label, index, total)
