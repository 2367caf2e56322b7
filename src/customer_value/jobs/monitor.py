"""Monitoring job: for each earlier scoring output, did its predictions come true, and has the base drifted?

One run per scoring in the monitoring experiment, tagged with the versions that scored. Realised figures
need part of the scoring's horizon to have passed in today's log; drift (PSI of the scored base against
the training base, and of the segment shares) needs only the scoring. The scoring's segment report is
rewritten beside it with the realised retention, and logged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from customer_value.data.features import FEATURE_COLUMNS, Split, calibration_and_holdout, customer_features
from customer_value.data.loading import read_columns
from customer_value.data.sources import load_orders_withholding
from customer_value.errors import DataError
from customer_value.evaluation import drift, monitoring, plots
from customer_value.jobs import reporting
from customer_value.jobs.atomic_files import write_text_atomically
from customer_value.jobs.entrypoint import run_job
from customer_value.jobs.score import model_inputs_present, with_covariates
from customer_value.jobs.stage import prefixed
from customer_value.privacy.suppression import meet_output
from customer_value.schema import CONF_DIR, register_configs, validate_monitor_config
from customer_value.tracking import run_logging

log = logging.getLogger(__name__)

SCORE_COLUMNS = [
    "customer_id",
    "segment",
    "segment_name",
    "churn_probability",
    "as_of",
    "horizon_days",
    "clv_model_version",
    "segments_model_version",
]
VALUE_COLUMNS = ["clv"]  # read when the scoring has them (a purchase-only model has none)
WATCHED_PREFIX = "holdout."


@dataclass(frozen=True)
class Scoring:
    """One earlier scoring output: its table (the columns monitoring reads) and what made it."""

    path: Path
    table: pd.DataFrame
    as_of: pd.Timestamp
    horizon_days: float
    clv_version: str
    segments_version: str


def read_scoring(path: Path) -> Scoring:
    """A scoring output, or a one-line error naming the file and what is wrong with it."""
    if not path.is_file():
        raise DataError(f"monitor.scores {path}: no such file (give a scoring output, score.output)")
    available = _columns_of(path)
    missing = [c for c in SCORE_COLUMNS if c not in available]
    if missing:
        raise DataError(f"monitor.scores {path}: missing column(s) {missing}; is it a scoring output?")
    table = read_columns(path, SCORE_COLUMNS + [c for c in VALUE_COLUMNS if c in available])
    if table.empty:
        raise DataError(f"monitor.scores {path}: no rows")
    for column in ("as_of", "horizon_days", "clv_model_version", "segments_model_version"):
        distinct = table[column].nunique(dropna=False)
        if distinct != 1:
            raise DataError(f"monitor.scores {path}: column {column} holds {distinct} values, one expected")
    table["customer_id"] = table["customer_id"].astype(str)
    if table["customer_id"].duplicated().any():
        count = int(table["customer_id"].duplicated().sum())
        raise DataError(f"monitor.scores {path}: column customer_id repeats {count:,} id(s)")
    as_of = pd.Timestamp(table["as_of"].iloc[0]).normalize()
    return Scoring(
        path,
        table,
        as_of,
        float(table["horizon_days"].iloc[0]),
        str(table["clv_model_version"].iloc[0]),
        str(table["segments_model_version"].iloc[0]),
    )


def _columns_of(path: Path) -> list[str]:
    """The column names of a scoring output (Parquet or CSV), without reading its rows."""
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except Exception as exc:  # any reader's refusal: not a scoring output this job can read
        raise DataError(
            f"monitor.scores {path}: not a readable scoring output ({type(exc).__name__})"
        ) from None


def monitor(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Monitor every configured scoring output; returns each one's logged metrics, by path."""
    validate_monitor_config(cfg)
    scorings = [read_scoring(Path(path)) for path in cfg.monitor.scores]  # all readable before any work
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    orders, report, withheld = load_orders_withholding(cfg)
    results = {}
    with run_logging.figures(cfg.tracking.plots):
        for scoring in scorings:
            # customers who objected, withdrew consent or were forgotten since it was made: out
            table, scoring_orders, _ = meet_output(scoring.table, orders, withheld, cfg.privacy)
            scoring = dataclasses.replace(scoring, table=table)
            results[str(scoring.path)] = monitor_scoring(
                cfg, scoring, scoring_orders, report.last_date, report.suppressed
            )
    return results


def monitor_scoring(
    cfg: DictConfig,
    scoring: Scoring,
    orders: pd.DataFrame,
    last_date: str,
    excluded: dict[str, int] | None = None,
) -> dict[str, float]:
    """One monitoring run for one scoring; ``excluded``: customers the privacy rules left out, by reason."""
    client = MlflowClient()
    clv_version = client.get_model_version(cfg.tracking.clv_model, scoring.clv_version)
    segments_version = client.get_model_version(cfg.tracking.segments_model, scoring.segments_version)
    window = monitoring.elapsed_window(scoring.as_of, scoring.horizon_days, pd.Timestamp(last_date))
    tags = run_logging.git_state() | {
        "data.name": cfg.data.name,
        "clv_model_version": scoring.clv_version,
        "segments_model_version": scoring.segments_version,
        "monitor.scores": str(scoring.path),
    }
    name = f"monitor · {cfg.data.name} · scored {scoring.as_of.date()} · v{scoring.clv_version}"
    base = customer_features(orders, scoring.as_of)
    base.index = base.index.astype(str)
    scores = _aligned(scoring, base)
    with run_logging.run(cfg.tracking.monitoring_experiment, cfg.tracking.artifact_root, name, tags):
        mlflow.log_params(
            {
                "as_of": str(scoring.as_of.date()),
                "horizon_days": scoring.horizon_days,
                "elapsed_end": "none" if window is None else str(window.end.date()),
                "elapsed_days": 0 if window is None else window.days,
            }
        )
        metrics = _log_drift(cfg, scoring, base, clv_version.run_id, segments_version.run_id)
        outcomes = None
        if window is None:
            mlflow.set_tag("monitor.realised", f"not yet: the log ends {last_date}, the day scored")
            log.info(
                "monitor %s: no day after %s in the log yet; drift only", scoring.path, scoring.as_of.date()
            )
        else:
            realised, outcomes = _log_realised(cfg, scoring, orders, window, scores, clv_version.run_id)
            metrics |= realised
        if cfg.monitor.report:
            _write_report(cfg, scoring, base, scores, outcomes)
        run_logging.log_metrics(metrics | {f"privacy.excluded.{r}": n for r, n in (excluded or {}).items()})
    return metrics


def _aligned(scoring: Scoring, base: pd.DataFrame) -> pd.DataFrame:
    """The scoring table in the base's customer order; the two must hold the same customers (the base is
    rebuilt from today's log as of the scoring day, so a log rewritten since then is caught here)."""
    table = scoring.table.set_index("customer_id")
    missing = int((~base.index.isin(table.index)).sum())
    extra = int((~table.index.isin(base.index)).sum())
    if missing or extra:
        raise DataError(
            f"monitor.scores {scoring.path}: {missing:,} customers of the log as of {scoring.as_of.date()} "
            f"are not in it and {extra:,} of its customers are not in the log; was it scored on another log?"
        )
    return table.reindex(base.index)


def _log_drift(
    cfg: DictConfig, scoring: Scoring, base: pd.DataFrame, clv_run_id: str, segments_run_id: str
) -> dict[str, float]:
    """PSI of each model input (against the CLV version's training base) and of the segment shares
    (against the segments version's training sizes); a table, a plot and a ``monitor.drift`` tag."""
    psi = pd.Series(dtype="float64", name="psi")
    try:
        reference = mlflow.artifacts.load_dict(f"runs:/{clv_run_id}/{drift.REFERENCE_ARTIFACT}")
        psi = drift.population_stability(reference, base[[c for c in FEATURE_COLUMNS if c in base.columns]])
    except mlflow.exceptions.MlflowException:
        log.warning("monitor: CLV run %s logged no %s; no input drift", clv_run_id, drift.REFERENCE_ARTIFACT)
    trained = MlflowClient().get_run(segments_run_id).data.metrics
    sizes = {int(k.rsplit(".", 1)[1]): v for k, v in trained.items() if k.startswith("segments.size.")}
    if sizes:
        now = scoring.table["segment"].value_counts()
        segments = sorted(set(sizes) | {int(s) for s in now.index})
        before = np.array([sizes.get(s, 0.0) for s in segments])
        current = np.array([float(now.get(s, 0)) for s in segments])
        psi["segment shares"] = drift.stability_index(before / before.sum(), current / current.sum())
    if psi.empty:
        return {}
    thresholds = cfg.monitor.drift
    level = (
        "major"
        if (psi > thresholds.major_psi).any()
        else "moderate"
        if (psi > thresholds.moderate_psi).any()
        else "stable"
    )
    mlflow.set_tag("monitor.drift", level)
    shifted = psi[psi > thresholds.moderate_psi]
    if len(shifted):
        mlflow.set_tag("monitor.drift_columns", ", ".join(shifted.index))
    run_logging.log_table(psi.to_frame(), "drift/psi.csv")
    run_logging.log_figure(
        lambda: plots.population_stability(psi, thresholds.moderate_psi, thresholds.major_psi),
        "plots/drift.png",
    )
    log.info("monitor drift: %s (%s)", level, ", ".join(f"{k} {v:.3f}" for k, v in psi.items()))
    return {f"drift.psi.{column.replace(' ', '_')}": float(value) for column, value in psi.items()}


def _log_realised(
    cfg: DictConfig,
    scoring: Scoring,
    orders: pd.DataFrame,
    window: monitoring.ElapsedWindow,
    scores: pd.DataFrame,
    clv_run_id: str,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Realised metrics of the elapsed window against the same version asked again for that window."""
    features, realised = calibration_and_holdout(orders, Split(scoring.as_of, window.end))
    features.index, realised.index = features.index.astype(str), realised.index.astype(str)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{scoring.clv_version}")
    features = with_covariates(cfg, model, features)
    inputs = model_inputs_present(model, features, f"{cfg.tracking.clv_model} v{scoring.clv_version}")
    predictions = model.predict(
        features[inputs].reset_index(drop=True), params={"horizon_days": window.days, "intervals": False}
    )
    realised = realised.reset_index(drop=True)
    observed = monitoring.realised_metrics(predictions, realised)
    metrics = prefixed("realised.", observed)
    metrics |= {"realised.customers": float(len(realised)), "realised.elapsed_share": window.share}
    deciles = monitoring.calibration_by_decile(predictions["churn_probability"].to_numpy(), realised)
    outcomes = monitoring.segment_outcomes(scores["segment_name"], predictions, realised)
    run_logging.log_table(deciles, "monitor/churn_calibration_by_decile.csv")
    run_logging.log_table(outcomes, "monitor/segments.csv")
    run_logging.log_figure(lambda: plots.churn_calibration(deciles), "plots/churn_calibration.png")
    run_logging.log_figure(lambda: plots.retention_by_segment(outcomes), "plots/retention_by_segment.png")

    trained = MlflowClient().get_run(clv_run_id).data.metrics
    own = {k.removeprefix(WATCHED_PREFIX): v for k, v in trained.items() if k.startswith(WATCHED_PREFIX)}
    metrics |= {f"training.holdout.{k}": own[k] for k in observed if k in own}
    retrain = cfg.monitor.retrain
    if window.share < retrain.min_elapsed_share:
        verdict = f"too early: {window.share:.0%} of the {scoring.horizon_days:g}-day horizon has passed"
        mlflow.set_tag("monitor.retrain_recommended", "too early")
    else:
        reasons = monitoring.retrain_verdict(observed, own, dict(retrain.tolerances))
        mlflow.set_tag("monitor.retrain_recommended", str(bool(reasons)).lower())
        verdict = "; ".join(reasons) if reasons else "every watched metric within its tolerance"
    mlflow.set_tag("monitor.retrain_reason", verdict[:5000])
    log.info(
        "monitor %s: %d of %g days elapsed, churn AUC %.3f (its holdout %.3f), Brier %.3f; retrain: %s",
        scoring.path,
        window.days,
        scoring.horizon_days,
        observed.get("churn_auc", np.nan),
        own.get("churn_auc", np.nan),
        observed.get("churn_brier", np.nan),
        verdict,
    )
    return metrics, outcomes


def _write_report(
    cfg: DictConfig,
    scoring: Scoring,
    base: pd.DataFrame,
    scores: pd.DataFrame,
    outcomes: pd.DataFrame | None,
) -> None:
    """The scoring's segment report, now with realised outcomes, rewritten beside it and logged."""
    actions = reporting.segment_actions(cfg.tracking.segments_model, scoring.segments_version)
    table = reporting.scoring_profile(base, scores.reset_index(drop=True), actions)
    migration = reporting.migration_path(scoring.path)
    transitions = pd.read_csv(migration) if migration.is_file() else None
    page = reporting.scoring_report(
        f"Customer segments as of {scoring.as_of.date()}",
        reporting.scoring_facts(
            cfg.data.name,
            scoring.as_of,
            len(scores),
            scoring.clv_version,
            scoring.segments_version,
            scoring.horizon_days,
        ),
        table,
        transitions,
        outcomes,
    )
    path = write_text_atomically(page, reporting.report_path(scoring.path), "monitor.scores")
    mlflow.log_artifact(str(path), "report")
    log.info("monitor report -> %s", path)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="monitor")
def main(cfg: DictConfig) -> None:
    run_job(monitor, cfg)


if __name__ == "__main__":
    register_configs()
    main()
