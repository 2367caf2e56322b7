"""Every config option composes against the typed schema; typos fail at composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from customer_value.errors import UserError
from customer_value.jobs import load_orders
from customer_value.schema import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


GROUP_OPTIONS = [
    (group, option)
    for group in ("data", "features", "clv", "segmentation", "tracking")
    for option in _options(group)
]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"] + (["data.path=orders.csv"] if option == "file" else [])
    cfg = _compose("train", overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = _compose("train", [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _compose("train", [])
    assert cfg.data.bundled == "cdnow_master"
    assert cfg.split.calibration_end == "1997-09-30"
    assert cfg.features.time_unit == "weeks"
    assert cfg.tracking.uri == "sqlite:///mlruns/mlflow.db"
    assert (cfg.tracking.clv_experiment, cfg.tracking.segments_experiment) == (
        "customer-clv",
        "customer-segments",
    )
    assert cfg.tracking.alias == "champion"
    score = _compose("score", [])
    assert score.score.output == "scores/customer_scores.parquet"
    assert score.score.as_of is None and score.score.horizon_days is None


def test_tracking_uri_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert _compose("train", []).tracking.uri == "http://127.0.0.1:5999"


@pytest.mark.parametrize(
    "override", ["clv.penaliser=0.1", "segmentation.n_clusters=five", "data.colums.amount=x"]
)
def test_typos_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        _compose("train", [override])


def test_file_data_requires_a_path() -> None:
    cfg = _compose("train", ["data=file"])
    with pytest.raises(UserError, match="data.path is required"):
        load_orders(cfg.data)
