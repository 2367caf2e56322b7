"""Realistic transaction logs generated from the models themselves (BG/NBD purchases, Gamma-Gamma spend).

Used by tests and benchmarks: the true parameters are known, so recovery can be checked. The covariate
generator adds customers whose BG/NBD or Pareto/NBD parameters depend on a channel and a tenure score
through known coefficients, so covariate models can be checked the same way. Vectorised over
customers with a cap on purchases per customer (``max_repeats``), never a per-customer Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TrueParams:
    """Population parameters; BG/NBD rates are per ``time_unit_days`` days (weeks by default)."""

    r: float = 0.25
    alpha: float = 4.0
    a: float = 0.8
    b: float = 2.5
    p: float = 6.0
    q: float = 4.0
    v: float = 15.0
    time_unit_days: float = 7.0


def generate_orders(
    n_customers: int,
    *,
    seed: int = 0,
    params: TrueParams = TrueParams(),
    start: str = "2024-01-01",
    acquisition_days: int = 84,
    observation_days: int = 546,
    max_repeats: int = 60,
) -> pd.DataFrame:
    """Orders (customer_id, timestamp, amount) for customers acquired in the first ``acquisition_days``.

    Each customer buys at rate lambda ~ Gamma(r, alpha) while alive, drops out after any repeat purchase
    with probability p ~ Beta(a, b), and spends Gamma(p, nu) per order with nu ~ Gamma(q, v).
    """
    rng = np.random.default_rng(seed)
    rate = rng.gamma(params.r, 1.0 / params.alpha, n_customers)  # purchases per unit
    dropout = rng.beta(params.a, params.b, n_customers)
    return _bgnbd_orders(rng, rate, dropout, params, start, acquisition_days, observation_days, max_repeats)


def _bgnbd_orders(
    rng: np.random.Generator,
    rate: np.ndarray,
    dropout: np.ndarray,
    params: TrueParams,
    start: str,
    acquisition_days: int,
    observation_days: int,
    max_repeats: int,
) -> pd.DataFrame:
    """BG/NBD orders given each customer's purchase rate and dropout probability (shared by both generators).

    The draws after ``rate`` and ``dropout`` keep generate_orders' order, so its seeded output is unchanged.
    """
    spend_rate, first_day = _spend_and_first_day(rng, params, len(rate), acquisition_days)
    # Dropout can only follow a repeat purchase, so the last possible one is L ~ Geometric(p) >= 1:
    # alive after x repeats with probability (1 - p)^x, as in the BG/NBD likelihood.
    lifetime_repeats = np.minimum(rng.geometric(dropout), max_repeats)
    repeat_days = _repeat_days(rng, rate, first_day, params.time_unit_days, max_repeats)
    keep = (np.arange(max_repeats)[None, :] < lifetime_repeats[:, None]) & (repeat_days < observation_days)
    return _orders_frame(rng, first_day, repeat_days, keep, spend_rate, params.p, start)


def _pareto_orders(
    rng: np.random.Generator,
    rate: np.ndarray,
    death_rate: np.ndarray,
    params: TrueParams,
    start: str,
    acquisition_days: int,
    observation_days: int,
    max_repeats: int,
) -> pd.DataFrame:
    """Pareto/NBD orders: Poisson purchases at ``rate`` from the first one until death or the window end."""
    unit = params.time_unit_days
    spend_rate, first_day = _spend_and_first_day(rng, params, len(rate), acquisition_days)
    death_day = first_day + rng.exponential(1.0, len(rate)) / np.maximum(death_rate, 1e-12) * unit
    repeat_days = _repeat_days(rng, rate, first_day, unit, max_repeats)
    keep = repeat_days < np.minimum(death_day, observation_days)[:, None]
    return _orders_frame(rng, first_day, repeat_days, keep, spend_rate, params.p, start)


def _spend_and_first_day(
    rng: np.random.Generator, params: TrueParams, n_customers: int, acquisition_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's Gamma-Gamma spend rate nu ~ Gamma(q, v) and first-purchase day."""
    spend_rate = rng.gamma(params.q, 1.0 / params.v, n_customers)
    return spend_rate, rng.uniform(0, acquisition_days, n_customers)


def _repeat_days(
    rng: np.random.Generator, rate: np.ndarray, first_day: np.ndarray, unit: float, max_repeats: int
) -> np.ndarray:
    """Days of the first ``max_repeats`` repeat purchases had the customer stayed alive (exponential gaps)."""
    gaps = rng.exponential(1.0, (len(rate), max_repeats)) / np.maximum(rate, 1e-12)[:, None]
    return first_day[:, None] + np.cumsum(gaps, axis=1) * unit


def _orders_frame(
    rng: np.random.Generator,
    first_day: np.ndarray,
    repeat_days: np.ndarray,
    keep: np.ndarray,
    spend_rate: np.ndarray,
    p: float,
    start: str,
) -> pd.DataFrame:
    """The first purchase plus the kept repeats, with Gamma(p, nu) amounts, sorted by customer then time."""
    customer = np.concatenate([np.arange(len(first_day)), np.nonzero(keep)[0]])
    day = np.concatenate([first_day, repeat_days[keep]])
    amount = rng.gamma(p, 1.0 / spend_rate[customer])
    order = np.lexsort((day, customer))
    timestamps = pd.Timestamp(start) + pd.to_timedelta(np.round(day[order] * 86_400), unit="s")
    return pd.DataFrame(
        {
            "customer_id": _customer_ids(customer[order]),
            "timestamp": timestamps,
            "amount": np.round(amount[order], 2).clip(min=0.01),
        }
    )


def _customer_ids(index: np.ndarray) -> np.ndarray:
    """Customer ids "c0", "c1", ... in both generators."""
    return np.char.add("c", index.astype(str))


CHANNELS = ("web", "email", "social")  # web is the reference level, left out of the design
CHANNEL_SHARES = (0.5, 0.3, 0.2)
DESIGN_COLUMNS = ("channel=email", "channel=social", "tenure_score")
FAMILIES = ("bgnbd", "pareto_nbd")
GAMMA_GROUPS = {"bgnbd": ("purchase", "a", "b"), "pareto_nbd": ("purchase", "dropout")}
DEFAULT_GAMMAS: dict[str, dict[str, float]] = {
    "purchase": {"channel=email": 0.5, "channel=social": -0.4, "tenure_score": 0.3},
    "dropout": {"channel=email": -0.5, "channel=social": 0.6, "tenure_score": -0.3},
    "a": {"channel=email": 0.4, "channel=social": -0.3, "tenure_score": 0.2},
    "b": {"channel=email": -0.3, "channel=social": 0.3, "tenure_score": -0.2},
}


@dataclass(frozen=True)
class CovariateWorld:
    """What a covariate generator drew: the orders, one row per customer of covariates, the truth."""

    orders: pd.DataFrame  # customer_id, timestamp, amount (as generate_orders)
    customers: pd.DataFrame  # customer_id, channel (str), tenure_score (float): one row per customer
    design: pd.DataFrame  # the covariate design used, indexed by customer_id: one column per coefficient
    truth: dict[str, float]  # r, alpha, a, b (or s, beta), p, q, v and gamma_<group>.<design column>


def generate_covariate_world(
    n_customers: int,
    *,
    family: str = "bgnbd",
    seed: int = 0,
    start: str = "2024-01-01",
    acquisition_days: int = 84,
    observation_days: int = 546,
    max_repeats: int = 60,
    params: TrueParams = TrueParams(),
    pareto: tuple[float, float] = (0.6, 12.0),
    gammas: dict[str, dict[str, float]] | None = None,
) -> CovariateWorld:
    """Customers with a channel and a tenure score whose BG/NBD or Pareto/NBD parameters depend on them.

    Time-invariant covariates as in Fader & Hardie's note and CLVTools, z the customer's design row:
    lambda ~ Gamma(r, alpha * exp(-gamma_purchase . z)); Pareto/NBD mu ~ Gamma(s, beta * exp(-gamma_dropout
    . z)) with ``pareto = (s, beta)``; BG/NBD p ~ Beta(a * exp(gamma_a . z), b * exp(gamma_b . z)). Spend is
    Gamma-Gamma without covariates. ``gammas`` overrides DEFAULT_GAMMAS by group and design column; the
    family's ``truth`` lists every parameter so recovery can be checked.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    coefficients = _gammas(family, gammas or {})
    rng = np.random.default_rng(seed)
    channel = np.asarray(CHANNELS)[rng.choice(len(CHANNELS), size=n_customers, p=CHANNEL_SHARES)]
    tenure_score = rng.standard_normal(n_customers)
    ids = _customer_ids(np.arange(n_customers))
    design = pd.DataFrame(
        {
            "channel=email": (channel == "email").astype(float),
            "channel=social": (channel == "social").astype(float),
            "tenure_score": tenure_score,
        },
        index=pd.Index(ids, name="customer_id"),
    )
    z = design.to_numpy()  # gamma . z per group, columns in DESIGN_COLUMNS order
    effect = {group: z @ np.array([c[col] for col in DESIGN_COLUMNS]) for group, c in coefficients.items()}
    rate = rng.gamma(params.r, 1.0 / (params.alpha * np.exp(-effect["purchase"])))
    args = (params, start, acquisition_days, observation_days, max_repeats)
    truth = {"r": params.r, "alpha": params.alpha}
    if family == "bgnbd":
        dropout = rng.beta(params.a * np.exp(effect["a"]), params.b * np.exp(effect["b"]))
        orders = _bgnbd_orders(rng, rate, dropout, *args)
        truth |= {"a": params.a, "b": params.b}
    else:
        s, beta = pareto
        death_rate = rng.gamma(s, 1.0 / (beta * np.exp(-effect["dropout"])))
        orders = _pareto_orders(rng, rate, death_rate, *args)
        truth |= {"s": s, "beta": beta}
    truth |= {"p": params.p, "q": params.q, "v": params.v}
    truth |= {f"gamma_{g}.{col}": coefs[col] for g, coefs in coefficients.items() for col in DESIGN_COLUMNS}
    customers = pd.DataFrame({"customer_id": ids, "channel": channel, "tenure_score": tenure_score})
    return CovariateWorld(orders=orders, customers=customers, design=design, truth=truth)


def _gammas(family: str, overrides: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The family's coefficient groups: the defaults with ``overrides`` applied; unknown names are refused."""
    groups = GAMMA_GROUPS[family]
    coefficients = {group: dict(DEFAULT_GAMMAS[group]) for group in groups}
    for group, coefs in overrides.items():
        if group not in groups:
            raise ValueError(f"{family} has gamma groups {groups}, got {group!r}")
        unknown = set(coefs) - set(DESIGN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown design columns {sorted(unknown)}; the design has {DESIGN_COLUMNS}")
        coefficients[group] |= {col: float(value) for col, value in coefs.items()}
    return coefficients
