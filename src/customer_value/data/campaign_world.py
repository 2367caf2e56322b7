"""A generated world where a campaign has a known effect, for testing lift measurement end to end.

Each customer buys as a Poisson process (rate drawn from a gamma) until an exponential lifetime ends
(Pareto/NBD-like), spends gamma-distributed amounts, and joins during an acquisition period. ``history``
gives the orders up to a cut; ``campaign_window`` gives the orders of the following window with each
customer's rate multiplied by its treatment factor from the window's start, and the truth: each
customer's probability of a purchase in the window and expected revenue with and without the treatment,
so the true average effect of any group is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Population:
    ids: np.ndarray
    first_day: np.ndarray  # days after ``start``
    rate: np.ndarray  # purchases per day while alive
    death_day: np.ndarray  # days after ``start``
    mean_spend: np.ndarray
    start: pd.Timestamp
    seed: int

    def history(self, until_day: float) -> pd.DataFrame:
        """Orders (customer_id, timestamp, amount) from each first purchase up to ``until_day``."""
        rng = np.random.default_rng([self.seed, 1])
        joined = self.first_day < until_day
        ends = np.minimum(self.death_day, until_day)
        repeats = rng.poisson(self.rate * np.clip(ends - self.first_day, 0, None)) * joined
        customer = np.concatenate([np.nonzero(joined)[0], np.repeat(np.arange(len(self.ids)), repeats)])
        low = np.repeat(self.first_day, repeats)
        high = np.repeat(ends, repeats)
        day = np.concatenate([self.first_day[joined], rng.uniform(low, high)])
        return self._orders(rng, customer, day)

    def campaign_window(
        self, start_day: float, days: float, factor: np.ndarray
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Orders in (start_day, start_day + days] with each customer's rate times ``factor`` (1 = no
        treatment), and the truth per customer: P(purchase) and expected revenue in the window, with
        the factor applied and without it."""
        rng = np.random.default_rng([self.seed, 2])
        alive = np.clip(
            np.minimum(self.death_day, start_day + days) - np.maximum(start_day, self.first_day), 0, None
        )
        alive = np.where(self.first_day <= start_day, alive, 0.0)  # only customers who had joined by then
        expected = self.rate * alive
        counts = rng.poisson(expected * factor)
        customer = np.repeat(np.arange(len(self.ids)), counts)
        day = rng.uniform(
            np.repeat(np.full(len(self.ids), start_day), counts), np.repeat(start_day + alive, counts)
        )
        truth = pd.DataFrame(
            {
                "p_purchase_treated": 1 - np.exp(-expected * factor),
                "p_purchase_untreated": 1 - np.exp(-expected),
                "revenue_treated": expected * factor * self.mean_spend,
                "revenue_untreated": expected * self.mean_spend,
            },
            index=pd.Index(self.ids, name="customer_id"),
        )
        return self._orders(rng, customer, day), truth

    def _orders(self, rng: np.random.Generator, customer: np.ndarray, day: np.ndarray) -> pd.DataFrame:
        amount = rng.gamma(4.0, self.mean_spend[customer] / 4.0)
        order = np.lexsort((day, customer))
        stamps = self.start + pd.to_timedelta(np.round(day[order] * 86_400), unit="s")
        return pd.DataFrame(
            {"customer_id": self.ids[customer[order]], "timestamp": stamps, "amount": amount[order].round(2)}
        )


def draw_population(
    customers: int,
    seed: int = 0,
    start: str = "2024-01-01",
    acquisition_days: float = 180.0,
    mean_lifetime_days: float = 600.0,
) -> Population:
    """Customers with a gamma purchase rate (about one order a month on average, widely spread), an
    exponential lifetime and a gamma mean spend."""
    rng = np.random.default_rng([seed, 0])
    first = rng.uniform(0, acquisition_days, customers)
    return Population(
        ids=np.char.add("w", np.arange(customers).astype(str)),
        first_day=first,
        rate=rng.gamma(0.8, 1 / 24, customers),
        death_day=first + rng.exponential(mean_lifetime_days, customers),
        mean_spend=rng.gamma(3.0, 15.0, customers),
        start=pd.Timestamp(start),
        seed=seed,
    )
