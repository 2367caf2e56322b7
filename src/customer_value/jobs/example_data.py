"""A worked example's files: a simulated order log and its customer file, with known covariate effects.

``make example-data`` (``python -m customer_value.jobs.example_data``) writes ``orders.csv`` and
``customers.csv`` (channel, tenure_score and a protected column, gender) to ``--output`` (default
``outputs/example``), and ``truth.json``: the parameters and coefficients the customers were drawn from, to
set beside what ``make train`` with covariates estimates (README, "Customer covariates").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from customer_value.data.synthetic import generate_covariate_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/example", help="folder for the three files")
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--family", default="pareto_nbd", choices=["bgnbd", "pareto_nbd"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    world = generate_covariate_world(args.customers, family=args.family, seed=args.seed)
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    world.orders.to_csv(folder / "orders.csv", index=False)
    genders = np.random.default_rng(args.seed).choice(["female", "male"], len(world.customers))
    world.customers.assign(gender=genders).to_csv(folder / "customers.csv", index=False)
    (folder / "truth.json").write_text(json.dumps({"family": args.family, **world.truth}, indent=2))
    print(f"{len(world.orders):,} orders of {args.customers:,} customers ({args.family}) -> {folder}/")


if __name__ == "__main__":
    main()
