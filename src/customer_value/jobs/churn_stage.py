"""The CLV stage's churn steps: choose the churn output per horizon band, judge it against the baselines.

``choose_churn`` runs ``churn_selection`` on windows before the calibration end and
``record_churn_selection`` logs every candidate's backtest figures; ``churn_evidence`` judges the shipped
churn probability on the holdout beside the baselines a marketer would use without us (days since the
last purchase, purchase days), each also calibrated through the same bands, and says whether the model
loses to the best of them beyond a paired-bootstrap interval: such a model is registered as
``challenger``, never ``champion``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import mlflow
import pandas as pd
from omegaconf import DictConfig

from customer_value.evaluation import plots
from customer_value.evaluation.calibration import (
    calibration_table,
    churn_calibration,
    paired_auc_differences,
)
from customer_value.evaluation.holdout_metrics import churned
from customer_value.jobs.stage import prefixed, sample_positions
from customer_value.models.clv.churn_selection import ChurnSelector, SelectionReport, select_churn
from customer_value.models.clv.covariates import COVARIATE_FAMILIES
from customer_value.models.clv.model import CLVModel
from customer_value.schema import CLV_FAMILIES
from customer_value.tracking import run_logging

log = logging.getLogger(__name__)

# The rules a marketer sorts customers by without a model; higher = more likely to churn.
BASELINES = {
    "recency": lambda features: features["days_since_last"].to_numpy(dtype="float64"),
    "purchase_days": lambda features: -features["frequency"].to_numpy(dtype="float64"),
}
# The baselines again, each calibrated through the same bands and windows as the model (churn_selection).
CALIBRATED_BASELINES = ("recency", "recency_frequency_tenure")
# Customers the bands' level offsets (a mean log-odds per horizon) are averaged over: a seeded sample.
LEVEL_SAMPLE = 5_000


def purchase_fitters(
    settings: dict[str, object],
) -> tuple[Callable[[pd.DataFrame], CLVModel], dict[str, Callable[[pd.DataFrame], CLVModel]]]:
    """The backtest windows' purchase-model fits: the run's family (``settings["family"]``) and every
    other family that can take the run's covariates. Point predictions only: no spend model and no
    covariance."""
    point = settings | {"spend_model": False, "covariance": False}

    def fitter(family: str) -> Callable[[pd.DataFrame], CLVModel]:
        return lambda features: CLVModel(**(point | {"family": family})).fit(features)

    others = [
        family
        for family in CLV_FAMILIES
        if family != settings["family"] and (not settings.get("covariates") or family in COVARIATE_FAMILIES)
    ]
    return fitter(str(settings["family"])), {family: fitter(family) for family in others}


def choose_churn(
    cfg: DictConfig,
    settings: dict[str, object],
    model: CLVModel,
    orders: pd.DataFrame,
    end: pd.Timestamp,
    base: pd.DataFrame,
    scoring: bool = False,
    stop: threading.Event | None = None,
) -> tuple[ChurnSelector | None, SelectionReport]:
    """Choose each band's churn candidate on windows ending by ``end`` (``base``: the customers ``model``
    was fitted to, for the bands' level offsets); ``record_churn_selection`` logs and attaches it.

    The calibration fit's selection (``end`` = the calibration end) is the one the holdout judges; with
    ``scoring`` the same procedure runs on the whole history for the registered scoring fit. No logging
    here: safe in a thread of its own (the train runs the whole history's selection beside the layers,
    the calibration's own selection and its evaluation; MLflow's active run is the main thread's);
    ``stop`` ends it at its next window (see ``select_churn``)."""
    churn = cfg.clv.churn
    rows = sample_positions(len(base), LEVEL_SAMPLE, cfg.seed)
    fit_btyd, other_families = purchase_fitters(settings)
    return select_churn(
        orders,
        end,
        list(churn.horizons_days),
        fit_btyd,
        candidates=list(churn.candidates),
        folds=churn.folds,
        step_days=churn.step_days,
        seed=cfg.seed,
        level_on=model.btyd_churn_curve(base.iloc[rows]),
        other_families=other_families,
        label="clv.churn (whole history)" if scoring else "clv.churn",
        stop=stop,
    )


def record_churn_selection(
    model: CLVModel, selector: ChurnSelector | None, report: SelectionReport, scoring: bool = False
) -> tuple[dict[str, float], dict[str, ChurnSelector]]:
    """Log a selection's figures and decisions (``scoring``: under ``clv.churn.scoring_*`` and
    ``evaluation/churn_candidates_scoring.csv``) and attach its selector to ``model``. Returns the metrics
    and, for the holdout's calibrated baselines, one selector per baseline candidate in the same bands
    (empty when no band could be chosen: the purchase model's own probability then stands, tagged)."""
    kind = "scoring_" if scoring else ""
    if not report.scores.empty:
        run_logging.log_table(
            report.scores.set_index(["band_days", "candidate"]),
            f"evaluation/churn_candidates{'_scoring' if scoring else ''}.csv",
        )
    if selector is None:
        why = "; ".join(report.notes) or "no band"
        mlflow.set_tag(f"clv.churn.{kind}selection", f"purchase model's own probability: {why}"[:5000])
        log.warning(
            "clv.churn: no band could be chosen, the purchase model's own probability stands: %s", why
        )
        return {}, {}
    model.churn_selector_ = selector
    tags = {f"clv.churn.{kind}selection": selector.describe()[:5000]}
    tags |= {f"clv.churn.{kind}band_{band.horizon_days:.0f}": band.reason[:5000] for band in selector.bands}
    if report.notes:
        tags[f"clv.churn.{kind}notes"] = "; ".join(report.notes)[:5000]
    mlflow.set_tags(tags)
    for band in selector.bands:
        log.info("clv.churn %sband %.0f days: %s", kind.replace("_", " "), band.horizon_days, band.reason)
    metrics = {}
    for row in report.scores.itertuples():
        for figure in ("auc", "brier", "ece"):
            key = f"churn_{kind}selection.band_{row.band_days:.0f}.{row.candidate}.{figure}"
            metrics[key] = float(getattr(row, figure))
    return metrics, {name: report.refit[name] for name in CALIBRATED_BASELINES if name in report.refit}


def churn_evidence(
    cfg: DictConfig,
    model: CLVModel,
    predictions: pd.DataFrame,
    calibration: pd.DataFrame,
    holdout: pd.DataFrame,
    holdout_days: float,
    calibrated_baselines: dict[str, ChurnSelector],
) -> tuple[dict[str, float], str | None]:
    """The shipped churn probability beside the baselines on the holdout, and the gate's verdict.

    Logs the calibration table of the model and of each calibrated baseline; returns the metrics
    (``holdout.churn_ece``, ``holdout.churn_brier_skill``, ``baseline.<name>.*``, ``gate.vs_<name>.*``)
    and the reason the model must not become champion, or None."""
    label = churned(holdout)
    shipped = predictions["churn_probability"].to_numpy()
    metrics = prefixed("holdout.", churn_calibration(shipped, label))
    tables = {"model": calibration_table(shipped, label)}
    btyd = predictions["btyd_churn_probability"].to_numpy()
    metrics |= prefixed("btyd.holdout.", churn_calibration(btyd, label))
    for name, selector in calibrated_baselines.items():
        judged = CLVModel.from_params(model.params_, 0.0, holdout_days, customers=model.customers)
        judged.churn_selector_ = selector
        probability = judged.predict_churn(calibration, holdout_days)
        metrics |= prefixed(f"baseline.calibrated_{name}.", churn_calibration(probability, label))
        tables[f"calibrated {name}"] = calibration_table(probability, label)
    run_logging.log_table(pd.concat(tables, names=["score"]), "evaluation/churn_calibration.csv")
    run_logging.log_figure(lambda: plots.churn_reliability(tables), "plots/churn_calibration_curve.png")
    blocked = None
    if not cfg.clv.churn.gate or not 0 < label.sum() < len(label):
        return metrics, blocked
    # On a seeded sample of clv.evaluation_sample customers (everyone on a smaller base): the interval is
    # that sample's, a few hundred Poisson draws over a million customers cost 13 s.
    rows = sample_positions(len(label), cfg.clv.evaluation_sample, cfg.seed)
    baselines = {name: score(calibration.iloc[rows]) for name, score in BASELINES.items()}
    verdicts = paired_auc_differences(label[rows], shipped[rows], baselines, seed=cfg.seed)  # same resamples
    metrics["gate.customers"] = float(len(rows))
    for name, figures in verdicts.items():
        metrics |= prefixed(f"gate.vs_{name}.auc_", figures)
    losing = [name for name, figures in verdicts.items() if figures["ci_high"] < 0]  # beyond the interval
    if losing:
        worst = min(losing, key=lambda n: verdicts[n]["diff"])
        figures = verdicts[worst]
        blocked = (
            f"holdout churn AUC {metrics['holdout.churn_auc']:.3f} is below the "
            f"{worst.replace('_', ' ')} baseline's by "
            f"{-figures['diff']:.3f} (95% paired-bootstrap interval of the difference "
            f"{figures['ci_low']:+.3f}..{figures['ci_high']:+.3f})"
        )
        mlflow.set_tag("gate.blocked", blocked[:5000])
        log.warning("clv.churn gate: %s", blocked)
    metrics["gate.loses_to_baseline"] = float(blocked is not None)
    return metrics, blocked
