"""REST serving (`make serve`): `mlflow models serve` on the CLV champion answers like batch scoring.

The champion of the covariate store (trained with channel and tenure_score from a customer file: the
widest input a CLV model takes) is served on a free port with the local environment (as the Makefile does)
and sent real HTTP requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from customer_value.data.features import customer_features
from customer_value.data.loading import load_transactions
from customer_value.jobs.score import score_customers
from customer_value.models.clv.btyd import INPUT_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS
from customer_value.privacy.hashing import suppression_hashes
from customer_value.privacy.suppression_list import SuppressionList
from customer_value.schema import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
COVARIATES = ["channel", "tenure_score"]  # the covariate store's (conftest.COVARIATE_OVERRIDES)
MLFLOW = Path(sys.executable).with_name("mlflow")
pytestmark = pytest.mark.slow
SERVING_KEY = b"the served model's privacy key in these tests"


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def served_champion(
    tmp_path_factory: pytest.TempPathFactory, covariate_store
) -> Iterator[tuple[str, object, Path, Path]]:
    """`mlflow models serve` (the Makefile's command) on a copy of the covariate store's champion; one
    server for the module, killed in teardown."""
    tmp_path = tmp_path_factory.mktemp("serving")
    orders_csv = covariate_store.orders_csv
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(covariate_store.database, tmp_path / "mlruns" / "mlflow.db")
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    customers = next(o for o in covariate_store.overrides if o.startswith("data.customers.path="))
    overrides = ["data=file", f"data.path={orders_csv}", customers, f"tracking.uri={tracking_uri}"]
    port = _free_port()
    command = [str(MLFLOW), "models", "serve", "-m", "models:/customer-clv@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        # mlflow execs `uvicorn` by name: the venv's bin must be on PATH, as `make serve` puts it.
        env=os.environ
        | {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_REGISTRY_URI": tracking_uri,  # mlflow.set_registry_uri exports it: not another test's
            "PATH": f"{MLFLOW.parent}:{os.environ['PATH']}",
            # as `make serve` points it at the project's list (written by a test when it needs one)
            "CUSTOMER_VALUE_SUPPRESSION_LIST": str(tmp_path / "suppression.csv"),
            "PRIVACY_KEY": SERVING_KEY.decode(),
        },
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so teardown also ends the uvicorn worker
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield (
            url,
            _compose("score", [*overrides, "score.horizon_days=90"]),
            orders_csv,
            tmp_path / "suppression.csv",
        )
    finally:
        _end_group(process)
        log.close()


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow and its uvicorn), SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue


def test_rest_predictions_equal_batch_scoring(served_champion: tuple[str, object, Path, Path]) -> None:
    url, score_cfg, orders_csv, _ = served_champion
    batch = score_customers(score_cfg).set_index("customer_id")

    orders, _ = load_transactions(orders_csv)
    features = customer_features(orders, orders["date"].max())  # as the score job does: as of the last day
    customers = pd.read_csv(orders_csv.with_name("customers.csv"), index_col="customer_id")
    features = features.join(customers[COVARIATES])
    chosen = features.iloc[::75]  # 20 customers, from one-time buyers to the most frequent
    assert len(chosen) == 20 and chosen["frequency"].nunique() > 3 and chosen["channel"].nunique() == 3
    payload = {
        "dataframe_split": chosen[[*INPUT_COLUMNS, *COVARIATES]]
        .reset_index(drop=True)
        .to_dict(orient="split"),
        "params": {"horizon_days": 90.0},
    }
    status, body = _post(f"{url}/invocations", payload)
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert len(served) == len(chosen)
    expected = batch.loc[chosen.index]
    for column in [*PREDICTION_COLUMNS, *INTERVAL_COLUMNS]:
        np.testing.assert_allclose(
            served[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9, err_msg=column
        )

    # Without params the served model uses its registered default horizon (365 days): different values.
    status, default = _post(f"{url}/invocations", {"dataframe_split": payload["dataframe_split"]})
    assert status == 200
    assert (
        pd.DataFrame(default["predictions"])["expected_purchases"].sum() > served["expected_purchases"].sum()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows.drop(columns="T_days"), "T_days"),
        (lambda rows: rows.drop(columns="channel"), "channel"),
        (lambda rows: rows.assign(monetary_value=[None] + [1.0] * (len(rows) - 1)), "missing or non-numeric"),
        (lambda rows: rows.assign(recency_days=rows["T_days"] + 1), "recency_days > T_days"),
    ],
    ids=["missing-column", "missing-covariate", "null-value", "recency-after-tenure"],
)
def test_bad_requests_get_a_4xx_with_a_clear_message_and_no_traceback(
    served_champion: tuple[str, object, Path, Path], change, message: str
) -> None:
    url, _, _, _ = served_champion
    rows = pd.DataFrame(
        {
            "frequency": [2.0, 0.0],
            "recency_days": [30.0, 0.0],
            "T_days": [60.0, 10.0],
            "monetary_value": [20.0, 0.0],
        }
    ).assign(mean_order_value=[21.0, 15.0], channel=["web", "email"], tenure_score=[0.5, -1.0])
    rows = rows[[*INPUT_COLUMNS, *COVARIATES]]
    status, body = _post(f"{url}/invocations", {"dataframe_split": change(rows).to_dict(orient="split")})
    assert 400 <= status < 500, body
    assert message in body["message"]
    assert "Traceback" not in json.dumps(body) and "stack_trace" not in body


def test_a_bad_horizon_parameter_is_a_400(served_champion: tuple[str, object, Path, Path]) -> None:
    url, _, _, _ = served_champion
    rows = {"columns": [*INPUT_COLUMNS, *COVARIATES], "data": [[2.0, 30.0, 60.0, 20.0, 21.0, "web", 0.5]]}
    status, body = _post(f"{url}/invocations", {"dataframe_split": rows, "params": {"horizon_days": -3}})
    assert status == 400 and "horizon_days must be positive, got -3.0" in body["message"]
    assert "Traceback" not in json.dumps(body)


def test_a_horizon_beyond_the_bound_is_a_400_at_once(served_champion: tuple[str, object, Path, Path]) -> None:
    """horizon_days=1e9 in one request held the only worker past a 30 s client timeout; now it is refused
    before any work, and the worker answers the next request."""
    url, _, _, _ = served_champion
    rows = {"columns": [*INPUT_COLUMNS, *COVARIATES], "data": [[2.0, 30.0, 60.0, 20.0, 21.0, "web", 0.5]]}
    status, body = _post(f"{url}/invocations", {"dataframe_split": rows, "params": {"horizon_days": 1e9}})
    assert status == 400, body
    assert "horizon_days=1e+09 is beyond the bound of 7,305 days (20 years)" in body["message"]
    assert "Traceback" not in json.dumps(body)
    status, body = _post(f"{url}/invocations", {"dataframe_split": rows, "params": {"horizon_days": 7305.0}})
    assert status == 200 and len(body["predictions"]) == 1


def test_a_request_naming_customers_gets_their_ids_and_none_on_the_suppression_list(
    served_champion: tuple[str, object, Path, Path],
) -> None:
    """Ids in the request come back in the answer; after a customer is listed (as make forget does, while
    the server runs) the next answer has no row for them and the others' values are unchanged."""
    url, _, orders_csv, suppression = served_champion
    orders, _ = load_transactions(orders_csv)
    features = customer_features(orders, orders["date"].max())
    customers = pd.read_csv(orders_csv.with_name("customers.csv"), index_col="customer_id")
    chosen = features.join(customers[COVARIATES]).iloc[:6]
    rows = chosen[[*INPUT_COLUMNS, *COVARIATES]].reset_index()  # customer_id first, as a CRM would send
    payload = {"dataframe_split": rows.to_dict(orient="split"), "params": {"intervals": False}}
    status, body = _post(f"{url}/invocations", payload)
    assert status == 200, body
    before = pd.DataFrame(body["predictions"])
    assert before["customer_id"].tolist() == chosen.index.astype(str).tolist()
    forgotten = chosen.index[2]
    listed, _ = SuppressionList.read(suppression).with_added(
        suppression_hashes([forgotten], SERVING_KEY), "erasure", "2026-12-06", SERVING_KEY
    )
    listed.write()
    status, body = _post(f"{url}/invocations", payload)
    assert status == 200, body
    after = pd.DataFrame(body["predictions"])
    assert forgotten not in after["customer_id"].tolist() and len(after) == len(chosen) - 1
    pd.testing.assert_frame_equal(after, before[before["customer_id"] != forgotten].reset_index(drop=True))
    status, plain = _post(
        f"{url}/invocations", {"dataframe_split": rows.drop(columns="customer_id").to_dict(orient="split")}
    )
    assert status == 200 and "customer_id" not in plain["predictions"][0]  # no ids asked about: as before
    suppression.unlink()
