"""Team tracking server: ``mlflow server`` on PostgreSQL with a served artifact root, in the background,
with MLflow's basic-auth app on (users and per-experiment / per-model permissions: ``team_auth``).

``python -m customer_value.jobs.server start|stop|status|user|rotate-admin`` (what ``make server``,
``make server-stop`` and ``make server-user`` run). Without ``DATABASE_URL`` a private PostgreSQL cluster
(``postgres_cluster``) is created on first start and started; SQLite is fine for one writer, but parallel
sweeps and a team want a real database. Everything the server owns (state, logs, artifacts, cluster, the
user store and the admin's 0600 credentials) lives in one git-ignored folder (default ``.server/``). The
server binds 127.0.0.1 unless ``--host`` names another address, which it refuses without authentication.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
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
from customer_value.telemetry import telemetry_off
from customer_value.tracking.team_auth import (
    ADMIN,
    AdminClient,
    Credentials,
    grant_role,
    new_password,
    read_credentials,
    write_credentials,
)

DEFAULT_FOLDER = Path(".server")
DEFAULT_PORT = 5050
DEFAULT_PG_PORT = 55432
STATE_FILE = "server.json"
ADMIN_CREDENTIALS = "admin.credentials"  # MLflow's credentials-file format, 0600
AUTH_CONFIG = "basic_auth.ini"  # the auth app's settings (no secret in it)
AUTH_DATABASE = "basic_auth.db"  # users and permissions (AUTH_DATABASE_URL: another database)
SECRET_FILE = "flask_secret"  # the auth app's session / CSRF key, 0600
USER_CREDENTIALS = "credentials"  # <folder>/credentials/<user>: each user's file, 0600
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
AUTH_CACHE_TTL_S = 60
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
    host: str = HOST  # the address it binds
    auth: bool = False  # MLflow's basic-auth app on (a state file from before it had none)


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
    host: str = HOST,
    auth: bool = True,
    allowed_hosts: tuple[str, ...] = (),
) -> ServerState:
    """Start PostgreSQL (unless ``database_url``) and ``mlflow server`` in the background; return once
    ``/health`` answers. Starting a running server is a no-op. ``host``: the address to bind (a
    non-loopback one only with ``auth``); ``allowed_hosts``: more Host-header names clients use (a DNS
    name, a reverse proxy's)."""
    if not auth and host not in LOOPBACK:
        raise ServerError(
            f"refusing to listen on {host} without authentication: anyone who reaches the port could "
            "register a model or move champion (drop --no-auth, or bind 127.0.0.1)"
        )
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
    names = [*dict.fromkeys([host, HOST, "localhost", *_machine_names(host), *allowed_hosts])]
    # The backend URI holds the database password: in the environment, not on a command line `ps` shows.
    environment = (
        dict(telemetry_off(dict(os.environ)))
        | {"MLFLOW_BACKEND_STORE_URI": backend}
        | (_auth_environment(folder) if auth else {})
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        # Only the names clients use: refuse other Host headers (DNS rebinding) and cross-site calls.
        "--allowed-hosts",
        ",".join(f"{name},{name}:{port}" for name in names),
        "--cors-allowed-origins",
        ",".join(f"{scheme}://{name}:{port}" for name in names for scheme in ("http", "https")),
        *(["--app-name", "basic-auth"] if auth else []),
    ]
    with open(folder / "mlflow.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )
    state = ServerState(
        tracking_uri=f"http://{HOST if host in ('0.0.0.0', '::') else host}:{port}",
        mlflow_pid=process.pid,
        port=port,
        artifacts=str(artifacts),
        backend_store_uri=backend,
        pgdata=None if pgdata is None else str(pgdata),
        pg_port=None if pgdata is None else listening_port(pgdata, pg_port),
        host=host,
        auth=auth,
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


def _machine_names(host: str) -> list[str]:
    """Bound to every interface: the names and addresses teammates reach this machine by (its host name,
    FQDN and their addresses), so that the Host-header check lets them in; none for a loopback bind."""
    if host not in ("0.0.0.0", "::"):
        return []
    names = [socket.gethostname(), socket.getfqdn()]
    for name in list(names):
        try:
            names += socket.gethostbyname_ex(name)[2]
        except OSError:
            continue
    try:  # the address of the interface that routes outwards (a UDP "connection" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))
            names.append(probe.getsockname()[0])
    except OSError:
        pass
    return [name for name in names if name and name not in LOOPBACK and not name.startswith("127.")]


def _auth_environment(folder: Path) -> dict[str, str]:
    """The auth app's settings for the server process: its config file (no secret in it), the admin's
    first password (read by MLflow only while the user store has no admin yet) and the session key.
    The admin's password is generated on the first start and kept in ``admin.credentials`` (0600)."""
    database = os.environ.get("AUTH_DATABASE_URL") or f"sqlite:///{folder / AUTH_DATABASE}"
    admin_file = folder / ADMIN_CREDENTIALS
    if not admin_file.exists():
        if database.startswith("sqlite:///") and (folder / AUTH_DATABASE).exists():
            raise ServerError(
                f"{admin_file} is missing but the user store {folder / AUTH_DATABASE} already holds the "
                "admin: restore the file, or remove the user store to start over (every user is lost)"
            )
        write_credentials(admin_file, Credentials(ADMIN, new_password()))
    admin = read_credentials(admin_file)
    secret_file = folder / SECRET_FILE
    if not secret_file.exists():
        write_private(secret_file, new_password())
    config = folder / AUTH_CONFIG
    write_private(  # 0600: AUTH_DATABASE_URL may hold a password
        config,
        "[mlflow]\n"
        "# Written by customer_value.jobs.server: users see and change only what a role granted them.\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "# Each password check is a PBKDF2 hash (0.5 s a request on a 2-core Xeon: a train's ~800\n"
        "# requests took 6 minutes): a successful check is cached this long per worker. A changed or\n"
        "# revoked password may then still work on another worker for up to this long.\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file.read_text().strip(),
    }


def _running(folder: Path) -> ServerState:
    state = _read_state(folder.resolve())
    if state is None or not _alive(state.mlflow_pid):
        raise ServerError(f"no server is running from {folder} (make server starts one)")
    if not state.auth:
        raise ServerError(f"the server from {folder} runs without authentication: it has no users")
    return state


def add_user(folder: Path, username: str, role: str) -> tuple[Path | None, list[str]]:
    """Create ``username`` (a generated password, written to ``<folder>/credentials/<username>``, 0600) or
    keep an existing one's password, and grant ``role``. Returns the new credentials file (None for an
    existing user) and the grants."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", username) or ".." in username:
        raise UserError(f"user name {username!r}: letters, digits, '.', '_' and '-' only (it names a file)")
    state = _running(folder)
    client = AdminClient(state.tracking_uri, read_credentials(folder.resolve() / ADMIN_CREDENTIALS))
    written = None
    if not client.user_exists(username):
        credentials = Credentials(username, new_password())
        written = folder.resolve() / USER_CREDENTIALS / username
        write_credentials(written, credentials)  # first: a user nobody has the password of is never made
        try:
            client.create_user(credentials)
        except BaseException:
            written.unlink(missing_ok=True)
            raise
    return written, grant_role(client, username, role)


def rotate_admin(folder: Path) -> Path:
    """A new admin password, set on the server and then written to ``admin.credentials``."""
    state = _running(folder)
    path = folder.resolve() / ADMIN_CREDENTIALS
    old = read_credentials(path)
    new = Credentials(old.username, new_password())
    AdminClient(state.tracking_uri, old).update_password(new, current=old.password)
    write_credentials(path, new)
    return path


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
    parser.add_argument("command", choices=["start", "stop", "status", "user", "rotate-admin"])
    parser.add_argument("username", nargs="?", help="user: the user to create or grant a role")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="state, logs, artifacts, cluster")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="MLflow server port")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="PostgreSQL port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    parser.add_argument("--host", default=HOST, help="address to bind (non-loopback: authentication only)")
    parser.add_argument("--allowed-hosts", default="", help="more Host names clients use, comma-separated")
    parser.add_argument("--no-auth", action="store_true", help="no users or permissions (127.0.0.1 only)")
    parser.add_argument("--role", choices=["engineer", "reviewer", "scoring"], help="user: the role to grant")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per outcome; a user error is ``error: <message>`` and exit status 1."""
    args = _parser().parse_intermixed_args(argv)  # the user name may follow the options
    try:
        if args.command == "start":
            database_url = os.environ.get("DATABASE_URL") or None
            hosts = tuple(name for name in args.allowed_hosts.split(",") if name)
            state = start(
                args.folder,
                args.port,
                args.pg_port,
                database_url,
                args.workers,
                args.host,
                not args.no_auth,
                hosts,
            )
            where = redact(state.backend_store_uri)
            print(f"MLflow tracking server on {state.tracking_uri} (backend {where})")
            print(f"artifacts: {state.artifacts}")
            if state.auth:
                admin = args.folder.resolve() / ADMIN_CREDENTIALS
                print(f"authentication on: the admin's credentials are in {admin} (0600)")
                print("add users with: make server-user NAME=<name> ROLE=engineer|reviewer|scoring")
            print(f"use it with: MLFLOW_TRACKING_URI={state.tracking_uri} make train")
            if state.host not in LOOPBACK:
                print(
                    f"listening on {state.host}: teammates need TLS in front of it (a reverse proxy, "
                    "docs/tracking-server.md)"
                )
        elif args.command == "stop":
            stopped = stop(args.folder)
            print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        elif args.command == "user":
            if not args.username or not args.role:
                raise UserError("user needs a user name and --role engineer|reviewer|scoring")
            written, granted = add_user(args.folder, args.username, args.role)
            if written is None:
                print(f"user {args.username} already existed; password unchanged")
            else:
                print(f"created user {args.username}; credentials in {written} (0600, MLflow's format)")
            print(f"granted {args.role}: " + "; ".join(granted))
        elif args.command == "rotate-admin":
            print(f"admin password changed; the new one is in {rotate_admin(args.folder)} (0600)")
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
