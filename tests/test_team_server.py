"""The team tracking server (`make server`): PostgreSQL backend, served artifacts, authentication with the
project's roles, train -> register -> score, each role doing exactly what it should over real HTTP.

Starts the server through the same entry point as the Makefile (`python -m customer_value.jobs.server`), on
free ports in a temporary folder, and checks in teardown that nothing is left running.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
import requests
from mlflow.tracking import MlflowClient

from customer_value import telemetry
from customer_value.crm import sink as crm_sink
from customer_value.crm.membership import change_set
from customer_value.errors import UserError
from customer_value.jobs import forget as forget_job
from customer_value.jobs import postgres_cluster, reporting, server
from customer_value.jobs import score as score_job
from customer_value.jobs import train as train_job
from customer_value.tracking.team_auth import read_credentials
from test_end_to_end import PLUMBING_ONLY
from test_membership import score_args

ROLES = {"engineer": "eve", "reviewer": "rita", "scoring": "sam"}  # role -> the user the fixture creates


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _server(command: str, folder: Path, *args: str, database_url: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and k not in telemetry.OFF}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "customer_value.jobs.server", command, "--folder", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _assert_stopped(state: dict) -> None:
    assert not server._alive(state["mlflow_pid"]), "mlflow server still running"
    assert not server._group_alive(state["mlflow_pid"]), "an mlflow worker is still running"
    assert not _port_open(state["port"])
    if state["pgdata"]:
        assert not (Path(state["pgdata"]) / "postmaster.pid").exists(), "PostgreSQL still running"
        assert not _port_open(state["pg_port"])


@pytest.fixture(scope="module")
def team_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A running team server (own PostgreSQL cluster) for this module's tests (a cluster and a server cost
    15-25 s to start); stopped in teardown, even when a test failed."""
    tmp_path = tmp_path_factory.mktemp("team-server")
    folder = tmp_path / "server"
    port, pg_port = _free_ports(2)
    # One worker: the roles, not the parallelism, are the point (each worker is an MLflow import at start).
    started = _server("start", folder, "--port", str(port), "--pg-port", str(pg_port), "--workers", "1")
    state = json.loads((folder / "server.json").read_text()) if (folder / "server.json").exists() else None
    try:
        assert started.returncode == 0, started.stderr
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
        admin = folder / "admin.credentials"
        assert state["auth"] and admin.stat().st_mode & 0o777 == 0o600
        secret = read_credentials(admin).password
        assert secret not in started.stdout + started.stderr
        # The database password is not on the server's command line (any local user can read that).
        command = Path(f"/proc/{state['mlflow_pid']}/cmdline").read_bytes()
        assert (folder / "pg-password").read_text().strip().encode() not in command
        # Started without any telemetry setting, the server runs with MLflow's telemetry off.
        assert b"MLFLOW_DISABLE_TELEMETRY=true" in Path(f"/proc/{state['mlflow_pid']}/environ").read_bytes()
        for number, (role, user) in enumerate(ROLES.items()):
            if number == 0:  # the command once; the others in this process (each command costs ~5 s)
                added = _server("user", folder, user, "--role", role)
                assert added.returncode == 0, added.stderr
                assert f"created user {user}" in added.stdout
                assert read_credentials(folder / "credentials" / user).password not in added.stdout
            else:
                written, _ = server.add_user(folder, user, role)
                assert written == (folder / "credentials" / user).resolve()
            assert (folder / "credentials" / user).stat().st_mode & 0o777 == 0o600
        assert secret not in (folder / "mlflow.log").read_text(errors="replace")
        yield state | {
            "folder": folder,
            "credentials": {r: folder / "credentials" / u for r, u in ROLES.items()},
        }
    finally:
        stopped = _server("stop", folder)
        cluster = (
            Path((folder / "postgres.path").read_text().strip())
            if (folder / "postgres.path").exists()
            else None
        )
        try:
            assert stopped.returncode == 0, stopped.stderr
            if state is not None:
                _assert_stopped(state)
        finally:
            if cluster is not None and not cluster.is_relative_to(tmp_path):
                shutil.rmtree(cluster, ignore_errors=True)  # the fallback location outside tmp_path


def _postgres_rows(backend_store_uri: str, query: str) -> list[tuple]:
    connection = psycopg2.connect(backend_store_uri.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.mark.slow
def test_train_register_score_against_the_team_server(
    team_server: dict, orders_csv: Path, tmp_path: Path, job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train (as an engineer) and score (as a scoring job, its login from a credentials file) as their
    commands do (in this process: ``job``) against the server over HTTP; then each role, and no login,
    can do exactly what it should on what they made; the admin password rotates; and a second server on
    the same database (DATABASE_URL) sees the same runs."""
    uri = team_server["tracking_uri"]
    assert team_server["backend_store_uri"].startswith("postgresql+psycopg2://postgres:")
    assert _postgres_rows(team_server["backend_store_uri"], "SELECT version()")[0][0].startswith("PostgreSQL")
    if os.geteuid() == 0:  # PostgreSQL refuses root: the cluster belongs to user postgres
        assert Path(team_server["pgdata"]).stat().st_uid == pwd.getpwnam("postgres").pw_uid
    local_artifacts = tmp_path / "local-artifacts"  # only a local store may use tracking.artifact_root
    data = ["data=file", f"data.path={orders_csv}"]
    _login(monkeypatch, team_server["credentials"]["engineer"])
    trained = job(
        train_job.main,
        [*data, f"tracking.artifact_root={local_artifacts}", *PLUMBING_ONLY],
        tmp_path,
        uri,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    served = Path(team_server["artifacts"])
    for name in ("customer-clv", "customer-segments"):
        experiment = client.get_experiment_by_name(name)
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # proxied through the server
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id == run.info.run_id and champion.version == "1"
        assert run.data.tags["registered.gate.alias"] == "champion"
        assert len(list(served.rglob(f"{run.info.run_id}/artifacts/config/resolved_config.yaml"))) == 1
    assert len(list(served.rglob("MLmodel"))) >= 2  # both models' files were uploaded to the server
    assert not local_artifacts.exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    # Runs and registry live in PostgreSQL.
    assert _postgres_rows(team_server["backend_store_uri"], "SELECT count(*) FROM runs") == [(2,)]
    assert sorted(_postgres_rows(team_server["backend_store_uri"], "SELECT name FROM registered_models")) == [
        ("customer-clv",),
        ("customer-segments",),
    ]

    output = tmp_path / "scores.csv"
    _logout(monkeypatch)
    scoring_login = f"tracking.credentials_file={team_server['credentials']['scoring']}"
    scored = job(
        score_job.main,
        [*data, f"score.output={output}", "score.intervals=false", scoring_login],
        tmp_path,
        uri,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    table = pd.read_csv(output)
    assert len(table) == 800 and table["customer_id"].is_unique
    assert (table["clv_model_version"] == 1).all() and (table["segments_model_version"] == 1).all()
    assert table["clv"].ge(0).all() and table["churn_probability"].between(0, 1).all()
    # k=4 clusters, of which an indistinct pair may be merged: the registered model's own segment count.
    assert (
        table["segment"].nunique()
        == int(client.get_model_version_by_alias("customer-segments", "champion").tags["n_segments"])
        >= 3
    )
    _each_role_does_exactly_what_it_should(team_server, job, data, tmp_path, monkeypatch)
    # On the same server (a second one would cost another 35 s wherever pytest-xdist put this test):
    _the_admin_password_rotates(team_server)
    _database_url_uses_that_database_and_creates_no_cluster(team_server, tmp_path, monkeypatch)


def _login(monkeypatch: pytest.MonkeyPatch, credentials: Path) -> None:
    found = read_credentials(credentials)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", found.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", found.password)


def _logout(monkeypatch: pytest.MonkeyPatch) -> None:
    """No login in the environment (restored after the test, also when a job set one from a file)."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)


def _each_role_does_exactly_what_it_should(
    team_server: dict, job, data: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over plain HTTP, as each user and as nobody, on the runs and versions the engineer just made."""
    uri = team_server["tracking_uri"]
    api = f"{uri}/api/2.0/mlflow"
    logins = {role: read_credentials(path) for role, path in team_server["credentials"].items()}
    sessions = {}
    for role, found in logins.items():
        sessions[role] = requests.Session()
        sessions[role].auth = (found.username, found.password)
    anonymous = requests.Session()
    clv = sessions["engineer"].get(
        f"{api}/experiments/get-by-name", params={"experiment_name": "customer-clv"}
    )
    experiment_id = clv.json()["experiment"]["experiment_id"]
    runs = {"experiment_ids": [experiment_id], "max_results": 10}
    (run,) = sessions["engineer"].post(f"{api}/runs/search", json=runs).json()["runs"]
    new_run = {"experiment_id": experiment_id}
    new_version = {
        "name": "customer-clv",
        "source": f"runs:/{run['info']['run_id']}/clv",
        "run_id": run["info"]["run_id"],
    }
    alias = {"name": "customer-clv", "alias": "champion", "version": "1"}

    # Nobody: 401 on everything but the health check.
    assert anonymous.get(f"{uri}/health").status_code == 200
    assert anonymous.post(f"{api}/runs/search", json=runs).status_code == 401
    assert anonymous.get(f"{api}/registered-models/get", params={"name": "customer-clv"}).status_code == 401
    assert anonymous.get(f"{uri}/").status_code == 401
    # A reviewer reads runs and models, writes nothing.
    reviewer = sessions["reviewer"]
    assert [r["info"]["run_id"] for r in reviewer.post(f"{api}/runs/search", json=runs).json()["runs"]] == [
        run["info"]["run_id"]
    ]
    # A scoring job reads the registered models too (it scored above); neither writes any of them.
    for role in ("reviewer", "scoring"):
        session = sessions[role]
        assert session.get(
            f"{api}/registered-models/alias", params={"name": "customer-clv", "alias": "champion"}
        ).ok
        assert session.post(f"{api}/runs/create", json=new_run).status_code == 403
        assert session.post(f"{api}/model-versions/create", json=new_version).status_code == 403
        assert session.post(f"{api}/registered-models/alias", json=alias).status_code == 403
    # An engineer may move the alias (the gate did, through train, above).
    assert sessions["engineer"].post(f"{api}/registered-models/alias", json=alias).ok
    # A bounded burst of wrong passwords changes nothing: each is refused, the right one still works.
    wrong = requests.Session()
    wrong.auth = (logins["engineer"].username, "not-the-password")
    assert {wrong.post(f"{api}/runs/create", json=new_run).status_code for _ in range(20)} == {401}
    assert [
        r["info"]["run_id"] for r in sessions["engineer"].post(f"{api}/runs/search", json=runs).json()["runs"]
    ] == [run["info"]["run_id"]]
    # The jobs say it in one line: no login, a wrong one, a role that may not train.
    _logout(monkeypatch)
    for login, expected in (
        ([], "requires a login"),
        (["tracking.credentials_file=" + str(tmp_path / "nowhere")], "credentials file"),
        ([f"tracking.credentials_file={team_server['credentials']['reviewer']}"], "has no permission"),
    ):
        refused = job(train_job.main, [*data, *PLUMBING_ONLY, *login], tmp_path, uri)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert refused.stderr.strip().count("\n") == 0 and expected in refused.stderr, refused.stderr
        _logout(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", logins["engineer"].username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    refused = job(train_job.main, [*data, *PLUMBING_ONLY], tmp_path, uri)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: tracking server {uri} refused the login of user '{logins['engineer'].username}' (HTTP 401)"
    )
    assert len(sessions["engineer"].post(f"{api}/runs/search", json=runs).json()["runs"]) == 1


def _database_url_uses_that_database_and_creates_no_cluster(
    team_server: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second server on the first one's database: same runs, no cluster of its own, and stopping it
    leaves the database alone."""
    folder = tmp_path / "external"
    (port,) = _free_ports(1)
    database_url = team_server["backend_store_uri"].replace("postgresql+psycopg2://", "postgres://")
    # One worker: how many serve it is not the point here, and each costs an MLflow import at start.
    started = _server("start", folder, "--port", str(port), "--workers", "1", database_url=database_url)
    state = json.loads((folder / "server.json").read_text()) if (folder / "server.json").exists() else None
    try:
        assert started.returncode == 0, started.stderr
        assert state["pgdata"] is None and state["backend_store_uri"].startswith("postgresql+psycopg2://")
        assert not (folder / "postgres").exists() and not (folder / "postgres.path").exists()
        assert "***@" in started.stdout and database_url not in started.stdout  # password not printed
        uri = f"http://127.0.0.1:{port}"
        _login(monkeypatch, folder / "admin.credentials")  # its own user store and admin
        MlflowClient(tracking_uri=uri).create_experiment("shared")
        _login(monkeypatch, team_server["folder"] / "admin.credentials")
        shared = MlflowClient(tracking_uri=team_server["tracking_uri"]).get_experiment_by_name("shared")
        assert shared is not None
    finally:
        stopped = _server("stop", folder)
    assert stopped.returncode == 0, stopped.stderr
    _assert_stopped(state)
    assert _postgres_rows(team_server["backend_store_uri"], "SELECT 1") == [(1,)]  # still running


def _the_admin_password_rotates(team_server: dict) -> None:
    admin = team_server["folder"] / "admin.credentials"
    before = read_credentials(admin)
    rotated = _server("rotate-admin", team_server["folder"])
    assert rotated.returncode == 0, rotated.stderr
    after = read_credentials(admin)
    assert after.password != before.password and after.password not in rotated.stdout
    assert admin.stat().st_mode & 0o777 == 0o600
    session = requests.Session()
    session.auth = (after.username, after.password)
    users = session.get(f"{team_server['tracking_uri']}/api/2.0/mlflow/users/get", params={"username": "eve"})
    assert users.ok and users.json()["user"]["username"] == "eve"


def test_a_non_loopback_address_needs_authentication(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    refused = _server("start", tmp_path / "s", "--host", "0.0.0.0", "--no-auth", "--port", str(port))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        "error: refusing to listen on 0.0.0.0 without authentication: anyone who reaches the port could "
        "register a model or move champion (drop --no-auth, or bind 127.0.0.1)"
    )
    assert not (tmp_path / "s").exists() and not _port_open(port)  # nothing created, nothing started


def test_a_user_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path) -> None:
    refused = _server("user", tmp_path / "s", "../admin.credentials", "--role", "engineer")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "error: user name '../admin.credentials': letters, digits, '.', '_' and '-' only (it names a file)"
    )
    assert not (tmp_path / "s").exists()


def test_credentials_files_are_read_as_mlflow_writes_them(tmp_path: Path) -> None:
    from customer_value.errors import UserError
    from customer_value.tracking.team_auth import Credentials, write_credentials

    path = tmp_path / "creds" / "eve"
    write_credentials(path, Credentials("eve", "s3cret"))
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert read_credentials(path) == Credentials("eve", "s3cret")
    assert "s3cret" not in repr(read_credentials(path))
    (tmp_path / "bad").write_text("[mlflow]\nmlflow_tracking_username = eve\n")
    with pytest.raises(UserError, match="bad: needs an \\[mlflow\\] section with mlflow_tracking_username"):
        read_credentials(tmp_path / "bad")
    with pytest.raises(UserError, match="nowhere: cannot be read"):
        read_credentials(tmp_path / "nowhere")


def test_start_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _server(
            "start", tmp_path / "s", "--port", str(port), database_url="postgresql://x@127.0.0.1:1/x"
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"error: port {port} on 127.0.0.1 is already in use; choose another port for the MLflow server"
    )


def test_missing_postgres_binaries_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(server.ServerError, match="initdb is neither on PATH nor in /nowhere/\\*/bin"):
        postgres_cluster.find_pg_binary("initdb", search_glob="/nowhere/*/bin")
    if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):  # Debian/Ubuntu keep it off PATH
        assert postgres_cluster.find_pg_binary("initdb").parent.match("/usr/lib/postgresql/*/bin")


def test_database_urls_name_the_installed_driver() -> None:
    assert postgres_cluster.sqlalchemy_url("postgres://u:p@h:1/d") == "postgresql+psycopg2://u:p@h:1/d"
    assert postgres_cluster.sqlalchemy_url("postgresql://u:p@h:1/d") == "postgresql+psycopg2://u:p@h:1/d"
    assert postgres_cluster.sqlalchemy_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert (
        postgres_cluster.redact("postgresql+psycopg2://u:secret@h:1/d") == "postgresql+psycopg2://u:***@h:1/d"
    )


@pytest.mark.slow
def test_scoring_upserts_membership_and_changes_into_postgresql_in_one_transaction(
    team_server: dict, trained_tracking_uri: str, trained_store, tmp_path: Path, job, monkeypatch
) -> None:
    """``score.sink`` against the team server's PostgreSQL (a database of its own): the table mirrors the
    membership file, a rescore of unchanged data rewrites nothing, moves and departures arrive as changes,
    and a statement that fails rolls the whole sync back."""
    password = (team_server["folder"] / "pg-password").read_text().strip()
    admin = f"postgresql://postgres:{password}@127.0.0.1:{team_server['pg_port']}/postgres"
    connection = psycopg2.connect(admin)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS crm")
        cursor.execute("CREATE DATABASE crm")
    connection.close()
    crm = admin.rsplit("/", 1)[0] + "/crm"
    sink = f"postgresql://postgres@127.0.0.1:{team_server['pg_port']}/crm"  # the password: PGPASSWORD
    monkeypatch.setenv("PGPASSWORD", password)
    output = tmp_path / "scores.parquet"
    args = score_args(trained_store.orders_csv, output, "score.report=false", f"score.sink={sink}")
    first = job(score_job.main, args, tmp_path, trained_tracking_uri)
    assert first.returncode == 0, first.stderr[-2000:]
    assert password not in first.stderr + first.stdout
    membership = pd.read_parquet(reporting.membership_path(output))
    query = "SELECT customer_id, segment_id, segment_name FROM segment_membership ORDER BY customer_id"
    expected = sorted(
        membership[["customer_id", "segment_id", "segment_name"]].itertuples(index=False, name=None)
    )
    assert _postgres_rows(crm, query) == expected
    changes_query = "SELECT change, count(*) FROM segment_membership_changes GROUP BY change"
    assert _postgres_rows(crm, changes_query) == [("added", 800)]
    synced = _postgres_rows(crm, "SELECT max(synced_at) FROM segment_membership")

    again = job(score_job.main, args, tmp_path, trained_tracking_uri)  # unchanged data: nothing to sync
    assert again.returncode == 0, again.stderr[-2000:]
    assert _postgres_rows(crm, query) == expected
    assert _postgres_rows(crm, "SELECT max(synced_at) FROM segment_membership") == synced  # none rewritten
    assert _postgres_rows(crm, changes_query) == [("added", 800)]

    # The next day: ten customers gone, five moved to another segment.
    moved = membership.iloc[10:].copy()
    ids = sorted(moved["segment_id"].unique())
    moved.loc[moved.index[:5], "segment_id"] = (
        moved["segment_id"].iloc[:5].map(dict(zip(ids, ids[1:] + ids[:1], strict=True)))
    )
    moved["as_of"] = pd.Timestamp(membership["as_of"].iloc[0]) + pd.Timedelta(days=1)
    changes = change_set(membership, moved)
    counts = crm_sink.upsert_membership(sink, "segment_membership", moved, changes)
    assert counts == {"rewritten": 5, "deleted": 10, "changes": 15}
    assert _postgres_rows(crm, query) == sorted(
        moved[["customer_id", "segment_id", "segment_name"]].itertuples(index=False, name=None)
    )
    assert sorted(_postgres_rows(crm, changes_query)) == [("added", 800), ("changed", 5), ("removed", 10)]
    since = "SELECT assigned_as_of, count(*) FROM segment_membership GROUP BY 1 ORDER BY 1"
    assert [count for _, count in _postgres_rows(crm, since)] == [785, 5]  # only the moved were rewritten

    # A sync whose last statement fails leaves both tables as they were (one transaction).
    with psycopg2.connect(crm) as breaking, breaking.cursor() as cursor:
        cursor.execute("ALTER TABLE segment_membership_changes ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    before = _postgres_rows(crm, "SELECT * FROM segment_membership ORDER BY customer_id")
    with pytest.raises(UserError, match=r"table segment_membership: .*refuse.*; nothing written"):
        crm_sink.upsert_membership(sink, "segment_membership", membership, change_set(moved, membership))
    assert _postgres_rows(crm, "SELECT * FROM segment_membership ORDER BY customer_id") == before

    # Forgotten customers leave both tables, their change history too (forget.sink, one transaction).
    gone = moved["customer_id"].iloc[:3].tolist()
    request = tmp_path / "request.csv"
    pd.DataFrame({"customer_id": gone}).to_csv(request, index=False)
    monkeypatch.setenv("PRIVACY_KEY", "a test privacy key")
    forget = [f"forget.ids={request}", f"forget.sink={sink}", "forget.outputs=[]"]
    forgot = job(forget_job.main, forget, tmp_path, trained_tracking_uri)
    assert forgot.returncode == 0, forgot.stderr[-2000:]
    assert re.search(
        r"segment_membership lost 3 row\(s\) and segment_membership_changes [1-9]\d* at", forgot.stdout
    )
    listed = ", ".join(f"'{customer}'" for customer in gone)
    for table in ("segment_membership", "segment_membership_changes"):
        assert _postgres_rows(crm, f"SELECT count(*) FROM {table} WHERE customer_id IN ({listed})") == [(0,)]
    assert _postgres_rows(crm, "SELECT count(*) FROM segment_membership") == [(len(moved) - 3,)]
