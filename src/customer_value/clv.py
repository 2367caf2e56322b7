"""BTYD purchases (BG/NBD, MBG/NBD, Pareto/NBD) x Gamma-Gamma spend: lifetime value and churn propensity.

The only module that imports ``lifetimes``. lifetimes is fed aligned 1-D float64 numpy arrays built in
one place (:func:`model_inputs`) because some of its helpers misbehave with pandas inputs on pandas 3.

Units: fitted parameters are in the model's time unit (``time_unit_days`` days, weeks by default);
horizons are given in days and converted here. ``discount_rate`` is an **annual** rate, applied at the end
of each step of ``discount_step_days`` days (default 365.25 / 12, an average calendar month).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import ConvergenceError
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

from customer_value.btyd_likelihoods import FitFailed, Patterns, fit_bgnbd, fit_gamma_gamma, unique_patterns
from customer_value.errors import ModelFitError, NotEnoughDataError

# Scoring tables give no next-purchase date beyond a century: the wait then means "not expected".
NO_DATE_BEYOND_DAYS = 36_525
PREDICTION_COLUMNS = [
    "p_alive",
    "churn_probability",
    "purchase_probability",
    "expected_purchases",
    "expected_order_value",
    "expected_revenue",
    "clv",
    "next_purchase_days",
    "btyd_churn_probability",
    "btyd_expected_revenue",
]
BTYD_COLUMNS = PREDICTION_COLUMNS[:-2]
# Added by CLVModel.predict(..., intervals=True) and by the registered model (see ``uncertainty``).
INTERVAL_COLUMNS = [
    "expected_purchases_low",
    "expected_purchases_high",
    "clv_low",
    "clv_high",
    "purchases_low",
    "purchases_high",
]
BTYD_INPUT_COLUMNS = ["frequency", "recency_days", "T_days", "monetary_value"]
INPUT_COLUMNS = [*BTYD_INPUT_COLUMNS, "mean_order_value"]  # the registered model's input (value layer)
DAYS_PER_YEAR = 365.25
DEFAULT_FALLBACK_PENALIZERS = (0.001, 0.01, 0.1)


class StableParetoNBDFitter(ParetoNBDFitter):
    """lifetimes' Pareto/NBD with log(A_0) evaluated without cancellation.

    lifetimes computes log(A_0) = log(F1 / q1^k - F2 / q2^k) (Fader & Hardie's note 9, eq. 19-20) with a
    signed logsumexp, which returns NaN when the two terms are equal: a customer whose last purchase is on
    the last day (t_x = T, A_0 = 0 exactly). On CDNOW's full history that is customer 14048 (170 repeat
    purchases), whose NaN likelihood broke both the refit and every prediction. Here
    log(A_0) = log(F1) - k log(q1) + log1p(-(F2 / F1)(q1 / q2)^k), whose last term is -inf when t_x = T;
    the likelihood then reduces to its first term, as it should.

    The fit is lifetimes' Nelder-Mead from a fixed start: lifetimes draws the start from the *global*
    NumPy generator, so on a short window whose likelihood has a ridge (s, beta -> infinity) the end point,
    and minutes of hyp2f1, depended on whatever had run before (a CI run failed on it). A run that stops
    without converging raises instead of returning its last simplex. Everything else is lifetimes' code.
    """

    def _fit(  # noqa: ANN202 (lifetimes' signature)
        self,
        minimizing_function_args: tuple,
        iterative_fitting: int,
        initial_params: np.ndarray | None,
        params_size: int,
        disp: bool,
        tol: float = 1e-6,
        fit_method: str = "Nelder-Mead",
        maxiter: int = 2000,
        **kwargs: object,
    ):
        start = np.ones(params_size) if initial_params is None else np.asarray(initial_params)
        output = minimize(
            self._negative_log_likelihood,
            x0=start,
            args=minimizing_function_args,
            method=fit_method,
            tol=tol,
            options={"disp": disp, "maxiter": maxiter, **kwargs},
        )
        if not output.success:
            raise ConvergenceError(f"Pareto/NBD: {output.message}")
        return output.x, output.fun

    @staticmethod
    def _log_A_0(params, freq, recency, age):  # noqa: ANN001, ANN205 (lifetimes' signature)
        r, alpha, s, beta = params
        if alpha < beta:
            low, high, t = alpha, beta, r + freq
        else:
            low, high, t = beta, alpha, s + 1
        k = r + s + freq
        q_1, q_2 = high + recency, high + age
        log_f1 = np.log(hyp2f1(k, t, k + 1.0, (high - low) / q_1))
        log_f2 = np.log(hyp2f1(k, t, k + 1.0, (high - low) / q_2))
        ratio = np.exp(np.minimum(log_f2 - log_f1 + k * (np.log(q_1) - np.log(q_2)), 0.0))
        with np.errstate(divide="ignore"):
            return log_f1 - k * np.log(q_1) + np.log1p(-ratio)

    @staticmethod
    def _conditional_log_likelihood(params, freq, rec, T):  # noqa: ANN001, ANN205
        r, alpha, s, beta = params
        x = freq
        r_s_x = r + s + x
        a_1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
        log_a_0 = StableParetoNBDFitter._log_A_0(params, x, rec, T)
        a_2 = np.logaddexp(
            -(r + x) * np.log(alpha + T) - s * np.log(beta + T), np.log(s) + log_a_0 - np.log(r_s_x)
        )
        return a_1 + a_2

    @staticmethod
    def _negative_log_likelihood(params, freq, rec, T, weights, penalizer_coef):  # noqa: ANN001, ANN205
        if np.any(np.asarray(params) <= 0.0):
            return np.inf
        log_likelihood = StableParetoNBDFitter._conditional_log_likelihood(params, freq, rec, T)
        penalizer_term = penalizer_coef * sum(np.asarray(params) ** 2)
        value = -(weights * log_likelihood).sum() / weights.mean() + penalizer_term
        # hyp2f1 overflows far out on the (s, beta) ridge; NaN would steer Nelder-Mead there, inf repels it.
        return value if np.isfinite(value) else np.inf


@dataclass(frozen=True)
class Family:
    """A BTYD purchase model from lifetimes: its fitter and parameter names."""

    label: str
    fitter: type
    params: tuple[str, ...]


FAMILIES = {
    "bgnbd": Family("BG/NBD", BetaGeoFitter, ("r", "alpha", "a", "b")),
    "mbgnbd": Family("MBG/NBD", ModifiedBetaGeoFitter, ("r", "alpha", "a", "b")),
    "pareto_nbd": Family("Pareto/NBD", StableParetoNBDFitter, ("r", "alpha", "s", "beta")),
}
SPEND_PARAMS = ("p", "q", "v")


@dataclass(frozen=True)
class CLVParams:
    """Fitted parameters: the purchase model's (rates per ``time_unit_days`` days) and Gamma-Gamma's."""

    family: str
    purchase: dict[str, float]
    spend: dict[str, float]
    time_unit_days: float
    # Covariance of the log-parameters (purchase then spend, in FAMILIES/SPEND_PARAMS order); None = unknown
    log_covariance: list[list[float]] | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> CLVParams:
        """Also reads the first release's flat BG/NBD form (r, alpha, a, b, p, q, v, time_unit_days)."""
        if "family" not in values:
            return cls(
                "bgnbd",
                {k: values[k] for k in FAMILIES["bgnbd"].params},
                {k: values[k] for k in SPEND_PARAMS},
                values["time_unit_days"],
            )
        return cls(**values)

    def fitted(self) -> dict[str, float]:
        """All model parameters by name (r, alpha, a, b or s, beta; p, q, v), as logged to MLflow."""
        return self.purchase | self.spend


@dataclass(frozen=True)
class ModelInputs:
    """Aligned float64 arrays in model units, the only form lifetimes ever sees."""

    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray


def model_inputs(features: pd.DataFrame, time_unit_days: float) -> ModelInputs:
    """Convert the day-based customer table to lifetimes' (x, t_x, T, m) in model units."""
    missing = [c for c in BTYD_INPUT_COLUMNS if c not in features.columns]
    if missing:
        raise ValueError(f"customer table lacks column(s) {missing}")
    as_array = {c: np.ascontiguousarray(features[c].to_numpy(dtype="float64")) for c in BTYD_INPUT_COLUMNS}
    return ModelInputs(
        frequency=as_array["frequency"],
        recency=as_array["recency_days"] / time_unit_days,
        T=as_array["T_days"] / time_unit_days,
        monetary_value=as_array["monetary_value"],
    )


@contextlib.contextmanager
def _quiet_lifetimes() -> Iterator[None]:
    """lifetimes prints the optimiser result on failure and warns on overflow: keep job output clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def purchase_patterns(inputs: ModelInputs) -> Patterns:
    """Distinct (x, t_x, T) histories with their counts: purchase fits, checks and covariance run on these."""
    return unique_patterns(inputs.frequency, inputs.recency, inputs.T)


def fit_purchase_model(
    inputs: ModelInputs, penalizer: float, family: str = "bgnbd", patterns: Patterns | None = None
) -> dict[str, float]:
    """Fit on the unique (x, t_x, T) patterns weighted by their counts (the same optimum, much faster).

    BG/NBD uses our analytic-gradient likelihood (``btyd_likelihoods``: lifetimes' objective, optimiser and
    start, several times faster); MBG/NBD and Pareto/NBD use lifetimes' fitters.
    """
    spec = FAMILIES[family]
    patterns = purchase_patterns(inputs) if patterns is None else patterns
    failed = ModelFitError(
        f"{spec.label} did not converge on {len(inputs.frequency):,} customers with penalizer {penalizer}"
    )
    if family == "bgnbd":
        try:
            params = fit_bgnbd(patterns, penalizer)
        except FitFailed:
            raise failed from None
    else:
        fitter = spec.fitter(penalizer_coef=penalizer)
        try:
            with _quiet_lifetimes():
                fitter.fit(
                    patterns.frequency,
                    patterns.recency,
                    patterns.T,
                    weights=patterns.weights,
                    tol=1e-8,  # lifetimes' Pareto/NBD default (1e-4) stops ~1e-3 short of the optimum
                )
        except (ConvergenceError, np.linalg.LinAlgError):
            raise failed from None
        params = {k: float(fitter.params_[k]) for k in spec.params}
    _require_finite(spec.label, params)
    return params


def fit_spend_model(inputs: ModelInputs, penalizer: float) -> dict[str, float]:
    """Gamma-Gamma on repeat buyers with positive mean repeat spend (it refuses zero spend).

    Our analytic-gradient likelihood (``btyd_likelihoods``), which reproduces lifetimes' GammaGammaFitter.
    """
    usable = spend_sample(inputs)
    if usable.sum() < 2:
        raise NotEnoughDataError(
            f"Gamma-Gamma needs repeat buyers with positive spend; found {int(usable.sum())} of "
            f"{len(usable):,} customers in the calibration window"
        )
    try:
        params = fit_gamma_gamma(inputs.frequency[usable], inputs.monetary_value[usable], penalizer)
    except FitFailed:
        raise ModelFitError(
            f"Gamma-Gamma did not converge on {int(usable.sum()):,} repeat buyers with penalizer {penalizer}"
        ) from None
    _require_finite("Gamma-Gamma", params)
    if params["q"] <= 1:
        raise ModelFitError(f"Gamma-Gamma fitted q={params['q']:.3f} <= 1: expected spend is undefined")
    return params


def spend_sample(inputs: ModelInputs) -> np.ndarray:
    """Customers Gamma-Gamma learns from: repeat buyers with positive mean repeat spend."""
    return (inputs.frequency > 0) & (inputs.monetary_value > 0)


def spend_frequency_correlation(inputs: ModelInputs) -> float:
    """Pearson correlation of frequency and mean spend among repeat buyers; Gamma-Gamma assumes ~0."""
    usable = spend_sample(inputs)
    if (
        usable.sum() < 3
        or np.ptp(inputs.frequency[usable]) == 0
        or np.ptp(inputs.monetary_value[usable]) == 0
    ):
        return float("nan")
    return float(np.corrcoef(inputs.frequency[usable], inputs.monetary_value[usable])[0, 1])


def purchase_log_likelihood(family: str, params: dict[str, float], x, t_x, T, weights) -> float:
    """Total (weighted) log-likelihood of a purchase model at ``params`` (model units), unpenalised."""
    spec = FAMILIES[family]
    values = np.array([params[k] for k in spec.params], dtype="float64")
    with _quiet_lifetimes():
        if family == "pareto_nbd":  # lifetimes' Pareto/NBD likelihood takes natural parameters
            return float(
                np.sum(weights * StableParetoNBDFitter._conditional_log_likelihood(values, x, t_x, T))
            )
        mean_nll = spec.fitter._negative_log_likelihood(np.log(values), x, t_x, T, weights, 0.0)
    return float(-mean_nll * np.sum(weights))


def _require_finite(model: str, params: dict[str, float]) -> None:
    bad = {k: v for k, v in params.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ModelFitError(f"{model} produced non-finite or non-positive parameters {bad}")


def _fitter(kind: type, params: dict[str, float]) -> object:
    fitter = kind()
    fitter.params_ = pd.Series(params)
    return fitter


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
        fitter = _fitter(StableParetoNBDFitter, params.purchase)
        with _quiet_lifetimes():
            return np.clip(
                fitter.conditional_probability_of_n_purchases_up_to_time(0, horizon, x, t_x, T), 0, 1
            )
    r, alpha = params.purchase["r"], params.purchase["alpha"]
    no_purchase_if_alive = np.exp(-(r + x) * np.log1p(horizon / (alpha + T)))
    return 1.0 - p_alive * (1.0 - no_purchase_if_alive)


def expected_repeat_purchases(params: CLVParams, age_days: np.ndarray) -> np.ndarray:
    """Unconditional expected repeat purchases of a new customer by each age (days): the tracking curve."""
    fitter = _fitter(FAMILIES[params.family].fitter, params.purchase)
    ages = np.asarray(age_days, dtype="float64") / params.time_unit_days
    with _quiet_lifetimes():
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
        fitter = _fitter(FAMILIES[params.family].fitter, params.purchase)
        with _quiet_lifetimes():
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
    """Columns of BTYD_COLUMNS as one float64 matrix; asserts every value is finite."""
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    purchases = _fitter(FAMILIES[params.family].fitter, params.purchase)
    spend = _fitter(GammaGammaFitter, params.spend)
    unit = params.time_unit_days
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T

    with _quiet_lifetimes():
        p_alive = np.asarray(purchases.conditional_probability_alive(x, t_x, T), dtype="float64")
    churn = churn_probability(params, inputs, horizon_days / unit, p_alive)
    expected_value = spend.conditional_expected_average_profit(x, inputs.monetary_value)

    # Discounted value: purchases expected in each step, discounted to today at the step's end.
    n_steps = max(1, math.ceil(horizon_days / discount_step_days - 1e-9))
    step_ends = np.minimum(np.arange(1, n_steps + 1) * discount_step_days, horizon_days)
    factors = 1.0 / (1.0 + discount_rate) ** (step_ends / DAYS_PER_YEAR)
    expected_purchases, discounted = purchases_and_discounted(params, inputs, step_ends / unit, factors)
    columns = [
        p_alive,
        churn,
        1.0 - churn,
        expected_purchases,
        expected_value,
        expected_purchases * expected_value,
        discounted * expected_value,
        median_days_to_next_purchase(params, inputs),
    ]
    out = np.empty((len(x), len(columns)), dtype="float64", order="F")  # column-major: cheap to fill
    for index, column in enumerate(columns):
        out[:, index] = column
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise ModelFitError(f"CLV predictions are not finite for {bad:,} of {len(x):,} customers")
    return out
