"""Give memory a finished step freed back to the operating system, so the next step's peak does not stack
on the last one's garbage.

Measured at 1M customers (11.3M orders): reading the Parquet log left 380 MB in Arrow's allocator pool
after the table became pandas columns, and the whole load left the process at 950 MB RSS for 230 MB of
orders; ``release()`` brought it to 500 MB. Neither allocator returns such memory by itself soon enough:
Arrow's pool keeps freed blocks for reuse, and glibc's heap keeps freed small and mid-sized blocks
(``malloc_trim`` hands back the free pages). Both calls are cheap (milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``; None on a C library without it (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release() -> None:
    """Return the free memory held by Arrow's pool and glibc's heap to the operating system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)
