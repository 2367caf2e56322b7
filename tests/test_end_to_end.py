"""train -> register -> score on generated data against a temporary MLflow store, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from customer_value.data.features import customer_features
from customer_value.data.loading import load_transactions
from customer_value.errors import ModelFitError, UserError
from customer_value.jobs import score as score_job
from customer_value.jobs import train as train_job
from customer_value.jobs.atomic_files import write_chunks_atomically
from customer_value.jobs.reporting import REPORT_ARTIFACT
from customer_value.jobs.score import score, score_customers
from customer_value.jobs.train import train
from customer_value.models.clv.btyd import INTERVAL_COLUMNS, PREDICTION_COLUMNS, CLVParams
from customer_value.models.clv.churn_layer import ChurnLayer
from customer_value.models.clv.churn_selection import ChurnSelector
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.value_layer import ValueLayer
from customer_value.schema import CLV_FAMILIES, register_configs
from customer_value.tracking import registry
from customer_value.tracking.pyfunc import clv_spec

if TYPE_CHECKING:
    from conftest import TrainedStore

CONF = Path(__file__).resolve().parents[1] / "conf"
pytestmark = pytest.mark.slow


# What a job can skip when a test is about the command and the store, not about the models.
PLUMBING_ONLY = [
    "clv.backtest.folds=0",
    "clv.intervals.draws=0",
    "segmentation.n_clusters=4",
    "segmentation.stability.bootstrap_resamples=0",
    "tracking.plots=false",  # more than half of such a train's time (3.4 s of 7 s, 800 customers)
]


def _overrides(orders_csv: Path, tracking_uri: str, tmp_path: Path) -> list[str]:
    return [
        "data=file",
        f"data.path={orders_csv}",
        f"tracking.uri={tracking_uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
    ]


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def _cli(module: str, args: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _runs(experiment: str) -> pd.DataFrame:
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


def test_train_then_score(trained_store: TrainedStore, trained_tracking_uri: str, tmp_path: Path) -> None:
    """What the shared trained store's run recorded and registered, then scoring with its champions."""
    orders_csv, tracking_uri = trained_store.orders_csv, trained_tracking_uri
    overrides = [*_overrides(orders_csv, tracking_uri, tmp_path), *trained_store.overrides]
    metrics = trained_store.metrics
    assert mlflow.active_run() is None

    for name in ("r", "alpha", "a", "b", "p", "q", "v"):
        assert metrics[f"fitted.{name}"] > 0 and metrics[f"refit.{name}"] > 0
    for name in (
        "aggregate_purchase_error_pct",
        "purchases_mae",
        "churn_auc",
        "revenue_spearman",
        "top_decile_revenue_capture",
    ):
        assert f"holdout.{name}" in metrics and f"baseline.{name}" in metrics
    assert 0.5 < metrics["holdout.churn_auc"] <= 1 and 0 <= metrics["holdout.churn_brier"] < 0.25
    # k=4 clusters; a pair a marketer could not tell apart on the KPIs may have been merged.
    assert 3 <= metrics["segments.n_segments"] <= 4 and metrics["segments.min_distinctness"] >= 0.5
    assert {"segments.silhouette", "segments.davies_bouldin", "segments.calinski_harabasz"} <= set(metrics)

    client = MlflowClient()
    for experiment, model in (("customer-clv", "customer-clv"), ("customer-segments", "customer-segments")):
        run = _runs(experiment).iloc[-1]
        assert run["status"] == "FINISHED"
        assert run["tags.mlflow.source.git.commit"]
        assert run["params.data.path"] == str(orders_csv)
        artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
        assert {"config", "data", "plots"} <= artifacts
        champion = client.get_model_version_by_alias(model, "champion")
        assert champion.run_id == run["run_id"]
        assert run["tags.registered.gate.alias"] == "champion"
        assert run["tags.registered.version"] == str(champion.version)
    clv_run = _runs("customer-clv").iloc[-1]
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(clv_run["run_id"], "plots")}
    assert {
        "purchases_by_frequency.png",
        "churn_by_decile.png",
        "gains_chart.png",
        "p_alive_matrix.png",
        "expected_purchases_matrix.png",
        "cumulative_repeat_purchases.png",
    } <= plots
    assert clv_run["params.time_unit"] == "weeks"
    assert clv_run["tags.data.content_hash"]
    summary = mlflow.artifacts.load_dict(f"runs:/{clv_run['run_id']}/data/summary.json")
    assert summary["customers"] == 800 and summary["dropped"] == {"negative_amount": 0, "zero_amount": 0}
    profile = mlflow.artifacts.load_text(
        f"runs:/{_runs('customer-segments').iloc[-1]['run_id']}/segments/profile.csv"
    )
    assert "c0" not in profile  # aggregates only, no customer ids
    table = pd.read_csv(io.StringIO(profile))
    assert {"segment_name", "recommended_action", "mean_clv", "mean_churn_probability", "value_share"} <= set(
        table.columns
    )
    assert (
        table["value_share"].sum() == pytest.approx(1.0) and table["recommended_action"].str.len().min() > 0
    )

    score_overrides = [*overrides[:2], f"tracking.uri={tracking_uri}", "score.horizon_days=90"]
    table = score_customers(_compose("score", score_overrides))
    assert len(table) == 800 and table["customer_id"].is_unique
    segment_inputs = (
        mlflow.pyfunc.load_model("models:/customer-segments@champion")
        .unwrap_python_model()
        .model.input_columns
    )
    parts = [f"margin_part.{column}" for column in segment_inputs]
    expected = [
        "customer_id",
        "segment",
        "segment_name",
        "segment_margin",  # why this segment: see tests/test_explanations.py
        "runner_up_segment",
        "reason_1",
        "reason_2",
        "reason_3",
        *parts,
        *PREDICTION_COLUMNS,
        *INTERVAL_COLUMNS,
        "next_purchase_date",
        "horizon_days",
        "as_of",
        "clv_model_version",
        "segments_model_version",
    ]
    assert list(table.columns) == expected
    assert np.allclose(table[parts].sum(axis=1), table["segment_margin"], rtol=1e-12, atol=1e-12)
    assert (table["segment_margin"] >= 0).all() and table["reason_1"].notna().all()
    assert (table["horizon_days"] == 90).all()
    assert table["churn_probability"].between(0, 1).all() and (table["clv"] >= 0).all()
    as_of = pd.read_csv(orders_csv, parse_dates=["timestamp"])["timestamp"].max().normalize()
    assert table["as_of"].iloc[0] == as_of
    days_ahead = (table["next_purchase_date"] - as_of).dt.days
    assert ((days_ahead - table["next_purchase_days"]).abs() <= 0.5).all()
    # The champion scores with the full-history refit, not the calibration fit.
    fitted = {k[len("refit.") :]: v for k, v in metrics.items() if k.startswith("refit.")}
    purchase = {k: fitted[k] for k in ("r", "alpha", "a", "b")}
    refit = CLVParams("bgnbd", purchase, {k: fitted[k] for k in ("p", "q", "v")}, 7.0)
    orders, _ = load_transactions(orders_csv)
    champion_model = mlflow.pyfunc.load_model("models:/customer-clv@champion").unwrap_python_model()
    # Learned before the calibration end, each kept only when it passed its check (None = dropped).
    stored = {name: champion_model.spec[f"{name}_layer"] for name in ("churn", "value")}
    churn_layer = None if stored["churn"] is None else ChurnLayer.from_dict(stored["churn"])
    value_layer = None if stored["value"] is None else ValueLayer.from_dict(stored["value"])
    kept = {name for name, layer in stored.items() if layer is not None}
    assert set(clv_run["tags.clv.layers"].split(",")) - {"none"} == kept
    assert churn_layer is None and "tags.clv.layers.churn" not in clv_run  # a candidate of clv.churn now
    assert clv_run["tags.clv.layers.value"].startswith("kept (" if "value" in kept else "dropped (")
    # The churn output: the bands the scoring fit chose on the whole history, as its run tag says.
    selector = ChurnSelector.from_dict(champion_model.spec["churn_selector"])
    assert clv_run["tags.clv.churn.scoring_selection"] == selector.describe()
    expected_model = CLVModel.from_params(refit, 0.10, 365.25 / 12, churn_layer, value_layer)
    expected_model.churn_selector_ = selector
    expected_values = expected_model.predict(customer_features(orders, as_of), 90.0)
    for column in PREDICTION_COLUMNS:
        np.testing.assert_allclose(table[column].to_numpy(), expected_values[column].to_numpy(), rtol=1e-9)
    # Intervals: logged coverage on the holdout, and ordered around the point in the scoring table.
    assert 0.85 <= metrics["holdout.purchases_interval_coverage"] <= 1.0
    assert metrics["holdout.clv_interval_relative_width"] > 0
    assert (table["clv_low"] <= table["clv"]).all() and (table["clv"] <= table["clv_high"]).all()
    assert (table["clv_high"] > table["clv_low"]).any()
    assert (table["purchases_low"] <= table["purchases_high"]).all()
    # Written in chunks of 37 customers (22 chunks, the last one short): the same table, to Parquet and CSV.
    for suffix in ("parquet", "csv"):
        output = tmp_path / f"chunked.{suffix}"
        score(_compose("score", [*score_overrides, "score.chunk_customers=37", f"score.output={output}"]))
        written = (
            pd.read_parquet(output)
            if suffix == "parquet"
            else pd.read_csv(output, dtype={"customer_id": str})
        )
        assert list(written.columns) == expected and len(written) == 800
        for column in PREDICTION_COLUMNS:
            np.testing.assert_allclose(written[column].to_numpy(), table[column].to_numpy(), rtol=1e-12)
        assert (written["segment_name"] == table["segment_name"]).all()
        assert (written["customer_id"].astype(str) == table["customer_id"].astype(str)).all()

    # A second identical run ties the champion: it becomes the challenger, the champion stays.
    train(_compose("train", overrides))
    assert client.get_model_version_by_alias("customer-clv", "champion").version == 1
    assert client.get_model_version_by_alias("customer-clv", "challenger").version == 2


def test_cli_train_and_score(orders_csv: Path, tracking_uri: str, tmp_path: Path) -> None:
    """The two commands end to end (a bad file through the same commands: tests/test_bad_inputs.py)."""
    overrides = _overrides(orders_csv, tracking_uri, tmp_path)
    trained = _cli("customer_value.train", [*overrides, *PLUMBING_ONLY], tmp_path, tracking_uri)
    assert trained.returncode == 0, trained.stderr

    output = tmp_path / "out" / "scores.csv"
    scored = _cli(
        "customer_value.score",
        [*overrides[:2], f"score.output={output}", "score.as_of=2024-06-01"],
        tmp_path,
        tracking_uri,
    )
    assert scored.returncode == 0, scored.stderr
    assert "orders are later and not used" in scored.stdout + scored.stderr  # orders after as_of: said
    table = pd.read_csv(output)
    assert (table["as_of"] == "2024-06-01").all()
    assert table["horizon_days"].eq(365.0).all()
    written = sorted(p.name for p in output.parent.iterdir())
    # The table, its report, the CRM membership and change set (CSV and Parquet) and the id record;
    # no temporary leftovers.
    assert written == [
        "scores.changes.csv",
        "scores.changes.parquet",
        "scores.csv",
        "scores.membership.csv",
        "scores.membership.parquet",
        "scores.report.html",
        "scores.segment_ids.json",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600


def test_score_without_a_champion_is_a_clear_error(
    orders_csv: Path, tracking_uri: str, tmp_path: Path, job
) -> None:
    result = job(score_job.main, ["data=file", f"data.path={orders_csv}"], tmp_path, tracking_uri)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "customer-clv@champion" in result.stderr and "make train" in result.stderr


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    """A job failing after its first chunk was written (disk full, a bad chunk) leaves no file behind."""

    def chunks() -> Iterator[pd.DataFrame]:
        yield pd.DataFrame({"a": [1, 2]})
        raise OSError("disk full")

    for suffix in ("parquet", "csv"):
        with pytest.raises(OSError, match="disk full"):
            write_chunks_atomically(chunks(), tmp_path / f"scores.{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_gate_rescoring_replaces_a_worse_champion_and_skips_an_unfair_comparison(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """A planted champion that predicts frequent buyers are gone loses to a real fit on the same holdout;
    a champion whose calibration window is later than the new run's is not compared at all."""
    orders, _ = load_transactions(orders_csv)
    features = customer_features(orders, orders["date"].max())
    backwards = CLVParams(
        "bgnbd", {"r": 0.25, "alpha": 4.0, "a": 50.0, "b": 0.5}, {"p": 6.0, "q": 4.0, "v": 15.0}, 7.0
    )
    model = CLVModel.from_params(backwards, 0.1, 30.4375)
    spec = clv_spec(
        model, model, horizon_days=365, calibration_end="2000-01-01", trained_through="2000-01-01"
    )
    with mlflow.start_run():
        planted = registry.log_clv_model(spec, features)
    registry.register_with_gate(
        planted.model_uri, "customer-clv", alias="champion", metric="m", new_score=0.0, champion=None, tags={}
    )

    overrides = [*_overrides(orders_csv, tracking_uri, tmp_path), *PLUMBING_ONLY]  # the gate is the point
    metrics = train(_compose("train", overrides))
    client = MlflowClient()
    champion = client.get_model_version_by_alias("customer-clv", "champion")
    assert champion.version == 2
    assert champion.tags["gate.reason"] == "beats champion v1"
    assert float(champion.tags["gate.champion_score"]) < metrics["holdout.revenue_spearman"]

    train(_compose("train", [*overrides, "split.calibration_share=0.3"]))
    challenger = client.get_model_version_by_alias("customer-clv", "challenger")
    assert challenger.version == 3
    assert challenger.tags["gate.reason"].startswith("not compared: its calibration window ends")
    assert client.get_model_version_by_alias("customer-clv", "champion").version == 2


def test_a_job_that_fails_late_registers_nothing(
    orders_csv: Path, tracking_uri: str, tmp_path: Path, job
) -> None:
    """The segments stage fails after the CLV stage succeeded: exit 1 and no version of either model."""
    result = job(
        train_job.main,
        [
            *_overrides(orders_csv, tracking_uri, tmp_path),
            "segmentation.k_values=[]",
            "segmentation.n_clusters=5000",
            "clv.backtest.folds=0",  # plumbing: the CLV stage only has to succeed
            "clv.intervals.draws=0",
            "tracking.plots=false",
        ],
        tmp_path,
        tracking_uri,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "n_clusters=5000 but only 800 customers" in result.stderr
    assert MlflowClient().search_registered_models() == []
    assert _runs("customer-segments").iloc[-1]["status"] == "FAILED"


@pytest.mark.parametrize(
    ("module", "override", "message"),
    [
        ("customer_value.train", "split.calibration_end=not-a-date", "is not a date"),
        ("customer_value.train", "clv.horizon_days=-30", "clv.horizon_days must be > 0"),
        ("customer_value.score", "score.horizon_days=-5", "score.horizon_days must be > 0"),
        ("customer_value.score", "score.output=/proc/nope/x.csv", "cannot write there"),
    ],
    ids=["train-date", "train-horizon", "score-horizon", "score-output"],
)
def test_config_errors_are_one_line_without_traceback(
    request: pytest.FixtureRequest,
    orders_csv: Path,
    tmp_path: Path,
    job,
    module: str,
    override: str,
    message: str,
) -> None:
    # scoring needs champions to get as far as writing: the trained store's
    store = "trained_tracking_uri" if module == "customer_value.score" else "tracking_uri"
    tracking_uri = request.getfixturevalue(store)
    main = score_job.main if module == "customer_value.score" else train_job.main
    result = job(main, ["data=file", f"data.path={orders_csv}", override], tmp_path, tracking_uri)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in result.stderr.splitlines() if message in line)
    ]


def test_auto_family_keeps_the_best_on_an_inner_window(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """The family is chosen on an inner window inside calibration; the holdout then judges that one only."""
    quick = [o for o in PLUMBING_ONLY if not o.startswith("clv.backtest.")]  # its metrics are asserted
    overrides = [*_overrides(orders_csv, tracking_uri, tmp_path), "clv=auto", *quick]
    metrics = train(_compose("train", overrides))
    run = _runs("customer-clv").iloc[-1]
    scores = {family: metrics[f"family.{family}.inner.revenue_spearman"] for family in CLV_FAMILIES}
    assert run["tags.clv.chosen_family"] == max(scores, key=scores.get)
    assert run["tags.clv.family_selection"].startswith("inner_window ")
    assert not any(k.startswith("family.") and ".holdout." in k for k in metrics)
    assert {"backtest.churn_auc.mean", "backtest.churn_auc.std"} <= set(metrics)
    assert "evaluation" in {a.path for a in MlflowClient().list_artifacts(run["run_id"])}


def test_auto_on_cdnow_picks_pareto_nbd_and_beats_every_anchor(tracking_uri: str, tmp_path: Path) -> None:
    """Issue 3 on the full CDNOW log: Pareto/NBD (whose heaviest buyer used to give NaN, see
    clv.StableParetoNBDFitter) scores best on the inner window inside calibration (issue 14: the holdout
    judges the chosen family only), and beats all six anchors."""
    metrics = train(
        _compose(
            "train",
            [
                f"tracking.uri={tracking_uri}",
                f"tracking.artifact_root={tmp_path / 'a'}",
                "clv=auto",
                "clv.backtest.folds=0",
                "clv.intervals.draws=10",
                # the CLV anchors are the point: CDNOW's default segments have their own test (no k
                # curves either: 7 segment fits with their quality metrics on 23,570 customers, 12 s)
                "segmentation.k_values=[]",
                "segmentation.n_clusters=4",
                "segmentation.stability.bootstrap_resamples=0",
                "tracking.plots=false",
            ],
        )
    )
    run = _runs("customer-clv").iloc[-1]
    assert run["status"] == "FINISHED"
    assert "tags.clv.skipped_families" not in run or pd.isna(run["tags.clv.skipped_families"])
    assert run["tags.clv.chosen_family"] == "pareto_nbd"
    assert run["tags.clv.family_selection"].startswith("inner_window 1997-05-17..1997-09-30")
    inner = {f: metrics[f"family.{f}.inner.revenue_spearman"] for f in CLV_FAMILIES}
    assert max(inner, key=inner.get) == "pareto_nbd"
    spec = mlflow.pyfunc.load_model("models:/customer-clv@champion").unwrap_python_model().spec
    assert spec["calibration_params"]["family"] == spec["scoring_params"]["family"] == "pareto_nbd"
    assert metrics["holdout.churn_auc"] > 0.759 and metrics["holdout.churn_brier"] <= 0.165
    # The anchors are logged beside the project's figures, with whether each is beaten.
    anchors = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{run['run_id']}/evaluation/anchors.csv")
    )
    assert len(anchors) == 6 and anchors["project_value"].notna().all()
    assert metrics["anchor.recency_churn_auc"] == 0.759 and metrics["anchor.recency_churn_auc.beaten"] == 1.0
    assert all(metrics[f"anchor.{name}.beaten"] == 1.0 for name in anchors["anchor"]), anchors


def test_auto_skips_a_family_that_cannot_be_fitted(
    orders_csv: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A family whose fit fails is skipped with its reason; the run goes on with the others."""
    real_fit = CLVModel.fit

    def fit(self: CLVModel, features: pd.DataFrame) -> CLVModel:
        if self.family == "pareto_nbd":
            raise ModelFitError("every fallback failed (forced by the test)")
        return real_fit(self, features)

    monkeypatch.setattr(CLVModel, "fit", fit)
    train(_compose("train", [*_overrides(orders_csv, tracking_uri, tmp_path), "clv=auto", *PLUMBING_ONLY]))
    run = _runs("customer-clv").iloc[-1]
    assert run["status"] == "FINISHED"
    reason = "pareto_nbd: inner window: every fallback failed (forced by the test)"
    assert run["tags.clv.skipped_families"] == reason
    assert run["tags.clv.chosen_family"] in set(CLV_FAMILIES) - {"pareto_nbd"}


def test_auto_falls_back_to_the_holdout_when_no_family_fits_the_inner_window(
    orders_csv: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every family failing on the inner window (its three fits come first) is no reason to fail the run:
    the families are then compared on the holdout, and the tag says why."""
    real_fit, calls = CLVModel.fit, []

    def fit(self: CLVModel, features: pd.DataFrame) -> CLVModel:
        calls.append(self.family)
        if len(calls) <= len(CLV_FAMILIES):
            raise ModelFitError("no fit on the inner window (forced by the test)")
        return real_fit(self, features)

    monkeypatch.setattr(CLVModel, "fit", fit)
    overrides = [*_overrides(orders_csv, tracking_uri, tmp_path), "clv=auto", *PLUMBING_ONLY]
    metrics = train(_compose("train", overrides))
    run = _runs("customer-clv").iloc[-1]
    assert run["status"] == "FINISHED"
    assert run["tags.clv.family_selection"] == (
        "holdout (best of the families; no family could be fitted on the inner window)"
    )
    chosen = run["tags.clv.chosen_family"]
    scores = {family: metrics[f"family.{family}.holdout.revenue_spearman"] for family in CLV_FAMILIES}
    assert scores[chosen] == max(scores.values())


def test_train_never_lets_the_holdout_into_the_calibration_fit_or_the_layers(
    synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path
) -> None:
    """Through the whole job: tamper with every holdout order (drop half, change every amount) and the
    registered model's calibration fit and learned layers come out identical; only the refit may move."""
    orders = synthetic_orders.copy()
    stamps = pd.to_datetime(orders["timestamp"])
    first, last = stamps.min().normalize(), stamps.max().normalize()
    calibration_end = first + (last - first) * 0.5  # data=file's default split: half the observed range
    after = stamps.dt.normalize() > calibration_end.normalize()
    on_last_day = stamps.dt.normalize() == last  # kept, so the holdout keeps its end date
    tampered = pd.concat(
        [
            orders[~after],
            orders[after & on_last_day],
            orders[after & ~on_last_day]
            .sample(frac=0.5, random_state=0)
            .assign(amount=lambda f: f["amount"] * 3),
        ]
    )
    specs, decisions = [], []
    for name, frame in (("clean", orders), ("tampered", tampered)):
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        train(_compose("train", [*_overrides(path, tracking_uri, tmp_path), *PLUMBING_ONLY]))
        latest = max(int(v.version) for v in MlflowClient().search_model_versions("name='customer-clv'"))
        specs.append(mlflow.pyfunc.load_model(f"models:/customer-clv/{latest}").unwrap_python_model().spec)
        run = _runs("customer-clv").iloc[-1]
        decided_before = (
            "tags.clv.layers",
            "metrics.layers.check.",
            "tags.clv.churn.selection",
            "tags.clv.churn.band_",
            "metrics.churn_selection.",
        )
        chosen = [k for k in run.index if k.startswith(decided_before)]
        decisions.append({k: run[k] for k in chosen if pd.notna(run[k])})
    # Which layers are kept, the churn bands, the windows and every check and candidate figure are decided
    # before the calibration end.
    assert decisions[0] == decisions[1]
    assert {"tags.clv.layers.value", "tags.clv.churn.selection"} <= set(decisions[0])
    assert any(k.startswith("metrics.churn_selection.") for k in decisions[0])
    clean, changed = specs
    assert clean["calibration_end"] == changed["calibration_end"] == str(calibration_end.normalize().date())
    for key in ("calibration_params", "churn_layer", "value_layer", "calibration_churn_selector"):
        assert clean[key] == changed[key], key
    assert clean["scoring_params"] != changed["scoring_params"]  # the refit does see the later orders


def test_a_segmentation_that_is_not_substantial_fails_the_run_and_registers_nothing(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    cfg = _compose("train", [*_overrides(orders_csv, tracking_uri, tmp_path), "segmentation.min_share=0.45"])
    # Clusters under 45 % are merged into their neighbours, which leaves fewer than three segments at every k.
    with pytest.raises(ModelFitError, match="no substantial, distinct segmentation exists.*after merging"):
        train(cfg)
    run = _runs("customer-segments").iloc[-1]
    assert run["status"] == "FAILED"
    assert run["tags.segments.rejected"].startswith("no substantial, distinct segmentation exists")
    assert MlflowClient().search_registered_models() == []  # neither model: registration comes last


def test_segments_run_logs_k_selection_and_stability(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    overrides = [*_overrides(orders_csv, tracking_uri, tmp_path), "segmentation=gmm", "tracking.plots=false"]
    metrics = train(_compose("train", overrides))
    run = _runs("customer-segments").iloc[-1]
    curves = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{run['run_id']}/segments/k_selection.csv")
    )
    assert list(curves["k"]) == [3, 4, 5, 6, 7, 8] and "bic" in curves.columns
    chosen = int(run["tags.segments.chosen_k"])
    eligible = curves["not_chosen_because"].isna()  # "" in the table: nothing stands in its way
    assert chosen == int(curves.loc[eligible, :].set_index("k")["bic"].idxmin())
    assert metrics["segments.n_segments"] == curves.set_index("k").loc[chosen, "n_segments"] >= 3
    assert 0 < metrics["segments.stability.bootstrap_ari_mean"] <= 1
    assert -1 <= metrics["segments.stability.window_ari"] <= 1
    logged = run[f"metrics.k_selection.bic.k{chosen}"]
    assert logged == pytest.approx(curves.set_index("k").loc[chosen, "bic"])


def test_evaluation_only_work_runs_on_a_sample_of_a_large_base(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """k chosen on a sample and fitted on everyone; interval coverage measured on a sample; the layers,
    gate bootstrap and backtest on a sample of customers, the models fitted to everyone."""
    overrides = [
        *_overrides(orders_csv, tracking_uri, tmp_path),
        "segmentation.selection_sample=300",
        "clv.intervals.evaluation_sample=200",
        "clv.evaluation_sample=400",
        "tracking.plots=false",
    ]
    metrics = train(_compose("train", overrides))
    assert metrics["holdout.interval_customers"] == 200
    assert 0 <= metrics["holdout.purchases_interval_coverage"] <= 1
    assert metrics["split.calibration_customers"] > 400  # the other holdout metrics use everyone
    assert metrics["gate.customers"] == 400
    clv_run = _runs("customer-clv").iloc[-1]
    assert 400 <= int(clv_run["params.clv.evaluation_customers"]) <= 402  # + the log's first and last day
    assert "of 800 customers" in clv_run["tags.clv.evaluation_sample"]
    assert any(k.startswith("backtest.") for k in metrics)  # its folds fitted on the sample
    orders, _ = load_transactions(orders_csv)  # the purchase and spend models saw every customer
    calibration = customer_features(orders, pd.Timestamp(clv_run["params.split.resolved_calibration_end"]))
    everyone = CLVModel().fit(calibration).params_.fitted()
    assert [metrics[f"fitted.{k}"] for k in ("r", "alpha", "p")] == pytest.approx(
        [everyone[k] for k in ("r", "alpha", "p")], rel=1e-9
    )
    run = _runs("customer-segments").iloc[-1]
    assert run["metrics.k_selection.customers"] == 300
    chosen = int(run["tags.segments.chosen_k"])
    assert 3 <= metrics["segments.n_segments"] <= chosen  # merges may join indistinct clusters
    sizes = [v for k, v in metrics.items() if k.startswith("segments.size.")]
    assert len(sizes) == metrics["segments.n_segments"] and sum(sizes) == 800  # fitted on every customer
    assert 0 < metrics["segments.stability.bootstrap_ari_mean"] <= 1


def test_scoring_with_a_previous_output_writes_and_logs_the_migration(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    overrides = _overrides(orders_csv, tracking_uri, tmp_path)
    train(_compose("train", [*overrides, *PLUMBING_ONLY]))
    earlier, later = tmp_path / "earlier.parquet", tmp_path / "later.parquet"
    as_of = pd.read_csv(orders_csv, parse_dates=["timestamp"])["timestamp"].max().normalize()
    base = [
        *overrides[:2],
        f"tracking.uri={tracking_uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
    ]
    day = (as_of - pd.Timedelta(days=90)).date()
    score(_compose("score", [*base, f"score.as_of={day}", f"score.output={earlier}"]))
    score(_compose("score", [*base, f"score.output={later}", f"score.previous={earlier}"]))

    migration = pd.read_csv(tmp_path / "later.migration.csv")
    before, after = pd.read_parquet(earlier), pd.read_parquet(later)
    assert migration["customers"].sum() == len(set(before["customer_id"]) & set(after["customer_id"]))
    run = _runs("customer-scoring").iloc[-1]
    assert run["status"] == "FINISHED" and run["metrics.migration.customers_matched"] == len(before)
    logged = mlflow.artifacts.load_text(f"runs:/{run['run_id']}/migration/transitions.csv")
    assert not any(customer in logged for customer in after["customer_id"].head(50))  # aggregates only
    client = MlflowClient()
    assert "plots/migration.png" in {a.path for a in client.list_artifacts(run["run_id"], "plots")}
    assert later.with_name("later.report.html").read_text().count("<img") == 3  # sizes, profiles, migration

    # The training ran with tracking.plots=false: tables and the report as usual, no figure drawn.
    for experiment in ("customer-clv", "customer-segments"):
        trained = _runs(experiment).iloc[-1]["run_id"]
        logged_folders = {a.path for a in client.list_artifacts(trained)}
        assert "plots" not in logged_folders and "config" in logged_folders
    page = mlflow.artifacts.load_text(f"runs:/{trained}/{REPORT_ARTIFACT}")
    assert "<img" not in page and "<h2>Plots</h2>" not in page and "<h2>Segments</h2>" in page


def test_value_based_segments_on_attributes_train_audit_and_score(
    orders_csv: Path, synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path
) -> None:
    """Attributes and CLV outputs as features; a protected column in the file is audited, never used."""
    customers = sorted(synthetic_orders["customer_id"].astype(str).unique())
    rng = np.random.default_rng(0)
    attributes_path = tmp_path / "attributes.csv"
    pd.DataFrame(
        {
            "customer_id": customers,
            "region": rng.choice(["north", "south", "east"], len(customers)),
            "employees": rng.integers(1, 500, len(customers)),
            "gender": rng.choice(["f", "m", "x"], len(customers)),
        }
    ).to_csv(attributes_path, index=False)
    overrides = [
        *_overrides(orders_csv, tracking_uri, tmp_path),
        "clv.intervals.draws=0",
        f"segmentation.attributes.path={attributes_path}",
        "segmentation.attributes.numeric=[employees]",
        "segmentation.attributes.categorical=[region]",
        "segmentation.extra_features=[clv,churn_probability]",
        "tracking.plots=false",
    ]
    train(_compose("train", overrides))
    run = _runs("customer-segments").iloc[-1]
    assert run["tags.segments.protected_audit"] == "gender"
    audit = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{run['run_id']}/segments/protected_audit.csv")
    )
    assert set(audit["group"]) == {"f", "m", "x"} and audit["customers"].sum() == len(customers)
    loaded = mlflow.pyfunc.load_model("models:/customer-segments@champion")
    inputs = loaded.metadata.signature.inputs.required_input_names()
    assert inputs[-4:] == ["clv", "churn_probability", "employees", "region"] and "gender" not in inputs

    base = [*overrides[:2], f"tracking.uri={tracking_uri}"]
    with pytest.raises(UserError, match="set data.customers.path"):
        score_customers(_compose("score", base))
    table = score_customers(_compose("score", [*base, f"score.attributes_path={attributes_path}"]))
    assert len(table) == len(customers) and table["segment_name"].notna().all()

    # Asking for a protected attribute as a feature is refused before any run starts.
    runs_before = len(_runs("customer-clv"))
    with pytest.raises(UserError, match="protected attribute"):
        train(_compose("train", [*overrides, "segmentation.attributes.categorical=[region,gender]"]))
    assert len(_runs("customer-clv")) == runs_before


def test_segments_train_and_score_on_the_dataset_customer_file(
    orders_csv: Path, synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path
) -> None:
    """data.customers alone (no segmentation.attributes.path, no score.attributes_path) feeds both jobs."""
    customers = sorted(synthetic_orders["customer_id"].astype(str).unique())
    rng = np.random.default_rng(1)
    customers_path = tmp_path / "customers.parquet"
    pd.DataFrame(
        {
            "cust": customers[:-20],  # twenty customers have no row: imputed / '(missing)'
            "region": rng.choice(["north", "south"], len(customers) - 20),
            "age": rng.integers(18, 90, len(customers) - 20),
        }
    ).to_parquet(customers_path)
    data = [
        *_overrides(orders_csv, tracking_uri, tmp_path)[:2],
        f"data.customers.path={customers_path}",
        "data.customers.id=cust",
    ]
    overrides = [
        *data,
        *_overrides(orders_csv, tracking_uri, tmp_path)[2:],
        *PLUMBING_ONLY,
        "segmentation.attributes.categorical=[region]",
    ]
    train(_compose("train", overrides))
    run = _runs("customer-segments").iloc[-1]
    assert run["tags.segments.protected_audit"] == "age"  # in the file, audited, never a feature
    loaded = mlflow.pyfunc.load_model("models:/customer-segments@champion")
    assert loaded.metadata.signature.inputs.required_input_names()[-1] == "region"
    table = score_customers(_compose("score", [*data, f"tracking.uri={tracking_uri}"]))
    assert len(table) == len(customers) and table["segment_name"].notna().all()


def test_segments_on_purchase_regularity_train_and_score(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    overrides = [
        *_overrides(orders_csv, tracking_uri, tmp_path),
        "clv.intervals.draws=0",
        "segmentation.extra_features=[regularity]",
        "tracking.plots=false",
    ]
    metrics = train(_compose("train", overrides))
    assert -1 <= metrics["segments.stability.window_ari"] <= 1  # the earlier window gets its own regularity
    loaded = mlflow.pyfunc.load_model("models:/customer-segments@champion")
    assert loaded.metadata.signature.inputs.required_input_names()[-1] == "regularity"
    table = score_customers(_compose("score", [*overrides[:2], f"tracking.uri={tracking_uri}"]))
    assert table["segment_name"].notna().all()


def test_no_customer_id_reaches_mlflow_and_algorithms_share_metric_columns(
    synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path
) -> None:
    """Every text artifact of every run and logged model is free of customer ids; a KMeans run and the
    RFM-quintile baseline are comparable side by side on the same segment metric columns."""
    orders = synthetic_orders.assign(customer_id="cust-secret-" + synthetic_orders["customer_id"].astype(str))
    path = tmp_path / "orders.csv"
    orders.to_csv(path, index=False)
    overrides = [*_overrides(path, tracking_uri, tmp_path), "clv.intervals.draws=0", "tracking.plots=false"]
    train(_compose("train", overrides))
    train(_compose("train", [*overrides, "segmentation=rfm_quintiles", "segmentation.min_share=0.01"]))

    client = MlflowClient()
    roots = []
    for experiment in ("customer-clv", "customer-segments"):
        for run_id in _runs(experiment)["run_id"]:
            roots.append(
                Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path="", dst_path=str(tmp_path / run_id)
                    )
                )
            )
    for version in client.search_model_versions():
        roots.append(
            Path(
                mlflow.artifacts.download_artifacts(
                    version.source, dst_path=str(tmp_path / f"m{version.name}{version.version}")
                )
            )
        )
    scanned = 0
    for root in roots:
        for file in root.rglob("*"):
            if file.is_file() and file.suffix in {".csv", ".json", ".yaml", ".txt", ".md", ""}:
                assert "cust-secret-" not in file.read_text(errors="ignore"), file
                scanned += 1
    assert scanned > 20

    runs = _runs("customer-segments")

    def columns(row: pd.Series) -> set[str]:
        return {
            c
            for c in runs.columns
            if c.startswith("metrics.segments.") and ".size." not in c and pd.notna(row[c])
        }

    kmeans, baseline = runs.iloc[0], runs.iloc[1]
    assert baseline["params.segmentation.algorithm"] == "rfm_quintiles"
    shared = {
        "metrics.segments.silhouette",
        "metrics.segments.davies_bouldin",
        "metrics.segments.calinski_harabasz",
        "metrics.segments.stability.bootstrap_ari_mean",
        "metrics.segments.stability.window_ari",
    }
    assert shared <= columns(kmeans) and shared <= columns(baseline)


def test_every_registered_version_carries_a_model_card(
    trained_store: TrainedStore, trained_tracking_uri: str, tmp_path: Path
) -> None:
    """Description and card.* tags: data window, row counts, metrics beside the champion's, config, commit
    and the producing run; the second version's card shows the first (champion) re-scored on its data."""
    overrides = [
        *_overrides(trained_store.orders_csv, trained_tracking_uri, tmp_path),
        *trained_store.overrides,
    ]
    # another penalizer and another k than the trained store's, so each card compares two different models
    changed = ["clv.penalizer=0.001", "segmentation.n_clusters=5", "tracking.plots=false"]
    metrics = train(_compose("train", [*overrides, *changed]))
    client = MlflowClient()
    for name, metric in (
        ("customer-clv", "holdout.revenue_spearman"),
        ("customer-segments", "segments.silhouette"),
    ):
        first, second = (client.get_model_version(name, str(v)) for v in (1, 2))
        for version in (first, second):
            tags = version.tags
            assert tags["card.run_id"] == version.run_id
            assert (
                tags["card.git_commit"]
                == client.get_run(version.run_id).data.tags["mlflow.source.git.commit"]
            )
            assert tags["card.data.first_date"] <= tags["card.data.last_date"]
            assert int(tags["card.data.customers"].replace(",", "")) == 800
            assert json.loads(tags["card.config"])
            assert f"Run `{version.run_id}`" in version.description
            assert "| data.customers | 800 |" in version.description
        assert float(second.tags[f"card.metric.{metric}"]) == pytest.approx(metrics[metric], rel=1e-3)
        assert "champion (same data)" in first.description  # nothing to compare with yet
        assert "| champion v1 (same data) |" in second.description
    clv = client.get_model_version("customer-clv", "2")
    assert json.loads(clv.tags["card.config"])["clv"]["penalizer"] == 0.001
    assert clv.tags["card.calibration_end"] < clv.tags["card.trained_through"]
    champion_row = next(
        line for line in clv.description.splitlines() if line.startswith("| holdout.revenue_spearman |")
    )
    assert float(champion_row.split("|")[3]) == pytest.approx(
        float(clv.tags["gate.champion_score"]), abs=1e-4
    )


def test_same_data_config_and_seed_give_identical_models_and_segments(
    trained_store: TrainedStore, trained_tracking_uri: str, tmp_path: Path
) -> None:
    """Issue 7 reproducibility: two trainings on the same file, config and seed fit identical parameters,
    and their segment models assign every customer to the same segment (the first is the trained store's
    run, earlier in this process)."""
    overrides = [
        *_overrides(trained_store.orders_csv, trained_tracking_uri, tmp_path),
        *trained_store.overrides,
    ]
    first = trained_store.metrics
    second = train(_compose("train", [*overrides, "tracking.plots=false"]))  # figures change no model
    fitted = {k: v for k, v in first.items() if k.startswith(("fitted.", "refit.", "segments."))}
    assert len(fitted) > 10 and fitted == {k: second[k] for k in fitted}
    specs = [mlflow.pyfunc.load_model(f"models:/customer-clv/{v}").unwrap_python_model().spec for v in (1, 2)]
    for key in ("calibration_params", "scoring_params", "churn_layer", "value_layer"):
        assert specs[0][key] == specs[1][key], key
    client = MlflowClient()
    score_overrides = [*overrides[:2], f"tracking.uri={trained_tracking_uri}", "score.intervals=false"]
    tables = []
    for version in ("1", "2"):
        for name in ("customer-clv", "customer-segments"):
            client.set_registered_model_alias(name, "champion", version)
        tables.append(score_customers(_compose("score", score_overrides)))
    assert (tables[0]["segments_model_version"] == "1").all() and (
        tables[1]["segments_model_version"] == "2"
    ).all()
    columns = ["customer_id", "segment", "segment_name", "clv", "churn_probability"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])


def test_customer_ids_stay_out_of_every_artifact_and_the_tracking_store(
    synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path
) -> None:
    """Issue 7 security: runs, plots, tables, logged models and the store hold aggregates, never an id."""
    path = tmp_path / "orders.csv"
    marked = synthetic_orders.assign(customer_id="private-id-" + synthetic_orders["customer_id"].astype(str))
    marked.to_csv(path, index=False)
    train(_compose("train", _overrides(path, tracking_uri, tmp_path)))
    files = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.suffix == ".png" for p in files)
    assert [p for p in files if b"private-id-" in p.read_bytes()] == []
    assert b"private-id-" not in Path(tracking_uri.removeprefix("sqlite:///")).read_bytes()


def test_a_path_full_of_shell_syntax_is_only_ever_a_file_name(
    synthetic_orders: pd.DataFrame, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 7 security: config-supplied paths are opened, never executed or interpolated into a shell."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "orders $(touch PWNED); `touch PWNED2` && touch PWNED3.csv"
    synthetic_orders.to_csv(path, index=False)
    overrides = _overrides(path, tracking_uri, tmp_path)
    overrides[1] = f"data.path='{path}'"
    plumbing = ["clv.backtest.folds=0", "clv.intervals.draws=0", "tracking.plots=false"]
    metrics = train(_compose("train", [*overrides, *plumbing]))
    assert metrics["holdout.churn_auc"] > 0.5
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
