"""What a killed job leaves behind (a SIGKILL runs no cleanup) is recognised by its ended owner process
and cleaned up by the next job, while what a live process, another machine or an unreadable name holds is
left alone; SIGTERM unwinds a job instead of ending it on the spot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from customer_value.jobs.atomic_files import remove_abandoned_temp_files
from customer_value.jobs.entrypoint import Terminated, run_job
from customer_value.tracking import processes, run_logging


def _ended_owner() -> str:
    """The owner name of a process that has since exited."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    owner = processes.owner_of(child.pid)
    child.communicate(b"")
    return owner


def _elsewhere(owner: str) -> str:
    """The same pid and start on another machine (host or container sharing the store or folder)."""
    other = "0" * 8 if processes.machine() != "0" * 8 else "1" * 8
    return other + owner[8:]


def test_this_process_is_alive_and_an_ended_one_is_not() -> None:
    assert processes.is_alive(processes.current_owner())
    assert not processes.is_alive(_ended_owner())


def test_a_reused_pid_is_a_different_owner() -> None:
    machine, boot, pid, start = processes.current_owner().split("-")
    assert start, "procfs gives a start time here"
    assert not processes.is_alive(f"{machine}-{boot}-{pid}-{int(start) + 1}")


def test_a_process_of_an_earlier_boot_of_this_machine_has_ended() -> None:
    machine, boot, rest = processes.current_owner().split("-", 2)
    earlier = "0" * 8 if boot != "0" * 8 else "1" * 8
    assert not processes.is_alive(f"{machine}-{earlier}-{rest}")


def test_an_ended_process_of_another_machine_is_not_judged() -> None:
    assert processes.is_alive(_elsewhere(_ended_owner()))


MALFORMED = [
    "",
    "garbage",
    "1",
    pytest.param(f"{os.getpid()}", id="bare-pid-of-this-process"),  # a fixed id: xdist workers differ
    "12_345",
    "abcdef12-0-1",
    "x-y-1-2",
    "abcdef12-abcdef12-x-1",
]


@pytest.mark.parametrize("owner", MALFORMED)
def test_an_owner_that_cannot_be_read_is_left_alone(owner: str) -> None:
    assert processes.is_alive(owner)


def test_runs_of_ended_processes_on_this_machine_are_marked_failed(tracking_uri: str) -> None:
    run_logging.configure(tracking_uri)
    experiment_id = run_logging.ensure_experiment("leftovers", None)
    client = MlflowClient()

    def running(tags: dict[str, str]) -> str:
        return client.create_run(experiment_id, tags=tags).info.run_id

    killed = running({"process.owner": _ended_owner()})
    live = running({"process.owner": processes.current_owner()})
    elsewhere = running({"process.owner": _elsewhere(_ended_owner())})
    untagged = running({})

    assert run_logging.fail_abandoned_runs(experiment_id) == [killed]
    status = {run_id: client.get_run(run_id).info.status for run_id in (killed, live, elsewhere, untagged)}
    assert status == {killed: "FAILED", live: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING"}
    assert "ended without closing" in client.get_run(killed).data.tags["failed.reason"]
    assert run_logging.fail_abandoned_runs(experiment_id) == []


def test_a_run_closed_by_its_owner_just_before_it_ended_stays_finished(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_logging.configure(tracking_uri)
    experiment_id = run_logging.ensure_experiment("leftovers", None)
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags={"process.owner": _ended_owner()}).info.run_id

    def finishes_then_ends(owner: str) -> bool:  # the owner closes its run between search and judgement
        client.set_terminated(run_id, status="FINISHED")
        return False

    monkeypatch.setattr(processes, "is_alive", finishes_then_ends)
    assert run_logging.fail_abandoned_runs(experiment_id) == []
    assert client.get_run(run_id).info.status == "FINISHED"


def test_runs_started_by_the_project_name_their_process(tracking_uri: str) -> None:
    run_logging.configure(tracking_uri)
    with run_logging.run("leftovers", None, "named", {}) as run:
        tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["process.host"] == processes.host()
    assert tags["process.owner"] == processes.current_owner()


def test_temp_files_of_ended_writers_are_removed_and_others_kept(tmp_path: Path) -> None:
    output = tmp_path / "scores[1].csv"  # glob characters in the name are taken literally
    ended = _ended_owner()
    killed = tmp_path / f".{output.name}.{ended}.x1y2.tmp"
    kept = [
        tmp_path / f".{output.name}.{processes.current_owner()}.z3w4.tmp",  # a live writer
        tmp_path / f".{output.name}.{_elsewhere(ended)}.z3w4.tmp",  # another machine's writer
        tmp_path / f".{output.name}.k9q8r7.tmp",  # no owner in the name: not ours to judge
        tmp_path / f".{output.name}.12_345.tmp",
        tmp_path / f".{output.name}.7.csv.{ended}.a1b2.tmp",  # a write to 'scores[1].csv.7.csv'
        tmp_path / f".other.csv.{ended}.a1b2.tmp",
    ]
    for path in (killed, *kept):
        path.write_bytes(b"partial")

    assert remove_abandoned_temp_files(output) == [killed]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in kept)


def test_a_job_turns_sigterm_into_an_unwinding_exit_and_restores_the_handler() -> None:
    """Inside the job SIGTERM raises (so ``finally`` blocks and FAILED runs happen); afterwards the
    process's own handler is back."""
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def job(cfg: object) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)

    with pytest.raises(Terminated) as stopped:
        run_job(job, OmegaConf.create({}))
    assert stopped.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before


# A stand-in for a store write: a function whose module is SQLAlchemy's, as the handler sees its frames.
_STORE_CALL = """
def store_write(events):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the "transaction" is open
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # Python code in this frame: where the handler would raise
        pass
    events.append("committed")
"""


def test_sigterm_waits_for_a_store_call_to_return_then_unwinds() -> None:
    """A SIGTERM landing inside an SQL store call (a FAILED mark on SQLite then met "database is locked")
    is raised as soon as the call has returned, not inside it."""
    namespace = {"__name__": "sqlalchemy.orm.session", "os": os, "signal": signal, "time": time}
    exec(_STORE_CALL, namespace)
    events: list[str] = []

    def job(cfg: object) -> None:
        try:
            namespace["store_write"](events)
            events.append("returned")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the retried signal arrives out here
                pass
            events.append("never stopped")
        finally:
            events.append("unwound")

    with pytest.raises(Terminated) as stopped:
        run_job(job, OmegaConf.create({}))
    assert stopped.value.code == 143
    assert events == ["committed", "returned", "unwound"]
