"""Assembling a scoring's segment report (``evaluation.segment_report``) from what the jobs hold: the
scoring table, the customer base it scored, the segments version's recommended actions, and, once known,
the migration since the previous scoring and the realised outcomes. Aggregates only, by construction."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from customer_value.evaluation import plots
from customer_value.evaluation.segment_report import ReportInputs, render
from customer_value.models.segments.migration import transition_matrix
from customer_value.models.segments.segmentation import profile
from customer_value.tracking import run_logging

log = logging.getLogger(__name__)

REPORT_ARTIFACT = "report/segments.html"


def report_path(scores_output: Path) -> Path:
    """Where a scoring's report lives: beside the scores, ``<name>.report.html``."""
    return scores_output.with_name(f"{scores_output.stem}.report.html")


def membership_path(scores_output: Path) -> Path:
    """The CRM membership table beside the scores: ``<name>.membership.parquet`` (and ``.csv``)."""
    return scores_output.with_name(f"{scores_output.stem}.membership.parquet")


def changes_path(scores_output: Path) -> Path:
    """The membership's change set since the previous scoring: ``<name>.changes.parquet`` (and ``.csv``)."""
    return scores_output.with_name(f"{scores_output.stem}.changes.parquet")


def segment_ids_path(scores_output: Path) -> Path:
    """The highest segment id number ever issued for this output: ``<name>.segment_ids.json``."""
    return scores_output.with_name(f"{scores_output.stem}.segment_ids.json")


def migration_path(scores_output: Path) -> Path:
    """Where the scoring job writes the migration since the previous scoring (``score.previous``)."""
    return scores_output.with_name(f"{scores_output.stem}.migration.csv")


def segment_actions(model_name: str, version: str) -> dict[int, str]:
    """Segment id -> recommended action, from the segments version's training run (its profile table);
    empty when that run has none (a model registered before profiles were logged)."""
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/segments/profile.csv")
    except mlflow.exceptions.MlflowException:
        log.warning(
            "segments %s v%s: its run logged no segments/profile.csv; no actions in the report",
            model_name,
            version,
        )
        return {}
    table = pd.read_csv(io.StringIO(text), index_col=0)
    if "recommended_action" not in table.columns:
        return {}
    return {int(segment): str(action) for segment, action in table["recommended_action"].items()}


def scoring_profile(base: pd.DataFrame, scores: pd.DataFrame, actions: dict[int, str]) -> pd.DataFrame:
    """Per segment id: name, action, size, share, the RFM/tenure profile of the scored base and the mean
    predicted CLV and churn. ``scores`` is aligned row by row with ``base``."""
    predicted = scores[[c for c in ("clv", "churn_probability") if c in scores.columns]]
    table = profile(base, scores["segment"].to_numpy(), predicted.set_axis(base.index))
    names = scores.groupby("segment")["segment_name"].first()
    table.insert(0, "segment_name", names.reindex(table.index).to_numpy())
    table.insert(1, "recommended_action", [actions.get(int(s), "") for s in table.index])
    return table


def migration_by_segment(transitions: pd.DataFrame) -> pd.DataFrame:
    """Per segment now: the share of its previous members who stayed, and how many arrived from others."""
    stayed = transitions[transitions["from_segment"] == transitions["to_segment"]].set_index("to_segment")
    moved = transitions[transitions["from_segment"] != transitions["to_segment"]]
    table = pd.DataFrame(
        {
            "stayed_share": stayed["share_of_from"],
            "arrived": moved.groupby("to_segment")["customers"].sum(),
        }
    )
    table["arrived"] = table["arrived"].fillna(0.0)
    return table


def scoring_report(
    title: str,
    facts: dict[str, str],
    segment_profile: pd.DataFrame,
    transitions: pd.DataFrame | None = None,
    outcomes: pd.DataFrame | None = None,
) -> str:
    """The page for one scoring, with its plots (none when the job turned figures off)."""
    migration = None
    if transitions is not None and len(transitions):
        migration = migration_by_segment(transitions)
    figures = {}
    if run_logging.figures_on():
        figures = {
            "Segment size and value share": plots.segment_sizes(segment_profile),
            "Segment profiles": plots.profile_heatmap(segment_profile),
        }
        if outcomes is not None:
            figures["Retention, predicted and realised"] = plots.retention_by_segment(outcomes)
        if migration is not None:
            figures["Migration since the previous scoring"] = plots.migration_heatmap(
                transition_matrix(transitions, "share_of_from")
            )
    inputs = ReportInputs(title, facts, segment_profile, outcomes, migration, figures)
    return render(inputs)


def scoring_facts(
    data_name: str,
    as_of: pd.Timestamp,
    customers: int,
    clv_version: str,
    segments_version: str,
    horizon_days: float,
) -> dict[str, str]:
    """The line under a scoring report's title."""
    return {
        "data": data_name,
        "scored as of": str(pd.Timestamp(as_of).date()),
        "customers": f"{customers:,}",
        "horizon": f"{horizon_days:g} days",
        "models": f"CLV v{clv_version}, segments v{segments_version}",
    }
