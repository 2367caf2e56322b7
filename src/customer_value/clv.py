"""BG/NBD purchases x Gamma-Gamma spend: lifetime value and churn propensity.

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
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

from customer_value.errors import ModelFitError

PREDICTION_COLUMNS = [
    "p_alive",
    "churn_probability",
    "expected_purchases",
    "expected_order_value",
    "expected_revenue",
    "clv",
]
INPUT_COLUMNS = ["frequency", "recency_days", "T_days", "monetary_value"]
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class CLVParams:
    """Fitted parameters: BG/NBD (r, alpha, a, b) in ``time_unit_days`` units, Gamma-Gamma (p, q, v)."""

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float
    time_unit_days: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def fitted(self) -> dict[str, float]:
        """The seven model parameters (not the unit), as logged to MLflow."""
        return {k: v for k, v in asdict(self).items() if k != "time_unit_days"}


@dataclass(frozen=True)
class ModelInputs:
    """Aligned float64 arrays in model units, the only form lifetimes ever sees."""

    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray


def model_inputs(features: pd.DataFrame, time_unit_days: float) -> ModelInputs:
    """Convert the day-based customer table to lifetimes' (x, t_x, T, m) in model units."""
    missing = [c for c in INPUT_COLUMNS if c not in features.columns]
    if missing:
        raise ValueError(f"customer table lacks column(s) {missing}")
    as_array = {c: np.ascontiguousarray(features[c].to_numpy(dtype="float64")) for c in INPUT_COLUMNS}
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


def fit_purchase_model(inputs: ModelInputs, penalizer: float) -> dict[str, float]:
    """BG/NBD fitted on the unique (x, t_x, T) patterns weighted by their counts (same optimum)."""
    patterns = pd.DataFrame({"x": inputs.frequency, "t_x": inputs.recency, "T": inputs.T})
    counts = patterns.value_counts(sort=False).reset_index(name="weight")
    fitter = BetaGeoFitter(penalizer_coef=penalizer)
    try:
        with _quiet_lifetimes():
            fitter.fit(
                counts["x"].to_numpy(),
                counts["t_x"].to_numpy(),
                counts["T"].to_numpy(),
                weights=counts["weight"].to_numpy(),
            )
    except (ConvergenceError, np.linalg.LinAlgError):
        raise ModelFitError(
            f"BG/NBD did not converge on {len(inputs.frequency):,} customers with clv.penalizer={penalizer}; "
            "try a larger clv.penalizer"
        ) from None
    params = {k: float(fitter.params_[k]) for k in ("r", "alpha", "a", "b")}
    _require_finite("BG/NBD", params)
    return params


def fit_spend_model(inputs: ModelInputs, penalizer: float) -> dict[str, float]:
    """Gamma-Gamma on repeat buyers with positive mean repeat spend (it refuses zero spend)."""
    usable = (inputs.frequency > 0) & (inputs.monetary_value > 0)
    if usable.sum() < 2:
        raise ModelFitError(
            f"Gamma-Gamma needs repeat buyers with positive spend; found {int(usable.sum())} of "
            f"{len(usable):,} customers in the calibration window"
        )
    fitter = GammaGammaFitter(penalizer_coef=penalizer)
    try:
        with _quiet_lifetimes():
            fitter.fit(inputs.frequency[usable], inputs.monetary_value[usable])
    except (ConvergenceError, np.linalg.LinAlgError):
        raise ModelFitError(
            f"Gamma-Gamma did not converge on {int(usable.sum()):,} repeat buyers with "
            f"clv.penalizer={penalizer}; try a larger clv.penalizer"
        ) from None
    params = {k: float(fitter.params_[k]) for k in ("p", "q", "v")}
    _require_finite("Gamma-Gamma", params)
    if params["q"] <= 1:
        raise ModelFitError(f"Gamma-Gamma fitted q={params['q']:.3f} <= 1: expected spend is undefined")
    return params


def _require_finite(model: str, params: dict[str, float]) -> None:
    bad = {k: v for k, v in params.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ModelFitError(f"{model} produced non-finite or non-positive parameters {bad}")


class CLVModel:
    """BG/NBD + Gamma-Gamma as a scikit-learn-style estimator: ``fit`` returns self, state ends in ``_``."""

    def __init__(
        self,
        penalizer: float = 0.0,
        time_unit_days: float = 7.0,
        discount_rate: float = 0.10,
        discount_step_days: float = DAYS_PER_YEAR / 12,
    ) -> None:
        self.penalizer = penalizer
        self.time_unit_days = time_unit_days
        self.discount_rate = discount_rate
        self.discount_step_days = discount_step_days

    def fit(self, features: pd.DataFrame) -> CLVModel:
        inputs = model_inputs(features, self.time_unit_days)
        purchase = fit_purchase_model(inputs, self.penalizer)
        spend = fit_spend_model(inputs, self.penalizer)
        self.params_ = CLVParams(**purchase, **spend, time_unit_days=self.time_unit_days)
        self.n_customers_ = len(inputs.frequency)
        return self

    @classmethod
    def from_params(cls, params: CLVParams, discount_rate: float, discount_step_days: float) -> CLVModel:
        """A fitted model from stored parameters (used by the registered pyfunc model)."""
        model = cls(
            time_unit_days=params.time_unit_days,
            discount_rate=discount_rate,
            discount_step_days=discount_step_days,
        )
        model.params_ = params
        return model

    def predict(self, features: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
        """Per-customer outputs over the next ``horizon_days`` days after each customer's ``T``."""
        inputs = model_inputs(features, self.params_.time_unit_days)
        out = predict_arrays(self.params_, inputs, horizon_days, self.discount_rate, self.discount_step_days)
        return pd.DataFrame(out, index=features.index, columns=PREDICTION_COLUMNS)


def _purchase_fitter(params: CLVParams) -> BetaGeoFitter:
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series({k: getattr(params, k) for k in ("r", "alpha", "a", "b")})
    return fitter


def _spend_fitter(params: CLVParams) -> GammaGammaFitter:
    fitter = GammaGammaFitter()
    fitter.params_ = pd.Series({k: getattr(params, k) for k in ("p", "q", "v")})
    return fitter


def churn_probability(
    params: CLVParams, inputs: ModelInputs, horizon: float, p_alive: np.ndarray
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | x, t_x, T) under BG/NBD; ``horizon`` in model units.

    A customer who is alive at T buys with rate lambda and can only drop out right after a purchase, so
    no purchase in the window means exp(-lambda * h); lambda's posterior given alive is
    Gamma(r + x, alpha + T). Hence P(none) = 1 - P(alive) * (1 - ((alpha + T) / (alpha + T + h))^(r + x)).
    Unlike 1 - P(alive), this is not 0 for every one-time buyer.
    """
    no_purchase_if_alive = np.exp(
        -(params.r + inputs.frequency) * np.log1p(horizon / (params.alpha + inputs.T))
    )
    return 1.0 - p_alive * (1.0 - no_purchase_if_alive)


def predict_arrays(
    params: CLVParams,
    inputs: ModelInputs,
    horizon_days: float,
    discount_rate: float,
    discount_step_days: float,
) -> np.ndarray:
    """Columns of PREDICTION_COLUMNS as one float64 matrix; asserts every value is finite."""
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    purchases = _purchase_fitter(params)
    spend = _spend_fitter(params)
    unit = params.time_unit_days
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T

    p_alive = purchases.conditional_probability_alive(x, t_x, T)
    churn = churn_probability(params, inputs, horizon_days / unit, p_alive)
    expected_value = spend.conditional_expected_average_profit(x, inputs.monetary_value)

    # Discounted value: purchases expected in each step, discounted to today at the step's end.
    n_steps = max(1, math.ceil(horizon_days / discount_step_days - 1e-9))
    step_ends = np.minimum(np.arange(1, n_steps + 1) * discount_step_days, horizon_days)
    cumulative = np.zeros_like(x)
    discounted = np.zeros_like(x)
    for end_days in step_ends:  # a handful of vectorised steps, not a per-customer loop
        now = purchases.conditional_expected_number_of_purchases_up_to_time(end_days / unit, x, t_x, T)
        discounted += (now - cumulative) / (1.0 + discount_rate) ** (end_days / DAYS_PER_YEAR)
        cumulative = now
    expected_purchases = cumulative
    out = np.column_stack(
        [
            p_alive,
            churn,
            expected_purchases,
            expected_value,
            expected_purchases * expected_value,
            discounted * expected_value,
        ]
    ).astype("float64")
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise ModelFitError(f"CLV predictions are not finite for {bad:,} of {len(x):,} customers")
    return out
