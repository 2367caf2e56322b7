"""Churn on real futures: train with the defaults on a log cut at a date, then judge what came true after.

``make evaluate`` (``python -m customer_value.jobs.evaluate``): the bundled CDNOW master log cut at four
dates and the generated shapes that break BG/NBD's assumptions (``data.behaviour_shapes``), each trained
with the default settings on the orders up to the cut exactly as a user would (``train`` on a file), the
registered model then asked for its churn probability at several horizons and compared with what each
customer did in the following days, which the project never saw. Beside it: the baselines a marketer
uses without us (days since the last purchase, purchase days), the purchase model alone, and every churn
candidate of the selection (``churn_selection``), calibrated. Writes ``docs/churn-evaluation.md`` (the
table) and the calibration deciles as CSV; the test suite runs ``evaluate_future`` on one small log.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from customer_value.bench.timing import machine as bench_machine
from customer_value.data.features import Split, calibration_and_holdout, customer_features
from customer_value.data.loading import load_bundled
from customer_value.evaluation.calibration import (
    calibration_table,
    churn_calibration,
    paired_brier_difference,
)
from customer_value.evaluation.holdout_metrics import churned
from customer_value.jobs.churn_stage import BASELINES, CALIBRATED_BASELINES, LEVEL_SAMPLE, purchase_fitters
from customer_value.jobs.shape_report import compose_config, markdown_table
from customer_value.jobs.stage import sample_positions

log = logging.getLogger(__name__)

CDNOW_CUTS = ("1997-06-30", "1997-09-30", "1997-12-31", "1998-03-31")
HORIZONS_DAYS = (90, 181, 273, 365)
SHAPE_HORIZONS_DAYS = (90, 181, 365)
AUC_TOLERANCE = 0.005  # the done-when: the model's AUC at least the best baseline's minus this


@dataclass(frozen=True)
class Future:
    """A log cut at a date, and the horizons (days) after the cut that the log still covers."""

    log: str
    orders: pd.DataFrame  # cleaned orders (customer_id, date[, amount]) of the whole log
    cut: pd.Timestamp
    horizons: tuple[int, ...]

    @property
    def has_amounts(self) -> bool:
        return "amount" in self.orders.columns


def futures_of(
    log_name: str, orders: pd.DataFrame, cuts: list[str], horizons: tuple[int, ...]
) -> list[Future]:
    """Each cut with the horizons that end by the log's last order day (cuts left with none are skipped)."""
    last = orders["date"].max()
    futures = []
    for cut in cuts:
        day = pd.Timestamp(cut)
        fitting = tuple(h for h in horizons if day + pd.Timedelta(days=h) <= last)
        if fitting:
            futures.append(Future(log_name, orders, day, fitting))
    return futures


def evaluate_future(future: Future, folder: Path) -> tuple[list[dict[str, object]], pd.DataFrame]:
    """Train on the orders up to the cut (defaults, a fresh store in ``folder``), then score each horizon.

    Returns one row per horizon (AUC, Brier, ECE of the registered model, the purchase model alone, the
    raw and calibrated baselines, and every candidate) and the calibration deciles of the model and the
    calibrated baselines."""
    from customer_value.jobs.clv_stage import model_settings  # the jobs import the whole stack
    from customer_value.jobs.train import train
    from customer_value.models.clv.churn_selection import select_churn
    from customer_value.models.clv.model import CLVModel

    folder.mkdir(parents=True, exist_ok=True)
    before = future.orders[future.orders["date"] <= future.cut]
    path = folder / "orders.csv"
    before.rename(columns={"date": "timestamp"}).to_csv(path, index=False)
    overrides = [
        "data=file",
        f"data.path={path}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"tracking.artifact_root={folder / 'artifacts'}",
        "tracking.plots=false",  # no figure changes a model
    ]
    if not future.has_amounts:
        overrides.append("data.columns.amount=null")
    cfg = compose_config("train", overrides)
    train(cfg)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    version = max(
        client.search_model_versions(f"name='{cfg.tracking.clv_model}'"), key=lambda v: int(v.version)
    )
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    registered = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.clv_model}/{version.version}")
    scoring = registered.unwrap_python_model().model
    features = customer_features(before, future.cut)
    # The candidates as the scoring fit's selection refitted them: same procedure, seed and end (the last
    # order day up to the cut, as train's full-history refit), same base for the level offsets.
    trained_through = before["date"].max()
    base = features if trained_through == future.cut else customer_features(before, trained_through)
    settings = model_settings(cfg, future.has_amounts) | {"family": scoring.family}
    fit_btyd, other_families = purchase_fitters(settings)
    _, report = select_churn(
        before,
        trained_through,
        list(cfg.clv.churn.horizons_days),
        fit_btyd,
        other_families=other_families,
        candidates=list(cfg.clv.churn.candidates),
        folds=cfg.clv.churn.folds,
        step_days=cfg.clv.churn.step_days,
        seed=cfg.seed,
        level_on=scoring.btyd_churn_curve(base.iloc[sample_positions(len(base), LEVEL_SAMPLE, cfg.seed)]),
    )
    rows, deciles = [], []
    for horizon in future.horizons:
        _, outcome = calibration_and_holdout(
            future.orders, Split(future.cut, future.cut + pd.Timedelta(days=horizon))
        )
        label = churned(outcome)
        predicted = registered.predict(
            features.reset_index(drop=True), params={"horizon_days": float(horizon), "intervals": False}
        )
        scores = {
            "model": predicted["churn_probability"].to_numpy(),
            "purchase model alone": predicted["btyd_churn_probability"].to_numpy(),
        }
        for name, selector in report.refit.items():
            judged = CLVModel.from_params(scoring.params_, 0.0, float(horizon), customers=scoring.customers)
            judged.churn_selector_ = selector
            scores[f"calibrated {name}"] = judged.predict(features, float(horizon))[
                "churn_probability"
            ].to_numpy()
        row: dict[str, object] = {
            "log": future.log,
            "cut": str(future.cut.date()),
            "horizon_days": horizon,
            "customers": len(label),
            "churn_share": float(label.mean()),
            "registered_as": version.tags.get("gate.alias", "none"),
            "band_candidate": _band_candidate(scoring, horizon),
        }
        for name, score in scores.items():
            row |= {f"{name}.{k}": v for k, v in churn_calibration(score, label).items()}
        for name, rule in BASELINES.items():
            row[f"{name}.churn_auc"] = churn_calibration(rule(features), label)["churn_auc"]
        row = _verdict(row)
        best = row["best_calibrated"]
        other = scores[best if best == "purchase model alone" else f"calibrated {best}"]
        gap = paired_brier_difference(label, scores["model"], other, seed=cfg.seed)
        row |= {f"brier_vs_best_calibrated.{k}": v for k, v in gap.items()}
        row["brier_gap"] = f"{gap['diff']:+.4f} [{gap['ci_low']:+.4f}, {gap['ci_high']:+.4f}]"
        # Within noise: the 95 % paired interval of the difference reaches zero (a choice made before the
        # cut cannot be sure to match the best of several baselines judged after it; see the docs).
        row["brier_ok_within_noise"] = bool(row["brier_ok"] or gap["ci_low"] <= 0)
        rows.append(row)
        for name in (
            "model",
            *(f"calibrated {c}" for c in CALIBRATED_BASELINES if f"calibrated {c}" in scores),
        ):
            table = calibration_table(scores[name], label).reset_index()
            deciles.append(table.assign(log=future.log, cut=row["cut"], horizon_days=horizon, score=name))
    return rows, pd.concat(deciles, ignore_index=True)


def _band_candidate(model: object, horizon: float) -> str:
    selector = getattr(model, "churn_selector_", None)
    if selector is None:
        return "purchase model (no band)"
    band = selector.band_for(horizon)
    return f"{band.candidate} ({band.window_days:.0f} d)"


def _verdict(row: dict[str, object]) -> dict[str, object]:
    """The done-when on one row: AUC within AUC_TOLERANCE of the best baseline, Brier at most the best
    calibrated baseline's (the purchase model alone counts as both)."""
    auc_baselines = {
        "recency": row["recency.churn_auc"],
        "purchase days": row["purchase_days.churn_auc"],
        "purchase model alone": row["purchase model alone.churn_auc"],
    }
    best = max(auc_baselines, key=lambda k: auc_baselines[k])
    brier_baselines = {"purchase model alone": row["purchase model alone.churn_brier"]}
    brier_baselines |= {
        c: row[f"calibrated {c}.churn_brier"]
        for c in CALIBRATED_BASELINES
        if f"calibrated {c}.churn_brier" in row
    }
    best_brier = min(brier_baselines, key=lambda k: brier_baselines[k])
    row["best_baseline"] = best
    row["best_baseline.churn_auc"] = auc_baselines[best]
    row["best_calibrated"] = best_brier
    row["best_calibrated.churn_brier"] = brier_baselines[best_brier]
    row["auc_ok"] = bool(row["model.churn_auc"] >= auc_baselines[best] - AUC_TOLERANCE)
    row["brier_ok"] = bool(row["model.churn_brier"] <= brier_baselines[best_brier] + 1e-12)
    return row


SUMMARY = {  # column -> row key
    "log": "log",
    "cut": "cut",
    "horizon": "horizon_days",
    "customers": "customers",
    "churn share": "churn_share",
    "band: candidate (window)": "band_candidate",
    "model AUC": "model.churn_auc",
    "recency AUC": "recency.churn_auc",
    "purchase days AUC": "purchase_days.churn_auc",
    "purchase model alone AUC": "purchase model alone.churn_auc",
    "model Brier": "model.churn_brier",
    "best calibrated baseline Brier": "best_calibrated.churn_brier",
    "purchase model alone Brier": "purchase model alone.churn_brier",
    "model ECE": "model.churn_ece",
    "model Brier skill": "model.churn_brier_skill",
    "AUC ok": "auc_ok",
    "Brier ok": "brier_ok",
    "model - best calibrated Brier (95 % paired interval)": "brier_gap",
    "Brier ok within noise": "brier_ok_within_noise",
    "registered as": "registered_as",
}


def summary_table(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return pd.DataFrame({column: frame[key] for column, key in SUMMARY.items() if key in frame.columns})


def machine() -> str:
    """The CPU model, cores and memory (``bench``'s record of the machine), for the figures."""
    info = bench_machine()
    return f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB"


def all_futures(shapes: list[str], seed: int) -> list[Future]:
    """CDNOW at CDNOW_CUTS and each generated shape cut a year before its last order."""
    from customer_value.data.behaviour_shapes import generate_behaviour_shape

    cdnow, _ = load_bundled("cdnow_master")
    futures = futures_of("CDNOW master", cdnow, list(CDNOW_CUTS), HORIZONS_DAYS)
    for shape in shapes:
        orders = _cleaned(generate_behaviour_shape(shape, seed=seed))
        cut = (orders["date"].max() - pd.Timedelta(days=max(SHAPE_HORIZONS_DAYS))).strftime("%Y-%m-%d")
        futures += futures_of(f"generated: {shape}", orders, [cut], SHAPE_HORIZONS_DAYS)
    return futures


def _cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    """A generated log through the project's own loading rules (same-day orders merged, days)."""
    from customer_value.data.loading import clean_transactions

    orders, _ = clean_transactions(
        raw,
        source="generated",
        customer_id="customer_id",
        timestamp="timestamp",
        amount="amount" if "amount" in raw.columns else None,
    )
    return orders


def main() -> None:
    from customer_value.data.behaviour_shapes import BEHAVIOUR_SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/churn-evaluation.md"))
    parser.add_argument("--deciles", type=Path, default=Path("outputs/evaluate/churn_deciles.csv"))
    parser.add_argument("--shapes", nargs="*", default=sorted(BEHAVIOUR_SHAPES))
    parser.add_argument("--cdnow", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    futures = all_futures(args.shapes, args.seed)
    if not args.cdnow:
        futures = [f for f in futures if not f.log.startswith("CDNOW")]
    rows, deciles = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for number, future in enumerate(futures, start=1):
            began = time.perf_counter()
            found, table = evaluate_future(future, Path(tmp) / f"future_{number}")
            rows += found
            deciles.append(table)
            for row in found:
                print(
                    f"[{number}/{len(futures)}] {row['log']} cut {row['cut']} +{row['horizon_days']} d: "
                    f"model AUC {row['model.churn_auc']:.3f} (best baseline {row['best_baseline']} "
                    f"{row['best_baseline.churn_auc']:.3f}), Brier {row['model.churn_brier']:.4f} "
                    f"(best calibrated {row['best_calibrated.churn_brier']:.4f}) "
                    f"[{time.perf_counter() - began:.0f} s]",
                    flush=True,
                )
    args.deciles.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(deciles, ignore_index=True).to_csv(args.deciles, index=False)
    pd.DataFrame(rows).to_csv(args.deciles.with_name("churn_futures.csv"), index=False)  # every candidate
    table = markdown_table(summary_table(rows))
    header = f"Measured on {machine()} in {time.perf_counter() - started:.0f} s, {time.strftime('%Y-%m-%d')}."
    text = args.output.read_text() if args.output.exists() else "<!-- table -->\n"
    args.output.write_text(
        text.split("<!-- table -->")[0] + "<!-- table -->\n" + header + "\n\n" + table + "\n"
    )
    print(f"wrote {args.output}, {args.deciles} and churn_futures.csv beside it")


if __name__ == "__main__":
    main()
