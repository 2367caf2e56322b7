"""Every config option composes against the typed schema; typos fail at composition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from customer_value.data.loading import LoadingRules
from customer_value.data.sources import load_orders
from customer_value.errors import UserError
from customer_value.schema import (
    register_configs,
    validate_monitor_config,
    validate_score_config,
    validate_train_config,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def _compose(config: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


GROUPS = {
    "train": ("data", "features", "clv", "segmentation", "tracking", "privacy"),
    "score": ("data", "tracking", "engine", "privacy"),
    "monitor": ("data", "tracking", "privacy"),
    "campaign": ("tracking", "campaign", "privacy"),
    "campaign_report": ("data", "tracking", "privacy"),
    "forget": ("privacy",),
}
GROUP_OPTIONS = [
    (config, group, option)
    for config, groups in GROUPS.items()
    for group in groups
    for option in _options(group)
]


@pytest.mark.parametrize(
    ("config", "group", "option"), GROUP_OPTIONS, ids=[f"{c}:{g}={o}" for c, g, o in GROUP_OPTIONS]
)
def test_every_group_option_composes(config: str, group: str, option: str) -> None:
    overrides = [f"{group}={option}"] + (["data.path=orders.csv"] if option == "file" else [])
    cfg = _compose(config, overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_every_group_folder_is_covered() -> None:
    folders = {path.name for path in CONF.iterdir() if path.is_dir()} - {"experiment", "hparams_search"}
    assert folders == {group for groups in GROUPS.values() for group in groups}


def test_spark_settings_compose_from_the_command_line() -> None:
    cfg = _compose(
        "score",
        ["engine=spark", "engine.master=spark://host:7077", "+engine.conf.spark.executor.memory=4g"],
    )
    assert cfg.engine.name == "spark" and cfg.engine.master == "spark://host:7077"
    assert cfg.engine.conf == {"spark": {"executor": {"memory": "4g"}}}  # joined with dots by the engine
    assert _compose("score", []).engine.name == "pandas"


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = _compose("train", [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_the_segments_sweep_covers_algorithm_by_k() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["hparams_search=segments_grid"], return_hydra_config=True
        )
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric == "segments.silhouette"
    assert params["segmentation"].split(",") == ["kmeans", "minibatch_kmeans", "gmm", "ward"]
    assert params["segmentation.n_clusters"].split(",") == ["4", "5", "6", "7", "8"]
    # Every cell composes and validates as a run would.
    for algorithm in params["segmentation"].split(","):
        cell = _compose(
            "train", [f"segmentation={algorithm}", "segmentation.k_values=[]", "segmentation.n_clusters=8"]
        )
        validate_train_config(cell)


@pytest.mark.parametrize("search", _options("hparams_search"))
def test_every_search_composes_with_the_parallel_launcher_and_its_cells_validate(search: str) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hparams_search={search}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            return_hydra_config=True,
        )
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.launcher.n_jobs == 2
    assert cfg.hydra.callbacks.sweep_tracking._target_ == "customer_value.jobs.sweep.SweepTracking"
    assert cfg.optimized_metric in {cfg.clv.primary_metric, cfg.segmentation.primary_metric}
    for key, values in cfg.hydra.sweeper.params.items():
        choices = re.findall(r"[\w.]+", values.removeprefix("choice")) if "(" in values else values.split(",")
        for value in choices:
            validate_train_config(_compose("train", [f"{key}={value}"]))


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


@pytest.mark.parametrize("override", ["engine=sparkk", "engine.mastr=yarn", "engine.conf=4g"])
def test_score_typos_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        _compose("score", [override])


@pytest.mark.parametrize(
    "override", ["monitor.score=[x.parquet]", "monitor.drift.major=0.3", "monitor.report=maybe"]
)
def test_monitor_typos_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        _compose("monitor", [override])


BAD_MONITOR_VALUES = {
    "monitor.scores=[]": "monitor.scores is empty",
    "+monitor.retrain.tolerances.purchases_mae=1": "['purchases_mae'] cannot be watched",
    "monitor.retrain.tolerances.churn_auc=-0.1": "tolerances must be >= 0",
    "monitor.retrain.min_elapsed_share=2": "min_elapsed_share must be in [0, 1]",
    "monitor.drift.moderate_psi=0.5": "moderate_psi <= major_psi",
}


@pytest.mark.parametrize("override", list(BAD_MONITOR_VALUES))
def test_bad_monitor_values_are_one_line_errors(override: str) -> None:
    with pytest.raises(UserError, match=re.escape(BAD_MONITOR_VALUES[override])):
        validate_monitor_config(_compose("monitor", [override]))


def test_monitor_defaults_watch_the_gate_metrics_and_read_the_default_scoring() -> None:
    cfg = _compose("monitor", [])
    validate_monitor_config(cfg)
    assert list(cfg.monitor.scores) == [_compose("score", []).score.output]
    assert dict(cfg.monitor.retrain.tolerances) == {"churn_auc": 0.05, "top_decile_revenue_capture": 0.05}
    assert cfg.tracking.monitoring_experiment == "customer-monitoring"


def test_file_data_requires_a_path() -> None:
    cfg = _compose("train", ["data=file"])
    with pytest.raises(UserError, match="data.path is required"):
        load_orders(cfg.data)


BAD_TRAIN_VALUES = {
    "split.calibration_end=not-a-date": "split.calibration_end='not-a-date' is not a date",
    "clv.horizon_days=-30": "clv.horizon_days must be > 0",
    "clv.discount_step_days=0": "clv.discount_step_days must be > 0",
    "clv.discount_step_days=0.25": "clv.discount_step_days must be >= 1 day, got 0.25",
    "clv.horizon_days=8000": "clv.horizon_days=8000 is beyond the bound of 7,305 days (20 years)",
    "clv.horizon_days=1e9": "clv.horizon_days=1e+09 is beyond the bound",
    "clv.penalizer=-1": "clv.penalizer must be >= 0",
    "clv.primary_metric=holdout.revenue_spearmann": "clv.primary_metric must be one of",
    "clv.family=pareto": "clv.family must be one of",
    "clv.fallback_penalizers=[-1]": "clv.fallback_penalizers must be >= 0",
    "clv.spend_penalizer=-1": "clv.spend_penalizer must be >= 0",
    "clv.spend_fallback_penalizers=[-1]": "clv.spend_fallback_penalizers must be >= 0",
    "clv.heavy_tail_spend=winsorise": "clv.heavy_tail_spend must be one of",
    "clv.heavy_tail_quantile=1.5": "clv.heavy_tail_quantile must be in [0.5, 1]",
    "clv.backtest.step_days=0": "clv.backtest needs folds >= 0, step_days > 0",
    "clv.layers.inner_horizons_days=[]": "clv.layers.inner_horizons_days must be a non-empty list",
    "segmentation.n_clusters=1": "segmentation.n_clusters must be >= 2",
    "segmentation.algorithm=dbscan": "segmentation.algorithm must be one of",
    "segmentation.primary_metric=segments.davies_bouldin": "segmentation.primary_metric must be one of",
    "segmentation.k_values=[1,3]": "segmentation.k_values must all be >= 2",
    "segmentation.k_rule=bic": "segmentation.k_rule=bic needs segmentation.algorithm=gmm",
    "segmentation.k_rule=elbow": "segmentation.k_rule must be one of",
    "segmentation.preprocessing=zscore": "segmentation.preprocessing must be log, quantile or robust",
    "segmentation.min_share=1.5": "segmentation.min_share must be in [0, 1)",
    "clv.intervals.level=1.2": "clv.intervals.level must be in (0, 1)",
    "features.time_unit=months": "features.time_unit must be one of",
    "optimized_metric=accuracy": "optimized_metric must be one of",
}


@pytest.mark.parametrize("override", BAD_TRAIN_VALUES, ids=list(BAD_TRAIN_VALUES))
def test_bad_train_values_are_refused_before_anything_runs(override: str) -> None:
    with pytest.raises(UserError, match=re.escape(BAD_TRAIN_VALUES[override])):
        validate_train_config(_compose("train", [override]))


BAD_SCORE_VALUES = {
    "score.as_of=yesterday": "score.as_of='yesterday' is not a date",
    "score.horizon_days=-5": "score.horizon_days must be > 0",
    "score.horizon_days=1e9": "score.horizon_days=1e+09 is beyond the bound of 7,305 days (20 years)",
    "score.horizon_days=inf": "score.horizon_days=inf is beyond the bound",
    "score.output=scores.xlsx": "must end in .parquet or .csv",
    "engine.name=dask": "engine.name must be one of",
}


@pytest.mark.parametrize("override", BAD_SCORE_VALUES, ids=list(BAD_SCORE_VALUES))
def test_bad_score_values_are_refused(override: str) -> None:
    with pytest.raises(UserError, match=re.escape(BAD_SCORE_VALUES[override])):
        validate_score_config(_compose("score", [override]))


def test_the_horizon_bound_counts_discount_steps() -> None:
    """20 years of the default monthly steps is the bound; with weekly steps the step count comes first."""
    validate_train_config(_compose("train", ["clv.horizon_days=7305"]))
    validate_train_config(_compose("train", ["clv.discount_step_days=7", "clv.horizon_days=1680"]))
    with pytest.raises(UserError, match=re.escape("needs 241 discount steps of 7 day(s); at most 240")):
        validate_train_config(_compose("train", ["clv.discount_step_days=7", "clv.horizon_days=1681"]))


def test_default_configs_are_valid() -> None:
    validate_train_config(_compose("train", []))
    validate_score_config(_compose("score", []))


@pytest.mark.parametrize("config", ["train", "score"])
@pytest.mark.parametrize("data", _options("data"))
def test_every_data_option_gives_loading_rules(config: str, data: str) -> None:
    """Every loader takes its rules from the same keys, so none can be read by one engine and not another."""
    assert LoadingRules.from_config(_compose(config, [f"data={data}"]).data) == LoadingRules()
    strict = ["data.max_bad_row_share=0.01", "data.drop_duplicate_rows=true", "data.keep_zero_amounts=true"]
    rules = LoadingRules.from_config(_compose(config, [f"data={data}", *strict]).data)
    assert rules == LoadingRules(keep_zero_amounts=True, drop_duplicate_rows=True, max_bad_row_share=0.01)
