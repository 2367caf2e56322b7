"""Pareto/NBD log-likelihood with its analytic gradient, and a fit that reproduces lifetimes'.

Why: lifetimes evaluates Pareto/NBD's likelihood through two Gauss hypergeometric functions per customer
(Fader & Hardie's note 9, eq. 18-20). scipy's ``hyp2f1`` is slow far out on the likelihood's ridge
(s and beta large: on CDNOW's shortest inner window 65 ms a call, 876 Nelder-Mead calls, a minute a fit).

Here the likelihood is written as the integral it comes from (a customer alive at T, or dropping out at
some tau in (t_x, T] while buying at rate lambda; lambda ~ Gamma(r, alpha), mu ~ Gamma(s, beta)):

    L = G(r + x) alpha^r beta^s / G(r) * [(alpha + T)^-(r + x) (beta + T)^-s + s I],
    I = int_{t_x}^{T} (alpha + tau)^-(r + x) (beta + tau)^-(s + 1) d tau,

and I is computed by fixed-node Gauss-Legendre quadrature, in log space (log-sum-exp over the nodes):

- the integrand f is log-convex and decreasing, so once log f has fallen ``TAIL_NATS`` (plus a margin that
  bounds the interval's length against f's decay rate at t_x) below log f(t_x), the rest of the interval
  adds less than exp(-TAIL_NATS) of I: the interval is cut there (exactly: a bound, not an estimate);
- on what is left the variable is u = ln(c + tau), c = min(alpha, beta): the nearer of the integrand's two
  branch points (tau = -alpha, -beta) moves to u = -inf and the other to Im u = pi, so the integrand is
  analytic in a wide strip around the interval and the quadrature converges geometrically.

The gradient of ln I is the same quadrature's weighted mean of d ln f / d param (the nodes' softmax
weights), so no special function other than lnG and digamma is evaluated. Terms depending on the
frequency only are computed once per distinct frequency.

The fit minimises lifetimes' ``ParetoNBDFitter`` objective: ``-(w * ll).sum() / w.mean()`` plus
``penalizer * sum(params ** 2)`` in natural parameters on lifetimes' scaled time axis (the oldest
customer's age is 1, ``_scale_time``; the penalty acts on the scaled alpha and beta), from lifetimes'
start (every parameter 1), with BFGS in log-parameters and the analytic gradient instead of Nelder-Mead.

This module must not import lifetimes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from customer_value.models.clv.likelihoods import (
    FitFailed,
    Patterns,
    _check_histories,
    _codes,
    penalised_mean_objective,
)

NODES = 32  # Gauss-Legendre nodes: converged (roundoff, ~1e-12 relative) from 24 on over the tested range
TAIL_NATS = 32.0  # the interval is cut where the integrand is exp(-32) of its value at t_x (see above)
FIT_TOLERANCE = 1e-10  # BFGS gradient norm on the mean log-likelihood (lifetimes' optimum to ~1e-7)
STALL_GRADIENT = 1e-5  # a BFGS stop on precision loss counts as converged below this gradient
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(NODES)


class ParetoNBDLikelihood:
    """Total Pareto/NBD log-likelihood of weighted (x, t_x, T) patterns and its gradient (r, alpha, s, beta).

    ll = A1 + ln((alpha + T)^-(r+x) (beta + T)^-s + s I): A1 = lnG(r + x) - lnG(r) + r ln alpha + s ln beta.
    """

    def __init__(
        self, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray, weights: np.ndarray
    ) -> None:
        x = np.asarray(frequency, dtype="float64")
        self.recency = np.asarray(recency, dtype="float64")
        self.T = np.asarray(T, dtype="float64")
        self.weights = np.asarray(weights, dtype="float64")
        self.frequency = x
        self.total_weight = float(self.weights.sum())
        self.x_values, self.x_index = _codes(x)
        self.weight_by_x = np.bincount(self.x_index, self.weights, len(self.x_values))
        # Patterns whose dropout interval (t_x, T] is not empty; t_x = T leaves the first term only.
        self.open = self.recency < self.T

    def log_likelihoods(self, params: np.ndarray, time_scale: float = 1.0) -> np.ndarray:
        """Each pattern's log-likelihood (ages and recencies multiplied by ``time_scale`` first)."""
        return self._terms(params, time_scale, gradient=False)[0]

    def p_alive(self, params: np.ndarray) -> np.ndarray:
        """Each pattern's P(alive at T | x, t_x, T): the alive term's share of the likelihood."""
        return self._terms(params, 1.0, gradient=False)[2]

    def value_and_gradient(self, params: np.ndarray, time_scale: float = 1.0) -> tuple[float, np.ndarray]:
        """ll and d ll / d(r, alpha, s, beta) at natural parameters; ages and recencies multiplied by
        ``time_scale`` first (alpha and beta are then in the scaled unit)."""
        _, value, grad = self._terms(params, time_scale, gradient=True)
        return value, grad

    def _terms(
        self, params: np.ndarray, time_scale: float, gradient: bool
    ) -> tuple[np.ndarray, float, np.ndarray | None]:
        # NumPy scalars: a trial step that underflows a parameter to 0 gives inf (BFGS backs off), not
        # a ZeroDivisionError (seen fitting Pareto/NBD to very regular buyers).
        r, alpha, s, beta = (np.float64(v) for v in params)
        x, w = self.frequency, self.weights
        t_x, big_t = self.recency * time_scale, self.T * time_scale
        m = r + x  # exponent of (alpha + tau)

        # First term, alive at T: B = -(r + x) ln(alpha + T) - s ln(beta + T).
        log_alpha_T, log_beta_T = np.log(alpha + big_t), np.log(beta + big_t)
        first = -m * log_alpha_T - s * log_beta_T
        # Second term, dropout in (t_x, T]: C = ln s + ln I (-inf for an empty interval).
        second = np.full(len(x), -np.inf)
        open_ = self.open
        log_i, mean_dphi = self._log_integral(r, alpha, s, beta, x[open_], t_x[open_], big_t[open_], gradient)
        second[open_] = np.log(s) + log_i
        log_sum = np.logaddexp(first, second)
        a1_x = gammaln(r + self.x_values) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
        value = float(self.weight_by_x @ a1_x) + float(w @ log_sum)
        if not gradient:
            return a1_x[self.x_index] + log_sum, value, np.exp(first - log_sum)

        # Softmax weights of the two terms; the second's is 0 for an empty interval.
        share_second = np.exp(second - log_sum)
        share_first = np.exp(first - log_sum)
        w_first, w_second = w * share_first, (w * share_second)[open_]
        grad = np.array(
            [
                self.weight_by_x @ digamma(r + self.x_values)
                + self.total_weight * (np.log(alpha) - digamma(r)),
                self.total_weight * r / alpha,
                self.total_weight * np.log(beta),
                self.total_weight * s / beta,
            ]
        )
        grad[0] -= w_first @ log_alpha_T
        grad[1] -= w_first @ (m / (alpha + big_t))
        grad[2] -= w_first @ log_beta_T
        grad[3] -= w_first @ (s / (beta + big_t))
        grad[2] += w_second.sum() / s
        grad += w_second @ mean_dphi
        return np.empty(0), value, grad

    @staticmethod
    def _log_integral(
        r: float,
        alpha: float | np.ndarray,
        s: float,
        beta: float | np.ndarray,
        x: np.ndarray,
        t_x: np.ndarray,
        big_t: np.ndarray,
        gradient: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """ln I per pattern and, with ``gradient``, the mean of d ln f / d(r, alpha, s, beta) under the
        quadrature's normalised weights (= d ln I / d params), one row per pattern. ``alpha`` and ``beta``
        may be one value per pattern (covariates)."""
        m, n = r + x, s + 1.0
        # Cut the interval where ln f has fallen by `drop` (f log-convex: its decay slows along tau, so
        # the rest of the interval adds at most exp(-drop) f(t_x) (T - t_x) < exp(-TAIL_NATS) I).
        decay = m / (alpha + t_x) + n / (beta + t_x)  # -d ln f / d tau at t_x
        drop = TAIL_NATS + np.log1p(decay * (big_t - t_x))
        end = np.minimum(big_t, (alpha + t_x) * np.exp(drop / m) - alpha)
        end = np.minimum(end, (beta + t_x) * np.exp(drop / n) - beta)
        # u = ln(c + tau), c the smaller of alpha, beta; the other factor is (d + e^u), d = |alpha - beta|.
        # With k the exponent on (c + tau) and l the other's, ln(f e^u) = (1 - k) u - l ln(d + e^u).
        near_alpha = np.broadcast_to(np.asarray(alpha) <= np.asarray(beta), m.shape)
        c, d = np.minimum(alpha, beta), np.abs(np.asarray(alpha) - np.asarray(beta))
        c, d = np.broadcast_to(c, m.shape), np.broadcast_to(d, m.shape)
        near, far = np.where(near_alpha, m, n), np.where(near_alpha, n, m)
        u_start, u_end = np.log(c + t_x), np.log(c + end)
        half = 0.5 * (u_end - u_start)
        u = (u_start + half)[:, None] + half[:, None] * _LEGENDRE_NODES  # patterns x nodes
        e_u = np.exp(u)
        other = d[:, None] + e_u
        log_other = np.log(other)
        # Shifted by the integrand at t_x (f decreases; the Jacobian e^u grows by at most (c+T)/(c+t_x)).
        shift = (1.0 - near) * u_start - far * np.log(d + c + t_x)
        log_terms = (1.0 - near)[:, None] * u - far[:, None] * log_other - shift[:, None]
        mass = np.exp(log_terms) * _LEGENDRE_WEIGHTS
        total = mass.sum(axis=1)
        log_i = shift + np.log(total) + np.log(half)
        if not gradient:
            return log_i, None
        p = mass / total[:, None]
        mean_u = np.einsum("ij,ij->i", p, u)
        mean_log_other = np.einsum("ij,ij->i", p, log_other)
        mean_inv_near = np.einsum("ij,ij->i", p, 1.0 / e_u)
        mean_inv_other = np.einsum("ij,ij->i", p, 1.0 / other)
        columns = (
            -np.where(near_alpha, mean_u, mean_log_other),
            -m * np.where(near_alpha, mean_inv_near, mean_inv_other),
            -np.where(near_alpha, mean_log_other, mean_u),
            -n * np.where(near_alpha, mean_inv_other, mean_inv_near),
        )
        mean_dphi = np.column_stack(columns)
        return log_i, mean_dphi


def _alive_and_dropout_terms(
    r: float,
    alpha: np.ndarray,
    s: float,
    beta: np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    gradient: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per pattern (one alpha, beta each): the alive term -(r+x) ln(alpha+T) - s ln(beta+T), the dropout
    term ln s + ln I (-inf for an empty interval t_x = T) and, with ``gradient``, d ln I / d params."""
    first = -(r + x) * np.log(alpha + big_t) - s * np.log(beta + big_t)
    second = np.full(len(x), -np.inf)
    open_ = t_x < big_t
    log_i, dphi = ParetoNBDLikelihood._log_integral(
        r, alpha[open_], s, beta[open_], x[open_], t_x[open_], big_t[open_], gradient
    )
    second[open_] = np.log(s) + log_i
    mean_dphi = None
    if gradient:
        mean_dphi = np.zeros((len(x), 4))
        mean_dphi[open_] = dphi
    return first, second, mean_dphi


def pattern_terms(
    r: float,
    alpha: float | np.ndarray,
    s: float,
    beta: float | np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pattern's log-likelihood and d ll / d(r, alpha, s, beta) (patterns x 4), with ``alpha`` and
    ``beta`` one value per pattern or shared: the covariate models' building block (same arithmetic as
    ``ParetoNBDLikelihood``, per pattern instead of summed)."""
    alpha_, beta_ = np.broadcast_to(alpha, x.shape), np.broadcast_to(beta, x.shape)
    m = r + x
    log_alpha_T, log_beta_T = np.log(alpha_ + big_t), np.log(beta_ + big_t)
    first, second, mean_dphi = _alive_and_dropout_terms(r, alpha_, s, beta_, x, t_x, big_t, True)
    log_sum = np.logaddexp(first, second)
    ll = gammaln(m) - gammaln(r) + r * np.log(alpha_) + s * np.log(beta_) + log_sum
    share_first, share_second = np.exp(first - log_sum), np.exp(second - log_sum)
    grad = np.column_stack(
        [
            digamma(m) - digamma(r) + np.log(alpha_) - share_first * log_alpha_T,
            r / alpha_ - share_first * m / (alpha_ + big_t),
            np.log(beta_) - share_first * log_beta_T + share_second / s,
            s / beta_ - share_first * s / (beta_ + big_t),
        ]
    )
    grad += share_second[:, None] * mean_dphi
    return ll, grad


def per_customer(
    method: str,
    params: dict[str, float | np.ndarray],
    frequency: np.ndarray,
    recency: np.ndarray,
    T: np.ndarray,
) -> np.ndarray:
    """Each customer's log-likelihood (``method`` "log_likelihoods") or P(alive at T | x, t_x, T)
    ("p_alive": the alive term's share of the likelihood), evaluated once per distinct (x, t_x, T) and,
    with covariates (``alpha``/``beta`` one value per customer), per distinct (alpha, beta)."""
    r, s = float(params["r"]), float(params["s"])
    alpha, beta = params["alpha"], params["beta"]
    per_row = [np.asarray(v, dtype="float64") for v in (alpha, beta) if np.ndim(v)]
    columns = [_codes(np.asarray(c, dtype="float64")) for c in (frequency, recency, T, *per_row)]
    key = np.zeros(len(columns[0][1]), dtype="int64")
    for distinct, inverse in columns:  # mixed radix, renumbered before it could overflow
        key = _codes(key)[1] * len(distinct) + inverse
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    x, t_x, big_t = (distinct[index[first]] for distinct, index in columns[:3])
    alpha_ = np.asarray(alpha, dtype="float64")[first] if np.ndim(alpha) else float(alpha)
    beta_ = np.asarray(beta, dtype="float64")[first] if np.ndim(beta) else float(beta)
    alpha_, beta_ = np.broadcast_to(alpha_, x.shape), np.broadcast_to(beta_, x.shape)
    m = r + x
    first_term, second, _ = _alive_and_dropout_terms(r, alpha_, s, beta_, x, t_x, big_t, False)
    log_sum = np.logaddexp(first_term, second)
    if method == "p_alive":
        values = np.exp(first_term - log_sum)
    elif method == "log_likelihoods":
        values = gammaln(m) - gammaln(r) + r * np.log(alpha_) + s * np.log(beta_) + log_sum
    else:
        raise ValueError(f"unknown method {method!r}")
    return values[inverse.ravel()]


def fit_pareto_nbd(patterns: Patterns, penalizer: float) -> dict[str, float]:
    """lifetimes' ``ParetoNBDFitter(penalizer).fit`` estimates (r, alpha, s, beta in the input's time unit).

    lifetimes' objective, ``-(w * ll).sum() / w.mean() + penalizer * sum(params ** 2)`` on the scaled time
    axis, is minimised divided by the number of patterns (the same optimum, a gradient of order one).
    """
    _check_histories(patterns)
    frequency = np.floor(patterns.frequency)  # lifetimes casts frequencies to int
    likelihood = ParetoNBDLikelihood(frequency, patterns.recency, patterns.T, patterns.weights)
    scale = 1.0 / float(np.max(patterns.T))  # lifetimes' _scale_time: the oldest customer's age becomes 1
    objective = penalised_mean_objective(likelihood, scale, penalizer / len(frequency))  # per pattern

    with np.errstate(all="ignore"):  # trial steps may overflow; a non-finite value makes BFGS back off
        result = minimize(objective, np.zeros(4), jac=True, method="BFGS", tol=FIT_TOLERANCE)
    # BFGS also stops on "precision loss" when its line search can no longer lower the objective in
    # float64: that is convergence if the gradient is already negligible there.
    stalled = result.status == 2 and np.max(np.abs(result.jac)) <= STALL_GRADIENT
    if not (result.success or stalled) or not np.isfinite(result.x).all() or not np.isfinite(result.fun):
        raise FitFailed(result.message)
    r, alpha, s, beta = np.exp(result.x)
    return {"r": float(r), "alpha": float(alpha / scale), "s": float(s), "beta": float(beta / scale)}
