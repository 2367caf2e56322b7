"""Prediction intervals: exact count distributions, the fitted covariance, and coverage on CDNOW."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter

from customer_value.data.features import Split, calibration_and_holdout, resolve_split
from customer_value.data.loading import LoadingRules, load_bundled
from customer_value.evaluation.holdout_metrics import interval_metrics
from customer_value.models.clv.btyd import (
    FAMILIES,
    CLVParams,
    ModelInputs,
    lifetimes_fitter,
    model_inputs,
    purchase_patterns,
)
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.pareto_likelihood import fit_pareto_nbd
from customer_value.models.clv.uncertainty import (
    count_pmf_terms,
    log_parameter_covariance,
    parameter_draws,
    purchase_count_interval,
)

PUBLISHED = {  # CDNOW estimates in weeks: FHL 2005, BTYDplus MBG/NBD, Fader-Hardie-Lee Pareto/NBD
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "mbgnbd": {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},
    "pareto_nbd": {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669},
}
SPEND = {"p": 6.25, "q": 3.74, "v": 15.44}
HISTORIES = ModelInputs(  # (x, t_x, T) from a one-time buyer to a 170-purchase heavy buyer
    np.array([0.0, 2.0, 5.0, 170.0, 1.0]),
    np.array([0.0, 30.43, 35.0, 77.0, 2.0]),
    np.array([38.0, 38.86, 39.0, 78.0, 39.0]),
    np.zeros(5),
)


# MBG/CNBD-k at k = 1 is MBG/NBD: judged against lifetimes' MBG/NBD at MBG/NBD's published parameters.
AT_K1 = {"mbgcnbd": "mbgnbd"}


@pytest.mark.parametrize("family", [*sorted(PUBLISHED), *AT_K1])
def test_count_distribution_sums_to_one_and_has_lifetimes_conditional_mean(family: str) -> None:
    """The whole distribution of purchases in 39 weeks, not only its mean, for every family."""
    twin = AT_K1.get(family, family)
    params = CLVParams(family, PUBLISHED[twin] | ({"k": 1} if family in AT_K1 else {}), SPEND, 7.0)
    terms = count_pmf_terms(params, HISTORIES, 39.0)
    pmf = np.array([terms(n) for n in range(400)])
    np.testing.assert_allclose(pmf.sum(axis=0), 1.0, atol=1e-8)
    fitter = lifetimes_fitter(FAMILIES[twin].fitter, PUBLISHED[twin])
    x, t_x, T = HISTORIES.frequency, HISTORIES.recency, HISTORIES.T
    p_alive = np.asarray(fitter.conditional_probability_alive(x, t_x, T))
    mean = p_alive * (np.arange(400)[:, None] * pmf).sum(axis=0)
    expected = fitter.conditional_expected_number_of_purchases_up_to_time(39.0, x, t_x, T)
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    if family == "bgnbd":
        assert round(float(mean[1]), 3) == 1.226  # FHL 2005's single-customer figure


def test_count_interval_is_the_central_quantiles() -> None:
    params = CLVParams("bgnbd", PUBLISHED["bgnbd"], SPEND, 7.0)
    fitter = lifetimes_fitter(BetaGeoFitter, PUBLISHED["bgnbd"])
    x, t_x, T = HISTORIES.frequency, HISTORIES.recency, HISTORIES.T
    p_alive = np.asarray(fitter.conditional_probability_alive(x, t_x, T))
    low, high = purchase_count_interval(params, HISTORIES, 39.0, p_alive, 0.8)
    terms = count_pmf_terms(params, HISTORIES, 39.0)
    pmf = np.array([terms(n) for n in range(400)]) * p_alive
    pmf[0] += 1 - p_alive
    cdf = np.cumsum(pmf, axis=0)
    for i in range(5):
        assert cdf[int(low[i]), i] >= 0.1 and (low[i] == 0 or cdf[int(low[i]) - 1, i] < 0.1)
        assert cdf[int(high[i]), i] >= 0.9 and (high[i] == 0 or cdf[int(high[i]) - 1, i] < 0.9)
    assert high[3] > 50 and low[0] == 0  # a heavy buyer's interval is far from zero


def test_covariance_matches_lifetimes_standard_errors() -> None:
    """The numerical information matrix agrees with lifetimes' autograd Hessian (BG/NBD, CDNOW sample)."""
    orders, _ = load_bundled("cdnow_sample", LoadingRules(keep_zero_amounts=True))
    calibration, _ = calibration_and_holdout(orders, Split(pd.Timestamp("1997-09-30"), orders["date"].max()))
    model = CLVModel().fit(calibration)
    inputs = model_inputs(calibration, 7.0)
    plain = BetaGeoFitter().fit(inputs.frequency, inputs.recency, inputs.T)
    theirs = plain.standard_errors_[["r", "alpha", "a", "b"]].to_numpy()
    values = np.array([model.params_.purchase[k] for k in ("r", "alpha", "a", "b")])
    ours = values * np.sqrt(np.diag(model.params_.log_covariance)[:4])  # delta method: se = theta * se(log)
    np.testing.assert_allclose(ours, theirs, rtol=0.02)


def test_covariance_is_the_inverse_of_lifetimes_autograd_hessian() -> None:
    """From differences of our analytic gradients: lifetimes' exact (autograd) information matrices of
    both likelihoods, at our estimates, inverted (CDNOW sample)."""
    from autograd import hessian
    from lifetimes import GammaGammaFitter

    orders, _ = load_bundled("cdnow_sample", LoadingRules(keep_zero_amounts=True))
    calibration, _ = calibration_and_holdout(orders, Split(pd.Timestamp("1997-09-30"), orders["date"].max()))
    params = CLVModel().fit(calibration).params_
    inputs = model_inputs(calibration, 7.0)
    x, t_x, T, m = inputs.frequency, inputs.recency, inputs.T, inputs.monetary_value
    repeat = (x > 0) & (m > 0)
    purchase = np.log([params.purchase[k] for k in ("r", "alpha", "a", "b")])
    spend = np.log([params.spend[k] for k in ("p", "q", "v")])
    ones = np.ones(len(x))
    information = [
        hessian(BetaGeoFitter._negative_log_likelihood)(purchase, x, t_x, T, ones, 0.0) * len(x),
        hessian(GammaGammaFitter._negative_log_likelihood)(spend, x[repeat], m[repeat], ones[repeat], 0.0)
        * repeat.sum(),
    ]
    covariance = np.asarray(params.log_covariance)
    np.testing.assert_allclose(covariance[:4, :4], np.linalg.inv(information[0]), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(covariance[4:, 4:], np.linalg.inv(information[1]), rtol=1e-5, atol=1e-12)


def test_mbgcnbd_covariance_at_k1_is_mbg_nbds() -> None:
    """Second differences of MBG/CNBD-k's likelihood at k = 1 give lifetimes' MBG/NBD covariance (CDNOW
    sample, BTYDplus's MBG/NBD estimates); k stays out of the covariance."""
    orders, _ = load_bundled("cdnow_sample", LoadingRules(keep_zero_amounts=True))
    calibration, _ = calibration_and_holdout(orders, Split(pd.Timestamp("1997-09-30"), orders["date"].max()))
    inputs = model_inputs(calibration, 7.0, spend=False)
    mbg = log_parameter_covariance(CLVParams("mbgnbd", PUBLISHED["mbgnbd"], None, 7.0), inputs)
    params = CLVParams("mbgcnbd", PUBLISHED["mbgnbd"] | {"k": 1}, None, 7.0)
    np.testing.assert_allclose(log_parameter_covariance(params, inputs), mbg, rtol=1e-4)


def test_draws_are_reproducible_and_centred_on_the_fit() -> None:
    covariance = (np.eye(7) * 0.01).tolist()
    params = CLVParams("bgnbd", PUBLISHED["bgnbd"], SPEND, 7.0, log_covariance=covariance)
    first, second = parameter_draws(params, 2000, seed=3), parameter_draws(params, 2000, seed=3)
    assert first == second
    log_r = np.log([draw.purchase["r"] for draw in first])
    assert abs(log_r.mean() - np.log(0.243)) < 0.01 and abs(log_r.std() - 0.1) < 0.01
    assert parameter_draws(CLVParams("bgnbd", PUBLISHED["bgnbd"], SPEND, 7.0), 10, seed=3) == []


@pytest.fixture(scope="module")
def cdnow_intervals(cdnow_master) -> tuple[CLVModel, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    orders, _ = cdnow_master
    split = Split(pd.Timestamp("1997-09-30"), orders["date"].max())
    calibration, holdout = calibration_and_holdout(orders, split)
    model = CLVModel(interval_draws=30).fit(calibration)
    return model, calibration, holdout, model.predict(calibration, split.holdout_days, intervals=True)


def test_purchase_intervals_cover_the_cdnow_holdout(cdnow_intervals) -> None:
    """A 90% interval of each customer's holdout purchases holds the actual count for >= 90% of them
    (a little more: counts are discrete). Measured: 0.942."""
    _, _, holdout, predictions = cdnow_intervals
    metrics = interval_metrics(predictions, holdout)
    assert 0.90 <= metrics["purchases_interval_coverage"] <= 0.97
    assert 0 < metrics["expected_purchases_interval_relative_width"] < 0.5


def test_intervals_are_ordered_and_depend_on_the_customer_row_only(cdnow_intervals) -> None:
    model, calibration, _, predictions = cdnow_intervals
    for column in ("expected_purchases", "clv"):
        assert (predictions[f"{column}_low"] >= 0).all()
        assert (predictions[f"{column}_low"] <= predictions[column]).all()
        assert (predictions[column] <= predictions[f"{column}_high"]).all()
    assert (predictions["purchases_low"] <= predictions["purchases_high"]).all()
    sample = calibration.sample(300, random_state=0)
    alone = model.predict(sample, 273.0, intervals=True)
    pd.testing.assert_frame_equal(alone, predictions.loc[sample.index])


# CLVTools' tests pin these Pareto/NBD standard errors (CDNOW 1/10 sample, calibration to 1997-09-30, weeks),
# each to its last printed digit.
CLVTOOLS_STANDARD_ERRORS = {
    "r": (0.0476, 5e-5),
    "alpha": (0.843, 5e-4),
    "s": (0.187, 5e-4),
    "beta": (6.21, 5e-3),
}


def test_pareto_nbd_standard_errors_equal_clvtools_on_the_cdnow_sample() -> None:
    """The fitted covariance of the log-parameters (what the intervals draw from), mapped by the delta
    method (se = value * sd of its log), gives CLVTools' standard errors."""
    orders, _ = load_bundled("cdnow_sample", LoadingRules(keep_zero_amounts=True))
    calibration, _ = calibration_and_holdout(orders, resolve_split(orders, "1997-09-30", 0.5))
    inputs = model_inputs(calibration, 7.0, spend=False)
    fitted = fit_pareto_nbd(purchase_patterns(inputs), 0.0)
    covariance = log_parameter_covariance(CLVParams("pareto_nbd", fitted, None, 7.0), inputs)
    assert covariance is not None
    for i, name in enumerate(FAMILIES["pareto_nbd"].params):
        expected, tolerance = CLVTOOLS_STANDARD_ERRORS[name]
        assert fitted[name] * np.sqrt(covariance[i][i]) == pytest.approx(expected, abs=tolerance), name
