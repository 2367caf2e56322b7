"""``train`` with ``engine=pandas`` beside ``engine=spark`` (local[2]) on generated logs of growing size:
wall time and the driver's peak memory, to show the Spark driver's does not grow with the orders.

Each train runs in its own process, which reports its own peak RSS (VmHWM) and the largest peak of the
children it reaped (with Spark: the JVM, which in local mode also does the executors' work; on a
cluster that work and its memory are on other machines).

    python -m customer_value.bench.engines --orders 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from customer_value.bench.compare import BENCH_PARAMS
from customer_value.bench.timing import machine
from customer_value.data.synthetic import generate_orders

ORDERS_PER_CUSTOMER = 11.6  # generate_orders with BENCH_PARAMS and max_repeats=100, measured at 1M customers

TRAIN_WITH_PEAKS = """
import json, resource, runpy, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
try:
    runpy.run_module("customer_value.train", run_name="__main__", alter_sys=True)
finally:
    status = Path("/proc/self/status").read_text().splitlines()
    own = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report.write_text(json.dumps({"driver_kib": own, "children_kib": children}))
"""

SPARK_ARGS = [
    "engine=spark",
    "engine.master='local[2]'",
    "+engine.conf.spark.driver.memory=8g",
    "+engine.conf.spark.ui.enabled=false",
]


def train_once(orders_path: Path, folder: Path, engine: str) -> dict[str, float]:
    """One ``python -m customer_value.train`` on the file: seconds and peak RSS (GiB)."""
    peaks = folder / f"{engine}-peaks.json"
    command = [
        sys.executable,
        "-c",
        TRAIN_WITH_PEAKS,
        str(peaks),
        "data=file",
        f"data.path={orders_path}",
        f"tracking.uri=sqlite:///{folder / f'{engine}.db'}",
        f"tracking.artifact_root={folder / f'{engine}-artifacts'}",
        f"hydra.run.dir={folder / f'{engine}-outputs'}",
        *(SPARK_ARGS if engine == "spark" else []),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"train engine={engine} failed: " + " | ".join(tail))
    found = json.loads(peaks.read_text())
    return {
        "seconds": seconds,
        "driver_peak_gib": found["driver_kib"] / 2**20,
        "children_peak_gib": found["children_kib"] / 2**20,
    }


def bench_engines(
    order_counts: list[int], seed: int = 1, workdir: Path | None = None
) -> list[dict[str, Any]]:
    """For each size: a time-ordered generated log as Parquet, trained with both engines."""
    results = []
    for target in order_counts:
        customers = max(1000, int(target / ORDERS_PER_CUSTOMER))
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            folder = Path(tmp)
            raw = generate_orders(customers, seed=seed, params=BENCH_PARAMS, max_repeats=100)
            raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
            orders_path = folder / "orders.parquet"
            raw.to_parquet(orders_path, index=False)
            row: dict[str, Any] = {"customers": customers, "orders": len(raw)}
            del raw
            for engine in ("pandas", "spark"):
                row[engine] = train_once(orders_path, folder, engine)
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m customer_value.bench.engines", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--orders", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    info = machine()
    results = bench_engines(args.orders, args.seed)
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python {info['python']}")
    print(
        "| orders | customers | pandas s | pandas peak GiB | spark s | spark driver peak GiB "
        "| spark JVM peak GiB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results:
        pandas, spark = row["pandas"], row["spark"]
        print(
            f"| {row['orders']:,} | {row['customers']:,} | {pandas['seconds']:.0f} "
            f"| {pandas['driver_peak_gib']:.2f} "
            f"| {spark['seconds']:.0f} | {spark['driver_peak_gib']:.2f} | {spark['children_peak_gib']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
