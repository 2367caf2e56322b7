"""Links into the MLflow UI that open on the model-training view.

MLflow 3.17's UI opens an experiment on its GenAI overview (traces, token usage) unless the address asks
for the model-training view (``?workflowType=machine_learning``): then it lands on the runs table with
runs, models and the registry in its navigation. Every link the project prints or documents is built here.
"""

from __future__ import annotations

from urllib.parse import quote

from customer_value.tracking.run_logging import is_local_store

ML_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # make ui's default address (UI_PORT)


def ui_base(tracking_uri: str, local_ui: str = LOCAL_UI) -> str:
    """The UI's address: the tracking server itself, or ``make ui``'s for a local store."""
    return local_ui if is_local_store(tracking_uri) else tracking_uri.rstrip("/")


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}?{ML_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def model_version_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}?{ML_VIEW}"
