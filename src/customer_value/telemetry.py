"""Nothing leaves the machine unasked: MLflow's usage telemetry (client and UI server) is on by default;
the project's jobs, ``make ui``, ``make server`` and ``make serve`` run with it off.

A user who wants it sets ``MLFLOW_DISABLE_TELEMETRY=false`` (or ``DO_NOT_TRACK=false``): a choice made in
the environment is never overridden.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def telemetry_off(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Turn MLflow's telemetry off in ``environ`` (default: this process's, inherited by its children)
    unless the user already chose either way; returns ``environ``."""
    environ = os.environ if environ is None else environ
    if not any(name in environ for name in OFF):
        environ.update(OFF)
    return environ
