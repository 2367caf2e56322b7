"""Contiguous pieces of an array's rows for the threads of one step: one per available core, none smaller
than the step's break-even size (below it, starting a thread costs more than it saves), and a single piece
in a thread that runs beside others doing the same (``side_by_side``)."""

from __future__ import annotations

import os
import threading

_SIDE_BY_SIDE = threading.local()


def side_by_side() -> None:
    """A pool's ``initializer`` for threads that already fill the cores with the same step (the covariate
    covariance's gradients): the steps in them then take their rows in one piece."""
    _SIDE_BY_SIDE.on = True


def row_slices(n_rows: int, rows_per_thread: int) -> list[slice]:
    """``n_rows`` split into at most one contiguous slice per available core, each at least
    ``rows_per_thread`` long (a single slice of everything below twice that, or in a ``side_by_side``
    thread)."""
    if getattr(_SIDE_BY_SIDE, "on", False):
        return [slice(0, n_rows)]
    threads = max(1, min(len(os.sched_getaffinity(0)), n_rows // rows_per_thread))
    cuts = [n_rows * i // threads for i in range(threads + 1)]
    return [slice(cuts[i], cuts[i + 1]) for i in range(threads)]
