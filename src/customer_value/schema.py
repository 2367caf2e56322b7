"""Typed schemas behind the YAML in ``conf/``: a misspelt key fails at composition, not mid-run.

Call :func:`register_configs` before Hydra composes (the entry points do); nothing happens at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from customer_value.data.customers import canonical_name
from customer_value.errors import UserError
from customer_value.models.clv.bounds import check_discount_step, check_horizon
from customer_value.models.segments.attributes import attributes_file, refuse_protected_features

# conf/ of the checkout, as an absolute path: Hydra resolves a relative config_path against the *module*
# when a job's main runs under another name (the ``python -m customer_value.train`` shim), and fails.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
TIME_UNITS_DAYS = {"days": 1.0, "weeks": 7.0}


@dataclass
class ColumnsConfig:
    customer_id: str = "customer_id"
    timestamp: str = "timestamp"
    amount: str | None = "amount"  # null: a log without amounts (visits, logins): no value outputs


@dataclass
class AnchorConfig:
    """A reference figure measured elsewhere (e.g. plain lifetimes) that a project metric must beat."""

    metric: str = MISSING  # the project's metric, e.g. holdout.churn_auc
    value: float = MISSING
    better: str = "higher"  # higher | lower | closer_to_zero


@dataclass
class AnchorsConfig:
    calibration_end: str | None = None  # the split the anchors were measured on; other splits skip them
    figures: dict[str, AnchorConfig] = field(default_factory=dict)  # anchor name -> figure


@dataclass
class CustomersConfig:
    """The dataset's customer file: one row per customer, read by segmentation and the CLV covariates."""

    path: str | None = None  # CSV or Parquet, chosen by extension; null = no customer file
    id: str = "customer_id"  # its id column (matched to the order log's ids as stripped text)


@dataclass
class DataConfig:
    name: str = MISSING
    bundled: str | None = None  # a dataset shipped in a package (see data.BUNDLED), else read `path`
    path: str | None = None  # CSV or Parquet, chosen by extension
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    timestamp_format: str | None = None  # strptime format; null = ISO 8601 (date or date-time, any offset)
    keep_zero_amounts: bool = False  # zero-value orders count as purchases (negative ones never do)
    drop_duplicate_rows: bool = False  # drop rows equal to another in customer, timestamp and amount
    max_bad_row_share: float = (
        0.0  # bad rows (blank id, bad or implausible date, bad or absurd amount) dropped up to this share
    )
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)  # logged beside the project's figures
    customers: CustomersConfig = field(default_factory=CustomersConfig)


@dataclass
class SplitConfig:
    calibration_end: str | None = None  # YYYY-MM-DD, inclusive; null = cut at calibration_share
    calibration_share: float = 0.5  # share of the observed time range used for calibration


@dataclass
class FeaturesConfig:
    time_unit: str = "weeks"  # unit of the BTYD parameters: days | weeks (durations are whole days)


@dataclass
class BacktestConfig:
    folds: int = 3  # rolling origins ending at the calibration end; 0 or 1 = no backtest
    step_days: int = 30  # days between origins


@dataclass
class LayersConfig:
    churn: bool = False  # the churn layer alone (needs clv.churn.select=false; it is one of its candidates)
    value: bool = True  # learned value layer on RFM + BTYD outputs (see value_layer.py)
    # Days before the calibration end; derived from the calibration window when they do not fit it.
    inner_horizons_days: list[int] = field(default_factory=lambda: [91, 133, 182])
    check: bool = True  # keep a layer only if it beats the purchase model on a check (layer_selection)


@dataclass
class ChurnConfig:
    """The churn output: chosen per horizon band among candidates (see models/clv/churn_selection.py)."""

    select: bool = True  # false: the purchase model's own probability (or clv.layers.churn's layer)
    # Band horizons (days): each band's candidate is chosen on windows this long (or the longest that fit).
    horizons_days: list[int] = field(default_factory=lambda: [91, 182, 273, 365])
    candidates: list[str] = field(
        default_factory=lambda: ["purchase_model", "recency", "recency_frequency_tenure", "layer"]
    )
    folds: int = 2  # backtest windows per band, ending step_days apart (fewer when the history is short)
    step_days: int = 91
    gate: bool = True  # a model whose holdout churn AUC loses to a baseline beyond its interval: challenger


@dataclass
class IntervalsConfig:
    level: float = 0.9  # central probability of every interval
    draws: int = 100  # parametric-bootstrap draws for the expectation intervals; 0 = parameter-free
    evaluation_sample: int = 100_000  # holdout coverage of the intervals on at most this many customers


@dataclass
class CovariatesConfig:
    """Customer-file columns that shift the purchase model's heterogeneity (numeric: standardised on the
    training base; text: one-hot against its most frequent level)."""

    purchase: list[str] = field(default_factory=list)  # alpha_i = alpha0 * exp(-gamma . z_i), both families
    dropout: list[str] = field(default_factory=list)  # Pareto/NBD beta_i; BG/NBD a_i and b_i (own coefs)


@dataclass
class CLVConfig:
    family: str = "bgnbd"  # purchase model: bgnbd | mbgnbd | pareto_nbd | mbgcnbd | auto (best, inner window)
    penalizer: float = 0.0  # the purchase model's L2 penalty (lifetimes' penalizer_coef)
    fallback_penalizers: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1])  # purchase, in order
    spend_penalizer: float = 0.0  # Gamma-Gamma's own L2 penalty (on p^2 + q^2 + v^2; v in currency units)
    spend_fallback_penalizers: list[float] = field(default_factory=lambda: [0.0001, 0.001])  # spend, in order
    heavy_tail_spend: str = "constrain_mean"  # Gamma-Gamma q <= 1: constrain_mean (refit) | fail
    heavy_tail_quantile: float = 0.99  # constrain_mean: repeat buyers' mean spend winsorised here
    independence_threshold: float = 0.3  # |corr(frequency, spend)| above this: Gamma-Gamma warning
    horizon_days: float = 365.0  # default prediction horizon of the registered model
    discount_rate: float = 0.10  # ANNUAL discount rate
    discount_step_days: float = 365.25 / 12  # value is discounted at the end of each step
    refit_full_history: bool = True  # registered model refit on all data up to the last order
    evaluation_sample: int = 100_000  # family choice, layers, gate bootstrap, backtest: a seeded sample
    primary_metric: str = "holdout.revenue_spearman"  # gate metric, higher is better
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    covariates: CovariatesConfig = field(default_factory=CovariatesConfig)


@dataclass
class StabilityConfig:
    bootstrap_resamples: int = 5  # refits on bootstrap resamples; 0 = skip
    window_days: int = 90  # compare with a fit this many days earlier; 0 = skip


PROTECTED_DEFAULT = ["age", "gender", "sex", "race", "ethnicity", "religion", "disability", "marital_status"]


@dataclass
class AttributesConfig:
    path: str | None = None  # another customer file (older configs); null = data.customers.path, if any
    customer_id: str = "customer_id"  # its id column (data.customers.id goes with data.customers.path)
    numeric: list[str] = field(default_factory=list)  # clustering features: median-imputed, standardised
    categorical: list[str] = field(default_factory=list)  # clustering features: one-hot
    protected: list[str] = field(default_factory=lambda: list(PROTECTED_DEFAULT))  # never features; audited


@dataclass
class SegmentationConfig:
    algorithm: str = "kmeans"  # see clusterers.ALGORITHMS
    preprocessing: str = "log"  # log (log1p, winsorised) | quantile (normal scores) | robust (median/IQR)
    n_clusters: int = 5  # used when k_values is empty (and by no k-free algorithm)
    k_values: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])  # candidate k; [] = n_clusters
    k_rule: str = "silhouette"  # silhouette | calinski_harabasz | davies_bouldin | bic (gmm)
    min_share: float = 0.05  # every segment must hold at least this share (smaller clusters are merged)
    min_distinctness: float = 0.5  # pairs closer than this (SD, on every KPI) are merged
    min_segments: int = 3  # fewer segments after merging: that k is not chosen
    tenure_min_r2_gain: float = 0.02  # tenure is clustered on only when it explains this much KPI variance
    fit_sample: int = 20_000  # ward and hdbscan fit on at most this many customers (O(n^2) memory)
    min_cluster_size: int = 50  # hdbscan
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    actions: dict[str, str] = field(default_factory=dict)  # segment base name -> recommended action
    extra_features: list[str] = field(default_factory=list)  # clv, churn_probability: value-based segments
    attributes: AttributesConfig = field(default_factory=AttributesConfig)
    silhouette_sample: int = 10_000
    selection_sample: int = 100_000  # k-selection curves and bootstrap refits on at most this many customers
    primary_metric: str = "segments.silhouette"  # gate metric, higher is better


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"  # used for a local (SQLite) store only
    # A team server's login in MLflow's credentials-file format (make server-user writes one); MLflow's
    # MLFLOW_TRACKING_USERNAME / _PASSWORD win over it, and ~/.mlflow/credentials is read without it.
    credentials_file: str | None = None
    clv_experiment: str = "customer-clv"
    segments_experiment: str = "customer-segments"
    scoring_experiment: str = "customer-scoring"  # one run per scoring: its report (and migration)
    monitoring_experiment: str = "customer-monitoring"  # one run per monitored scoring
    campaigns_experiment: str = "customer-campaigns"  # one run per campaign: definition, sizes (no ids)
    clv_model: str = "customer-clv"
    segments_model: str = "customer-segments"
    alias: str = "champion"
    register: bool = True
    plots: bool = True  # false: no figures in the runs or the reports (sweeps and plumbing: ~3 s a train)


@dataclass
class EngineConfig:
    name: str = "pandas"  # pandas | spark (see spark/scoring.py, spark/training.py)
    master: str | None = "local[*]"  # spark only; null = whatever spark-submit / spark-defaults.conf set
    app_name: str = "customer-value"  # spark only
    conf: dict[str, Any] = field(default_factory=dict)  # spark only: spark.* settings (nested keys join)
    sample_customers: int = 200_000  # spark training: customers the driver holds (the rest: pattern counts)
    # spark: null = csv/parquet by data.path's extension; orc, delta, table...
    input_format: str | None = None
    input_options: dict[str, Any] = field(default_factory=dict)  # spark: reader options for input_format


@dataclass
class PrivacyConfig:
    """Who may not be profiled (privacy/suppression.py, docs/privacy.md)."""

    objection_column: str | None = None  # customer-file column; true = objects to profiling
    consent_column: str | None = None  # customer-file column; only true may be profiled
    objection_scope: str = "all"  # all: out of training too | outputs: trained on, in no output
    suppression_list: str = ".secrets/suppression.csv"  # keyed hashes of forgotten customers (make forget)
    key_file: str = ".secrets/privacy.key"  # PRIVACY_KEY wins; created 0600 on first use; back it up


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    clv: CLVConfig = field(default_factory=CLVConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 42
    run_name: str | None = None
    optimized_metric: str = "holdout.revenue_spearman"


@dataclass
class ScoreOptions:
    as_of: str | None = None  # YYYY-MM-DD; null = the last order date in the data
    output: str = "scores/customer_scores.parquet"  # .parquet or .csv
    horizon_days: float | None = None  # null = the registered model's default
    intervals: bool = True  # add the prediction-interval columns (see uncertainty.py)
    attributes_path: str | None = None  # overrides data.customers.path for the segments model's attributes
    previous: str | None = None  # an earlier scoring output: write and log the segment migration
    chunk_customers: int = 250_000  # customers scored and written at a time (bounds the outputs' memory)
    report: bool = True  # write the segment report beside the table (<name>.report.html) and log it
    sink: str | None = None  # postgresql://user@host:port/db: upsert membership + change set (crm/sink.py)
    sink_table: str = "segment_membership"  # and <sink_table>_changes
    reasons: bool = True  # why each customer is in its segment: margin, its parts, reason_1..3 in words
    pseudonymise: bool = False  # keyed pseudonyms (privacy key) instead of ids in the table


@dataclass
class ScoreConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)  # set by data options; unused when scoring
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    score: ScoreOptions = field(default_factory=ScoreOptions)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class RetrainConfig:
    """When monitoring recommends a retrain: a watched metric short of the version's own holdout figure."""

    # metric -> how far (absolute) it may fall short: churn_auc, top_decile_revenue_capture,
    # revenue_spearman (higher is better) or churn_brier (lower is better)
    tolerances: dict[str, float] = field(
        default_factory=lambda: {"churn_auc": 0.05, "top_decile_revenue_capture": 0.05}
    )
    min_elapsed_share: float = 0.5  # no verdict before this share of the scoring's horizon has passed


@dataclass
class DriftThresholds:
    moderate_psi: float = 0.1  # PSI above this: a moderate shift (named in monitor.drift_columns)
    major_psi: float = 0.25  # above this: a shift worth acting on (tag monitor.drift=major)


@dataclass
class MonitorOptions:
    scores: list[str] = field(default_factory=lambda: ["scores/customer_scores.parquet"])
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    report: bool = True  # rewrite each scoring's segment report with the realised outcomes


@dataclass
class MonitorConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)  # set by data options; unused when monitoring
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    monitor: MonitorOptions = field(default_factory=MonitorOptions)


@dataclass
class CampaignPower:
    """The lift in purchase rate a campaign should be able to detect, and the test it is judged by."""

    relative_lift: float = 0.10  # +10 % purchase rate in treatment over control
    alpha: float = 0.05  # two-sided
    power: float = 0.8
    base_rate: float | None = None  # control's purchase rate; null = the audience's mean purchase_probability


@dataclass
class CampaignOptions:
    id: str = "example"  # names the lists' folder, the run and the arms' key: a new id draws new arms
    scores: str = "scores/customer_scores.parquet"  # a scoring output (make score)
    audience: list[Any] = field(default_factory=list)  # rules: see customer_value.campaign.audience
    control_share: float = 0.10  # of the audience outside the global holdout
    global_holdout_share: float = 0.05  # standing: the same customers are held back from every campaign
    power: CampaignPower = field(default_factory=CampaignPower)
    output_dir: str = "campaigns"  # lists go to <output_dir>/<id>/<arm>/<segment>.csv and .parquet
    key_env: str = "CAMPAIGN_KEY"  # the secret behind the arms' keyed hash, else key_file
    key_file: str = ".secrets/campaign.key"  # created 0600 on first use; git-ignored
    value_column: str = "expected_revenue"  # the expected value summed per arm and segment
    start: str | None = None  # YYYY-MM-DD the offer takes effect; null = the scoring's as-of date


@dataclass
class CampaignConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    campaign: CampaignOptions = field(default_factory=CampaignOptions)


@dataclass
class CampaignReportOptions:
    campaign_id: str = "winback"  # the campaign's run (latest with tag campaign.id) and its lists
    end: str | None = None  # YYYY-MM-DD the window ends; null = the last order day in the data
    output: str | None = None  # the HTML page; null = <the campaign's lists folder>/report.html


@dataclass
class CampaignReportConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)  # set by data options; unused here
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    report: CampaignReportOptions = field(default_factory=CampaignReportOptions)


@dataclass
class ForgetOptions:
    ids: str | None = None  # the request: a file of customer ids (--ids FILE)
    reason: str = "erasure"  # erasure | objection (recorded on the suppression list)
    # folders whose tables are rewritten without them
    outputs: list[str] = field(default_factory=lambda: ["scores", "campaigns"])
    sink: str | None = None  # the PostgreSQL URL scoring syncs to (score.sink): their rows deleted there too
    sink_table: str = "segment_membership"  # as score.sink_table


@dataclass
class ForgetConfig:
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    forget: ForgetOptions = field(default_factory=ForgetOptions)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="score_schema", node=ScoreConfig)
    store.store(name="monitor_schema", node=MonitorConfig)
    store.store(name="campaign_schema", node=CampaignConfig)
    store.store(name="campaign_report_schema", node=CampaignReportConfig)
    store.store(name="forget_schema", node=ForgetConfig)


# Gate metrics are "higher is better"; a sweep may optimise any metric listed here.
CLV_GATE_METRICS = ("holdout.revenue_spearman", "holdout.churn_auc", "holdout.top_decile_revenue_capture")
SEGMENT_GATE_METRICS = ("segments.silhouette", "segments.calinski_harabasz")
OPTIMIZABLE_METRICS = (
    *CLV_GATE_METRICS,
    *SEGMENT_GATE_METRICS,
    "holdout.purchases_mae",
    "holdout.churn_brier",
    "segments.davies_bouldin",
)
# Metrics that need amounts; on a log without them the gate (and a sweep's objective) falls back to a
# purchase metric, and the run says so (tag clv.primary_metric_substituted).
REVENUE_METRICS = ("holdout.revenue_spearman", "holdout.top_decile_revenue_capture")
PURCHASE_ONLY_GATE_METRIC = "holdout.churn_auc"
CLV_FAMILIES = ("bgnbd", "mbgnbd", "pareto_nbd", "mbgcnbd")
# Families without a covariate model, by label (as models/clv/btyd.FAMILIES; no lifetimes at config time).
NO_COVARIATE_FAMILIES = {"mbgnbd": "MBG/NBD", "mbgcnbd": "MBG/CNBD-k"}
# Keys of models/clv/churn_selection.CANDIDATES (a test keeps them equal; no model import at config time).
CHURN_CANDIDATES = ("purchase_model", "other_families", "recency", "recency_frequency_tenure", "layer")
HEAVY_TAIL_SPEND = ("constrain_mean", "fail")  # as clv.HEAVY_TAIL_SPEND (schema must not import lifetimes)


def data_has_amounts(data: DictConfig) -> bool:
    """Whether the configured log has amounts: bundled logs do, a file unless data.columns.amount=null."""
    return bool(data.bundled) or data.columns.amount is not None


def clv_metric_for(metric: str, has_amounts: bool) -> str:
    """The metric a CLV run can actually be judged on: a revenue metric becomes the purchase-only gate
    metric when the log has no amounts; any other metric is kept."""
    return PURCHASE_ONLY_GATE_METRIC if not has_amounts and metric in REVENUE_METRICS else metric


ANCHOR_DIRECTIONS = ("higher", "lower", "closer_to_zero")
SEGMENTATION_ALGORITHMS = ("kmeans", "minibatch_kmeans", "gmm", "ward", "hdbscan", "rfm_quintiles")
K_RULES = ("silhouette", "calinski_harabasz", "davies_bouldin", "bic")
SCORE_ENGINES = ("pandas", "spark")


def parse_day(value: str | None, key: str) -> pd.Timestamp | None:
    """A YYYY-MM-DD config value as a day, or a one-line UserError naming the key."""
    if value is None:
        return None
    try:
        return pd.Timestamp(str(value)).normalize()
    except (ValueError, TypeError):
        raise UserError(f"{key}={value!r} is not a date; use YYYY-MM-DD") from None


def validate_train_config(cfg: DictConfig) -> None:
    """Refuse values that would only fail half-way through a run (or, worse, register a broken model)."""
    checks = [
        (
            cfg.features.time_unit in TIME_UNITS_DAYS,
            f"features.time_unit must be one of {list(TIME_UNITS_DAYS)}",
        ),
        (cfg.clv.family in (*CLV_FAMILIES, "auto"), f"clv.family must be one of {[*CLV_FAMILIES, 'auto']}"),
        (
            cfg.clv.backtest.folds >= 0 and cfg.clv.backtest.step_days > 0,
            "clv.backtest needs folds >= 0, step_days > 0",
        ),
        (all(p >= 0 for p in cfg.clv.fallback_penalizers), "clv.fallback_penalizers must be >= 0"),
        (
            all(p >= 0 for p in cfg.clv.spend_fallback_penalizers),
            "clv.spend_fallback_penalizers must be >= 0",
        ),
        (cfg.clv.spend_penalizer >= 0, "clv.spend_penalizer must be >= 0"),
        (
            cfg.clv.heavy_tail_spend in HEAVY_TAIL_SPEND,
            f"clv.heavy_tail_spend must be one of {list(HEAVY_TAIL_SPEND)}",
        ),
        (0.5 <= cfg.clv.heavy_tail_quantile <= 1, "clv.heavy_tail_quantile must be in [0.5, 1]"),
        (0 <= cfg.data.max_bad_row_share < 1, "data.max_bad_row_share must be in [0, 1)"),
        (
            len(cfg.clv.layers.inner_horizons_days) > 0 and min(cfg.clv.layers.inner_horizons_days) > 0,
            "clv.layers.inner_horizons_days must be a non-empty list of positive day counts",
        ),
        (cfg.clv.penalizer >= 0, "clv.penalizer must be >= 0"),
        (
            not (cfg.clv.churn.select and cfg.clv.layers.churn),
            "clv.layers.churn=true needs clv.churn.select=false (the churn layer is one of its candidates)",
        ),
        (
            len(cfg.clv.churn.horizons_days) > 0 and min(cfg.clv.churn.horizons_days) > 0,
            "clv.churn.horizons_days must be a non-empty list of positive day counts",
        ),
        (
            len(cfg.clv.churn.candidates) > 0 and set(cfg.clv.churn.candidates) <= set(CHURN_CANDIDATES),
            f"clv.churn.candidates must be a non-empty subset of {list(CHURN_CANDIDATES)}",
        ),
        (
            cfg.clv.churn.folds >= 1 and cfg.clv.churn.step_days > 0,
            "clv.churn needs folds >= 1, step_days > 0",
        ),
        (0 < cfg.clv.intervals.level < 1, "clv.intervals.level must be in (0, 1)"),
        (cfg.clv.intervals.draws >= 0, "clv.intervals.draws must be >= 0"),
        (cfg.clv.horizon_days > 0, "clv.horizon_days must be > 0"),
        *_engine_checks(cfg),
        (cfg.clv.discount_rate > -1, "clv.discount_rate (annual) must be > -1"),
        (cfg.clv.discount_step_days > 0, "clv.discount_step_days must be > 0"),
        (
            cfg.clv.primary_metric in CLV_GATE_METRICS,
            f"clv.primary_metric must be one of {list(CLV_GATE_METRICS)}",
        ),
        (
            cfg.segmentation.algorithm in SEGMENTATION_ALGORITHMS,
            f"segmentation.algorithm must be one of {list(SEGMENTATION_ALGORITHMS)}",
        ),
        (cfg.segmentation.n_clusters >= 2, "segmentation.n_clusters must be >= 2"),
        (all(k >= 2 for k in cfg.segmentation.k_values), "segmentation.k_values must all be >= 2"),
        (cfg.segmentation.k_rule in K_RULES, f"segmentation.k_rule must be one of {list(K_RULES)}"),
        (
            cfg.segmentation.k_rule != "bic" or cfg.segmentation.algorithm == "gmm",
            "segmentation.k_rule=bic needs segmentation.algorithm=gmm",
        ),
        (
            cfg.segmentation.preprocessing in ("log", "quantile", "robust"),
            "segmentation.preprocessing must be log, quantile or robust",
        ),
        (0 <= cfg.segmentation.min_share < 1, "segmentation.min_share must be in [0, 1)"),
        (cfg.segmentation.min_distinctness >= 0, "segmentation.min_distinctness must be >= 0"),
        (cfg.segmentation.min_segments >= 2, "segmentation.min_segments must be >= 2"),
        (cfg.segmentation.fit_sample >= 100, "segmentation.fit_sample must be >= 100"),
        (cfg.segmentation.min_cluster_size >= 2, "segmentation.min_cluster_size must be >= 2"),
        (
            set(cfg.segmentation.extra_features) <= {"clv", "churn_probability", "regularity"},
            "segmentation.extra_features may hold clv, churn_probability and regularity only",
        ),
        (
            data_has_amounts(cfg.data) or "clv" not in cfg.segmentation.extra_features,
            "segmentation.extra_features=[clv] needs amounts: a log without them (data.columns.amount=null) "
            "has no clv",
        ),
        (
            attributes_file(cfg) is not None
            or not (cfg.segmentation.attributes.numeric or cfg.segmentation.attributes.categorical),
            "segmentation.attributes.numeric / categorical need a customer file: set data.customers.path "
            "(or segmentation.attributes.path)",
        ),
        (
            cfg.segmentation.stability.bootstrap_resamples >= 0
            and cfg.segmentation.stability.window_days >= 0,
            "segmentation.stability values must be >= 0",
        ),
        (cfg.segmentation.silhouette_sample >= 100, "segmentation.silhouette_sample must be >= 100"),
        (cfg.segmentation.selection_sample >= 100, "segmentation.selection_sample must be >= 100"),
        (cfg.clv.intervals.evaluation_sample >= 100, "clv.intervals.evaluation_sample must be >= 100"),
        (cfg.clv.evaluation_sample >= 100, "clv.evaluation_sample must be >= 100"),
        (
            cfg.segmentation.primary_metric in SEGMENT_GATE_METRICS,
            f"segmentation.primary_metric must be one of {list(SEGMENT_GATE_METRICS)}",
        ),
        (
            cfg.optimized_metric in OPTIMIZABLE_METRICS,
            f"optimized_metric must be one of {list(OPTIMIZABLE_METRICS)}",
        ),
        (0 < cfg.split.calibration_share < 1, "split.calibration_share must be in (0, 1)"),
        *(
            (
                figure.better in ANCHOR_DIRECTIONS,
                f"data.anchors.figures.{name}.better must be one of {ANCHOR_DIRECTIONS}",
            )
            for name, figure in cfg.data.anchors.figures.items()
        ),
    ]
    _raise_first(checks)
    _raise_first(_covariate_checks(cfg))
    check_discount_step(cfg.clv.discount_step_days)
    check_horizon(cfg.clv.horizon_days, cfg.clv.discount_step_days, key="clv.horizon_days")
    refuse_protected_features(cfg.segmentation.attributes, list(cfg.segmentation.extra_features))
    parse_day(cfg.split.calibration_end, "split.calibration_end")
    parse_day(cfg.data.anchors.calibration_end, "data.anchors.calibration_end")


def _covariate_checks(cfg: DictConfig) -> list[tuple[bool, str]]:
    """CLV covariates name non-protected columns of a customer file, each once, for a family that has them."""
    lists = {"purchase": list(cfg.clv.covariates.purchase), "dropout": list(cfg.clv.covariates.dropout)}
    asked = [*lists["purchase"], *lists["dropout"]]
    protected = {canonical_name(p) for p in cfg.segmentation.attributes.protected}
    refused = list(dict.fromkeys(name for name in asked if canonical_name(name) in protected))
    return [
        (
            not refused,
            f"clv.covariates: {refused} protected attribute(s) can never be covariates "
            "(segmentation.attributes.protected); remove them from clv.covariates.purchase / dropout",
        ),
        (
            not asked or cfg.data.customers.path is not None,
            "clv.covariates need a customer file: set data.customers.path (its columns are the covariates)",
        ),
        (
            not asked or cfg.clv.family not in NO_COVARIATE_FAMILIES,
            "clv.covariates need clv.family bgnbd, pareto_nbd or auto "
            f"({NO_COVARIATE_FAMILIES.get(cfg.clv.family)} has no covariate model)",
        ),
        *(
            (
                len(set(names)) == len(names),
                f"clv.covariates.{key} lists {sorted({n for n in names if names.count(n) > 1})} twice; "
                "name each column once",
            )
            for key, names in lists.items()
        ),
    ]


def _engine_checks(cfg: DictConfig) -> list[tuple[bool, str]]:
    """What ``train engine=spark`` cannot do (yet), refused before any run starts."""
    spark = cfg.engine.name == "spark"
    attributes = [*cfg.segmentation.attributes.numeric, *cfg.segmentation.attributes.categorical]
    return [
        (cfg.engine.name in SCORE_ENGINES, f"engine.name must be one of {list(SCORE_ENGINES)}"),
        (cfg.engine.sample_customers >= 1000, "engine.sample_customers must be >= 1000"),
        (
            not spark or data_has_amounts(cfg.data),
            "engine=spark reads logs with amounts only: train on a log without amounts "
            "(data.columns.amount=null) with engine=pandas",
        ),
        (
            not spark or not attributes,
            f"engine=spark does not join segment attributes {attributes} for everyone yet: "
            "drop segmentation.attributes.numeric/categorical or use engine=pandas",
        ),
    ]


def validate_score_config(cfg: DictConfig) -> None:
    horizon = cfg.score.horizon_days
    checks = [
        (horizon is None or horizon > 0, "score.horizon_days must be > 0 (or null for the model's default)"),
        (
            str(cfg.score.output).lower().endswith((".parquet", ".csv")),
            f"score.output '{cfg.score.output}' must end in .parquet or .csv",
        ),
        (cfg.engine.name in SCORE_ENGINES, f"engine.name must be one of {list(SCORE_ENGINES)}"),
        (cfg.score.chunk_customers > 0, "score.chunk_customers must be > 0"),
    ]
    _raise_first(checks)
    if horizon is not None:  # the model's discount step is checked once the model is loaded
        check_horizon(horizon, None, key="score.horizon_days")
    parse_day(cfg.score.as_of, "score.as_of")
    if cfg.score.sink is not None:
        from customer_value.crm.sink import check_sink_url, check_table_name

        check_sink_url(str(cfg.score.sink))
        check_table_name(str(cfg.score.sink_table))


def validate_monitor_config(cfg: DictConfig) -> None:
    from customer_value.evaluation.monitoring import WATCHABLE

    options = cfg.monitor
    unknown = [m for m in options.retrain.tolerances if m not in WATCHABLE]
    checks = [
        (len(options.scores) > 0, "monitor.scores is empty: give one or more scoring outputs"),
        (not unknown, f"monitor.retrain.tolerances: {unknown} cannot be watched; use {list(WATCHABLE)}"),
        (
            all(v >= 0 for v in options.retrain.tolerances.values()),
            "monitor.retrain.tolerances must be >= 0",
        ),
        (0 <= options.retrain.min_elapsed_share <= 1, "monitor.retrain.min_elapsed_share must be in [0, 1]"),
        (
            0 < options.drift.moderate_psi <= options.drift.major_psi,
            "monitor.drift needs 0 < moderate_psi <= major_psi",
        ),
    ]
    _raise_first(checks)


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)
