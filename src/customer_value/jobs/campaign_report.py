"""``python -m customer_value.campaign report``: what a campaign earned, per segment and overall, measured
on today's order log against its control group, logged to the campaign's run and shown in an HTML page."""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from customer_value.campaign.lift import ALL, lift_table, outcomes, slug
from customer_value.data.sources import load_orders_withholding
from customer_value.errors import UserError
from customer_value.jobs.atomic_files import write_text_atomically
from customer_value.jobs.entrypoint import run_job
from customer_value.privacy.suppression import meet_output
from customer_value.schema import CONF_DIR, parse_day, register_configs
from customer_value.tracking import run_logging

log = logging.getLogger(__name__)


def campaign_report(cfg: DictConfig) -> Path:
    """Measure the campaign's lift on the data's orders since its start; returns the HTML page's path."""
    options = cfg.report
    run_logging.configure(cfg.tracking.uri, credentials_file=cfg.tracking.credentials_file)
    client = MlflowClient()
    run = _campaign_run(client, cfg.tracking.campaigns_experiment, options.campaign_id)
    folder = Path(run.data.tags["campaign.lists"])
    lists = _read_lists(folder)
    orders, _, withheld = load_orders_withholding(cfg)
    # objected or forgotten since: out of both arms; pseudonymised lists meet a pseudonymised log
    lists, orders, excluded = meet_output(lists, orders, withheld, cfg.privacy)
    start = parse_day(run.data.params.get("start"), f"the start of campaign {options.campaign_id}")
    end = parse_day(options.end, "report.end") if options.end else orders["date"].max()
    if start is None:
        raise UserError(f"campaign {options.campaign_id}: its run records no start date (campaign.start)")
    if end <= start:
        raise UserError(
            f"{cfg.data.path or cfg.data.name}: no orders after the campaign's start {start.date()}"
        )
    table = lift_table(
        outcomes(lists, orders, start, end),
        planned_lift=float(run.data.params["power.relative_lift"]),
        alpha=float(run.data.params["power.alpha"]),
        power_level=float(run.data.params["power.power"]),
    )
    page = write_text_atomically(
        report_page(options.campaign_id, start, end, table),
        Path(options.output) if options.output else folder / "report.html",
        "report.output",
    )
    _log_to_run(client, run.info.run_id, table, page, start, end)
    for reason, count in excluded.items():  # listed customers left out of both arms since the campaign began
        client.log_metric(run.info.run_id, f"lift.privacy.excluded.{reason}", float(count))
    for row in table.to_dict("records"):
        log.info("campaign %s lift, %s: %s", options.campaign_id, row["segment"], _summary(row))
    return page


def _campaign_run(client: MlflowClient, experiment_name: str, campaign_id: str) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name(experiment_name)
    found = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id],
            f"tags.`campaign.id` = '{campaign_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if not found:
        raise UserError(
            f"report.campaign_id {campaign_id!r}: no finished campaign run in {experiment_name} "
            "(make campaign)"
        )
    return found[0]


def _read_lists(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("*/*.parquet"))
    if not files:
        raise UserError(f"campaign lists {folder}: no lists there (moved or deleted since make campaign?)")
    return pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)


def _log_to_run(
    client: MlflowClient, run_id: str, table: pd.DataFrame, page: Path, start: pd.Timestamp, end: pd.Timestamp
) -> None:
    """Aggregates only: the lift table, its figures as metrics and the page, on the campaign's own run."""
    for row in table.to_dict("records"):
        segment = "all" if row["segment"] == ALL else slug(row["segment"])
        for key, value in row.items():
            if key != "segment" and isinstance(value, (int, float)) and math.isfinite(float(value)):
                client.log_metric(run_id, f"lift.{segment}.{key}", float(value))
    client.set_tag(run_id, "lift.window", f"{start.date()}..{end.date()}")
    client.log_text(run_id, table.to_csv(index=False), "lift/lift.csv")
    client.log_artifact(run_id, str(page), "lift")


def _summary(row: dict) -> str:
    if "purchase_rate.diff" not in row or pd.isna(row.get("purchase_rate.diff")):
        return "too few customers in an arm"
    text = (
        f"purchase rate {row['purchase_rate.treatment']:.1%} vs {row['purchase_rate.control']:.1%}, "
        f"{row['purchase_rate.diff']:+.1%} "
        f"[{row['purchase_rate.ci_low']:+.1%}, {row['purchase_rate.ci_high']:+.1%}]"
    )
    if "incremental_revenue.diff" in row and not pd.isna(row["incremental_revenue.diff"]):
        text += f", incremental revenue {row['incremental_revenue.diff']:,.0f}"
    return text + ("" if row["powered"] else " (under-powered)")


def report_page(campaign_id: str, start: pd.Timestamp, end: pd.Timestamp, table: pd.DataFrame) -> str:
    """A self-contained page (no script, no external reference): one row per segment and overall."""

    def cell(row: dict, measure: str, percent: bool) -> str:
        if f"{measure}.diff" not in row or pd.isna(row.get(f"{measure}.diff")):
            return "<td>-</td><td>-</td><td>-</td>"
        shown = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:,.2f}")
        signed = (lambda v: f"{v:+.1%}") if percent else (lambda v: f"{v:+,.2f}")
        low, high = signed(row[f"{measure}.ci_low"]), signed(row[f"{measure}.ci_high"])
        interval = f"{signed(row[f'{measure}.diff'])} [{low}, {high}]"
        arms = f"<td>{shown(row[f'{measure}.treatment'])}</td><td>{shown(row[f'{measure}.control'])}</td>"
        return f"{arms}<td>{interval}</td>"

    body = []
    for row in table.to_dict("records"):
        name = "All segments" if row["segment"] == ALL else str(row["segment"])
        revenue = row.get("incremental_revenue.diff")
        body.append(
            f"<tr class='segment'><th>{html.escape(name)}</th>"
            f"<td>{row['treatment_customers']:,}</td><td>{row['control_customers']:,}</td>"
            + cell(row, "purchase_rate", True)
            + cell(row, "revenue_per_customer", False)
            + cell(row, "retention", True)
            + f"<td>{'-' if revenue is None or pd.isna(revenue) else f'{revenue:+,.0f}'}</td>"
            + f"<td>{'yes' if row.get('powered') is True else 'no'}</td></tr>"
        )
    head = (
        "<tr><th rowspan=2>Segment</th><th colspan=2>Customers</th><th colspan=3>Purchase rate</th>"
        "<th colspan=3>Revenue per customer</th><th colspan=3>Retention</th>"
        "<th rowspan=2>Incremental revenue</th>"
        "<th rowspan=2>Large enough</th></tr><tr><th>treatment</th><th>control</th>"
        + "<th>treatment</th><th>control</th><th>difference [95 %]</th>" * 3
        + "</tr>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Campaign {html.escape(campaign_id)}: lift</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body>
<h1>Campaign {html.escape(campaign_id)}: what it earned</h1>
<p>Window {start.date()} to {end.date()}: customers who got the offer (treatment) against the randomly
held-back control, per segment. Differences with 95 % intervals (proportions: normal interval of the
difference; revenue: Welch's interval of the difference in means). Retention: a purchase in the window's
second half. Incremental revenue: the revenue difference times the treated customers. "Large enough":
the arms could detect the lift the campaign was planned for.</p>
<table>{head}{"".join(body)}</table>
</body></html>
"""


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="campaign_report")
def main(cfg: DictConfig) -> None:
    page = run_job(campaign_report, cfg)
    if page is not None:
        print(f"campaign {cfg.report.campaign_id}: lift report in {page}")


if __name__ == "__main__":
    register_configs()
    main()
