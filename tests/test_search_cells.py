"""Every cell of every shipped search (`conf/hparams_search/*.yaml`) fits its CLV model on CDNOW.

`make sweep` lost whole jobs when a grid value could not be fitted on the bundled data (a purchase-model
penalty of 0.01 also reached Gamma-Gamma, whose q then fell below 1). Running the sweeps would take
minutes; the part that failed is the CLV fit, so each distinct CLV configuration a search can produce is
composed as its job would be and fitted on the CDNOW master log's calibration window (default split).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from customer_value.data.features import calibration_and_holdout, resolve_split
from customer_value.jobs.clv_stage import model_settings
from customer_value.models.clv.model import CLVModel
from customer_value.schema import CLV_FAMILIES, register_configs, validate_train_config

CONF = Path(__file__).resolve().parents[1] / "conf"
SEARCHES = sorted(path.stem for path in (CONF / "hparams_search").glob("*.yaml"))


def _compose(overrides: list[str], hydra_config: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_config)


def search_cells(search: str) -> list[list[str]]:
    """The override lists of every job the search can launch (grid product; Optuna's whole choice space)."""
    params = _compose([f"hparams_search={search}"], hydra_config=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = [
        [f"{o.key_or_group}={v}" for v in (o.sweep_iterator() if o.is_sweep_override() else [o.value()])]
        for o in parsed
    ]
    return [[f"hparams_search={search}", *cell] for cell in itertools.product(*axes)]


def clv_configurations(searches: list[str]) -> dict[str, tuple[str, dict[str, object], list[str]]]:
    """Distinct (family, CLVModel settings) over every cell of the searches, with one cell producing it.

    Only a cell's ``clv`` and ``features`` overrides can change the CLV fit (``model_settings`` reads
    nothing else), so each distinct set of those is composed once, with its search, and validated.
    """
    distinct: dict[str, tuple[str, dict[str, object], list[str]]] = {}
    overrides = {
        tuple(o for o in cell if o.startswith(("hparams_search=", "clv", "features")))
        for search in searches
        for cell in search_cells(search)
    }
    for cell in sorted(overrides):
        cfg = _compose(list(cell))
        validate_train_config(cfg)
        for family in CLV_FAMILIES if cfg.clv.family == "auto" else (cfg.clv.family,):
            settings = model_settings(cfg)
            key = f"{family} {sorted(settings.items())}"
            distinct.setdefault(key, (family, settings, list(cell)))
    return distinct


@pytest.fixture(scope="module")
def cdnow_calibration(cdnow_master) -> pd.DataFrame:
    orders, _ = cdnow_master
    calibration, _ = calibration_and_holdout(orders, resolve_split(orders, "1997-09-30", 0.5))
    return calibration


def test_the_cells_cover_every_search() -> None:
    assert set(SEARCHES) == {"clv_grid", "clv_optuna", "segments_grid"}
    assert len(search_cells("clv_grid")) == 9 and len(search_cells("segments_grid")) == 20
    optuna = search_cells("clv_optuna")
    assert len(optuna) == 12 and "clv.penalizer=0.0003" in {o for cell in optuna for o in cell}


@pytest.mark.slow
def test_every_search_cell_fits_its_clv_model_on_cdnow(cdnow_calibration: pd.DataFrame) -> None:
    """About 30 s on a busy 2-core Xeon (Pareto/NBD about 3.5 s a cell, 13 configurations composed), hence
    slow. A failing cell raises ModelFitError naming the model and the penalizers it tried."""
    configurations = clv_configurations(SEARCHES)
    # Every family but MBG/CNBD-k, which the searches leave out: on CDNOW it picks k = 1, i.e. MBG/NBD.
    assert {family for family, _, _ in configurations.values()} == set(CLV_FAMILIES) - {"mbgcnbd"}
    assert {settings["penalizer"] for _, settings, _ in configurations.values()} >= {0.0, 0.0001, 0.001}
    for family, settings, cell in configurations.values():
        model = CLVModel(family=family, **settings).fit(cdnow_calibration)
        # The grid's penalizer is the purchase model's: Gamma-Gamma keeps its own (0.0) and its plain fit.
        assert model.purchase_penalizer_used_ == settings["penalizer"], cell
        assert model.spend_penalizer_used_ == 0.0 and model.spend_fallback_ is None, cell
        assert model.params_.spend["q"] > 1, cell
