"""Generated logs whose buyers break BG/NBD's assumptions, to judge churn models on more than BG/NBD data.

``log_shapes`` bends BG/NBD logs into the shapes a data team's log has; every buyer in them still buys as
BG/NBD assumes, which flatters BG/NBD. Real buyers do not: grocery shoppers buy at a rhythm (gamma gaps,
not exponential ones), buyers slow down as they age, pause for months and come back, or buy in bursts.
Each shape here is drawn from one such behaviour (``mixed_real`` from all of them plus plain BG/NBD
buyers), so a churn model can be compared with the rule "days since last purchase" where BG/NBD is wrong.

BG/NBD assumes (Fader, Hardie & Lee 2005): (i) while alive a customer buys as a Poisson process, so the
gaps between orders are exponential and memoryless (coefficient of variation 1); (ii) the purchase rate is
constant over the customer's life; (iii) a customer can drop out only just after a repeat purchase, with
the same probability after each one, and dropout is for good. The docstring of each generator says which
of them it breaks.

Every generator returns orders (customer_id, timestamp, amount) as ``synthetic.generate_orders`` does:
customers acquired over the first ``acquisition_days`` (their first order), every order before
``observation_days`` after ``start``, Gamma-Gamma amounts (``TrueParams`` p, q, v), sorted by customer
then time; unlike it, ids are zero-padded ("c000000", "c000001", ...) and timestamps datetime64[ns].
Vectorised over customers with a cap on orders per customer (never a per-customer Python loop) and
deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from customer_value.data.synthetic import TrueParams, generate_orders

YEAR = 365
START = "2024-01-01"
ACQUISITION_DAYS = 182  # customers join over six months
OBSERVATION_DAYS = 3 * YEAR  # three years: cut at several dates with a 180-day horizon after each
MAX_ORDERS = 200  # cap on orders per customer (the first one included)
SPEND = TrueParams()  # Gamma-Gamma spend: p, q, v as in synthetic.generate_orders


@dataclass(frozen=True)
class BehaviourShape:
    """One kind of buyer: how to generate it and which BG/NBD assumption it breaks."""

    description: str
    breaks: str  # the BG/NBD assumption(s) the shape breaks
    generate: Callable[[int, int], pd.DataFrame]  # (customers, seed) -> orders
    customers: int = 800
    start: str = START
    acquisition_days: int = ACQUISITION_DAYS
    observation_days: int = OBSERVATION_DAYS

    @property
    def end(self) -> pd.Timestamp:
        """The end of observation: every order is before it (or at it, after rounding to the second)."""
        return pd.Timestamp(self.start) + pd.Timedelta(days=self.observation_days)


def regular_buyers(
    n: int,
    seed: int = 0,
    *,
    median_gap_days: float = 7.0,
    rhythm_spread: float = 0.25,
    gap_days_range: tuple[float, float] = (3.0, 45.0),
    gap_shapes: tuple[int, ...] = (2, 3, 4, 5),
    median_lifetime_days: float = 720.0,
    lifetime_spread: float = 0.8,
    max_orders: int = 2 * MAX_ORDERS,  # a 3-day rhythm over three years
) -> pd.DataFrame:
    """Weekly shoppers with a rhythm of their own who stop for good at some time (a grocery base).

    Each customer's gaps are Erlang: Gamma(k, m / k) with k drawn from ``gap_shapes`` (coefficient of
    variation 1/sqrt(k), 0.45-0.71) and a mean gap m log-normal around ``median_gap_days`` (log-sd
    ``rhythm_spread``: 95 % of customers between 4 and 11 days; clipped to ``gap_days_range``). The
    customer dies at an exponential time after the first order whose mean is log-normal around
    ``median_lifetime_days`` (log-sd ``lifetime_spread``).

    Breaks (i): gaps are far less variable than exponential, so a gap of a few times the customer's own
    rhythm is strong evidence of death, where BG/NBD's memoryless gaps make it weak evidence; and the
    counts are under-dispersed, which BG/NBD reads as rates more alike than they are (a large r). And
    (iii): death happens in calendar time, between purchases, so some customers die before a second
    order. BG/NBD cannot let a one-time buyer drop out (P(alive) = 1 when x = 0) and, with its tight rate
    prior, predicts that such a customer, gone for months, buys again almost surely. That is where
    "days since last purchase" beats it here (tests/test_behaviour_shapes.py); among repeat buyers the
    two rank churners about equally well, and with rhythms spread from weekly to monthly
    (``rhythm_spread=0.5``) BG/NBD's rate heterogeneity grows, the one-time buyers no longer look certain
    to return and the two tie.
    """
    rng = np.random.default_rng(seed)
    mean_gap = np.clip(median_gap_days * rng.lognormal(0.0, rhythm_spread, n), *gap_days_range)
    k = rng.choice(np.asarray(gap_shapes), size=n)
    lifetime = median_lifetime_days * rng.lognormal(0.0, lifetime_spread, n)
    first_day = rng.uniform(0, ACQUISITION_DAYS, n)
    death_day = first_day + rng.exponential(1.0, n) * lifetime
    gaps = rng.gamma(k[:, None], (mean_gap / k)[:, None], (n, max_orders - 1))
    repeat_days = first_day[:, None] + np.cumsum(gaps, axis=1)
    keep = repeat_days < np.minimum(death_day, OBSERVATION_DAYS)[:, None]
    return _orders_frame(rng, first_day, repeat_days, keep)


def decaying_rates(
    n: int,
    seed: int = 0,
    *,
    initial_rate_shape: float = 2.0,
    initial_purchases_per_year: float = 20.0,
    median_decay_days: float = 250.0,
    decay_spread: float = 0.6,
    max_orders: int = MAX_ORDERS,
) -> pd.DataFrame:
    """Buyers who never drop out but buy less and less: Poisson at rate rate0 * exp(-age / tau).

    rate0 ~ Gamma(``initial_rate_shape``) with mean ``initial_purchases_per_year`` a year; the decay time
    tau is log-normal around ``median_decay_days`` (``decay_spread`` the log-sd). The repeats are the
    arrivals of a unit Poisson process mapped through the inverse of the cumulative rate
    rate0 * tau * (1 - exp(-age / tau)), so a customer makes Poisson(rate0 * tau) repeats in all.

    Breaks (ii): the rate is not constant while "alive" (there is no death at all). BG/NBD explains a
    slowing buyer by a chance of having died and predicts either the old rate or nothing; the truth is a
    lower rate that keeps falling, and a buyer read as dead can still buy.
    """
    rng = np.random.default_rng(seed)
    rate0 = rng.gamma(initial_rate_shape, initial_purchases_per_year / YEAR / initial_rate_shape, n)
    tau = median_decay_days * rng.lognormal(0.0, decay_spread, n)
    first_day = rng.uniform(0, ACQUISITION_DAYS, n)
    total = (rate0 * tau)[:, None]  # expected repeats over the whole life
    arrivals = np.cumsum(rng.exponential(1.0, (n, max_orders - 1)), axis=1)
    possible = arrivals < total
    age = -tau[:, None] * np.log1p(-np.where(possible, arrivals / total, 0.0))
    repeat_days = first_day[:, None] + age
    keep = possible & (repeat_days < OBSERVATION_DAYS)
    return _orders_frame(rng, first_day, repeat_days, keep)


def pause_and_return(
    n: int,
    seed: int = 0,
    *,
    median_gap_days: float = 12.0,
    mean_spell_days: float = 120.0,
    mean_pause_days: float = 180.0,
    pause_shape: float = 3.0,
    return_beta: tuple[float, float] = (4.0, 2.0),
    max_spells: int = 8,
    max_orders: int = MAX_ORDERS,
) -> pd.DataFrame:
    """Buyers alternating active spells and months-long pauses, returning after each with some chance.

    Active spells last Gamma(2) days with mean ``mean_spell_days``; pauses Gamma(``pause_shape``) days with
    mean ``mean_pause_days`` (most of them over 90 days). In a spell the customer buys as a Poisson process
    with mean gap log-normal around ``median_gap_days`` (log-sd 0.5); after each spell they come back with
    probability q ~ Beta(``return_beta``) (mean 2/3 by default), else they are gone.

    Breaks (iii): leaving is not for good, so a long gap does not mean gone; and (ii): the rate drops to
    zero for months and comes back. BG/NBD reads every pause as a probable death.
    """
    rng = np.random.default_rng(seed)
    rate = 1.0 / (median_gap_days * rng.lognormal(0.0, 0.5, n))
    comeback = rng.beta(*return_beta, n)
    first_day = rng.uniform(0, ACQUISITION_DAYS, n)
    spells = np.minimum(rng.geometric(1.0 - comeback), max_spells)  # spells lived, the first included
    spell = rng.gamma(2.0, mean_spell_days / 2.0, (n, max_spells))
    pause = rng.gamma(pause_shape, mean_pause_days / pause_shape, (n, max_spells))
    active_end = np.cumsum(spell, axis=1)  # active time at the end of each spell
    active_start = active_end - spell
    calendar_start = first_day[:, None] + active_start + np.cumsum(pause, axis=1) - pause
    active = np.cumsum(rng.exponential(1.0, (n, max_orders - 1)), axis=1) / rate[:, None]
    # Which spell each repeat's active time falls in: searchsorted row by row, the rows made disjoint.
    offset = (np.arange(n) * (np.max(active_end, initial=0.0) + np.max(active, initial=0.0) + 1.0))[:, None]
    index = np.searchsorted((active_end + offset).ravel(), (active + offset).ravel(), side="right")
    which = index.reshape(n, max_orders - 1) - np.arange(n)[:, None] * max_spells
    lived = which < spells[:, None]
    which = np.minimum(which, max_spells - 1)
    rows = np.arange(n)[:, None]
    repeat_days = calendar_start[rows, which] + active - active_start[rows, which]
    keep = lived & (repeat_days < OBSERVATION_DAYS)
    return _orders_frame(rng, first_day, repeat_days, keep)


def bursts(
    n: int,
    seed: int = 0,
    *,
    median_burst_gap_days: float = 90.0,
    burst_gap_days_range: tuple[float, float] = (40.0, 365.0),
    mean_extra_orders: float = 2.5,
    mean_gap_in_burst_days: float = 1.5,
    median_lifetime_days: float = 720.0,
    max_bursts: int = 40,
    max_burst_orders: int = 8,
) -> pd.DataFrame:
    """Buyers who place several orders within days, then go quiet for months; and drop out.

    Bursts start as a Poisson process with mean gap log-normal around ``median_burst_gap_days`` (log-sd
    0.5, clipped to ``burst_gap_days_range``), the first one at the first order. A burst has 1 + Poisson(e)
    orders (e ~ Gamma(2) with mean ``mean_extra_orders``, at most ``max_burst_orders``) spaced by
    exponential gaps of mean ``mean_gap_in_burst_days``. The customer dies at an exponential calendar time
    with mean log-normal around ``median_lifetime_days`` (log-sd 0.8). At most max_bursts * max_burst_orders
    orders a customer.

    Breaks (i): purchases are clustered, not Poisson (gap coefficient of variation well above 1), so the
    count of orders overstates how often the customer comes back and a quiet spell after a burst is
    expected, not a sign of death; and (iii): death in calendar time.
    """
    rng = np.random.default_rng(seed)
    burst_gap = np.clip(median_burst_gap_days * rng.lognormal(0.0, 0.5, n), *burst_gap_days_range)
    extra = rng.gamma(2.0, mean_extra_orders / 2.0, n)
    lifetime = median_lifetime_days * rng.lognormal(0.0, 0.8, n)
    first_day = rng.uniform(0, ACQUISITION_DAYS, n)
    death_day = first_day + rng.exponential(1.0, n) * lifetime
    burst_gaps = rng.exponential(1.0, (n, max_bursts)) * burst_gap[:, None]
    burst_gaps[:, 0] = 0.0
    burst_start = first_day[:, None] + np.cumsum(burst_gaps, axis=1)
    size = np.minimum(1 + rng.poisson(extra[:, None], (n, max_bursts)), max_burst_orders)
    within = rng.exponential(mean_gap_in_burst_days, (n, max_bursts, max_burst_orders))
    within[:, :, 0] = 0.0
    slots = max_bursts * max_burst_orders
    day = (burst_start[:, :, None] + np.cumsum(within, axis=2)).reshape(n, slots)
    placed = (np.arange(max_burst_orders)[None, None, :] < size[:, :, None]).reshape(n, slots)
    keep = placed & (day < np.minimum(death_day, OBSERVATION_DAYS)[:, None])
    keep[:, 0] = False  # the first order of the first burst is the first order
    return _orders_frame(rng, first_day, day, keep)


MIXED_REAL_SHARES: dict[str, float] = {
    "regular_buyers": 0.25,
    "decaying_rates": 0.15,
    "pause_and_return": 0.15,
    "bursts": 0.15,
    "bgnbd": 0.30,
}


def mixed_real(n: int, seed: int = 0) -> pd.DataFrame:
    """A base of all four behaviours plus ordinary BG/NBD buyers, in ``MIXED_REAL_SHARES``.

    Each part is drawn with its own seed (spawned from ``seed``) and renumbered so ids do not collide:
    ``mixed_real_sources(n)`` says which part each id came from. The BG/NBD buyers are
    ``synthetic.generate_orders`` with its default parameters over the same acquisition and observation.

    Breaks all of (i)-(iii) for about 70 % of the customers, as a real base would, while keeping a BG/NBD
    core the model is right about.
    """
    counts = _mixed_counts(n)
    seeds = np.random.SeedSequence(seed).spawn(len(counts))
    parts, offset = [], 0
    for (source, count), child in zip(counts.items(), seeds, strict=True):
        if source == "bgnbd" and count == 0:  # the other generators return an empty log for no customers
            continue
        part_seed = int(child.generate_state(1)[0])
        if source == "bgnbd":
            part = generate_orders(
                count, seed=part_seed, acquisition_days=ACQUISITION_DAYS, observation_days=OBSERVATION_DAYS
            )
            part["timestamp"] = part["timestamp"].astype("datetime64[ns]")
        else:
            part = _GENERATORS[source](count, part_seed)
        index = part["customer_id"].str[1:].astype(int).to_numpy() + offset  # "c12" or "c000012" -> 12
        parts.append(part.assign(customer_id=_customer_ids(index)))
        offset += count
    return pd.concat(parts, ignore_index=True)


def mixed_real_sources(n: int) -> pd.Series:
    """Which behaviour each of ``mixed_real(n, seed)``'s customer ids was drawn from (any seed)."""
    counts = _mixed_counts(n)
    sources = np.repeat(list(counts), list(counts.values()))
    return pd.Series(sources, index=pd.Index(_customer_ids(np.arange(n)), name="customer_id"), name="source")


def _mixed_counts(n: int) -> dict[str, int]:
    """Customers per part: the shares of ``n`` rounded down, the remainder given to the largest fractions."""
    exact = np.array(list(MIXED_REAL_SHARES.values())) * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: n - counts.sum()]] += 1
    return dict(zip(MIXED_REAL_SHARES, counts.tolist(), strict=True))


def _orders_frame(
    rng: np.random.Generator, first_day: np.ndarray, repeat_days: np.ndarray, keep: np.ndarray
) -> pd.DataFrame:
    """The first order plus the kept repeats with Gamma-Gamma amounts, sorted by customer then time."""
    n = len(first_day)
    spend_rate = rng.gamma(SPEND.q, 1.0 / SPEND.v, n)
    customer = np.concatenate([np.arange(n), np.nonzero(keep)[0]])
    day = np.concatenate([first_day, repeat_days[keep]])
    amount = rng.gamma(SPEND.p, 1.0 / spend_rate[customer])
    order = np.lexsort((day, customer))
    seconds = np.floor(day[order] * 86_400).astype("int64")
    timestamps = pd.Timestamp(START) + pd.to_timedelta(seconds, unit="s")
    return pd.DataFrame(
        {
            "customer_id": _customer_ids(customer[order]),
            "timestamp": timestamps.astype("datetime64[ns]"),
            "amount": np.round(amount[order], 2).clip(min=0.01),
        }
    )


def _customer_ids(index: np.ndarray) -> np.ndarray:
    """Customer ids "c000000", "c000001", ..."""
    index = np.asarray(index)
    if index.size == 0:  # np.char.zfill cannot take an empty array
        return np.array([], dtype="<U7")
    return np.char.add("c", np.char.zfill(index.astype(str), 6))


_GENERATORS: dict[str, Callable[[int, int], pd.DataFrame]] = {
    "regular_buyers": regular_buyers,
    "decaying_rates": decaying_rates,
    "pause_and_return": pause_and_return,
    "bursts": bursts,
}

BEHAVIOUR_SHAPES: dict[str, BehaviourShape] = {
    "regular_buyers": BehaviourShape(
        "weekly shoppers with Erlang gaps (k 2-5) who stop at a calendar time",
        "memoryless Poisson purchasing; dropout only just after a purchase",
        regular_buyers,
    ),
    "decaying_rates": BehaviourShape(
        "Poisson buyers whose rate decays with age, rate0 * exp(-age / tau); no dropout",
        "a constant purchase rate while alive",
        decaying_rates,
    ),
    "pause_and_return": BehaviourShape(
        "active spells and months-long pauses, coming back with probability ~2/3 each time",
        "dropout for good; a constant purchase rate while alive",
        pause_and_return,
    ),
    "bursts": BehaviourShape(
        "several orders within days, then months of quiet; dropout in calendar time",
        "memoryless Poisson purchasing; dropout only just after a purchase",
        bursts,
    ),
    "mixed_real": BehaviourShape(
        "the four behaviours plus 30 % BG/NBD buyers, like a real base",
        "all of them, for about 70 % of the customers",
        mixed_real,
    ),
}


def generate_behaviour_shape(name: str, seed: int = 0, customers: int | None = None) -> pd.DataFrame:
    """Orders (customer_id, timestamp, amount) of one behaviour shape."""
    shape = BEHAVIOUR_SHAPES[name]
    return shape.generate(shape.customers if customers is None else customers, seed)
