"""MBG/CNBD-k as a purchase-model family (``clv.family=mbgcnbd``): its fit, with k chosen by maximum
likelihood, and the predictions the project makes from any family, on top of ``cnbd_likelihood``.

k is the number of exponential phases in each inter-purchase time (Erlang-k gaps). It is unit-free: the
gaps of a customer who stays have coefficient of variation 1 / sqrt(k), so k = 1 is MBG/NBD (gaps as
irregular as a Poisson process's) and k = 4 means a gap's standard deviation is half its mean. It is chosen
at fit time by maximum likelihood over ``K_CANDIDATES`` and stored beside the parameters
(``CLVParams.purchase["k"]``); the covariance and the bootstrap draws hold it fixed.

Only the fit needs ``litt`` (the sum of log inter-purchase times): it enters the likelihood as
(k - 1) litt - x log((k - 1)!), a term free of (r, alpha, a, b). So at a fixed k the fit runs on the
distinct (x, t_x, T) patterns, and the choice of k needs only the customers' total litt. Every prediction
conditions on the history, where that term cancels from the posterior: predictions take (x, t_x, T) as the
other families' do, and the registered model's inputs are MBG/NBD's.

All arrays here are in model time units; ``purchase`` is ``{"r", "alpha", "a", "b", "k"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from scipy.special import betainc, betaincinv, betaln

from customer_value.errors import ModelFitError
from customer_value.models.clv import cnbd_likelihood as cnbd
from customer_value.models.clv.likelihoods import Patterns

K_CANDIDATES = range(1, 13)  # BTYDplus's xbgcnbd.EstimateParameters searches k = 1..12
MEDIAN_ITERATIONS = 100  # safeguarded Newton steps at most (a handful in practice)
MEDIAN_TOLERANCE = 1e-12  # relative, in log time
SERIES_CELLS = 4_000_000  # (pattern, time, phase) cells per expected-purchases series evaluation


def split_params(purchase: Mapping[str, float]) -> tuple[tuple[float, float, float, float], int]:
    """(r, alpha, a, b) and the integer k from a family's stored parameters."""
    return tuple(float(purchase[name]) for name in cnbd.PARAM_NAMES), int(purchase["k"])


def fit(patterns: Patterns, litt_total: float, penalizer: float) -> dict[str, float]:
    """Maximum-likelihood (r, alpha, a, b) at each k and the k whose likelihood is largest, as
    ``{"r", "alpha", "a", "b", "k"}`` (BTYDplus's search: stop once the likelihood fell twice in a row).

    ``litt_total``: the sum of litt over the customers the patterns count, in model units. The total
    log-likelihood is linear in each customer's litt with the same coefficient (k - 1), so spreading the
    total evenly over the patterns gives every k its exact total. Raises ``cnbd.FitError`` when no k fits.
    """
    if not np.isfinite(litt_total):
        raise ValueError(f"the customers' total litt must be finite, got {litt_total}")
    even = np.full(len(patterns.frequency), litt_total / float(patterns.weights.sum()))
    search = cnbd.fit_k(
        patterns.frequency,
        patterns.recency,
        patterns.T,
        even,
        K_CANDIDATES,
        weights=patterns.weights,
        penalizer=penalizer,
    )
    k = int(search["k"])
    return search["params"][k] | {"k": k}


def probability_alive(
    purchase: Mapping[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """P(alive at T | history) (BTYDplus's xbgcnbd.PAlive)."""
    params, k = split_params(purchase)
    return cnbd.p_alive(params, x, t_x, T, k)


def no_purchase(
    purchase: Mapping[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | history): L(x, t_x, T + h) / L(x, t_x, T), exact."""
    params, k = split_params(purchase)
    return cnbd.prob_no_purchase(params, x, t_x, T, k, horizon)


def expected_by_time(
    purchase: Mapping[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray, times: np.ndarray
) -> Iterator[np.ndarray]:
    """E[purchases in (T, T + t] | history] for each t in ``times``, one array of customers at a time.

    ``cnbd.expected_purchases`` (an exact series) on the distinct (x, t_x, T) patterns only, with as many
    times per call as keep the series' (pattern, time, phase) cells under ``SERIES_CELLS``. A series that
    does not converge (parameters far out, where the phase counts barely decay) is a ModelFitError, as a
    non-finite prediction is: the penalizer ladder retries, a bootstrap draw is left out."""
    params, k = split_params(purchase)
    first, inverse = distinct_rows(x, t_x, T)
    px, pt, pT = x[first], t_x[first], T[first]
    times = np.asarray(times, dtype="float64")
    block = max(1, SERIES_CELLS // (len(first) * k))
    for start in range(0, len(times), block):
        chunk = times[start : start + block]
        try:
            values = cnbd.expected_purchases(
                params, np.tile(px, len(chunk)), np.tile(pt, len(chunk)), np.tile(pT, len(chunk)), k,
                np.repeat(chunk, len(first)),
            )  # fmt: skip
        except RuntimeError as exc:
            raise ModelFitError(f"MBG/CNBD-{k} expected purchases: {exc}") from None
        for row in values.reshape(len(chunk), len(first)):
            yield row[inverse]


def median_wait(purchase: Mapping[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Median wait from T to the next purchase of a customer alive at T (who will buy again: dropout
    comes only right after a purchase), in model units.

    Given alive, j of the k phases are done since t_x with posterior weights w_j and lambda | j ~
    Gamma(s_j = r + kx + j, A = alpha + T); the next purchase needs m_j = k - j more phases, so
    P(none by t) = sum_j w_j I_q(s_j, m_j) with q = A / (A + t) (negative binomial phase counts). Solved
    for 1/2 in u = log(t / A) by Newton's method kept inside a bisection bracket, which starts between the
    components' own medians (a mixture's median lies between them; each by ``betaincinv``), on the
    distinct (x, t_x, T) patterns. At k = 1 it is MBG/NBD's closed form A (2^(1/(r+x)) - 1)."""
    params, k = split_params(purchase)
    first, inverse = distinct_rows(x, t_x, T)
    weights, shapes, rate = cnbd.alive_phase_posterior(params, x[first], t_x[first], T[first], k)
    remaining = (k - np.arange(k, dtype="float64"))[None, :]
    with np.errstate(divide="ignore"):
        q = betaincinv(shapes, remaining, 0.5)  # A / (A + t) at each component's median
        log_odds = np.log1p(-q) - np.log(q)  # u
    low, high = log_odds.min(axis=1), log_odds.max(axis=1)
    u = np.clip((weights * log_odds).sum(axis=1), low, high)
    log_beta = betaln(shapes, remaining)
    for _ in range(MEDIAN_ITERATIONS if k > 1 else 0):
        log_q = -np.logaddexp(0.0, u)[:, None]  # log(A / (A + t))
        excess = (weights * betainc(shapes, remaining, np.exp(log_q))).sum(axis=1) - 0.5
        density = (weights * np.exp(shapes * log_q + remaining * np.log1p(-np.exp(log_q)) - log_beta)).sum(1)
        low, high = np.where(excess > 0, u, low), np.where(excess > 0, high, u)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = u + excess / density  # P(none by t) falls at rate ``density`` in u
        inside = np.isfinite(newton) & (newton >= low) & (newton <= high)
        step = np.where(inside, newton, (low + high) / 2.0)
        converged = np.all(np.abs(step - u) <= MEDIAN_TOLERANCE * (1.0 + np.abs(u)))
        u = step
        if converged:
            break
    return (rate * np.exp(u))[inverse]


def tracking_curve(purchase: Mapping[str, float], ages: np.ndarray) -> np.ndarray:
    """Expected repeat purchases of a new customer by each age: the conditional expectation from the
    empty history (x = t_x = T = 0), where P(alive) = b / (a + b) is the dropout at time zero."""
    params, k = split_params(purchase)
    ages = np.maximum(np.asarray(ages, dtype="float64"), 0.0)
    return cnbd.expected_purchases(params, 0.0, 0.0, 0.0, k, ages).reshape(ages.shape)


def purchases_at_least(
    purchase: Mapping[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float
) -> Callable[[int], np.ndarray]:
    """n -> P(M >= n | history, alive) for every customer, M the purchases in (T, T + horizon] of a
    customer who never drops out: sum_j w_j P(NB_j >= n k - j), P(NB >= m) = I_z(m, s_j), z = h / (A + h).
    The uncertainty module stops M at a Beta-geometric dropout for the count's distribution."""
    params, k = split_params(purchase)
    weights, shapes, rate = cnbd.alive_phase_posterior(params, x, t_x, T, k)
    z = (horizon / (rate + horizon))[:, None]
    done = np.arange(k)[None, :]

    def at_least(n: int) -> np.ndarray:
        if n <= 0:
            return np.ones(len(rate))
        return (weights * betainc(n * k - done, shapes, z)).sum(axis=1)

    return at_least


def distinct_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row index per distinct combination of ``columns`` and each row's combination number: the
    predictions are evaluated once per distinct history, not once per customer."""
    key = np.zeros(len(columns[0]), dtype="int64")
    for column in columns:
        codes, uniques = pd.factorize(np.asarray(column))
        key, _ = pd.factorize(key * len(uniques) + codes)  # renumbered: stays below the row count
    first = np.empty(int(key.max()) + 1 if len(key) else 0, dtype="int64")
    first[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    return first, key
