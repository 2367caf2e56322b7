"""Every corpus log shape through ``train`` and ``score`` with the default settings, as one table.

``make shapes`` (``python -m customer_value.jobs.shape_report``) writes ``docs/log-shapes.md``: per shape its
holdout metrics beside the baselines, what the layers did to the level of revenue, and how many and how
distinct the segments are. The test suite runs the same ``run_shape`` on every shape.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from hydra import compose, initialize_config_dir

from customer_value.data.log_shapes import LOG_SHAPES, generate_shape
from customer_value.schema import CONF_DIR, register_configs

REPORTED = {  # column -> metric
    "churn AUC": "holdout.churn_auc",
    "recency AUC": "baseline.churn_auc",
    "Brier": "holdout.churn_brier",
    "revenue Spearman": "holdout.revenue_spearman",
    "spend Spearman": "baseline.revenue_spearman",
    "agg. revenue err % (model)": "holdout.aggregate_revenue_error_pct",
    "agg. revenue err % (purchase model alone)": "btyd.aggregate_revenue_error_pct",
    "segments": "segments.n_segments",
    "smallest share": "segments.smallest_segment_share",
    "least distinct pair (SD)": "segments.min_distinctness",
}


def compose_config(name: str, overrides: list[str]) -> object:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def shape_overrides(shape: str, orders_path: Path, folder: Path) -> list[str]:
    """The only settings a user would give: where the file is (and that it has no amounts) and the store."""
    overrides = [
        "data=file",
        f"data.path={orders_path}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"tracking.artifact_root={folder / 'artifacts'}",
    ]
    if not LOG_SHAPES[shape].has_amounts:
        overrides.append("data.columns.amount=null")
    return overrides


def run_shape(shape: str, folder: Path, seed: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """Generate the shape into ``folder``, train and score it with the defaults; (train metrics, scores)."""
    from customer_value.jobs.score import score  # the jobs import the whole stack: only when a shape runs
    from customer_value.jobs.train import train

    folder.mkdir(parents=True, exist_ok=True)
    orders_path = folder / "orders.csv"
    generate_shape(shape, seed).to_csv(orders_path, index=False)
    overrides = shape_overrides(shape, orders_path, folder)
    metrics = train(compose_config("train", overrides))
    output = folder / "scores.parquet"
    score(compose_config("score", [*overrides, f"score.output={output}"]))
    return metrics, pd.read_parquet(output)


def report_row(shape: str, metrics: dict[str, float], scores: pd.DataFrame) -> dict[str, object]:
    row: dict[str, object] = {"shape": shape, "what it is": LOG_SHAPES[shape].description}
    row["customers"] = len(scores)
    row |= {column: metrics.get(metric, float("nan")) for column, metric in REPORTED.items()}
    tags = mlflow.search_runs(experiment_names=["customer-clv"], order_by=["start_time DESC"]).iloc[0]
    decisions = {layer: str(tags.get(f"tags.clv.layers.{layer}") or "-") for layer in ("churn", "value")}
    row["layers"] = ", ".join(f"{layer} {decision.split(' (')[0]}" for layer, decision in decisions.items())
    return row


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style table (pandas' own needs the tabulate package)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/log-shapes.md"))
    parser.add_argument("--shapes", nargs="*", default=sorted(LOG_SHAPES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            metrics, scores = run_shape(shape, Path(tmp) / shape)
            rows.append(report_row(shape, metrics, scores))
            print(f"{shape}: done", flush=True)
    table = markdown_table(pd.DataFrame(rows))
    args.output.write_text(
        args.output.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + table + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
