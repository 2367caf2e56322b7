"""Our BG/NBD and Gamma-Gamma likelihoods: lifetimes' values, gradients that match finite differences, and
fits equal to lifetimes' plain fits."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

from customer_value.data.features import customer_features
from customer_value.data.loading import clean_transactions
from customer_value.data.synthetic import TrueParams, generate_orders
from customer_value.models.clv.btyd import model_inputs
from customer_value.models.clv.likelihoods import (
    BGNBDLikelihood,
    FitFailed,
    GammaGammaLikelihood,
    fit_bgnbd,
    fit_gamma_gamma,
    log_space_hessian,
    unique_patterns,
)


@pytest.fixture(scope="module")
def customers() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T, m) in weeks for 2,000 generated customers: several share a pattern."""
    raw = generate_orders(2_000, seed=5, params=TrueParams(r=0.8, alpha=5.0, a=0.6, b=3.0), max_repeats=60)
    orders, _ = clean_transactions(raw, source="generated")
    inputs = model_inputs(customer_features(orders, orders["date"].max()), 7.0)
    return inputs.frequency, inputs.recency, inputs.T, inputs.monetary_value


def _finite_difference(f, params: np.ndarray, step: float = 1e-6) -> np.ndarray:  # noqa: ANN001
    return np.array(
        [
            (f(params * (1 + step * e)) - f(params * (1 - step * e))) / (2 * step * p)
            for e, p in zip(np.eye(len(params)), params, strict=True)
        ]
    )


def test_bgnbd_likelihood_and_gradient(customers) -> None:
    x, t_x, T, _ = customers
    patterns = unique_patterns(x, t_x, T)
    assert patterns.weights.sum() == len(x) and len(patterns.weights) < len(x)
    likelihood = BGNBDLikelihood(patterns.frequency, patterns.recency, patterns.T, patterns.weights)
    params = np.array([0.7, 4.0, 0.8, 2.5])
    value, gradient = likelihood.value_and_gradient(params)
    theirs = -BetaGeoFitter._negative_log_likelihood(np.log(params), x, t_x, T, np.ones(len(x)), 0.0) * len(x)
    assert value == pytest.approx(theirs, rel=1e-12)
    numerical = _finite_difference(lambda p: likelihood.value_and_gradient(p)[0], params)
    np.testing.assert_allclose(gradient, numerical, rtol=1e-5)
    scaled = _finite_difference(lambda p: likelihood.value_and_gradient(p, 0.1)[0], params)
    np.testing.assert_allclose(likelihood.value_and_gradient(params, 0.1)[1], scaled, rtol=1e-5)


def test_gamma_gamma_likelihood_and_gradient(customers) -> None:
    x, _, _, m = customers
    repeat = x > 0
    likelihood = GammaGammaLikelihood(x[repeat], m[repeat], np.ones(int(repeat.sum())))
    params = np.array([5.0, 3.0, 12.0])
    value, gradient = likelihood.value_and_gradient(params)
    weights = np.ones(int(repeat.sum()))
    theirs = -GammaGammaFitter._negative_log_likelihood(np.log(params), x[repeat], m[repeat], weights, 0.0)
    assert value == pytest.approx(theirs * repeat.sum(), rel=1e-12)
    numerical = _finite_difference(lambda p: likelihood.value_and_gradient(p)[0], params)
    np.testing.assert_allclose(gradient, numerical, rtol=1e-5)


@pytest.mark.parametrize("penalizer", [0.0, 0.01])
def test_fits_equal_lifetimes_plain_fits(customers, penalizer: float) -> None:
    x, t_x, T, m = customers
    ours = fit_bgnbd(unique_patterns(x, t_x, T), penalizer)
    theirs = BetaGeoFitter(penalizer_coef=penalizer).fit(x, t_x, T).params_
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], rel=1e-6), name
    repeat = x > 0
    ours = fit_gamma_gamma(x[repeat], m[repeat], penalizer)
    theirs = GammaGammaFitter(penalizer_coef=penalizer).fit(x[repeat], m[repeat]).params_
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], rel=1e-6), name


def test_a_fit_that_cannot_converge_fails() -> None:
    """Every buyer with the same frequency: Gamma-Gamma's p and q run away, as in lifetimes."""
    x, m = np.full(50, 2.0), 10.0 + np.arange(50) % 7
    with pytest.raises(FitFailed):
        fit_gamma_gamma(x, m, 0.0)
    with pytest.raises(ConvergenceError), contextlib.redirect_stdout(io.StringIO()):
        GammaGammaFitter().fit(x, m)


def test_hessian_from_gradients_matches_the_function_hessian() -> None:
    """On a quadratic in log-parameters the central difference of the gradient is exact."""
    matrix = np.array([[2.0, 0.5], [0.5, 1.0]])

    def gradient(params: np.ndarray) -> np.ndarray:  # of -0.5 u' A u with u = log(params)
        return -(matrix @ np.log(params)) / params

    np.testing.assert_allclose(log_space_hessian(gradient, np.array([0.3, -0.2]), 1e-4), -matrix, atol=1e-8)


def test_invalid_histories_are_refused_as_lifetimes_refuses_them() -> None:
    with pytest.raises(ValueError, match="larger than T"):
        fit_bgnbd(unique_patterns(np.array([1.0, 0.0]), np.array([5.0, 0.0]), np.array([4.0, 3.0])), 0.0)
    with pytest.raises(ValueError, match="non-positive"):
        fit_gamma_gamma(np.array([1.0, 2.0]), np.array([3.0, 0.0]), 0.0)
