"""The links the project prints open the MLflow UI on the model-training view (issue 27): checked in a real
headless Chromium against the real UI (`make ui`'s entry point) on a trained store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from browser import render_url
from customer_value import telemetry
from customer_value.tracking import ui_links


def test_every_link_asks_for_the_model_training_view() -> None:
    base = ui_links.ui_base("http://team:5050/")
    assert base == "http://team:5050"
    assert ui_links.ui_base("sqlite:///mlruns/mlflow.db") == ui_links.LOCAL_UI
    assert (
        ui_links.experiment_url(base, "3") == "http://team:5050/#/experiments/3?workflowType=machine_learning"
    )
    assert ui_links.run_url(base, "3", "ab") == (
        "http://team:5050/#/experiments/3/runs/ab?workflowType=machine_learning"
    )
    assert ui_links.model_version_url(base, "customer clv", "2") == (
        "http://team:5050/#/models/customer%20clv/versions/2?workflowType=machine_learning"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_ui_opens_on_the_clv_runs_and_the_printed_links_land(trained_store, tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    shutil.copyfile(trained_store.database, database)
    database.chmod(0o644)
    port = _free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "customer_value.jobs.ui", "--port", str(port), "--database", str(database)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k not in telemetry.OFF},  # as a user's shell has it
    )
    try:
        printed = ui.stdout.readline().strip()
        # This copy for the registry too (MlflowClient's default registry is the process-wide one).
        client = MlflowClient(tracking_uri=f"sqlite:///{database}", registry_uri=f"sqlite:///{database}")
        experiment = client.get_experiment_by_name("customer-clv")
        (run,) = client.search_runs([experiment.experiment_id])
        base = f"http://127.0.0.1:{port}"
        assert printed == f"MLflow UI: {ui_links.experiment_url(base, experiment.experiment_id)}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        # The UI server (ui.py exec'd into it) runs with MLflow's telemetry off.
        assert b"\0MLFLOW_DISABLE_TELEMETRY=true\0" in b"\0" + Path(f"/proc/{ui.pid}/environ").read_bytes()
        landing = render_url(printed.removeprefix("MLflow UI: "), tmp_path)
        # The runs table of the CLV experiment, with the model-training navigation; not the GenAI overview.
        assert landing.title.startswith("Runs - "), landing.title
        assert run.info.run_name in landing.text and "| Model registry |" in landing.text
        assert "Token Usage" not in landing.text
        version = client.get_model_version_by_alias("customer-clv", "champion").version
        page = render_url(ui_links.model_version_url(base, "customer-clv", version), tmp_path)
        assert page.title.startswith(f"customer-clv v{version}"), page.title
        assert "Aliases" in page.text and "champion" in page.text, page.text[:3000]
    finally:
        ui.terminate()
        ui.wait(timeout=30)
