"""Pareto/NBD's quadrature likelihood: equal to lifetimes' hyp2f1 one, its gradient, and lifetimes' fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.special import gammaln

from customer_value.data.features import calibration_and_holdout, customer_features, resolve_split
from customer_value.data.loading import LoadingRules, load_bundled
from customer_value.models.clv.btyd import (
    StableParetoNBDFitter,
    model_inputs,
    purchase_patterns,
    quiet_lifetimes,
)
from customer_value.models.clv.likelihoods import BGNBDLikelihood, Patterns, unique_patterns
from customer_value.models.clv.pareto_likelihood import ParetoNBDLikelihood, fit_pareto_nbd

PUBLISHED = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}  # Fader, Hardie & Lee (2005)
# (r, alpha, s, beta) in weeks: the published fit, the short window's ridge (s, beta large), alpha and
# beta small and large against the ages (up to 78 weeks), dropout rates of either size.
POINTS = [
    (0.553, 10.578, 0.606, 11.669),
    (0.514, 8.39, 169.0, 2931.0),
    (0.3, 0.02, 0.6, 12.0),
    (0.5, 500.0, 0.6, 0.05),
    (2.0, 0.3, 5.0, 1.0),
    (1.2, 40.0, 0.05, 300.0),
]


def _patterns(calibration: pd.DataFrame) -> Patterns:
    return purchase_patterns(model_inputs(calibration, 7.0, spend=False))


@pytest.fixture(scope="module")
def sample_patterns() -> Patterns:
    """CDNOW's 1/10 sample, calibration to 1997-09-30 (Fader, Hardie & Lee's)."""
    orders, _ = load_bundled("cdnow_sample", LoadingRules(keep_zero_amounts=True))
    calibration, _ = calibration_and_holdout(orders, resolve_split(orders, "1997-09-30", 0.5))
    return _patterns(calibration)


@pytest.fixture(scope="module")
def master_patterns(cdnow_master: tuple[pd.DataFrame, object]) -> dict[str, Patterns]:
    """CDNOW master: the shortest inner window (to 1997-04-01) and the full calibration (to 1997-09-30)."""
    orders, _ = cdnow_master
    return {
        end: _patterns(customer_features(orders, pd.Timestamp(end))) for end in ("1997-04-01", "1997-09-30")
    }


def _hyp2f1_log_likelihoods(params: tuple, patterns: Patterns) -> np.ndarray:
    with quiet_lifetimes():
        return StableParetoNBDFitter._conditional_log_likelihood(
            np.array(params), patterns.frequency, patterns.recency, patterns.T
        )


def _quad_log_likelihood(params: tuple, x: float, t_x: float, T: float) -> float:
    """The same likelihood with its dropout integral by adaptive quadrature (scipy quad), independently."""
    r, alpha, s, beta = params
    log_a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    if t_x == T:
        return log_a1 + alive
    top = -(r + x) * np.log(alpha + t_x) - (s + 1) * np.log(beta + t_x)
    c = min(alpha, beta)

    def integrand(u: float) -> float:  # in u = ln(c + tau), relative to the integrand at t_x
        tau = np.exp(u) - c
        return np.exp(-(r + x) * np.log(alpha + tau) - (s + 1) * np.log(beta + tau) - top + u)

    edges = np.linspace(np.log(c + t_x), np.log(c + T), 101)
    total = sum(
        integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )
    return log_a1 + np.logaddexp(alive, np.log(s) + top + np.log(total))


@pytest.mark.parametrize("params", POINTS)
def test_equals_the_hyp2f1_likelihood_on_cdnow_patterns(
    params: tuple, sample_patterns: Patterns, master_patterns: dict[str, Patterns]
) -> None:
    for patterns in (sample_patterns, *master_patterns.values()):
        theirs = _hyp2f1_log_likelihoods(params, patterns)
        likelihood = ParetoNBDLikelihood(patterns.frequency, patterns.recency, patterns.T, patterns.weights)
        ours = likelihood.log_likelihoods(np.array(params))
        finite = np.isfinite(theirs)  # hyp2f1 overflows for a few long histories far out on the ridge
        assert finite.mean() > 0.95
        assert np.isfinite(ours).all()
        # atol: a likelihood near 1 (ll ~ -3e-4) is a difference of terms of order one, exact to ~1e-15
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-10, atol=1e-12)
        total, _ = likelihood.value_and_gradient(np.array(params))
        assert total == pytest.approx(float(patterns.weights @ ours), rel=1e-12)


EDGES = pd.DataFrame(
    [
        (0, 0.0, 39.0),  # no repeat purchase
        (0, 0.0, 0.5),
        (3, 39.0, 39.0),  # last purchase on the last day: A_0 = 0, the alive term only
        (170, 70.857, 70.857),
        (120, 37.5, 39.0),  # large frequencies
        (400, 10.0, 39.0),
        (2, 0.1, 78.0),
        (25, 77.9, 78.0),
    ],
    columns=["x", "t_x", "T"],
)


@pytest.mark.parametrize("params", POINTS)
def test_edge_cases_equal_an_independent_quadrature(params: tuple) -> None:
    """t_x = T, x = 0, x of 100 and more, t_x near 0 or T; scipy quad as the reference (hyp2f1 is not
    reliable at all of these)."""
    x, t_x, T = (EDGES[c].to_numpy(dtype="float64") for c in ("x", "t_x", "T"))
    ours = ParetoNBDLikelihood(x, t_x, T, np.ones(len(x))).log_likelihoods(np.array(params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = [_quad_log_likelihood(params, *row) for row in zip(x, t_x, T, strict=True)]
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("params", POINTS)
def test_gradient_equals_finite_differences(params: tuple, sample_patterns: Patterns) -> None:
    patterns = sample_patterns
    likelihood = ParetoNBDLikelihood(patterns.frequency, patterns.recency, patterns.T, patterns.weights)
    point = np.array(params)
    _, gradient = likelihood.value_and_gradient(point, time_scale=0.5)

    def value(p: np.ndarray) -> float:
        return likelihood.value_and_gradient(p, time_scale=0.5)[0]

    numeric = []
    for k in range(4):  # fourth-order central differences
        h = np.zeros(4)
        h[k] = 1e-4 * point[k]
        numeric.append(
            (8 * (value(point + h) - value(point - h)) - (value(point + 2 * h) - value(point - 2 * h)))
            / (12 * h[k])
        )
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-7 * np.abs(gradient).max())


@pytest.fixture(scope="module")
def lifetimes_sample_fits(sample_patterns: Patterns) -> dict[float, dict[str, float]]:
    """lifetimes' Nelder-Mead fit (StableParetoNBDFitter, fixed start, tol 1e-8) per penalizer."""
    fits = {}
    for penalizer in (0.0, 0.001):
        fitter = StableParetoNBDFitter(penalizer_coef=penalizer)
        p = sample_patterns
        with quiet_lifetimes():
            fitter.fit(p.frequency, p.recency, p.T, weights=p.weights, tol=1e-8)
        fits[penalizer] = {k: float(v) for k, v in fitter.params_.items()}
    return fits


@pytest.mark.parametrize("penalizer", [0.0, 0.001])
def test_fit_equals_lifetimes(
    penalizer: float, sample_patterns: Patterns, lifetimes_sample_fits: dict[float, dict[str, float]]
) -> None:
    """Same objective (scaled time, penalty on the scaled alpha and beta, sum / mean weight), same optimum."""
    ours = fit_pareto_nbd(sample_patterns, penalizer)
    theirs = lifetimes_sample_fits[penalizer]
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-6), name


def test_fit_reproduces_the_published_cdnow_estimates(sample_patterns: Patterns) -> None:
    fitted = fit_pareto_nbd(sample_patterns, 0.0)
    assert {k: round(v, 3) for k, v in fitted.items()} == PUBLISHED


def test_fit_recovers_simulated_parameters() -> None:
    """Pareto/NBD histories drawn directly: lambda ~ Gamma(r, alpha), lifetime ~ Exp(mu), mu ~ Gamma(s,
    beta), Poisson purchases until min(lifetime, T); t_x is the last of x uniform purchase times."""
    true = {"r": 0.6, "alpha": 8.0, "s": 0.8, "beta": 12.0}
    rng = np.random.default_rng(11)
    n = 20_000
    rate = rng.gamma(true["r"], 1.0 / true["alpha"], n)
    lifetime = rng.exponential(1.0 / rng.gamma(true["s"], 1.0 / true["beta"], n))
    T = np.round(rng.uniform(26, 52, n), 1)
    active = np.minimum(lifetime, T)
    x = rng.poisson(rate * active).astype("float64")
    t_x = np.where(x > 0, active * rng.uniform(size=n) ** (1.0 / np.maximum(x, 1.0)), 0.0)
    fitted = fit_pareto_nbd(unique_patterns(x, np.round(t_x, 1), T), 0.0)
    for name, value in true.items():
        assert fitted[name] == pytest.approx(value, rel=0.15), name


def test_rejects_what_lifetimes_rejects() -> None:
    with pytest.raises(ValueError, match="larger than T"):
        fit_pareto_nbd(unique_patterns(np.array([1.0]), np.array([5.0]), np.array([4.0])), 0.0)
    with pytest.raises(ValueError, match="non-zero recency"):
        fit_pareto_nbd(unique_patterns(np.array([0.0]), np.array([1.0]), np.array([4.0])), 0.0)


def test_a_trial_step_that_underflows_a_parameter_gives_a_non_finite_objective(
    sample_patterns: Patterns,
) -> None:
    """BFGS trial steps can underflow exp(log beta) to 0 (fitting Pareto/NBD to very regular buyers did):
    the objective must then be non-finite, so the line search backs off, not raise ZeroDivisionError."""
    p = sample_patterns
    likelihood = ParetoNBDLikelihood(p.frequency, p.recency, p.T, p.weights)
    with np.errstate(all="ignore"):
        value, gradient = likelihood.value_and_gradient(np.array([0.5, 10.0, 0.6, 0.0]))
    assert not (np.isfinite(value) and np.isfinite(gradient).all())
    bgnbd = BGNBDLikelihood(p.frequency, p.recency, p.T, p.weights)
    with np.errstate(all="ignore"):
        value, gradient = bgnbd.value_and_gradient(np.array([0.5, 0.0, 0.8, 2.0]))
    assert not (np.isfinite(value) and np.isfinite(gradient).all())
