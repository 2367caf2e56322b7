"""The flat module names of before the stage subpackages, kept importable for models registered then.

Why: a registered segments model is a pickle that names its classes by module
(``customer_value.segmentation.SegmentModel``), and a model-from-code entry file logged before the move
imports ``customer_value.pyfunc_models``. Each old name resolves to the module that now holds that code,
so those versions still load and score. Old names that are now packages (``data``, ``tracking``,
``evaluation``) cannot be aliased; no registered model refers to them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED = {
    "parsing": "data.parsing",
    "grouping": "data.grouping",
    "features": "data.features",
    "synthetic": "data.synthetic",
    "log_shapes": "data.log_shapes",
    "btyd_likelihoods": "models.clv.likelihoods",
    "clv": "models.clv.btyd",
    "clv_model": "models.clv.model",
    "clv_predict": "models.clv.predict",
    "churn_layer": "models.clv.churn_layer",
    "value_layer": "models.clv.value_layer",
    "layer_selection": "models.clv.layer_selection",
    "inner_windows": "models.clv.inner_windows",
    "uncertainty": "models.clv.uncertainty",
    "prediction_bounds": "models.clv.bounds",
    "clusterers": "models.segments.clusterers",
    "segmentation": "models.segments.segmentation",
    "segment_selection": "models.segments.selection",
    "segment_distinctness": "models.segments.distinctness",
    "segment_names": "models.segments.names",
    "segment_stability": "models.segments.stability",
    "segment_attributes": "models.segments.attributes",
    "migration": "models.segments.migration",
    "backtest": "evaluation.backtest",
    "plots": "evaluation.plots",
    "registry": "tracking.registry",
    "model_card": "tracking.model_card",
    "pyfunc_models": "tracking.pyfunc",
    "processes": "tracking.processes",
    "model_code": "tracking.model_code",
}
PREFIX = "customer_value."


class _Alias(importlib.abc.Loader):
    """Hands out the already-imported new module instead of executing anything."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        return None


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``customer_value.<old name>`` (and ``model_code.*`` below it) to its new module."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if not fullname.startswith(PREFIX):
            return None
        head, _, rest = fullname[len(PREFIX) :].partition(".")
        if head not in MOVED:
            return None
        new = PREFIX + MOVED[head] + (f".{rest}" if rest else "")
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once): real modules always win over an alias."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
