"""``make campaign``: from a scoring output, an audience by rules, the standing global holdout left out,
treatment and control arms by keyed hash, the size the wanted lift needs, one list per arm and segment,
and a run in the campaigns experiment with the definition, sizes and expected value (aggregates only)."""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from customer_value.campaign import assignment, power
from customer_value.campaign.audience import select_audience
from customer_value.campaign.lift import slug
from customer_value.errors import UserError
from customer_value.jobs.entrypoint import run_job
from customer_value.keys import derived_key, secret_key
from customer_value.privacy.suppression import suppression_from_config
from customer_value.schema import CONF_DIR, parse_day, register_configs
from customer_value.tracking import run_logging

log = logging.getLogger(__name__)
LIST_COLUMNS = ["customer_id", "segment", "arm", "campaign_id"]
HOLDOUT_PURPOSE = "global-holdout"  # the standing holdout's key: the same for every campaign


def campaign_key_purpose(campaign_id: str) -> str:
    return f"campaign:{campaign_id}"


def campaign(cfg: DictConfig) -> Path:
    """Select, assign, size, write the lists and log the run; returns the campaign's folder."""
    options = cfg.campaign
    _check_options(options)
    # Customers forgotten since the scoring (forget also rewrites the scoring itself); the customer file's
    # objections and consent were applied when the scoring was made (a campaign reads no customer file).
    scores, excluded = suppression_from_config(cfg, columns=False).exclude(_read_scores(Path(options.scores)))
    rules = OmegaConf.to_container(options.audience, resolve=True)
    audience = select_audience(scores, rules, options.scores)
    if audience.empty:
        raise UserError(f"campaign.scores {options.scores}: no customer matches campaign.audience's rules")
    key = secret_key(options.key_env, options.key_file)
    audience["arm"] = assignment.assign_arms(
        audience["customer_id"],
        derived_key(key, campaign_key_purpose(options.id)),
        derived_key(key, HOLDOUT_PURPOSE),
        options.control_share,
        options.global_holdout_share,
    )
    sizes = arm_sizes(audience, options.value_column)
    sizing = power_check(audience, options)
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    name = f"campaign · {options.id}"
    with run_logging.run(cfg.tracking.campaigns_experiment, cfg.tracking.artifact_root, name, {}):
        mlflow.set_tags({"campaign.id": options.id})
        mlflow.log_params(
            {
                "campaign.id": options.id,
                "start": _start(options.start, scores),
                "scores": options.scores,
                "control_share": options.control_share,
                "global_holdout_share": options.global_holdout_share,
                "power.relative_lift": options.power.relative_lift,
                "power.alpha": options.power.alpha,
                "power.power": options.power.power,
                "value_column": options.value_column,
            }
        )
        run_logging.log_json({"audience": rules, "as_of": _as_of(scores)}, "campaign/definition.json")
        run_logging.log_table(sizes, "campaign/sizes.csv")
        run_logging.log_table(sizing, "campaign/power.csv")
        run_logging.log_metrics(
            _metrics(audience, sizes, sizing) | {f"privacy.excluded.{r}": n for r, n in excluded.items()}
        )
        folder = write_lists(audience, options.id, Path(options.output_dir))
        mlflow.set_tags({"campaign.lists": str(folder.resolve())})
    return folder


def _check_options(options: DictConfig) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(options.id)):
        raise UserError(
            f"campaign.id {options.id!r}: letters, digits, '.', '_' and '-' only (it names a folder)"
        )
    if not 0 < options.control_share < 1:
        raise UserError(f"campaign.control_share must be in (0, 1), got {options.control_share}")
    if not 0 <= options.global_holdout_share < 1:
        raise UserError(
            f"campaign.global_holdout_share must be in [0, 1), got {options.global_holdout_share}"
        )
    parse_day(options.start, "campaign.start")  # a one-line error now, not a broken report later


def _read_scores(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"campaign.scores {path}: no such file (make score writes one)")
    scores = (
        pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"customer_id": str})
    )
    missing = [c for c in ("customer_id", "segment_name") if c not in scores.columns]
    if missing:
        raise UserError(f"campaign.scores {path}: column(s) {missing} missing; is it a scoring output?")
    return scores


def _start(start: str | None, scores: pd.DataFrame) -> str:
    """The day the offer takes effect: campaign.start, else the scoring's as-of date."""
    day = parse_day(start, "campaign.start") if start else None
    found = str(day.date()) if day is not None else _as_of(scores)
    if found is None:
        raise UserError("campaign.start is required: the scoring output has no as_of column to take it from")
    return found


def _as_of(scores: pd.DataFrame) -> str | None:
    return (
        str(pd.Timestamp(scores["as_of"].iloc[0]).date())
        if "as_of" in scores.columns and len(scores)
        else None
    )


def arm_sizes(audience: pd.DataFrame, value_column: str) -> pd.DataFrame:
    """Customers and expected value per segment and arm (the global holdout's too: it is measured later)."""
    value = (
        audience[value_column] if value_column in audience.columns else pd.Series(0.0, index=audience.index)
    )
    grouped = audience.assign(value=value).groupby(["segment_name", "arm"], observed=True)
    return grouped.agg(customers=("customer_id", "size"), expected_value=("value", "sum")).reset_index()


def power_check(audience: pd.DataFrame, options: DictConfig) -> pd.DataFrame:
    """Per segment and overall: the control's expected purchase rate, the customers (treatment + control)
    needed to detect ``power.relative_lift``, those available, and the smallest detectable lift. A segment
    or audience too small is said in one line each."""
    wanted = options.power
    rows = []
    tested = audience[audience["arm"] != assignment.HOLDOUT]
    groups = [("all", tested)] + [
        (str(name), part) for name, part in tested.groupby("segment_name", observed=True)
    ]
    for name, part in groups:
        rate = wanted.base_rate
        if rate is None:
            rate = float(part["purchase_probability"].mean()) if "purchase_probability" in part else math.nan
        needed = power.required_customers(
            rate, wanted.relative_lift, options.control_share, wanted.alpha, wanted.power
        )
        detectable = power.detectable_lift(len(part), rate, options.control_share, wanted.alpha, wanted.power)
        rows.append(
            {
                "segment_name": name,
                "base_rate": rate,
                "customers": len(part),
                "customers_needed": needed,
                "detectable_lift": detectable,
                "enough": len(part) >= needed,
            }
        )
        if len(part) < needed:
            log.warning(
                "campaign: %s has %s customers in treatment and control; detecting a %+.0f%% lift on a "
                "%.1f%% purchase rate needs %s (it can detect %s)",
                "the audience" if name == "all" else f"segment {name}",
                f"{len(part):,}",
                100 * wanted.relative_lift,
                100 * rate,
                "no number of customers" if math.isinf(needed) else f"{needed:,.0f}",
                "no lift" if math.isinf(detectable) else f"{100 * detectable:+.0f}%",
            )
    overall = rows[0]
    if overall["enough"]:
        log.info(
            "campaign: %s customers in treatment and control detect a %+.0f%% lift (needs %s; smallest "
            "detectable %+.1f%%)",
            f"{overall['customers']:,}",
            100 * wanted.relative_lift,
            f"{overall['customers_needed']:,.0f}",
            100 * overall["detectable_lift"],
        )
    return pd.DataFrame(rows)


def _metrics(audience: pd.DataFrame, sizes: pd.DataFrame, sizing: pd.DataFrame) -> dict[str, float]:
    metrics = {"audience.customers": float(len(audience))}
    for arm, count in audience["arm"].value_counts().items():
        metrics[f"arm.{arm}.customers"] = float(count)
    for row in sizes.itertuples():
        key = slug(row.segment_name)
        metrics[f"segment.{key}.{row.arm}.customers"] = float(row.customers)
        metrics[f"segment.{key}.{row.arm}.expected_value"] = float(row.expected_value)
    for arm, value in sizes.groupby("arm")["expected_value"].sum().items():
        metrics[f"arm.{arm}.expected_value"] = float(value)
    overall = sizing.iloc[0]
    metrics["power.customers_needed"] = float(overall["customers_needed"])
    metrics["power.detectable_lift"] = float(overall["detectable_lift"])
    metrics["power.enough"] = float(bool(overall["enough"]))
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def write_lists(audience: pd.DataFrame, campaign_id: str, output_dir: Path) -> Path:
    """``<output_dir>/<id>/<arm>/<segment>.csv`` and ``.parquet`` for treatment and control (the global
    holdout is in no list), written in a temporary folder and swapped in whole: a crash leaves the old
    lists or the new ones, never a mix (between the two renames the old folder is ``.<id>.previous``,
    which the next run puts back first)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / campaign_id
    previous = output_dir / f".{campaign_id}.previous"
    if previous.exists() and not final.exists():  # a crash between the two renames below: put it back
        previous.rename(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{campaign_id}.", dir=output_dir))
    try:
        listed = audience[audience["arm"] != assignment.HOLDOUT]
        table = pd.DataFrame(
            {
                "customer_id": listed["customer_id"].astype(str),
                "segment": listed["segment_name"].astype(str),
                "arm": listed["arm"],
                "campaign_id": campaign_id,
            }
        )
        for (arm, segment), part in table.groupby(["arm", "segment"], observed=True):
            folder = staging / str(arm)
            folder.mkdir(exist_ok=True)
            ordered = part.sort_values("customer_id")[LIST_COLUMNS]
            ordered.to_csv(folder / f"{slug(segment)}.csv", index=False)
            ordered.to_parquet(folder / f"{slug(segment)}.parquet", index=False)
        (staging / "README.txt").write_text(
            f"Campaign {campaign_id}: one list per arm and segment (customer_id, segment, arm, campaign_id)\n"
            "The global holdout is in no list. Send the offer to treatment only.\n"
        )
        replaced = final.exists()
        if replaced:
            shutil.rmtree(previous, ignore_errors=True)
            final.rename(previous)
        staging.rename(final)
        if replaced:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="campaign")
def main(cfg: DictConfig) -> None:
    folder = run_job(campaign, cfg)
    if folder is not None:
        print(f"campaign {cfg.campaign.id}: lists in {folder}")


if __name__ == "__main__":
    register_configs()
    main()
