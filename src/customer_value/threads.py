"""Contiguous pieces of an array's rows for the threads of one step: one per available core, none smaller
than the step's break-even size (below it, starting a thread costs more than it saves)."""

from __future__ import annotations

import os


def row_slices(n_rows: int, rows_per_thread: int) -> list[slice]:
    """``n_rows`` split into at most one contiguous slice per available core, each at least
    ``rows_per_thread`` long (a single slice of everything below twice that)."""
    threads = max(1, min(len(os.sched_getaffinity(0)), n_rows // rows_per_thread))
    cuts = [n_rows * i // threads for i in range(threads + 1)]
    return [slice(cuts[i], cuts[i + 1]) for i in range(threads)]
