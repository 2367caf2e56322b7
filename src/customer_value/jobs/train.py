"""Training job: fit CLV and segment models, evaluate on the holdout, log to MLflow, register with a gate.

``train(cfg)`` is pure orchestration that tests call directly; ``main`` is the Hydra entry point and
returns ``cfg.optimized_metric`` so a sweeper can optimise it. The stages live in ``clv_stage`` and
``segments_stage``.

Order matters for the bad-input rule: the config is validated before any run starts, both stages are
fitted, evaluated and logged first, and only when both succeeded are the models registered. A job that
exits non-zero therefore never leaves a new registered version behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import hydra
import mlflow
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from customer_value import memory
from customer_value.data.loading import DataReport
from customer_value.data.sources import load_permitted_orders
from customer_value.errors import ModelFitError, UserError
from customer_value.jobs.clv_stage import train_clv
from customer_value.jobs.entrypoint import run_job
from customer_value.jobs.segments_stage import train_segments
from customer_value.jobs.spark_stage import log_everyone, log_sample
from customer_value.jobs.stage import Candidate, log_config, log_data_report
from customer_value.jobs.sweep import Sweep, record_candidate
from customer_value.schema import (
    CONF_DIR,
    clv_metric_for,
    data_has_amounts,
    register_configs,
    validate_train_config,
)
from customer_value.tracking import progress, registry, run_logging, run_summary, ui_links

if TYPE_CHECKING:
    from customer_value.spark.training import SparkBase

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run both training stages, then register both models; returns every logged metric by name."""
    validate_train_config(cfg)
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    tags = run_logging.git_state() | {"data.name": cfg.data.name}
    sweep = Sweep.from_env()

    def run_tags(experiment: str) -> dict[str, str]:
        return tags if sweep is None else tags | sweep.child_tags(experiment)

    metrics: dict[str, float] = {}
    clv_tags = run_tags(cfg.tracking.clv_experiment)
    # engine=spark: the session lives until both runs have ended
    with contextlib.ExitStack() as engine, run_logging.figures(cfg.tracking.plots):
        with run_logging.run(cfg.tracking.clv_experiment, cfg.tracking.artifact_root, cfg.run_name, clv_tags):
            log_config(cfg)
            with progress.step("load", "train: load the order log"):
                orders, report, base = _training_data(cfg, engine)
            log_data_report(report)
            run_summary.log_training_data(report, cfg.data.name, orders)
            if base is not None:
                log_sample(base)
            with naming_the_data(report.source), progress.step("clv", "train: CLV stage"):
                clv_metrics, clv_candidate, clv_outputs, today = train_clv(
                    cfg, orders, report, None if base is None else base.purchase_counts
                )
            run_summary.summarise_clv_run(
                clv_candidate.run_id,
                cfg.run_name,
                cfg.data.name,
                report,
                clv_candidate.tags["calibration_end"],
                clv_metrics,
            )
            metrics |= clv_metrics
        segments_tags = run_tags(cfg.tracking.segments_experiment)
        with run_logging.run(
            cfg.tracking.segments_experiment, cfg.tracking.artifact_root, cfg.run_name, segments_tags
        ):
            log_config(cfg)
            log_data_report(report)
            run_summary.log_training_data(report, cfg.data.name, orders)
            if base is not None:
                log_sample(base)
            with naming_the_data(report.source), progress.step("segments", "train: segments stage"):
                segment_metrics, segments_candidate = train_segments(cfg, orders, report, clv_outputs, today)
            if base is not None:
                segment_metrics |= log_everyone(
                    cfg, base, (clv_candidate.model_uri, segments_candidate.model_uri)
                )
            run_summary.summarise_segments_run(
                segments_candidate.run_id,
                cfg.run_name,
                cfg.data.name,
                report,
                segments_candidate.tags,
                segment_metrics,
            )
            metrics |= segment_metrics
    # Registration re-scores champions on the candidates' own tables: the log and the stages' outputs go
    # first (at a million customers they held 0.4 GB through it). And a full collection: MLflow's model
    # logging catches an IntegrityError internally (re-logging the run's metrics for the logged model),
    # whose traceback keeps the stage's finished frame, and with it the log, in a reference cycle until
    # Python's next full collection (1M customers, measured before the stage dropped its own judged tables:
    # RSS 1.44 -> 0.86 GB; the collection takes ~0.2 s).
    del orders, clv_outputs, today
    gc.collect()
    memory.release()
    for candidate in (clv_candidate, segments_candidate):
        with run_logging.fail_run_on_error(candidate.run_id):
            if sweep is not None:  # the sweep registers its best run when every job has finished
                record_candidate(candidate, _judge_champion(cfg, candidate))
            elif cfg.tracking.register:
                _register(cfg, candidate)
    return metrics


def _training_data(
    cfg: DictConfig, engine: contextlib.ExitStack
) -> tuple[pd.DataFrame, DataReport, SparkBase | None]:
    """The orders the stages train on and the log's report; with ``engine=spark`` the orders are a
    seeded sample (or all) of a base that stays in Spark, returned too, its session closed by ``engine``."""
    if cfg.engine.name != "spark":
        return (*load_permitted_orders(cfg, training=True), None)
    from customer_value.privacy.suppression import refuse_under_spark
    from customer_value.spark.training import spark_base

    refuse_under_spark(cfg, "training")
    base = engine.enter_context(spark_base(cfg))
    return base.orders, base.report, base


@contextlib.contextmanager
def naming_the_data(source: str) -> Iterator[None]:
    """A model that cannot be fitted on this data says which file (or dataset) it was: same error type,
    the source in front of its one line."""
    try:
        yield
    except ModelFitError as exc:
        raise type(exc)(f"{source}: {exc}") from None


# What an older version's artifacts or code can raise when today's code loads and re-scores it (missing
# artifact, changed parameter layout, shape mismatch, a model that no longer fits this data). Anything
# else (MemoryError, a bug in this run's own code) still stops the job.
CHAMPION_LOAD_ERRORS = (
    MlflowException,
    OSError,
    ImportError,
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    ValueError,
    UserError,
)


def _judge_safely(candidate: Candidate, version: str) -> registry.ChampionJudgement:
    """A champion this code cannot load or re-score is not compared (and keeps its alias), never a crash."""
    try:
        return candidate.judge(version)
    except CHAMPION_LOAD_ERRORS as exc:
        reason = f"champion v{version} could not be re-scored ({type(exc).__name__}: {exc})"[:300]
        log.warning("%s: %s", candidate.name, reason)
        return registry.ChampionJudgement(version, None, reason)


def _judge_champion(cfg: DictConfig, candidate: Candidate) -> registry.ChampionJudgement | None:
    """The current champion re-scored on this run's data; None when there is no champion yet."""
    champion = registry.champion_version(candidate.name, cfg.tracking.alias)
    return None if champion is None else _judge_safely(candidate, str(champion.version))


def _register(cfg: DictConfig, candidate: Candidate) -> registry.GateDecision:
    judgement = _judge_champion(cfg, candidate)
    decision = registry.register_with_gate(
        candidate.model_uri,
        candidate.name,
        alias=cfg.tracking.alias,
        metric=candidate.metric,
        new_score=candidate.score,
        champion=judgement,
        tags=candidate.tags,
        card=candidate.card,
        blocked=candidate.blocked,
    )
    if candidate.blocked is not None:
        log.warning("%s version %s is not champion: %s", candidate.name, decision.version, candidate.blocked)
    log.info(
        "%s version %s -> %s (%s %.4f: %s)",
        candidate.name,
        decision.version,
        decision.alias,
        candidate.metric,
        candidate.score,
        decision.reason,
    )
    decision.tag_run(candidate.run_id)  # the run has ended: tagged by id, never through the fluent API
    base = ui_links.ui_base(mlflow.get_tracking_uri())
    experiment_id = MlflowClient().get_run(candidate.run_id).info.experiment_id
    log.info(
        "%s in the MLflow UI%s: run %s, version %s",
        candidate.name,
        " (make ui)" if base == ui_links.LOCAL_UI else "",
        ui_links.run_url(base, experiment_id, candidate.run_id),
        ui_links.model_version_url(base, candidate.name, decision.version),
    )
    return decision


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Train; a sweep job that fails on bad input reports its one line and lets the other jobs go on."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    metrics = run_job(train, cfg, exit_on_error=not in_sweep)
    metric = clv_metric_for(cfg.optimized_metric, data_has_amounts(cfg.data))  # no revenue without amounts
    return float("nan") if metrics is None else metrics.get(metric, float("nan"))


if __name__ == "__main__":
    register_configs()
    main()
