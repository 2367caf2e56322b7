"""What a reviewer reads about a fit: every parameter with its standard error and 95 % interval, and the
likelihood-ratio test of a covariate model against the same family without covariates.

Standard errors come from the covariance the prediction intervals already use (``uncertainty``: the inverse
information of the log-likelihood). Population parameters are positive and estimated in logs, so their
standard error is the delta method's (estimate x SE of its log; CLVTools' and lifetimes' ``summary``) and
their interval exp(log estimate +- 1.96 SE), which stays positive; a coefficient's is the plain normal one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm

from customer_value.models.clv.btyd import (
    FAMILIES,
    SPEND_PARAMS,
    CLVParams,
    ModelInputs,
    purchase_log_likelihood,
    purchase_patterns,
)
from customer_value.models.clv.covariates import COEFFICIENT_SETS
from customer_value.models.clv.uncertainty import covariate_likelihood

Z_95 = float(norm.ppf(0.975))


def parameter_table(params: CLVParams) -> pd.DataFrame:
    """One row per parameter: model (purchase, spend, covariate), estimate, se, ci_low, ci_high; se and
    the interval are NaN when the covariance could not be estimated."""
    names = [*FAMILIES[params.family].params, *(SPEND_PARAMS if params.spend is not None else ())]
    coefficients = params.coefficients()
    values = params.fitted() | coefficients
    variances = (
        np.diag(np.asarray(params.log_covariance))
        if params.log_covariance is not None
        else np.full(len(names) + len(coefficients), np.nan)
    )
    se_log = np.sqrt(np.maximum(variances, 0.0))
    rows = []
    for index, name in enumerate([*names, *coefficients]):
        estimate, spread = values[name], float(se_log[index])
        if index < len(names):  # a positive parameter, estimated in logs
            row = (estimate * spread, estimate * np.exp(-Z_95 * spread), estimate * np.exp(Z_95 * spread))
            model = "purchase" if index < len(FAMILIES[params.family].params) else "spend"
        else:
            row = (spread, estimate - Z_95 * spread, estimate + Z_95 * spread)
            model = "covariate"
        rows.append(
            {
                "parameter": name,
                "model": model,
                "estimate": estimate,
                **dict(zip(("se", "ci_low", "ci_high"), row, strict=True)),
            }
        )
    return pd.DataFrame(rows).set_index("parameter")


def covariate_table(params: CLVParams) -> pd.DataFrame:
    """The coefficients: set, moves (the parameter it scales), column, estimate, se, 95 % interval, z,
    p-value (Wald) and the multiplier exp(+-gamma) it applies to that parameter."""
    if params.covariates is None:
        return pd.DataFrame()
    table = parameter_table(params)
    rows = []
    for name, (parameter, sign, _) in COEFFICIENT_SETS[params.family].items():
        for column, gamma in params.covariates["coefficients"][name].items():
            row = table.loc[f"gamma_{name}.{column}"]
            z = gamma / row["se"] if row["se"] > 0 else np.nan
            rows.append(
                {
                    "set": name,
                    "moves": parameter,
                    "column": column,
                    "estimate": gamma,
                    "se": row["se"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "z": z,
                    "p_value": float(2 * norm.sf(abs(z))) if np.isfinite(z) else np.nan,
                    "multiplier": float(np.exp(sign * gamma)),
                }
            )
    return pd.DataFrame(rows)


def log_likelihood(params: CLVParams, inputs: ModelInputs) -> float:
    """The purchase model's total log-likelihood of these customers at the fitted parameters."""
    if params.covariates is None:
        patterns = purchase_patterns(inputs)
        return purchase_log_likelihood(
            params.family, params.purchase, patterns.frequency, patterns.recency, patterns.T, patterns.weights
        )
    likelihood, theta = covariate_likelihood(params, inputs)
    return likelihood.value_and_gradient(theta)[0]


def likelihood_ratio_test(
    with_covariates: float, without: float, degrees_of_freedom: int
) -> dict[str, float]:
    """2 (ll1 - ll0) against chi-square(df): do the covariates explain purchases beyond chance?"""
    statistic = max(0.0, 2.0 * (with_covariates - without))
    return {
        "lr_statistic": statistic,
        "lr_df": float(degrees_of_freedom),
        "lr_p_value": float(chi2.sf(statistic, degrees_of_freedom)),
        "log_likelihood": with_covariates,
        "log_likelihood_without": without,
    }
