"""Scoring job: load the champion models, score every customer as of a date, write one table.

The output is written to a temporary file beside the target and renamed into place, so an interrupted
or failed job never leaves a partial table (a killed job's hidden temporary file is removed by the next).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value.crm import membership as membership_ids
from customer_value.crm import sink as crm_sink
from customer_value.data.customers import CustomerFile, load_customers
from customer_value.data.features import customer_features, purchase_regularity
from customer_value.data.sources import load_permitted_orders
from customer_value.errors import UserError
from customer_value.evaluation import plots
from customer_value.jobs import reporting
from customer_value.jobs.atomic_files import StagedFiles
from customer_value.jobs.entrypoint import run_job
from customer_value.models.clv.bounds import check_horizon
from customer_value.models.clv.btyd import NO_DATE_BEYOND_DAYS
from customer_value.models.clv.covariates import encode
from customer_value.models.segments.attributes import join_attributes, load_attributes
from customer_value.models.segments.explanations import criteria_by_segment
from customer_value.models.segments.migration import (
    KEY_COLUMNS,
    load_previous_scores,
    migration_summary,
    transition_matrix,
    transition_table,
)
from customer_value.models.segments.segmentation import PROFILE_COLUMNS, FeatureSet
from customer_value.privacy.hashing import is_pseudonymised, pseudonyms
from customer_value.privacy.suppression import project_key
from customer_value.privacy.suppression_list import SuppressionList
from customer_value.schema import CONF_DIR, parse_day, register_configs, validate_score_config
from customer_value.spark import scoring as spark_scoring
from customer_value.tracking import registry, run_logging
from customer_value.tracking.pyfunc import spec_covariate_columns

log = logging.getLogger(__name__)
PART = "margin_part."  # the explanation's parts (kept for the report's membership criteria)
# Text columns that may be empty in a whole chunk: written as strings, not as the first chunk's null type.
TEXT_REASONS = ("runner_up_segment", "reason_1", "reason_2", "reason_3")

# Scoring-table columns kept in memory while the table is written (migration, report, summary line).
REPORT_COLUMNS = [
    *KEY_COLUMNS,
    "segment",
    "clv",
    "churn_probability",
    "horizon_days",
    "as_of",
    "clv_model_version",
    "segments_model_version",
]


def score_customers(cfg: DictConfig) -> pd.DataFrame:
    """One row per customer seen on or before ``score.as_of``, with segment and every CLV output (a
    purchase-only CLV model, trained on a log without amounts, has no value columns: none are added)."""
    return pd.concat(list(score_chunks(cfg)), ignore_index=True)


def score_chunks(cfg: DictConfig) -> Iterator[pd.DataFrame]:
    """The scoring table in chunks of ``score.chunk_customers`` customers, in customer-id order.

    The order log is reduced to one row per customer first (it must fit in memory, ~20 bytes per order
    after loading); the models' outputs, intervals included, exist for one chunk at a time, so their
    memory is bounded by the chunk size, not by the number of customers.
    """
    for table, _ in _scored_parts(cfg):
        yield table


def _scored_parts(
    cfg: DictConfig, excluded: dict[str, int] | None = None
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``score_chunks``' tables, each with the customer-table rows it scored (the report profiles them);
    ``excluded`` receives how many customers each privacy reason left out."""
    excluded = {} if excluded is None else excluded
    validate_score_config(cfg)
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    clv_version = registry.require_champion(cfg.tracking.clv_model, cfg.tracking.alias)
    segments_version = registry.require_champion(cfg.tracking.segments_model, cfg.tracking.alias)

    clv_model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{clv_version.version}")
    horizon = cfg.score.horizon_days
    if horizon is None:
        horizon = default_horizon(clv_model)
    # Refuse a horizon beyond the bounds before any data is read (the served model refuses it too).
    step = clv_model.unwrap_python_model().spec["discount_step_days"]
    horizon = check_horizon(horizon, step, key="score.horizon_days")
    params = {"horizon_days": horizon, "intervals": bool(cfg.score.intervals)}

    orders, report = load_permitted_orders(cfg)
    excluded.update(report.suppressed)
    as_of = parse_day(cfg.score.as_of, "score.as_of") or pd.Timestamp(report.last_date)
    later = int((orders["date"] > as_of).sum())
    if later:
        log.info(
            "score.as_of %s: %s of %s orders are later and not used",
            as_of.date(),
            f"{later:,}",
            f"{len(orders):,}",
        )
    features = with_covariates(cfg, clv_model, customer_features(orders, as_of))

    segments_model = mlflow.pyfunc.load_model(
        f"models:/{cfg.tracking.segments_model}/{segments_version.version}"
    )
    feature_set = segments_model.unwrap_python_model().model.input_features
    clv_inputs = model_inputs_present(clv_model, features, f"{cfg.tracking.clv_model} v{clv_version.version}")
    segment_columns = _segment_behaviour(feature_set, features, clv_model, segments_version.version, cfg)
    extra = _segment_extras(cfg, feature_set, features, orders, as_of)
    del orders  # only the customer table is needed from here on
    versions = {
        "clv_model_version": str(clv_version.version),
        "segments_model_version": str(segments_version.version),
    }
    for start in range(0, len(features), cfg.score.chunk_customers):
        part = features.iloc[start : start + cfg.score.chunk_customers]
        rows = part.reset_index(drop=True)
        values = clv_model.predict(rows[clv_inputs], params=params)
        inputs = _segment_inputs(
            feature_set,
            rows[segment_columns],
            rows[clv_inputs],
            clv_model,
            horizon,
            values,
            extra.iloc[start : start + len(part)],
        )
        segments = segments_model.predict(inputs, params={"reasons": bool(cfg.score.reasons)})
        table = pd.concat([pd.DataFrame({"customer_id": part.index.to_numpy()}), segments, values], axis=1)
        days = table["next_purchase_days"].where(table["next_purchase_days"] <= NO_DATE_BEYOND_DAYS)
        table["next_purchase_date"] = as_of + pd.to_timedelta(days, unit="D").dt.round("D")
        table["horizon_days"] = float(horizon)
        table["as_of"] = as_of
        yield table.assign(**versions), part


def with_covariates(
    cfg: DictConfig, clv_model: mlflow.pyfunc.PyFuncModel, features: pd.DataFrame
) -> pd.DataFrame:
    """The customer table with the CLV champion's covariate columns from ``data.customers.path`` (none for a
    model without covariates). Customers missing from the file, missing values and levels the training base
    did not have are counted and logged (the design scores them by its documented rule)."""
    spec = clv_model.unwrap_python_model().spec
    columns = spec_covariate_columns(spec)
    if not columns:
        return features
    if cfg.data.customers.path is None:
        raise UserError(
            f"the CLV champion takes covariate column(s) {columns}: set data.customers.path (a customer file)"
        )
    table, _ = load_customers(cfg.data.customers.path, cfg.data.customers.id, columns, [])
    joined = features.join(table[columns], how="left")
    absent = int((~features.index.isin(table.index)).sum())
    _, report = encode(spec["scoring_params"]["covariates"], joined)
    log.info(
        "covariates %s: %s of %s customers are not in %s; filled in: %s",
        columns,
        f"{absent:,}",
        f"{len(features):,}",
        cfg.data.customers.path,
        report.describe(),
    )
    return joined


def default_horizon(clv_model: mlflow.pyfunc.PyFuncModel) -> float:
    """The registered CLV model's default horizon (its ``horizon_days`` parameter)."""
    return next(p.default for p in clv_model.metadata.get_params_schema().params if p.name == "horizon_days")


def model_inputs_present(model: mlflow.pyfunc.PyFuncModel, features: pd.DataFrame, name: str) -> list[str]:
    """The registered model's input columns (its signature), or a one-line UserError when the customer
    table lacks some: a model trained with amounts cannot score a log without them."""
    columns = model.metadata.get_input_schema().required_input_names()
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise UserError(
            f"the champion {name} needs column(s) {missing}, which a log without amounts "
            "(data.columns.amount=null) does not give; train a model on this log first"
        )
    return columns


def _segment_behaviour(
    feature_set: FeatureSet,
    features: pd.DataFrame,
    clv_model: mlflow.pyfunc.PyFuncModel,
    version: str,
    cfg: DictConfig,
) -> list[str]:
    """The customer-table columns the segments champion clusters on (whichever exist for it), or a
    one-line UserError naming what this log cannot give."""
    columns = feature_set.rfm
    clv_outputs = clv_model.metadata.get_output_schema().input_names()
    missing = [c for c in columns if c not in features.columns]
    missing += [c for c in feature_set.extra if c != "regularity" and c not in clv_outputs]
    if missing:
        raise UserError(
            f"the champion {cfg.tracking.segments_model} v{version} clusters on {missing}, which this log "
            "(no amounts) or the CLV champion does not give; train the segments on this log first"
        )
    return columns


def _segment_extras(
    cfg: DictConfig,
    feature_set: FeatureSet,
    features: pd.DataFrame,
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """Segment inputs that need more than a customer's own row, for every customer (in ``features``'
    order, no index): purchase regularity from the orders, customer attributes (the customer file
    ``data.customers.path``; ``score.attributes_path``, with ids in ``customer_id``, overrides it)."""
    extras = pd.DataFrame(index=range(len(features)))
    if "regularity" in feature_set.extra:
        extras["regularity"] = purchase_regularity(orders, as_of).reindex(features.index).to_numpy()
    attributes = [*feature_set.numeric, *feature_set.categorical]
    if attributes:
        if cfg.score.attributes_path is not None:
            file = CustomerFile(str(cfg.score.attributes_path), "customer_id", "score.attributes_path")
        elif cfg.data.customers.path is not None:
            file = CustomerFile(str(cfg.data.customers.path), cfg.data.customers.id, "data.customers.path")
        else:
            raise UserError(
                f"the segments champion clusters on attribute columns {attributes}: set data.customers.path "
                "to a customer file with those columns"
            )
        columns = {"numeric": list(feature_set.numeric), "categorical": list(feature_set.categorical)}
        table, _ = load_attributes(OmegaConf.create({**columns, "protected": []}), file)
        extras = extras.join(join_attributes(features[[]], table, attributes).reset_index(drop=True))
    return extras


def _segment_inputs(
    feature_set: FeatureSet,
    behaviour: pd.DataFrame,
    clv_rows: pd.DataFrame,
    clv_model: mlflow.pyfunc.PyFuncModel,
    horizon: float,
    values: pd.DataFrame,
    extras: pd.DataFrame,
) -> pd.DataFrame:
    """What the segments champion clusters on for these customers: its behaviour columns, and when it was
    trained so, CLV outputs (at the CLV model's own default horizon, as in training) and the extras."""
    inputs = behaviour
    clv_columns = [c for c in feature_set.extra if c != "regularity"]
    if clv_columns:
        default = default_horizon(clv_model)
        if float(default) != float(horizon):
            values = clv_model.predict(clv_rows, params={"horizon_days": float(default), "intervals": False})
        inputs = inputs.join(values[clv_columns])
    return inputs.join(extras.reset_index(drop=True))


def score(cfg: DictConfig) -> Path | str:
    """Score, then write the table, its segment report and (given ``score.previous``) the segment
    migration, each atomically, and log them in a scoring run.

    ``engine=spark`` hands the whole job to ``spark_scoring`` (its output may be a remote URI: a str)."""
    if cfg.engine.name == "spark":
        return spark_scoring.score(cfg)
    previous = None if cfg.score.previous is None else load_previous_scores(Path(cfg.score.previous))
    excluded: dict[str, int] = {}  # customers left out per privacy reason (counts only)
    kept: list[pd.DataFrame] = []  # the few columns the migration, the report and the summary line need
    profiled: list[pd.DataFrame] = []

    # Analyst extracts may leave the data owner: score.pseudonymise writes keyed pseudonyms in the table
    # (the migration then matches them with a pseudonymised previous scoring; it holds counts only); the
    # CRM-facing membership and change set keep the real ids.
    key = project_key(cfg.privacy) if cfg.score.pseudonymise else None

    def chunks() -> Iterator[pd.DataFrame]:
        for chunk, part in _scored_parts(cfg, excluded):
            kept.append(chunk[[c for c in chunk.columns if c in REPORT_COLUMNS or c.startswith(PART)]])
            profiled.append(part[[c for c in PROFILE_COLUMNS if c in part.columns]])
            chunk = typed_text(chunk)
            yield chunk if key is None else chunk.assign(customer_id=pseudonyms(chunk["customer_id"], key))

    prior = _previous_membership(cfg, Path(cfg.score.output))  # read before this scoring replaces it
    listed_at_start = SuppressionList.stamp(cfg.privacy.suppression_list)
    output = Path(cfg.score.output)
    with StagedFiles() as staged:  # every file is swapped in only once all are written and the sink committed
        rows = staged.table_chunks(chunks(), output)
        table = pd.concat(kept, ignore_index=True)
        membership, changes = _stage_membership(staged, table, output, prior)
        transitions = None
        if previous is not None:
            extract = (
                table if key is None else table.assign(customer_id=pseudonyms(table["customer_id"], key))
            )
            _same_kind_of_ids(previous, extract, Path(cfg.score.previous))
            transitions = transition_table(previous, extract)
            staged.table(transitions, reporting.migration_path(output))
        report = None
        if cfg.score.report:
            with run_logging.figures(cfg.tracking.plots):
                report = _stage_report(staged, cfg, table, pd.concat(profiled), transitions, output)
        if SuppressionList.stamp(cfg.privacy.suppression_list) != listed_at_start:
            raise UserError(
                f"the suppression list {cfg.privacy.suppression_list} changed while scoring (a forget ran): "
                "nothing written; score again"
            )
        if cfg.score.sink is not None:
            _sink(cfg, membership, changes)
        staged.commit()
    with run_logging.figures(cfg.tracking.plots):
        _log_scoring_run(cfg, table, transitions, report, excluded)
    log.info(
        f"scored {rows:,} customers as of {table['as_of'].iloc[0].date()} with "
        f"{cfg.tracking.clv_model} v{table['clv_model_version'].iloc[0]} and {cfg.tracking.segments_model} "
        f"v{table['segments_model_version'].iloc[0]} -> {output}"
    )
    return output


def typed_text(chunk: pd.DataFrame) -> pd.DataFrame:
    """The explanation's text columns as strings: a chunk where one is empty for everyone would otherwise
    give the Parquet file a null column that the next chunk's text cannot be written into."""
    return chunk.astype({c: "string" for c in TEXT_REASONS if c in chunk.columns})


def _same_kind_of_ids(previous: pd.DataFrame, current: pd.DataFrame, path: Path) -> None:
    """A pseudonymised scoring follows a pseudonymised one, a plain one a plain one: else no customer
    would match and the migration would be silently empty."""
    kinds = [is_pseudonymised(t["customer_id"]) for t in (previous, current)]
    if kinds[0] != kinds[1]:
        said = {True: "pseudonymised", False: "plain"}
        raise UserError(
            f"score.previous {path} has {said[kinds[0]]} ids and this scoring {said[kinds[1]]} ones: "
            "set score.pseudonymise as that scoring did"
        )


def _previous_membership(cfg: DictConfig, output: Path) -> tuple[pd.DataFrame | None, int]:
    """The membership the change set is measured against: beside ``score.previous`` when given, else the
    one beside this output (a rescore), and the highest segment id number ever issued (their records)."""
    candidates = [Path(cfg.score.previous)] if cfg.score.previous is not None else []
    candidates.append(output)
    recorded = max((_issued(reporting.segment_ids_path(path)) for path in candidates), default=0)
    for path in candidates:
        membership = reporting.membership_path(path)
        if membership.exists():
            previous = pd.read_parquet(membership)
            return previous, membership_ids.highest_issued(previous, recorded)
    return None, recorded


def _issued(path: Path) -> int:
    return int(json.loads(path.read_text())["last_issued"]) if path.exists() else 0


def _stage_membership(
    staged: StagedFiles, table: pd.DataFrame, output: Path, prior: tuple[pd.DataFrame | None, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``<name>.membership.parquet`` / ``.csv`` (one row per customer, stable segment ids) and
    ``<name>.changes.parquet`` / ``.csv`` (added, changed, removed since the previous membership)."""
    previous, last_issued = prior
    current = table[["customer_id", "segment", "segment_name", "segments_model_version", "as_of"]]
    membership, last_issued = membership_ids.assign_segment_ids(current, previous, last_issued)
    changes = membership_ids.change_set(previous, membership)
    for path, frame in (
        (reporting.membership_path(output), membership),
        (reporting.changes_path(output), changes),
    ):
        staged.table(frame, path)
        staged.table(frame, path.with_suffix(".csv"))
    staged.text(json.dumps({"last_issued": last_issued}) + "\n", reporting.segment_ids_path(output))
    counts = changes["change"].value_counts()
    log.info(
        "membership: %s customers in %d segment ids; since the previous: %s added, %s changed, %s removed",
        f"{len(membership):,}",
        membership["segment_id"].nunique(),
        *(f"{int(counts.get(kind, 0)):,}" for kind in ("added", "changed", "removed")),
    )
    return membership, changes


def _sink(cfg: DictConfig, membership: pd.DataFrame, changes: pd.DataFrame) -> None:
    """``score.sink``: the membership and its change set upserted into PostgreSQL in one transaction."""
    counts = crm_sink.upsert_membership(cfg.score.sink, cfg.score.sink_table, membership, changes)
    log.info(
        "sink %s: table %s holds the %s memberships (%s rewritten, %s deleted); %s rows in %s_changes",
        crm_sink.safe_url(cfg.score.sink),
        cfg.score.sink_table,
        f"{len(membership):,}",
        f"{counts['rewritten']:,}",
        f"{counts['deleted']:,}",
        f"{counts['changes']:,}",
        cfg.score.sink_table,
    )


def _stage_report(
    staged: StagedFiles,
    cfg: DictConfig,
    table: pd.DataFrame,
    base: pd.DataFrame,
    transitions: pd.DataFrame | None,
    output: Path,
) -> Path:
    """The scoring's segment report, beside the scores (``<name>.report.html``)."""
    clv_version, segments_version = (
        table["clv_model_version"].iloc[0],
        table["segments_model_version"].iloc[0],
    )
    as_of = table["as_of"].iloc[0]
    actions = reporting.segment_actions(cfg.tracking.segments_model, segments_version)
    facts = reporting.scoring_facts(
        cfg.data.name, as_of, len(table), clv_version, segments_version, table["horizon_days"].iloc[0]
    )
    profile_table = reporting.scoring_profile(base, table, actions)
    parts = table[[c for c in table.columns if c.startswith(PART)]]
    if len(parts.columns):  # why customers are in each segment, from their explanations
        criteria = criteria_by_segment(
            parts.rename(columns=lambda c: c[len(PART) :]), table["segment"].to_numpy()
        )
        profile_table["membership_criteria"] = [criteria.get(int(s), "") for s in profile_table.index]
    page = reporting.scoring_report(
        f"Customer segments as of {as_of.date()}", facts, profile_table, transitions
    )
    path = reporting.report_path(output)
    staged.text(page, path)
    return path


def _log_scoring_run(
    cfg: DictConfig,
    table: pd.DataFrame,
    transitions: pd.DataFrame | None,
    report: Path | None,
    excluded: dict[str, int],
) -> None:
    """A run in the scoring experiment: what was scored with which versions, the segment shares, the
    report and the migration (aggregates only)."""
    tags = run_logging.git_state() | {"data.name": cfg.data.name}
    as_of = str(table["as_of"].iloc[0].date())
    name = f"score · {cfg.data.name} · as of {as_of}"
    with run_logging.run(cfg.tracking.scoring_experiment, cfg.tracking.artifact_root, name, tags):
        mlflow.log_params(
            {
                "as_of": as_of,
                "horizon_days": table["horizon_days"].iloc[0],
                "output": str(cfg.score.output),
                "previous": str(cfg.score.previous),
                "pseudonymise": bool(cfg.score.pseudonymise),
                "sink": "none" if cfg.score.sink is None else crm_sink.safe_url(cfg.score.sink),
                "clv_model_version": table["clv_model_version"].iloc[0],
                "segments_model_version": table["segments_model_version"].iloc[0],
            }
        )
        shares = table["segment_name"].value_counts(normalize=True)
        run_logging.log_metrics(
            {"scored.customers": len(table)}
            | {f"share.{k}": v for k, v in shares.items()}
            | {f"privacy.excluded.{reason}": n for reason, n in excluded.items()}
        )
        if report is not None:
            mlflow.log_artifact(str(report), "report")
        if transitions is not None:
            summary = migration_summary(transitions)
            run_logging.log_metrics(summary)
            run_logging.log_table(transitions, "migration/transitions.csv")
            matrix = transition_matrix(transitions, "share_of_from")
            run_logging.log_figure(lambda: plots.migration_heatmap(matrix), "plots/migration.png")
            log.info(
                "migration: %s customers followed, %.1f%% changed segment",
                f"{summary['migration.customers_matched']:,.0f}",
                100 * summary["migration.share_changed_segment"],
            )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="score")
def main(cfg: DictConfig) -> None:
    run_job(score, cfg)


if __name__ == "__main__":
    register_configs()
    main()
