"""MBG/CNBD-k purchase model (Reutterer, Platzer & Schröder 2021, IJRM 38(1); BTYDplus ``mbgcnbd.*``).

Why: MBG/NBD assumes exponential inter-purchase times, so a long gap since the last purchase says little
about churn. With Erlang-k gaps (k phases of rate lambda each) regular buyers' silences are informative.

Model, per customer: lambda ~ Gamma(r, rate alpha); gaps between purchases ~ Erlang(k, lambda); the customer
drops out with probability p ~ Beta(a, b) right after every purchase, the first one (at time 0) included.
A history is (x repeat purchases, t_x the last one's time, T the age, litt = sum of log gaps). k = 1 is
MBG/NBD (Batislam et al. 2007), equal to lifetimes' ``ModifiedBetaGeoFitter``.

Formulas follow BTYDplus (github.com/mplatzer/BTYDplus, file R/mbg-cnbd-k.R, ``dropout_at_zero = TRUE``):
``xbgcnbd.LL`` (log_likelihood), ``xbgcnbd.PAlive`` (p_alive), ``xbgcnbd.EstimateParameters`` (fit, fit_k)
and ``xbgcnbd.GenerateData`` (simulate). BTYDplus's ``xbgcnbd.ConditionalExpectedTransactions`` is an
approximation for k > 1 (the BG/NBD conditional-expectation formula with shape r + x and scale
k * alpha + T, times P(alive), rescaled so the cohort's sum matches the unconditional expectation);
expected_purchases is instead an exact series (derived there), equal to BTYDplus's and lifetimes' closed
form at k = 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import betainc, betaln, digamma, gammaln

PARAM_NAMES = ("r", "alpha", "a", "b")
BTYDPLUS_START = (1.0, 3.0, 1.0, 3.0)  # par.start of mbgcnbd.EstimateParameters (alpha in weeks)
LOG_BOUNDS = (np.log(1e-6), np.log(1e6))  # BTYDplus caps at max.param.value = 1e4; a wider box here
Params = Mapping[str, float] | Sequence[float]


class FitError(ValueError):
    """The maximum-likelihood search did not converge from any starting point."""


def _unpack(params: Params) -> tuple[float, float, float, float]:
    values = [params[name] for name in PARAM_NAMES] if isinstance(params, Mapping) else list(params)
    if len(values) != 4 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"params must be four positive numbers (r, alpha, a, b), got {params!r}")
    r, alpha, a, b = (float(v) for v in values)
    return r, alpha, a, b


def _history(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, *extra: ArrayLike) -> list[np.ndarray]:
    """Broadcast a batch of histories to float arrays and reject impossible ones (t_x > T, x = 0 < t_x)."""
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype="float64") for v in (x, t_x, T, *extra)))
    arrays = [np.atleast_1d(v).copy() for v in arrays]
    x, t_x, T = arrays[:3]
    if not all(np.isfinite(v).all() for v in arrays):
        raise ValueError("histories must be finite (litt is -inf when two purchases share a time stamp)")
    if (x < 0).any() or (x != np.round(x)).any():
        raise ValueError("x (repeat purchases) must be non-negative integers")
    if (t_x < 0).any() or (t_x > T).any() or ((x == 0) & (t_x > 0)).any():
        raise ValueError("need 0 <= t_x <= T, and t_x = 0 when x = 0")
    return arrays


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _alive_terms(n: np.ndarray, u: np.ndarray, A: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """log S2_j = log[(n)_j u^j / (j! A^j)], j < k (BTYDplus's S2 summands), and d/dn of (n)_j's log.

    Why: these are the Gamma(n, A) posterior's weights of "j of the k Erlang phases done since t_x"; they make
    the Erlang-k survival of the gap u = T - t_x integrated over lambda."""
    j = np.arange(k, dtype="float64")
    steps = n[:, None] + j[None, :-1]  # (n + i) for i < k - 1
    log_rise = np.concatenate([np.zeros((len(n), 1)), np.cumsum(np.log(steps), axis=1)], axis=1)
    d_rise = np.concatenate([np.zeros((len(n), 1)), np.cumsum(1.0 / steps, axis=1)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # u = 0: only j = 0 (0 * -inf masked)
        powers = np.where(j > 0, j * np.log(u / A)[:, None], 0.0)
    log_terms = log_rise + powers - gammaln(j + 1.0)
    return log_terms, d_rise


def _terms(
    params: Params,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    litt: ArrayLike,
    k: int,
    gradient: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-customer log-likelihood (xbgcnbd.LL with dropout_at_zero) and, if asked, d ll / d(r, alpha, a, b).

    ll = P1 + P2 + P3 + P4 + log(S1 + S2): P1 = (k-1) litt - x log((k-1)!), P2 = lB(a, b+x+1) - lB(a, b),
    P3 = lG(r+kx) - lG(r) + r log alpha, P4 = -(r+kx) log(alpha+T),
    S1 = a/(b+x) ((alpha+T)/(alpha+t_x))^(r+kx) (dropped at the last purchase),
    S2 = sum_j<k (r+kx)_j (T-t_x)^j / (j! (alpha+T)^j) (alive, no purchase since);
    summed in log space so long silences do not overflow."""
    r, alpha, a, b = _unpack(params)
    k = _check_k(k)
    x, t_x, T, litt = _history(x, t_x, T, litt)
    n, A, B = r + k * x, alpha + T, alpha + t_x
    log_s1 = np.log(a) - np.log(b + x) + n * (np.log(A) - np.log(B))
    log_s2, d_rise = _alive_terms(n, T - t_x, A, k)
    mix = np.column_stack([log_s1, log_s2])
    top = mix.max(axis=1, keepdims=True)
    shares = np.exp(mix - top)
    total = shares.sum(axis=1)
    ll = (
        (k - 1) * litt
        - x * gammaln(k)
        + betaln(a, b + x + 1) - betaln(a, b)
        + gammaln(n) - gammaln(r) + r * np.log(alpha)
        - n * np.log(A)
        + top[:, 0] + np.log(total)
    )  # fmt: skip
    if not gradient:
        return ll, None
    w_dead, w_alive = shares[:, 0] / total, shares[:, 1:] / total[:, None]
    j = np.arange(k)
    grad = np.column_stack(
        [
            digamma(n) - digamma(r) + np.log(alpha) - np.log(A)
            + w_dead * (np.log(A) - np.log(B)) + (w_alive * d_rise).sum(axis=1),
            r / alpha - n / A + w_dead * n * (1 / A - 1 / B) - (w_alive * j).sum(axis=1) / A,
            digamma(a + b) - digamma(a + b + x + 1) + w_dead / a,
            digamma(b + x + 1) - digamma(a + b + x + 1) - digamma(b) + digamma(a + b) - w_dead / (b + x),
        ]
    )  # fmt: skip
    return ll, grad


def log_likelihood(
    params: Params, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, litt: ArrayLike, k: int
) -> np.ndarray:
    """Each customer's MBG/CNBD-k log-likelihood, including the Erlang density's (k-1) litt term so that
    values for different k are comparable (BTYDplus ``mbgcnbd.LL``)."""
    return _terms(params, x, t_x, T, litt, k)[0]


def _start_points(x: np.ndarray, T: np.ndarray, k: int) -> list[tuple[float, ...]]:
    """BTYDplus's start plus two scaled to the data's time unit (phase rate ~ k * repeats / time observed)."""
    rate = k * max(float(x.sum()), 1.0) / max(float(T.sum()), 1e-12)
    return [BTYDPLUS_START, (1.0, 1.0 / rate, 1.0, 3.0), (0.5, 0.5 / rate, 0.5, 1.0)]


def fit(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    litt: ArrayLike,
    k: int,
    weights: ArrayLike | None = None,
    penalizer: float = 0.0,
    maxiter: int = 2000,
) -> dict[str, float]:
    """Maximum-likelihood (r, alpha, a, b) for a fixed k.

    Minimises the weighted mean negative log-likelihood plus ``penalizer * sum(params ** 2)`` (lifetimes'
    convention, natural parameters in model time units) over log-parameters with L-BFGS-B and the analytic
    gradient, from several starts; the best converged one wins. Raises FitError if none converges."""
    k = _check_k(k)
    x, t_x, T, litt = _history(x, t_x, T, litt)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, "float64"), x.shape)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    total = float(w.sum())

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(log_params)
        ll, grad = _terms(params, x, t_x, T, litt, k, gradient=True)
        value = -float(w @ ll) / total + penalizer * float(np.sum(params**2))
        if not np.isfinite(value):
            return np.inf, np.zeros(4)
        return value, (-(w @ grad) / total + 2.0 * penalizer * params) * params

    best, failures = None, []
    for start in _start_points(x, T, k):
        res = minimize(
            objective, np.log(start), jac=True, method="L-BFGS-B", bounds=[LOG_BOUNDS] * 4,
            options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-8},
        )  # fmt: skip
        if res.success and np.isfinite(res.fun):
            if best is None or res.fun < best.fun:
                best = res
        else:
            failures.append(f"start {start}: {res.message}")
    if best is None:
        raise FitError(f"MBG/CNBD-{k} fit did not converge from any start: " + "; ".join(failures))
    return dict(zip(PARAM_NAMES, (float(v) for v in np.exp(best.x)), strict=True))


def fit_k(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    litt: ArrayLike,
    ks: Iterable[int] = range(1, 13),
    weights: ArrayLike | None = None,
    penalizer: float = 0.0,
) -> dict[str, object]:
    """Pick k by maximum likelihood over ``ks`` as BTYDplus's xbgcnbd.EstimateParameters does: fit each k,
    stop early once the log-likelihood fell twice in a row or a fit failed, return the best.

    Returns {"k": best k, "params": {k: params}, "log_likelihood": {k: total (weighted) log-likelihood}}."""
    w = 1.0 if weights is None else np.asarray(weights, "float64")
    params, lls = {}, {}
    for k in ks:
        try:
            params[k] = fit(x, t_x, T, litt, k, weights=weights, penalizer=penalizer)
        except FitError:
            if not params:
                raise
            break  # BTYDplus: stop if parameters could not be estimated
        lls[k] = float(np.sum(w * log_likelihood(params[k], x, t_x, T, litt, k)))
        seen = list(lls.values())
        if len(seen) > 2 and seen[-1] < seen[-2] < seen[-3]:
            break
    best = max(lls, key=lls.__getitem__)
    return {"k": best, "params": params, "log_likelihood": lls}


def p_alive(params: Params, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, k: int) -> np.ndarray:
    """P(alive at T | history) = S2 / (S1 + S2), BTYDplus ``xbgcnbd.PAlive``: the share of the likelihood
    in which the customer survived the last purchase and made no purchase in the Erlang-k gap since."""
    r, alpha, a, b = _unpack(params)
    k = _check_k(k)
    x, t_x, T = _history(x, t_x, T)
    n = r + k * x
    log_s1 = np.log(a) - np.log(b + x) + n * (np.log(alpha + T) - np.log(alpha + t_x))
    log_terms, _ = _alive_terms(n, T - t_x, alpha + T, k)
    log_s2 = np.logaddexp.reduce(log_terms, axis=1)
    return 1.0 / (1.0 + np.exp(log_s1 - log_s2))


def alive_phase_posterior(
    params: Params, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Given alive at T: P(j of the k Erlang phases done since t_x | history) for j = 0..k-1, each case's
    Gamma shape of lambda (r + kx + j) and the common Gamma rate (alpha + T).

    Why: every forecast for a live customer is a mixture over j of "lambda ~ Gamma(r + kx + j, alpha + T),
    k - j more phases to the next purchase, then k per purchase" (see expected_purchases)."""
    r, alpha, _, _ = _unpack(params)
    k = _check_k(k)
    x, t_x, T = _history(x, t_x, T)
    log_terms, _ = _alive_terms(r + k * x, T - t_x, alpha + T, k)
    weights = np.exp(log_terms - np.logaddexp.reduce(log_terms, axis=1, keepdims=True))
    shapes = r + k * x[:, None] + np.arange(k)[None, :]
    return weights, shapes, alpha + T


def prob_no_purchase(
    params: Params, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, k: int, horizon: ArrayLike
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | history): the churn probability over the horizon.

    Derivation: the likelihood of (x, t_x, T) is the density of the observed purchase times times
    P(no purchase in (t_x, T]). With T replaced by T + h it is the density of the same purchases and no
    purchase in (t_x, T + h], so L(x, t_x, T + h) / L(x, t_x, T) = P(no purchase in (T, T + h] | history)
    exactly (litt cancels). It equals P(dead) + P(alive) * E[Erlang-k survival ratio] over the posterior."""
    x, t_x, T, h = _history(x, t_x, T, horizon)
    if (h < 0).any():
        raise ValueError("horizon must be >= 0")
    zero = np.zeros_like(x)
    later = log_likelihood(params, x, t_x, T + h, zero, k)
    return np.minimum(np.exp(later - log_likelihood(params, x, t_x, T, zero, k)), 1.0)


class _PhaseTails:
    """P(NB_j >= n k - j) for n = 1, 2, ... (NB_j negative binomial: shape s_j, success share z), per row.

    Why: a betainc per (customer, phase, term) was nearly all of expected_purchases' time. Here a tail
    steps down by the pmf, P(NB >= m + 1) = P(NB >= m) - P(NB = m) with
    P(NB = m + 1) = P(NB = m) (s + m) z / (m + 1), an exp and a log per phase; a tail that has fallen below
    ``REFRESH`` of its last exact value is recomputed by betainc, which bounds the subtraction's
    cancellation (a tail keeps ~12 digits)."""

    REFRESH = 1e-6

    def __init__(self, shapes: np.ndarray, z: np.ndarray, k: int) -> None:
        self.k, self.shapes, self.z = k, shapes, np.broadcast_to(z, shapes.shape)
        self.m = (k - np.arange(k)).astype("float64")  # phases to the first purchase, j = 0..k-1
        self.log_z = np.log(self.z)
        self.tail = betainc(self.m, shapes, self.z)
        self.exact = self.tail.copy()
        self.log_pmf = (
            gammaln(shapes + self.m) - gammaln(shapes) - gammaln(self.m + 1.0)
            + self.m * self.log_z + shapes * np.log1p(-self.z)
        )  # fmt: skip

    def keep(self, rows: np.ndarray) -> None:
        for name in ("shapes", "z", "log_z", "tail", "exact", "log_pmf"):
            setattr(self, name, getattr(self, name)[rows])

    def advance(self) -> None:
        """From the tails at n k - j to those at (n + 1) k - j."""
        step = np.empty_like(self.tail)
        for _ in range(self.k):  # in place: this loop is the series' cost
            self.tail -= np.exp(self.log_pmf, out=step)
            np.add(self.shapes, self.m, out=step)
            step /= self.m + 1.0
            self.log_pmf += np.log(step, out=step)
            self.log_pmf += self.log_z
            self.m = self.m + 1.0
        stale = self.tail < self.REFRESH * self.exact
        if stale.any():
            m = np.broadcast_to(self.m, stale.shape)[stale]
            self.tail[stale] = self.exact[stale] = betainc(m, self.shapes[stale], self.z[stale])


def expected_purchases(
    params: Params,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    k: int,
    horizon: ArrayLike,
    rtol: float = 1e-10,
    max_terms: int = 100_000,
) -> np.ndarray:
    """E[purchases in (T, T + horizon] | history], exact up to ``rtol`` (a truncated series).

    Given alive, p ~ Beta(a, b + x + 1) independently of lambda, and the "no purchase since t_x" factor
    splits into j = 0..k-1 Erlang phases done since t_x: (lambda, j) has weights S2_j and lambda | j ~
    Gamma(r + kx + j, alpha + T). The n-th future purchase needs n k - j more phases, N(h) phases of a
    Poisson(lambda) process, and n - 1 survivals:
        E = P(alive) sum_j w_j sum_{n>=1} c_n P(N_j(h) >= n k - j),
    c_n = E[(1-p)^(n-1)] = prod_{i<n-1} (b'+i)/(a+b'+i) with b' = b + x + 1, and N_j(h) negative binomial,
    P(N >= m) = I_z(m, r + kx + j) with z = h / (alpha + T + h) (regularised incomplete beta; stepped from
    one n to the next by ``_PhaseTails``). Terms fall monotonically in n; the sum stops when the geometric
    tail estimate is below rtol of the total."""
    r, alpha, a, b = _unpack(params)
    k = _check_k(k)
    x, t_x, T, h = _history(x, t_x, T, horizon)
    if (h < 0).any():
        raise ValueError("horizon must be >= 0")
    total = np.zeros_like(x)
    rows = np.flatnonzero(h > 0)  # the rows still summing, and their state below
    log_terms, _ = _alive_terms(r + k * x[rows], (T - t_x)[rows], (alpha + T)[rows], k)
    w = np.exp(log_terms - np.logaddexp.reduce(log_terms, axis=1, keepdims=True))
    z = (h / (alpha + T + h))[rows, None]
    tails = _PhaseTails(r + k * x[rows, None] + np.arange(k)[None, :], z, k)
    b_post, sums = (b + x + 1)[rows], np.zeros(len(rows))
    c, last = np.ones(len(rows)), np.full(len(rows), np.nan)
    floor_ratio = z[:, 0] ** k  # the terms' asymptotic ratio: the tail estimate never uses less
    finished = np.zeros(len(rows), dtype=bool)  # converged; dropped together once they are a quarter
    for n in range(1, max_terms + 1):
        if rows.size == 0:
            break
        term = c * (w * np.maximum(tails.tail, 0.0)).sum(axis=1)
        sums += term  # a finished row's terms only add what the tolerance let go
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.maximum(term / last, floor_ratio)  # nan on the first term
        last = term
        c *= (b_post + n - 1) / (a + b_post + n - 1)
        finished |= (term == 0) | ((ratio < 1) & (term * ratio < rtol * (1 - ratio) * sums))
        if finished.sum() >= max(1, len(rows) // 4):  # copying the state every term cost as much as the sum
            total[rows[finished]] = sums[finished]
            keep = np.flatnonzero(~finished)
            rows, w, b_post, sums, c, last, floor_ratio, finished = (
                v[keep] for v in (rows, w, b_post, sums, c, last, floor_ratio, finished)
            )
            tails.keep(keep)
        if rows.size:
            tails.advance()
    else:
        raise RuntimeError(f"expected_purchases: series not converged after {max_terms} terms")
    return total * p_alive(params, x, t_x, T, k)


def simulate(
    n: int,
    params: Params,
    k: int,
    T_cal: ArrayLike,
    T_star: float,
    seed: int | np.random.Generator | None = None,
    block: int = 32,
    max_purchases: int = 100_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw n customers from the model (BTYDplus ``xbgcnbd.GenerateData``, dropout_at_zero = TRUE).

    Returns (x, t_x, T, litt, x_star): calibration statistics at each customer's age T = T_cal (scalar or per
    customer) and the repeat purchases in (T, T + T_star]. Gaps are drawn ``block`` at a time for the
    customers still buying (no per-customer loop); a customer still buying after ``max_purchases`` raises."""
    r, alpha, a, b = _unpack(params)
    k = _check_k(k)
    rng = np.random.default_rng(seed)
    T = np.broadcast_to(np.asarray(T_cal, dtype="float64"), (n,)).copy()
    end = T + T_star
    lam = np.maximum(rng.gamma(r, 1.0 / alpha, n), 1e-300)
    p = np.maximum(rng.beta(a, b, n), 1e-12)
    repeats = rng.geometric(p) - 1  # purchases survived: (1-p)^m p, dropout possible at time 0
    x, t_x, litt, x_star, clock = (np.zeros(n) for _ in range(5))
    made = np.zeros(n, dtype="int64")
    active = np.flatnonzero(repeats > 0)
    while active.size:
        if made[active].max() >= max_purchases:
            raise ValueError(f"a customer made over max_purchases={max_purchases} purchases")
        with np.errstate(over="ignore"):
            gaps = rng.gamma(k, 1.0, (active.size, block)) / lam[active, None]
        times = clock[active, None] + np.cumsum(gaps, axis=1)
        real = made[active, None] + np.arange(1, block + 1) <= repeats[active, None]
        in_cal = real & (times <= T[active, None])
        x[active] += in_cal.sum(axis=1)
        litt[active] += np.where(in_cal, np.log(gaps), 0.0).sum(axis=1)
        t_x[active] = np.maximum(t_x[active], np.where(in_cal, times, 0.0).max(axis=1))
        x_star[active] += (real & (times > T[active, None]) & (times <= end[active, None])).sum(axis=1)
        clock[active], made[active] = times[:, -1], made[active] + block
        active = active[(made[active] < repeats[active]) & (clock[active] <= end[active])]
    return x, t_x, T, litt, x_star
