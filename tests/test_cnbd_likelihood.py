"""MBG/CNBD-k (cnbd_likelihood): BTYDplus's formulas, MBG/NBD at k = 1, recovery, and Monte Carlo checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifetimes import ModifiedBetaGeoFitter
from scipy import integrate, stats
from scipy.special import betaln

from customer_value.models.clv import cnbd_likelihood as cnbd

# BTYDplus's own test parameters (tests/testthat/test-mbg-cnbd-k.R: k = 3, r = 0.85, alpha = 1.45, a = 0.79,
# b = 2.42, weeks). Its checks use R's RNG (set.seed(1)), so its numbers cannot be reproduced here.
PARAMS = {"r": 0.85, "alpha": 1.45, "a": 0.79, "b": 2.42}
OTHER = {"r": 2.3, "alpha": 9.0, "a": 1.6, "b": 5.5}
# (x, t_x, T) in weeks: no repeat, long silences, a recent heavy buyer, an early buyer, a purchase at T.
HISTORIES = [(0, 0.0, 20.0), (2, 8.0, 20.0), (6, 18.0, 20.0), (1, 3.0, 10.0), (3, 12.0, 24.0), (5, 40, 40)]


def _random_histories(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 15, n).astype(float)
    T = rng.uniform(1.0, 100.0, n)
    t_x = np.where(x > 0, rng.uniform(0.0, 1.0, n) * T, 0.0)
    litt = np.where(x > 0, x * np.log(np.maximum(t_x, 1e-3) / np.maximum(x, 1.0)) + rng.normal(0, 1, n), 0.0)
    return x, t_x, T, litt


def _lifetimes(params: dict[str, float]) -> ModifiedBetaGeoFitter:
    fitter = ModifiedBetaGeoFitter()
    fitter.params_ = pd.Series(params)[["r", "alpha", "a", "b"]]  # lifetimes reads params_[name]
    return fitter


def _btydplus_literal(params: dict[str, float], x, t_x, T, litt, k) -> tuple[float, float]:
    """xbgcnbd.LL and xbgcnbd.PAlive (R/mbg-cnbd-k.R, dropout_at_zero = TRUE) transcribed line by line."""
    r, alpha, a, b = (params[name] for name in ("r", "alpha", "a", "b"))
    p1 = (k - 1) * litt - x * math.log(math.factorial(k - 1))
    p2 = betaln(a, b + x + 1) - betaln(a, b)
    p3 = math.lgamma(r + k * x) - math.lgamma(r) + r * math.log(alpha)
    p4 = -1 * (r + k * x) * math.log(alpha + T)
    s1 = a / (b + x - 1 + 1) * ((alpha + T) / (alpha + t_x)) ** (r + k * x)
    s2 = 1.0
    for j in range(1, k):
        s2a = 1.0
        for i in range(j):
            s2a *= r + k * x + i
        s2 += (s2a * (T - t_x) ** j) / (math.factorial(j) * (alpha + T) ** j)
    return p1 + p2 + p3 + p4 + math.log(s1 + s2), 1 / (1 + s1 / s2)


@pytest.mark.parametrize("params", [PARAMS, OTHER])
def test_k1_is_lifetimes_mbgnbd(params: dict[str, float]) -> None:
    """At k = 1 the log-likelihood (full value), P(alive) and conditional expectation equal lifetimes'."""
    x, t_x, T, litt = _random_histories(60, seed=1)
    ours = cnbd.log_likelihood(params, x, t_x, T, litt, 1)
    theirs = np.array(
        [
            -ModifiedBetaGeoFitter._negative_log_likelihood(
                np.log(list(params.values())), x[[i]], t_x[[i]], T[[i]], np.ones(1), 0.0
            )
            for i in range(len(x))
        ]
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    fitter = _lifetimes(params)
    np.testing.assert_allclose(
        cnbd.p_alive(params, x, t_x, T, 1), fitter.conditional_probability_alive(x, t_x, T), rtol=1e-12
    )
    for horizon in (0.5, 10.0, 52.0, 400.0):
        expected = fitter.conditional_expected_number_of_purchases_up_to_time(horizon, x, t_x, T)
        np.testing.assert_allclose(
            cnbd.expected_purchases(params, x, t_x, T, 1, horizon), expected, rtol=1e-8
        )


def test_k1_likelihood_differences_match_lifetimes() -> None:
    """The fit-relevant quantity, ll(params1) - ll(params2), agrees with lifetimes' objective to 1e-10."""
    x, t_x, T, litt = _random_histories(300, seed=2)

    def theirs(params: dict[str, float]) -> float:
        log_params = np.log(list(params.values()))
        mean = ModifiedBetaGeoFitter._negative_log_likelihood(log_params, x, t_x, T, np.ones_like(x), 0.0)
        return -mean * len(x)

    ours = (
        cnbd.log_likelihood(PARAMS, x, t_x, T, litt, 1).sum()
        - cnbd.log_likelihood(OTHER, x, t_x, T, litt, 1).sum()
    )
    assert ours == pytest.approx(theirs(PARAMS) - theirs(OTHER), rel=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
def test_matches_btydplus_transcription(k: int) -> None:
    """The vectorised log-space code equals a literal transcription of BTYDplus's R (to 1e-11)."""
    x, t_x, T, litt = _random_histories(40, seed=k)
    literal = np.array([_btydplus_literal(OTHER, *row, k) for row in zip(x, t_x, T, litt, strict=True)])
    np.testing.assert_allclose(cnbd.log_likelihood(OTHER, x, t_x, T, litt, k), literal[:, 0], rtol=1e-11)
    np.testing.assert_allclose(cnbd.p_alive(OTHER, x, t_x, T, k), literal[:, 1], rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("k", [2, 4])
def test_likelihood_is_the_models_integral(k: int) -> None:
    """Independent of BTYDplus: integrate Gamma(lambda) x Erlang-k densities of the observed gaps x
    [P(drop at last purchase) + P(survive) x Erlang-k survival of T - t_x] over lambda (quad, rtol 1e-7)."""
    r, alpha, a, b = PARAMS.values()
    for gaps, silence in ([], 7.0), ([2.0, 5.5, 1.2], 3.0), ([4.0, 4.0], 0.0):
        gaps = np.asarray(gaps)
        x, t_x = len(gaps), float(gaps.sum())
        dead = math.exp(betaln(a + 1, b + x) - betaln(a, b))  # E[(1-p)^x p]
        alive = math.exp(betaln(a, b + x + 1) - betaln(a, b))  # E[(1-p)^(x+1)]

        def integrand(lam: float, gaps=gaps, silence=silence, dead=dead, alive=alive) -> float:
            gap_density = np.prod(stats.gamma.pdf(gaps, k, scale=1 / lam))
            density = stats.gamma.pdf(lam, r, scale=1 / alpha) * gap_density
            return density * (dead + alive * stats.gamma.sf(silence, k, scale=1 / lam))

        value, _ = integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-11, limit=200)
        litt = float(np.log(gaps).sum())
        ll = cnbd.log_likelihood(PARAMS, x, t_x, t_x + silence, litt, k)[0]
        assert ll == pytest.approx(math.log(value), rel=1e-7)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_gradient_matches_central_differences(k: int) -> None:
    x, t_x, T, litt = _random_histories(50, seed=3)
    theta = np.array([1.3, 7.0, 0.6, 3.0])
    _, grad = cnbd._terms(theta, x, t_x, T, litt, k, gradient=True)
    for i in range(4):
        step = np.zeros(4)
        step[i] = 1e-6 * theta[i]
        up = cnbd.log_likelihood(theta + step, x, t_x, T, litt, k).sum()
        down = cnbd.log_likelihood(theta - step, x, t_x, T, litt, k).sum()
        assert grad[:, i].sum() == pytest.approx((up - down) / (2 * step[i]), rel=1e-6)


def _posterior_monte_carlo(params, k, x, t_x, T, horizon, draws=150_000, cap=40, seed=0) -> dict[str, float]:
    """Sample the model given a history: lambda ~ Gamma(r + kx, alpha + t_x) and p ~ Beta(a, b + x) (prior x
    the observed gaps and x survivals), drop at t_x with prob p, else the next gap is Erlang-k: rejected if it
    ends by T (a purchase the history does not show). Then purchases continue, each survived with 1 - p."""
    r, alpha, a, b = params.values()
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r + k * x, 1 / (alpha + t_x), draws)
    p = rng.beta(a, b + x, draws)
    dead = rng.random(draws) < p
    first = t_x + rng.gamma(k, 1.0, draws) / lam
    kept = dead | (first > T)
    buying = np.flatnonzero(~dead & kept)  # alive and consistent: simulate their future purchases only
    later = np.cumsum(rng.gamma(k, 1.0, (buying.size, cap - 1)) / lam[buying, None], axis=1)
    times = first[buying, None] + np.concatenate([np.zeros((buying.size, 1)), later], axis=1)
    purchases = rng.geometric(p[buying])  # future purchases, the one after which the customer drops included
    made = np.arange(1, cap + 1)[None, :] <= purchases[:, None]
    assert not ((purchases > cap) & (times[:, -1] <= T + horizon)).any(), "cap too small"
    counts = np.zeros(draws)
    counts[buying] = ((times <= T + horizon) & made).sum(axis=1)
    counts, n = counts[kept], int(kept.sum())
    alive, none = float(np.mean(~dead[kept])), float(np.mean(counts == 0))
    return {
        "alive": alive,
        "alive_se": math.sqrt(max(alive * (1 - alive), 1e-12) / n),
        "none": none,
        "none_se": math.sqrt(max(none * (1 - none), 1e-12) / n),
        "mean": float(counts.mean()),
        "mean_se": float(counts.std()) / math.sqrt(n),
    }


@pytest.mark.parametrize(("k", "horizon"), [(3, 10.0), (2, 26.0)])
def test_predictions_match_posterior_monte_carlo(k: int, horizon: float) -> None:
    """P(alive), P(no purchase in horizon) and E[purchases in horizon] within 4 Monte Carlo standard errors
    (150,000 draws a history, of which 15,000-110,000 are consistent with it)."""
    for seed, (x, t_x, T) in enumerate(HISTORIES):
        mc = _posterior_monte_carlo(PARAMS, k, x, t_x, T, horizon, seed=seed)
        assert cnbd.p_alive(PARAMS, x, t_x, T, k)[0] == pytest.approx(mc["alive"], abs=4 * mc["alive_se"])
        none = cnbd.prob_no_purchase(PARAMS, x, t_x, T, k, horizon)[0]
        assert none == pytest.approx(mc["none"], abs=4 * mc["none_se"])
        mean = cnbd.expected_purchases(PARAMS, x, t_x, T, k, horizon)[0]
        assert mean == pytest.approx(mc["mean"], abs=4 * mc["mean_se"])


def test_prediction_limits() -> None:
    x, t_x, T = (np.array(column, dtype=float) for column in zip(*HISTORIES, strict=True))
    for k in (1, 4):
        alive = cnbd.p_alive(PARAMS, x, t_x, T, k)
        np.testing.assert_array_equal(cnbd.prob_no_purchase(PARAMS, x, t_x, T, k, 0.0), 1.0)
        np.testing.assert_array_equal(cnbd.expected_purchases(PARAMS, x, t_x, T, k, 0.0), 0.0)
        # an alive customer buys eventually: over a very long horizon only the dead stay silent
        np.testing.assert_allclose(cnbd.prob_no_purchase(PARAMS, x, t_x, T, k, 1e9), 1 - alive, atol=1e-6)
        shorter, longer = (cnbd.prob_no_purchase(PARAMS, x, t_x, T, k, h) for h in (5.0, 50.0))
        assert (longer < shorter).all()
    # regularity: after the same silence a regular (k = 4) buyer is less likely alive than a Poisson one
    assert cnbd.p_alive(PARAMS, 6, 10.0, 40.0, 4)[0] < cnbd.p_alive(PARAMS, 6, 10.0, 40.0, 1)[0]


@pytest.mark.parametrize("k", [2, 3])
def test_recovery_and_choice_of_k(k: int) -> None:
    """4,000 simulated customers (ages 12-96 weeks as in BTYDplus's test): fit_k picks the true k, the
    estimate's log-likelihood beats the truth's, and the parameters are within tolerances set at about 4
    sampling standard deviations (30 seeds: sd r 4.5%, alpha 5%, a 6.5%, b 11%, r/alpha 2.5%)."""
    rng = np.random.default_rng(100 + k)
    ages = np.round(rng.uniform(12, 96, 4000) / 12) * 12
    x, t_x, T, litt, _ = cnbd.simulate(4000, PARAMS, k, ages, 32.0, seed=k)
    chosen = cnbd.fit_k(x, t_x, T, litt)
    assert chosen["k"] == k
    lls = chosen["log_likelihood"]
    est = chosen["params"][k]
    assert lls[k] >= cnbd.log_likelihood(PARAMS, x, t_x, T, litt, k).sum()
    for name, tolerance in {"r": 0.2, "alpha": 0.2, "a": 0.3, "b": 0.45}.items():
        assert est[name] == pytest.approx(PARAMS[name], rel=tolerance), name
    assert est["r"] / est["alpha"] == pytest.approx(PARAMS["r"] / PARAMS["alpha"], rel=0.1)


def test_cohort_totals_match_simulation() -> None:
    """As BTYDplus's test: with the true parameters, summed expectations within 5% of the simulated holdout
    purchases (20,000 customers, 32 weeks; 5 seeds: within 2.2%), and the summed P(no purchase) within 2% of
    the customers without one (5 seeds: within 0.7%)."""
    rng = np.random.default_rng(7)
    ages = np.round(rng.uniform(12, 96, 20_000) / 12) * 12
    x, t_x, T, litt, x_star = cnbd.simulate(20_000, PARAMS, 3, ages, 32.0, seed=7)
    assert cnbd.expected_purchases(PARAMS, x, t_x, T, 3, 32.0).sum() == pytest.approx(x_star.sum(), rel=0.05)
    silent = cnbd.prob_no_purchase(PARAMS, x, t_x, T, 3, 32.0).sum()
    assert silent == pytest.approx(np.sum(x_star == 0), rel=0.02)


def test_simulate_shapes_and_reproducibility() -> None:
    first = cnbd.simulate(500, PARAMS, 2, 52.0, 26.0, seed=5, block=3)
    again = cnbd.simulate(500, PARAMS, 2, 52.0, 26.0, seed=5, block=3)
    for one, two in zip(first, again, strict=True):
        np.testing.assert_array_equal(one, two)
    x, t_x, T, litt, x_star = first
    assert (T == 52.0).all() and (t_x <= T).all() and ((x > 0) | (t_x == 0)).all()
    assert ((x > 0) | (litt == 0)).all() and np.isfinite(litt).all()
    assert (x == np.round(x)).all() and (x_star >= 0).all() and (x_star == np.round(x_star)).all()


def test_weights_equal_repeated_rows() -> None:
    x, t_x, T, litt, _ = cnbd.simulate(1500, PARAMS, 2, 52.0, 1.0, seed=11)
    weights = np.where(np.arange(1500) < 500, 2.0, 1.0)
    weighted = cnbd.fit(x, t_x, T, litt, 2, weights=weights)
    repeated = cnbd.fit(*(np.concatenate([v, v[:500]]) for v in (x, t_x, T, litt)), 2)
    for name in cnbd.PARAM_NAMES:
        assert weighted[name] == pytest.approx(repeated[name], rel=1e-4)


def test_fit_failures_and_bad_inputs() -> None:
    x, t_x, T, litt, _ = cnbd.simulate(300, PARAMS, 2, 52.0, 1.0, seed=12)
    with pytest.raises(cnbd.FitError, match="did not converge"):
        cnbd.fit(x, t_x, T, litt, 2, maxiter=1)
    with pytest.raises(ValueError, match="t_x <= T"):
        cnbd.log_likelihood(PARAMS, [1], [5.0], [4.0], [0.0], 2)
    with pytest.raises(ValueError, match="finite"):
        cnbd.log_likelihood(PARAMS, [2], [3.0], [4.0], [-np.inf], 2)
    with pytest.raises(ValueError, match="k must be"):
        cnbd.p_alive(PARAMS, [1], [1.0], [4.0], 0)
    with pytest.raises(ValueError, match="positive"):
        cnbd.p_alive({**PARAMS, "a": -1.0}, [1], [1.0], [4.0], 2)
