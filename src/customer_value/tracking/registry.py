"""Log the pyfunc models, register them, and move the ``champion`` alias only for a better model.

Gate: a new version takes ``champion`` when there is none yet, or when its primary metric beats the
current champion's **on the same evaluation data** (the caller re-scores the champion on this run's
holdout); otherwise it takes ``challenger``. A version its run blocked (its churn ranking loses to a
baseline on its own holdout, see ``jobs.churn_stage``) always takes ``challenger``. Ties keep the
champion, and so does a champion that cannot be compared fairly (the caller says why, e.g. its fit has
seen this holdout).
"""

from __future__ import annotations

import json
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import customer_value
from customer_value.errors import RegistryError
from customer_value.models.clv.btyd import input_columns, interval_columns, prediction_columns
from customer_value.models.segments.segmentation import SegmentModel
from customer_value.tracking.model_card import CardFacts, card_tags, describe
from customer_value.tracking.pyfunc import (
    CLV_SPEC_ARTIFACT,
    SEGMENT_ARTIFACT,
    spec_covariate_columns,
    spec_covariate_types,
    spec_has_amounts,
)

PACKAGE_DIR = Path(customer_value.__file__).parent
MODEL_CODE_DIR = Path(__file__).parent / "model_code"
CHALLENGER = "challenger"


def _requirements() -> list[str]:
    """Pin what the model imports at load time to the versions it was trained with."""
    from importlib.metadata import version

    names = ["mlflow", "lifetimes", "scikit-learn", "pandas", "numpy", "scipy", "autograd"]
    return [f"{name}=={version(name)}" for name in names]


# An optional input: a request that names its customers gets their ids back, and none on the suppression
# list (privacy/serving.py); scoring jobs never send it.
REQUEST_ID = ColSpec("string", "customer_id", required=False)


def clv_signature(
    horizon_days: float, has_amounts: bool = True, covariates: dict[str, str] | None = None
) -> ModelSignature:
    """Without amounts (a purchase-only model) neither monetary inputs nor value outputs are in it;
    ``covariates``: the covariate columns and their types (double or string), after the history columns."""
    outputs = [*prediction_columns(has_amounts), *interval_columns(has_amounts)]
    extra = [ColSpec(kind, c) for c, kind in (covariates or {}).items()]
    return ModelSignature(
        inputs=Schema([ColSpec("double", c) for c in input_columns(has_amounts)] + extra + [REQUEST_ID]),
        outputs=Schema([ColSpec("double", c) for c in outputs]),
        params=ParamSchema(
            [
                ParamSpec("horizon_days", "double", float(horizon_days)),
                ParamSpec("intervals", "boolean", True),  # false: skip the interval columns (faster)
            ]
        ),
    )


def segments_signature(model: SegmentModel) -> ModelSignature:
    """Behaviour and numeric attributes as doubles, categorical attributes as strings."""
    features = model.feature_set
    numeric = [*features.behaviour, *features.numeric]
    return ModelSignature(
        inputs=Schema(
            [ColSpec("double", c) for c in numeric]
            + [ColSpec("string", c) for c in features.categorical]
            + [REQUEST_ID]
        ),
        outputs=Schema([ColSpec("long", "segment"), ColSpec("string", "segment_name")]),
        # reasons=false: the segment alone (the explanation columns are added after these two)
        params=ParamSchema([ParamSpec("reasons", "boolean", True)]),
    )


def log_clv_model(spec: dict[str, Any], example: pd.DataFrame) -> ModelInfo:
    """Log the CLV pyfunc in the active run; ``spec`` holds both parameter sets and the defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "clv_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        return mlflow.pyfunc.log_model(
            name="customer-clv",
            python_model=str(MODEL_CODE_DIR / "clv_model.py"),
            artifacts={CLV_SPEC_ARTIFACT: str(spec_path)},
            code_paths=[str(PACKAGE_DIR)],
            signature=clv_signature(spec["horizon_days"], spec_has_amounts(spec), spec_covariate_types(spec)),
            input_example=example[[*input_columns(spec_has_amounts(spec)), *spec_covariate_columns(spec)]]
            .head(5)
            .reset_index(drop=True),
            pip_requirements=_requirements(),
        )


def log_segments_model(model: SegmentModel, example: pd.DataFrame) -> ModelInfo:
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "segment_model.pkl"
        model_path.write_bytes(pickle.dumps(model))
        return mlflow.pyfunc.log_model(
            name="customer-segments",
            python_model=str(MODEL_CODE_DIR / "segments_model.py"),
            artifacts={SEGMENT_ARTIFACT: str(model_path)},
            code_paths=[str(PACKAGE_DIR)],
            signature=segments_signature(model),
            input_example=example[model.input_columns].head(5).reset_index(drop=True),
            pip_requirements=_requirements(),
        )


def champion_version(name: str, alias: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The model version behind ``name@alias``, or None when the model or alias does not exist yet."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise


def require_champion(name: str, alias: str) -> ModelVersion:
    version = champion_version(name, alias)
    if version is None:
        raise RegistryError(
            f"no model registered as '{name}@{alias}' at {mlflow.get_tracking_uri()}; run `make train` first"
        )
    return version


@dataclass(frozen=True)
class ChampionJudgement:
    """The current champion re-scored on this run's evaluation data; ``score`` None = not comparable.

    ``metrics`` holds every figure the re-scoring produced, for the model card."""

    version: str
    score: float | None
    reason: str
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    version: str
    alias: str
    metric: str
    new_score: float
    reason: str
    champion: ChampionJudgement | None

    def as_tags(self) -> dict[str, str]:
        champion_score = None if self.champion is None else self.champion.score
        return {
            "gate.alias": self.alias,
            "gate.metric": self.metric,
            "gate.new_score": f"{self.new_score:.6g}",
            "gate.reason": self.reason,
            "gate.champion_version": "none" if self.champion is None else self.champion.version,
            "gate.champion_score": "none" if champion_score is None else f"{champion_score:.6g}",
        }

    def tag_run(self, run_id: str) -> None:
        """Record the decision on a (finished) run as ``registered.*`` tags, by id."""
        client = MlflowClient()
        for key, value in (self.as_tags() | {"version": self.version}).items():
            client.set_tag(run_id, f"registered.{key}", value)


def decide(
    new_score: float, champion: ChampionJudgement | None, blocked: str | None = None
) -> tuple[bool, str]:
    """Whether the new version takes the alias (higher is better; ties keep the champion), and why.
    ``blocked``: why the run found this model unfit to ship (it loses to a baseline); it never wins then."""
    if blocked is not None:
        return False, f"blocked: {blocked}"
    if champion is None:
        return True, "no champion yet"
    if champion.score is None:
        return False, f"not compared: {champion.reason}"
    if new_score > champion.score:
        return True, f"beats champion v{champion.version}"
    return False, f"does not beat champion v{champion.version}"


def register_with_gate(
    model_uri: str,
    name: str,
    *,
    alias: str,
    metric: str,
    new_score: float,
    champion: ChampionJudgement | None,
    tags: dict[str, str],
    card: CardFacts | None = None,
    blocked: str | None = None,
) -> GateDecision:
    """Register ``model_uri`` as a new version of ``name`` and give it ``alias`` or ``challenger``.

    With ``card``, the version also gets the model card: a description and ``card.*`` tags. ``blocked``
    (the run's reason this model must not ship): ``challenger`` whatever the champion's score."""
    client = MlflowClient()
    all_tags = tags if card is None else tags | card_tags(card)
    version = str(mlflow.register_model(model_uri, name, tags=all_tags).version)
    wins, reason = decide(new_score, champion, blocked)
    decision = GateDecision(
        version=version,
        alias=alias if wins else CHALLENGER,
        metric=metric,
        new_score=new_score,
        reason=reason,
        champion=champion,
    )
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, version, key, value)
    if card is not None:
        champion_metrics = {} if champion is None else champion.metrics
        text = describe(
            name,
            version,
            decision.alias,
            reason,
            card,
            None if champion is None else champion.version,
            champion_metrics,
        )
        client.update_model_version(name, version, description=text)
    client.set_registered_model_alias(name, decision.alias, version)
    return decision
