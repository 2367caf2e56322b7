"""Drift of the customer base (issue 17, part 2): the PSI of each input between the training base, whose
reference every CLV run logs, and a later base; a direct computation, a stable base, a shifted one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from customer_value.data.features import FEATURE_COLUMNS
from customer_value.evaluation.drift import (
    REFERENCE_ARTIFACT,
    population_stability,
    reference_distribution,
    stability_index,
)


def _base(rng: np.random.Generator, n: int, recency_scale: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "frequency": rng.poisson(0.8, n).astype(float),  # six in ten zeros: tied decile edges
            "recency_days": rng.exponential(60.0 * recency_scale, n),
            "monetary_value": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 20.0, n)),
        }
    )


def test_psi_is_the_textbook_sum_over_the_reference_bins() -> None:
    reference = {"x": {"edges": [1.0, 2.0], "shares": [0.5, 0.3, 0.2]}}
    base = pd.DataFrame({"x": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]})  # 2, 2, 6 of 10
    expected = sum((a - e) * np.log(a / e) for a, e in zip([0.2, 0.2, 0.6], [0.5, 0.3, 0.2], strict=True))
    assert population_stability(reference, base)["x"] == pytest.approx(expected, rel=1e-12)
    assert stability_index(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_a_base_like_the_training_one_is_stable_and_a_shifted_one_is_not() -> None:
    rng = np.random.default_rng(7)
    reference = reference_distribution(
        _base(rng, 20_000), ["frequency", "recency_days", "monetary_value", "x"]
    )
    assert set(reference) == {"frequency", "recency_days", "monetary_value"}  # absent columns skipped
    assert len(reference["frequency"]["edges"]) < 9  # ties collapse the deciles of a count
    assert sum(reference["recency_days"]["shares"]) == pytest.approx(1.0)

    same = population_stability(reference, _base(rng, 20_000))
    assert (same < 0.01).all(), same
    shifted = population_stability(reference, _base(rng, 20_000, recency_scale=2.0))
    assert shifted["recency_days"] > 0.25  # twice as long since the last purchase: a real shift
    assert shifted[["frequency", "monetary_value"]].max() < 0.01  # what did not move stays put


@pytest.mark.slow  # reads the session's training run (one train per worker)
def test_every_clv_training_run_logs_the_reference_of_its_base(trained_tracking_uri: str) -> None:
    client = MlflowClient(trained_tracking_uri)
    experiment = client.get_experiment_by_name("customer-clv")
    (run,) = client.search_runs([experiment.experiment_id])
    path = client.download_artifacts(run.info.run_id, REFERENCE_ARTIFACT)
    with open(path) as handle:
        reference = json.load(handle)
    assert set(reference) == set(FEATURE_COLUMNS)
    for distribution in reference.values():
        assert len(distribution["shares"]) == len(distribution["edges"]) + 1
        assert sum(distribution["shares"]) == pytest.approx(1.0)
