"""Typed schemas behind the YAML in ``conf/``: a misspelt key fails at composition, not mid-run.

Call :func:`register_configs` before Hydra composes (the entry points do); nothing happens at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

TIME_UNITS_DAYS = {"days": 1.0, "weeks": 7.0}


@dataclass
class ColumnsConfig:
    customer_id: str = "customer_id"
    timestamp: str = "timestamp"
    amount: str = "amount"


@dataclass
class DataConfig:
    name: str = MISSING
    bundled: str | None = None  # a dataset shipped in a package (see data.BUNDLED), else read `path`
    path: str | None = None  # CSV or Parquet, chosen by extension
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    timestamp_format: str | None = None  # strptime format; null = ISO 8601 (date or date-time, any offset)
    keep_zero_amounts: bool = False  # zero-value orders count as purchases (negative ones never do)


@dataclass
class SplitConfig:
    calibration_end: str | None = None  # YYYY-MM-DD, inclusive; null = cut at calibration_share
    calibration_share: float = 0.5  # share of the observed time range used for calibration


@dataclass
class FeaturesConfig:
    time_unit: str = "weeks"  # unit of the BTYD parameters: days | weeks (durations are whole days)


@dataclass
class CLVConfig:
    model: str = "bgnbd_gg"  # BG/NBD purchases x Gamma-Gamma spend
    penalizer: float = 0.0  # L2 penalty on the log-parameters (lifetimes' penalizer_coef)
    horizon_days: float = 365.0  # default prediction horizon of the registered model
    discount_rate: float = 0.10  # ANNUAL discount rate
    discount_step_days: float = 365.25 / 12  # value is discounted at the end of each step
    refit_full_history: bool = True  # registered model refit on all data up to the last order
    primary_metric: str = "holdout.revenue_spearman"  # gate metric, higher is better


@dataclass
class SegmentationConfig:
    algorithm: str = "kmeans"
    n_clusters: int = 5
    silhouette_sample: int = 10_000
    primary_metric: str = "segments.silhouette"  # gate metric, higher is better


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"  # used for a local (SQLite) store only
    clv_experiment: str = "customer-clv"
    segments_experiment: str = "customer-segments"
    clv_model: str = "customer-clv"
    segments_model: str = "customer-segments"
    alias: str = "champion"
    register: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    clv: CLVConfig = field(default_factory=CLVConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42
    run_name: str | None = None
    optimized_metric: str = "holdout.revenue_spearman"


@dataclass
class ScoreOptions:
    as_of: str | None = None  # YYYY-MM-DD; null = the last order date in the data
    output: str = "scores/customer_scores.parquet"  # .parquet or .csv
    horizon_days: float | None = None  # null = the registered model's default


@dataclass
class ScoreConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)  # set by data options; unused when scoring
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    score: ScoreOptions = field(default_factory=ScoreOptions)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="score_schema", node=ScoreConfig)
