"""Prediction intervals, of two kinds that answer different questions.

- **Where the model's expectation could lie** (``expected_purchases_low/high``, ``clv_low/high``): a
  parametric bootstrap. The log-parameters' covariance is the inverse Hessian of the log-likelihood at the
  fit (central differences of the analytic gradient where the model has one, else second differences of
  the likelihood, on the unique customer patterns; purchase and spend models are separate
  likelihoods, so the covariance is block-diagonal). Draws from N(log-params, covariance) are pushed
  through the whole model, learned layers included, and the interval is their quantiles. The draws come
  from a fixed seed and are shared by every customer, so a customer's interval depends on its own row only
  (row order and batch never matter).
- **Where the customer's actual purchase count will lie** (``purchases_low/high``): quantiles of the exact
  conditional distribution of the count in the horizon at the fitted parameters. This is the interval
  whose holdout coverage means something; parameter uncertainty is small beside the Poisson noise here.

Count distributions given the history (x, t_x, T) and alive at T, with lambda ~ Gamma(r + x, alpha + T):
BG/NBD and MBG/NBD drop out after a purchase with probability p ~ Beta(a, b + x) (MBG: b + x + 1), so
the count is min(M, G) with M ~ NBD and G geometric; Pareto/NBD's remaining lifetime is Lomax(s, beta + T)
and the count is Poisson(lambda * min(lifetime, h)), integrated by Gauss-Legendre quadrature. MBG/CNBD-k's
count is min(M, G) too, M the purchases completed by a Poisson-Gamma count of Erlang phases
(``cnbd_family.purchases_at_least``); its k is held fixed in the covariance and the draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from customer_value.models.clv import cnbd_family
from customer_value.models.clv.btyd import (
    FAMILIES,
    SPEND_PARAMS,
    CLVParams,
    ModelInputs,
    purchase_log_likelihood,
    purchase_patterns,
    spend_sample,
)
from customer_value.models.clv.covariate_likelihoods import (
    CovariateLikelihood,
    CovariatePatterns,
    covariate_patterns,
)
from customer_value.models.clv.covariates import coefficient_positions
from customer_value.models.clv.likelihoods import (
    BGNBDLikelihood,
    GammaGammaLikelihood,
    Patterns,
    log_space_hessian,
    mean_constrained_gamma_gamma,
)
from customer_value.threads import side_by_side

HESSIAN_STEP = 1e-4  # in log-parameter units
HESSIAN_THREADS = 2  # covariate Hessian: gradients evaluated at a time (the machines have 2 cores)
QUADRATURE_NODES = 48
MAX_COUNT = 100_000  # a safety stop for the count quantile search; never reached on real data


def _numerical_hessian(f: Callable[[np.ndarray], float], theta: np.ndarray, step: float) -> np.ndarray:
    """Central-difference Hessian of ``f`` at ``theta``."""
    k = len(theta)
    hessian = np.empty((k, k))
    basis = np.eye(k) * step
    for i in range(k):  # a few parameters: a handful of likelihood evaluations
        for j in range(i, k):
            value = (
                f(theta + basis[i] + basis[j])
                - f(theta + basis[i] - basis[j])
                - f(theta - basis[i] + basis[j])
                + f(theta - basis[i] - basis[j])
            ) / (4 * step * step)
            hessian[i, j] = hessian[j, i] = value
    return hessian


def _inverse_information(hessian: np.ndarray) -> np.ndarray | None:
    """Covariance of the log-parameters, or None when the information matrix is not positive definite."""
    information = -hessian
    if not np.isfinite(information).all():
        return None
    try:
        np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        return None
    return np.linalg.inv(information)


def log_parameter_covariance(
    params: CLVParams,
    inputs: ModelInputs,
    patterns: Patterns | None = None,
    spend_mean: float | None = None,
    design_patterns: CovariatePatterns | None = None,
) -> list[list[float]] | None:
    """Covariance of (log purchase params, log spend params) in CLVParams' order (purchase only for a
    purchase-only model); None if not estimable.

    BG/NBD and Gamma-Gamma differentiate their analytic gradients (2k gradient calls); the other purchase
    models take second differences of their likelihood (``purchase_log_likelihood``: lifetimes' MBG/NBD,
    Pareto/NBD's quadrature, MBG/CNBD-k's at its stored k, which is not a parameter of the covariance).
    ``patterns``: the purchase histories' distinct (x, t_x, T), if already computed (with covariates,
    ``design_patterns``: the distinct (x, t_x, T, design row)). ``spend_mean``: the
    pinned population mean of a mean-constrained Gamma-Gamma fit, whose two free parameters' covariance is
    mapped to (ln p, ln q, ln v) (rank 2).
    """
    names = FAMILIES[params.family].params
    purchase_theta = np.log([params.purchase[k] for k in names])
    if params.covariates is not None:
        purchase_hessian = _covariate_hessian(params, inputs, design_patterns)
    elif params.family == "bgnbd":
        patterns = purchase_patterns(inputs) if patterns is None else patterns
        likelihood = BGNBDLikelihood(patterns.frequency, patterns.recency, patterns.T, patterns.weights)
        purchase_hessian = log_space_hessian(
            lambda values: likelihood.value_and_gradient(values)[1], purchase_theta, HESSIAN_STEP
        )
    else:
        patterns = purchase_patterns(inputs) if patterns is None else patterns

        def purchase(theta: np.ndarray) -> float:
            values = params.purchase | dict(zip(names, np.exp(theta), strict=True))  # MBG/CNBD-k keeps k
            return purchase_log_likelihood(
                params.family, values, patterns.frequency, patterns.recency, patterns.T, patterns.weights
            )

        purchase_hessian = _numerical_hessian(purchase, purchase_theta, HESSIAN_STEP)

    blocks = [_inverse_information(purchase_hessian)]
    if params.spend is not None:
        usable = spend_sample(inputs)
        spend = GammaGammaLikelihood(
            inputs.frequency[usable], inputs.monetary_value[usable], np.ones(int(usable.sum()))
        )
    if params.spend is not None and spend_mean is None:
        spend_hessian = log_space_hessian(
            lambda values: spend.value_and_gradient(values)[1],
            np.log([params.spend[k] for k in SPEND_PARAMS]),
            HESSIAN_STEP,
        )
        blocks.append(_inverse_information(spend_hessian))
    elif params.spend is not None:
        blocks.append(_constrained_spend_covariance(params, spend, spend_mean))
    if any(block is None for block in blocks):
        return None
    if params.spend is None:  # purchase-only: the purchase block is the whole covariance
        return blocks[0].tolist()
    # Order: purchase log-parameters, spend log-parameters, then the coefficients (which belong to the
    # purchase block: the purchase likelihood is the one they enter).
    k1, k2 = len(names), len(SPEND_PARAMS)
    k = len(blocks[0]) + k2
    purchase_index = np.r_[np.arange(k1), np.arange(k1 + k2, k)]
    covariance = np.zeros((k, k))
    covariance[np.ix_(purchase_index, purchase_index)] = blocks[0]
    covariance[k1 : k1 + k2, k1 : k1 + k2] = blocks[1]
    return covariance.tolist()


def covariate_likelihood(
    params: CLVParams, inputs: ModelInputs, patterns: CovariatePatterns | None = None
) -> tuple[CovariateLikelihood, np.ndarray]:
    """A covariate model's likelihood on these customers' (x, t_x, T, design row) patterns (``patterns``,
    if already built from ``inputs``), and the fitted theta (log population parameters, then the
    coefficients in ``CLVParams.coefficients`` order)."""
    if patterns is None:
        patterns = covariate_patterns(
            inputs.frequency, inputs.recency, inputs.T, inputs.design, inputs.design_codes
        )
    positions = coefficient_positions(params.family, params.covariates)
    likelihood = CovariateLikelihood(params.family, patterns, positions)
    logs = np.log([params.purchase[k] for k in FAMILIES[params.family].params])
    return likelihood, np.r_[logs, list(params.coefficients().values())]


def _covariate_hessian(
    params: CLVParams, inputs: ModelInputs, patterns: CovariatePatterns | None = None
) -> np.ndarray:
    """Hessian of the covariate likelihood in (log population parameters, coefficients): central
    differences of its analytic gradient, on the distinct (x, t_x, T, design row) patterns.

    The 2k gradients are independent and their compiled passes release the GIL: they run in
    ``HESSIAN_THREADS`` threads (each the same arithmetic as in one thread, so the same Hessian)."""
    likelihood, theta = covariate_likelihood(params, inputs, patterns)
    points = [theta + sign * h for h in np.eye(len(theta)) * HESSIAN_STEP for sign in (1.0, -1.0)]
    threads = min(HESSIAN_THREADS, os.cpu_count() or 1)  # each gradient's compiled pass in its own thread
    with ThreadPoolExecutor(max_workers=threads, initializer=side_by_side) as pool:
        gradients = list(pool.map(lambda point: likelihood.value_and_gradient(point)[1], points))
    hessian = np.column_stack(
        [(gradients[2 * j] - gradients[2 * j + 1]) / (2 * HESSIAN_STEP) for j in range(len(theta))]
    )
    return (hessian + hessian.T) / 2.0


def _constrained_spend_covariance(
    params: CLVParams, spend: GammaGammaLikelihood, mean: float
) -> np.ndarray | None:
    """Covariance of (ln p, ln q, ln v) of a mean-constrained fit: theta = (ln p, ln(q - 1)) has the
    inverse information; d(ln p, ln q, ln v) / d theta = [[1, 0], [0, (q - 1) / q], [-1, 1]] maps it."""
    q = params.spend["q"]
    gradient = mean_constrained_gamma_gamma(spend, mean)
    theta = np.array([np.log(params.spend["p"]), np.log(q - 1.0)])
    shifts = np.eye(2) * HESSIAN_STEP
    hessian = np.column_stack(
        [(gradient(theta + h)[1] - gradient(theta - h)[1]) / (2 * HESSIAN_STEP) for h in shifts]
    )
    block = _inverse_information((hessian + hessian.T) / 2.0)
    if block is None:
        return None
    jacobian = np.array([[1.0, 0.0], [0.0, (q - 1.0) / q], [-1.0, 1.0]])
    return jacobian @ block @ jacobian.T


def parameter_draws(params: CLVParams, n_draws: int, seed: int) -> list[CLVParams]:
    """``n_draws`` parameter sets from N(log-params, covariance); none when the covariance is unknown."""
    if params.log_covariance is None or n_draws <= 0:
        return []
    names = FAMILIES[params.family].params
    spend_names = SPEND_PARAMS if params.spend is not None else ()
    centre = np.log([*(params.purchase[k] for k in names), *((params.spend or {})[k] for k in spend_names)])
    gammas = list(params.coefficients().values())  # in the covariance's order (after the log-parameters)
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(np.r_[centre, gammas], np.asarray(params.log_covariance), size=n_draws)
    k, k_logs = len(names), len(centre)
    return [
        replace(
            params,
            purchase=params.purchase | dict(zip(names, np.exp(row[:k]).tolist(), strict=True)),  # k fixed
            spend=dict(zip(SPEND_PARAMS, np.exp(row[k:k_logs]).tolist(), strict=True))
            if spend_names
            else None,
            covariates=_with_coefficients(params.covariates, row[k_logs:]),
        )
        for row in draws
    ]


def _with_coefficients(covariates: dict[str, object] | None, gammas: np.ndarray) -> dict[str, object] | None:
    """The covariate spec with its coefficients replaced, in ``CLVParams.coefficients`` order."""
    if covariates is None:
        return None
    values, start = {}, 0
    for name, current in covariates["coefficients"].items():
        values[name] = dict(zip(current, gammas[start : start + len(current)].tolist(), strict=True))
        start += len(current)
    return covariates | {"coefficients": values}


def _log_nbd_start(shape: np.ndarray, rate: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log P(M = 0) and the log ratio step of a Poisson-Gamma count over a window ``h``."""
    return shape * (np.log(rate) - np.log(rate + h)), np.log(h) - np.log(rate + h)


def count_pmf_terms(params: CLVParams, inputs: ModelInputs, horizon: float) -> Callable[[int], np.ndarray]:
    """A function n -> P(N(T, T + horizon] = n | history, alive) for every customer (horizon in model units).

    Must be called with n = 0, 1, 2, ... in order: it keeps running terms in log space.
    """
    values = params.customer_values(inputs)
    r, alpha = values["r"], values["alpha"]
    x, T = inputs.frequency, inputs.T
    shape, rate = r + x, alpha + T
    if params.family == "pareto_nbd":
        s, beta = values["s"], values["beta"]
        nodes, node_weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
        u = (nodes[:, None] + 1.0) * horizon / 2.0  # quadrature points in (0, horizon)
        life_rate = beta + T
        density = s / (life_rate + u) * np.exp(s * (np.log(life_rate) - np.log(life_rate + u)))
        weight = node_weights[:, None] * horizon / 2.0 * density
        survive = np.exp(s * (np.log(life_rate) - np.log(life_rate + horizon)))
        log_term_u, step_u = _log_nbd_start(shape, rate, u)
        log_term_h, step_h = _log_nbd_start(shape, rate, np.full_like(T, horizon))
        state = {"n": 0, "u": log_term_u, "h": log_term_h}

        def pareto(n: int) -> np.ndarray:
            if n != state["n"]:
                raise ValueError("count_pmf_terms must be called with n = 0, 1, 2, ... in order")
            if n > 0:
                state["u"] = state["u"] + np.log(shape + n - 1) - np.log(n) + step_u
                state["h"] = state["h"] + np.log(shape + n - 1) - np.log(n) + step_h
            state["n"] += 1
            return survive * np.exp(state["h"]) + (weight * np.exp(state["u"])).sum(axis=0)

        return pareto

    if params.family == "mbgcnbd":
        return _erlang_count_terms(params, inputs, horizon)
    a, b = values["a"], values["b"]
    b_post = b + x + (1.0 if params.family == "mbgnbd" else 0.0)
    log_m, step = _log_nbd_start(shape, rate, np.full_like(T, horizon))
    state = {"n": 0, "log_m": log_m, "m_cdf": np.zeros_like(T), "log_survive_g": np.zeros_like(T)}

    def beta_geometric(n: int) -> np.ndarray:
        if n != state["n"]:
            raise ValueError("count_pmf_terms must be called with n = 0, 1, 2, ... in order")
        if n > 0:
            state["log_m"] = state["log_m"] + np.log(shape + n - 1) - np.log(n) + step
        p_m = np.exp(state["log_m"])
        state["m_cdf"] = state["m_cdf"] + p_m
        if n == 0:
            value = p_m
        else:
            # P(G = n) = P(G >= n) - P(G >= n+1); P(G >= n+1) / P(G >= n) = (b' + n - 1) / (a + b' + n - 1)
            survive = np.exp(state["log_survive_g"])
            next_survive = survive * (b_post + n - 1) / (a + b_post + n - 1)
            state["log_survive_g"] = np.log(next_survive)
            value = p_m * survive + (survive - next_survive) * np.clip(1.0 - state["m_cdf"], 0.0, 1.0)
        state["n"] += 1
        return value

    return beta_geometric


def _erlang_count_terms(
    params: CLVParams, inputs: ModelInputs, horizon: float
) -> Callable[[int], np.ndarray]:
    """MBG/CNBD-k's count_pmf_terms: N = min(M, G), M the purchases an undying customer completes in the
    horizon (P(M >= n) from ``cnbd_family.purchases_at_least``) and G the purchases until dropout,
    P(G >= n) = E[(1 - p)^(n-1)] with p ~ Beta(a, b + x + 1), independent of M given alive. So
    P(N = 0) = P(M = 0) and P(N = n) = P(M = n) P(G >= n) + P(G = n) P(M >= n + 1)."""
    x = inputs.frequency
    a, b_post = params.purchase["a"], params.purchase["b"] + x + 1.0
    at_least = cnbd_family.purchases_at_least(params.purchase, x, inputs.recency, inputs.T, horizon)
    state = {"n": 0, "m_at_least": at_least(0), "survive": np.ones_like(x)}

    def erlang(n: int) -> np.ndarray:
        if n != state["n"]:
            raise ValueError("count_pmf_terms must be called with n = 0, 1, 2, ... in order")
        m_now, m_next = state["m_at_least"], at_least(n + 1)
        if n == 0:
            value = m_now - m_next
        else:
            survive = state["survive"]  # P(G >= n)
            next_survive = survive * (b_post + n - 1) / (a + b_post + n - 1)
            value = (m_now - m_next) * survive + (survive - next_survive) * m_next
            state["survive"] = next_survive
        state["m_at_least"] = m_next
        state["n"] += 1
        return value

    return erlang


def purchase_count_interval(
    params: CLVParams, inputs: ModelInputs, horizon: float, p_alive: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of the purchase count in the horizon (model units) for each customer."""
    lower_q, upper_q = (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0
    n_customers = len(inputs.frequency)
    low = np.full(n_customers, -1.0)
    high = np.full(n_customers, -1.0)
    terms = count_pmf_terms(params, inputs, horizon)
    cdf = 1.0 - p_alive  # a customer who has dropped out buys nothing
    for n in range(MAX_COUNT):  # vectorised over customers; stops at the largest upper quantile
        cdf = cdf + p_alive * terms(n)
        low = np.where((low < 0) & (cdf >= lower_q - 1e-12), n, low)
        high = np.where((high < 0) & (cdf >= upper_q - 1e-12), n, high)
        if (high >= 0).all():
            break
    high = np.where(high < 0, MAX_COUNT, high)
    return low, high


def expectation_interval(
    draws: list[np.ndarray], point: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles over bootstrap draws (rows: draws), widened to contain the point estimate."""
    if not draws:
        return point.copy(), point.copy()
    stacked = np.vstack(draws)
    low, high = np.quantile(stacked, [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0], axis=0)
    return np.minimum(low, point), np.maximum(high, point)
