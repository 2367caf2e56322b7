"""BTYD purchases (BG/NBD, MBG/NBD, Pareto/NBD, MBG/CNBD-k) x Gamma-Gamma spend: lifetime value and churn
propensity.

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
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import ConvergenceError
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

from customer_value.errors import ModelFitError, NotEnoughDataError
from customer_value.models.clv import cnbd_family
from customer_value.models.clv.cnbd_likelihood import FitError as CNBDFitError
from customer_value.models.clv.cnbd_likelihood import log_likelihood as cnbd_log_likelihood
from customer_value.models.clv.covariate_likelihoods import (
    CovariatePatterns,
    covariate_patterns,
    fit_with_covariates,
)
from customer_value.models.clv.covariates import (
    coefficient_design,
    coefficient_positions,
    customer_values,
    encode,
    row_codes,
)
from customer_value.models.clv.likelihoods import (
    FitFailed,
    Patterns,
    fit_bgnbd,
    fit_gamma_gamma,
    fit_gamma_gamma_with_mean,
    unique_patterns,
)
from customer_value.models.clv.pareto_likelihood import ParetoNBDLikelihood, fit_pareto_nbd

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
# A log without amounts (visits, logins) gives a purchase-only model: no spend model, no value outputs.
PURCHASE_INPUT_COLUMNS = ["frequency", "recency_days", "T_days"]
VALUE_COLUMNS = (
    "expected_order_value",
    "expected_revenue",
    "clv",
    "btyd_expected_revenue",
    "clv_low",
    "clv_high",
)


def input_columns(has_spend: bool) -> list[str]:
    """The registered model's input columns: a purchase-only model takes no monetary ones."""
    return list(INPUT_COLUMNS) if has_spend else list(PURCHASE_INPUT_COLUMNS)


def prediction_columns(has_spend: bool) -> list[str]:
    """PREDICTION_COLUMNS, without the value columns for a purchase-only model (left out, not zero)."""
    return [c for c in PREDICTION_COLUMNS if has_spend or c not in VALUE_COLUMNS]


def btyd_columns(has_spend: bool) -> list[str]:
    return [c for c in BTYD_COLUMNS if has_spend or c not in VALUE_COLUMNS]


def interval_columns(has_spend: bool) -> list[str]:
    return [c for c in INTERVAL_COLUMNS if has_spend or c not in VALUE_COLUMNS]


DAYS_PER_YEAR = 365.25
DEFAULT_FALLBACK_PENALIZERS = (0.001, 0.01, 0.1)
# Gamma-Gamma's penalty acts on p^2 + q^2 + v^2 and v is in currency units: on CDNOW 0.01 already pushes q
# below 1, so the spend ladder climbs in smaller steps.
DEFAULT_SPEND_FALLBACK_PENALIZERS = (0.0001, 0.001)
HEAVY_TAIL_SPEND = ("constrain_mean", "fail")  # what to do when Gamma-Gamma's q <= 1


class StableParetoNBDFitter(ParetoNBDFitter):
    """lifetimes' Pareto/NBD with log(A_0) evaluated without cancellation.

    lifetimes computes log(A_0) = log(F1 / q1^k - F2 / q2^k) (Fader & Hardie's note 9, eq. 19-20) with a
    signed logsumexp, which returns NaN when the two terms are equal: a customer whose last purchase is on
    the last day (t_x = T, A_0 = 0 exactly). On CDNOW's full history that is customer 14048 (170 repeat
    purchases), whose NaN likelihood broke both the refit and every prediction. Here
    log(A_0) = log(F1) - k log(q1) + log1p(-(F2 / F1)(q1 / q2)^k), whose last term is -inf when t_x = T;
    the likelihood then reduces to its first term, as it should.

    Since issue 14 the project fits and evaluates Pareto/NBD with ``pareto_likelihood`` (quadrature, no
    hyp2f1); this class stays as the hyp2f1 reference the tests compare against and as the carrier of
    lifetimes' unconditional formulas (``lifetimes_fitter``). Its fit is lifetimes' Nelder-Mead from a fixed
    start: lifetimes draws the start from the *global* NumPy generator, so on a short window whose
    likelihood has a ridge (s, beta -> infinity) the end point, and minutes of hyp2f1, depended on whatever
    had run before (a CI run failed on it). A run that stops without converging raises instead of
    returning its last simplex. Everything else is lifetimes' code.
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
    """A BTYD purchase model: its label, lifetimes fitter (None: the project's own formulas only) and the
    names of its estimated parameters (the covariance's order). ``litt``: the fit also needs the customers'
    log inter-purchase times (``litt_days``), which only MBG/CNBD-k does; it stores its integer k beside
    the estimated parameters (``cnbd_family``)."""

    label: str
    fitter: type | None
    params: tuple[str, ...]
    litt: bool = False


FAMILIES = {
    "bgnbd": Family("BG/NBD", BetaGeoFitter, ("r", "alpha", "a", "b")),
    "mbgnbd": Family("MBG/NBD", ModifiedBetaGeoFitter, ("r", "alpha", "a", "b")),
    "pareto_nbd": Family("Pareto/NBD", StableParetoNBDFitter, ("r", "alpha", "s", "beta")),
    "mbgcnbd": Family("MBG/CNBD-k", None, ("r", "alpha", "a", "b"), litt=True),
}
LITT_COLUMN = "litt_days"  # the customer table's sum of log inter-purchase days (``features``)
SPEND_PARAMS = ("p", "q", "v")


@dataclass(frozen=True)
class CLVParams:
    """Fitted parameters: the purchase model's (rates per ``time_unit_days`` days) and Gamma-Gamma's
    (``spend`` None: a purchase-only model, fitted on a log without amounts)."""

    family: str
    purchase: dict[str, float]
    spend: dict[str, float] | None
    time_unit_days: float
    # Covariance of the log-parameters (purchase then spend, in FAMILIES/SPEND_PARAMS order, then the
    # covariate coefficients as they are, in ``coefficients()`` order); None = unknown
    log_covariance: list[list[float]] | None = None
    # Time-invariant covariates (``covariates``): the design learned on the training base and the
    # coefficients by set and design column; None = a model without covariates.
    covariates: dict[str, object] | None = None

    @property
    def has_spend(self) -> bool:
        return self.spend is not None

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
        """The population parameters by name (r, alpha, a, b or s, beta; p, q, v), as logged to MLflow
        (covariate coefficients: ``coefficients``)."""
        return self.purchase | (self.spend or {})

    def coefficients(self) -> dict[str, float]:
        """The covariate coefficients as ``gamma_<set>.<design column>`` (none without covariates)."""
        if self.covariates is None:
            return {}
        sets = self.covariates["coefficients"]
        return {
            f"gamma_{name}.{column}": float(g)
            for name, gammas in sets.items()
            for column, g in gammas.items()
        }

    def customer_values(self, inputs: ModelInputs) -> dict[str, float | np.ndarray]:
        """Each customer's purchase parameters (arrays where covariates move them, else the scalars)."""
        return customer_values(self.family, self.purchase, self.covariates, inputs.design)


@dataclass(frozen=True)
class ModelInputs:
    """Aligned float64 arrays in model units, the only form lifetimes ever sees (``monetary_value`` None:
    the customer table has no amounts)."""

    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray | None
    design: np.ndarray | None = None  # customers x design columns (``covariates``); None = no covariates
    # each customer's design row numbered 0..K-1, every number used (``row_codes``); with ``design``
    design_codes: np.ndarray | None = None
    litt: np.ndarray | None = None  # sum of log inter-purchase times, model units (MBG/CNBD-k's fit only)


def model_inputs(
    features: pd.DataFrame,
    time_unit_days: float,
    spend: bool = True,
    covariates: dict[str, object] | None = None,
    litt: bool = False,
) -> ModelInputs:
    """Convert the day-based customer table to lifetimes' (x, t_x, T, m) in model units; ``spend=False``
    (a purchase-only model) neither needs nor reads ``monetary_value``; ``covariates`` (a fitted design)
    encodes the customer table's covariate columns; ``litt`` (MBG/CNBD-k's fit) also reads ``litt_days``:
    log(gap / unit) summed over x gaps is litt_days - x log(unit)."""
    needed = [*(BTYD_INPUT_COLUMNS if spend else PURCHASE_INPUT_COLUMNS), *([LITT_COLUMN] if litt else [])]
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise ValueError(f"customer table lacks column(s) {missing}")
    as_array = {c: np.ascontiguousarray(features[c].to_numpy(dtype="float64")) for c in needed}
    design = None if covariates is None else encode(covariates, features)[0]
    return ModelInputs(
        frequency=as_array["frequency"],
        recency=as_array["recency_days"] / time_unit_days,
        T=as_array["T_days"] / time_unit_days,
        monetary_value=as_array.get("monetary_value"),
        design=design,
        design_codes=None if design is None else row_codes(design)[0],
        litt=as_array[LITT_COLUMN] - as_array["frequency"] * math.log(time_unit_days) if litt else None,
    )


@contextlib.contextmanager
def quiet_lifetimes() -> Iterator[None]:
    """lifetimes prints the optimiser result on failure and warns on overflow: keep job output clean.

    sys.stdout and the warning filters are the process's, and the train runs a churn selection and the
    holdout's intervals in threads beside the rest: the first thread in silences them, the last one out
    restores them (nested per-thread redirections, as ``contextlib.redirect_stdout``, can restore them in
    the wrong order)."""
    with _QUIET.lock:
        if _QUIET.depth == 0:
            _QUIET.stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", RuntimeWarning)
            _QUIET.stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        _QUIET.depth += 1
    try:
        yield
    finally:
        with _QUIET.lock:
            _QUIET.depth -= 1
            if _QUIET.depth == 0:
                _QUIET.stack.close()


class _Quiet:
    """How many threads are inside ``quiet_lifetimes``, and how to undo what the first one did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.stack = contextlib.ExitStack()


_QUIET = _Quiet()


def purchase_patterns(inputs: ModelInputs) -> Patterns:
    """Distinct (x, t_x, T) histories with their counts: purchase fits, checks and covariance run on these."""
    return unique_patterns(inputs.frequency, inputs.recency, inputs.T)


def patterns_from_counts(counts: pd.DataFrame, time_unit_days: float) -> Patterns:
    """Day-based pattern counts (``frequency, recency_days, T_days, customers``: e.g. grouped in Spark)
    as the patterns ``purchase_patterns`` would give for those customers: same units, same order."""
    x = counts["frequency"].to_numpy(dtype="float64")
    t_x = counts["recency_days"].to_numpy(dtype="float64") / time_unit_days
    big_t = counts["T_days"].to_numpy(dtype="float64") / time_unit_days
    order = np.lexsort((big_t, t_x, x))
    weights = counts["customers"].to_numpy(dtype="float64")
    return Patterns(x[order], t_x[order], big_t[order], weights[order])


def litt_total(inputs: ModelInputs) -> float:
    """The customers' summed litt in model units: what MBG/CNBD-k's choice of k needs from them."""
    if inputs.litt is None:
        raise ModelFitError(f"MBG/CNBD-k needs the customer table's {LITT_COLUMN}")
    return float(inputs.litt.sum())


def counts_litt_total(counts: pd.DataFrame, time_unit_days: float) -> float:
    """``litt_total`` of the customers that day-based pattern counts describe (their ``litt_days`` summed
    per pattern, e.g. in Spark)."""
    if LITT_COLUMN not in counts.columns:
        raise ModelFitError(f"MBG/CNBD-k needs the pattern counts' summed {LITT_COLUMN}; they have none")
    repeats = float((counts["frequency"] * counts["customers"]).sum())
    return float(counts[LITT_COLUMN].sum()) - repeats * math.log(time_unit_days)


def fit_purchase_model(
    inputs: ModelInputs,
    penalizer: float,
    family: str = "bgnbd",
    patterns: Patterns | None = None,
    litt_sum: float | None = None,
) -> dict[str, float]:
    """Fit on the unique (x, t_x, T) patterns weighted by their counts (the same optimum, much faster).

    BG/NBD and Pareto/NBD use our analytic-gradient likelihoods (``likelihoods``,
    ``pareto_likelihood``: lifetimes' objectives from lifetimes' start, several times faster; Pareto/NBD
    with BFGS instead of lifetimes' Nelder-Mead); MBG/NBD uses lifetimes' fitter; MBG/CNBD-k
    ``cnbd_family.fit`` (k by maximum likelihood; ``litt_sum``: the summed litt of the customers the patterns
    count, by default ``litt_total(inputs)``).
    """
    spec = FAMILIES[family]
    patterns = purchase_patterns(inputs) if patterns is None else patterns
    customers = int(round(patterns.weights.sum()))
    failed = ModelFitError(
        f"{spec.label} did not converge on {customers:,} customers with penalizer {penalizer}"
    )
    if family in ("bgnbd", "pareto_nbd"):
        try:
            params = (fit_bgnbd if family == "bgnbd" else fit_pareto_nbd)(patterns, penalizer)
        except FitFailed:
            raise failed from None
    elif family == "mbgcnbd":
        try:
            litt_sum = litt_total(inputs) if litt_sum is None else litt_sum
            params = cnbd_family.fit(patterns, litt_sum, penalizer)
        except CNBDFitError:
            raise failed from None
    else:
        fitter = spec.fitter(penalizer_coef=penalizer)
        try:
            with quiet_lifetimes():
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


def fit_covariate_purchase_model(
    inputs: ModelInputs,
    penalizer: float,
    family: str,
    encoding: dict[str, object],
    patterns: CovariatePatterns | None = None,
    plain: Patterns | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The purchase model with covariates (``covariate_likelihoods``): population parameters and the
    coefficients by set and design column, fitted on distinct (x, t_x, T, design row) patterns
    (``patterns``, if already built from ``inputs``).

    The fit starts from the plain fit's optimum on the (x, t_x, T) patterns (``plain``, built if not
    given) with every coefficient 0 and BFGS's first inverse Hessian taken there (``fit_with_covariates``):
    the plain fit works on distinct histories, far fewer than customers when a numeric covariate makes
    every customer a pattern, and the covariate fit from there takes a fraction of the evaluations."""
    spec = FAMILIES[family]
    if patterns is None:
        patterns = covariate_patterns(
            inputs.frequency, inputs.recency, inputs.T, inputs.design, inputs.design_codes
        )
    plain_fit = fit_bgnbd if family == "bgnbd" else fit_pareto_nbd
    try:
        start = plain_fit(purchase_patterns(inputs) if plain is None else plain, penalizer)
    except (FitFailed, ValueError):  # the covariate fit then starts where the plain one does
        start = None
    sets = coefficient_design(family, encoding)
    positions = coefficient_positions(family, encoding)
    try:
        params, gammas = fit_with_covariates(family, patterns, positions, penalizer, start)
    except FitFailed:
        raise ModelFitError(
            f"{spec.label} with covariates did not converge on {len(inputs.frequency):,} customers with "
            f"penalizer {penalizer}"
        ) from None
    _require_finite(spec.label, params)
    if not np.isfinite(gammas).all():
        raise ModelFitError(f"{spec.label} with covariates produced non-finite coefficients")
    coefficients, start = {}, 0
    for name, columns in sets.items():
        coefficients[name] = dict(zip(columns, gammas[start : start + len(columns)].tolist(), strict=True))
        start += len(columns)
    return params, coefficients


def fit_spend_model(inputs: ModelInputs, penalizer: float) -> dict[str, float]:
    """Gamma-Gamma on repeat buyers with positive mean repeat spend (it refuses zero spend).

    Our analytic-gradient likelihood (``likelihoods``), which reproduces lifetimes' GammaGammaFitter.
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
        raise SpendMeanUndefined(f"Gamma-Gamma fitted q={params['q']:.3f} <= 1: expected spend is undefined")
    return params


class SpendMeanUndefined(ModelFitError):
    """Gamma-Gamma's q <= 1: the spend tail is so heavy that the population mean spend is infinite."""


@dataclass(frozen=True)
class SpendAnchor:
    """The population mean spend a mean-constrained Gamma-Gamma fit is pinned to, and how it was formed."""

    mean: float  # repeat buyers' mean spend, each winsorised at ``cap``
    quantile: float
    cap: float
    capped: int  # repeat buyers whose mean spend was above the cap

    def describe(self, q: float) -> str:
        return (
            f"mean-constrained Gamma-Gamma (plain fit had q <= 1): q={q:.3f}, population mean spend "
            f"pinned to {self.mean:.4g} = repeat buyers' mean spend winsorised at the {self.quantile:g} "
            f"quantile ({self.cap:.4g}; {self.capped} capped)"
        )


def spend_anchor(inputs: ModelInputs, quantile: float) -> SpendAnchor:
    """The repeat buyers' mean spend, each winsorised at ``quantile`` so a few whales do not set it."""
    spend = inputs.monetary_value[spend_sample(inputs)]
    cap = float(np.quantile(spend, quantile))
    return SpendAnchor(float(np.minimum(spend, cap).mean()), quantile, cap, int((spend > cap).sum()))


def fit_spend_model_with_mean(inputs: ModelInputs, penalizer: float, anchor: SpendAnchor) -> dict[str, float]:
    """Gamma-Gamma's likelihood maximised subject to p v / (q - 1) = ``anchor.mean`` (hence q > 1).

    Why: a log with heavy-tailed spend (log-normal across customers, a few whales) fits q <= 1, where the
    model's expected spend is undefined; pinning the population mean to an observed one keeps every other
    part of the model (each customer's own mean shrunk towards the population's) and the spend fit finite.
    Each customer's own mean spend is not winsorised: a whale's expected spend stays a whale's.
    """
    usable = spend_sample(inputs)
    try:
        params = fit_gamma_gamma_with_mean(
            inputs.frequency[usable], inputs.monetary_value[usable], anchor.mean, penalizer
        )
    except FitFailed:
        raise ModelFitError(
            f"mean-constrained Gamma-Gamma did not converge on {int(usable.sum()):,} repeat buyers with "
            f"penalizer {penalizer}"
        ) from None
    _require_finite("mean-constrained Gamma-Gamma", params)
    return params


def spend_sample(inputs: ModelInputs) -> np.ndarray:
    """Customers Gamma-Gamma learns from: repeat buyers with positive mean repeat spend (none without
    amounts)."""
    if inputs.monetary_value is None:
        return np.zeros(len(inputs.frequency), dtype=bool)
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
    """Total (weighted) log-likelihood of a purchase model at ``params`` (model units), unpenalised.

    MBG/CNBD-k's leaves out (k - 1) litt: constant in (r, alpha, a, b) at the stored k (see cnbd_family)."""
    spec = FAMILIES[family]
    values = np.array([params[k] for k in spec.params], dtype="float64")
    if family == "pareto_nbd":  # natural parameters
        return ParetoNBDLikelihood(x, t_x, T, weights).value_and_gradient(values)[0]
    if family == "mbgcnbd":
        k = int(params["k"])
        return float(np.sum(weights * cnbd_log_likelihood(values, x, t_x, T, np.zeros_like(x), k)))
    with quiet_lifetimes():
        mean_nll = spec.fitter._negative_log_likelihood(np.log(values), x, t_x, T, weights, 0.0)
    return float(-mean_nll * np.sum(weights))


def _require_finite(model: str, params: dict[str, float]) -> None:
    bad = {k: v for k, v in params.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ModelFitError(f"{model} produced non-finite or non-positive parameters {bad}")


def lifetimes_fitter(kind: type, params: dict[str, float]) -> object:
    """A lifetimes fitter carrying the given parameters, so its prediction formulas can be called."""
    fitter = kind()
    fitter.params_ = pd.Series(params)
    return fitter
