"""The churn output chosen per horizon band (models/clv/churn_selection.py), its calibration figures and the
gate that keeps a model losing to a baseline from becoming champion."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from customer_value.data.features import Split, calibration_and_holdout
from customer_value.data.synthetic import generate_orders
from customer_value.errors import ModelFitError
from customer_value.evaluation.calibration import (
    auc,
    brier_skill_score,
    calibration_table,
    expected_calibration_error,
    paired_auc_difference,
    paired_brier_difference,
    score_groups,
    weighted_auc,
)
from customer_value.jobs.churn_stage import churn_evidence
from customer_value.models.clv import churn_selection
from customer_value.models.clv.btyd import CLVParams
from customer_value.models.clv.churn_layer import layer_inputs
from customer_value.models.clv.churn_selection import (
    CANDIDATES,
    OTHER_FAMILIES,
    ChurnSelector,
    _choose,
    select_churn,
)
from customer_value.models.clv.model import CLVModel
from customer_value.schema import CHURN_CANDIDATES
from customer_value.tracking import registry
from customer_value.tracking.pyfunc import clv_model_from_spec, clv_spec

PINNED = CLVParams("bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, None, 7.0)
END = pd.Timestamp("2025-03-31")


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    """Two years of a BG/NBD log (800 customers), as loading returns it (one row per customer and day)."""
    raw = generate_orders(800, seed=3, start="2024-01-01", acquisition_days=120, observation_days=730)
    raw["date"] = raw["timestamp"].dt.normalize()
    return raw.groupby(["customer_id", "date"], as_index=False)["amount"].sum()


def _fit(features: pd.DataFrame) -> CLVModel:
    return CLVModel(spend_model=False).fit(features)


@pytest.fixture(scope="module")
def selection(orders: pd.DataFrame) -> tuple[ChurnSelector, object, CLVModel, pd.DataFrame]:
    features, _ = calibration_and_holdout(orders, Split(END, END + pd.Timedelta(days=1)))
    model = _fit(features)
    selector, report = select_churn(
        orders, END, [91, 182, 365], _fit, seed=0, level_on=model.btyd_churn_curve(features)
    )
    return selector, report, model, features


def test_schema_candidates_match_the_selection_module() -> None:
    assert set(CHURN_CANDIDATES) == set(CANDIDATES) | {OTHER_FAMILIES}


def test_every_band_is_chosen_on_windows_as_long_as_it_or_the_longest_the_history_allows(selection) -> None:
    """15 months before the end: 91 and 182 days fit; 365 does not (a quarter of the history must stay
    before an origin), so that band is judged on the longest window and says so."""
    selector, report, _, _ = selection
    windows = {band.horizon_days: band.window_days for band in selector.bands}
    history = (END - pd.Timestamp("2024-01-01")).days
    assert windows[91.0] == 91 and windows[182.0] == 182
    assert windows[365.0] == int(history * 0.75) < 365
    assert "the longest the history allows" in selector.band_for(365).reason
    assert set(report.scores["candidate"]) == set(CANDIDATES)
    assert set(report.refit) == set(CANDIDATES)
    for band in selector.bands:  # the chosen candidate is the best (or tied best) on its band's windows
        scores = report.scores[report.scores["band_days"] == band.horizon_days].set_index("candidate")
        assert scores.loc[band.candidate, "auc"] >= scores["auc"].max() - 0.002


def test_orders_after_the_end_do_not_change_the_selection(orders: pd.DataFrame, selection) -> None:
    selector, _, model, features = selection
    later = orders.sample(300, random_state=1).assign(date=END + pd.Timedelta(days=5))
    again, _ = select_churn(
        pd.concat([orders, later]),
        END,
        [91, 182, 365],
        _fit,
        seed=0,
        level_on=model.btyd_churn_curve(features),
    )
    assert again.as_dict() == selector.as_dict()


def test_the_nearest_band_serves_and_its_ranking_is_kept_at_other_horizons(selection) -> None:
    selector, _, model, features = selection
    assert selector.band_for(100).horizon_days == 91
    assert selector.band_for(140).horizon_days == 182  # nearer in log days: 140/91 > 182/140
    assert selector.band_for(5000).horizon_days == 365
    model.churn_selector_ = selector
    band = selector.band_for(182)
    at_window = model.predict(features, band.window_days)["churn_probability"].to_numpy()
    beyond = model.predict(features, 250.0)["churn_probability"].to_numpy()  # same band, longer horizon
    assert spearmanr(at_window, beyond).statistic == pytest.approx(1.0)
    assert beyond.mean() < at_window.mean()  # fewer customers go 250 days without a purchase than 182
    model.churn_selector_ = None


def test_bands_the_history_caps_at_the_same_windows_share_them_and_their_judgement(
    orders: pd.DataFrame, selection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """365 and 400 days both get the longest window the 15 months allow: it is built and judged once,
    and each band is what it would be alone."""
    _, _, model, features = selection
    built = []
    window = churn_selection._window
    monkeypatch.setattr(churn_selection, "_window", lambda *args: built.append(args[1]) or window(*args))
    curve = model.btyd_churn_curve(features)
    both, report = select_churn(orders, END, [365, 400], _fit, seed=0, level_on=curve)
    assert built and len(built) == len(set(built))  # each origin once
    assert both.bands[0].window_days == both.bands[1].window_days < 365
    assert both.bands[0].model is both.bands[1].model
    scores = report.scores.set_index(["band_days", "candidate"])[["auc", "brier", "ece"]]
    pd.testing.assert_frame_equal(scores.loc[365.0], scores.loc[400.0])
    for band in both.bands:
        alone, _ = select_churn(orders, END, [band.horizon_days], _fit, seed=0, level_on=curve)
        assert alone.bands[0].as_dict() == band.as_dict()


def test_the_churn_alone_is_the_prediction_tables_column(selection) -> None:
    """``predict_churn`` (the holdout's calibrated baselines) gives ``predict``'s churn_probability bit
    for bit: with a selector at a band's window and between windows, with a layer, and with neither."""
    selector, report, model, features = selection
    judged = CLVModel.from_params(model.params_, 0.1, 30.4375)
    for horizon in (91.0, 120.0, selector.band_for(365).window_days, 400.0):
        judged.churn_selector_ = selector
        expected = judged.predict(features, horizon)["churn_probability"].to_numpy()
        np.testing.assert_array_equal(judged.predict_churn(features, horizon), expected)
        judged.churn_selector_ = None
        judged.churn_layer_ = report.refit["layer"].bands[0].model
        expected = judged.predict(features, horizon)["churn_probability"].to_numpy()
        np.testing.assert_array_equal(judged.predict_churn(features, horizon), expected)
        judged.churn_layer_ = None
        plain = judged.predict(features, horizon)
        np.testing.assert_array_equal(judged.predict_churn(features, horizon), plain["churn_probability"])
        assert not np.array_equal(plain["churn_probability"], expected)


def test_the_selector_travels_in_the_spec_and_old_specs_still_load(selection) -> None:
    selector, _, model, features = selection
    scoring = CLVModel.from_params(PINNED, 0.1, 30.4375)
    scoring.churn_selector_ = selector
    spec = clv_spec(
        model, scoring, horizon_days=365.0, calibration_end="2025-03-31", trained_through="2025-12-31"
    )
    loaded = clv_model_from_spec(spec, "scoring_params")
    assert ChurnSelector.from_dict(spec["churn_selector"]) == selector
    expected = scoring.predict(features, 120.0)["churn_probability"]
    pd.testing.assert_series_equal(loaded.predict(features, 120.0)["churn_probability"], expected)
    assert clv_model_from_spec(spec, "calibration_params").churn_selector_ is None  # the fit had none
    older = {k: v for k, v in spec.items() if k not in ("churn_selector", "calibration_churn_selector")}
    plain = clv_model_from_spec(older, "scoring_params").predict(features, 120.0)
    np.testing.assert_array_equal(plain["churn_probability"], plain["btyd_churn_probability"])


def test_another_familys_purchase_model_is_a_candidate_and_predicts_with_its_own_parameters(
    orders: pd.DataFrame, selection
) -> None:
    """``other_families``: Pareto/NBD, fitted on the windows and at the end, judged beside the run's BG/NBD;
    a band that ships it predicts from its stored parameters, in the model and after the spec round trip."""
    _, _, model, features = selection

    def pareto(frame: pd.DataFrame) -> CLVModel:
        return CLVModel(family="pareto_nbd", spend_model=False, covariance=False).fit(frame)

    _, report = select_churn(
        orders,
        END,
        [91],
        _fit,
        candidates=["purchase_model", OTHER_FAMILIES],
        other_families={"pareto_nbd": pareto},
    )
    assert set(report.scores["candidate"]) == {"purchase_model", "purchase_model_pareto_nbd"}
    stored = report.refit["purchase_model_pareto_nbd"].bands[0]
    assert stored.purchase_params["family"] == "pareto_nbd"
    at_end = pareto(features)  # 800 customers: the end's fit sees every one of them
    assert stored.purchase_params["purchase"] == pytest.approx(at_end.params_.purchase)
    judged = CLVModel.from_params(model.params_, 0.1, 30.4375)
    judged.churn_selector_ = ChurnSelector([stored])
    expected = stored.model.predict(layer_inputs(features, at_end.predict(features, 91.0), 91.0))
    np.testing.assert_allclose(judged.predict(features, 91.0)["churn_probability"], expected, rtol=1e-6)
    assert not np.allclose(expected, judged.predict(features, 91.0)["btyd_churn_probability"], atol=1e-3)
    spec = clv_spec(
        model, judged, horizon_days=91.0, calibration_end="2025-03-31", trained_through="2025-03-31"
    )
    loaded = clv_model_from_spec(json.loads(json.dumps(spec)), "scoring_params")
    np.testing.assert_allclose(loaded.predict(features, 91.0)["churn_probability"], expected, rtol=1e-6)


def test_without_a_purchase_model_the_rules_are_still_judged(orders: pd.DataFrame) -> None:
    def failing(features: pd.DataFrame) -> CLVModel:
        raise ModelFitError("no purchase model here")

    selector, report = select_churn(orders, END, [91], failing, seed=0)
    assert selector.bands[0].candidate in ("recency", "recency_frequency_tenure")
    assert set(report.scores["candidate"]) == {"recency", "recency_frequency_tenure"}
    assert "left out" in report.notes[0]


def test_a_large_base_is_judged_on_a_seeded_sample(
    orders: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(churn_selection, "WINDOW_CUSTOMERS", 250)
    first, report = select_churn(orders, END, [91], _fit, seed=0)
    again, _ = select_churn(orders, END, [91], _fit, seed=0)
    assert first.as_dict() == again.as_dict()
    fits: dict = {}
    window = churn_selection._window(orders, END - pd.Timedelta(days=91), 91, _fit, {}, fits, 0)
    assert len(window.features) == len(window.outcome) == len(window.btyd) == 250
    assert window.outcome.index.equals(window.features.index)


def test_recency_ranks_unless_a_candidate_beats_it_convincingly() -> None:
    """A candidate ahead of recency on the mean but not in four of five resamples does not set the
    reference (it ships only for a better Brier score); one that is ahead in every resample does."""
    rng = np.random.default_rng(5)
    signal = rng.normal(size=3000)
    labels = (signal + rng.normal(size=3000) > 0).astype(int)
    recency = signal + rng.normal(scale=1.0, size=3000)
    noisy = recency + rng.normal(scale=0.3, size=3000)  # about as good, no better
    better = signal + rng.normal(scale=0.3, size=3000)  # clearly better
    predictions = {"recency": recency, "noisy": noisy, "better": better}
    scores = pd.DataFrame(
        {
            "auc": [auc(labels, p) for p in predictions.values()],
            "brier": [0.20, 0.10, 0.19],
        },
        index=pd.Index(list(predictions), name="candidate"),
    )
    bounds = [(0, 3000)]
    only_noisy = scores.drop(index="better")
    only_noisy.loc["noisy", "auc"] = only_noisy.loc["recency", "auc"] + 0.01  # ahead on the mean only
    shares = churn_selection._win_shares({"noisy": noisy, "better": better}, recency, labels, bounds, 0)
    assert shares["noisy"] < churn_selection.KEEP_WIN_SHARE and shares["better"] == 1.0
    only_noisy.loc["noisy", "brier"] = 0.25
    assert _choose(only_noisy, predictions, labels, bounds) == "recency"
    only_noisy.loc["noisy", "brier"] = 0.10  # ranks as well as the reference and is better calibrated
    assert _choose(only_noisy, predictions, labels, bounds) == "noisy"
    assert _choose(scores, predictions, labels, bounds) == "better"


def test_a_calibration_that_reverses_its_score_is_not_eligible() -> None:
    """Where those who bought long ago came back and the recent ones did not (a young cohort's window),
    recency's fit has a negative slope: it is left out, the purchase model's (increasing here) is not."""
    rng = np.random.default_rng(3)
    n = 400
    gap = rng.uniform(0, 60, n)
    features = pd.DataFrame(
        {"frequency": rng.integers(0, 4, n).astype(float), "T_days": 60.0, "monetary_value": 20.0},
        index=pd.Index([f"c{i}" for i in range(n)], name="customer_id"),
    )
    features["recency_days"] = 60.0 - gap
    bought = rng.random(n) < gap / 60  # the longer the gap, the likelier a purchase: reversed
    btyd = pd.DataFrame(
        {"churn_probability": 1 - gap / 80, "p_alive": 0.5, "expected_purchases": 1.0}, index=features.index
    )
    outcome = pd.DataFrame({"purchases": bought.astype(float)}, index=features.index)
    windows = [churn_selection.Window(END, features, btyd, outcome, 30.0)]
    band = churn_selection._Band(30, (END,), windows, {None: churn_selection._pooled(windows, None)}, ~bought)
    assert churn_selection._reverses(band.fitted("recency", True, 0), "recency")
    assert not churn_selection._reverses(band.fitted("purchase_model", True, 0), "purchase_model")


def test_ties_in_auc_go_to_the_lower_brier() -> None:
    scores = pd.DataFrame(
        {"auc": [0.80, 0.799, 0.75], "brier": [0.20, 0.15, 0.10]},
        index=pd.Index(["a", "b", "c"], name="candidate"),
    )
    assert _choose(scores) == "b"  # c has the lowest Brier but ranks far worse


def test_calibration_figures() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.random(20_000)
    label = (rng.random(20_000) < predicted).astype(int)  # calibrated by construction
    assert auc(label, predicted) == pytest.approx(roc_auc_score(label, predicted))
    tied = np.round(predicted, 1)  # ties count half in both forms
    groups = score_groups(tied)
    ones = np.ones(len(label))
    assert weighted_auc(groups, ones * label, ones * (1 - label)) == pytest.approx(
        auc(label, tied), abs=1e-12
    )
    twice = np.concatenate([np.arange(len(label)), np.arange(1000)])  # rows 0..999 counted twice
    weights = np.bincount(twice, minlength=len(label)).astype(float)
    assert weighted_auc(groups, weights * label, weights * (1 - label)) == pytest.approx(
        auc(label[twice], tied[twice]), abs=1e-12
    )
    assert expected_calibration_error(predicted, label) < 0.02
    assert expected_calibration_error(np.clip(predicted + 0.2, 0, 1), label) > 0.15
    assert brier_skill_score(np.full(len(label), label.mean()), label) == pytest.approx(0.0)
    table = calibration_table(predicted, label)
    assert len(table) == 10 and table["customers"].sum() == len(label)
    assert table["predicted"].is_monotonic_increasing


def test_the_paired_interval_is_that_of_the_difference() -> None:
    rng = np.random.default_rng(1)
    signal = rng.normal(size=4000)
    label = (signal + rng.normal(size=4000) > 0).astype(int)
    same = paired_auc_difference(label, signal, signal)
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    worse = paired_auc_difference(label, signal + rng.normal(scale=2.0, size=4000), signal)
    assert worse["ci_low"] <= worse["diff"] <= worse["ci_high"] < 0


def test_the_paired_brier_interval_is_that_of_the_difference() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.1, 0.9, 4000)
    label = (rng.random(4000) < truth).astype(int)
    assert paired_brier_difference(label, truth, truth) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    blurred = np.clip(truth + rng.normal(scale=0.2, size=4000), 0.01, 0.99)
    worse = paired_brier_difference(label, blurred, truth)
    brier = np.mean((blurred - label) ** 2) - np.mean((truth - label) ** 2)
    assert worse["diff"] == pytest.approx(brier)
    assert 0 < worse["ci_low"] <= worse["diff"] <= worse["ci_high"]
    # Narrower than if the two Brier scores were independent: the same customers weigh on both sides.
    unpaired = np.sqrt((np.var((blurred - label) ** 2) + np.var((truth - label) ** 2)) / 4000)
    assert worse["ci_high"] - worse["ci_low"] < 0.8 * 2 * 1.96 * unpaired


def test_a_model_that_loses_to_recency_is_blocked_and_registered_as_challenger(tracking_uri: str) -> None:
    """On a holdout where days since the last purchase decides churn, a churn score that ignores it loses
    beyond the interval: the run says why, and the registry gives it challenger even with no champion."""
    rng = np.random.default_rng(2)
    n = 3000
    calibration = pd.DataFrame(
        {
            "days_since_last": rng.integers(0, 400, n).astype(float),
            "frequency": rng.integers(0, 5, n).astype(float),
        }
    )
    holdout = pd.DataFrame({"purchases": (calibration["days_since_last"] < 150).astype(float)})
    # the gate's bootstrap on a seeded sample of 2,000 of the 3,000 customers (clv.evaluation_sample)
    cfg = OmegaConf.create({"seed": 0, "clv": {"churn": {"gate": True}, "evaluation_sample": 2000}})
    model = CLVModel.from_params(PINNED, 0.1, 30.4375)
    reasons = []
    for churn, blocked_expected in ((rng.random(n), True), (calibration["days_since_last"] / 400, False)):
        predictions = pd.DataFrame({"churn_probability": churn, "btyd_churn_probability": rng.random(n)})
        with mlflow.start_run():
            metrics, blocked = churn_evidence(cfg, model, predictions, calibration, holdout, 180.0, {})
            tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
        assert (blocked is not None) is blocked_expected
        assert metrics["gate.loses_to_baseline"] == float(blocked_expected)
        assert metrics["gate.customers"] == 2000
        assert ("gate.blocked" in tags) is blocked_expected
        reasons.append(blocked)
    assert "below the recency baseline's" in reasons[0]

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=_Constant(), input_example=calibration.head(2))
    decision = registry.register_with_gate(
        info.model_uri,
        "m",
        alias="champion",
        metric="x",
        new_score=1.0,
        champion=None,
        tags={},
        blocked="loses",
    )
    assert decision.alias == "challenger" and decision.reason == "blocked: loses"
    assert MlflowClient().get_model_version("m", decision.version).tags["gate.alias"] == "challenger"


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return np.zeros(len(model_input))


def test_the_gate_compares_every_baseline_on_the_same_resamples_as_alone() -> None:
    """paired_auc_differences draws each resample once for all baselines (issue 30) and gives exactly what
    paired_auc_difference gives for each alone with the same seed."""
    from customer_value.evaluation.calibration import paired_auc_difference, paired_auc_differences

    rng = np.random.default_rng(1)
    n = 4_000
    label = (rng.random(n) < 0.4).astype(int)
    score = rng.random(n) + 0.3 * label
    others = {"close": rng.random(n) + 0.25 * label, "tied": (rng.random(n) * 5).round()}
    together = paired_auc_differences(label, score, others, seed=42)
    for name, other in others.items():
        assert together[name] == paired_auc_difference(label, score, other, seed=42)


def test_a_selection_whose_caller_gave_up_stops_at_its_next_window(cdnow_master) -> None:
    """The train runs the whole history's selection in a thread; when the job fails it sets ``stop``."""
    import threading

    from customer_value.models.clv.churn_selection import SelectionStopped

    orders, _ = cdnow_master
    stop = threading.Event()
    stop.set()
    with pytest.raises(SelectionStopped, match="stopped before its"):
        select_churn(orders, orders["date"].max(), [91], lambda f: CLVModel().fit(f), stop=stop)
