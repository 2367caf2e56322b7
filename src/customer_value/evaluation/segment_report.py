"""The segment report marketing opens: one self-contained HTML page (styles inline, plots embedded as PNG
data URIs, no scripts, nothing fetched), so it can be mailed, attached to a ticket or shown by the MLflow
UI's artifact viewer as it is.

It is built from aggregates only (a segment profile, migration and outcome tables): no customer id can
reach it. Rendering returns the page as text; the jobs write it and log it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1d2430; }
h1 { margin-bottom: .2rem; } .facts { color: #5a6473; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #dde2ea; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.segments { display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); gap: 1rem; }
.segment { border: 1px solid #dde2ea; border-radius: .5rem; padding: .8rem 1rem; }
.segment h3 { margin: 0 0 .3rem; }
.segment dl { display: grid; grid-template-columns: auto auto; gap: .15rem 1rem; }
.segment dt { color: #5a6473; } .segment dd { margin: 0; text-align: right; }
.action { background: #eef4ff; border-radius: .3rem; padding: .4rem .6rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; }
"""


@dataclass
class ReportInputs:
    """What a page shows. ``profile``: one row per segment id with ``segment_name``, ``customers``,
    ``share`` and any of the profile means (``mean_days_since_last``, ``mean_n_orders``, ...),
    ``value_share`` and ``recommended_action``. ``outcomes`` (realised retention, by segment name) and
    ``migration`` (by segment name: ``stayed_share``, ``arrived``) appear once known."""

    title: str
    facts: Mapping[str, str]
    profile: pd.DataFrame
    outcomes: pd.DataFrame | None = None
    migration: pd.DataFrame | None = None
    # caption -> figure, or its PNG bytes when the caller has rendered it already (figure_png)
    figures: Mapping[str, Figure | bytes] = field(default_factory=dict)
    notes: Sequence[str] = ()


# (profile column, label, format): the KPIs a segment's card lists, in order, when the profile has them.
CARD_ROWS = (
    ("customers", "customers", "{:,.0f}"),
    ("share", "share of customers", "{:.1%}"),
    ("mean_days_since_last", "days since last purchase (mean)", "{:,.0f}"),
    ("mean_n_orders", "purchase days (mean)", "{:,.1f}"),
    ("mean_mean_order_value", "order value (mean)", "{:,.2f}"),
    ("mean_T_days", "days since first purchase (mean)", "{:,.0f}"),
    ("mean_clv", "predicted CLV (mean)", "{:,.2f}"),
    ("mean_churn_probability", "churn probability (mean)", "{:.1%}"),
    ("value_share", "share of predicted value", "{:.1%}"),
)
OUTCOME_ROWS = (
    ("predicted_retention", "predicted retention", "{:.1%}"),
    ("realised_retention", "realised retention", "{:.1%}"),
    ("predicted_revenue", "predicted revenue", "{:,.0f}"),
    ("realised_revenue", "realised revenue", "{:,.0f}"),
)
MIGRATION_ROWS = (
    ("stayed_share", "stayed since the previous scoring", "{:.1%}"),
    ("arrived", "arrived from other segments", "{:,.0f}"),
)


def render(report: ReportInputs) -> str:
    """The page as HTML text."""
    cards = "\n".join(_card(segment, row, report) for segment, row in report.profile.iterrows())
    facts = " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in report.facts.items())
    notes = "".join(f"<p>{html.escape(note)}</p>" for note in report.notes)
    figures = "\n".join(
        f'<figure><img alt="{html.escape(caption)}" src="{figure_data_uri(figure)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, figure in report.figures.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(report.title)}</h1><p class="facts">{facts}</p>{notes}'
        f'<h2>Segments</h2>{_overview(report)}<div class="segments">{cards}</div>'
        f"{'<h2>Plots</h2>' if figures else ''}{figures}</body></html>\n"
    )


def figure_png(figure: Figure) -> bytes:
    """``figure`` as PNG bytes: rendered once where the same image is also logged as a run's plot."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def figure_data_uri(figure: Figure | bytes) -> str:
    """A PNG data URI of ``figure`` (or of its PNG bytes): the page carries its images."""
    png = figure if isinstance(figure, bytes) else figure_png(figure)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _overview(report: ReportInputs) -> str:
    profile = report.profile
    columns = [(c, label, f) for c, label, f in CARD_ROWS if c in profile.columns]
    rows = []
    for _, row in profile.iterrows():
        name = str(row["segment_name"])
        cells = [_cell(row[c], f) for c, _, f in columns]
        cells += [_cell(value, f) for value, f in _extra_values(name, report)]
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    labels = [label for _, label, _ in columns] + [label for label, _ in _extra_labels(report)]
    head = "".join(f"<th>{html.escape(label)}</th>" for label in ["segment", *labels])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _extra_tables(report: ReportInputs) -> list[tuple[pd.DataFrame, tuple[tuple[str, str, str], ...]]]:
    return [
        (t, rows)
        for t, rows in ((report.outcomes, OUTCOME_ROWS), (report.migration, MIGRATION_ROWS))
        if t is not None
    ]


def _extra_labels(report: ReportInputs) -> list[tuple[str, str]]:
    return [(label, f) for table, rows in _extra_tables(report) for c, label, f in rows if c in table.columns]


def _extra_values(name: str, report: ReportInputs) -> list[tuple[object, str]]:
    values = []
    for table, rows in _extra_tables(report):
        for column, _, fmt in rows:
            if column in table.columns:
                values.append((table[column].get(name, math.nan), fmt))
    return values


def _card(segment: object, row: pd.Series, report: ReportInputs) -> str:
    name = str(row["segment_name"])
    items = [(label, _cell(row[c], f)) for c, label, f in CARD_ROWS if c in row.index]
    if report.outcomes is None:
        items.append(("realised retention", "not known yet"))
    labels = _extra_labels(report)
    items += [
        (label, _cell(value, f))
        for (label, _), (value, f) in zip(labels, _extra_values(name, report), strict=True)
    ]
    rows = "".join(f"<dt>{html.escape(label)}</dt><dd>{value}</dd>" for label, value in items)
    action = row.get("recommended_action")
    action_html = (
        "" if not isinstance(action, str) or not action else f'<p class="action">{html.escape(action)}</p>'
    )
    criteria = row.get("membership_criteria")
    if isinstance(criteria, str) and criteria:
        action_html = f'<p class="criteria">Why customers are here: {html.escape(criteria)}</p>' + action_html
    return (
        f'<section class="segment" data-segment="{html.escape(str(segment))}">'
        f"<h3>{html.escape(name)}</h3><dl>{rows}</dl>{action_html}</section>"
    )


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return html.escape(fmt.format(value))
