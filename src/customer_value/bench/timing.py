"""How ``bench`` measures: wall-clock timing, best-of-N, memory pre-touching, the machine it ran on, and
the relative difference used by every agreement check."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def timed(work: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def timed_with_peak(work: Callable[[], T]) -> tuple[T, float, float]:
    """The result, the seconds and the peak resident memory (GiB) the work added over what the process
    held when it started (VmRSS sampled every 10 ms; the process's own VmHWM cannot be reset)."""
    start_kib = _rss_kib()
    peak = [start_kib]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib())
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result, seconds = timed(work)
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_kib())
    return result, seconds, (peak[0] - start_kib) / 2**20


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def best_of(repeats: int, work: Callable[[], T]) -> tuple[T, float]:
    """The result and the fastest of ``repeats`` runs (timeit's convention for short, repeatable steps)."""
    runs = [timed(work) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def pretouch_memory(gib: float) -> float:
    """Write to ``gib`` GiB once and free it; returns the seconds it took.

    These machines are VMs whose memory the host backs lazily: the first write to each page since boot
    costs a host fault, which made 12M-row array steps 5-10x slower on their first run than on their
    second (measured: a packed sort step 0.60 s cold, 0.11 s after). Touching the memory once before any
    timing puts both sides of every comparison on equal, already-backed memory.
    """
    start = time.perf_counter()
    blocks = [np.ones(1 << 25) for _ in range(int(gib * 4))]  # 256 MiB each
    del blocks
    return time.perf_counter() - start


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    scale = np.maximum(np.abs(a), np.abs(b))
    return float(
        np.max(np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1.0), 0.0), initial=0.0)
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{memory:.0f}",
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{name} {version(name)}"
            for name in ("lifetimes", "scikit-learn", "pandas", "numpy", "pyarrow", "mlflow", "duckdb")
        ),
    }
