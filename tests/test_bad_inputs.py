"""Issue 7's bad-input corpus, each file through ``train`` and ``score`` as a user runs them (real CLI,
real MLflow store): non-zero exit, one ``error:`` line naming the file, no traceback, the train run FAILED,
no new version, the champion unchanged, no output file. The cases whose right answer is to go on (exact
duplicate rows, mixed UTC offsets, a few bad rows under data.max_bad_row_share) are in test_data.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

HEADER = "customer_id,timestamp,amount\n"
GOOD_ROWS = "a,2024-01-01,10\na,2024-02-01,12\nb,2024-01-05,7\nb,2024-03-05,9\nc,2024-01-09,5\n"

# name -> (file name, bytes, fragments the error line must contain)
CORPUS: dict[str, tuple[str, bytes, list[str]]] = {
    "empty file": ("orders.csv", b"", ["empty"]),
    "header only": ("orders.csv", HEADER.encode(), ["no rows"]),
    "missing column": (
        "orders.csv",
        b"customer_id,timestamp\na,2024-01-01\n",
        ["missing column", "'amount'"],
    ),
    "unparsable dates": (
        "orders.csv",
        (HEADER + "a,2024-01-01,10\nb,yesterday,3\nc,31/31/2024,4\n").encode(),
        ["'timestamp'", "2 of 3 rows"],
    ),
    "placeholder dates": (
        "orders.csv",
        (HEADER + GOOD_ROWS + "d,9999-12-31,4\n").encode(),
        ["'timestamp'", "1 of 6 rows dated before 1900 or after 2199"],
    ),
    "text amount": (
        "orders.csv",
        (HEADER + "a,2024-01-01,ten\nb,2024-01-02,2\n").encode(),
        ["'amount'", "1 of 2"],
    ),
    "blank customer ids": (
        "orders.csv",
        (HEADER + " ,2024-01-01,1\n,2024-01-02,2\nb,2024-01-02,2\n").encode(),
        ["'customer_id'", "2 of 3"],
    ),
    "binary garbage": ("orders.csv", bytes(range(256)) * 8, ["orders.csv"]),
    "absurd amount": (
        "orders.csv",
        (HEADER + GOOD_ROWS + "d,2024-01-02,1e308\nd,2024-02-02,1e308\n").encode(),
        ["'amount'", "2 of 7 rows above 1e+12"],
    ),
    "infinite amount": (
        "orders.csv",
        (HEADER + GOOD_ROWS + "d,2024-01-02,inf\n").encode(),
        ["'amount'", "1 of 6"],
    ),
    "NaN amount": (
        "orders.csv",
        (HEADER + GOOD_ROWS + "d,2024-01-02,NaN\n").encode(),
        ["'amount'", "1 of 6"],
    ),
    "negative amounts only": ("orders.csv", (HEADER + "a,2024-01-01,-5\n").encode(), ["no positive amount"]),
    "no repeat buyers": (
        "orders.csv",
        (HEADER + "".join(f"c{i},2024-01-{1 + i % 28:02d},{5 + i}\n" for i in range(60))).encode(),
        ["repeat buyers"],
    ),
    "a single customer": (
        "orders.csv",
        (HEADER + "a,2024-01-01,10\na,2024-02-01,12\na,2024-03-01,8\n").encode(),
        ["customer"],
    ),
    "non-UTF-8 text": ("orders.csv", (HEADER + "José,2024-01-01,1\n").encode("utf-16"), ["UTF-8"]),
    "wrong extension": ("orders.xlsx", (HEADER + GOOD_ROWS).encode(), ["extension"]),
    "CSV named .parquet": ("orders.parquet", (HEADER + GOOD_ROWS).encode(), ["Parquet"]),
}


def _cli(module: str, args: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, synthetic_orders: pd.DataFrame) -> tuple[str, Path]:
    """One store with champions of both models, trained once from good data."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    good = folder / "good.csv"
    synthetic_orders.to_csv(good, index=False)
    trained = _cli(
        "customer_value.train",
        [
            "data=file",
            f"data.path={good}",
            f"tracking.artifact_root={folder / 'artifacts'}",
            "clv.backtest.folds=0",
        ],
        folder,
        uri,
    )
    assert trained.returncode == 0, trained.stderr
    return uri, folder


def _state(uri: str) -> tuple[int, dict[str, str]]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    versions = sum(
        len(client.search_model_versions(f"name='{m}'")) for m in ("customer-clv", "customer-segments")
    )
    champions = {
        m: client.get_model_version_by_alias(m, "champion").version
        for m in ("customer-clv", "customer-segments")
    }
    return versions, champions


def _one_error_line(result: subprocess.CompletedProcess, fragments: list[str], file_name: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert file_name in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_bad_input_fails_cleanly_in_train_and_score(
    store: tuple[str, Path], tmp_path: Path, case: str
) -> None:
    uri, folder = store
    name, content, fragments = CORPUS[case]
    path = tmp_path / name
    path.write_bytes(content)
    before = _state(uri)

    trained = _cli(
        "customer_value.train",
        ["data=file", f"data.path={path}", f"tracking.artifact_root={folder / 'artifacts'}"],
        tmp_path,
        uri,
    )
    _one_error_line(trained, fragments, name)
    runs = mlflow.search_runs(
        experiment_names=["customer-clv", "customer-segments"], order_by=["start_time DESC"]
    )
    assert runs.iloc[0]["status"] == "FAILED"
    assert _state(uri) == before

    output = tmp_path / "scores.parquet"
    scored = _cli(
        "customer_value.score",
        ["data=file", f"data.path={path}", f"score.output={output}"],
        tmp_path,
        uri,
    )
    if case in {"no repeat buyers", "a single customer"}:  # valid logs: scoring them is fine
        assert scored.returncode == 0, scored.stderr[-2000:]
        assert output.exists()
    else:
        _one_error_line(scored, fragments, name)
        assert not list(tmp_path.glob("scores*")) and not list(tmp_path.glob(".scores*"))
    assert _state(uri) == before


def test_a_horizon_beyond_the_bound_is_one_line_before_any_work(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    """`score.horizon_days=1e9` ran for more than nine minutes at 1.5 GiB; now score and train refuse it
    with one line, before a champion is loaded or a row is read, and nothing is written or registered."""
    uri, folder = store
    before = _state(uri)
    output = tmp_path / "scores.parquet"
    scored = _cli("customer_value.score", ["score.horizon_days=1e9", f"score.output={output}"], tmp_path, uri)
    _one_error_line(scored, ["beyond the bound of 7,305 days (20 years)"], "score.horizon_days=1e+09")
    assert not list(tmp_path.glob("scores*")) and not list(tmp_path.glob(".scores*"))
    trained = _cli(
        "customer_value.train",
        ["clv.horizon_days=1e9", f"tracking.artifact_root={folder / 'artifacts'}"],
        tmp_path,
        uri,
    )
    _one_error_line(trained, ["beyond the bound of 7,305 days"], "clv.horizon_days=1e+09")
    assert _state(uri) == before
