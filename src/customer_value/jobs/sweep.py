"""Sweeps: one parent run per experiment groups a Hydra multirun's runs, and only the best is registered.

Hydra calls :class:`SweepTracking` in the launching process. ``on_multirun_start`` creates the tracking store
before any job starts (several processes creating a fresh SQLite store at once corrupt it), opens a parent
run in each experiment and hands the ids to the jobs through the environment, which joblib's worker
processes inherit. Each job's runs are then children (``mlflow.parentRunId``: the UI nests them) and,
instead of registering, record their candidate: model URI, primary metric, and the current champion
re-scored on the job's own data (the gate's comparison, made while the job still holds its data).
``on_multirun_end`` registers the best finished child of each experiment through the same gate.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from customer_value.jobs.stage import Candidate
from customer_value.schema import clv_metric_for, data_has_amounts
from customer_value.tracking import registry, run_logging
from customer_value.tracking.model_card import CardFacts

log = logging.getLogger(__name__)

SWEEP_ENV = "CUSTOMER_VALUE_SWEEP"
CANDIDATE_ARTIFACT = "sweep/candidate.json"


@dataclass(frozen=True)
class Sweep:
    """A running sweep: its id and the parent run of each experiment (experiment name -> run id)."""

    id: str
    parents: dict[str, str]

    @classmethod
    def from_env(cls) -> Sweep | None:
        raw = os.environ.get(SWEEP_ENV)
        return None if not raw else cls(**json.loads(raw))

    def child_tags(self, experiment: str) -> dict[str, str]:
        return {"sweep.id": self.id, "sweep.role": "child", "mlflow.parentRunId": self.parents[experiment]}


def record_candidate(candidate: Candidate, judgement: registry.ChampionJudgement | None) -> None:
    """Leave on the finished child run what registration needs later: the score as tags, the rest as JSON."""
    client = MlflowClient()
    payload = {
        "model_uri": candidate.model_uri,
        "name": candidate.name,
        "metric": candidate.metric,
        "score": candidate.score,
        "tags": candidate.tags,
        "card": None if candidate.card is None else asdict(candidate.card),
        "judgement": None if judgement is None else asdict(judgement),
        "blocked": candidate.blocked,
    }
    client.log_text(candidate.run_id, json.dumps(payload, indent=2, default=str), CANDIDATE_ARTIFACT)
    client.set_tag(candidate.run_id, "sweep.candidate.metric", candidate.metric)
    client.set_tag(candidate.run_id, "sweep.candidate.score", repr(float(candidate.score)))


def children(experiment_id: str, sweep_id: str) -> list[Run]:
    return MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`sweep.id` = '{sweep_id}' and tags.`sweep.role` = 'child'",
        max_results=5000,
    )


def best_child(runs: list[Run], metric: str) -> Run | None:
    """The finished child with the highest score on ``metric`` (earliest wins a tie)."""
    scored = [
        run
        for run in runs
        if run.info.status == "FINISHED" and run.data.tags.get("sweep.candidate.metric") == metric
    ]
    if not scored:
        return None
    ordered = sorted(scored, key=lambda run: run.info.start_time)
    return max(ordered, key=lambda run: float(run.data.tags["sweep.candidate.score"]))


def register_best(
    sweep: Sweep, experiment: str, metric: str, alias: str, register: bool
) -> registry.GateDecision | None:
    """Register the best child of ``experiment`` through the gate and close its parent run."""
    client = MlflowClient()
    parent = client.get_run(sweep.parents[experiment])
    runs = children(parent.info.experiment_id, sweep.id)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    client.log_metric(parent.info.run_id, "sweep.children", len(runs))
    client.log_metric(parent.info.run_id, "sweep.children_failed", len(runs) - len(finished))
    best = best_child(runs, metric)
    if best is None:
        log.error("sweep %s: no finished %s run scored on %s, none registered", sweep.id, experiment, metric)
        client.set_terminated(parent.info.run_id, status="FAILED")
        return None
    client.set_tag(parent.info.run_id, "sweep.best_run_id", best.info.run_id)
    client.log_metric(
        parent.info.run_id, f"sweep.best.{metric}", float(best.data.tags["sweep.candidate.score"])
    )
    decision = None
    if register:
        with run_logging.fail_run_on_error(parent.info.run_id):
            decision = _register(best, alias)
        decision.tag_run(best.info.run_id)
        decision.tag_run(parent.info.run_id)
    client.set_terminated(parent.info.run_id, status="FINISHED")
    return decision


def _register(best: Run, alias: str) -> registry.GateDecision:
    payload = json.loads(mlflow.artifacts.load_text(f"runs:/{best.info.run_id}/{CANDIDATE_ARTIFACT}"))
    name = payload["name"]
    judged = payload["judgement"]
    current = registry.champion_version(name, alias)
    if current is None:
        judgement = None
    elif judged is not None and judged["version"] == str(current.version):
        judgement = registry.ChampionJudgement(**judged)
    else:
        was = "none" if judged is None else f"v{judged['version']}"
        judgement = registry.ChampionJudgement(
            str(current.version),
            None,
            f"the champion changed during the sweep (was {was}); re-run to compare",
        )
    card = None if payload["card"] is None else CardFacts(**payload["card"])
    return registry.register_with_gate(
        payload["model_uri"],
        name,
        alias=alias,
        metric=payload["metric"],
        new_score=payload["score"],
        champion=judgement,
        tags=payload["tags"] | {"sweep.id": best.data.tags["sweep.id"]},
        card=card,
        blocked=payload.get("blocked"),
    )


class SweepTracking(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``); does nothing outside a multirun."""

    def __init__(self) -> None:
        self.sweep: Sweep | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_logging.configure(config.tracking.uri, credentials_file=config.tracking.credentials_file)
        sweep_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        overrides = list(config.hydra.overrides.task)
        searched = OmegaConf.to_container(config.hydra.sweeper.get("params") or {}, resolve=True)
        tags = (
            run_logging.git_state()
            | run_logging.owner_tags()
            | {"sweep.id": sweep_id, "sweep.role": "parent"}
        )
        parents = {}
        client = MlflowClient()
        for experiment in (config.tracking.clv_experiment, config.tracking.segments_experiment):
            experiment_id = run_logging.ensure_experiment(experiment, config.tracking.artifact_root)
            run_logging.fail_abandoned_runs(experiment_id)
            run = client.create_run(experiment_id, tags=tags, run_name=f"sweep {sweep_id}")
            client.log_param(run.info.run_id, "sweep.params", json.dumps(searched)[:6000])
            client.log_param(run.info.run_id, "sweep.overrides", " ".join(overrides)[:6000] or "none")
            parents[experiment] = run.info.run_id
        self.sweep = Sweep(sweep_id, parents)
        os.environ[SWEEP_ENV] = json.dumps(asdict(self.sweep))
        log.info("sweep %s: parent runs %s", sweep_id, parents)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is None:
            return
        os.environ.pop(SWEEP_ENV, None)
        register = bool(config.tracking.register)
        for experiment, metric in (
            (
                config.tracking.clv_experiment,
                clv_metric_for(config.clv.primary_metric, data_has_amounts(config.data)),
            ),
            (config.tracking.segments_experiment, config.segmentation.primary_metric),
        ):
            decision = register_best(self.sweep, experiment, metric, config.tracking.alias, register)
            if decision is not None:
                log.info(
                    "sweep %s: best %s run -> version %s %s (%s)",
                    self.sweep.id,
                    experiment,
                    decision.version,
                    decision.alias,
                    decision.reason,
                )
        self.sweep = None
