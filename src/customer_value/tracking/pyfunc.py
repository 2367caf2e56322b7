"""The registered models: MLflow pyfunc wrappers that take one row per customer and predict row by row.

Both are logged as "models from code" (see ``model_code/``), so no Python object is pickled for the CLV
model; its fitted parameters travel as JSON. The segments model's fitted scikit-learn pipeline is a pickle.
Inputs are validated here because MLflow's schema enforcement lets NaN, negative and empty inputs through.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from customer_value.errors import UserError
from customer_value.models.clv.bounds import PredictionBoundError, check_horizon
from customer_value.models.clv.btyd import CLVParams, input_columns
from customer_value.models.clv.churn_layer import ChurnLayer
from customer_value.models.clv.churn_selection import ChurnSelector
from customer_value.models.clv.covariates import raw_columns
from customer_value.models.clv.model import CLVModel
from customer_value.models.clv.value_layer import ValueLayer
from customer_value.models.segments.segmentation import SegmentModel
from customer_value.privacy.serving import SERVED

CLV_SPEC_ARTIFACT = "clv_spec"
SEGMENT_ARTIFACT = "segment_model"


def invalid_input(message: str) -> MlflowException:
    """An input error: ``mlflow models serve`` answers it with status 400 and this message, no stack trace."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def validate_customer_rows(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Reject what schema enforcement lets through: no rows, missing/NaN/negative values, recency > T."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if frame.empty:
        raise invalid_input("no customer rows to score")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise invalid_input(f"input lacks column(s) {missing}")
    values = np.empty((len(frame), len(columns)), dtype="float64", order="F")
    for index, name in enumerate(columns):  # column by column into one matrix: no DataFrame copies
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column):
            column = pd.to_numeric(column, errors="coerce")
        values[:, index] = column.to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        raise invalid_input(f"{int(bad.any(axis=1).sum())} input row(s) have missing or non-numeric values")
    negative = (values < 0).any(axis=1)
    if negative.any():
        raise invalid_input(f"{int(negative.sum())} input row(s) have negative values")
    if {"recency_days", "T_days"} <= set(columns):
        inverted = values[:, columns.index("recency_days")] > values[:, columns.index("T_days")]
        if inverted.any():
            raise invalid_input(f"{int(inverted.sum())} input row(s) have recency_days > T_days")
    return pd.DataFrame(values, index=frame.index, columns=columns, copy=False)


class CLVPyfunc(mlflow.pyfunc.PythonModel):
    """Lifetime value and churn propensity; ``horizon_days`` is a predict-time parameter."""

    def load_context(self, context: Any) -> None:
        spec = json.loads(Path(context.artifacts[CLV_SPEC_ARTIFACT]).read_text())
        self.spec = spec
        self.model = clv_model_from_spec(spec, "scoring_params")

    def evaluation_model(self, customers: pd.DataFrame | None = None) -> CLVModel:
        """The calibration-window fit, so champion and challenger are judged on the same holdout;
        ``customers``: the customer file, for a model with covariates."""
        return clv_model_from_spec(self.spec, "calibration_params", customers)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        features = validate_customer_rows(model_input, input_columns(spec_has_amounts(self.spec)))
        covariates = spec_covariate_columns(self.spec)
        if covariates:  # text or numbers; a missing value follows the design's rule (see covariates)
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            absent = [c for c in covariates if c not in frame.columns]
            if absent:
                raise invalid_input(f"input lacks covariate column(s) {absent}")
            for column in covariates:
                features[column] = frame[column].to_numpy()
        horizon = (params or {}).get("horizon_days")
        horizon = self.spec["horizon_days"] if horizon is None else horizon
        try:  # before any work: a horizon beyond the bounds would hold the worker for minutes
            horizon = check_horizon(horizon, self.spec["discount_step_days"])
        except PredictionBoundError as exc:
            raise invalid_input(str(exc)) from None
        intervals = (params or {}).get("intervals")
        intervals = True if intervals is None else bool(intervals)
        predicted = self.model.predict(features, horizon, intervals=intervals).reset_index(drop=True)
        return _honour_suppression(model_input, predicted)


def clv_spec(
    calibration: CLVModel,
    scoring: CLVModel,
    *,
    horizon_days: float,
    calibration_end: str,
    trained_through: str,
) -> dict[str, Any]:
    """What the CLV pyfunc loads: both fits (scoring and holdout-judged), horizon and discounting.

    ``has_amounts`` False: a purchase-only model (no spend parameters, no monetary inputs, no value
    outputs); specs written before it existed all have a spend model."""
    return {
        "has_amounts": scoring.params_.has_spend,
        "calibration_params": calibration.params_.as_dict(),
        "scoring_params": scoring.params_.as_dict(),
        "horizon_days": float(horizon_days),
        "discount_rate": float(scoring.discount_rate),
        "discount_step_days": float(scoring.discount_step_days),
        "calibration_end": calibration_end,
        "trained_through": trained_through,
        "interval_level": float(scoring.interval_level),
        "interval_draws": int(scoring.interval_draws),
        "churn_layer": None if calibration.churn_layer_ is None else calibration.churn_layer_.as_dict(),
        # Chosen per fit: the calibration fit's on windows before the calibration end, the scoring fit's
        # on the whole history (see jobs.churn_stage).
        "churn_selector": None if scoring.churn_selector_ is None else scoring.churn_selector_.as_dict(),
        "calibration_churn_selector": None
        if calibration.churn_selector_ is None
        else calibration.churn_selector_.as_dict(),
        "value_layer": None if calibration.value_layer_ is None else calibration.value_layer_.as_dict(),
    }


def spec_covariate_columns(spec: dict[str, Any]) -> list[str]:
    """The customer-file columns a stored CLV spec takes as covariates (none for older specs)."""
    covariates = spec["scoring_params"].get("covariates")
    return [] if covariates is None else raw_columns(covariates)


def spec_covariate_types(spec: dict[str, Any]) -> dict[str, str]:
    """Each covariate column's signature type: ``double`` for a numeric one, ``string`` for text."""
    covariates = spec["scoring_params"].get("covariates")
    if covariates is None:
        return {}
    return {c: "double" if c in covariates["numeric"] else "string" for c in raw_columns(covariates)}


def spec_has_amounts(spec: dict[str, Any]) -> bool:
    """Whether a stored CLV spec has a spend model (older specs, without the key, always do)."""
    return bool(spec.get("has_amounts", True))


def clv_model_from_spec(spec: dict[str, Any], which: str, customers: pd.DataFrame | None = None) -> CLVModel:
    """A CLVModel from a stored spec; layers and the churn selector are optional (earlier specs lack them)."""
    churn, value = spec.get("churn_layer"), spec.get("value_layer")
    model = CLVModel.from_params(
        CLVParams.from_dict(spec[which]),
        spec["discount_rate"],
        spec["discount_step_days"],
        None if churn is None else ChurnLayer.from_dict(churn),
        None if value is None else ValueLayer.from_dict(value),
        interval_level=spec.get("interval_level", 0.9),
        interval_draws=spec.get("interval_draws", 100),
        customers=customers,
    )
    selector = spec.get("churn_selector" if which == "scoring_params" else "calibration_churn_selector")
    model.churn_selector_ = None if selector is None else ChurnSelector.from_dict(selector)
    return model


class SegmentsPyfunc(mlflow.pyfunc.PythonModel):
    """Segment id (0 = most valuable) and its name for each customer row; with ``reasons`` (a predict
    parameter, default true) also why (``SegmentModel.explain``)."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts[SEGMENT_ARTIFACT], "rb") as handle:
            self.model: SegmentModel = pickle.load(handle)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        features_in = self.model.input_features
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        checked = [c for c in features_in.behaviour if c != "regularity"]  # regularity may be NaN
        behaviour = validate_customer_rows(frame, checked)
        if "regularity" in features_in.behaviour:
            if "regularity" not in frame.columns:
                raise invalid_input("input lacks column(s) ['regularity']")
            behaviour["regularity"] = pd.to_numeric(frame["regularity"], errors="coerce").to_numpy()
        attributes = [*features_in.numeric, *features_in.categorical]
        missing = [c for c in attributes if c not in frame.columns]
        if missing:
            raise invalid_input(f"input lacks attribute column(s) {missing}")
        rows = behaviour.join(frame[attributes]) if attributes else behaviour
        predicted = self.model.predict(rows)
        if (params or {}).get("reasons", True):  # why this segment: margin, its parts and reasons in words
            predicted = predicted.join(self.model.explain(rows))
        return _honour_suppression(frame, predicted.reset_index(drop=True))


def _honour_suppression(request: Any, predicted: pd.DataFrame) -> pd.DataFrame:
    """A request naming customers (``customer_id``) is answered with their ids and without those on the
    suppression list (privacy/serving.py); a misconfigured list is the server's error, said in one line."""
    try:
        return SERVED.answer(request, predicted)
    except UserError as exc:
        raise MlflowException(f"suppression list: {exc}") from None
