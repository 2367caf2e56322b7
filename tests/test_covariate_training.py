"""Training and scoring with covariates from a customer file: what the run logs, what it registers, how a
scoring job fills what the file lacks, and the refusal of a protected attribute (real MLflow store)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from customer_value.errors import UserError
from customer_value.jobs.score import score_customers
from customer_value.jobs.train import train
from customer_value.schema import CONF_DIR, register_configs

pytestmark = pytest.mark.slow  # trains a store of its own (~15 s)


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.fixture()
def covariate_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, covariate_store) -> str:
    database = tmp_path / "mlflow.db"
    shutil.copyfile(covariate_store.database, database)
    database.chmod(0o644)
    uri = f"sqlite:///{database}"
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(variable, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _customers_csv(store) -> str:
    return next(o for o in store.overrides if o.startswith("data.customers.path=")).split("=", 1)[1]


def test_the_run_logs_coefficients_intervals_and_the_likelihood_ratio_test(
    covariate_store, covariate_uri
) -> None:
    metrics = covariate_store.metrics
    # BG/NBD: purchase (channel=email, channel=social, tenure_score), a and b (channel's two levels each).
    assert metrics["covariates.lr_df"] == 7.0
    assert metrics["covariates.lr_p_value"] < 1e-6  # the simulated effects are real
    assert metrics["covariates.log_likelihood"] > metrics["covariates.log_likelihood_without"]
    assert metrics["fit.gamma_purchase.tenure_score"] > 0  # simulated at +0.3
    low, high = (
        metrics["fit.gamma_purchase.tenure_score.ci_low"],
        metrics["fit.gamma_purchase.tenure_score.ci_high"],
    )
    assert low < metrics["fit.gamma_purchase.tenure_score"] < high
    for name in ("r", "alpha", "a", "b", "p", "q", "v"):  # every parameter, not only the coefficients
        assert (
            0
            < metrics[f"fitted.{name}.ci_low"]
            < metrics[f"fitted.{name}"]
            < metrics[f"fitted.{name}.ci_high"]
        )
    assert {"without_covariates.holdout.churn_auc", "holdout.churn_auc"} <= set(metrics)
    assert metrics["covariates.customers_not_in_file"] == 0 and metrics["covariates.missing.channel"] == 0

    run = mlflow.search_runs(experiment_names=["customer-clv"]).iloc[0]
    assert run["metrics.fit.gamma_purchase.channel:email"] == pytest.approx(
        metrics["fit.gamma_purchase.channel=email"]
    )
    client = MlflowClient()
    folder = Path(client.download_artifacts(run["run_id"], "evaluation"))
    table = pd.read_csv(folder / "covariates.csv")
    assert len(table) == 7 and set(table["set"]) == {"purchase", "a", "b"}
    assert (table["se"] > 0).all() and (table["ci_low"] < table["estimate"]).all()
    parameters = pd.read_csv(folder / "parameters.csv", index_col="parameter")
    assert {"r", "alpha", "a", "b", "p", "q", "v", "gamma_a.channel=email"} <= set(parameters.index)
    audit = pd.read_csv(folder / "fairness_audit.csv")  # gender is in the file: predictions by group
    assert set(audit["group"]) == {"female", "male"} and audit["customers"].sum() == 1_500
    assert "mean_clv" in audit and "mean_churn_probability" in audit
    plots = {a.path for a in client.list_artifacts(run["run_id"], "plots")}
    assert "plots/covariates.png" in plots


def test_the_registered_model_takes_the_covariate_columns(covariate_store, covariate_uri) -> None:
    model = mlflow.pyfunc.load_model("models:/customer-clv@champion")
    inputs = {spec.name: spec.type.name for spec in model.metadata.get_input_schema().inputs}
    assert inputs["channel"] == "string" and inputs["tenure_score"] == "double"
    rows = pd.DataFrame(
        {
            "frequency": [3.0] * 4,
            "recency_days": [200.0] * 4,
            "T_days": [300.0] * 4,
            "monetary_value": [30.0] * 4,
            "mean_order_value": [30.0] * 4,
            "channel": ["web", "email", "social", "web"],
            "tenure_score": [0.0, 0.0, 0.0, 2.0],
        }
    )
    predicted = model.predict(rows, params={"horizon_days": 180.0, "intervals": False})
    purchases = predicted["expected_purchases"].to_numpy()
    assert len(set(np.round(purchases, 9))) == 4  # same history, different covariates: different outputs
    assert purchases[3] > purchases[0]  # tenure_score raises the purchase rate (positive coefficient)


def test_scoring_joins_the_customer_file_and_fills_in_what_it_lacks(
    covariate_store, covariate_uri, tmp_path: Path
) -> None:
    customers = pd.read_csv(_customers_csv(covariate_store))
    customers = customers.iloc[10:].copy()  # ten customers missing from the file
    customers.loc[customers.index[:5], "channel"] = "tiktok"  # a level the training base did not have
    path = tmp_path / "customers_now.csv"
    customers.to_csv(path, index=False)
    base = ["data=file", f"data.path={covariate_store.orders_csv}", "score.intervals=false"]
    scores = score_customers(_compose("score", [*base, f"data.customers.path={path}"]))
    assert len(scores) == 1_500 and scores["clv"].notna().all()

    # A customer absent from the file or with an unseen level scores as the reference level ("web") at the
    # base's mean tenure_score: exactly as if the file said so.
    reference = pd.read_csv(_customers_csv(covariate_store))
    changed = reference["customer_id"].isin(customers["customer_id"].iloc[:5]) | ~reference[
        "customer_id"
    ].isin(customers["customer_id"])
    mean_score = reference["tenure_score"].mean()
    reference.loc[changed, ["channel", "tenure_score"]] = ["web", mean_score]
    reference.loc[customers.index[:5], "tenure_score"] = customers["tenure_score"].iloc[:5].to_numpy()
    explicit = tmp_path / "customers_explicit.csv"
    reference.to_csv(explicit, index=False)
    expected = score_customers(_compose("score", [*base, f"data.customers.path={explicit}"]))
    np.testing.assert_allclose(scores["clv"], expected["clv"], rtol=1e-12)

    with pytest.raises(UserError, match="takes covariate column"):
        score_customers(_compose("score", base))  # no customer file: one line, nothing written


def test_a_protected_attribute_is_refused_as_a_covariate_before_any_run(
    covariate_store, covariate_uri
) -> None:
    overrides = [
        "data=file",
        f"data.path={covariate_store.orders_csv}",
        f"data.customers.path={_customers_csv(covariate_store)}",
        "clv.covariates.purchase=[gender]",
    ]
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    with pytest.raises(UserError, match=r"\['gender'\] protected attribute"):
        train(_compose("train", overrides))
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before
