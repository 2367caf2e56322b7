"""MBG/CNBD-k as a CLV family (``clv.family=mbgcnbd``): the customer table's litt_days, the fit with k by
maximum likelihood, every prediction, the intervals, and the registered model."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from lifetimes import ModifiedBetaGeoFitter
from scipy import integrate
from scipy.special import gammaln, pdtr
from sklearn.metrics import roc_auc_score

from customer_value.data.features import FEATURE_COLUMNS, Split, calibration_and_holdout, customer_features
from customer_value.errors import ModelFitError, UserError
from customer_value.models.clv import cnbd_likelihood as cnbd
from customer_value.models.clv.btyd import (
    BTYD_COLUMNS,
    FAMILIES,
    INPUT_COLUMNS,
    CLVParams,
    ModelInputs,
    lifetimes_fitter,
    model_inputs,
)
from customer_value.models.clv.covariates import COVARIATE_FAMILIES
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.predict import expected_repeat_purchases, predict_arrays
from customer_value.models.clv.uncertainty import count_pmf_terms, parameter_draws
from customer_value.schema import CLV_FAMILIES, NO_COVARIATE_FAMILIES, validate_train_config
from customer_value.tracking import registry
from customer_value.tracking.pyfunc import clv_spec
from test_config import _compose

MBG_CDNOW = {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}  # BTYDplus's MBG/NBD on CDNOW, weeks
REGULAR = {"r": 0.85, "alpha": 1.45, "a": 0.79, "b": 2.42}  # BTYDplus's MBG/CNBD-k test parameters, weeks
SPEND = {"p": 6.25, "q": 3.74, "v": 15.44}
HISTORIES = ModelInputs(  # (x, t_x, T) in weeks: one-time buyer, long silence, recent heavy buyer, t_x = T
    np.array([0.0, 2.0, 6.0, 40.0, 3.0]),
    np.array([0.0, 8.0, 18.0, 38.0, 24.0]),
    np.array([20.0, 30.0, 20.0, 39.0, 24.0]),
    np.full(5, 20.0),
)
START = pd.Timestamp("2023-01-01")
SPLIT = Split(START + pd.Timedelta(days=540), START + pd.Timedelta(days=729))


def gamma_pdf(lam: float, shape: float, rate: float) -> float:
    return float(np.exp(shape * np.log(rate) + (shape - 1) * np.log(lam) - rate * lam - gammaln(shape)))


def poisson_cdf(n: int, mean: float) -> float:
    return float(pdtr(n, mean))


def regular_orders(n: int, k: int, seed: int) -> pd.DataFrame:
    """An order log of MBG/CNBD-k buyers in days: phase rate lambda ~ Gamma(4, rate 120) per day (mean gap
    30 k days), dropout p ~ Beta(1.5, 6) after each purchase (the first included), first purchases over
    the first 180 days, purchase times floored to days (same-day purchases merge, as loading does)."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(4.0, 1.0 / 120.0, n), rng.beta(1.5, 6.0, n)
    repeats = rng.geometric(p) - 1
    gaps = rng.gamma(k, 1.0, (n, 60)) / lam[:, None]
    times = rng.integers(0, 180, n)[:, None] + np.cumsum(np.c_[np.zeros(n), gaps], axis=1)
    rows, purchase = np.nonzero((np.arange(61)[None, :] <= repeats[:, None]) & (times < 730))
    orders = pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in rows],
            "date": START + pd.to_timedelta(np.floor(times[rows, purchase]), unit="D"),
            "amount": rng.gamma(4.0, 5.0, len(rows)),
        }
    )
    return orders.drop_duplicates(["customer_id", "date"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def regular() -> tuple[pd.DataFrame, pd.DataFrame, CLVModel]:
    """2,000 Erlang-3 buyers: the calibration table, the holdout and the MBG/CNBD-k fit on it."""
    calibration, holdout = calibration_and_holdout(regular_orders(2000, k=3, seed=0), SPLIT)
    return calibration, holdout, CLVModel(family="mbgcnbd", interval_draws=10).fit(calibration)


def test_litt_days_of_a_hand_made_log() -> None:
    """Gaps 3, 7 and 20 days give log 3 + log 7 + log 20; no repeat gives 0; orders after as_of and the
    customers' order in the log do not matter; the model unit divides every gap."""
    orders = pd.DataFrame(
        {
            "customer_id": ["b", "a", "a", "c", "a", "a", "c"],
            "date": pd.to_datetime(
                [
                    "2024-01-09",
                    "2024-01-31",
                    "2024-01-01",
                    "2024-01-02",
                    "2024-01-04",
                    "2024-01-11",
                    "2024-03-01",
                ]
            ),
            "amount": 10.0,
        }
    )
    table = customer_features(orders, pd.Timestamp("2024-02-15"))
    assert list(table.columns) == FEATURE_COLUMNS
    assert table.loc["a", "litt_days"] == pytest.approx(np.log(3) + np.log(7) + np.log(20), rel=1e-15)
    assert table.loc["b", "litt_days"] == 0.0 and table.loc["c", "litt_days"] == 0.0  # c's 2nd is later
    weeks = model_inputs(table, 7.0, litt=True).litt
    np.testing.assert_allclose(weeks, [np.log(3 / 7) + np.log(7 / 7) + np.log(20 / 7), 0.0, 0.0], rtol=1e-14)
    assert model_inputs(table, 7.0).litt is None  # the other families never read it


def test_fit_recovers_k_and_the_parameters_in_any_time_unit() -> None:
    """4,000 simulated MBG/CNBD-3 customers as a customer table: the family's pattern fit (litt spread
    over the patterns) is the exact fit of every customer, recovers k and the parameters within about
    4 sampling standard deviations (as tests/test_cnbd_likelihood.py), and does not depend on the unit."""
    ages = np.round(np.random.default_rng(3).uniform(12, 96, 4000) / 12) * 12
    x, t_x, T, litt, _ = cnbd.simulate(4000, REGULAR, 3, ages, 32.0, seed=3)
    table = pd.DataFrame({"frequency": x, "recency_days": 7 * t_x, "T_days": 7 * T})
    table["litt_days"] = litt + x * np.log(7.0)
    weeks = CLVModel(family="mbgcnbd", spend_model=False).fit(table).params_
    assert weeks.purchase["k"] == 3
    every_customer = cnbd.fit_k(x, t_x, T, litt)
    assert every_customer["k"] == 3
    for name in cnbd.PARAM_NAMES:
        assert weeks.purchase[name] == pytest.approx(every_customer["params"][3][name], rel=1e-4), name
    for name, tolerance in {"r": 0.2, "alpha": 0.2, "a": 0.3, "b": 0.45}.items():
        assert weeks.purchase[name] == pytest.approx(REGULAR[name], rel=tolerance), name
    days = CLVModel(family="mbgcnbd", spend_model=False, time_unit_days=1.0).fit(table).params_.purchase
    assert days["k"] == 3
    assert days["alpha"] == pytest.approx(7 * weeks.purchase["alpha"], rel=1e-4)  # a rate per day
    for name in ("r", "a", "b"):
        assert days[name] == pytest.approx(weeks.purchase[name], rel=1e-4), name
    # The covariance is of the four estimated log-parameters; draws keep k.
    assert np.asarray(weeks.log_covariance).shape == (4, 4)
    assert {draw.purchase["k"] for draw in parameter_draws(weeks, 5, seed=1)} == {3}


def test_an_order_log_of_regular_buyers_gives_k_and_a_better_churn_ranking_than_bg_nbd(
    regular: tuple[pd.DataFrame, pd.DataFrame, CLVModel],
) -> None:
    """From the order log (gaps floored to days), the fit finds k = 3; fitted on the same calibration
    window, its churn probability ranks the holdout's churners better than BG/NBD's, which reads a long
    silence of a regular buyer no differently from a Poisson buyer's (0.881 vs 0.867 here; +0.008 to
    +0.020 on seeds 0-4)."""
    calibration, holdout, model = regular
    assert model.params_.purchase["k"] == 3
    assert model.params_.purchase["alpha"] / model.params_.purchase["r"] == pytest.approx(
        120 / 7 / 4, rel=0.1
    )
    bg = CLVModel(family="bgnbd").fit(calibration)
    churned = (holdout["purchases"] == 0).to_numpy()
    auc = {
        name: roc_auc_score(churned, fitted.predict(calibration, SPLIT.holdout_days)["churn_probability"])
        for name, fitted in (("mbgcnbd", model), ("bgnbd", bg))
    }
    assert auc["mbgcnbd"] > auc["bgnbd"] + 0.01, auc


def test_k1_predictions_equal_mbg_nbd() -> None:
    """At k = 1 MBG/CNBD-k is MBG/NBD: every output, the count distribution and the tracking curve."""
    mbg = CLVParams("mbgnbd", MBG_CDNOW, SPEND, 7.0)
    cnbd1 = CLVParams("mbgcnbd", MBG_CDNOW | {"k": 1}, SPEND, 7.0)
    for horizon in (30.0, 365.0, 3650.0):
        np.testing.assert_allclose(
            predict_arrays(cnbd1, HISTORIES, horizon, 0.1, 30.4375),
            predict_arrays(mbg, HISTORIES, horizon, 0.1, 30.4375),
            rtol=1e-8,
        )
    ours, theirs = count_pmf_terms(cnbd1, HISTORIES, 39.0), count_pmf_terms(mbg, HISTORIES, 39.0)
    np.testing.assert_allclose([ours(n) for n in range(60)], [theirs(n) for n in range(60)], atol=1e-12)
    ages = np.array([0.0, 3.0, 70.0, 500.0, 3000.0])
    fitter = lifetimes_fitter(ModifiedBetaGeoFitter, MBG_CDNOW)
    np.testing.assert_allclose(
        expected_repeat_purchases(cnbd1, ages),
        fitter.expected_number_of_purchases_up_to_time(ages / 7),
        rtol=1e-8,
    )


def test_regular_buyers_predictions() -> None:
    """k = 3: churn is the likelihood ratio in model units, the count distribution sums to one with the
    expected purchases as its mean, the tracking curve matches simulated new customers, and the median
    wait solves its equation (integrated over lambda here, not by the incomplete beta)."""
    params = CLVParams("mbgcnbd", REGULAR | {"k": 3}, SPEND, 7.0)
    x, t_x, T = HISTORIES.frequency, HISTORIES.recency, HISTORIES.T
    out = dict(zip(BTYD_COLUMNS, predict_arrays(params, HISTORIES, 91.0, 0.1, 30.4375).T, strict=True))
    np.testing.assert_allclose(out["churn_probability"], cnbd.prob_no_purchase(REGULAR, x, t_x, T, 3, 13.0))
    np.testing.assert_allclose(out["p_alive"], cnbd.p_alive(REGULAR, x, t_x, T, 3))
    terms = count_pmf_terms(params, HISTORIES, 13.0)
    pmf = np.array([terms(n) for n in range(200)])
    np.testing.assert_allclose(pmf.sum(axis=0), 1.0, atol=1e-10)
    mean = out["p_alive"] * (np.arange(200)[:, None] * pmf).sum(axis=0)
    np.testing.assert_allclose(mean, out["expected_purchases"], rtol=1e-8)
    np.testing.assert_allclose(
        out["p_alive"] * pmf[0] + 1 - out["p_alive"], out["churn_probability"], rtol=1e-8
    )

    _, _, _, _, bought = cnbd.simulate(40_000, REGULAR, 3, 0.0, 26.0, seed=4)
    curve = expected_repeat_purchases(params, np.array([26.0 * 7]))[0]
    assert curve == pytest.approx(bought.mean(), abs=4 * bought.std() / np.sqrt(len(bought)))

    weights, shapes, rate = cnbd.alive_phase_posterior(REGULAR, x, t_x, T, 3)
    for i, wait in enumerate(out["next_purchase_days"] / 7):  # P(none by the wait | alive) over lambda

        def none_by(lam: float, j: int, i: int = i, wait: float = wait) -> float:
            return gamma_pdf(lam, shapes[i, j], rate[i]) * poisson_cdf(3 - j - 1, lam * wait)

        survive = sum(weights[i, j] * integrate.quad(none_by, 0, np.inf, args=(j,))[0] for j in range(3))
        assert survive == pytest.approx(0.5, abs=1e-7)


def test_a_regular_buyer_who_just_bought_is_not_due_yet() -> None:
    """Erlang gaps make recency two-sided: over a short horizon a purchase made today means a lower chance
    to buy than one made a usual gap ago (MBG/NBD's churn always falls with a more recent purchase)."""
    table = pd.DataFrame({"frequency": [6.0, 6.0], "recency_days": [210.0, 196.0], "T_days": [210.0, 210.0]})
    churn = {}
    for family, k in (("mbgcnbd", 4), ("mbgnbd", None)):
        purchase = REGULAR | ({"k": k} if k else {})
        model = CLVModel.from_params(CLVParams(family, purchase, None, 7.0), 0.1, 30.4375)
        churn[family] = model.predict(table, 14.0)["churn_probability"].to_numpy()
    assert churn["mbgcnbd"][0] > churn["mbgcnbd"][1]  # bought today vs two weeks ago
    assert churn["mbgnbd"][0] < churn["mbgnbd"][1]


def test_a_series_that_does_not_converge_is_a_failed_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The penalizer ladder and the bootstrap draws handle ModelFitError, not the series' RuntimeError."""

    def stuck(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("expected_purchases: series not converged after 100000 terms")

    monkeypatch.setattr(cnbd, "expected_purchases", stuck)
    params = CLVParams("mbgcnbd", REGULAR | {"k": 3}, SPEND, 7.0)
    with pytest.raises(ModelFitError, match="^MBG/CNBD-3 expected purchases: .* not converged"):
        predict_arrays(params, HISTORIES, 365.0, 0.1, 30.4375)


def test_pattern_counts_carry_the_summed_litt(regular: tuple[pd.DataFrame, pd.DataFrame, CLVModel]) -> None:
    """Spark's pattern counts (engine=spark) give the same fit when they carry each pattern's summed
    litt_days; without it the family says what it misses."""
    calibration, _, model = regular
    counts = calibration.groupby(["frequency", "recency_days", "T_days"], as_index=False).agg(
        customers=("litt_days", "size"), litt_days=("litt_days", "sum")
    )
    counts["customers"] = counts["customers"].astype("float64")
    from_counts = CLVModel(family="mbgcnbd", interval_draws=10).fit(calibration, counts)
    assert from_counts.params_.purchase == pytest.approx(model.params_.purchase, rel=1e-9)
    with pytest.raises(ModelFitError, match="needs the pattern counts' summed litt_days"):
        CLVModel(family="mbgcnbd", fallback_penalizers=()).fit(calibration, counts.drop(columns="litt_days"))


def test_intervals_hold_the_point_estimate(regular: tuple[pd.DataFrame, pd.DataFrame, CLVModel]) -> None:
    calibration, _, model = regular
    out = model.predict(calibration.iloc[:300], 182.0, intervals=True)
    for name in ("expected_purchases", "clv"):
        assert (out[f"{name}_low"] <= out[name] * (1 + 1e-9)).all() and (
            out[name] <= out[f"{name}_high"]
        ).all()
        assert (out[f"{name}_high"] > out[f"{name}_low"]).any()  # the draws moved it
    assert (out["purchases_low"] <= out["purchases_high"]).all() and (out["purchases_high"] > 0).any()


def test_registered_model_round_trip_and_every_familys_inputs(
    regular: tuple[pd.DataFrame, pd.DataFrame, CLVModel], tracking_uri: str
) -> None:
    """Logged and loaded, the MBG/CNBD-k model predicts what the fitted one does from the same input columns
    as every other family (litt cancels from every forecast, so it is needed at fit time only); a BG/NBD
    model fitted on a table that has litt_days keeps the inputs it always had."""
    calibration, _, model = regular
    rows = calibration.iloc[:200]
    expected = model.predict(rows, 182.0, intervals=True).reset_index(drop=True)
    for fitted in (model, CLVModel(family="bgnbd", interval_draws=10).fit(calibration)):
        spec = clv_spec(fitted, fitted, horizon_days=365.0, calibration_end="2024-06-24", trained_through="x")
        with mlflow.start_run():
            info = registry.log_clv_model(spec, calibration)
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        assert loaded.metadata.signature.inputs.required_input_names() == INPUT_COLUMNS
        if fitted is model:
            assert spec["scoring_params"]["purchase"]["k"] == 3
            got = loaded.predict(rows[INPUT_COLUMNS], params={"horizon_days": 182.0})
            pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        else:
            assert set(spec["scoring_params"]["purchase"]) == {"r", "alpha", "a", "b"}
    scrambled = rows.assign(litt_days=np.random.default_rng(0).permutation(rows["litt_days"].to_numpy()))
    pd.testing.assert_frame_equal(
        model.predict(scrambled, 182.0, intervals=True).reset_index(drop=True), expected
    )


def test_covariates_are_refused_as_for_mbg_nbd(regular: tuple[pd.DataFrame, pd.DataFrame, CLVModel]) -> None:
    calibration, _, _ = regular
    customers = pd.DataFrame({"channel": "web"}, index=calibration.index)
    model = CLVModel(
        family="mbgcnbd", covariates={"purchase": ["channel"], "dropout": []}, customers=customers
    )
    with pytest.raises(ModelFitError, match=r"^MBG/CNBD-k has no covariate model; use one of"):
        model.fit(calibration)
    cfg = _compose("train", ["clv=mbgcnbd", "data.customers.path=c.csv", "clv.covariates.purchase=[x]"])
    with pytest.raises(UserError, match=r"\(MBG/CNBD-k has no covariate model\)$"):
        validate_train_config(cfg)


def test_the_config_knows_every_family() -> None:
    """The schema names the families without importing the models (no lifetimes at config time)."""
    assert set(CLV_FAMILIES) == set(FAMILIES)
    assert {f: FAMILIES[f].label for f in FAMILIES if f not in COVARIATE_FAMILIES} == NO_COVARIATE_FAMILIES
    assert [f for f, spec in FAMILIES.items() if spec.litt] == ["mbgcnbd"]
