"""Privacy by design (issue 29): objections and missing consent honoured, customers forgotten on request
(keyed hashes on a suppression list, every output rewritten), pseudonymised extracts, counts logged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from customer_value.errors import DataError, UserError
from customer_value.jobs import campaign as campaign_job
from customer_value.jobs import campaign_report as report_job
from customer_value.jobs import forget as forget_job
from customer_value.jobs import monitor as monitor_job
from customer_value.jobs import reporting
from customer_value.jobs import score as score_job
from customer_value.jobs import train as train_job
from customer_value.privacy.erasure import read_request_ids
from customer_value.privacy.hashing import key_id, privacy_key, pseudonyms, suppression_hashes
from customer_value.privacy.suppression import Suppression
from customer_value.privacy.suppression_list import SuppressionList
from test_end_to_end import PLUMBING_ONLY

KEY = b"a fixed privacy key for these tests"


def test_each_excluded_customer_is_counted_once_under_its_first_reason() -> None:
    ids = pd.Series(["a", "a", "b", "c", "d", "e", "f"])
    rules = Suppression(
        objecting=frozenset({"b", "c"}),
        consenting=frozenset({"a", "b", "c", "d"}),  # e and f did not consent
        listed=frozenset(suppression_hashes(["c", "f"], KEY)),
        key=KEY,
    )
    kept, counts = rules.exclude(pd.DataFrame({"customer_id": ids, "amount": range(7)}))
    assert kept["customer_id"].tolist() == ["a", "a", "d"]
    assert counts == {"erased": 2, "objection": 1, "no_consent": 1}  # c erased and objecting: once
    assert Suppression().exclude(pd.DataFrame({"customer_id": ids}))[1] == {
        "erased": 0,
        "objection": 0,
        "no_consent": 0,
    }


def test_hashes_and_pseudonyms_are_keyed_distinct_and_stable() -> None:
    assert pseudonyms(["c1"], KEY) == pseudonyms(["c1"], KEY) != pseudonyms(["c1"], b"another key")
    (pseudonym,) = pseudonyms(["c1"], KEY)
    assert re.fullmatch(r"ps_[0-9a-f]{32}", pseudonym)
    (hashed,) = suppression_hashes(["c1"], KEY)
    assert len(hashed) == 64 and hashed[:32] != pseudonym[3:]  # one derived key per purpose


def test_a_request_file_is_read_or_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "column.csv").write_text("name,customer_id\nx, c1 \ny,c2\nz,c1\n")
    assert read_request_ids(tmp_path / "column.csv") == ["c1", "c2"]
    (tmp_path / "lines.txt").write_text("c7\nc8\n")  # one id per line, no header: the first is an id
    assert read_request_ids(tmp_path / "lines.txt") == ["c7", "c8"]
    refusals = {
        "missing.csv": "no such file",
        "empty.csv": "empty; give one customer id per line",
        "two.csv": "has 2 columns but none named customer_id",
        "blank.csv": "column customer_id is blank in 1 of 2 rows",
    }
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "two.csv").write_text("a,b\n1,2\n")
    (tmp_path / "blank.csv").write_text("customer_id,x\nc1,1\n ,2\n")
    for name, message in refusals.items():
        with pytest.raises(DataError, match=message):
            read_request_ids(tmp_path / name)


def test_a_lost_or_swapped_key_is_refused_rather_than_letting_customers_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRIVACY_KEY", raising=False)
    key_file = tmp_path / "privacy.key"
    key = privacy_key(key_file)  # created on first use, 0600
    assert key_file.stat().st_mode & 0o777 == 0o600
    listed, new = SuppressionList.read(tmp_path / "list.csv").with_added(
        suppression_hashes(["c1"], key), "erasure", "2026-12-06", key
    )
    listed.write()
    assert new == 1 and (tmp_path / "list.csv").stat().st_mode & 0o777 == 0o600
    assert SuppressionList.read(tmp_path / "list.csv").entries["key_id"].tolist() == [key_id(key)]
    key_file.unlink()
    with pytest.raises(UserError, match="privacy key .* is missing but the suppression list holds 1 keyed"):
        privacy_key(key_file, list_entries=1)
    with pytest.raises(UserError, match="1 of 1 entries were hashed with another privacy key"):
        SuppressionList.read(tmp_path / "list.csv").check_key(b"another key")


# The world of the end-to-end test: 800 generated customers, some renamed so that their ids are tokens a
# byte search cannot meet by chance.
OBJECTING = [f"OBJ7731x{i}" for i in range(5)]
REFUSED_CONSENT = [f"NOC5520x{i}" for i in range(5)]
ABSENT = [f"ABS3301x{i}" for i in range(3)]  # not in the customer file: no consent recorded
ERASED = [f"ERA9914x{i}" for i in range(5)]  # forgotten on request after the first scoring


def _world(tmp_path: Path, synthetic_orders: pd.DataFrame) -> tuple[Path, Path]:
    renamed = dict(
        zip([f"c{i}" for i in range(10, 28)], OBJECTING + REFUSED_CONSENT + ABSENT + ERASED, strict=True)
    )
    orders = synthetic_orders.assign(customer_id=synthetic_orders["customer_id"].replace(renamed))
    orders_csv = tmp_path / "orders.csv"
    orders.to_csv(orders_csv, index=False)
    customers = pd.DataFrame({"customer_id": sorted(set(orders["customer_id"]) - set(ABSENT))})
    customers["opt_out"] = customers["customer_id"].isin(OBJECTING).map({True: "yes", False: ""})
    customers["marketing_consent"] = ~customers["customer_id"].isin(REFUSED_CONSENT)
    customers_csv = tmp_path / "customers.csv"
    customers.to_csv(customers_csv, index=False)
    return orders_csv, customers_csv


def _traces(folder: Path, tokens: list[str], skip: set[Path]) -> list[str]:
    """Where any token appears under ``folder``: in a file's bytes, or in a Parquet file's decoded cells
    (its pages are compressed)."""
    pattern = re.compile("|".join(map(re.escape, tokens)).encode())
    found = []
    for path in folder.rglob("*"):
        if not path.is_file() or path in skip:
            continue
        if pattern.search(path.read_bytes()):
            found.append(str(path))
        elif path.suffix == ".parquet":
            text = pq.read_table(path).to_pandas().astype(str).to_csv().encode()
            if pattern.search(text):
                found.append(str(path))
    return found


@pytest.mark.slow
def test_objecting_nonconsenting_and_forgotten_customers_leave_no_trace(
    tracking_uri: str, synthetic_orders: pd.DataFrame, tmp_path: Path, job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train, score (a pseudonymised extract too), campaign, forget five customers, rescore with their
    orders still in the log, monitor, measure the campaign: none of the suppressed customers, by id or
    pseudonym, is in any output, report, MLflow run or artifact, and every run counts them (not who)."""
    monkeypatch.setenv("PRIVACY_KEY", KEY.decode())
    monkeypatch.setenv("CAMPAIGN_KEY", "a fixed campaign key")
    orders_csv, customers_csv = _world(tmp_path, synthetic_orders)
    data = ["data=file", f"data.path={orders_csv}", f"data.customers.path={customers_csv}"]
    privacy = ["privacy.objection_column=opt_out", "privacy.consent_column=marketing_consent"]
    trained = job(
        train_job.main,
        [*data, *privacy, f"tracking.artifact_root={tmp_path / 'artifacts'}", *PLUMBING_ONLY],
        tmp_path,
        tracking_uri,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    client = MlflowClient(tracking_uri)
    for experiment in ("customer-clv", "customer-segments"):
        (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert run.data.metrics["privacy.excluded.objection"] == 5
        assert run.data.metrics["privacy.excluded.no_consent"] == 8  # refused 5, absent from the file 3

    scores, extract = tmp_path / "scores" / "scores.parquet", tmp_path / "scores" / "extract.csv"
    score = [*data, *privacy, "score.intervals=false"]
    for output, extra in ((scores, []), (extract, ["score.pseudonymise=true", "score.report=false"])):
        done = job(score_job.main, [*score, f"score.output={output}", *extra], tmp_path, tracking_uri)
        assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_parquet(scores)
    assert len(table) == 800 - 13 and set(ERASED) <= set(table["customer_id"])
    shared = pd.read_csv(extract)
    assert shared["customer_id"].str.fullmatch(r"ps_[0-9a-f]{32}").all()
    assert set(shared["customer_id"]) == set(pseudonyms(table["customer_id"], KEY))
    crm = pd.read_parquet(reporting.membership_path(extract))  # the CRM's membership keeps the real ids
    assert crm["customer_id"].tolist() == table["customer_id"].astype(str).tolist()
    last_day = pd.to_datetime(synthetic_orders["timestamp"]).max().normalize()
    start = (last_day - pd.Timedelta(days=120)).date()
    campaign = [
        f"campaign.scores={scores}",
        "campaign.id=privacy",
        f"campaign.output_dir={tmp_path / 'campaigns'}",
        "campaign.audience=[{name: everyone, where: {churn_probability: {min: 0}}}]",
        f"campaign.start={start}",
    ]
    assert job(campaign_job.main, campaign, tmp_path, tracking_uri).returncode == 0
    listed = pd.concat(pd.read_parquet(p) for p in (tmp_path / "campaigns" / "privacy").glob("*/*.parquet"))
    assert set(ERASED) & set(listed["customer_id"])  # before the request they are in the lists

    archive = tmp_path / "archive" / "before.parquet"  # a user's copy outside forget.outputs
    archive.parent.mkdir()
    archive.write_bytes(scores.read_bytes())
    extract.chmod(0o600)  # a private extract stays private when rewritten
    (tmp_path / "scores" / "broken.parquet").write_bytes(b"not parquet")
    request = tmp_path / "request.csv"
    pd.DataFrame({"customer_id": ERASED}).to_csv(request, index=False)
    forgot = job(forget_job.main, [f"forget.ids={request}"], tmp_path, tracking_uri)
    # A table it cannot read: the others are done, then one line naming it and exit 1.
    assert forgot.returncode == 1 and "1 table(s) could not be read" in forgot.stderr, forgot.stderr
    assert "broken.parquet" in forgot.stderr and "Traceback" not in forgot.stderr
    assert "forget: 5 customer(s) added to the suppression list" in forgot.stdout
    assert re.search(r"scores\.parquet: removed 5 row\(s\), 782 left", forgot.stdout)
    assert re.search(r"extract\.csv: removed 5 row\(s\), 782 left", forgot.stdout)
    assert extract.stat().st_mode & 0o777 == 0o600
    assert not any(token in forgot.stdout + forgot.stderr for token in ERASED)
    (tmp_path / "scores" / "broken.parquet").unlink()
    again = job(forget_job.main, [f"forget.ids={request}"], tmp_path, tracking_uri)  # idempotent
    assert again.returncode == 0 and "forget: 0 customer(s) added" in again.stdout
    assert "no output under" in again.stdout

    # Their orders are still in the log: a rescore leaves them out and counts them.
    rescored = job(score_job.main, [*score, f"score.output={scores}"], tmp_path, tracking_uri)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    assert len(pd.read_parquet(scores)) == 800 - 18
    scoring_runs = client.search_runs(
        [client.get_experiment_by_name("customer-scoring").experiment_id], order_by=["start_time DESC"]
    )
    assert scoring_runs[0].data.metrics["privacy.excluded.erased"] == 5
    assert scoring_runs[0].data.metrics["privacy.excluded.objection"] == 5
    reported = job(report_job.main, [*data, *privacy, "report.campaign_id=privacy"], tmp_path, tracking_uri)
    assert reported.returncode == 0, reported.stderr[-2000:]
    # Monitoring the rescored table, the pseudonymised extract and the archived copy that still holds the
    # forgotten: each without them (the extract's ids met through their pseudonyms).
    watched = f"monitor.scores=[{scores},{extract},{archive}]"
    monitored = job(monitor_job.main, [*data, *privacy, watched], tmp_path, tracking_uri)
    assert monitored.returncode == 0, monitored.stderr[-2000:]
    monitor_runs = client.search_runs([client.get_experiment_by_name("customer-monitoring").experiment_id])
    assert len(monitor_runs) == 3
    assert all(run.data.metrics["privacy.excluded.erased"] == 5 for run in monitor_runs)
    assert {run.info.status for run in monitor_runs} == {"FINISHED"}
    archive.unlink()  # the user's copy: theirs to erase (the byte search below covers what the jobs wrote)
    campaign_run = client.search_runs([client.get_experiment_by_name("customer-campaigns").experiment_id])[0]
    assert campaign_run.data.metrics["lift.privacy.excluded.erased"] == 0  # forget already took them out

    suppressed = OBJECTING + REFUSED_CONSENT + ABSENT + ERASED
    tokens = suppressed + pseudonyms(suppressed, KEY)
    inputs = {orders_csv, customers_csv, request}
    assert _traces(tmp_path, tokens, skip=inputs) == []  # outputs, reports, lists, MLflow db and artifacts
    assert _traces(tmp_path, pseudonyms(table["customer_id"].head(50), KEY), skip=inputs) == [str(extract)]
    # The search does find what is there: the log's ids, and a kept customer's id inside Parquet pages.
    assert str(orders_csv) in _traces(tmp_path, ERASED, skip=set())
    assert str(scores) in _traces(tmp_path, [table["customer_id"].iloc[-1]], skip=inputs)


def test_forget_on_a_missing_file_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """The command as a user types it (``__main__`` turns --ids into the override)."""
    env = {k: v for k, v in os.environ.items() if k != "PRIVACY_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "customer_value.privacy", "forget", "--ids", "nope.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1 and done.stderr.strip() == (
        "error: nope.csv: no such file (forget --ids needs a file of customer ids)"
    )
    assert not (tmp_path / ".secrets").exists()  # no key made, no list written


def test_jobs_turn_mlflow_telemetry_off_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    from customer_value.jobs.entrypoint import run_job
    from customer_value.telemetry import OFF, telemetry_off

    for name in OFF:  # set, then removed: the teardown puts back exactly what was there before
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    seen = run_job(lambda cfg: {name: os.environ.get(name) for name in OFF}, None)
    assert seen == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    assert telemetry_off({"MLFLOW_DISABLE_TELEMETRY": "false"}) == {"MLFLOW_DISABLE_TELEMETRY": "false"}
    assert telemetry_off({"DO_NOT_TRACK": "false"}) == {"DO_NOT_TRACK": "false"}


def test_two_forgets_at_once_take_turns_on_the_list(tmp_path: Path) -> None:
    """The list's lock: a second read-modify-write waits for the first (else one request is lost)."""
    import threading
    import time

    order: list[str] = []
    path = tmp_path / "list.csv"

    def hold(name: str, seconds: float) -> None:
        with SuppressionList.locked(path):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a", 0.3))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=hold, args=("b", 0.0))
    second.start()
    first.join()
    second.join()
    assert order == ["a in", "a out", "b in", "b out"]


def test_a_chunk_without_any_third_reason_does_not_break_the_parquet_file(tmp_path: Path) -> None:
    from customer_value.jobs.atomic_files import write_chunks_atomically
    from customer_value.jobs.score import typed_text

    empty = pd.DataFrame({"customer_id": ["a"], "reason_3": pd.Series([None], dtype=object)})
    full = pd.DataFrame({"customer_id": ["b"], "reason_3": ["last purchase 3 days ago"]})
    output, rows = write_chunks_atomically([typed_text(empty), typed_text(full)], tmp_path / "t.parquet")
    assert rows == 2 and pd.read_parquet(output)["reason_3"].tolist()[1] == "last purchase 3 days ago"


def test_a_scoring_during_which_a_forget_ran_writes_nothing(
    trained_tracking_uri: str, trained_store, tmp_path: Path, job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list read at the start no longer holds at the end: the scoring stops, its files not swapped in
    (else a table holding the just-forgotten customers would replace the one forget cleaned)."""
    stamps = iter([None, (1, 64)])  # before: no list; at the commit: one written meanwhile
    monkeypatch.setattr(score_job.SuppressionList, "stamp", staticmethod(lambda path: next(stamps)))
    output = tmp_path / "scores" / "scores.parquet"
    args = ["data=file", f"data.path={trained_store.orders_csv}", f"score.output={output}"]
    done = job(score_job.main, [*args, "score.intervals=false"], tmp_path, trained_tracking_uri)
    assert done.returncode == 1 and "changed while scoring (a forget ran): nothing written" in done.stderr
    assert not (tmp_path / "scores").exists() or not any((tmp_path / "scores").iterdir())


def test_a_migration_between_plain_and_pseudonymised_scorings_is_refused_in_one_line() -> None:
    """Matched by id, a plain and a pseudonymised scoring share no customer: said, not an empty migration."""
    from customer_value.jobs.score import _same_kind_of_ids

    plain = pd.DataFrame({"customer_id": ["c1", "c2"]})
    masked = pd.DataFrame({"customer_id": pseudonyms(["c1", "c2"], KEY)})
    _same_kind_of_ids(plain, plain, Path("before.parquet"))
    _same_kind_of_ids(masked, masked, Path("before.parquet"))
    with pytest.raises(UserError, match="before.parquet has plain ids and this scoring pseudonymised ones"):
        _same_kind_of_ids(plain, masked, Path("before.parquet"))
