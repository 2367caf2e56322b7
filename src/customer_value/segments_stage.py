"""Segments stage of training: fit on every customer as of the last order, log quality, profile, plots."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value import plots, registry, tracking
from customer_value.data import DataReport
from customer_value.features import customer_features
from customer_value.segmentation import SEGMENT_FEATURES, SegmentModel, evaluation_space, quality_metrics
from customer_value.stage import Candidate, prefixed, require_metrics, version_tags

log = logging.getLogger(__name__)


def train_segments(
    cfg: DictConfig, orders: pd.DataFrame, report: DataReport
) -> tuple[dict[str, float], Candidate]:
    """Fit segments on every customer as of the last order; log quality, profile and plots."""
    features = customer_features(orders, orders["date"].max())
    model = SegmentModel(n_clusters=cfg.segmentation.n_clusters, seed=cfg.seed).fit(features)
    segments = model.predict(features)["segment"].to_numpy()
    space = evaluation_space(features)

    def quality(labels: np.ndarray) -> dict[str, float]:
        return prefixed(
            "segments.", quality_metrics(space, labels, cfg.seed, cfg.segmentation.silhouette_sample)
        )

    metrics = quality(segments)
    sizes = model.profile_["customers"]
    metrics |= {f"segments.size.{segment}": float(size) for segment, size in sizes.items()}
    tracking.log_metrics(metrics)
    require_metrics(metrics, cfg.segmentation.primary_metric, "segmentation.primary_metric")
    mlflow.set_tags({f"segment.{s}": name for s, name in model.names_.items()})
    tracking.log_table(model.profile_, "segments/profile.csv")
    tracking.log_figure(plots.segment_sizes(model.profile_), "plots/segment_sizes.png")
    tracking.log_figure(
        plots.segment_scatter(features, segments, model.names_, cfg.seed), "plots/segments.png"
    )
    log.info(
        "segments: silhouette %.3f, Davies-Bouldin %.3f, sizes %s",
        metrics.get("segments.silhouette", np.nan),
        metrics.get("segments.davies_bouldin", np.nan),
        [int(size) for size in sizes],
    )
    info = registry.log_segments_model(model, features)

    def judge(version: str) -> registry.ChampionJudgement:
        loaded = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.segments_model}/{version}")
        champion_k = loaded.unwrap_python_model().model.n_clusters
        if champion_k != model.n_clusters:
            reason = f"it has {champion_k} segments and this run {model.n_clusters}; choosing k is a decision"
            return registry.ChampionJudgement(version, None, reason)
        labels = loaded.predict(features[SEGMENT_FEATURES].reset_index(drop=True))["segment"].to_numpy()
        score = quality(labels).get(cfg.segmentation.primary_metric)
        return registry.ChampionJudgement(version, score, "re-scored on this run's customers")

    candidate = Candidate(
        run_id=mlflow.active_run().info.run_id,
        model_uri=info.model_uri,
        name=cfg.tracking.segments_model,
        metric=cfg.segmentation.primary_metric,
        score=metrics[cfg.segmentation.primary_metric],
        judge=judge,
        tags=version_tags(cfg, report) | {"n_segments": str(model.n_clusters)},
    )
    return metrics, candidate
