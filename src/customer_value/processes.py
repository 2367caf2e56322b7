"""Which process owns a run or a temporary file, so a later job can tell what a killed job left behind
(a SIGKILL runs no cleanup) from what a job still running is using."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def current_owner() -> str:
    """``<pid>-<start>`` of this process: the start time (clock ticks since boot) makes a reused pid a
    different owner."""
    return owner_of(os.getpid())


def owner_of(pid: int) -> str:
    return f"{pid}-{_start_ticks(pid)}"


def host() -> str:
    return socket.gethostname()


def is_alive(owner: str) -> bool:
    """Whether the process named by ``owner`` (from ``current_owner``, on this host) still runs. A name
    that cannot be read counts as alive: what we cannot judge, we leave alone."""
    pid_text, _, start = owner.partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    ticks = _start_ticks(pid)
    return ticks in ("", start)  # unreadable (another user, hidepid): alive


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat``; empty where there is no procfs (then the pid alone decides)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may contain spaces: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]
