"""Which churn probability a model ships, chosen per horizon band on windows as long as the horizon.

The purchase model's own churn probability assumes Poisson buying; real buyers are regular, slow down and
pause, and on real logs cut at a date "days since last purchase" out-ranked it on four of six futures. So
the churn output is chosen among candidates, each a calibrated (logistic) probability of no purchase:

- ``purchase_model``: the purchase model's churn probability, Platt-calibrated (its logit, refitted);
- ``other_families`` (an opt-in entry of the candidate list): the same for every other purchase-model
  family, each fitted on the windows and at the selection's end (candidates ``purchase_model_<family>``,
  on a seeded sample of at most WINDOW_CUSTOMERS customers: its parameters, not its customers, are kept);
- ``recency``: days since the last purchase alone (a monotone logistic fit: the marketer's rule);
- ``recency_frequency_tenure``: recency with purchase days and tenure;
- ``layer``: RFM plus every purchase-model output (the learned churn layer of ``churn_layer``).

For each band horizon ``h`` (``clv.churn.horizons_days``), rolling-origin windows end at the calibration
end: at each origin a purchase model is fitted on the orders before it, and the label is "no purchase in
the next ``w`` days", with ``w = h`` when the history allows it and otherwise the longest window that
leaves a quarter of the calibration window as history (the band says so). Candidates are compared on
out-of-fold predictions (customers split into folds; a customer's rows stay in one fold). ``recency``'s
mean AUC over the windows is the reference unless other candidates beat it in four of five paired
bootstrap resamples (then the best of those sets it); of the candidates within ``AUC_TIE`` of the
reference the lowest Brier score wins. The winner is refitted on all windows of the band. An origin too
early for a purchase model to be fitted is too early to judge any candidate on (a young cohort's recency
ranked churners worse than chance there): the band then uses the longest shorter band's windows that had
one, or with none, judges only the candidates that need no purchase model. Only orders up to the
calibration end are read, so the holdout never takes part.

At prediction time the band nearest the asked horizon (in log days) serves. When the asked horizon is not
the band's window, the band's log-odds are shifted by how much the purchase model's mean log-odds of churn
change between the two horizons on the training base (``offsets``): one number per horizon, so the
candidate's ranking of customers is kept and only its level follows the horizon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from customer_value.data.features import Split, customer_features, holdout_outcome
from customer_value.errors import ModelFitError
from customer_value.evaluation.calibration import (
    auc,
    expected_calibration_error,
    score_groups,
    weighted_auc,
)
from customer_value.evaluation.holdout_metrics import churned
from customer_value.models.clv.churn_layer import (
    LAYER_FEATURES,
    PURCHASE_ONLY_FEATURES,
    ChurnLayer,
    fit_logistic,
    layer_inputs,
)
from customer_value.models.clv.inner_windows import MIN_WINDOW_DAYS
from customer_value.tracking import progress


class SelectionStopped(Exception):
    """The caller of a selection running in a thread of its own gave up on it (its job failed or was
    stopped): the thread ends at its next window instead of holding the job up."""


CANDIDATES: dict[str, list[str]] = {
    "purchase_model": ["btyd_churn_logit"],
    "recency": ["log_days_since_last"],
    "recency_frequency_tenure": ["log_days_since_last", "log_frequency", "log_tenure"],
    "layer": LAYER_FEATURES,
}
OTHER_FAMILIES = "other_families"  # a candidate-list entry: each other family's purchase model, calibrated
FAMILY_PREFIX = "purchase_model_"  # + the family: that family's candidate
BTYD_FEATURES = ("btyd_churn_logit", "btyd_alive_logit", "log_expected_purchases")
BTYD_OUTPUTS = ("churn_probability", "p_alive", "expected_purchases")  # what those are computed from
AUC_TIE = 0.002  # candidates this close in mean AUC are told apart by their Brier score
# The rule a marketer uses without us ships unless a candidate beats it convincingly on the backtest: in
# KEEP_WIN_SHARE of RESAMPLES paired resamples (as the layers' check, layer_selection). On small logs a
# candidate that won one window by a hair then lost to recency on the holdout (800 customers: 0.640 vs 0.692).
ANCHOR = "recency"
KEEP_WIN_SHARE = 0.8
RESAMPLES = 100
# The train runs the whole history's selection in a thread beside the calibration's: two windows built at
# once (each a customer table of the whole log, +340 MB at 1M, then a purchase model fitted on everyone,
# +160 MB) made the train's peak (1.97 GiB, 1M customers). Built one at a time, all else side by side.
_BUILDING = threading.Lock()
WINDOW_CUSTOMERS = 100_000  # customers per backtest window the candidates are compared and fitted on
CV_FOLDS = 5
# A window's origin keeps at least this share of the history before it. Half was tried: better on CDNOW
# (full split 0.769 vs 0.767; cut at 1997-06-30, whose run a quarter gets blocked by the gate, 0.687 vs
# recency's 0.651) but worse on two generated shapes (whale spend: 0.671 vs recency's 0.708).
MIN_HISTORY_SHARE = 0.25
# Single-score candidates are calibrations: a fit that reverses the score's ranking (seen on a 22-day window
# of a young cohort: the purchase model's churn reversed, 0.373 on the holdout vs 0.627) is not eligible.
INCREASING = {"purchase_model": "btyd_churn_logit", "recency": "log_days_since_last"}
# Horizons (days) the level offsets are stored for; a horizon between them is interpolated in log days.
OFFSET_HORIZONS = np.geomspace(1.0, 20 * 365.25, 64)


@dataclass(frozen=True)
class ChurnBand:
    """One horizon band: the candidate it ships and the window its choice and fit were made on."""

    horizon_days: float
    window_days: float
    candidate: str
    model: ChurnLayer
    reason: str
    offsets: list[float]  # purchase-model mean log-odds shift from window_days to each OFFSET_HORIZONS
    purchase_params: dict[str, object] | None = None  # another family's CLVParams.as_dict, else the model's

    def as_dict(self) -> dict[str, object]:
        return {
            "horizon_days": self.horizon_days,
            "window_days": self.window_days,
            "candidate": self.candidate,
            "model": self.model.as_dict(),
            "reason": self.reason,
            "offsets": list(self.offsets),
            "purchase_params": self.purchase_params,
        }

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ChurnBand:
        return cls(**(values | {"model": ChurnLayer.from_dict(values["model"])}))

    def offset(self, horizon_days: float) -> float:
        """The log-odds shift from this band's window to ``horizon_days`` (0 at the window itself)."""
        if np.isclose(horizon_days, self.window_days):
            return 0.0
        return float(np.interp(np.log(horizon_days), np.log(OFFSET_HORIZONS), self.offsets))


@dataclass(frozen=True)
class ChurnSelector:
    """The chosen candidate per band; predicts P(no purchase within the horizon) row by row."""

    bands: list[ChurnBand]

    def band_for(self, horizon_days: float) -> ChurnBand:
        """The band whose nominal horizon is nearest ``horizon_days`` in log days."""
        return min(self.bands, key=lambda b: abs(np.log(horizon_days / b.horizon_days)))

    def predict(
        self,
        features: pd.DataFrame,
        btyd_at: Callable[[float, dict[str, object] | None], pd.DataFrame],
        horizon_days: float,
    ) -> np.ndarray:
        """``btyd_at(days, params)``: the purchase model's outputs (churn_probability, p_alive,
        expected_purchases) for ``features`` at a horizon, from ``params`` (another family's stored
        parameters) when given, else the model's own; the band's model reads them at its own window."""
        band = self.band_for(horizon_days)
        window = btyd_at(band.window_days, band.purchase_params)
        churn = band.model.predict(layer_inputs(features, window, band.window_days))
        shift = band.offset(horizon_days)
        if shift == 0.0:
            return churn
        return expit(logit(np.clip(churn, 1e-9, 1 - 1e-9)) + shift)

    def as_dict(self) -> dict[str, object]:
        return {"bands": [band.as_dict() for band in self.bands]}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ChurnSelector:
        return cls([ChurnBand.from_dict(band) for band in values["bands"]])

    def describe(self) -> str:
        """One line per band, for tags and the model card."""
        return "; ".join(
            f"{b.horizon_days:.0f} d: {b.candidate} ({b.window_days:.0f}-day windows)" for b in self.bands
        )


@dataclass(frozen=True)
class Window:
    """One backtest window: customers as of the origin, the purchase model's view, what happened next."""

    origin: pd.Timestamp
    features: pd.DataFrame
    btyd: pd.DataFrame | None  # None: no purchase model could be fitted before the origin
    outcome: pd.DataFrame
    days: float
    others: dict[str, pd.DataFrame | None] = field(default_factory=dict)  # the other families' outputs


@dataclass
class SelectionReport:
    """Every candidate's backtest figures per band (for the run to log) and why bands were skipped."""

    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # band, window, candidate, auc, brier, ece
    notes: list[str] = field(default_factory=list)
    refit: dict[str, ChurnSelector] = field(default_factory=dict)  # every candidate, in the same bands


def window_length(first_date: pd.Timestamp, calibration_end: pd.Timestamp, horizon_days: float) -> int:
    """The band's label window: the horizon, or the longest that leaves MIN_HISTORY_SHARE of history."""
    longest = int((calibration_end - first_date).days * (1 - MIN_HISTORY_SHARE))
    return int(min(round(horizon_days), longest))


def backtest_origins(
    first_date: pd.Timestamp, calibration_end: pd.Timestamp, window_days: int, folds: int, step_days: int
) -> list[pd.Timestamp]:
    """Origins whose window ends by the calibration end and that keep MIN_HISTORY_SHARE of it before them."""
    history = (calibration_end - first_date).days * MIN_HISTORY_SHARE
    origins = []
    for fold in range(folds):
        origin = calibration_end - pd.Timedelta(days=window_days + fold * step_days)
        if (origin - first_date).days >= history:
            origins.append(origin)
    return origins


def select_churn(
    orders: pd.DataFrame,
    calibration_end: pd.Timestamp,
    horizons_days: list[float],
    fit_btyd: Callable[[pd.DataFrame], object],
    *,
    candidates: list[str] | None = None,
    folds: int = 2,
    step_days: int = 91,
    seed: int = 0,
    level_on: Callable[[float], np.ndarray] | None = None,
    other_families: dict[str, Callable[[pd.DataFrame], object]] | None = None,
    label: str = "clv.churn",
    stop: threading.Event | None = None,
) -> tuple[ChurnSelector | None, SelectionReport]:
    """Choose and fit each band's candidate on backtest windows before ``calibration_end``.

    ``fit_btyd(features)`` returns a fitted purchase model (``.predict(features, days)``, ``.params_``);
    ``other_families``: a fitter per other family, for the ``other_families`` candidates; ``level_on(days)``:
    the purchase model's churn probabilities for (a sample of) the training base at a horizon, for the
    bands' level offsets; ``label`` starts its progress lines; ``stop``: when set (the caller gave up),
    the next window raises ``SelectionStopped`` instead of starting.
    Returns None (the purchase model's own probability then stands) when no band has a usable window,
    with the reasons in the report.
    """
    # Every window ends by the calibration end, and its customer table and outcome are cut by date: the
    # later orders need not be copied out (at 1M customers the calibration half was ~160 MB, held through
    # the selection, beside the whole history's in its thread). The split keeps the first order before it.
    known = orders
    first = known["date"].min()
    report = SelectionReport()
    others = (
        _fit_at_end(known, calibration_end, other_families or {}, seed, report)
        if (OTHER_FAMILIES in (candidates or CANDIDATES))
        else {}
    )
    names = _expand(list(candidates or CANDIDATES), others)
    has_amounts = "amount" in known.columns
    fits: dict[pd.Timestamp, tuple[pd.DataFrame, object | None, dict[str, object | None]]] = {}
    fitters = {family: other_families[family] for family in others}
    bands, rows = [], []
    per_candidate: dict[str, list[ChurnBand]] = {}
    judged: tuple[int, list[Window]] | None = None  # the longest windows so far with a purchase model
    level = _level_curve(level_on)
    judgements: dict[tuple[int, tuple[str, ...]], tuple[pd.DataFrame, str, dict[str, ChurnLayer]]] = {}
    band: _Band | None = None  # the last band's windows and what was computed on them
    for horizon in sorted(set(float(h) for h in horizons_days)):
        days = window_length(first, calibration_end, horizon)
        if days < MIN_WINDOW_DAYS:
            report.notes.append(f"{horizon:.0f} d: the history leaves no window of {MIN_WINDOW_DAYS}+ days")
            continue
        origins = backtest_origins(first, calibration_end, days, folds, step_days)
        if band is not None and band.covers(days, tuple(origins)):
            windows = band.windows  # a longer horizon the history caps at the last band's windows
        else:
            windows = []
            for number, origin in enumerate(origins, start=1):
                if stop is not None and stop.is_set():
                    raise SelectionStopped(f"{label}: stopped before its {days}-day window {number}")
                progress.counted(number, len(origins), f"{label} {horizon:.0f}-day band: {days}-day window")
                windows.append(_window(known, origin, days, fit_btyd, fitters, fits, seed))
        if not windows:
            report.notes.append(f"{horizon:.0f} d: no {days}-day window leaves enough history before it")
            continue
        fitted_everywhere = all(w.btyd is not None for w in windows)
        if not fitted_everywhere and judged is not None:
            # An origin too early for a purchase model is too early to judge the others on as well (a
            # young cohort's recency ranked churners worse than chance there): a shorter band's windows.
            report.notes.append(
                f"{horizon:.0f} d: no purchase model before a {days}-day window; judged on the "
                f"{judged[0]}-day windows"
            )
            days, windows = judged
            fitted_everywhere = True
        if fitted_everywhere:
            judged = (days, windows)
        origins_used = tuple(w.origin for w in windows)
        if band is None or not band.covers(days, origins_used):
            band = _Band(days, origins_used, windows, *_band_inputs(windows, fitters))
        pooled, labels = band.pooled, band.labels
        if not 0 < labels.sum() < len(labels):
            report.notes.append(f"{horizon:.0f} d: the {days}-day windows hold one class only")
            continue
        usable = [n for n in names if (fitted_everywhere or not _needs_btyd(n)) and _family(n) in pooled]
        reversed_ = [n for n in usable if _increasing(n) and _reverses(band.fitted(n, has_amounts, seed), n)]
        if reversed_:
            report.notes.append(
                f"{horizon:.0f} d: {reversed_} left out (their fit reverses the score's ranking)"
            )
            usable = [n for n in usable if n not in reversed_]
        if not usable:
            report.notes.append(f"{horizon:.0f} d: no purchase model before a {days}-day window for {names}")
            continue
        if len(usable) < len(names):
            report.notes.append(
                f"{horizon:.0f} d: {sorted(set(names) - set(usable))} left out (no purchase model could "
                f"be fitted before every {days}-day window)"
            )
        key = (days, tuple(usable))
        if key not in judgements:  # bands that fall back on the same windows share one judgement
            scores, predictions = _compare(windows, pooled, labels, usable, has_amounts, seed)
            chosen = _choose(scores, predictions, labels, _bounds(windows), seed)
            refitted = {name: band.fitted(name, has_amounts, seed) for name in usable}  # baselines logged too
            judgements[key] = (scores, chosen, refitted)
        scores, chosen, refitted = judgements[key]
        table = scores.assign(band_days=horizon, window_days=float(days)).reset_index()
        rows.append(table[["band_days", "window_days", "candidate", "auc", "brier", "ece"]])
        offsets = _offsets(level, days)
        for name in usable:
            fitted = refitted[name]
            figures = f"mean AUC {scores.loc[name, 'auc']:.3f}, Brier {scores.loc[name, 'brier']:.4f}"
            why = f"{name}: {figures} on {len(windows)} window(s) of {days} days"
            if days < horizon:
                why += f" (the longest the history allows; the horizon is {horizon:.0f} days)"
            family = _family(name)
            params = None if family is None else others[family]
            per_candidate.setdefault(name, []).append(
                ChurnBand(horizon, float(days), name, fitted, why, offsets, params)
            )
        bands.append(per_candidate[chosen][-1])
    report.scores = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    report.refit = {name: ChurnSelector(fitted) for name, fitted in per_candidate.items()}
    return (ChurnSelector(bands) if bands else None), report


def _family(candidate: str) -> str | None:
    """The other family a ``purchase_model_<family>`` candidate reads; None: the run's own model."""
    return candidate.removeprefix(FAMILY_PREFIX) if candidate.startswith(FAMILY_PREFIX) else None


def _expand(names: list[str], others: dict[str, dict[str, object]]) -> list[str]:
    """The candidate list with ``other_families`` replaced by one candidate per other family fitted."""
    expanded = []
    for name in names:
        expanded += [FAMILY_PREFIX + family for family in others] if name == OTHER_FAMILIES else [name]
    return expanded


def _base_name(candidate: str) -> str:
    return "purchase_model" if _family(candidate) is not None else candidate


def _increasing(candidate: str) -> bool:
    return _base_name(candidate) in INCREASING


def _features(candidate: str, has_amounts: bool) -> list[str]:
    wanted = CANDIDATES[_base_name(candidate)]
    return wanted if has_amounts else [name for name in wanted if name in PURCHASE_ONLY_FEATURES]


def _fit_at_end(
    known: pd.DataFrame,
    end: pd.Timestamp,
    fitters: dict[str, Callable[[pd.DataFrame], object]],
    seed: int,
    report: SelectionReport,
) -> dict[str, dict[str, object]]:
    """Each other family's parameters fitted at ``end`` (what its band predicts with), on a seeded sample
    of at most WINDOW_CUSTOMERS customers; a family that cannot be fitted there is left out, with a note."""
    if not fitters:
        return {}
    with _BUILDING:  # a customer table of the whole log, as a window's
        features = _sample(customer_features(known, end), seed)
    fitted = {}
    for family, fit in fitters.items():
        try:
            fitted[family] = fit(features).params_.as_dict()
        except ModelFitError as error:
            report.notes.append(f"{FAMILY_PREFIX}{family} left out: {error}")
    return fitted


def _sample(features: pd.DataFrame, seed: int) -> pd.DataFrame:
    if len(features) <= WINDOW_CUSTOMERS:
        return features
    rows = np.random.default_rng(seed).choice(len(features), WINDOW_CUSTOMERS, replace=False)
    return features.iloc[np.sort(rows)]


def _window(
    known: pd.DataFrame,
    origin: pd.Timestamp,
    days: int,
    fit_btyd: Callable[[pd.DataFrame], object],
    fitters: dict[str, Callable[[pd.DataFrame], object]],
    fits: dict[pd.Timestamp, tuple[pd.DataFrame, object | None, dict[str, object | None]]],
    seed: int,
) -> Window:
    """The window at ``origin``: the purchase model fitted there on every customer (None when none could
    be) and shared by every band that uses it; the candidates see a seeded sample of at most
    WINDOW_CUSTOMERS of them (AUC and Brier to about 0.002 there; a million-customer log stays fast), which
    the other families are fitted on."""
    if origin not in fits:
        with _BUILDING:  # one window's customer table and fit at a time, whichever selection asks
            features = customer_features(known, origin)
            model = _fit_or_none(fit_btyd, features)
        features = _sample(features, seed)
        theirs = {family: _fit_or_none(fit, features) for family, fit in fitters.items()}
        fits[origin] = (features, model, theirs)
    features, model, others = fits[origin]
    # Only what the (sampled) customers did next: their features are already built for this origin.
    outcome = holdout_outcome(known, features.index, Split(origin, origin + pd.Timedelta(days=days)))
    btyd = None if model is None else model.predict(features, float(days))
    predicted = {f: None if m is None else m.predict(features, float(days)) for f, m in others.items()}
    return Window(origin, features, btyd, outcome, float(days), predicted)


def _fit_or_none(fit: Callable[[pd.DataFrame], object], features: pd.DataFrame) -> object | None:
    try:
        return fit(features)
    except ModelFitError:  # too little history for a purchase model: the other candidates still judge
        return None


def _reverses(fitted: ChurnLayer, candidate: str) -> bool:
    """Whether the candidate's logistic fit on every row of the band's windows gives its one score a
    negative slope."""
    return fitted.coef[fitted.features.index(INCREASING[_base_name(candidate)])] < 0


def _needs_btyd(candidate: str) -> bool:
    return bool(set(CANDIDATES[_base_name(candidate)]) & set(BTYD_FEATURES))


@dataclass
class _Band:
    """The last band's windows and what was computed on them: a longer horizon that the history caps
    at the same windows (short logs: the 273- and 365-day bands often share one) reuses all of it; only
    the band's own horizon differs. Only the last band's: the windows' days never decrease with the
    horizon."""

    days: int
    origins: tuple[pd.Timestamp, ...]
    windows: list[Window]
    pooled: dict[str | None, np.ndarray]
    labels: np.ndarray
    fits: dict[str, ChurnLayer] = field(default_factory=dict)

    def covers(self, days: int, origins: tuple[pd.Timestamp, ...]) -> bool:
        """Whether these are the windows of ``days`` at ``origins`` (windows are those two alone)."""
        return self.days == days and self.origins == origins

    def fitted(self, candidate: str, has_amounts: bool, seed: int) -> ChurnLayer:
        """The candidate fitted on every row of the windows, once: the reversal check and the band's
        refit are the same fit."""
        if candidate not in self.fits:
            inputs, used = self.pooled[_family(candidate)], _features(candidate, has_amounts)
            self.fits[candidate] = fit_logistic(inputs, self.labels, used, [float(self.days)], seed)
        return self.fits[candidate]


def _band_inputs(
    windows: list[Window], fitters: dict[str, Callable[[pd.DataFrame], object]]
) -> tuple[dict[str | None, np.ndarray], np.ndarray]:
    """Every window's inputs, once for the band's fits: from the run's family (key None) and each other
    family fitted before every window (the candidates of a family that was not are left out); the labels."""
    pooled = {None: _pooled(windows, None)}
    pooled |= {f: _pooled(windows, f) for f in fitters if all(w.others.get(f) is not None for w in windows)}
    return pooled, np.concatenate([churned(w.outcome) for w in windows])


def _pooled(windows: list[Window], family: str | None) -> np.ndarray:
    """AVAILABLE_FEATURES rows of every window, the purchase model's columns from the run's model (None)
    or another ``family``'s; NaN where it had none."""
    parts = []
    for w in windows:
        btyd = w.btyd if family is None else w.others.get(family)
        if btyd is None:
            btyd = pd.DataFrame(np.nan, index=w.features.index, columns=list(BTYD_OUTPUTS))
        parts.append(layer_inputs(w.features, btyd, w.days))
    return np.vstack(parts)


def _compare(
    windows: list[Window],
    pooled: dict[str | None, np.ndarray],
    labels: np.ndarray,
    names: list[str],
    has_amounts: bool,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Each candidate's out-of-fold mean AUC, Brier and ECE over the windows (``pooled`` inputs per
    purchase-model family and ``labels`` from them; customers in CV_FOLDS folds, a customer's rows in
    every window in the same fold), and its out-of-fold predictions."""
    ids = np.concatenate([w.features.index.to_numpy() for w in windows])
    codes, unique = pd.factorize(ids)
    fold = np.random.default_rng(seed).integers(0, CV_FOLDS, len(unique))[codes]
    bounds = _bounds(windows)
    rows, predictions = {}, {}
    for name in names:
        used = _features(name, has_amounts)
        inputs = pooled[_family(name)]
        predicted = np.empty(len(labels))
        for k in range(CV_FOLDS):
            test = fold == k
            train = ~test
            if not test.any():
                continue
            if not 0 < labels[train].sum() < train.sum():
                predicted[test] = labels[train].mean()
                continue
            model = fit_logistic(inputs[train], labels[train], used, [], seed)
            predicted[test] = model.predict(inputs[test])
        per_window = [_figures(predicted[a:b], labels[a:b]) for a, b in bounds]
        rows[name] = {key: float(np.nanmean([f[key] for f in per_window])) for key in ("auc", "brier", "ece")}
        predictions[name] = predicted
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("candidate"), predictions


def _bounds(windows: list[Window]) -> list[tuple[int, int]]:
    """Each window's rows in the pooled arrays."""
    ends = np.cumsum([0] + [len(w.features) for w in windows])
    return list(zip(ends[:-1].tolist(), ends[1:].tolist(), strict=True))


def _figures(predicted: np.ndarray, label: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(label, predicted),
        "brier": float(np.mean((predicted - label) ** 2)),
        "ece": expected_calibration_error(predicted, label),
    }


def _choose(
    scores: pd.DataFrame,
    predictions: dict[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    bounds: list[tuple[int, int]] | None = None,
    seed: int = 0,
) -> str:
    """The reference ranking is ``ANCHOR``'s (days since the last purchase), or the best mean AUC among
    the candidates that beat it in KEEP_WIN_SHARE of paired bootstrap resamples of the windows' customers;
    of every candidate within AUC_TIE of that reference, the lowest Brier score wins (then the order).

    Without ``predictions`` (or without the anchor) every candidate qualifies."""
    qualified = list(scores.index)
    if predictions is not None and ANCHOR in scores.index:
        ahead = [n for n in scores.index if n != ANCHOR and scores.loc[n, "auc"] > scores.loc[ANCHOR, "auc"]]
        shares = _win_shares({n: predictions[n] for n in ahead}, predictions[ANCHOR], labels, bounds, seed)
        qualified = [ANCHOR] + [name for name in ahead if shares[name] >= KEEP_WIN_SHARE]
    reference = scores.loc[qualified, "auc"].max()
    close = scores[scores["auc"] >= reference - AUC_TIE]  # any candidate as good as the reference ranks
    return str(close["brier"].idxmin())


def _win_shares(
    candidates: dict[str, np.ndarray],
    anchor: np.ndarray,
    labels: np.ndarray,
    bounds: list[tuple[int, int]],
    seed: int,
) -> dict[str, float]:
    """Each candidate's share of paired bootstrap resamples in which its mean AUC over the windows beats
    ``anchor``'s. Poisson(1) weights per customer stand for the resample (the usual large-sample form of
    the bootstrap), drawn once per resample for every candidate, so a resample is two weighted counts per
    score, not a sort."""
    if not candidates:
        return {}
    rng = np.random.default_rng(seed)
    windows = [
        (
            {name: score_groups(score[a:b]) for name, score in candidates.items()},
            score_groups(anchor[a:b]),
            labels[a:b].astype("float64"),
        )
        for a, b in bounds
    ]
    wins = dict.fromkeys(candidates, 0)
    for _ in range(RESAMPLES):  # a hundred resamples, each O(customers) per candidate
        differences: dict[str, list[float]] = {name: [] for name in candidates}
        for groups, anchor_groups, label in windows:
            weight = rng.poisson(1.0, len(label)).astype("float64")
            positive, negative = weight * label, weight * (1.0 - label)
            if positive.sum() == 0 or negative.sum() == 0:
                continue
            theirs = weighted_auc(anchor_groups, positive, negative)
            for name, ours in groups.items():
                differences[name].append(weighted_auc(ours, positive, negative) - theirs)
        for name, values in differences.items():
            wins[name] += bool(values) and float(np.mean(values)) > 0
    return {name: count / RESAMPLES for name, count in wins.items()}


def _level_curve(level_on: Callable[[float], np.ndarray] | None) -> Callable[[float], float]:
    """The purchase model's mean log-odds of churn on the training base as a function of the horizon in
    days, each horizon computed once for every band (Pareto/NBD's is quadrature per customer)."""
    cache: dict[float, float] = {}

    def mean_logit(days: float) -> float:
        if level_on is None:
            return 0.0
        if days not in cache:
            cache[days] = float(np.mean(logit(np.clip(level_on(float(days)), 1e-9, 1 - 1e-9))))
        return cache[days]

    return mean_logit


def _offsets(level: Callable[[float], float], window_days: float) -> list[float]:
    """Mean log-odds at each OFFSET_HORIZONS minus at the window (zeros without a purchase model's
    curve: the band's level then stays the window's)."""
    at_window = level(float(window_days))
    return [level(float(days)) - at_window for days in OFFSET_HORIZONS]
