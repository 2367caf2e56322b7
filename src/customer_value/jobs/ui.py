"""``make ui``: the MLflow UI for the local store, announced with the address that opens the CLV
experiment's runs in the model-training view (``ui_links``), not the GenAI overview MLflow opens on."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from customer_value.telemetry import telemetry_off
from customer_value.tracking import ui_links

DATABASE = Path("mlruns/mlflow.db")
EXPERIMENT = "customer-clv"


def landing_url(base: str, database: Path = DATABASE, experiment: str = EXPERIMENT) -> str:
    """The CLV experiment's runs table, or the experiments list while the store has no such experiment."""
    if database.exists():
        from mlflow.tracking import MlflowClient

        found = MlflowClient(f"sqlite:///{database.resolve()}").get_experiment_by_name(experiment)
        if found is not None:
            return ui_links.experiment_url(base, found.experiment_id)
    return f"{base}/#/experiments?{ui_links.ML_VIEW}"


def main(argv: list[str] | None = None) -> None:
    description = "make ui: the MLflow UI for the local store, opening on the CLV runs"
    parser = argparse.ArgumentParser(prog="python -m customer_value.jobs.ui", description=description)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--database", type=Path, default=DATABASE)
    args = parser.parse_args(argv)
    url = landing_url(f"http://127.0.0.1:{args.port}", args.database)
    print(f"MLflow UI: {url}", flush=True)
    telemetry_off()  # inherited by the UI server through execv
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{args.database}", "--host", "127.0.0.1"]
    os.execv(command[0], [*command, "--port", str(args.port), "--workers", "1"])


if __name__ == "__main__":
    main()
