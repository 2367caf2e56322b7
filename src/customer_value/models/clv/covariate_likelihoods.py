"""BG/NBD and Pareto/NBD with time-invariant covariates: likelihoods with analytic gradients, and fits.

Why a module of its own: with covariates every customer has its own alpha (and a, b or beta), so the
aggregation by distinct frequency, age and recency that makes ``likelihoods.BGNBDLikelihood`` fast no
longer applies. Here each family gives, for weighted (x, t_x, T, design row) patterns, every pattern's
log-likelihood and its derivatives in that pattern's log-parameters; the chain rule through
ln alpha_i = ln alpha0 - gamma . z_i (and so on, see ``covariates``) turns them into the gradient in
theta = (log population parameters, coefficients): d ll / d ln alpha0 = sum_i w_i D_i,alpha and
d ll / d gamma_j = sum_i w_i D_i,alpha (-z_ij).

The fits minimise the families' own objectives (``likelihoods.fit_bgnbd``, ``pareto_likelihood.
fit_pareto_nbd``: lifetimes' scaled time axis, start and penalty), the penalty extended to the coefficients
(``penalizer * gamma^2``, a ridge). With a design of zeros the gradient in every coefficient is exactly 0,
so BFGS never moves them and the fit is the family's plain one (to rounding; tested).

This module must not import lifetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from customer_value.models.clv.covariates import COEFFICIENT_SETS
from customer_value.models.clv.likelihoods import (
    FIT_TOLERANCE,
    INITIAL_LOG_PARAMS,
    FitFailed,
    _check_histories,
    _codes,
)
from customer_value.models.clv.pareto_likelihood import (
    FIT_TOLERANCE as PARETO_TOLERANCE,
)
from customer_value.models.clv.pareto_likelihood import (
    STALL_GRADIENT,
    pattern_terms,
)

FAMILY_PARAMS = {"bgnbd": ("r", "alpha", "a", "b"), "pareto_nbd": ("r", "alpha", "s", "beta")}


@dataclass(frozen=True)
class CovariatePatterns:
    """Distinct (x, t_x, T, design row) histories and how many customers have each."""

    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    design: np.ndarray  # patterns x design columns
    weights: np.ndarray


def covariate_patterns(
    frequency: np.ndarray, recency: np.ndarray, T: np.ndarray, design: np.ndarray
) -> CovariatePatterns:
    """Group customers by history and design row (few rows for text covariates; numeric ones are distinct)."""
    _, design_code = np.unique(design, axis=0, return_inverse=True)
    columns = [_codes(np.asarray(c, dtype="float64")) for c in (frequency, recency, T)]
    columns.append(_codes(design_code.ravel().astype("float64")))
    key = np.zeros(len(frequency), dtype="int64")
    for distinct, inverse in columns:  # mixed radix, renumbered before it could overflow
        key = _codes(key)[1] * len(distinct) + inverse
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    x, t_x, big_t = (distinct[inverse[first]] for distinct, inverse in columns[:3])
    return CovariatePatterns(x, t_x, big_t, design[first], counts.astype("float64"))


def bgnbd_pattern_terms(
    r: float, alpha: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each pattern's BG/NBD log-likelihood and d ll / d ln(r, alpha, a, b) (patterns x 4).

    ll = lnG(r + x) - lnG(r) + r ln alpha + lnB(a, b + x) - lnB(a, b) - (r + x) ln(alpha + T)
         + [x > 0] softplus(ln a - ln(b + x - 1) - (r + x) ln((alpha + t_x) / (alpha + T))).
    """
    rate = r + x
    log_gap = np.log(alpha + t_x) - np.log(alpha + T)
    repeat = x > 0
    d = np.log(a) - np.log(b + np.where(repeat, x, 1.0) - 1.0) - rate * log_gap
    small = np.exp(-np.abs(d))
    soft = np.where(repeat, np.maximum(d, 0.0) + np.log1p(small), 0.0)
    share = np.where(
        repeat, np.where(d >= 0.0, 1.0, small) / (1.0 + small), 0.0
    )  # expit(d) for repeat buyers
    ll = (
        gammaln(rate)
        - gammaln(r)
        + r * np.log(alpha)
        + gammaln(a + b)
        - gammaln(b)
        + gammaln(b + x)
        - gammaln(a + b + x)
        - rate * np.log(alpha + T)
        + soft
    )
    digamma_ab, digamma_abx = digamma(a + b), digamma(a + b + x)
    inv_gap = 1.0 / (alpha + t_x) - 1.0 / (alpha + T)
    d_r = digamma(rate) - digamma(r) + np.log(alpha) - np.log(alpha + T) - share * log_gap
    d_alpha = r / alpha - rate / (alpha + T) - share * rate * inv_gap
    d_a = digamma_ab - digamma_abx + share / a
    d_b = (
        digamma_ab - digamma(b) + digamma(b + x) - digamma_abx - share / (b + np.where(repeat, x, 1.0) - 1.0)
    )
    # Log-derivatives: d ll / d ln theta = theta d ll / d theta.
    return ll, np.column_stack([r * d_r, alpha * d_alpha, a * d_a, b * d_b])


def pareto_pattern_terms(
    r: float, alpha: np.ndarray, s: float, beta: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each pattern's Pareto/NBD log-likelihood and d ll / d ln(r, alpha, s, beta) (``pareto_likelihood``)."""
    ll, gradient = pattern_terms(r, alpha, s, beta, x, t_x, T)
    return ll, gradient * np.column_stack(
        [
            np.full(len(x), r),
            np.broadcast_to(alpha, x.shape),
            np.full(len(x), s),
            np.broadcast_to(beta, x.shape),
        ]
    )


PATTERN_TERMS = {"bgnbd": bgnbd_pattern_terms, "pareto_nbd": pareto_pattern_terms}


class CovariateLikelihood:
    """Total log-likelihood of weighted covariate patterns and its gradient in theta.

    theta = (ln r, ln alpha0, ln a0 | ln s, ln b0 | ln beta0, then each coefficient set's gammas in
    ``COEFFICIENT_SETS`` order); ``design`` names each set's design columns (positions in the matrix).
    """

    def __init__(self, family: str, patterns: CovariatePatterns, design: dict[str, list[int]]) -> None:
        self.family = family
        self.patterns = patterns
        self.total_weight = float(patterns.weights.sum())
        # For each set: the parameter index it moves (0..3), its sign and its columns of the design matrix.
        names = FAMILY_PARAMS[family]
        self.sets = [
            (names.index(parameter), sign, np.asarray(design[name], dtype="int64"))
            for name, (parameter, sign, _) in COEFFICIENT_SETS[family].items()
        ]
        self.n_params = 4 + sum(len(columns) for _, _, columns in self.sets)

    def pattern_parameters(self, theta: np.ndarray) -> list[np.ndarray | float]:
        """(r, alpha_i, a_i, b_i) or (r, alpha_i, s, beta_i): scalars for parameters no set moves."""
        values: list[np.ndarray | float] = [float(v) for v in np.exp(theta[:4])]
        start = 4
        for index, sign, columns in self.sets:
            gammas = theta[start : start + len(columns)]
            start += len(columns)
            if len(columns):
                values[index] = values[index] * np.exp(sign * (self.patterns.design[:, columns] @ gammas))
        return values

    def value_and_gradient(self, theta: np.ndarray, time_scale: float = 1.0) -> tuple[float, np.ndarray]:
        """ll and d ll / d theta; ages and recencies multiplied by ``time_scale`` first (alpha0 and beta0 are
        then in the scaled unit)."""
        p = self.patterns
        values = self.pattern_parameters(theta)
        ll, log_grad = PATTERN_TERMS[self.family](
            *values, p.frequency, p.recency * time_scale, p.T * time_scale
        )
        weighted = log_grad * p.weights[:, None]
        grad = np.empty(self.n_params)
        grad[:4] = weighted.sum(axis=0)
        start = 4
        for index, sign, columns in self.sets:
            grad[start : start + len(columns)] = sign * (p.design[:, columns].T @ weighted[:, index])
            start += len(columns)
        return float(p.weights @ ll), grad


def covariate_objective(
    likelihood: CovariateLikelihood, scale: float, penalty: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Mean negative log-likelihood plus ``penalty`` * (sum of squared natural population parameters +
    sum of squared coefficients), with its gradient in theta (``likelihoods.penalised_mean_objective``'s
    objective, the ridge extended to the coefficients)."""

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = likelihood.value_and_gradient(theta, scale)
        base, gammas = np.exp(theta[:4]), theta[4:]
        total = likelihood.total_weight
        nll = -value / total + penalty * (float(np.sum(base**2)) + float(np.sum(gammas**2)))
        penalty_grad = np.concatenate([2.0 * penalty * base * base, 2.0 * penalty * gammas])
        return nll, -grad / total + penalty_grad

    return objective


def fit_with_covariates(
    family: str, patterns: CovariatePatterns, design: dict[str, list[int]], penalizer: float
) -> tuple[dict[str, float], np.ndarray]:
    """The family's estimates (population parameters in the input's time unit) and every coefficient,
    as (population parameters, gammas in ``CovariateLikelihood`` order)."""
    _check_histories(patterns)
    likelihood = CovariateLikelihood(family, patterns, design)
    scale = 1.0 / float(np.max(patterns.T))  # lifetimes' _scale_time: the oldest customer's age becomes 1
    if family == "pareto_nbd":  # fit_pareto_nbd: penalty per pattern, start at 0, its tolerance
        objective = covariate_objective(likelihood, scale, penalizer / len(patterns.frequency))
        start, tolerance = np.zeros(likelihood.n_params), PARETO_TOLERANCE
    else:  # fit_bgnbd: lifetimes' start and tolerance
        objective = covariate_objective(likelihood, scale, penalizer)
        start = np.concatenate([np.full(4, INITIAL_LOG_PARAMS), np.zeros(likelihood.n_params - 4)])
        tolerance = FIT_TOLERANCE
    with np.errstate(all="ignore"):  # trial steps may overflow; a non-finite value makes BFGS back off
        result = minimize(objective, start, jac=True, method="BFGS", tol=tolerance)
    stalled = result.status == 2 and np.max(np.abs(result.jac)) <= STALL_GRADIENT
    if not (result.success or stalled) or not np.isfinite(result.x).all() or not np.isfinite(result.fun):
        raise FitFailed(result.message)
    names = FAMILY_PARAMS[family]
    base = dict(zip(names, np.exp(result.x[:4]).tolist(), strict=True))
    base["alpha"] /= scale
    if family == "pareto_nbd":
        base["beta"] /= scale
    return base, result.x[4:].copy()
