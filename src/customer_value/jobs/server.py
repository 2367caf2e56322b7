"""Team tracking server: ``mlflow server`` on PostgreSQL with a served artifact root, in the background.

``python -m customer_value.jobs.server start|stop|status`` (what ``make server`` / ``make server-stop`` run).
Without ``DATABASE_URL`` a private PostgreSQL cluster (``postgres_cluster``) is created on first start and
started; SQLite is fine for one writer, but parallel sweeps and a team want a real database. Everything
the server owns (state, logs, artifacts, cluster) lives in one git-ignored folder (default ``.server/``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from customer_value.errors import ServerError, UserError
from customer_value.jobs.postgres_cluster import (
    HOST,
    cluster_dir,
    ensure_cluster,
    listening_port,
    port_free_or_fail,
    redact,
    sqlalchemy_url,
    stop_cluster,
    write_private,
)

DEFAULT_FOLDER = Path(".server")
DEFAULT_PORT = 5050
DEFAULT_PG_PORT = 55432
STATE_FILE = "server.json"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


@dataclass
class ServerState:
    """What ``stop`` needs to find everything ``start`` launched (kept in ``<folder>/server.json``)."""

    tracking_uri: str
    mlflow_pid: int
    port: int
    artifacts: str
    backend_store_uri: str
    pgdata: str | None  # None: an external database (DATABASE_URL), not ours to stop
    pg_port: int | None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphaned server may never be reaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_our_mlflow(pid: int) -> bool:
    """Guard against a recycled PID: only signal a process whose command line is an mlflow server."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)
    return b"mlflow" in command and b"server" in command


def _read_state(folder: Path) -> ServerState | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    return ServerState(**json.loads(path.read_text()))


def start(
    folder: Path = DEFAULT_FOLDER,
    port: int = DEFAULT_PORT,
    pg_port: int = DEFAULT_PG_PORT,
    database_url: str | None = None,
    workers: int = 2,
) -> ServerState:
    """Start PostgreSQL (unless ``database_url``) and ``mlflow server`` in the background; return once
    ``/health`` answers. Starting a running server is a no-op."""
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()  # not private itself: user postgres may need to enter it; secrets are 0600
    state = _read_state(folder)
    if state is not None:
        if _alive(state.mlflow_pid) and _healthy(state.tracking_uri):
            return state
        stop(folder)  # a stale state file: clear what is left before starting afresh
    port_free_or_fail(port, "the MLflow server")
    pgdata = None
    if database_url:
        backend = sqlalchemy_url(database_url)
    else:
        pgdata, backend = ensure_cluster(folder, pg_port)
        backend = sqlalchemy_url(backend)
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        # Local only: refuse other Host headers (DNS rebinding) and cross-site browser calls.
        "--allowed-hosts",
        f"{HOST},{HOST}:{port},localhost,localhost:{port}",
        "--cors-allowed-origins",
        f"http://{HOST}:{port},http://localhost:{port}",
    ]
    with open(folder / "mlflow.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )
    state = ServerState(
        tracking_uri=f"http://{HOST}:{port}",
        mlflow_pid=process.pid,
        port=port,
        artifacts=str(artifacts),
        backend_store_uri=backend,
        pgdata=None if pgdata is None else str(pgdata),
        pg_port=None if pgdata is None else listening_port(pgdata, pg_port),
    )
    write_private(folder / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(state.tracking_uri):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(folder)
            tail = (folder / "mlflow.log").read_text(errors="replace").strip().splitlines()[-1:]
            reason = (
                f"exited with status {process.returncode}" if process.returncode is not None else "timed out"
            )
            raise ServerError(
                f"mlflow server {reason} before answering /health; see {folder / 'mlflow.log'}"
                + (f" (last line: {tail[0][:200]})" if tail else "")
            )
        time.sleep(0.5)
    return state


def stop(folder: Path = DEFAULT_FOLDER) -> list[str]:
    """Stop the MLflow server and, if we created it, the PostgreSQL cluster; returns what was stopped."""
    folder = folder.resolve()
    stopped: list[str] = []
    state = _read_state(folder)
    if state is not None and _alive(state.mlflow_pid) and _is_our_mlflow(state.mlflow_pid):
        _end_process_group(state.mlflow_pid)
        stopped.append(f"mlflow server (pid {state.mlflow_pid})")
    pgdata = None
    if state is not None and state.pgdata:
        pgdata = Path(state.pgdata)
    elif state is None and (folder / "postgres.path").exists():
        pgdata = cluster_dir(folder) / "data"
    if pgdata is not None and stop_cluster(pgdata):
        stopped.append(f"PostgreSQL ({pgdata})")
    (folder / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _end_process_group(pid: int) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m customer_value.jobs.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="state, logs, artifacts, cluster")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="MLflow server port on 127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="PostgreSQL port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per outcome; a user error is ``error: <message>`` and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            database_url = os.environ.get("DATABASE_URL") or None
            state = start(args.folder, args.port, args.pg_port, database_url, args.workers)
            where = redact(state.backend_store_uri)
            print(f"MLflow tracking server on {state.tracking_uri} (backend {where})")
            print(f"artifacts: {state.artifacts}")
            print(f"use it with: MLFLOW_TRACKING_URI={state.tracking_uri} make train")
        elif args.command == "stop":
            stopped = stop(args.folder)
            print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        else:
            state = _read_state(args.folder.resolve())
            if state is None or not _alive(state.mlflow_pid):
                print("not running")
                sys.exit(3)
            print(f"running: {state.tracking_uri} (pid {state.mlflow_pid})")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
