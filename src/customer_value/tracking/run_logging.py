"""MLflow set-up and logging helpers shared by the training and scoring jobs."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from customer_value.errors import UserError
from customer_value.tracking import processes
from customer_value.tracking.team_auth import use_credentials_file

log = logging.getLogger(__name__)

# MLflow's HTTP client retries a dead server for minutes by default; fail within seconds instead.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # MLflow prints its own run links, which open on the UI's GenAI overview; train logs ui_links' instead.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def configure(tracking_uri: str, registry_uri: str | None = None, credentials_file: str | None = None) -> str:
    """Point MLflow at the tracking store, ready to use: a relative SQLite path is made absolute, its folder
    created and the store created or migrated under a file lock (two jobs creating one SQLite store at
    once corrupt it); an HTTP server that does not answer, or refuses the login (``credentials_file``,
    else MLflow's environment variables or ~/.mlflow/credentials), is a one-line UserError within seconds."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = absolute_sqlite_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri or uri)
    if uri.startswith("sqlite:///"):
        _create_sqlite_store(Path(uri[len("sqlite:///") :]))
    elif uri.startswith(("http://", "https://")):
        require_server(uri)
        use_credentials_file(credentials_file)
        require_login(uri)
    return uri


def require_login(uri: str) -> None:
    """The server accepts this process's login (or needs none): one authenticated request, no retries."""
    from mlflow.utils.credentials import read_mlflow_creds

    login = read_mlflow_creds()
    auth = (login.username, login.password) if login.username and login.password else None
    try:
        response = requests.get(
            uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=auth,
            timeout=float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]),
        )
    except requests.RequestException as exc:
        raise UserError(f"tracking server {uri}: {type(exc).__name__} on the first request") from None
    if response.status_code == 401 and auth is None:
        raise UserError(
            f"tracking server {uri} requires a login: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or tracking.credentials_file=<file from make server-user>"
        )
    if response.status_code == 401:
        raise UserError(f"tracking server {uri} refused the login of user {login.username!r} (HTTP 401)")


def permission_denied(exc: Exception) -> str | None:
    """A one-line message for an MLflow call the server refused (HTTP 401 / 403), else None."""
    code = getattr(exc, "error_code", "")
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    from mlflow.utils.credentials import read_mlflow_creds

    user = read_mlflow_creds().username or "anonymous"
    what = "has no permission for" if code == "PERMISSION_DENIED" else "is not logged in for"
    endpoint = re.search(r"endpoint (\S+)", str(exc))
    request = f" ({endpoint.group(1)})" if endpoint else ""
    return (
        f"tracking server {mlflow.get_tracking_uri()}: user {user!r} {what} this{request}; "
        "ask an admin for the role it needs (make server-user)"
    )


def _create_sqlite_store(database: Path) -> None:
    """Create (or migrate) the store's tables while holding ``<database>.lock``; later openers find them."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database.with_name(database.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient().search_experiments(max_results=1)  # the first client creates the tables
    except OSError as exc:
        raise UserError(f"tracking store {database}: cannot be opened for writing ({exc.strerror})") from None
    except mlflow.exceptions.MlflowException as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"tracking store {database}: {first_line[:300]}") from None


def require_server(uri: str, attempts: int = 3, timeout_s: float = 5.0) -> None:
    """The tracking server answers its health check, or a UserError after ``attempts`` tries."""
    reason = "no answer"
    for attempt in range(attempts):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            if response.ok:
                return
            reason = f"health check answered HTTP {response.status_code}"
        except requests.RequestException as exc:
            reason = type(exc).__name__
        if attempt < attempts - 1:
            time.sleep(1.0)
    raise UserError(
        f"tracking server {uri} is unreachable ({reason} after {attempts} tries); start it (make server) "
        "or set tracking.uri"
    )


def absolute_sqlite_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    path = Path(uri[len(prefix) :]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def ensure_experiment(name: str, artifact_root: str | None) -> str:
    """Experiment id by name, created with artifacts under ``artifact_root/<name>`` for a local store."""
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if artifact_root and is_local_store(mlflow.get_tracking_uri()):
        location = (Path(artifact_root).resolve() / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def run(experiment: str, artifact_root: str | None, run_name: str, tags: Mapping[str, str]) -> Iterator[Any]:
    """A new MLflow run that ends FAILED when anything inside raises (including KeyboardInterrupt)."""
    experiment_id = ensure_experiment(experiment, artifact_root)
    fail_abandoned_runs(experiment_id)
    with _finished_or_failed():
        yield mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags) | owner_tags())


def owner_tags() -> dict[str, str]:
    """Tags naming the process that holds a run open (see ``fail_abandoned_runs``)."""
    return {"process.host": processes.host(), "process.owner": processes.current_owner()}


def fail_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED this experiment's RUNNING runs whose process on this machine has ended: a job killed
    with SIGKILL (or by the OOM killer) cannot close its runs, which would otherwise stay RUNNING for ever.
    Runs of other machines, of live processes or without an owner tag are left alone. Best effort: a store
    that refuses (permissions, read-only) leaves them as they are. Returns the run ids marked."""
    client = MlflowClient()
    marked: list[str] = []
    try:
        running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        for found in running:
            owner = found.data.tags.get("process.owner", "")
            if processes.is_alive(owner):
                continue
            run_id = found.info.run_id
            if client.get_run(run_id).info.status != "RUNNING":  # closed by its owner just before it ended
                continue
            pid = owner.split("-")[2]
            client.set_tag(run_id, "failed.reason", f"process {pid} ended without closing the run")
            client.set_terminated(run_id, status="FAILED")
            marked.append(run_id)
            log.warning("run %s was left RUNNING by ended process %s: marked FAILED", run_id, pid)
    except mlflow.exceptions.MlflowException as exc:
        log.warning(
            "could not check for runs left RUNNING by killed jobs: %s", str(exc).splitlines()[0][:200]
        )
    return marked


@contextmanager
def fail_run_on_error(run_id: str) -> Iterator[None]:
    """Work on a finished run (e.g. registering its model) that marks it FAILED if anything raises."""
    try:
        yield
    except BaseException:
        MlflowClient().set_terminated(run_id, status="FAILED")
        raise


@contextmanager
def _finished_or_failed() -> Iterator[None]:
    try:
        yield
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping to dotted keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params({k: ("null" if v is None else str(v))[:6000] for k, v in params.items()})


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric key: a design column's '=' (channel=email) becomes ':', and any
    other character MLflow refuses (a category's own, e.g. the parentheses of '(missing)') becomes '_'."""
    return re.sub(r"[^\w.\- :/]", "_", name.replace("=", ":"))


def log_metrics(metrics: Mapping[str, float], prefix: str = "") -> None:
    """NaN dropped; keys made acceptable to MLflow (``metric_key``)."""
    mlflow.log_metrics({metric_key(f"{prefix}{k}"): float(v) for k, v in metrics.items() if v == v})


# tracking.plots of the job running: false = no figure drawn (a train's ~12 take ~3 s on 800 customers).
_FIGURES_ON: ContextVar[bool] = ContextVar("figures_on", default=True)


@contextmanager
def figures(enabled: bool) -> Iterator[None]:
    """The job's ``tracking.plots`` for every figure logged or embedded inside this block."""
    token = _FIGURES_ON.set(enabled)
    try:
        yield
    finally:
        _FIGURES_ON.reset(token)


def figures_on() -> bool:
    return _FIGURES_ON.get()


def log_figure(draw: Callable[[], Figure], artifact_file: str) -> None:
    """``draw()``'s figure logged as a PNG; not drawn at all when the job turned figures off."""
    if figures_on():
        mlflow.log_figure(draw(), artifact_file)


def log_png(png: bytes, artifact_file: str) -> None:
    """An image already rendered (``segment_report.figure_png``), logged without drawing it again."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(artifact_file).name
        path.write_bytes(png)
        mlflow.log_artifact(str(path), str(Path(artifact_file).parent))


def log_table(table: pd.DataFrame, artifact_file: str) -> None:
    mlflow.log_text(table.to_csv(float_format="%.6g"), artifact_file)


def log_json(payload: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(payload, indent=2, default=str), artifact_file)


def git_state(cwd: str | Path = Path(__file__).parent) -> dict[str, str]:
    """Tags: the code's commit and whether tracked files had uncommitted changes (``unknown`` outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"mlflow.source.git.commit": "unknown", "git_dirty": "unknown"}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(bool(dirty)).lower()}
