"""CLV predictions from fitted parameters: P(alive), churn within a horizon, expected (discounted) purchases
and value, the median wait to the next purchase, and the repeat-purchase tracking curve.

Formulas are lifetimes' own (called, or rewritten with its arithmetic where evaluating them per distinct
history is much faster); fitting lives in ``clv``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from lifetimes import GammaGammaFitter
from scipy.special import hyp2f1

from customer_value.clv import (
    DAYS_PER_YEAR,
    FAMILIES,
    CLVParams,
    ModelInputs,
    StableParetoNBDFitter,
    lifetimes_fitter,
    quiet_lifetimes,
)
from customer_value.errors import ModelFitError


def churn_probability(
    params: CLVParams, inputs: ModelInputs, horizon: float, p_alive: np.ndarray
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | x, t_x, T); ``horizon`` in model units.

    BG/NBD and MBG/NBD: a customer alive at T buys with rate lambda and can only drop out right after a
    purchase, so no purchase in the window means exp(-lambda * h); lambda's posterior given alive is
    Gamma(r + x, alpha + T). Hence P(none) = 1 - P(alive) * (1 - ((alpha + T) / (alpha + T + h))^(r + x)).
    Pareto/NBD: dropout can come at any time, so lifetimes' conditional P(X(T, T+h) = 0) (Fader & Hardie's
    note 28) is used. Unlike 1 - P(alive), neither is 0 for every one-time buyer.
    """
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    if params.family == "pareto_nbd":
        fitter = lifetimes_fitter(StableParetoNBDFitter, params.purchase)
        with quiet_lifetimes():
            return np.clip(
                fitter.conditional_probability_of_n_purchases_up_to_time(0, horizon, x, t_x, T), 0, 1
            )
    r, alpha = params.purchase["r"], params.purchase["alpha"]
    no_purchase_if_alive = np.exp(-(r + x) * np.log1p(horizon / (alpha + T)))
    return 1.0 - p_alive * (1.0 - no_purchase_if_alive)


def expected_repeat_purchases(params: CLVParams, age_days: np.ndarray) -> np.ndarray:
    """Unconditional expected repeat purchases of a new customer by each age (days): the tracking curve."""
    fitter = lifetimes_fitter(FAMILIES[params.family].fitter, params.purchase)
    ages = np.asarray(age_days, dtype="float64") / params.time_unit_days
    with quiet_lifetimes():
        values = np.asarray(
            fitter.expected_number_of_purchases_up_to_time(np.maximum(ages, 0.0)), dtype="float64"
        )
    return np.where(ages > 0, values, 0.0)


def median_days_to_next_purchase(params: CLVParams, inputs: ModelInputs) -> np.ndarray:
    """Median wait from T to the next purchase for a customer who stays active, in days.

    Given active, lambda ~ Gamma(r + x, alpha + T) in every family here, so
    P(no purchase by t) = ((alpha + T) / (alpha + T + t))^(r + x) = 1/2 at t = (alpha + T)(2^(1/(r+x)) - 1).
    """
    r, alpha = params.purchase["r"], params.purchase["alpha"]
    return (alpha + inputs.T) * np.expm1(np.log(2.0) / (r + inputs.frequency)) * params.time_unit_days


def expected_purchases_by_time(params: CLVParams, inputs: ModelInputs, times: np.ndarray) -> list[np.ndarray]:
    """E[X(t) | x, t_x, T] for each t in ``times`` (model units), for every customer.

    BG/NBD (Fader, Hardie & Lee 2005, eq. 10, as lifetimes writes it): see ``_bgnbd_by_pair``. Other
    families call lifetimes per time.
    """
    if params.family != "bgnbd":
        x, t_x, T = inputs.frequency, inputs.recency, inputs.T
        fitter = lifetimes_fitter(FAMILIES[params.family].fitter, params.purchase)
        with quiet_lifetimes():
            return [
                np.asarray(
                    fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T), "float64"
                )
                for t in times
            ]
    by_pair, inverse, denominator = _bgnbd_by_pair(params, inputs, times)
    return [values[inverse] / denominator for values in by_pair]


def purchases_and_discounted(
    params: CLVParams, inputs: ModelInputs, times: np.ndarray, factors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """E[X(t_n)] and sum_k (E[X(t_k)] - E[X(t_k-1)]) * factors_k, the purchases of each step discounted.

    The discounted sum is rewritten as sum_k E[X(t_k)] * (factors_k - factors_k+1) (summation by parts),
    so for BG/NBD it is formed on the distinct (x, T) pairs and spread to customers once, not per step.
    """
    weights = factors - np.append(factors[1:], 0.0)
    if params.family != "bgnbd":
        by_time = expected_purchases_by_time(params, inputs, times)
        return by_time[-1], sum((w * values for w, values in zip(weights, by_time, strict=True)), start=0.0)
    by_pair, inverse, denominator = _bgnbd_by_pair(params, inputs, times)
    discounted = sum((w * values for w, values in zip(weights, by_pair, strict=True)), start=0.0)
    return by_pair[-1][inverse] / denominator, discounted[inverse] / denominator


def _bgnbd_by_pair(
    params: CLVParams, inputs: ModelInputs, times: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """BG/NBD's E[X(t)] as (numerator per distinct (x, T) pair for each t, pair of each customer, and the
    per-customer denominator): E[X(t)] = numerator[pair] / denominator.

    The hypergeometric term depends on (x, T, t) only, so it is evaluated once per distinct (x, T) pair
    (thousands, not a million customers; pairs found by hashing) and the recency term once per customer;
    the arithmetic is lifetimes' own, so the values are the same.
    """
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    r, alpha, a, b = (params.purchase[k] for k in ("r", "alpha", "a", "b"))
    inverse, pairs = pd.factorize(x + 1j * T)
    px, pT = pairs.real, pairs.imag
    denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    by_pair = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in times:
            _a, _b, _c, _z = r + px, b + px, a + b + px - 1, t / (alpha + pT + t)
            ln_hyp = np.log(hyp2f1(_a, _b, _c, _z))
            ln_hyp_alt = np.log(hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
            ln_hyp = np.where(np.isinf(ln_hyp), ln_hyp_alt, ln_hyp)
            first = (a + b + px - 1) / (a - 1)
            second = 1 - np.exp(ln_hyp + (r + px) * np.log((alpha + pT) / (alpha + t + pT)))
            by_pair.append(first * second)
    return by_pair, inverse, denominator


def predict_arrays(
    params: CLVParams,
    inputs: ModelInputs,
    horizon_days: float,
    discount_rate: float,
    discount_step_days: float,
) -> np.ndarray:
    """Columns of ``btyd_columns(params.has_spend)`` as one float64 matrix; asserts every value is finite.

    A purchase-only model (no spend parameters) gives the purchase columns only: value columns are left
    out, never zero-filled."""
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    purchases = lifetimes_fitter(FAMILIES[params.family].fitter, params.purchase)
    unit = params.time_unit_days
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T

    with quiet_lifetimes():
        p_alive = np.asarray(purchases.conditional_probability_alive(x, t_x, T), dtype="float64")
    churn = churn_probability(params, inputs, horizon_days / unit, p_alive)

    # Discounted value: purchases expected in each step, discounted to today at the step's end.
    n_steps = max(1, math.ceil(horizon_days / discount_step_days - 1e-9))
    step_ends = np.minimum(np.arange(1, n_steps + 1) * discount_step_days, horizon_days)
    factors = 1.0 / (1.0 + discount_rate) ** (step_ends / DAYS_PER_YEAR)
    expected_purchases, discounted = purchases_and_discounted(params, inputs, step_ends / unit, factors)
    columns = [p_alive, churn, 1.0 - churn, expected_purchases]
    if params.spend is not None:
        spend = lifetimes_fitter(GammaGammaFitter, params.spend)
        expected_value = spend.conditional_expected_average_profit(x, inputs.monetary_value)
        columns += [expected_value, expected_purchases * expected_value, discounted * expected_value]
    columns.append(median_days_to_next_purchase(params, inputs))
    out = np.empty((len(x), len(columns)), dtype="float64", order="F")  # column-major: cheap to fill
    for index, column in enumerate(columns):
        out[:, index] = column
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise ModelFitError(f"CLV predictions are not finite for {bad:,} of {len(x):,} customers")
    return out
