"""The CLV estimator: a BTYD purchase model x Gamma-Gamma, optional learned layers, prediction intervals.

scikit-learn style: ``__init__`` stores settings, ``fit`` validates and returns self, fitted state ends
in ``_``. The lifetimes calls themselves live in ``btyd``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from customer_value.data.grouping import aligned_rows
from customer_value.errors import ModelFitError, NotEnoughDataError
from customer_value.models.clv.bounds import check_horizon
from customer_value.models.clv.btyd import (
    DAYS_PER_YEAR,
    DEFAULT_FALLBACK_PENALIZERS,
    DEFAULT_SPEND_FALLBACK_PENALIZERS,
    FAMILIES,
    HEAVY_TAIL_SPEND,
    CLVParams,
    ModelInputs,
    SpendAnchor,
    SpendMeanUndefined,
    btyd_columns,
    counts_litt_total,
    fit_covariate_purchase_model,
    fit_purchase_model,
    fit_spend_model,
    fit_spend_model_with_mean,
    interval_columns,
    model_inputs,
    patterns_from_counts,
    prediction_columns,
    purchase_patterns,
    quiet_lifetimes,
    spend_anchor,
    spend_frequency_correlation,
)
from customer_value.models.clv.churn_layer import ChurnLayer, layer_inputs
from customer_value.models.clv.churn_selection import ChurnSelector
from customer_value.models.clv.covariate_likelihoods import CovariatePatterns, covariate_patterns
from customer_value.models.clv.covariates import COVARIATE_FAMILIES, fit_encoding, raw_columns, row_codes
from customer_value.models.clv.predict import churn_probability, predict_arrays, probability_alive
from customer_value.models.clv.uncertainty import (
    expectation_interval,
    log_parameter_covariance,
    parameter_draws,
    purchase_count_interval,
)
from customer_value.models.clv.value_layer import ValueLayer, value_layer_inputs

# _require_finite_predictions checks the purchase formulas; spend only scales them, so any valid
# Gamma-Gamma parameters serve while the spend model is not fitted yet.
NEUTRAL_SPEND = {"p": 1.0, "q": 2.0, "v": 1.0}
INTERVAL_SEED = 20_050_101  # fixed: a customer's interval depends on its own row only
INTERVAL_CHUNK = 25_000  # customers per chunk when drawing intervals (each chunk: draws x chunk per column)


class CLVModel:
    """BTYD purchases + Gamma-Gamma as a scikit-learn-style estimator: ``fit`` returns self, state ends in _.

    Each model has its own penalty and ladder: ``penalizer`` / ``fallback_penalizers`` for the purchase
    model, ``spend_penalizer`` / ``spend_fallback_penalizers`` for Gamma-Gamma (a purchase-scale penalty
    pushes CDNOW's q below 1). When a fit does not converge or gives non-finite estimates it is retried
    with each larger penalizer on its ladder. When Gamma-Gamma's q <= 1 (population mean spend infinite)
    and ``heavy_tail_spend="constrain_mean"``, it is refitted at the same penalty with its population mean
    pinned to the repeat buyers' mean spend winsorised at ``heavy_tail_quantile`` (``spend_fallback_``
    says so; None when the plain fit served). ``fit_attempts_`` records every try as (model, penalizer,
    outcome). Only when a model's whole ladder fails does ``fit`` raise ModelFitError.

    ``spend_model=False`` (a log without amounts: visits, logins) fits the purchase model only; its
    predictions have no value columns, and its purchase outputs equal a full model's on the same data.

    ``covariance=False`` skips the parameters' covariance (numerical Hessians: a quarter of a Pareto/NBD
    fit's time): for fits that only serve point predictions, e.g. backtest windows; their intervals then
    carry no parameter uncertainty and their standard errors are NaN.

    ``covariates`` ({"purchase": [...], "dropout": [...]}: customer-file columns) fits BG/NBD or Pareto/NBD
    with time-invariant covariates (see ``covariates``); a customer table without those columns takes them
    from ``customers`` (the customer file indexed by customer id), so inner windows and backtest folds refit
    with them too.
    """

    def __init__(
        self,
        family: str = "bgnbd",
        penalizer: float = 0.0,
        time_unit_days: float = 7.0,
        discount_rate: float = 0.10,
        discount_step_days: float = DAYS_PER_YEAR / 12,
        fallback_penalizers: tuple[float, ...] = DEFAULT_FALLBACK_PENALIZERS,
        interval_level: float = 0.9,
        interval_draws: int = 100,
        spend_penalizer: float = 0.0,
        spend_fallback_penalizers: tuple[float, ...] = DEFAULT_SPEND_FALLBACK_PENALIZERS,
        heavy_tail_spend: str = "constrain_mean",
        heavy_tail_quantile: float = 0.99,
        spend_model: bool = True,
        covariates: dict[str, list[str]] | None = None,
        customers: pd.DataFrame | None = None,
        covariance: bool = True,
    ) -> None:
        self.family = family
        self.penalizer = penalizer
        self.time_unit_days = time_unit_days
        self.discount_rate = discount_rate
        self.discount_step_days = discount_step_days
        self.fallback_penalizers = fallback_penalizers
        self.interval_level = interval_level
        self.interval_draws = interval_draws
        self.spend_penalizer = spend_penalizer
        self.spend_fallback_penalizers = spend_fallback_penalizers
        self.heavy_tail_spend = heavy_tail_spend
        self.heavy_tail_quantile = heavy_tail_quantile
        self.spend_model = spend_model
        self.covariates = covariates
        self.customers = customers
        self.covariance = covariance

    @property
    def has_spend(self) -> bool:
        """Whether the fitted model predicts value (it has Gamma-Gamma parameters)."""
        return self.params_.has_spend

    def fit(self, features: pd.DataFrame, purchase_counts: pd.DataFrame | None = None) -> CLVModel:
        """Fit on the customer table; ``purchase_counts`` (day-based pattern counts of a larger base, e.g.
        from Spark: ``frequency, recency_days, T_days, customers``, and for MBG/CNBD-k the patterns' summed
        ``litt_days``, with which it chooses k) replaces the table's own patterns in
        the purchase model's fit and covariance (not with covariates, whose patterns carry design rows),
        while Gamma-Gamma and the checks use the table (a sample of that base)."""
        if self.family not in FAMILIES:
            raise ModelFitError(f"unknown CLV family '{self.family}'; choose one of {sorted(FAMILIES)}")
        if self.heavy_tail_spend not in HEAVY_TAIL_SPEND:
            raise ModelFitError(f"heavy_tail_spend must be one of {list(HEAVY_TAIL_SPEND)}")
        encoding = None
        if self.wants_covariates:
            if self.family not in COVARIATE_FAMILIES:
                raise ModelFitError(
                    f"{FAMILIES[self.family].label} has no covariate model; "
                    f"use one of {list(COVARIATE_FAMILIES)}"
                )
            features = self.with_covariate_columns(
                features, [*self.covariates["purchase"], *self.covariates["dropout"]]
            )
            encoding = fit_encoding(
                features, list(self.covariates["purchase"]), list(self.covariates["dropout"])
            )
        gaps = FAMILIES[self.family].litt  # MBG/CNBD-k: litt chooses k (``cnbd_family``)
        inputs = model_inputs(
            features, self.time_unit_days, spend=self.spend_model, covariates=encoding, litt=gaps
        )
        litt_sum = None
        if purchase_counts is not None and encoding is None:
            patterns = patterns_from_counts(purchase_counts, self.time_unit_days)
            litt_sum = counts_litt_total(purchase_counts, self.time_unit_days) if gaps else None
        else:
            patterns = purchase_patterns(inputs)
        # With covariates: the (x, t_x, T, design row) patterns, built once for the fit, check and covariance.
        with_design = None
        if encoding is not None:
            with_design = covariate_patterns(
                inputs.frequency, inputs.recency, inputs.T, inputs.design, inputs.design_codes
            )
        self.fit_attempts_: list[tuple[str, float, str]] = []
        self.spend_fallback_: str | None = None
        anchor: SpendAnchor | None = None

        coefficients: dict[str, dict[str, dict[str, float]]] = {}

        def purchase_model(penalizer: float) -> dict[str, float]:
            covariates = None
            if encoding is None:
                purchase = fit_purchase_model(inputs, penalizer, self.family, patterns, litt_sum)
            else:
                purchase, gammas = fit_covariate_purchase_model(
                    inputs, penalizer, self.family, encoding, with_design, patterns
                )
                covariates = coefficients[penalizer] = encoding | {"coefficients": gammas}
            neutral = CLVParams(
                self.family, purchase, NEUTRAL_SPEND, self.time_unit_days, covariates=covariates
            )
            _require_finite_predictions(neutral, inputs, with_design)
            return purchase

        def fit_spend(penalizer: float) -> dict[str, float]:
            nonlocal anchor
            try:
                return fit_spend_model(inputs, penalizer)
            except SpendMeanUndefined as exc:
                if self.heavy_tail_spend == "fail":
                    raise
                self.fit_attempts_.append(("spend", penalizer, str(exc)))
            anchor = spend_anchor(inputs, self.heavy_tail_quantile)
            spend = fit_spend_model_with_mean(inputs, penalizer, anchor)
            self.spend_fallback_ = anchor.describe(spend["q"])
            return spend

        # Separate penalties and ladders: a purchase model that needs a penalty must not force one on
        # Gamma-Gamma (on CDNOW a Gamma-Gamma penalty of 0.01 already pushes q below 1).
        # Spend first: no repeat buyers is a NotEnoughDataError that no penalty on either model can fix.
        spend, self.spend_penalizer_used_ = None, None
        if self.spend_model:
            spend, self.spend_penalizer_used_ = self._first_success(
                "spend", _ladder(self.spend_penalizer, self.spend_fallback_penalizers), fit_spend
            )
        if self.spend_fallback_ is not None:  # say which kind of spend fit converged
            self.fit_attempts_[-1] = ("spend", self.spend_penalizer_used_, "converged mean-constrained")
        purchase, self.purchase_penalizer_used_ = self._first_success(
            "purchase", _ladder(self.penalizer, self.fallback_penalizers), purchase_model
        )
        covariates = coefficients.get(self.purchase_penalizer_used_)
        params = CLVParams(self.family, purchase, spend, self.time_unit_days, covariates=covariates)
        spend_mean = None if self.spend_fallback_ is None or anchor is None else anchor.mean
        covariance = (
            log_parameter_covariance(
                params, inputs, patterns, spend_mean=spend_mean, design_patterns=with_design
            )
            if self.covariance
            else None
        )
        self.params_ = replace(params, log_covariance=covariance)
        self.n_customers_ = int(round(patterns.weights.sum())) if encoding is None else len(inputs.frequency)
        self.spend_frequency_correlation_ = spend_frequency_correlation(inputs)
        return self

    def _first_success(
        self, part: str, ladder: list[float], fit: Callable[[float], dict[str, float]]
    ) -> tuple[dict[str, float], float]:
        """The first penalizer on the ladder whose fit succeeds; every try is kept in ``fit_attempts_``."""
        for penalizer in ladder:
            try:
                params = fit(penalizer)
            except NotEnoughDataError:  # no penalty can fix missing data
                raise
            except ModelFitError as exc:
                self.fit_attempts_.append((part, penalizer, str(exc)))
                continue
            self.fit_attempts_.append((part, penalizer, "converged"))
            return params, penalizer
        tried = "; ".join(
            f"{p} penalizer {pen}: {message}" for p, pen, message in self.fit_attempts_ if p == part
        )
        raise ModelFitError(f"every fallback failed ({tried})")

    @property
    def wants_covariates(self) -> bool:
        return bool(self.covariates) and any(self.covariates.get(k) for k in ("purchase", "dropout"))

    def with_covariate_columns(self, features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        """``features`` with the covariate columns, joined from ``customers`` by customer id when absent
        (a customer missing from the file gets missing values: see ``covariates`` for the rule)."""
        absent = [c for c in dict.fromkeys(columns) if c not in features.columns]
        if not absent:
            return features
        if self.customers is None:
            raise ModelFitError(
                f"the customer table lacks covariate column(s) {absent} and no customer file is set"
            )
        extra = self.customers[absent]
        if not extra.index.is_unique:
            return features.join(extra, how="left")
        # The same left join as a lookup by id (a merge of a million string ids took twice as long).
        return pd.concat([features, aligned_rows(extra, features.index)], axis=1)

    churn_layer_: ChurnLayer | None = None
    churn_selector_: ChurnSelector | None = None
    value_layer_: ValueLayer | None = None

    @classmethod
    def from_params(
        cls,
        params: CLVParams,
        discount_rate: float,
        discount_step_days: float,
        churn_layer: ChurnLayer | None = None,
        value_layer: ValueLayer | None = None,
        interval_level: float = 0.9,
        interval_draws: int = 100,
        customers: pd.DataFrame | None = None,
    ) -> CLVModel:
        """A fitted model from stored parameters (used by the registered pyfunc model); ``customers``: the
        customer file, for tables without the covariate columns."""
        model = cls(
            family=params.family,
            time_unit_days=params.time_unit_days,
            discount_rate=discount_rate,
            discount_step_days=discount_step_days,
            interval_level=interval_level,
            interval_draws=interval_draws,
            spend_model=params.has_spend,
            customers=customers,
        )
        model.params_ = params
        model.churn_layer_ = churn_layer
        model.value_layer_ = value_layer
        return model

    def predict(self, features: pd.DataFrame, horizon_days: float, intervals: bool = False) -> pd.DataFrame:
        """Per-customer outputs over the next ``horizon_days`` days after each customer's ``T``.

        ``btyd_churn_probability`` is the purchase model's own; ``churn_probability`` is the churn
        selector's when one is attached (see ``churn_selection``), else an earlier release's learned churn
        layer's (``churn_layer``), else the same number. Likewise
        ``expected_revenue`` is the value layer's when attached (see ``value_layer``), and ``clv`` then
        applies the BTYD model's per-customer discount factor (its clv / expected revenue) to it.
        With ``intervals``, the INTERVAL_COLUMNS at ``interval_level`` are added (see ``uncertainty``).
        A purchase-only model leaves every value column out (``clv.prediction_columns``).
        A horizon beyond ``bounds`` raises PredictionBoundError (a UserError) before any work.
        """
        check_horizon(horizon_days, self.discount_step_days)
        table = self._predict_with(self.params_, features, horizon_days)
        if intervals:
            table = table.join(self._intervals(features, horizon_days, table))
        return table

    def _predict_with(
        self,
        params: CLVParams,
        features: pd.DataFrame,
        horizon_days: float,
        inputs: ModelInputs | None = None,
        with_churn: bool = True,
    ) -> pd.DataFrame:
        """The prediction columns filled in one column-major matrix: one DataFrame block, no copies of it.
        ``inputs``: ``features`` already converted (the bootstrap draws share one design).
        ``with_churn=False`` leaves the churn columns the purchase model's: the bootstrap draws keep only
        expectations, and the churn selector was half their time."""
        has_spend = params.has_spend
        if inputs is None:
            inputs = self._inputs(params, features)
        values = predict_arrays(params, inputs, horizon_days, self.discount_rate, self.discount_step_days)
        btyd = pd.DataFrame(values, index=features.index, columns=btyd_columns(has_spend), copy=False)
        names = prediction_columns(has_spend)
        out = np.empty((len(btyd), len(names)), dtype="float64", order="F")
        out[:, : values.shape[1]] = values
        column = {name: index for index, name in enumerate(names)}
        out[:, column["btyd_churn_probability"]] = btyd["churn_probability"]
        if has_spend:
            out[:, column["btyd_expected_revenue"]] = btyd["expected_revenue"]
        churn = None
        if with_churn and self.churn_selector_ is not None:
            btyd_at = self._btyd_reader(params, features, inputs, horizon_days, btyd)
            churn = self.churn_selector_.predict(features, btyd_at, horizon_days)
        elif with_churn and self.churn_layer_ is not None:
            churn = self.churn_layer_.predict(layer_inputs(features, btyd, horizon_days))
        if churn is not None:
            out[:, column["churn_probability"]] = churn
            out[:, column["purchase_probability"]] = 1.0 - churn
        if self.value_layer_ is not None and has_spend:
            btyd_revenue = btyd["expected_revenue"].to_numpy()
            inputs = value_layer_inputs(features, btyd)
            revenue = self.value_layer_.predict(inputs, btyd_revenue, horizon_days)
            discount = np.divide(
                btyd["clv"].to_numpy(), btyd_revenue, out=np.ones(len(btyd)), where=btyd_revenue > 0
            )
            out[:, column["expected_revenue"]] = revenue
            out[:, column["clv"]] = revenue * discount
        return pd.DataFrame(out, index=features.index, columns=names, copy=False)

    def predict_churn(self, features: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """``predict``'s ``churn_probability`` alone, the same numbers: the purchase model's outputs are
        computed only at the days the churn model reads (a selector's band reads its window's), and no
        prediction table is built (the holdout's calibrated baselines: one pass over the customers
        instead of two, and no customers x 13 table)."""
        check_horizon(horizon_days, self.discount_step_days)
        inputs = self._inputs(self.params_, features)
        btyd_at = self._btyd_reader(self.params_, features, inputs, horizon_days, None)
        if self.churn_selector_ is not None:
            return self.churn_selector_.predict(features, btyd_at, horizon_days)
        btyd = btyd_at(horizon_days)
        if self.churn_layer_ is not None:
            return self.churn_layer_.predict(layer_inputs(features, btyd, horizon_days))
        return btyd["churn_probability"].to_numpy()

    def _btyd_reader(
        self,
        params: CLVParams,
        features: pd.DataFrame,
        inputs: ModelInputs,
        horizon_days: float,
        at_horizon: pd.DataFrame | None,
    ) -> Callable[[float, dict[str, object] | None], pd.DataFrame]:
        """``btyd_at(days, other=None)``: the purchase model's outputs for ``features`` at ``days``;
        ``other``: another family's stored parameters (a churn band's ``purchase_params``) instead of
        ``params``. At the horizon: ``at_horizon`` when given, else computed at ``horizon_days`` itself."""
        rate, step = self.discount_rate, self.discount_step_days

        def btyd_at(days: float, other: dict[str, object] | None = None) -> pd.DataFrame:
            if other is not None:
                theirs = CLVParams.from_dict(other)
                values = predict_arrays(theirs, self._inputs(theirs, features), days, rate, step)
                return pd.DataFrame(values, index=features.index, columns=btyd_columns(theirs.has_spend))
            if np.isclose(days, horizon_days):
                if at_horizon is not None:
                    return at_horizon
                days = horizon_days
            values = predict_arrays(params, inputs, days, rate, step)
            columns = btyd_columns(params.has_spend)
            return pd.DataFrame(values, index=features.index, columns=columns, copy=False)

        return btyd_at

    def btyd_churn_curve(self, features: pd.DataFrame) -> Callable[[float], np.ndarray]:
        """The purchase model's churn probability for ``features`` as a function of the horizon in days:
        P(alive) and the inputs computed once, each horizon one vectorised formula."""
        inputs = self._inputs(self.params_, features)
        with quiet_lifetimes():
            p_alive = np.asarray(probability_alive(self.params_, inputs), dtype="float64")

        def curve(days: float) -> np.ndarray:
            return churn_probability(self.params_, inputs, days / self.params_.time_unit_days, p_alive)

        return curve

    def _inputs(self, params: CLVParams, features: pd.DataFrame) -> ModelInputs:
        """The model's arrays for ``features``, covariate columns joined from ``customers`` if absent."""
        if params.covariates is not None:
            features = self.with_covariate_columns(features, raw_columns(params.covariates))
        return model_inputs(
            features, params.time_unit_days, spend=params.has_spend, covariates=params.covariates
        )

    def _intervals(self, features: pd.DataFrame, horizon_days: float, point: pd.DataFrame) -> pd.DataFrame:
        """Bootstrap intervals of the expectations and the predictive interval of the purchase count.

        Customers are processed in chunks so memory stays bounded (draws x chunk per column).
        """
        draws = parameter_draws(self.params_, self.interval_draws, seed=INTERVAL_SEED)
        parts = []
        for start in range(0, len(features), INTERVAL_CHUNK):  # bounded memory, vectorised within a chunk
            rows = features.iloc[start : start + INTERVAL_CHUNK]
            here = point.iloc[start : start + INTERVAL_CHUNK]
            samples: dict[str, list[np.ndarray]] = {"expected_purchases": []}
            if self.params_.has_spend:
                samples["clv"] = []
            inputs = self._inputs(self.params_, rows)  # the draws change coefficients, not the design
            for params in draws:
                try:
                    drawn = self._predict_with(params, rows, horizon_days, inputs, with_churn=False)
                except ModelFitError:  # a draw far in the tail can overflow a formula: leave it out
                    continue
                for column, values in samples.items():  # a copy: a view would keep the draw's whole table
                    values.append(drawn[column].to_numpy(copy=True))  # (100 draws: 190 -> 40 MB a chunk)
            columns = {}
            for column, values in samples.items():
                low, high = expectation_interval(values, here[column].to_numpy(), self.interval_level)
                columns[f"{column}_low"], columns[f"{column}_high"] = low, high
            low, high = purchase_count_interval(
                self.params_,
                inputs,
                horizon_days / self.params_.time_unit_days,
                here["p_alive"].to_numpy(),
                self.interval_level,
            )
            columns["purchases_low"], columns["purchases_high"] = low, high
            parts.append(pd.DataFrame(columns, index=rows.index))
        return pd.concat(parts)[interval_columns(self.params_.has_spend)]


def _ladder(penalizer: float, fallbacks: tuple[float, ...]) -> list[float]:
    """The configured penalty, then every larger fallback in order."""
    return [penalizer, *(p for p in fallbacks if p > penalizer)]


def _require_finite_predictions(
    params: CLVParams, inputs: ModelInputs, with_design: CovariatePatterns | None = None
) -> None:
    """Extreme estimates can overflow lifetimes' formulas for some customers: treat that as a failed fit.

    Checked on the unique (x, t_x, T) patterns (with covariates: (x, t_x, T, design row)) at a one-year and
    a ten-year horizon, one step each.
    """
    if inputs.design is None:
        patterns = purchase_patterns(inputs)
        design = codes = None
    else:
        patterns = with_design
        if patterns is None:
            patterns = covariate_patterns(
                inputs.frequency, inputs.recency, inputs.T, inputs.design, inputs.design_codes
            )
        design = patterns.design
        # Numbered once, not per horizon; the customers' numbering when the patterns are the customers
        # themselves (``covariate_patterns`` then hands back the same design).
        reuse = design is inputs.design and inputs.design_codes is not None
        codes = inputs.design_codes if reuse else row_codes(design)[0]
    unique = ModelInputs(
        patterns.frequency,
        patterns.recency,
        patterns.T,
        np.zeros(len(patterns.T)) if params.has_spend else None,
        design,
        codes,
    )
    for horizon_days in (DAYS_PER_YEAR, 10 * DAYS_PER_YEAR):
        try:
            predict_arrays(params, unique, horizon_days, 0.0, horizon_days, strict=True)
        except ModelFitError as exc:
            raise ModelFitError(str(exc).replace("customers", "(x, t_x, T) patterns")) from None
