"""Which process owns a run or a temporary file, so a later job can tell what a killed job left behind
(a SIGKILL runs no cleanup) from what a job still running is using.

An owner is ``<machine>-<boot>-<pid>-<start>``: ``machine`` tells apart hosts and containers that share a
store or an output folder (a pid means nothing elsewhere), ``boot`` says which boot of this machine ran it
(a reboot ends every process), ``start`` (clock ticks since boot) tells a reused pid from the process that
held it. Only owners of this machine are ever judged ended.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from functools import cache
from pathlib import Path

OWNER_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{8}-\d+-\d*"


def current_owner() -> str:
    """The owner name of this process."""
    return owner_of(os.getpid())


def owner_of(pid: int) -> str:
    """The owner name of a process of this machine, while it runs."""
    return f"{machine()}-{boot()}-{pid}-{_start_ticks(pid)}"


def host() -> str:
    """The host name, for people reading a run's tags."""
    return socket.gethostname()


@cache
def machine() -> str:
    """Eight hex digits for this host name and pid namespace: two containers on one kernel differ."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return _digest(socket.gethostname(), namespace)


@cache
def boot() -> str:
    """Eight hex digits for this boot of the kernel (constant where there is no procfs)."""
    return _digest(_read("/proc/sys/kernel/random/boot_id"))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


def is_alive(owner: str) -> bool:
    """False only for an owner of this machine whose process has ended; anything that cannot be judged
    (another machine, a malformed name, another user's process) counts as alive and is left alone."""
    if not re.fullmatch(OWNER_PATTERN, owner):
        return True
    owner_machine, owner_boot, pid_text, start = owner.split("-")
    pid = int(pid_text)
    if owner_machine != machine() or pid <= 0:
        return True
    if owner_boot != boot():
        return False  # this machine has rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    ticks = _start_ticks(pid)
    return ticks in ("", start)  # unreadable (hidepid, no procfs): alive


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat``; empty where there is no procfs (then the pid alone decides)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    # The command name (field 2) is in parentheses and may contain spaces: split after its closing one.
    return stat[stat.rindex(")") + 2 :].split()[19]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
