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

Fits and covariances evaluate the sum with ``covariate_bgnbd`` and ``covariate_pareto`` (terms grouped by
what they depend on, one compiled pass over the customers: ~40 ms an evaluation at a million customers
for BG/NBD, against 0.6 s pattern by pattern); the per-pattern functions here are their reference
(``CovariateLikelihood.per_pattern_value_and_gradient``; tested to agree to 1e-10 relative).

This module must not import lifetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from customer_value.models.clv.covariates import COEFFICIENT_SETS, codes_all_distinct, row_codes
from customer_value.models.clv.likelihoods import (
    FIT_TOLERANCE,
    INITIAL_LOG_PARAMS,
    FitFailed,
    _check_histories,
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
    # The compiled likelihood terms built on these patterns, by family and coefficient sets: the fit and the
    # covariance's Hessian share them (building them reorders every array: 0.16 s at 1M customers).
    compiled: dict[tuple[object, ...], object] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )


class ScaledTimes:
    """Recencies and ages on a fit's scaled time axis, kept for the last scale asked (a fit uses one, the
    covariance's Hessian another). The pair is swapped as one tuple, so threads sharing it never mix two."""

    def __init__(self, recency: np.ndarray, T: np.ndarray) -> None:
        self.recency, self.T = recency, T
        self._scaled: tuple[float, np.ndarray, np.ndarray] | None = None

    def at(self, time_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(recency, T) times ``time_scale``."""
        scaled = self._scaled
        if scaled is None or scaled[0] != time_scale:
            scaled = self._scaled = (time_scale, self.recency * time_scale, self.T * time_scale)
        return scaled[1], scaled[2]


def split_coefficients(theta: np.ndarray, sets: list[tuple[int, float, np.ndarray]]) -> dict[int, np.ndarray]:
    """Each coefficient set's gammas from theta (after the 4 log population parameters), by the index of
    the parameter the set moves."""
    gammas, start = {}, 4
    for index, _, columns in sets:
        gammas[index] = theta[start : start + len(columns)]
        start += len(columns)
    return gammas


def covariate_patterns(
    frequency: np.ndarray,
    recency: np.ndarray,
    T: np.ndarray,
    design: np.ndarray,
    design_codes: np.ndarray | None = None,
) -> CovariatePatterns:
    """Group customers by history and design row (few rows for text covariates; numeric ones are distinct),
    in order of first appearance; ``covariates.row_codes`` numbers the rows (hashing, not sorting).
    ``design_codes``: the design rows already numbered (``ModelInputs.design_codes``), if at hand.

    When every customer is a pattern of its own the arrays are returned as they are (same objects)."""
    columns = [np.asarray(c, dtype="float64") for c in (frequency, recency, T)]
    if design_codes is not None and codes_all_distinct(design_codes):
        return CovariatePatterns(*columns, design, np.ones(len(design_codes)))
    rows = design if design_codes is None else design_codes
    codes, n_patterns = row_codes(rows, *columns)  # a numeric covariate settles it at once
    if n_patterns == len(codes):  # every customer a pattern of its own (codes are 0, 1, ... in order)
        return CovariatePatterns(*columns, design, np.ones(n_patterns))
    first = np.empty(n_patterns, dtype="int64")
    first[codes] = np.arange(len(codes))  # any customer of each pattern: they are equal
    x, t_x, big_t = (c[first] for c in columns)
    counts = np.bincount(codes, minlength=n_patterns)
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
        # Imported here, so numba's import (0.3 s) is paid by covariate fits, not by every import of btyd.
        from customer_value.models.clv.covariate_bgnbd import BGNBDCovariateTerms
        from customer_value.models.clv.covariate_pareto import ParetoCovariateTerms

        terms = BGNBDCovariateTerms if family == "bgnbd" else ParetoCovariateTerms
        key = (family, *((index, sign, tuple(columns)) for index, sign, columns in self.sets))
        if key not in patterns.compiled:
            patterns.compiled[key] = terms(
                patterns.frequency, patterns.recency, patterns.T, patterns.design, patterns.weights, self.sets
            )
        self._fast = patterns.compiled[key]

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
        then in the scaled unit): ``covariate_bgnbd``'s and ``covariate_pareto``'s compiled evaluations."""
        return self._fast.value_and_gradient(theta, time_scale)

    def per_pattern_value_and_gradient(
        self, theta: np.ndarray, time_scale: float = 1.0
    ) -> tuple[float, np.ndarray]:
        """``value_and_gradient`` pattern by pattern (``PATTERN_TERMS``, then the chain rule): the reference
        the faster evaluations are tested against."""
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
    family: str,
    patterns: CovariatePatterns,
    design: dict[str, list[int]],
    penalizer: float,
    start: dict[str, float] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """The family's estimates (population parameters in the input's time unit) and every coefficient,
    as (population parameters, gammas in ``CovariateLikelihood`` order).

    ``start``: population parameters (input time unit) to start from, every coefficient at 0, instead of
    the family's plain start (the plain fit's optimum is near), and BFGS's first inverse Hessian the
    objective's there (``_inverse_hessian``, on at most ``PRECONDITION_PATTERNS`` of the patterns: a
    preconditioner needs the curvature's shape, not its last digit) instead of the identity: 10 or so
    evaluations of the likelihood instead of 70 (BG/NBD, 11 parameters), to the same optimum (tested:
    the log-likelihoods agree to 1e-8 relative)."""
    _check_histories(patterns)
    likelihood = CovariateLikelihood(family, patterns, design)
    scale = 1.0 / float(np.max(patterns.T))  # lifetimes' _scale_time: the oldest customer's age becomes 1
    if family == "pareto_nbd":  # fit_pareto_nbd: penalty per pattern, start at 0, its tolerance
        penalty = penalizer / len(patterns.frequency)
        theta0, tolerance = np.zeros(likelihood.n_params), PARETO_TOLERANCE
    else:  # fit_bgnbd: lifetimes' start and tolerance
        penalty = penalizer
        theta0 = np.concatenate([np.full(4, INITIAL_LOG_PARAMS), np.zeros(likelihood.n_params - 4)])
        tolerance = FIT_TOLERANCE
    objective = covariate_objective(likelihood, scale, penalty)
    names = FAMILY_PARAMS[family]
    options = {}
    if start is not None:
        scaled = {**start, "alpha": start["alpha"] * scale}
        if family == "pareto_nbd":
            scaled["beta"] = start["beta"] * scale
        start_theta = np.log([scaled[name] for name in names])
        if np.isfinite(start_theta).all():
            theta0 = np.concatenate([start_theta, np.zeros(likelihood.n_params - 4)])
            sample = CovariateLikelihood(family, _every_nth(patterns, PRECONDITION_PATTERNS), design)
            inverse = _inverse_hessian(covariate_objective(sample, scale, penalty), theta0)
            if inverse is not None:
                options["hess_inv0"] = inverse
    with np.errstate(all="ignore"):  # trial steps may overflow; a non-finite value makes BFGS back off
        result = minimize(objective, theta0, jac=True, method="BFGS", tol=tolerance, options=options)
    stalled = result.status == 2 and np.max(np.abs(result.jac)) <= STALL_GRADIENT
    if not (result.success or stalled) or not np.isfinite(result.x).all() or not np.isfinite(result.fun):
        raise FitFailed(result.message)
    base = dict(zip(names, np.exp(result.x[:4]).tolist(), strict=True))
    base["alpha"] /= scale
    if family == "pareto_nbd":
        base["beta"] /= scale
    return base, result.x[4:].copy()


START_HESSIAN_STEP = 1e-4  # forward differences: a preconditioner, not the covariance
PRECONDITION_PATTERNS = 50_000  # the preconditioning Hessian's sample of patterns (every n-th)


def _every_nth(patterns: CovariatePatterns, most: int) -> CovariatePatterns:
    """Every n-th pattern, at most ``most`` of them (all when there are fewer: the same object, whose
    compiled terms the fit then shares)."""
    step = max(1, -(-len(patterns.frequency) // most))
    if step == 1:
        return patterns
    return CovariatePatterns(
        patterns.frequency[::step],
        patterns.recency[::step],
        patterns.T[::step],
        patterns.design[::step],
        patterns.weights[::step],
    )


def _inverse_hessian(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray
) -> np.ndarray | None:
    """Inverse of the objective's Hessian at ``theta`` by forward differences of its analytic gradient
    (k + 1 evaluations), symmetrised; None unless positive definite (BFGS then starts from the identity)."""
    with np.errstate(all="ignore"):
        base = objective(theta)[1]
        steps = np.eye(len(theta)) * START_HESSIAN_STEP
        hessian = np.column_stack([(objective(theta + h)[1] - base) / START_HESSIAN_STEP for h in steps])
    hessian = (hessian + hessian.T) / 2.0
    if not np.isfinite(hessian).all():
        return None
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        return None
    inverse = np.linalg.inv(hessian)
    return (inverse + inverse.T) / 2.0
