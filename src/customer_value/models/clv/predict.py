"""CLV predictions from fitted parameters: P(alive), churn within a horizon, expected (discounted) purchases
and value, the median wait to the next purchase, and the repeat-purchase tracking curve.

Formulas are lifetimes' own (called, or rewritten with its arithmetic where evaluating them per distinct
history is much faster); MBG/CNBD-k's, which lifetimes lacks, are ``cnbd_family``'s. Fitting lives in
``btyd``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from lifetimes import GammaGammaFitter
from scipy.special import expit, gammaln, hyp2f1

from customer_value.errors import ModelFitError
from customer_value.models.clv import cnbd_family
from customer_value.models.clv.btyd import (
    DAYS_PER_YEAR,
    FAMILIES,
    CLVParams,
    ModelInputs,
    lifetimes_fitter,
    quiet_lifetimes,
)
from customer_value.models.clv.covariates import codes_all_distinct, customer_values, row_codes
from customer_value.models.clv.pareto_likelihood import per_customer
from customer_value.threads import row_slices

TRACKING_DESIGN_ROWS = 200  # distinct covariate rows averaged for the unconditional tracking curve


def churn_probability(
    params: CLVParams,
    inputs: ModelInputs,
    horizon: float,
    p_alive: np.ndarray,
    values: dict[str, float | np.ndarray] | None = None,
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | x, t_x, T); ``horizon`` in model units.

    BG/NBD and MBG/NBD: a customer alive at T buys with rate lambda and can only drop out right after a
    purchase, so no purchase in the window means exp(-lambda * h); lambda's posterior given alive is
    Gamma(r + x, alpha + T). Hence P(none) = 1 - P(alive) * (1 - ((alpha + T) / (alpha + T + h))^(r + x)).
    Pareto/NBD: dropout can come at any time. Seeing (x, t_x) and no purchase in (T, T + h] is the same
    event as the history (x, t_x, T + h), so P(none) = L(x, t_x, T + h) / L(x, t_x, T) (equal to lifetimes'
    conditional P(X(T, T+h) = 0), Fader & Hardie's note 28, whose hyp2f1 fails far out on the likelihood's
    (s, beta) ridge). MBG/CNBD-k: the same likelihood ratio (its Erlang gaps make the wait since the last
    purchase informative, so P(alive) alone does not give it). Unlike 1 - P(alive), none is 0 for every
    one-time buyer.
    """
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    values = params.customer_values(inputs) if values is None else values
    if params.family == "mbgcnbd":
        return cnbd_family.no_purchase(values, x, t_x, T, horizon)
    if params.family == "pareto_nbd":
        later = per_customer("log_likelihoods", values, x, t_x, T + horizon)
        now = per_customer("log_likelihoods", values, x, t_x, T)
        return np.clip(np.exp(later - now), 0, 1)
    r, alpha = values["r"], values["alpha"]
    no_purchase_if_alive = np.exp(-(r + x) * np.log1p(horizon / (alpha + T)))
    return 1.0 - p_alive * (1.0 - no_purchase_if_alive)


def probability_alive(
    params: CLVParams, inputs: ModelInputs, values: dict[str, float | np.ndarray] | None = None
) -> np.ndarray:
    """P(alive at T | x, t_x, T): lifetimes' expressions (BG/NBD: Fader, Hardie & Lee's note 021; MBG/NBD:
    Batislam et al. 2007, eq. 5), written out so each customer may carry its own parameters; MBG/CNBD-k:
    BTYDplus's xbgcnbd.PAlive (``cnbd_likelihood``). ``values``: ``params.customer_values(inputs)``, if
    already computed (likewise in the functions below)."""
    values = params.customer_values(inputs) if values is None else values
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    if params.family == "mbgcnbd":
        return cnbd_family.probability_alive(values, x, t_x, T)
    if params.family == "pareto_nbd":
        return per_customer("p_alive", values, x, t_x, T)
    r, alpha, a, b = (values[k] for k in ("r", "alpha", "a", "b"))
    if params.family == "mbgnbd":
        return np.atleast_1d(1.0 / (1 + (a / (b + x)) * ((alpha + T) / (alpha + t_x)) ** (r + x)))
    log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.atleast_1d(np.where(x == 0, 1.0, expit(-log_div)))


def expected_repeat_purchases(
    params: CLVParams, age_days: np.ndarray, design: np.ndarray | None = None
) -> np.ndarray:
    """Unconditional expected repeat purchases of a new customer by each age (days): the tracking curve.

    With covariates, the mean of the curves of the base's customers (``design``: their design rows; at most
    ``TRACKING_DESIGN_ROWS`` distinct rows, a seeded sample beyond that), each with its own parameters.
    MBG/CNBD-k (no covariates): the exact conditional expectation from the empty history
    (``cnbd_family.tracking_curve``)."""
    ages = np.asarray(age_days, dtype="float64") / params.time_unit_days
    if params.family == "mbgcnbd":
        return np.where(ages > 0, cnbd_family.tracking_curve(params.purchase, ages), 0.0)
    if params.covariates is None or design is None:
        rows, weights = [params.purchase], np.ones(1)
    else:
        distinct, counts = np.unique(design, axis=0, return_counts=True)
        if len(distinct) > TRACKING_DESIGN_ROWS:
            picked = np.random.default_rng(0).choice(len(design), TRACKING_DESIGN_ROWS, replace=False)
            distinct, counts = np.unique(design[picked], axis=0, return_counts=True)
        values = customer_values(params.family, params.purchase, params.covariates, distinct)
        rows = [
            {k: float(np.broadcast_to(v, counts.shape)[i]) for k, v in values.items()}
            for i in range(len(counts))
        ]
        weights = counts / counts.sum()
    curve = np.zeros_like(ages)
    for row, weight in zip(rows, weights, strict=True):
        fitter = lifetimes_fitter(FAMILIES[params.family].fitter, row)
        with quiet_lifetimes():
            values = fitter.expected_number_of_purchases_up_to_time(np.maximum(ages, 0.0))
        curve += weight * np.asarray(values, dtype="float64")
    return np.where(ages > 0, curve, 0.0)


def median_days_to_next_purchase(
    params: CLVParams, inputs: ModelInputs, values: dict[str, float | np.ndarray] | None = None
) -> np.ndarray:
    """Median wait from T to the next purchase for a customer who stays active, in days.

    Given active, lambda ~ Gamma(r + x, alpha + T) in BG/NBD, MBG/NBD and Pareto/NBD, so
    P(no purchase by t) = ((alpha + T) / (alpha + T + t))^(r + x) = 1/2 at t = (alpha + T)(2^(1/(r+x)) - 1).
    MBG/CNBD-k's wait is a mixture over the Erlang phases done since the last purchase, solved numerically
    (``cnbd_family.median_wait``; its closed form at k = 1 is this one).
    """
    values = params.customer_values(inputs) if values is None else values
    if params.family == "mbgcnbd":
        wait = cnbd_family.median_wait(values, inputs.frequency, inputs.recency, inputs.T)
        return wait * params.time_unit_days
    r, alpha = values["r"], values["alpha"]
    return (alpha + inputs.T) * np.expm1(np.log(2.0) / (r + inputs.frequency)) * params.time_unit_days


def expected_purchases_by_time(params: CLVParams, inputs: ModelInputs, times: np.ndarray) -> list[np.ndarray]:
    """E[X(t) | x, t_x, T] for each t in ``times`` (model units), for every customer (see ``_by_time``)."""
    return list(_by_time(params, inputs, times))


def purchases_and_discounted(
    params: CLVParams,
    inputs: ModelInputs,
    times: np.ndarray,
    factors: np.ndarray,
    values: dict[str, float | np.ndarray] | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """E[X(t_n)] and sum_k (E[X(t_k)] - E[X(t_k-1)]) * factors_k, the purchases of each step discounted.

    The discounted sum is rewritten as sum_k E[X(t_k)] * (factors_k - factors_k+1) (summation by parts)
    and accumulated step by step, so memory does not grow with the number of steps.
    """
    weights = factors - np.append(factors[1:], 0.0)
    discounted, last = 0.0, None
    for weight, expected in zip(weights, _by_time(params, inputs, times, values, strict), strict=True):
        discounted = discounted + weight * expected
        last = expected
    return last, discounted


def _by_time(
    params: CLVParams,
    inputs: ModelInputs,
    times: np.ndarray,
    values: dict[str, float | np.ndarray] | None = None,
    strict: bool = False,
) -> Iterator[np.ndarray]:
    """E[X(t) | x, t_x, T] for each t in ``times``, one array of customers at a time. ``strict`` (a fit's
    acceptance check): a ModelFitError where BG/NBD's hypergeometric term is negative (see below).

    Each family's time-independent part is computed once, not per t (lifetimes' arithmetic, so the values
    are lifetimes' own, tested per family; except where its BG/NBD formula cancels or is undefined: the
    ridge series and the sign of 2F1 below):
    - BG/NBD and MBG/NBD (Fader, Hardie & Lee 2005, eq. 10; Batislam et al. 2007): the hypergeometric term
      depends on (x, T, t) only, so it is evaluated once per distinct (x, T) pair (thousands, not a million
      customers), and the recency term once per customer.
    - Pareto/NBD (Fader & Hardie's note 9, eq. 41): E[X(t)] = C(x, t_x, T) (1 - ((beta+T)/(beta+T+t))^(s-1))
      / (s - 1), so its likelihood (``pareto_likelihood``'s quadrature) is evaluated once, not at every step.
    - MBG/CNBD-k: the exact series of ``cnbd_likelihood.expected_purchases`` (cumulative, at each t), on the
      distinct (x, t_x, T) patterns (``cnbd_family.expected_by_time``); at k = 1 MBG/NBD's closed form
      (the same model; the series needs hundreds of terms at long horizons).
    """
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    values = params.customer_values(inputs) if values is None else values
    if params.family == "mbgcnbd" and values["k"] > 1:  # at k = 1 it is MBG/NBD: its closed form below
        yield from cnbd_family.expected_by_time(values, x, t_x, T, times)
        return
    if params.family == "pareto_nbd":
        r, alpha, s, beta = (values[k] for k in ("r", "alpha", "s", "beta"))
        likelihood = per_customer("log_likelihoods", values, x, t_x, T)
        log_scale = (
            gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta) - (r + x) * np.log(alpha + T)
        )
        log_scale += np.log(r + x) - np.log(alpha + T) - likelihood  # s log(beta+T) cancels log(beta+T)
        scale = np.exp(log_scale + (1.0 - s) * np.log(beta + T)) / (s - 1.0)
        for t in times:
            yield scale * -np.expm1((s - 1.0) * (np.log(beta + T) - np.log(beta + T + t)))
        return
    r, alpha, a, b = (values[k] for k in ("r", "alpha", "a", "b"))
    if params.covariates is None or inputs.design is None:
        inverse, pairs = pd.factorize(x + 1j * T)
        px, pT = pairs.real, pairs.imag
        p_alpha, pa, pb = alpha, a, b
    else:  # each customer's own parameters: the pairs become (x, T, design row) triples
        codes = inputs.design_codes
        if codes is None:
            codes = row_codes(inputs.design)[0]
        if codes_all_distinct(codes):  # every customer its own design row, hence its own triple
            inverse, n_keys = np.arange(len(codes)), len(codes)
        else:
            inverse, n_keys = row_codes(codes, x, T)
        first = np.zeros(n_keys, dtype="int64")
        first[inverse] = np.arange(len(inverse))  # a customer of each triple (any: they share parameters)
        px, pT = x[first], T[first]
        p_alpha, pa, pb = (np.broadcast_to(v, x.shape)[first] for v in (alpha, a, b))
    odds = ((alpha + T) / (alpha + t_x)) ** (r + x)
    if params.family == "bgnbd":
        hyp_b, hyp_c = pb + px, pa + pb + px - 1
        denominator = 1 + (x > 0) * (a / (b + x - 1)) * odds
    else:  # mbgnbd, and mbgcnbd at k = 1
        hyp_b, hyp_c = pb + px + 1, pa + pb + px
        denominator = 1 + (a / (b + x)) * odds
    hyp_a = r + px
    first = hyp_c / (pa - 1)
    ridge_ratio = _ridge_ratio(hyp_a, pa - 1.0, hyp_c)
    with np.errstate(divide="ignore", invalid="ignore"), quiet_lifetimes():
        for t in times:
            z = t / (p_alpha + pT + t)
            log_rest = np.log((p_alpha + pT) / (p_alpha + t + pT))  # ln(1 - z)
            # (1 - z)^A 2F1(A, B; c; z) in logs (2F1 can be huge where (1 - z)^A underflows: a heavy buyer
            # at ten years), with 2F1's sign kept: it is negative where c < 0 (a + b < 1 at x = 0), where
            # lifetimes' logarithm gives NaN. Where 2F1 is positive these are lifetimes' own operations.
            hyp = _hyp2f1(hyp_a, hyp_b, hyp_c, z)
            product = np.sign(hyp) * np.exp(np.log(np.abs(hyp)) + hyp_a * log_rest)
            overflow = np.isinf(product)
            if overflow.any():  # Euler's transformation where the series overflows (lifetimes' BG/NBD)
                c, b_ = hyp_c[overflow], hyp_b[overflow]
                euler = _hyp2f1(c - hyp_a[overflow], c - b_, c, z[overflow])
                product[overflow] = np.sign(euler) * np.exp(
                    np.log(np.abs(euler)) + (c - b_) * log_rest[overflow]
                )
            if strict and bool((product < 0).any()):
                # lifetimes' arithmetic (the log of 2F1) gives NaN there, and fits there were refused as not
                # finite; the values are right now, but such a fit (a + b < 1: both Beta shapes small) was
                # never shipped, and refusing it keeps every earlier decision (measured: accepted, such
                # window fits moved CDNOW's churn choice at its earliest cut from AUC 0.728 to 0.699).
                bad = int((product < 0).sum())
                raise ModelFitError(
                    f"BG/NBD's hypergeometric term is negative for {bad:,} of {len(product):,} (x, T) pairs "
                    "(a + b < 1), where lifetimes' formula is undefined"
                )
            expected = np.broadcast_to(first * (1 - product), hyp_c.shape).copy()
            u = t / (p_alpha + pT)
            near = ridge_ratio * u <= 0.5
            if near.any():
                expected[near] = _no_dropout_ridge(
                    *(np.broadcast_to(v, near.shape)[near] for v in (hyp_a, pa - 1.0, hyp_c, u))
                )
            yield expected[inverse] / denominator


HYP2F1_ROWS_PER_THREAD = 100_000  # below this, starting threads costs more than splitting saves


def _hyp2f1(a: np.ndarray, b: np.ndarray, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """scipy's hyp2f1, its rows split over the available cores: with covariates every customer has its own
    arguments (a million at 1M customers; 0.74 s at a ten-year horizon, 0.41 s in two threads, measured).
    The ufunc releases the GIL and works element by element, so the values are the one call's, bit for bit."""
    a, b, c, z = np.broadcast_arrays(a, b, c, z)
    pieces = row_slices(z.size, HYP2F1_ROWS_PER_THREAD)
    if len(pieces) == 1 or z.ndim != 1:
        return hyp2f1(a, b, c, z)
    out = np.empty(z.shape)
    caller = np.geterr()  # NumPy's error state is per thread: the workers take the caller's
    callback = np.geterrcall()

    def piece(part: slice) -> None:
        with np.errstate(call=callback, **caller):
            hyp2f1(a[part], b[part], c[part], z[part], out=out[part])

    with ThreadPoolExecutor(len(pieces)) as pool:
        list(pool.map(piece, pieces))
    return out


RIDGE_TERMS = 64  # terms of the ridge series; used only where its ratio bound makes them converge fast


def _ridge_ratio(hyp_a: np.ndarray, d: float | np.ndarray, hyp_c: np.ndarray) -> np.ndarray:
    """A bound on the ridge series' term ratio per unit of u = t / (alpha + T): max(A, 1) (|d| + K) / c;
    infinite where c <= 0 (a + b < 1 at x = 0: no ridge there, and the bound needs c + k >= c > 0)."""
    with np.errstate(divide="ignore"):
        bound = np.maximum(hyp_a, 1.0) * (np.abs(d) + RIDGE_TERMS) / hyp_c
    return np.where(hyp_c > 0, bound, np.inf)


def _no_dropout_ridge(A: np.ndarray, d: np.ndarray, c: np.ndarray, u: np.ndarray) -> np.ndarray:
    """c / d * (1 - (1 - z)^A 2F1(A, B; c; z)) by a series that does not cancel where the closed form does.

    BG/NBD's (and MBG/NBD's) expectation is that form with d = a - 1 = c - B. Far out on the likelihood's
    no-dropout ridge (a -> 0 or b -> infinity: c of 1e5-1e9 against |d| of about 1) the bracket is 1 minus a
    number within 1e-9 of 1 and scipy's hyp2f1 is good to ~1e-8 there, so the product is noise: negative
    expectations were measured on a covariate fit. Pfaff's transformation gives (1 - z)^A 2F1(A, B; c; z)
    = 2F1(A, d; c; -u) with u = z / (1 - z) = t / (alpha + T); each of its terms but the first carries d,
    so c / d * (1 - 2F1) = c * sum_k>=1 (A)_k (d + 1)_(k-1) (-u)^(k-1) u / ((c)_k k!), no cancellation.
    Called where ``_ridge_ratio`` u is at most 1/2, so K terms leave a remainder under 2^-K.
    """
    term = A * u / c
    total = term.copy()
    for k in range(1, RIDGE_TERMS):
        term = term * -((A + k) * (d + k) * u / ((c + k) * (k + 1)))
        total += term
    return c * total


def predict_arrays(
    params: CLVParams,
    inputs: ModelInputs,
    horizon_days: float,
    discount_rate: float,
    discount_step_days: float,
    strict: bool = False,
) -> np.ndarray:
    """Columns of ``btyd_columns(params.has_spend)`` as one float64 matrix; asserts every value is finite
    (``strict``: also that lifetimes' formulas are defined, see ``_by_time``).

    A purchase-only model (no spend parameters) gives the purchase columns only: value columns are left
    out, never zero-filled."""
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    unit = params.time_unit_days
    x = inputs.frequency
    values = params.customer_values(inputs)  # once, not per column (a pass per covariate set each)
    with quiet_lifetimes():  # Pareto/NBD: quadrature (lifetimes' hyp2f1 fails far out on the ridge)
        p_alive = np.asarray(probability_alive(params, inputs, values), dtype="float64")
    churn = churn_probability(params, inputs, horizon_days / unit, p_alive, values)

    # Discounted value: purchases expected in each step, discounted to today at the step's end.
    n_steps = max(1, math.ceil(horizon_days / discount_step_days - 1e-9))
    step_ends = np.minimum(np.arange(1, n_steps + 1) * discount_step_days, horizon_days)
    factors = 1.0 / (1.0 + discount_rate) ** (step_ends / DAYS_PER_YEAR)
    expected_purchases, discounted = purchases_and_discounted(
        params, inputs, step_ends / unit, factors, values, strict
    )
    columns = [p_alive, churn, 1.0 - churn, expected_purchases]
    if params.spend is not None:
        spend = lifetimes_fitter(GammaGammaFitter, params.spend)
        expected_value = spend.conditional_expected_average_profit(x, inputs.monetary_value)
        columns += [expected_value, expected_purchases * expected_value, discounted * expected_value]
    columns.append(median_days_to_next_purchase(params, inputs, values))
    out = np.empty((len(x), len(columns)), dtype="float64", order="F")  # column-major: cheap to fill
    for index, column in enumerate(columns):
        out[:, index] = column
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise ModelFitError(f"CLV predictions are not finite for {bad:,} of {len(x):,} customers")
    return out
