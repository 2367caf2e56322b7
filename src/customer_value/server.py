"""Team tracking server: ``mlflow server`` on PostgreSQL with a served artifact root, in the background.

``python -m customer_value.server start|stop|status`` (what ``make server`` / ``make server-stop`` run).
Without ``DATABASE_URL`` a private PostgreSQL cluster is created on first start (``initdb``) and started
with ``pg_ctl``, listening on 127.0.0.1 only with a generated password; SQLite is fine for one writer, but
parallel sweeps and a team want a real database. Everything the server owns (state, logs, artifacts,
cluster) lives in one git-ignored folder (default ``.server/``).

PostgreSQL refuses to run as root, so as root ``initdb`` and ``pg_ctl`` run as user ``postgres``
(``runuser``) and the cluster folder belongs to that user. When ``postgres`` cannot reach the folder
(e.g. inside a private home or temporary directory) the cluster goes to ``<tmp>/customer-value-pg-<hash>``
instead and the state file says where.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from customer_value.errors import UserError

HOST = "127.0.0.1"
DEFAULT_FOLDER = Path(".server")
DEFAULT_PORT = 5050
DEFAULT_PG_PORT = 55432
DATABASE = "mlflow"
PG_USER = "postgres"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
STATE_FILE = "server.json"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class ServerError(UserError):
    """The server cannot be started or stopped; the message says what to fix."""


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


def find_pg_binary(name: str, search_glob: str = PG_BIN_GLOB) -> Path:
    """``name`` on PATH, else in the newest ``/usr/lib/postgresql/<version>/bin`` (Debian: off PATH)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(
        (p / name for p in Path("/").glob(search_glob.lstrip("/")) if (p / name).is_file()),
        key=lambda p: _version_key(p.parent.parent.name),
        reverse=True,
    )
    if candidates:
        return candidates[0]
    raise ServerError(
        f"PostgreSQL's {name} is neither on PATH nor in {search_glob}: install PostgreSQL "
        "(apt-get install postgresql) or set DATABASE_URL to an existing database"
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _as_pg_user(command: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run ``command`` as user postgres."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerError(f"running as root but there is no '{PG_USER}' user to run PostgreSQL as") from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", PG_USER, "--", *command]
    return ["su", PG_USER, "-s", "/bin/sh", "-c", " ".join(_quote(c) for c in command)]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def pg_user_can_reach(folder: Path) -> bool:
    """Whether user postgres can enter ``folder`` (every parent must be searchable for it)."""
    if os.geteuid() != 0:
        return True
    check = subprocess.run(_as_pg_user(["test", "-x", str(folder)]), capture_output=True, timeout=30)
    return check.returncode == 0


def cluster_dir(folder: Path) -> Path:
    """Where this folder's cluster lives: ``<folder>/postgres``, or a temp-dir fallback postgres can reach."""
    folder = folder.resolve()
    state = _read_state(folder)
    if state is not None and state.pgdata:
        return Path(state.pgdata).parent
    recorded = folder / "postgres.path"
    if recorded.exists():
        return Path(recorded.read_text().strip())
    if pg_user_can_reach(folder):
        return folder / "postgres"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"customer-value-pg-{digest}"


def _ensure_cluster(folder: Path, pg_port: int) -> tuple[Path, str]:
    """Create the cluster once (postgres-owned, password auth, TCP on 127.0.0.1 only) and start it."""
    home = cluster_dir(folder)
    (folder / "postgres.path").write_text(f"{home}\n")
    pgdata = home / "data"
    password_file = folder / "pg-password"
    if not (pgdata / "PG_VERSION").exists():
        initdb = find_pg_binary("initdb")
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(home, PG_USER, PG_USER)
            if not pg_user_can_reach(home):
                raise ServerError(f"user {PG_USER} cannot reach {home}; pass another --folder")
        password = secrets.token_urlsafe(24)
        _write_private(password_file, password + "\n")
        pwfile = home / "initdb-password"  # initdb runs as postgres: it must be able to read this file
        _write_private(pwfile, password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, PG_USER, PG_USER)
        try:
            _run_pg(
                [
                    str(initdb),
                    "-D",
                    str(pgdata),
                    "-U",
                    PG_USER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
    if not password_file.exists():
        raise ServerError(f"{password_file} is missing: remove {pgdata} to create a fresh cluster")
    password = password_file.read_text().strip()
    if not _pg_running(pgdata):
        _port_free_or_fail(pg_port, "PostgreSQL")
        options = f"-p {pg_port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        pg_ctl = str(find_pg_binary("pg_ctl"))
        log = home / "postgres.log"
        _run_pg(
            [pg_ctl, "-D", str(pgdata), "-l", str(log), "-o", options, "-w", "-t", "60", "start"], "pg_ctl"
        )
    port = _pg_port(pgdata, pg_port)
    url = f"postgresql://{PG_USER}:{password}@{HOST}:{port}/{DATABASE}"
    _create_database(url)
    return pgdata, url


def sqlalchemy_url(url: str) -> str:
    """Name the psycopg2 driver: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which the
    ``server`` extra does not install; ``postgres://`` (as some hosts hand it out) it refuses outright."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _run_pg(command: list[str], what: str) -> None:
    result = subprocess.run(
        _as_pg_user(command), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {detail[-1] if detail else f'exit status {result.returncode}'}")


def _pg_running(pgdata: Path) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    status = subprocess.run(
        _as_pg_user([str(find_pg_binary("pg_ctl")), "-D", str(pgdata), "status"]),
        capture_output=True,
        timeout=30,
    )
    return status.returncode == 0


def _pg_port(pgdata: Path, default: int) -> int:
    """The port a running cluster listens on (4th line of postmaster.pid), so a restart finds it."""
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return default


def _create_database(url: str) -> None:
    import psycopg2  # the `server` extra; imported here so the rest of the package never needs it

    admin = url.rsplit("/", 1)[0] + "/postgres"
    try:
        connection = psycopg2.connect(admin, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise ServerError(f"cannot connect to PostgreSQL at {_redact(admin)}: {exc}".strip()) from None
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        connection.close()


def _stop_cluster(pgdata: Path) -> bool:
    if not _pg_running(pgdata):
        return False
    pg_ctl = str(find_pg_binary("pg_ctl"))
    _run_pg([pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
    return True


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, location = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


def _port_free_or_fail(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex((HOST, port)) == 0:
            raise ServerError(f"port {port} on {HOST} is already in use; choose another port for {what}")


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
    _port_free_or_fail(port, "the MLflow server")
    pgdata = None
    if database_url:
        backend = sqlalchemy_url(database_url)
    else:
        pgdata, backend = _ensure_cluster(folder, pg_port)
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
        pg_port=None if pgdata is None else _pg_port(pgdata, pg_port),
    )
    _write_private(folder / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")
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
    if pgdata is not None and _stop_cluster(pgdata):
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
        prog="python -m customer_value.server", description=__doc__.split("\n")[0]
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
            where = _redact(state.backend_store_uri)
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
