"""Figures for reviewers. Each function returns a matplotlib Figure; callers log or save it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# Figures are built with the object API (no pyplot): no global backend, no open-figure registry to leak.


def _laid_out(fig: Figure) -> Figure:
    """Tight layout computed once, here. A figure that keeps the "tight" layout engine lays itself out on
    every draw, and savefig draws twice (a measuring pass, then the pixels); laid out once, the PNG is the
    same (byte for byte) and a train's 11 figures take about 0.5 s less of their ~4 s (profiled)."""
    fig.tight_layout()
    return fig


def purchases_by_frequency(table: pd.DataFrame) -> Figure:
    """Holdout purchases, actual vs predicted, by calibration repeat-purchase count."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    positions = np.arange(len(table))
    ax.bar(positions - 0.2, table["actual"], width=0.4, label="actual")
    ax.bar(positions + 0.2, table["predicted"], width=0.4, label="predicted")
    ax.set_xticks(positions, table.index)
    ax.set_xlabel("repeat purchases in calibration")
    ax.set_ylabel("mean purchases in holdout")
    ax.set_title("Holdout purchases by calibration frequency")
    ax.legend()
    return _laid_out(fig)


def churn_by_decile(churn_probability: np.ndarray, churned: np.ndarray) -> Figure:
    """Reliability at a glance: predicted vs observed churn rate per decile of predicted churn."""
    deciles = pd.qcut(pd.Series(churn_probability).rank(method="first"), 10, labels=False)
    frame = pd.DataFrame({"decile": deciles, "predicted": churn_probability, "observed": churned})
    table = frame.groupby("decile")[["predicted", "observed"]].mean()
    return _calibration(
        table["predicted"], table["observed"], "observed churn rate (holdout)", "Churn calibration by decile"
    )


def _calibration(predicted: pd.Series, observed: pd.Series, ylabel: str, title: str) -> Figure:
    """Observed against predicted churn per decile, with the diagonal a calibrated model would follow."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot(predicted, observed, marker="o")
    ax.set_xlabel("predicted churn probability")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _laid_out(fig)


def churn_reliability(tables: dict[str, pd.DataFrame]) -> Figure:
    """Observed against predicted churn by decile for the model and each calibrated baseline (holdout)."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, table in tables.items():
        ax.plot(table["predicted"], table["observed"], marker="o", label=name)
    ax.set_xlabel("predicted churn probability")
    ax.set_ylabel("observed churn rate (holdout)")
    ax.set_title("Churn calibration: model and calibrated baselines")
    ax.legend(loc="upper left", fontsize="small")
    return _laid_out(fig)


def cumulative_tracking(table: pd.DataFrame, calibration_end: pd.Timestamp) -> Figure:
    """Cumulative repeat purchases, actual vs model, with the calibration end marked."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.plot(table.index, table["actual"], label="actual")
    ax.plot(table.index, table["expected"], linestyle="--", label="model")
    ax.axvline(calibration_end, color="grey", linestyle=":", linewidth=1)
    ax.text(calibration_end, ax.get_ylim()[1] * 0.95, " holdout", color="grey", va="top")
    ax.set_ylabel("cumulative repeat purchases")
    ax.set_title("Tracking: cumulative repeat purchases of the calibration cohort")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _laid_out(fig)


def k_selection(curves: pd.DataFrame, rule: str) -> Figure:
    """Criterion curves over k, one panel each; solutions that cannot be chosen (too small a segment, too
    few or too similar segments after merging) are marked x."""
    columns = [c for c in ("silhouette", "davies_bouldin", "calinski_harabasz", "bic") if c in curves.columns]
    if not columns:  # every k merged down to one segment: no criterion exists
        fig = Figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no k left two or more segments", ha="center", va="center")
        return fig
    fig = Figure(figsize=(3.2 * len(columns), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(columns)))
    if "not_chosen_because" in curves.columns:
        ok = (curves["not_chosen_because"] == "").to_numpy()
    elif "substantial" in curves.columns:
        ok = curves["substantial"].to_numpy()
    else:
        ok = np.ones(len(curves), bool)
    for ax, column in zip(axes, columns, strict=True):
        ax.plot(curves.index, curves[column], color="grey", linewidth=1)
        ax.scatter(curves.index[ok], curves[column][ok], marker="o", label="eligible")
        ax.scatter(curves.index[~ok], curves[column][~ok], marker="x", color="red", label="not eligible")
        ax.set_xlabel("k")
        ax.set_title(column + (" (rule)" if column == rule else ""))
    axes[0].legend(fontsize="small")
    return _laid_out(fig)


def profile_heatmap(profile: pd.DataFrame) -> Figure:
    """Each segment's mean features as z-scores across segments (colour) with the raw means written in."""
    columns = [c for c in profile.columns if c.startswith("mean_")] + [
        c for c in ("spend_share", "value_share") if c in profile.columns
    ]
    values = profile[columns].astype("float64")
    spread = values.std(axis=0).replace(0, 1.0)
    z = ((values - values.mean(axis=0)) / spread).fillna(0.0).to_numpy()
    fig = Figure(figsize=(1.3 * len(columns) + 2, 0.6 * len(profile) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(z, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    for (i, j), value in np.ndenumerate(values.to_numpy()):
        ax.text(
            j,
            i,
            f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}",
            ha="center",
            va="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(columns)), [c.removeprefix("mean_") for c in columns], rotation=30, ha="right")
    ax.set_yticks(
        range(len(profile)),
        [f"{i}: {n}" for i, n in zip(profile.index, profile["segment_name"], strict=True)],
    )
    fig.colorbar(image, ax=ax, label="z-score across segments")
    ax.set_title("Segment profiles")
    return _laid_out(fig)


def segment_sizes(profile: pd.DataFrame) -> Figure:
    """Share of customers, of past spend and (when profiled) of predicted value per segment."""
    labels = [f"{i}: {n}" for i, n in zip(profile.index, profile["segment_name"], strict=True)]
    bars = [("share", "customers"), ("spend_share", "past spend"), ("value_share", "predicted value")]
    bars = [(column, label) for column, label in bars if column in profile.columns]
    positions = np.arange(len(profile))
    height = 0.8 / len(bars)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for offset, (column, label) in enumerate(bars):
        ax.barh(positions - 0.4 + height * (offset + 0.5), profile[column], height=height, label=label)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.set_xlabel("share")
    ax.set_title("Segment size and value share")
    ax.legend()
    return _laid_out(fig)


def segment_projection(
    points: np.ndarray, segments: np.ndarray, names: dict[int, str], explained: np.ndarray
) -> Figure:
    """Customers in the first two principal components of the model's preprocessed inputs."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for segment in sorted(names):
        mask = segments == segment
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.5, label=f"{segment}: {names[segment]}")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.set_title("Segments in a 2-D projection of the clustering space")
    ax.legend(markerscale=3, fontsize=8)
    return _laid_out(fig)


def segment_scatter(features: pd.DataFrame, segments: np.ndarray, names: dict[int, str], seed: int) -> Figure:
    """Recency vs frequency, coloured by segment (a sample of at most 5,000 customers)."""
    rng = np.random.default_rng(seed)
    take = rng.choice(len(features), size=min(5_000, len(features)), replace=False)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    jitter = rng.uniform(-0.3, 0.3, size=len(take))
    for segment in sorted(names):
        mask = segments[take] == segment
        ax.scatter(
            features["days_since_last"].to_numpy()[take][mask],
            features["n_orders"].to_numpy()[take][mask] + jitter[mask],
            s=6,
            alpha=0.5,
            label=f"{segment}: {names[segment]}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("days since last purchase")
    ax.set_ylabel("purchase days (log, jittered)")
    ax.set_title("Segments")
    ax.legend(markerscale=3, fontsize=8)
    return _laid_out(fig)


def gains_chart(curves: dict[str, np.ndarray], actual: np.ndarray) -> Figure:
    """Cumulative share of actual (holdout) revenue captured by customers ranked by each score."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    share = np.arange(1, len(actual) + 1) / len(actual)
    total = max(float(np.sum(actual)), 1e-12)
    for label, score in curves.items():
        order = np.argsort(-np.asarray(score, dtype="float64"), kind="stable")
        ax.plot(share, np.cumsum(np.asarray(actual)[order]) / total, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random")
    ax.set_xlabel("share of customers (ranked by score)")
    ax.set_ylabel("share of holdout revenue")
    ax.set_title("Gains chart")
    ax.legend()
    return _laid_out(fig)


def migration_heatmap(shares: pd.DataFrame) -> Figure:
    """Share of each earlier segment (rows) now in each segment (columns), with the shares written in."""
    fig = Figure(figsize=(1.4 * len(shares.columns) + 3, 0.6 * len(shares.index) + 2))
    ax = fig.subplots()
    image = ax.imshow(shares.to_numpy(dtype="float64"), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(shares.to_numpy(dtype="float64")):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(shares.columns)), list(shares.columns), rotation=30, ha="right")
    ax.set_yticks(range(len(shares.index)), list(shares.index))
    ax.set_xlabel("segment now")
    ax.set_ylabel("segment before")
    ax.set_title("Segment migration (share of each earlier segment)")
    fig.colorbar(image, ax=ax, label="share")
    return _laid_out(fig)


def matrix_heatmap(table: pd.DataFrame, title: str, colorbar_label: str) -> Figure:
    """A frequency x recency matrix (rows: repeat purchases, columns: days of recency)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    image = ax.imshow(table.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(table.index)), table.index)
    step = max(1, len(table.columns) // 8)
    ax.set_xticks(range(0, len(table.columns), step), [f"{c:.0f}" for c in table.columns[::step]])
    ax.set_xlabel("recency: days from first to last purchase")
    ax.set_ylabel("repeat purchases")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return _laid_out(fig)


def covariate_coefficients(table: pd.DataFrame) -> Figure:
    """Each covariate coefficient with its 95 % interval, one row per (set, column); 0 = no effect."""
    labels = [f"{row.set}: {row.column}" for row in table.itertuples()]
    positions = np.arange(len(table))[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(table)))
    ax = fig.subplots()
    errors = np.vstack([table["estimate"] - table["ci_low"], table["ci_high"] - table["estimate"]])
    ax.errorbar(table["estimate"], positions, xerr=np.nan_to_num(errors), fmt="o", capsize=3)
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(positions, labels)
    ax.set_xlabel("coefficient (95 % interval)")
    ax.set_title("Covariate coefficients")
    return _laid_out(fig)


def retention_by_segment(outcomes: pd.DataFrame) -> Figure:
    """Predicted vs realised retention (a purchase in the elapsed window) per segment."""
    positions = np.arange(len(outcomes))
    fig = Figure(figsize=(8, 0.5 * len(outcomes) + 2))
    ax = fig.subplots()
    ax.barh(positions - 0.2, outcomes["predicted_retention"], height=0.4, label="predicted")
    ax.barh(positions + 0.2, outcomes["realised_retention"], height=0.4, label="realised")
    ax.set_yticks(positions, list(outcomes.index))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of customers who purchased in the window")
    ax.set_title("Retention by segment, predicted and realised")
    ax.legend(loc="lower right")
    return _laid_out(fig)


def churn_calibration(table: pd.DataFrame) -> Figure:
    """Realised vs predicted churn per decile of predicted churn (``monitoring.calibration_by_decile``)."""
    return _calibration(
        table["predicted_churn"],
        table["realised_churn"],
        "realised churn rate",
        "Churn calibration by decile, after scoring",
    )


def population_stability(psi: pd.Series, moderate: float, major: float) -> Figure:
    """PSI per model input (and segment shares) with the configured thresholds drawn in."""
    fig = Figure(figsize=(7, 0.45 * len(psi) + 1.8))
    ax = fig.subplots()
    colours = ["#c0392b" if v > major else "#e6a23c" if v > moderate else "#4a7bb7" for v in psi]
    positions = np.arange(len(psi))
    ax.barh(positions, psi.to_numpy(), color=colours)
    ax.set_yticks(positions, list(psi.index))
    ax.invert_yaxis()
    for threshold, label in ((moderate, "moderate"), (major, "major")):
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.text(threshold, -0.6, f" {label}", color="grey", va="bottom")
    ax.set_xlabel("population stability index (scoring base vs training base)")
    ax.set_title("Drift")
    return _laid_out(fig)
