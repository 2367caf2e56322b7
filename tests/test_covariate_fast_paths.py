"""The covariate fits' fast paths against their references, computed in the same run.

- ``row_codes`` / ``covariate_patterns`` group customers exactly as ``np.unique(axis=0)`` does;
- the compiled likelihoods (``covariate_bgnbd``, ``covariate_pareto``, ``covariate_kernels``) give the
  per-pattern NumPy reference's value and gradient (``CovariateLikelihood.per_pattern_value_and_gradient``);
- the fit (plain fit's start, preconditioned BFGS) reaches the optimum that BFGS from the family's plain
  start on the reference objective reaches: log-likelihoods equal to 1e-8 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from customer_value.data.features import customer_features
from customer_value.data.loading import clean_transactions
from customer_value.data.synthetic import generate_covariate_world
from customer_value.models.clv.btyd import model_inputs, purchase_patterns
from customer_value.models.clv.covariate_likelihoods import (
    FAMILY_PARAMS,
    CovariateLikelihood,
    CovariatePatterns,
    covariate_objective,
    covariate_patterns,
    fit_with_covariates,
)
from customer_value.models.clv.covariates import (
    codes_all_distinct,
    coefficient_positions,
    fit_encoding,
    row_codes,
)
from customer_value.models.clv.likelihoods import FIT_TOLERANCE, INITIAL_LOG_PARAMS, fit_bgnbd
from customer_value.models.clv.pareto_likelihood import FIT_TOLERANCE as PARETO_TOLERANCE
from customer_value.models.clv.pareto_likelihood import STALL_GRADIENT, fit_pareto_nbd

BASE = {"bgnbd": (0.24, 4.4, 0.79, 2.4), "pareto_nbd": (0.55, 10.6, 0.61, 11.7)}
# Design columns 0, 1: a text covariate's one-hot levels; 2: a numeric one. Every set, or some empty.
DESIGNS = {
    "bgnbd": [
        {"purchase": [0, 1, 2], "a": [0, 1], "b": [0, 1]},
        {"purchase": [0, 2], "a": [1, 2], "b": [2]},
        {"purchase": [], "a": [], "b": []},
        {"purchase": [2], "a": [], "b": [0]},
    ],
    "pareto_nbd": [
        {"purchase": [0, 1, 2], "dropout": [0, 1]},
        {"purchase": [2], "dropout": [0, 2]},
        {"purchase": [], "dropout": []},
        {"purchase": [], "dropout": [2]},
    ],
}
CASES = [(family, sets) for family, designs in DESIGNS.items() for sets in designs]


def _histories(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Day-resolution histories (so some repeat), a one-hot text covariate and a numeric one."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.5, n).astype(float)
    big_t = rng.integers(5, 60, n).astype(float)
    t_x = np.where(x > 0, np.floor(rng.uniform(0, 1, n) * (big_t + 1)), 0.0)
    t_x = np.minimum(t_x, big_t)
    level = rng.integers(0, 3, n)
    numeric = np.round(rng.normal(size=n), 1)  # rounded: some customers share a design row
    design = np.column_stack([level == 1, level == 2, numeric]).astype(float)
    return x, t_x, big_t, design


def _same_grouping(codes: np.ndarray, reference: np.ndarray) -> bool:
    """Two numberings of rows define the same groups (one code maps to one code, both ways)."""
    pairs = np.unique(np.column_stack([codes, reference]), axis=0)
    return len(pairs) == len(np.unique(codes)) == len(np.unique(reference))


def test_row_codes_group_rows_as_sorting_them_does() -> None:
    x, t_x, big_t, design = _histories(3000, 4)
    for columns in [(design[:, :2],), (x, t_x, big_t, design[:, :2]), (design, x), (x,)]:
        codes, n = row_codes(*columns)
        matrix = np.column_stack(columns)
        reference = np.unique(matrix, axis=0, return_inverse=True)[1].ravel()
        assert n == len(np.unique(matrix, axis=0))
        assert _same_grouping(codes, reference)
    distinct = np.arange(5.0)
    assert np.array_equal(row_codes(np.zeros(5), distinct)[0], np.arange(5))  # all distinct: as they come
    assert np.array_equal(row_codes(np.array([0.0, -0.0, 1.0]))[0], [0, 0, 1])  # -0 == 0, as in np.unique
    assert codes_all_distinct(row_codes(np.random.default_rng(0).normal(size=50))[0])
    assert not codes_all_distinct(row_codes(design[:, :2])[0])


def test_covariate_patterns_are_the_distinct_rows_with_their_counts() -> None:
    x, t_x, big_t, design = _histories(3000, 5)
    design = design[:, :2]  # text only: customers share patterns
    patterns = covariate_patterns(x, t_x, big_t, design)
    rows = np.column_stack([x, t_x, big_t, design])
    distinct, counts = np.unique(rows, axis=0, return_counts=True)
    ours = np.column_stack([patterns.frequency, patterns.recency, patterns.T, patterns.design])
    order = np.lexsort(ours.T[::-1])
    np.testing.assert_array_equal(ours[order], distinct)
    np.testing.assert_array_equal(patterns.weights[order], counts)


@pytest.mark.parametrize(("family", "sets"), CASES)
def test_the_compiled_likelihood_is_the_per_pattern_one(family: str, sets: dict[str, list[int]]) -> None:
    x, t_x, big_t, design = _histories(2000, 6)
    patterns = covariate_patterns(x, t_x, big_t, design)
    weighted = CovariatePatterns(
        patterns.frequency,
        patterns.recency,
        patterns.T,
        patterns.design,
        patterns.weights * np.random.default_rng(7).uniform(0.5, 2.0, len(patterns.weights)),
    )
    for case in (patterns, weighted):
        likelihood = CovariateLikelihood(family, case, sets)
        rng = np.random.default_rng(8)
        for _ in range(5):
            theta = np.r_[
                np.log(BASE[family]) + rng.normal(0, 0.5, 4), rng.normal(0, 0.5, likelihood.n_params - 4)
            ]
            for scale in (1.0, 1 / 60):
                value, gradient = likelihood.value_and_gradient(theta, scale)
                reference, reference_gradient = likelihood.per_pattern_value_and_gradient(theta, scale)
                assert value == pytest.approx(reference, rel=1e-10)
                np.testing.assert_allclose(
                    gradient, reference_gradient, rtol=1e-10, atol=1e-10 * np.abs(reference_gradient).max()
                )


@pytest.mark.parametrize("family", ["bgnbd", "pareto_nbd"])
def test_an_evaluation_split_over_threads_is_the_one_calls_bit_for_bit(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled pass's chunks in three threads (uneven runs of chunks, on any runner) give the serial
    call's value and gradient exactly; a ``side_by_side`` thread (the covariance's gradients) keeps its
    pass in one piece."""
    from concurrent.futures import ThreadPoolExecutor

    from customer_value import threads
    from customer_value.models.clv import covariate_kernels

    x, t_x, big_t, design = _histories(3000, 9)
    likelihood = CovariateLikelihood(family, covariate_patterns(x, t_x, big_t, design), DESIGNS[family][0])
    theta = np.r_[np.log(BASE[family]), np.random.default_rng(10).normal(0, 0.5, likelihood.n_params - 4)]
    serial = likelihood.value_and_gradient(theta)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _: range(3))
    monkeypatch.setattr(covariate_kernels, "KERNEL_ROWS_PER_THREAD", 500)
    assert len(threads.row_slices(len(likelihood.patterns.T), 500)) == 3
    split = likelihood.value_and_gradient(theta)
    assert split[0] == serial[0]
    np.testing.assert_array_equal(split[1], serial[1])
    with ThreadPoolExecutor(1, initializer=threads.side_by_side) as pool:
        assert pool.submit(threads.row_slices, 3000, 500).result() == [slice(0, 3000)]
        beside = pool.submit(likelihood.value_and_gradient, theta).result()
    assert beside[0] == serial[0]
    np.testing.assert_array_equal(beside[1], serial[1])


class _Reference:
    """A likelihood whose evaluation is the per-pattern reference (for ``covariate_objective``)."""

    def __init__(self, likelihood: CovariateLikelihood) -> None:
        self.total_weight = likelihood.total_weight
        self.value_and_gradient = likelihood.per_pattern_value_and_gradient


def _world(family: str, n: int) -> tuple[CovariatePatterns, dict[str, list[int]], object]:
    world = generate_covariate_world(n, family=family, seed=3, max_repeats=200)
    orders, _ = clean_transactions(world.orders, source="simulated")
    features = customer_features(orders, orders["date"].max())
    frame = features.join(world.customers.set_index("customer_id"), how="left")
    encoding = fit_encoding(frame, ["channel", "tenure_score"], ["channel"])
    inputs = model_inputs(frame, 7.0, spend=False, covariates=encoding)
    patterns = covariate_patterns(inputs.frequency, inputs.recency, inputs.T, inputs.design)
    return patterns, coefficient_positions(family, encoding), inputs


@pytest.mark.parametrize(("family", "n"), [("bgnbd", 20_000), ("pareto_nbd", 8_000)])
def test_the_fit_reaches_the_reference_optimum(family: str, n: int) -> None:
    patterns, design, inputs = _world(family, n)
    likelihood = CovariateLikelihood(family, patterns, design)
    scale = 1.0 / float(np.max(patterns.T))
    # The reference: the fit before the fast paths, BFGS from the family's plain start (lifetimes' for
    # BG/NBD, every log-parameter 0 for Pareto/NBD) on the per-pattern objective, with its tolerance.
    objective = covariate_objective(_Reference(likelihood), scale, 0.0)
    if family == "bgnbd":
        start, tolerance = (
            np.r_[np.full(4, INITIAL_LOG_PARAMS), np.zeros(likelihood.n_params - 4)],
            FIT_TOLERANCE,
        )
    else:
        start, tolerance = np.zeros(likelihood.n_params), PARETO_TOLERANCE
    with np.errstate(all="ignore"):
        reference = minimize(objective, start, jac=True, method="BFGS", tol=tolerance)
    assert reference.success or np.max(np.abs(reference.jac)) <= STALL_GRADIENT
    plain = (fit_bgnbd if family == "bgnbd" else fit_pareto_nbd)(purchase_patterns(inputs), 0.0)
    params, gammas = fit_with_covariates(family, patterns, design, 0.0, plain)
    scaled = {k: v * (scale if k in ("alpha", "beta") else 1.0) for k, v in params.items()}
    theta = np.r_[np.log([scaled[k] for k in FAMILY_PARAMS[family]]), gammas]
    assert objective(theta)[0] == pytest.approx(reference.fun, rel=1e-8)
    np.testing.assert_allclose(theta, reference.x, atol=1e-3)  # BFGS's tolerance, not rounding


def test_the_compiled_terms_are_built_once_per_patterns_and_never_shared_with_others() -> None:
    """The fit and the covariance's Hessian share one set of compiled terms per patterns object (their
    construction reorders every array); patterns made from it with other weights get their own."""
    from dataclasses import replace

    x, t_x, big_t, design = _histories(500, 9)
    patterns = covariate_patterns(x, t_x, big_t, design)
    sets = DESIGNS["bgnbd"][0]
    first, again = (CovariateLikelihood("bgnbd", patterns, sets) for _ in range(2))
    assert first._fast is again._fast
    assert CovariateLikelihood("bgnbd", patterns, DESIGNS["bgnbd"][1])._fast is not first._fast
    doubled = replace(patterns, weights=patterns.weights * 2)
    other = CovariateLikelihood("bgnbd", doubled, sets)
    assert other._fast is not first._fast
    theta = np.r_[np.log(BASE["bgnbd"]), np.full(first.n_params - 4, 0.1)]
    assert other.value_and_gradient(theta)[0] == pytest.approx(2 * first.value_and_gradient(theta)[0])
