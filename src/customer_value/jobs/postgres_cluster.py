"""A private PostgreSQL cluster for the team tracking server: created once, started and stopped on demand.

PostgreSQL refuses to run as root, so as root ``initdb`` and ``pg_ctl`` run as user ``postgres``
(``runuser``) and the cluster folder belongs to that user. When ``postgres`` cannot reach the folder
(e.g. inside a private home or temporary directory) the cluster goes to ``<tmp>/customer-value-pg-<hash>``
instead and ``<folder>/postgres.path`` says where. It listens on 127.0.0.1 only (no unix socket), with a
generated password kept in ``<folder>/pg-password`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from customer_value.crm.sink import safe_url
from customer_value.errors import ServerError

HOST = "127.0.0.1"
DATABASE = "mlflow"
PG_USER = "postgres"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


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
    return ["su", PG_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def pg_user_can_reach(folder: Path) -> bool:
    """Whether user postgres can enter ``folder`` (every parent must be searchable for it)."""
    if os.geteuid() != 0:
        return True
    check = subprocess.run(_as_pg_user(["test", "-x", str(folder)]), capture_output=True, timeout=30)
    return check.returncode == 0


def cluster_dir(folder: Path) -> Path:
    """Where this folder's cluster lives: ``<folder>/postgres``, or a temp-dir fallback postgres can reach."""
    folder = folder.resolve()
    recorded = folder / "postgres.path"
    if recorded.exists():
        return Path(recorded.read_text().strip())
    if pg_user_can_reach(folder):
        return folder / "postgres"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"customer-value-pg-{digest}"


def ensure_cluster(folder: Path, pg_port: int) -> tuple[Path, str]:
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
        write_private(password_file, password + "\n")
        pwfile = home / "initdb-password"  # initdb runs as postgres: it must be able to read this file
        write_private(pwfile, password + "\n")
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
    if not cluster_running(pgdata):
        port_free_or_fail(pg_port, "PostgreSQL")
        options = f"-p {pg_port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        pg_ctl = str(find_pg_binary("pg_ctl"))
        log = home / "postgres.log"
        _run_pg(
            [pg_ctl, "-D", str(pgdata), "-l", str(log), "-o", options, "-w", "-t", "60", "start"], "pg_ctl"
        )
    port = listening_port(pgdata, pg_port)
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


def cluster_running(pgdata: Path) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    status = subprocess.run(
        _as_pg_user([str(find_pg_binary("pg_ctl")), "-D", str(pgdata), "status"]),
        capture_output=True,
        timeout=30,
    )
    return status.returncode == 0


def listening_port(pgdata: Path, default: int) -> int:
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
        raise ServerError(f"cannot connect to PostgreSQL at {redact(admin)}: {exc}".strip()) from None
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        connection.close()


def stop_cluster(pgdata: Path) -> bool:
    if not cluster_running(pgdata):
        return False
    pg_ctl = str(find_pg_binary("pg_ctl"))
    _run_pg([pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
    return True


def write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs (one masking for every URL the
    project prints: crm.sink.safe_url)."""
    return safe_url(url)


def port_free_or_fail(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex((HOST, port)) == 0:
            raise ServerError(f"port {port} on {HOST} is already in use; choose another port for {what}")
