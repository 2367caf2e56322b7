"""Issue 7 faults and concurrency, with real processes and a real SQLite store: a train killed mid-run
registers nothing and the next run works; a score killed mid-write leaves no output; a read-only store
and an unreachable tracking server are one error line; two trains at once both record their runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from customer_value.jobs import score as score_job
from customer_value.jobs import train as train_job
from customer_value.jobs.entrypoint import STOPPED
from test_end_to_end import PLUMBING_ONLY

pytestmark = pytest.mark.slow
MODELS = ("customer-clv", "customer-segments")
EXPERIMENTS = ("customer-clv", "customer-segments")  # the default names of both (tracking=local)


def _train_command(orders_csv: Path, folder: Path, artifact_root: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "customer_value.train",
        "data=file",
        f"data.path={orders_csv}",
        f"tracking.artifact_root={artifact_root or folder / 'artifacts'}",
        f"hydra.run.dir={folder / 'outputs' / str(time.monotonic_ns())}",
    ]


def _env(uri: str) -> dict[str, str]:
    # faulthandler: a job that hangs can be made to print every thread's stack (``_stderr_once_ended``)
    return os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONFAULTHANDLER": "1"}


def _stderr_once_ended(job: subprocess.Popen, timeout: float = 120) -> str:
    """The job's stderr after it ended; one still running after ``timeout`` s fails the test with the
    stacks of all its threads (SIGABRT: faulthandler prints them), to show where it hung."""
    try:
        return job.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        job.send_signal(signal.SIGABRT)
        _, stderr = job.communicate(timeout=60)
        # From faulthandler's header: the innermost frames come first (a tail cut them off once).
        start = stderr.find("Fatal Python error")
        dump = stderr[start : start + 12000] if start >= 0 else stderr[-8000:]
        pytest.fail(f"the job still ran {timeout:.0f} s after SIGTERM; its threads:\n{dump}")


def _versions(uri: str) -> dict[str, list[str]]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # not whichever registry an earlier test left MLflow pointing at
    client = MlflowClient()
    return {m: sorted(v.version for v in client.search_model_versions(f"name='{m}'")) for m in MODELS}


def test_train_killed_mid_run_registers_nothing_and_the_next_run_works(
    trained_store, trained_tracking_uri: str, tmp_path: Path, job
) -> None:
    orders_csv, tracking_uri = trained_store.orders_csv, trained_tracking_uri
    before = _versions(tracking_uri)
    champion = MlflowClient().get_model_version_by_alias("customer-clv", "champion").version

    victim = subprocess.Popen(
        [*_train_command(orders_csv, tmp_path), *PLUMBING_ONLY],
        env=_env(tracking_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert victim.stdout is not None
    for line in victim.stdout:  # kill it in the middle of the CLV stage, well before registration
        if "clv.layers." in line:
            break
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert _versions(tracking_uri) == before
    assert MlflowClient().get_model_version_by_alias("customer-clv", "champion").version == champion

    # The next job (its command's main, in this process) finds the killed one's process gone.
    after = job(
        train_job.main, [*_train_command(orders_csv, tmp_path)[3:], *PLUMBING_ONLY], tmp_path, tracking_uri
    )
    assert after.returncode == 0, after.stderr
    assert all(len(v) == len(before[m]) + 1 for m, v in _versions(tracking_uri).items())
    # the killed job could not close its run; the next job found its process gone and marked it FAILED
    runs = mlflow.search_runs(experiment_names=list(EXPERIMENTS))
    assert "RUNNING" not in set(runs["status"])
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) == 1 and "ended without closing the run" in failed["tags.failed.reason"].iloc[0]


def test_two_trains_at_once_on_a_fresh_sqlite_store_both_record_their_runs(
    orders_csv: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not created yet: both processes race to create it
    processes = [
        subprocess.Popen(
            [*_train_command(orders_csv, tmp_path), *PLUMBING_ONLY],
            env=_env(uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=900), *p.communicate()) for p in processes]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "database is locked" not in stderr
    mlflow.set_tracking_uri(uri)
    for experiment in EXPERIMENTS:
        runs = mlflow.search_runs(experiment_names=[experiment])
        assert len(runs) == 2 and (runs["status"] == "FINISHED").all()
    versions = _versions(uri)
    assert all(len(v) == 2 for v in versions.values())
    client = MlflowClient()
    for model in MODELS:  # an alias names one version: one champion, whichever registered first or won
        aliases = [a for version in versions[model] for a in client.get_model_version(model, version).aliases]
        assert aliases.count("champion") == 1, aliases


def test_an_unreachable_tracking_server_fails_fast_with_one_line(orders_csv: Path, tmp_path: Path) -> None:
    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    start = time.monotonic()
    result = subprocess.run(
        [*_train_command(orders_csv, tmp_path), f"tracking.uri={uri}"],
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - start
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0], result.stderr[-2000:]
    assert took < 60


@pytest.fixture(scope="module")
def faults_store(tmp_path_factory: pytest.TempPathFactory, trained_store) -> tuple[str, Path, Path]:
    """A store folder holding this module's copy of the trained store's database (champions of both
    models), and the orders they came from."""
    store = tmp_path_factory.mktemp("faults") / "store"
    store.mkdir()
    shutil.copyfile(trained_store.database, store / "mlflow.db")
    return f"sqlite:///{store / 'mlflow.db'}", store, trained_store.orders_csv


def _score_command(orders_csv: Path, store: Path, output: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "customer_value.score",
        "data=file",
        f"data.path={orders_csv}",
        f"tracking.artifact_root={store / 'artifacts'}",
        f"score.output={output}",
        f"hydra.run.dir={output.parent / 'outputs' / str(time.monotonic_ns())}",
        *args,
    ]


def _has_rows(paths: Iterator[Path]) -> bool:
    """Whether any of the files has been written to (one may be renamed away while we look)."""
    for path in paths:
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
    return False


def _score_writing(uri: str, store: Path, orders_csv: Path, output: Path) -> subprocess.Popen:
    """A score job that has written its first rows into its temporary file (one customer per chunk:
    hundreds of writes follow, so a signal now lands while the table is being written)."""
    job = subprocess.Popen(
        _score_command(orders_csv, store, output, "score.chunk_customers=1"),
        env=_env(uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while job.poll() is None and not _has_rows(output.parent.glob(f".{output.name}.*.tmp")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return job


def test_score_killed_mid_write_leaves_no_output_and_the_next_score_cleans_up(
    faults_store: tuple[str, Path, Path], tmp_path: Path, job
) -> None:
    uri, store, orders_csv = faults_store
    output = tmp_path / "scores.parquet"
    victim = _score_writing(uri, store, orders_csv, output)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "score finished before it could be killed mid-write"
    assert not output.exists()
    assert len(list(tmp_path.glob(".scores.parquet.*.tmp"))) == 1  # hidden, and named after its process

    # The next score (its command's main, in this process) removes the killed one's temporary file.
    after = job(score_job.main, _score_command(orders_csv, store, output)[3:], tmp_path, uri)
    assert after.returncode == 0, after.stderr[-3000:]
    assert output.exists() and not list(tmp_path.glob(".scores.parquet.*.tmp"))
    assert "left by an ended process" in after.stdout + after.stderr


@contextmanager
def _read_only(folder: Path) -> Iterator[list[str]]:
    """A command prefix under which ``folder`` is read-only: a read-only bind mount in a private mount
    namespace as root (root writes through file modes), file modes otherwise."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield []
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN: root cannot be denied a write here
        pytest.skip(f"as root, a read-only store needs mount namespaces (unshare -m): {probe.stderr.strip()}")
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    yield ["unshare", "-m", "sh", "-c", mount, str(folder)]


def test_a_read_only_store_is_one_clear_error_and_changes_nothing(
    faults_store: tuple[str, Path, Path], tmp_path: Path
) -> None:
    uri, store, orders_csv = faults_store
    before = _versions(uri)
    output = tmp_path / "scores.parquet"
    train = _train_command(orders_csv, tmp_path, store / "artifacts")
    with _read_only(store) as prefix:
        results = [
            subprocess.run([*prefix, *command], env=_env(uri), capture_output=True, text=True, timeout=300)
            for command in (train, _score_command(orders_csv, store, output))
        ]
    for result in results:
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-2000:]
        assert str(store / "mlflow.db") in errors[0] and "cannot be opened for writing" in errors[0], errors
    assert not output.exists()
    assert _versions(uri) == before


def test_sigterm_unwinds_train_and_score_with_one_line_and_leaves_nothing(
    faults_store: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """What a scheduler's stop (or `kill`) does: runs FAILED at once, no version, no output or temp file."""
    uri, store, orders_csv = faults_store
    before = _versions(uri)
    train = subprocess.Popen(
        _train_command(orders_csv, tmp_path, store / "artifacts"),
        env=_env(uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert train.stdout is not None
    for line in train.stdout:  # mid-CLV stage; a signal inside a store call waits for it
        if "clv.layers." in line:
            break
    train.send_signal(signal.SIGTERM)
    stderr = _stderr_once_ended(train)
    assert train.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [f"error: {STOPPED}"]
    runs = mlflow.search_runs(experiment_names=list(EXPERIMENTS), order_by=["attributes.start_time DESC"])
    assert runs.iloc[0]["status"] == "FAILED" and "RUNNING" not in set(runs["status"])  # before any next job
    assert _versions(uri) == before

    output = tmp_path / "scores.parquet"
    score = _score_writing(uri, store, orders_csv, output)
    score.send_signal(signal.SIGTERM)
    stderr = _stderr_once_ended(score)
    assert score.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert not output.exists() and not list(tmp_path.glob(".scores.parquet*"))
