"""The covariate generator draws what its parametrisation says: shapes, truth, directions of effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from customer_value.data.synthetic import (
    DESIGN_COLUMNS,
    GAMMA_GROUPS,
    TrueParams,
    generate_covariate_world,
    generate_orders,
)

START = pd.Timestamp("2024-01-01")
OBSERVATION_DAYS = 546


def _zero(family: str, **set_: dict[str, float]) -> dict[str, dict[str, float]]:
    """Every coefficient of the family at 0 except the ones in ``set_`` (group -> column -> value)."""
    return {group: dict.fromkeys(DESIGN_COLUMNS, 0.0) | set_.get(group, {}) for group in GAMMA_GROUPS[family]}


def _repeats(orders: pd.DataFrame) -> pd.Series:
    return orders.groupby("customer_id").size() - 1


def _weeks_left(orders: pd.DataFrame) -> np.ndarray:
    """Each customer's weeks from the first purchase to the end of observation (customer_id order)."""
    first = orders.groupby("customer_id")["timestamp"].min()
    return ((START + pd.Timedelta(days=OBSERVATION_DAYS) - first).dt.total_seconds() / 86_400 / 7).to_numpy()


@pytest.mark.parametrize("family", ["bgnbd", "pareto_nbd"])
def test_shapes_design_and_truth(family: str) -> None:
    world = generate_covariate_world(3000, family=family, seed=5)
    customers = world.customers
    assert list(customers.columns) == ["customer_id", "channel", "tenure_score"]
    assert customers["customer_id"].is_unique and len(customers) == 3000
    assert set(customers["customer_id"]) == set(world.orders["customer_id"])
    assert list(world.orders.columns) == ["customer_id", "timestamp", "amount"]
    assert customers["customer_id"].iloc[:3].tolist() == ["c0", "c1", "c2"]

    assert list(world.design.columns) == ["channel=email", "channel=social", "tenure_score"]
    assert world.design.index.name == "customer_id"
    assert world.design.index.tolist() == customers["customer_id"].tolist()
    channel = customers["channel"].to_numpy()
    np.testing.assert_array_equal(world.design["channel=email"], channel == "email")
    np.testing.assert_array_equal(world.design["channel=social"], channel == "social")
    np.testing.assert_array_equal(world.design["tenure_score"], customers["tenure_score"])
    shares = customers["channel"].value_counts(normalize=True)
    assert set(shares.index) == {"web", "email", "social"}
    np.testing.assert_allclose(shares[["web", "email", "social"]], [0.5, 0.3, 0.2], atol=0.03)
    assert abs(customers["tenure_score"].mean()) < 0.06 and abs(customers["tenure_score"].std() - 1) < 0.05

    dropout = ["a", "b"] if family == "bgnbd" else ["s", "beta"]
    groups = ["purchase", "a", "b"] if family == "bgnbd" else ["purchase", "dropout"]
    expected = {"r", "alpha", *dropout, "p", "q", "v"} | {
        f"gamma_{g}.{c}" for g in groups for c in DESIGN_COLUMNS
    }
    assert set(world.truth) == expected
    assert world.truth["gamma_purchase.channel=email"] == 0.5


def test_same_seed_same_world_and_overrides_reach_the_truth() -> None:
    kwargs = {"family": "pareto_nbd", "gammas": {"dropout": {"tenure_score": 0.9}}}
    one, two = (generate_covariate_world(500, seed=3, **kwargs) for _ in range(2))
    pd.testing.assert_frame_equal(one.orders, two.orders)
    pd.testing.assert_frame_equal(one.design, two.design)
    assert not generate_covariate_world(500, seed=4, **kwargs).orders.equals(one.orders)
    assert one.truth["gamma_dropout.tenure_score"] == 0.9
    assert one.truth["gamma_dropout.channel=social"] == 0.6  # the other defaults stay
    assert one.truth["s"] == 0.6 and one.truth["beta"] == 12.0


@pytest.mark.parametrize(
    ("family", "gammas", "message"),
    [
        ("bgnbd", {"dropout": {"tenure_score": 1.0}}, "gamma groups"),  # a Pareto/NBD group
        ("pareto_nbd", {"a": {"tenure_score": 1.0}}, "gamma groups"),
        ("bgnbd", {"purchase": {"channel=web": 1.0}}, "unknown design columns"),  # the reference level
        ("mbgnbd", None, "family"),
    ],
)
def test_refuses_unknown_names(family: str, gammas: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_covariate_world(10, family=family, gammas=gammas)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bgnbd_purchase_gamma_raises_the_rate_of_its_level(sign: float) -> None:
    gammas = _zero("bgnbd", purchase={"channel=email": sign})
    world = generate_covariate_world(20_000, seed=11, gammas=gammas)
    means = _repeats(world.orders).groupby(world.customers.set_index("customer_id")["channel"]).mean()
    ratio = means["email"] / means["web"]
    assert ratio > 1.3 if sign > 0 else ratio < 1 / 1.3
    assert 0.85 < means["social"] / means["web"] < 1.15  # social's coefficient is 0


@pytest.mark.parametrize(("group", "fewer_repeats_when_high"), [("a", True), ("b", False)])
def test_bgnbd_dropout_gammas_act_on_a_and_b(group: str, fewer_repeats_when_high: bool) -> None:
    """A larger a raises the dropout probability p ~ Beta(a, b); a larger b lowers it."""
    gammas = _zero("bgnbd", **{group: {"tenure_score": 1.0}})
    world = generate_covariate_world(20_000, seed=12, gammas=gammas)
    high = world.design["tenure_score"].to_numpy() > 0
    repeats = _repeats(world.orders).reindex(world.design.index).to_numpy()  # ids sort as strings
    ratio = repeats[high].mean() / repeats[~high].mean()
    assert ratio < 0.8 if fewer_repeats_when_high else ratio > 1.25


def test_pareto_dropout_gamma_makes_its_level_go_quiet() -> None:
    gammas = _zero("pareto_nbd", dropout={"channel=social": 1.0})
    world = generate_covariate_world(20_000, family="pareto_nbd", seed=13, gammas=gammas)
    late = world.orders["timestamp"] >= START + pd.Timedelta(days=OBSERVATION_DAYS / 2)
    quiet = ~world.customers["customer_id"].isin(world.orders.loc[late, "customer_id"])
    share = quiet.groupby(world.customers["channel"]).mean()
    assert share["social"] > share["web"] + 0.04
    assert abs(share["email"] - share["web"]) < 0.025  # email's coefficient is 0


def test_bgnbd_with_zero_gammas_is_generate_orders() -> None:
    n = 20_000
    world = generate_covariate_world(n, seed=21, gammas=_zero("bgnbd")).orders
    plain = generate_orders(n, seed=22)
    assert len(world) / n == pytest.approx(len(plain) / n, rel=0.05)
    assert (_repeats(world) == 0).mean() == pytest.approx((_repeats(plain) == 0).mean(), abs=0.02)
    assert world["amount"].mean() == pytest.approx(plain["amount"].mean(), rel=0.05)


def test_pareto_without_deaths_is_poisson_gamma() -> None:
    """mu ~ 0 (huge beta): repeats in the window average r / alpha times the weeks left."""
    params = TrueParams(r=1.0, alpha=10.0)
    world = generate_covariate_world(
        20_000,
        family="pareto_nbd",
        seed=31,
        params=params,
        pareto=(1.0, 1e9),
        gammas=_zero("pareto_nbd"),
        max_repeats=150,
    )
    expected = params.r / params.alpha * _weeks_left(world.orders)
    assert _repeats(world.orders).mean() == pytest.approx(expected.mean(), rel=0.03)


def test_pareto_repeats_match_the_pareto_nbd_expectation() -> None:
    """Mean repeats are the Pareto/NBD E[X(t)], which pins mu ~ Gamma(s, rate beta) and the death clock."""
    r, alpha, s, beta = 0.25, 4.0, 0.6, 12.0
    world = generate_covariate_world(
        20_000, family="pareto_nbd", seed=0, pareto=(s, beta), gammas=_zero("pareto_nbd"), max_repeats=150
    )
    t = _weeks_left(world.orders)
    expected = r * beta / (alpha * (s - 1)) * (1 - (beta / (beta + t)) ** (s - 1))
    assert _repeats(world.orders).mean() == pytest.approx(expected.mean(), rel=0.05)
