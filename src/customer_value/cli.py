"""The ``customer-value`` console script: ``customer-value train key=value ...`` runs the same job as
``python -m customer_value.train key=value ...`` (and likewise for the other commands)."""

from __future__ import annotations

import runpy
import sys

COMMANDS = {
    "train": "customer_value.train",
    "score": "customer_value.score",
    "server": "customer_value.jobs.server",
    "shapes": "customer_value.jobs.shape_report",
    "bench": "customer_value.bench.compare",
    "bench-bounds": "customer_value.bench.bounds",
}


def main(argv: list[str] | None = None) -> None:
    """Run the named command's module as ``__main__`` with the remaining arguments."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        sys.exit(f"usage: customer-value {{{'|'.join(COMMANDS)}}} [arguments...]")
    sys.argv = [sys.argv[0], *args[1:]]  # run_module sets argv[0] to the module's file
    runpy.run_module(COMMANDS[args[0]], run_name="__main__", alter_sys=True)
