"""The ``customer-value`` console script runs the same jobs as ``python -m customer_value.<job>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from customer_value import cli


def test_an_unknown_command_prints_the_usage_and_exits_non_zero() -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["nope"])
    assert str(stop.value.code).startswith("usage: customer-value {train|score|server|")


def test_a_command_runs_its_job_with_the_remaining_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit) as stop:
        cli.main(["score", "score.horizon_days=-5"])  # refused before any work, as the job itself does
    assert stop.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "score.horizon_days must be > 0" in errors[0]
