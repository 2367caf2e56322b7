"""Stability of a segmentation, as adjusted Rand indices (1 = the same partition, 0 = chance).

- Bootstrap: refit on resamples of the customers, assign every customer with each refit, compare with the
  main fit's assignment; mean and standard deviation over resamples.
- Adjacent windows: fit on customers as of ``window_days`` before the end and as of the end, assign
  today's customers with both, compare. A segmentation that reshuffles when a quarter passes is not one a
  marketing team can plan around.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from customer_value.data.features import customer_features
from customer_value.models.segments.segmentation import SegmentModel
from customer_value.tracking import progress


def bootstrap_ari(
    features: pd.DataFrame,
    labels: np.ndarray,
    make_model: Callable[[], SegmentModel],
    n_resamples: int,
    seed: int,
    kpis: pd.DataFrame | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation of ARI(main fit, refit on a bootstrap resample) over all customers;
    ``kpis`` (aligned with ``features``) let each refit merge indistinct segments as the main fit did."""
    rng = np.random.default_rng(seed)
    scores = []
    for number in range(1, n_resamples + 1):  # a few refits
        progress.counted(number, n_resamples, "segments: bootstrap refit")
        rows = rng.integers(0, len(features), len(features))
        refit = make_model().fit(features.iloc[rows], None if kpis is None else kpis.iloc[rows])
        scores.append(adjusted_rand_score(labels, refit.predict(features)["segment"].to_numpy()))
    return float(np.mean(scores)), float(np.std(scores))


def window_ari(
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    window_days: int,
    make_model: Callable[[], SegmentModel],
    complete: Callable[[pd.DataFrame, pd.Timestamp], pd.DataFrame] = lambda table, day: table,
) -> float:
    """ARI between fits as of ``as_of - window_days`` and ``as_of``, both assigning today's customers.
    Neither merges on distinctness: the KPIs exist for today only.

    ``complete(table, day)`` adds what the model needs beyond the customer table (attributes, regularity
    as of ``day``)."""
    earlier = as_of - pd.Timedelta(days=window_days)
    now = complete(customer_features(orders, as_of), as_of)
    before = complete(customer_features(orders, earlier), earlier)
    earlier, current = make_model().fit(before), make_model().fit(now)
    return float(
        adjusted_rand_score(
            earlier.predict(now)["segment"].to_numpy(), current.predict(now)["segment"].to_numpy()
        )
    )
