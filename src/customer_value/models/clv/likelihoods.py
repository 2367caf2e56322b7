"""BG/NBD and Gamma-Gamma log-likelihoods with analytic gradients, and fits that reproduce lifetimes'.

Why: lifetimes differentiates its likelihoods with autograd, which at a million customers costs more than
the arithmetic itself. Here the same likelihoods (Fader, Hardie & Lee 2005, section 7; Fader & Hardie's
Gamma-Gamma note 025, eq. 1a) are written out with their gradients (digamma for the gamma functions), and
every term that depends on one input column only is computed once per distinct value of that column
(distinct frequencies, ages, recencies: a few hundred at day resolution) and summed with aggregated
weights. Only the log-sum-exp of BG/NBD's repeat buyers needs a pass over the (x, t_x, T) patterns.

The fits minimise exactly lifetimes' objective from lifetimes' starting point with the same optimiser
(BFGS): mean negative log-likelihood in log-parameter space plus ``penalizer * sum(params ** 2)``, with
BG/NBD's time axis scaled so the oldest customer's age is 1 (lifetimes' ``_scale_time``; the penalty acts
on the scaled alpha). So the estimates, and the penalizer's meaning, are lifetimes'.

This module must not import lifetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

INITIAL_LOG_PARAMS = 0.1  # lifetimes' starting point: every log-parameter at 0.1
FIT_TOLERANCE = 1e-7  # lifetimes' default: BFGS then takes lifetimes' path, step for step


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product without BLAS: a threaded BLAS dot was 15x slower on a machine with a busy core."""
    return float(np.einsum("i,i->", a, b))


class FitFailed(Exception):
    """The optimiser did not converge or reached a non-finite objective."""


@dataclass(frozen=True)
class Patterns:
    """Distinct (x, t_x, T) purchase histories and how many customers have each."""

    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    weights: np.ndarray


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each element's position among them: ``np.unique(values,
    return_inverse=True)`` by hashing, sorting only the distinct values (a million customers' x, t_x or T
    were a full sort each time)."""
    codes, distinct = pd.factorize(np.ravel(values), sort=True, use_na_sentinel=False)
    return np.asarray(distinct), codes


def unique_patterns(frequency: np.ndarray, recency: np.ndarray, T: np.ndarray) -> Patterns:
    """Group customers by (x, t_x, T) through one integer key per row (much faster than unique rows),
    sorted by (x, t_x, T) as ``np.unique`` of the rows would be."""
    columns = [_codes(np.asarray(c, dtype="float64")) for c in (frequency, recency, T)]
    key, n_keys = np.zeros(len(frequency), dtype="int64"), 1
    for distinct, inverse in columns:  # mixed radix
        if n_keys * len(distinct) >= 2**62:  # renumber the keys so far before they could overflow
            distinct_keys, key = _codes(key)
            n_keys = len(distinct_keys)
        key, n_keys = key * len(distinct) + inverse, n_keys * len(distinct)
    distinct_keys, inverse = _codes(key)
    counts = np.bincount(inverse, minlength=len(distinct_keys))
    first = np.empty(len(distinct_keys), dtype=np.intp)
    first[inverse[::-1]] = np.arange(len(inverse) - 1, -1, -1)  # each key's first row (any would do)
    x, t_x, big_t = (distinct[inverse[first]] for distinct, inverse in columns)
    return Patterns(x, t_x, big_t, counts.astype("float64"))


class BGNBDLikelihood:
    """Total BG/NBD log-likelihood of weighted (x, t_x, T) patterns and its gradient.

    ll = A1 + A2 + A3 + log(1 + [x > 0] exp(A4 - A3)) with, per pattern,
    A1 = lnG(r + x) - lnG(r) + r ln(alpha), A2 = lnB(a, b + x) - lnB(a, b), A3 = -(r + x) ln(alpha + T),
    A4 = ln(a) - ln(b + x - 1) - (r + x) ln(alpha + t_x): lifetimes' ``_negative_log_likelihood`` terms.
    """

    def __init__(
        self, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray, weights: np.ndarray
    ) -> None:
        x = np.asarray(frequency, dtype="float64")
        w = np.asarray(weights, dtype="float64")
        self.total_weight = float(w.sum())
        self.x_values, x_index = _codes(x)
        self.T_values, T_index = _codes(np.asarray(T, dtype="float64"))
        self.weight_by_x = np.bincount(x_index, w, len(self.x_values))
        self.weight_by_T = np.bincount(T_index, w, len(self.T_values))
        self.weighted_x_by_T = np.bincount(T_index, w * x, len(self.T_values))
        repeat = x > 0
        self.t_values, t_index = _codes(np.asarray(recency, dtype="float64")[repeat])
        # The log-sum-exp term pairs each repeat buyer's t_x with its T: keep the distinct pairs.
        pair_key = t_index.astype("int64") * len(self.T_values) + T_index[repeat]
        pairs, self.pair_index = _codes(pair_key)
        self.pair_t, self.pair_T = pairs // len(self.T_values), pairs % len(self.T_values)
        self.repeat_x = x[repeat]
        self.repeat_x_index = x_index[repeat]
        self.repeat_weights = w[repeat]
        self.repeat_positive = self.x_values > 0

    def value_and_gradient(self, params: np.ndarray, time_scale: float = 1.0) -> tuple[float, np.ndarray]:
        """ll and d ll / d(r, alpha, a, b) at natural parameters; ages and recencies multiplied by
        ``time_scale`` first (alpha is then in the scaled unit)."""
        r, alpha, a, b = (np.float64(v) for v in params)  # 1 / 0 gives inf, as in pareto_likelihood
        xs, wx = self.x_values, self.weight_by_x
        log_T = np.log(alpha + self.T_values * time_scale)
        inv_T = 1.0 / (alpha + self.T_values * time_scale)
        log_t = np.log(alpha + self.t_values * time_scale)
        inv_t = 1.0 / (alpha + self.t_values * time_scale)

        # Terms in x only, summed over distinct frequencies.
        value = wx @ (gammaln(r + xs) + gammaln(b + xs) - gammaln(a + b + xs))
        value += self.total_weight * (-gammaln(r) + r * np.log(alpha) + gammaln(a + b) - gammaln(b))
        digamma_abx = digamma(a + b + xs)
        grad = np.array(
            [
                wx @ digamma(r + xs) + self.total_weight * (np.log(alpha) - digamma(r)),
                self.total_weight * r / alpha,
                wx @ -digamma_abx + self.total_weight * digamma(a + b),
                wx @ (digamma(b + xs) - digamma_abx) + self.total_weight * (digamma(a + b) - digamma(b)),
            ]
        )
        # A3, summed over distinct ages: sum_i w_i (r + x_i) ln(alpha + T_i).
        rate_weight_T = r * self.weight_by_T + self.weighted_x_by_T
        value -= rate_weight_T @ log_T
        grad[0] -= self.weight_by_T @ log_T
        grad[1] -= rate_weight_T @ inv_T

        # log(1 + exp(A4 - A3)) for repeat buyers: the only pass over patterns.
        safe_x = np.where(self.repeat_positive, xs, 1.0)
        log_odds_x = np.log(a) - np.log(b + safe_x - 1.0)
        log_gap = (log_t[self.pair_t] - log_T[self.pair_T])[self.pair_index]  # ln((alpha+t_x)/(alpha+T))
        inv_gap = (inv_t[self.pair_t] - inv_T[self.pair_T])[self.pair_index]
        rate = r + self.repeat_x
        d = log_odds_x[self.repeat_x_index] - rate * log_gap
        # softplus(d) = ln(1 + e^d) and its derivative expit(d), from one exp (ufuncs logaddexp and
        # expit are several times slower at a million patterns).
        small = np.exp(-np.abs(d))
        value += _dot(self.repeat_weights, np.maximum(d, 0.0) + np.log1p(small))
        ws = self.repeat_weights * np.where(d >= 0.0, 1.0, small) / (1.0 + small)
        ws_by_x = np.bincount(self.repeat_x_index, ws, len(xs))
        grad[0] -= _dot(ws, log_gap)
        grad[1] -= _dot(ws, rate * inv_gap)
        grad[2] += ws_by_x.sum() / a
        grad[3] -= ws_by_x[self.repeat_positive] @ (1.0 / (b + xs[self.repeat_positive] - 1.0))
        return float(value), grad


class GammaGammaLikelihood:
    """Total Gamma-Gamma log-likelihood of repeat buyers' mean spend m over x repeat orders, and gradient.

    ll = lnG(px + q) - lnG(px) - lnG(q) + q ln v + (px - 1) ln m + px ln x - (px + q) ln(xm + v), summed as
    lnG(px + q) - lnG(px) - lnG(q) - ln m - px ln(1 + v / xm) - q ln(1 + xm / v): the same value without
    the cancellation of large sums that would leave BFGS's line search too little precision.
    """

    def __init__(self, frequency: np.ndarray, monetary_value: np.ndarray, weights: np.ndarray) -> None:
        x = np.asarray(frequency, dtype="float64")
        m = np.asarray(monetary_value, dtype="float64")
        w = np.asarray(weights, dtype="float64")
        self.total_weight = float(w.sum())
        self.x_values, x_index = _codes(x)
        self.weight_by_x = np.bincount(x_index, w, len(self.x_values))
        self.spend = x * m
        self.weights, self.weighted_x, self.weighted_spend = w, w * x, w * self.spend
        self.sum_log_m = _dot(w, np.log(m))

    def value_and_gradient(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """ll and d ll / d(p, q, v) at natural parameters."""
        p, q, v = (float(value) for value in params)
        xs, wx = self.x_values, self.weight_by_x
        log_v_over_s = np.log1p(v / self.spend)
        log_s_over_v = np.log1p(self.spend / v)
        inv_total = 1.0 / (self.spend + v)
        sum_x_log_v_over_s = _dot(self.weighted_x, log_v_over_s)
        sum_log_s_over_v = _dot(self.weights, log_s_over_v)
        value = wx @ (gammaln(p * xs + q) - gammaln(p * xs)) - self.total_weight * gammaln(q)
        value += -self.sum_log_m - p * sum_x_log_v_over_s - q * sum_log_s_over_v
        digamma_pxq = digamma(p * xs + q)
        grad = np.array(
            [
                (wx * xs) @ (digamma_pxq - digamma(p * xs)) - sum_x_log_v_over_s,
                wx @ digamma_pxq - self.total_weight * digamma(q) - sum_log_s_over_v,
                q / v * _dot(self.weighted_spend, inv_total) - p * _dot(self.weighted_x, inv_total),
            ]
        )
        return float(value), grad


def _minimise(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], n_params: int) -> np.ndarray:
    """BFGS from lifetimes' start; the log-parameters at the optimum, or FitFailed."""
    with np.errstate(all="ignore"):  # trial steps may overflow; a non-finite value makes BFGS back off
        result = minimize(
            objective, np.full(n_params, INITIAL_LOG_PARAMS), jac=True, method="BFGS", tol=FIT_TOLERANCE
        )
    if not result.success or not np.isfinite(result.x).all() or not np.isfinite(result.fun):
        raise FitFailed(result.message)
    return result.x


def _check_histories(patterns: Patterns) -> None:
    """lifetimes' input checks (``utils._check_inputs``), with its messages."""
    x, t_x, big_t = patterns.frequency, patterns.recency, patterns.T
    if len(x) == 0:
        raise ValueError("There exists a zero length vector in one of frequency, recency or T.")
    if np.any(t_x > big_t):
        raise ValueError("Some values in recency vector are larger than T vector.")
    if np.any(t_x[x == 0] != 0):
        raise ValueError("There exist non-zero recency values when frequency is zero.")
    if np.any(t_x < 0):
        raise ValueError("There exist negative recency (ex: last order set before first order)")
    if np.any(x != np.floor(x)):
        raise ValueError("There exist non-integer values in the frequency vector.")


def penalised_mean_objective(
    likelihood: Any, scale: float, penalty: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """lifetimes' objective in log-parameter space: the mean negative log-likelihood (time scaled by
    ``scale``) plus ``penalty * sum(params ** 2)``, with its gradient; ``likelihood`` has
    ``value_and_gradient(params, scale)`` and ``total_weight``."""

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(log_params)
        value, grad = likelihood.value_and_gradient(params, scale)
        total = likelihood.total_weight
        nll = -value / total + penalty * float(np.sum(params**2))
        return nll, (-grad / total + 2.0 * penalty * params) * params

    return objective


def fit_bgnbd(patterns: Patterns, penalizer: float) -> dict[str, float]:
    """lifetimes' ``BetaGeoFitter(penalizer).fit`` estimates (r, alpha in the input's time unit, a, b)."""
    _check_histories(patterns)
    likelihood = BGNBDLikelihood(patterns.frequency, patterns.recency, patterns.T, patterns.weights)
    scale = 1.0 / float(np.max(patterns.T))  # lifetimes' _scale_time: the oldest customer's age becomes 1

    objective = penalised_mean_objective(likelihood, scale, penalizer)
    r, alpha, a, b = np.exp(_minimise(objective, 4))
    return {"r": float(r), "alpha": float(alpha / scale), "a": float(a), "b": float(b)}


def fit_gamma_gamma(frequency: np.ndarray, monetary_value: np.ndarray, penalizer: float) -> dict[str, float]:
    """lifetimes' ``GammaGammaFitter(penalizer).fit`` estimates (p, q, v), one row per repeat buyer."""
    if np.any(np.asarray(monetary_value) <= 0):
        raise ValueError("There exist non-positive (<= 0) values in the monetary_value vector.")
    likelihood = GammaGammaLikelihood(frequency, monetary_value, np.ones(len(frequency)))

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(log_params)
        value, grad = likelihood.value_and_gradient(params)
        total = likelihood.total_weight
        nll = -value / total + penalizer * float(np.sum(params**2))
        return nll, (-grad / total + 2.0 * penalizer * params) * params

    p, q, v = np.exp(_minimise(objective, 3))
    return {"p": float(p), "q": float(q), "v": float(v)}


def mean_constrained_gamma_gamma(
    likelihood: GammaGammaLikelihood, mean: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Gamma-Gamma's ll and gradient in theta = (ln p, ln(q - 1)) with v = mean (q - 1) / p.

    Why: when the plain fit gives q <= 1 (a spend tail so heavy that the population mean p v / (q - 1) is
    infinite), this family keeps q > 1 and the population mean at ``mean``, an observed figure.
    """

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p, q = float(np.exp(theta[0])), 1.0 + float(np.exp(theta[1]))
        v = mean * (q - 1.0) / p
        value, grad = likelihood.value_and_gradient(np.array([p, q, v]))
        # chain rule: dv/d ln p = -v, dv/d ln(q - 1) = v; dp/d ln p = p, dq/d ln(q - 1) = q - 1
        return value, np.array([p * grad[0] - v * grad[2], (q - 1.0) * grad[1] + v * grad[2]])

    return value_and_gradient


def constrained_spend_params(theta: np.ndarray, mean: float) -> dict[str, float]:
    """(p, q, v) of the mean-constrained parametrisation at theta = (ln p, ln(q - 1))."""
    p, q = float(np.exp(theta[0])), 1.0 + float(np.exp(theta[1]))
    return {"p": p, "q": q, "v": mean * (q - 1.0) / p}


def fit_gamma_gamma_with_mean(
    frequency: np.ndarray, monetary_value: np.ndarray, mean: float, penalizer: float
) -> dict[str, float]:
    """Gamma-Gamma's maximum likelihood (p, q, v) subject to p v / (q - 1) = ``mean`` (so q > 1).

    The penalty is lifetimes' (``penalizer * (p^2 + q^2 + v^2)``), as in ``fit_gamma_gamma``.
    """
    if not (np.isfinite(mean) and mean > 0):
        raise ValueError(f"the population mean spend must be positive, got {mean}")
    likelihood = GammaGammaLikelihood(frequency, monetary_value, np.ones(len(frequency)))
    constrained = mean_constrained_gamma_gamma(likelihood, mean)
    total = likelihood.total_weight

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = constrained_spend_params(theta, mean)
        p, q, v = params["p"], params["q"], params["v"]
        value, grad = constrained(theta)
        penalty = penalizer * (p * p + q * q + v * v)
        penalty_grad = 2.0 * penalizer * np.array([p * p - v * v, (q - 1.0) * (q + v * v / (q - 1.0))])
        return -value / total + penalty, -grad / total + penalty_grad

    return constrained_spend_params(_minimise(objective, 2), mean)


def log_space_hessian(
    gradient: Callable[[np.ndarray], np.ndarray], log_params: np.ndarray, step: float
) -> np.ndarray:
    """Hessian of a log-likelihood in log-parameters by central differences of its analytic gradient
    (``gradient``: natural parameters -> d ll / d params); exact to O(step^2) in 2k gradient calls."""

    def log_gradient(theta: np.ndarray) -> np.ndarray:
        params = np.exp(theta)
        return gradient(params) * params  # chain rule: d/d ln(theta) = theta d/d theta

    shifts = np.eye(len(log_params)) * step
    hessian = np.column_stack(
        [(log_gradient(log_params + h) - log_gradient(log_params - h)) / (2 * step) for h in shifts]
    )
    return (hessian + hessian.T) / 2.0
