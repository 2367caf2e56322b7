"""Segments stage of training: fit on every customer as of the last order, log quality, profile, plots."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from customer_value.data.features import customer_features, purchase_regularity
from customer_value.data.loading import DataReport
from customer_value.errors import ModelFitError
from customer_value.evaluation import plots
from customer_value.evaluation.segment_report import ReportInputs, figure_png, render
from customer_value.jobs.reporting import REPORT_ARTIFACT
from customer_value.jobs.stage import (
    Candidate,
    card_facts,
    prefixed,
    require_metrics,
    sample_customer_orders,
    sample_positions,
    version_tags,
)
from customer_value.models.segments.attributes import (
    attributes_file,
    join_attributes,
    load_attributes,
    protected_audit,
)
from customer_value.models.segments.clusterers import TAKES_K
from customer_value.models.segments.distinctness import (
    distinctness_table,
    kpi_table,
    tenure_r2_gain,
    variance_explained,
)
from customer_value.models.segments.names import action_for
from customer_value.models.segments.segmentation import (
    SEGMENT_FEATURES,
    FeatureSet,
    SegmentModel,
    evaluation_space,
    near_constant_columns,
    profile,
    projection_2d,
    quality_metrics,
)
from customer_value.models.segments.selection import (
    choose_k,
    criterion_curves,
    eligibility,
    require_segments,
    require_substantial,
    substantial,
)
from customer_value.models.segments.stability import bootstrap_ari, window_ari
from customer_value.tracking import progress, registry, run_logging

log = logging.getLogger(__name__)


def segment_attributes(cfg: DictConfig) -> tuple[pd.DataFrame | None, list[str]]:
    """The attributes table and the protected columns found, from the customer file segmentation reads
    (see :func:`attributes_file`); (None, []) when there is none."""
    file = attributes_file(cfg)
    return (None, []) if file is None else load_attributes(cfg.segmentation.attributes, file)


def train_segments(
    cfg: DictConfig,
    orders: pd.DataFrame,
    report: DataReport,
    clv_outputs: pd.DataFrame | None = None,
    today: pd.DataFrame | None = None,
) -> tuple[dict[str, float], Candidate]:
    """Fit segments on every customer as of the last order (choosing k when asked); log quality,
    distinctness, stability, profile and plots. Small and indistinct clusters are merged; the run fails only
    when no substantial, distinct solution with ``segmentation.min_segments`` segments exists.

    ``clv_outputs`` (the CLV model's predictions for the same customers) are the KPIs distinctness is
    judged on, decide whether tenure is clustered on, and add predicted value and churn to the profile;
    ``today``: the customer table as of the last order, when the caller built it already."""
    seg = cfg.segmentation
    as_of = orders["date"].max()
    feature_set = FeatureSet(
        tuple(seg.extra_features), tuple(seg.attributes.numeric), tuple(seg.attributes.categorical)
    )
    attributes, protected = segment_attributes(cfg)
    attribute_columns = [*feature_set.numeric, *feature_set.categorical]

    def with_attributes(table: pd.DataFrame) -> pd.DataFrame:
        return table if attributes is None else join_attributes(table, attributes, attribute_columns)

    features = with_attributes(customer_features(orders, as_of) if today is None else today)
    features = with_extra_features(features, feature_set, orders, as_of, clv_outputs)
    kpis = None if clv_outputs is None else kpi_table(clv_outputs.reindex(features.index))
    feature_set = replace(feature_set, excluded=_left_out(cfg, features, kpis))

    def make_model(k: int = seg.n_clusters) -> SegmentModel:
        return SegmentModel(
            n_clusters=k,
            seed=cfg.seed,
            algorithm=seg.algorithm,
            preprocessing=seg.preprocessing,
            fit_sample=seg.fit_sample,
            min_cluster_size=seg.min_cluster_size,
            feature_set=feature_set,
            min_share=seg.min_share,
            min_distinctness=seg.min_distinctness,
        )

    with progress.step("segments.fit", "segments: choose k and fit"):
        model = _fit_substantial(cfg, features, make_model, kpis)
    segments = model.predict(features)["segment"].to_numpy()
    space = evaluation_space(features)

    def quality(labels: np.ndarray) -> dict[str, float]:
        return prefixed(
            "segments.", quality_metrics(space, labels, cfg.seed, cfg.segmentation.silhouette_sample)
        )

    metrics = quality(segments)
    if kpis is not None:
        metrics |= _log_distinctness(kpis, segments, model.names_)

    def complete_window(table: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
        return with_extra_features(with_attributes(table), feature_set, orders, day, None)

    clv_based = {"clv", "churn_probability"} & set(feature_set.extra)  # CLV outputs exist for today only
    with progress.step("segments.stability", "segments: stability (bootstrap and window refits)"):
        stability = _stability(
            cfg,
            orders,
            as_of,
            features,
            segments,
            make_model,
            None if clv_based else complete_window,
            kpis,
            model.n_clusters,
        )
    metrics |= stability
    if protected:
        audit = protected_audit(pd.Series(segments, index=features.index), attributes[protected])
        run_logging.log_table(audit, "segments/protected_audit.csv")
        mlflow.set_tag("segments.protected_audit", ",".join(protected))
    clusterer = model.pipeline_.named_steps["cluster"]
    if hasattr(clusterer, "noise_share_"):
        metrics["segments.noise_share"] = clusterer.noise_share_
    sizes = model.profile_["customers"]
    metrics |= {f"segments.size.{segment}": float(size) for segment, size in sizes.items()}
    run_logging.log_metrics(metrics)
    require_metrics(metrics, cfg.segmentation.primary_metric, "segmentation.primary_metric")
    mlflow.set_tags({f"segment.{s}": name for s, name in model.names_.items()})
    table = segment_profile(features, segments, model.names_, dict(seg.actions), clv_outputs)
    run_logging.log_table(table, "segments/profile.csv")
    figures = {}
    if run_logging.figures_on():  # drawn once, for the run's plots and the report's images alike
        figures = {
            "Segment size and value share": figure_png(plots.segment_sizes(table)),
            "Segment profiles": figure_png(plots.profile_heatmap(table)),
        }
        run_logging.log_png(figures["Segment size and value share"], "plots/segment_sizes.png")
        run_logging.log_png(figures["Segment profiles"], "plots/segment_profile_heatmap.png")
    facts = {"data": cfg.data.name, "as of": str(as_of.date()), "customers": f"{len(features):,}"}
    facts["model"] = f"{seg.algorithm}, {len(sizes)} segments"
    page = ReportInputs(f"Customer segments as of {as_of.date()} (training)", facts, table, figures=figures)
    mlflow.log_text(render(page), REPORT_ARTIFACT)
    if run_logging.figures_on():
        points, sampled, explained = projection_2d(model, features, cfg.seed)
        run_logging.log_figure(
            lambda: plots.segment_projection(points, sampled, model.names_, explained),
            "plots/segment_projection.png",
        )
    run_logging.log_figure(
        lambda: plots.segment_scatter(features, segments, model.names_, cfg.seed), "plots/segments.png"
    )
    log.info(
        "segments (%s, k=%d): silhouette %.3f, Davies-Bouldin %.3f, bootstrap ARI %.3f, sizes %s",
        seg.algorithm,
        len(sizes),
        metrics.get("segments.silhouette", np.nan),
        metrics.get("segments.davies_bouldin", np.nan),
        metrics.get("segments.stability.bootstrap_ari_mean", np.nan),
        [int(size) for size in sizes],
    )
    info = registry.log_segments_model(model, features)

    def judge(version: str) -> registry.ChampionJudgement:
        loaded = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.segments_model}/{version}")
        champion = loaded.unwrap_python_model().model
        theirs = (getattr(champion, "algorithm", "kmeans"), len(champion.names_))
        ours = (model.algorithm, len(model.names_))
        if theirs != ours:
            reason = (
                f"it is {theirs[0]} with {theirs[1]} segments and this run {ours[0]} with {ours[1]}; "
                "choosing the algorithm and k is a decision"
            )
            return registry.ChampionJudgement(version, None, reason)
        columns = champion.input_columns if hasattr(champion, "feature_set") else SEGMENT_FEATURES
        if [c for c in columns if c not in features.columns]:
            reason = f"it needs input columns {columns} that this run's features lack"
            return registry.ChampionJudgement(version, None, reason)
        inputs = features[columns].reset_index(drop=True)
        labels = loaded.predict(inputs, params={"reasons": False})["segment"].to_numpy()  # labels only
        scores = quality(labels)
        score = scores.get(cfg.segmentation.primary_metric)
        return registry.ChampionJudgement(version, score, "re-scored on this run's customers", scores)

    candidate = Candidate(
        run_id=mlflow.active_run().info.run_id,
        model_uri=info.model_uri,
        name=cfg.tracking.segments_model,
        metric=cfg.segmentation.primary_metric,
        score=metrics[cfg.segmentation.primary_metric],
        judge=judge,
        tags=version_tags(cfg, report) | {"n_segments": str(len(model.names_)), "algorithm": model.algorithm},
        card=card_facts(
            cfg,
            report,
            {k: v for k, v in metrics.items() if k.startswith("segments.") and ".size." not in k},
            ["segmentation"],
            {"data.as_of": str(as_of.date())},
        ),
    )
    return metrics, candidate


def _left_out(cfg: DictConfig, features: pd.DataFrame, kpis: pd.DataFrame | None) -> tuple[str, ...]:
    """RFM/tenure columns this fit leaves out, each logged with why: absent (a log without amounts),
    (near-)constant across the base (one customer would own a cluster), or tenure that does not separate
    behaviour (it then stays a profile column)."""
    seg = cfg.segmentation
    keep_for_rule = ("days_since_last", "n_orders") if seg.algorithm == "rfm_quintiles" else ()
    reasons = {
        column: "absent" if column not in features.columns else "near-constant"
        for column in near_constant_columns(features, SEGMENT_FEATURES)
        if column not in keep_for_rule
    }
    if "T_days" not in reasons and kpis is not None and len(kpis.columns):
        gain = tenure_r2_gain(features, kpis)
        run_logging.log_metrics({"segments.tenure_r2_gain": gain})
        if gain < seg.tenure_min_r2_gain:
            reasons["T_days"] = (
                f"explains {gain:.3f} of KPI variance < tenure_min_r2_gain {seg.tenure_min_r2_gain}"
            )
    if len(reasons) == len(SEGMENT_FEATURES):
        raise ModelFitError(f"no behaviour column varies across the customers ({reasons})")
    used = [c for c in SEGMENT_FEATURES if c not in reasons]
    mlflow.set_tags(
        {
            "segments.features_used": ",".join(used),
            "segments.features_left_out": "; ".join(f"{c}: {why}" for c, why in reasons.items()) or "none",
        }
    )
    if reasons:
        log.info("segments: clustering on %s; left out %s", used, reasons)
    return tuple(reasons)


def _log_distinctness(kpis: pd.DataFrame, segments: np.ndarray, names: dict[int, str]) -> dict[str, float]:
    """How far apart the segments are on the KPIs and how much of each KPI's variance they carry."""
    table = distinctness_table(kpis, segments, names)
    run_logging.log_table(table, "segments/distinctness.csv")
    explained = variance_explained(kpis, segments)
    metrics = {f"segments.variance_explained.{kpi}": share for kpi, share in explained.items()}
    if len(table):
        least = table.iloc[0]
        metrics["segments.min_distinctness"] = float(least["distinctness_sd"])
        mlflow.set_tag(
            "segments.least_distinct_pair",
            f"{least['segment_a']} / {least['segment_b']}: "
            f"{least['distinctness_sd']:.2f} SD on {least['on_kpi']}",
        )
    return metrics


def _fit_substantial(
    cfg: DictConfig,
    features: pd.DataFrame,
    make_model: Callable[..., SegmentModel],
    kpis: pd.DataFrame | None = None,
) -> SegmentModel:
    """Fit the configured k, or every k of ``k_values`` and keep the rule's best eligible one (substantial,
    at least ``min_segments`` after merging, distinct)."""
    seg = cfg.segmentation
    try:
        if seg.algorithm in TAKES_K and len(seg.k_values) > 0:
            rows = sample_positions(len(features), seg.selection_sample, cfg.seed)
            sample = features.iloc[rows]
            curves, models = criterion_curves(
                sample,
                sorted(seg.k_values),
                make_model,
                cfg.seed,
                seg.silhouette_sample,
                None if kpis is None else kpis.iloc[rows],
            )
            curves["substantial"] = substantial(curves, seg.min_share)
            curves["not_chosen_because"] = eligibility(
                curves, seg.min_share, seg.min_segments, seg.min_distinctness
            )
            run_logging.log_table(curves, "segments/k_selection.csv")
            run_logging.log_figure(lambda: plots.k_selection(curves, seg.k_rule), "plots/k_selection.png")
            run_logging.log_metrics(
                {
                    f"k_selection.{column}.k{k}": float(value)
                    for column in curves.columns
                    for k, value in curves[column].items()
                    if column not in ("substantial", "not_chosen_because")
                }
            )
            k = choose_k(curves, seg.k_rule, seg.min_share, seg.min_segments, seg.min_distinctness)
            mlflow.set_tags({"segments.chosen_k": str(k), "segments.k_rule": seg.k_rule})
            run_logging.log_metrics({"k_selection.customers": len(sample)})
            # Chosen on the sample, fitted on everyone (k-means from the sample's centres).
            model = (
                models[k] if len(sample) == len(features) else make_model(k).fit(features, kpis, models[k])
            )
        else:
            model = make_model().fit(features, kpis)
        require_substantial(model.profile_["share"], seg.min_share)
        require_segments(len(model.names_), seg.min_segments)
        merged = model.n_clusters - len(model.names_)
        mlflow.set_tag(
            "segments.merged_clusters", f"{model.n_clusters} clusters -> {len(model.names_)} segments"
        )
        run_logging.log_metrics({"segments.merged_clusters": float(merged)})
        return model
    except ModelFitError as exc:
        mlflow.set_tag("segments.rejected", str(exc)[:5000])
        raise


def _stability(
    cfg: DictConfig,
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    features: pd.DataFrame,
    segments: np.ndarray,
    make_model: Callable[..., SegmentModel],
    window: Callable[[pd.DataFrame, pd.Timestamp], pd.DataFrame] | None,
    kpis: pd.DataFrame | None,
    k: int,
) -> dict[str, float]:
    """Bootstrap and adjacent-window adjusted Rand indices of the chosen configuration.

    ``window`` completes an earlier window's customer table (attributes); None skips the window check.
    Refits use the chosen configuration's ``k`` raw clusters, merged as the main fit was."""
    stability = cfg.segmentation.stability
    metrics: dict[str, float] = {}
    if stability.bootstrap_resamples > 0:
        rows = sample_positions(len(features), cfg.segmentation.selection_sample, cfg.seed)
        mean, sd = bootstrap_ari(
            features.iloc[rows],
            segments[rows],
            lambda: make_model(k),
            stability.bootstrap_resamples,
            cfg.seed,
            None if kpis is None else kpis.iloc[rows],
        )
        metrics |= {"segments.stability.bootstrap_ari_mean": mean, "segments.stability.bootstrap_ari_sd": sd}
    earlier = as_of - pd.Timedelta(days=stability.window_days)
    if window is not None and stability.window_days > 0 and (orders["date"] <= earlier).sum() > 0:
        try:
            # On the selection sample's customers (all of a smaller base): two fits of a million
            # customers cost more than the rest of the stage.
            sample = sample_customer_orders(orders, cfg.segmentation.selection_sample, cfg.seed)
            metrics["segments.stability.window_ari"] = window_ari(
                sample, as_of, stability.window_days, lambda: make_model(k), window
            )
        except ModelFitError as exc:  # too few customers in the earlier window: say so, not a failure
            log.warning("segments: no window stability (%s)", exc)
    return metrics


def with_extra_features(
    features: pd.DataFrame,
    feature_set: FeatureSet,
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    clv_outputs: pd.DataFrame | None,
) -> pd.DataFrame:
    """Join the optional behaviour features a segmentation asked for (CLV outputs, purchase regularity)."""
    clv_columns = [c for c in feature_set.extra if c in ("clv", "churn_probability")]
    if clv_columns:
        features = features.join(clv_outputs[clv_columns])
    if "regularity" in feature_set.extra:
        features = features.join(purchase_regularity(orders, as_of))
    return features


def segment_profile(
    features: pd.DataFrame,
    segments: np.ndarray,
    names: dict[int, str],
    actions: dict[str, str],
    clv_outputs: pd.DataFrame | None,
) -> pd.DataFrame:
    """The profile reviewers read: name, recommended action, size, RFM/tenure, predicted value and churn."""
    predicted = None if clv_outputs is None else clv_outputs.reindex(features.index)
    table = profile(features, segments, predicted)
    table.insert(0, "segment_name", [names[s] for s in table.index])
    table.insert(1, "recommended_action", [action_for(names[s], actions) for s in table.index])
    return table
