"""The flat module names of before the stage subpackages, kept importable for models registered then.

Why: a registered segments model is a pickle that names its classes by module
(``customer_value.segmentation.SegmentModel``), and a model-from-code entry file logged before the move
imports ``customer_value.pyfunc_models``. Each old name resolves to the module that now holds that code,
so those versions still load and score. Old names that are now packages (``data``, ``tracking``,
``evaluation``, ``jobs``, ``bench``) cannot be aliased: no registered model refers to them, but code of
one's own that imported, say, ``customer_value.data.load_transactions`` now imports it from
``customer_value.data.loading``.
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
}
PREFIX = "customer_value."


class _Alias(importlib.abc.Loader):
    """Hands out the already-imported new module instead of executing anything."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: ModuleSpec | None = None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system sets the alias's spec on it next: put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``customer_value.<old flat name>`` to the module that holds its code now."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        old = fullname.removeprefix(PREFIX)
        if old == fullname or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(PREFIX + MOVED[old]))


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once): real modules always win over an alias."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
