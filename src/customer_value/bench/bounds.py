"""``python -m customer_value.bench.bounds``: what one prediction costs at the predict-time bounds.

For every purchase family, fitted on the CDNOW 1/10 sample's full history (2,357 customers, as the
registered model would be), every customer is predicted at each horizon with intervals off and on (the
registered model's default: 100 bootstrap draws), and the wall time and peak memory are printed. The
bounds in ``models.clv.bounds`` were chosen from these figures (docs/configuration.md "Bounds on predict-time
parameters"); the tests only check that a prediction at the bound completes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from customer_value.bench.timing import machine
from customer_value.data.features import customer_features
from customer_value.data.loading import load_bundled
from customer_value.models.clv.bounds import MAX_HORIZON_DAYS, discount_steps
from customer_value.models.clv.btyd import FAMILIES
from customer_value.models.clv.model import CLVModel


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_bounds(
    horizons: list[float], families: list[str], data: str = "cdnow_sample", draws: int = 100
) -> list[dict[str, object]]:
    """One row per (family, horizon, intervals): seconds, discount steps and the process's peak RSS."""
    orders, _ = load_bundled(data)
    features = customer_features(orders, orders["date"].max())
    rows = []
    for family in families:
        model = CLVModel(family=family, interval_draws=draws).fit(features)
        for horizon in horizons:
            for intervals in (False, True):
                started = time.perf_counter()
                model.predict(features, horizon, intervals=intervals)
                rows.append(
                    {
                        "family": family,
                        "horizon_days": horizon,
                        "discount_steps": discount_steps(horizon, model.discount_step_days),
                        "intervals": intervals,
                        "customers": len(features),
                        "seconds": round(time.perf_counter() - started, 3),
                        "peak_rss_mib": round(_peak_rss_mib(), 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon-days", type=float, nargs="+", default=[365.25, MAX_HORIZON_DAYS])
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--data", default="cdnow_sample", choices=["cdnow_sample", "cdnow_master"])
    args = parser.parse_args(argv)
    print(json.dumps(machine()))
    bench_bounds(args.horizon_days, args.families, args.data)


if __name__ == "__main__":
    main()
