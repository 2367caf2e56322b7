"""Model card: what a reviewer needs on a registered version without opening the run.

Every version gets a Markdown description (data window, row counts, metrics beside the champion's as
re-scored on the same data, config, code commit, producing run) and the same facts as ``card.*`` tags,
so the registry UI, ``MlflowClient.search_model_versions`` and scoring jobs can all read them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from customer_value.tracking.run_logging import flatten

# MLflow stores tag values up to 8,000 characters and descriptions up to 5,000 in its SQL schema.
TAG_LIMIT = 5000
DESCRIPTION_LIMIT = 4900


@dataclass(frozen=True)
class CardFacts:
    """Facts about the data and the run that produced a candidate model."""

    run_id: str
    commit: str
    data: Mapping[str, str]  # data window and row counts, e.g. data.first_date, data.customers
    metrics: Mapping[str, float]  # this version's headline metrics (name -> value)
    config: Mapping[str, Any] = field(default_factory=dict)  # the config sections that shaped the model
    notes: tuple[str, ...] = ()  # what a reader must know first, e.g. no value outputs (no amounts)


def card_tags(facts: CardFacts) -> dict[str, str]:
    """Version tags: ``card.<data key>``, ``card.metric.<name>``, ``card.config`` (JSON), run and commit."""
    tags = {"card.run_id": facts.run_id, "card.git_commit": facts.commit}
    tags |= {f"card.{key}": str(value) for key, value in facts.data.items()}
    tags |= {f"card.metric.{key}": _number(value) for key, value in facts.metrics.items()}
    tags["card.config"] = json.dumps(facts.config, sort_keys=True, default=str)[:TAG_LIMIT]
    if facts.notes:
        tags["card.notes"] = " ".join(facts.notes)[:TAG_LIMIT]
    return tags


def describe(
    name: str,
    version: str,
    alias: str,
    reason: str,
    facts: CardFacts,
    champion_version: str | None,
    champion_metrics: Mapping[str, float],
) -> str:
    """Markdown description of a registered version; the champion column is blank where not re-scored."""
    champion_header = "champion" if champion_version is None else f"champion v{champion_version}"
    lines = [
        f"**{name} v{version}** -> `{alias}` ({reason}).",
        "",
        *(f"> {note}\n" for note in facts.notes),
        f"Run `{facts.run_id}`, commit `{facts.commit}`; full config: "
        f"`runs:/{facts.run_id}/config/resolved_config.yaml`.",
        "",
        "| data | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in facts.data.items()),
        "",
        f"| metric | this version | {champion_header} (same data) |",
        "| --- | --- | --- |",
        *(
            f"| {key} | {_number(value)} | {_number(champion_metrics.get(key))} |"
            for key, value in facts.metrics.items()
        ),
        "",
        "Config: " + ", ".join(f"{key}={value}" for key, value in flatten(facts.config).items()),
    ]
    return "\n".join(lines)[:DESCRIPTION_LIMIT]


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"
