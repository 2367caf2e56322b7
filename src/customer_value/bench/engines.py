"""``train`` with ``engine=pandas`` beside ``engine=spark`` (local[2]) on generated logs of growing size:
wall time and the driver's peak memory, to show the Spark driver's does not grow with the orders.

Each train runs in its own process, which reports its own peak RSS (VmHWM); its descendants' memory (with
Spark: the JVM, which in local mode also does the executors' work, and the Python workers; on a cluster
that work and its memory are on other machines) is sampled from /proc every 0.2 s and its peak total kept.

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
import json, runpy, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
try:
    runpy.run_module("customer_value.train", run_name="__main__", alter_sys=True)
finally:
    status = Path("/proc/self/status").read_text().splitlines()
    own = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    report.write_text(json.dumps({"driver_kib": own}))
"""

# lifetimes' own way from the same file: read it, summarise it, fit BG/NBD (in weeks, as ``compare.bench_fit``
# feeds it) and Gamma-Gamma on the repeat buyers; the seconds of each step and the process's peak RSS.
LIFETIMES_WITH_PEAKS = """
import json, sys, time
from pathlib import Path
report, path = Path(sys.argv[1]), sys.argv[2]
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import summary_data_from_transaction_data
start = time.perf_counter()
log = pd.read_parquet(path)
read = time.perf_counter()
summary = summary_data_from_transaction_data(
    log, "customer_id", "timestamp", monetary_value_col="amount", freq="D"
)
del log
summarised = time.perf_counter()
BetaGeoFitter(penalizer_coef=0.0).fit(summary["frequency"], summary["recency"] / 7.0, summary["T"] / 7.0)
repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
fitted = time.perf_counter()
status = Path("/proc/self/status").read_text().splitlines()
own = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
report.write_text(json.dumps({
    "read_s": read - start, "summary_s": summarised - read, "fit_s": fitted - summarised, "peak_kib": own
}))
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
    log = folder / f"{engine}.log"
    with log.open("w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
        descendants_kib = 0
        while child.poll() is None:
            descendants_kib = max(descendants_kib, _descendants_rss_kib(child.pid))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"train engine={engine} failed: " + " | ".join(tail))
    found = json.loads(peaks.read_text())
    return {
        "seconds": seconds,
        "driver_peak_gib": found["driver_kib"] / 2**20,
        "children_peak_gib": descendants_kib / 2**20,
    }


def lifetimes_once(orders_path: Path, folder: Path) -> dict[str, float]:
    """lifetimes' summary and BG/NBD + Gamma-Gamma fits of the file in a process of their own: each
    step's seconds and the process's peak RSS (GiB), comparable with ``train_once``'s."""
    report = folder / "lifetimes-peaks.json"
    command = [sys.executable, "-c", LIFETIMES_WITH_PEAKS, str(report), str(orders_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError("lifetimes baseline failed: " + " | ".join(tail))
    found = json.loads(report.read_text())
    seconds = {key: found[key] for key in ("read_s", "summary_s", "fit_s")}
    return seconds | {"peak_gib": found["peak_kib"] / 2**20}


def _descendants_rss_kib(pid: int) -> int:
    """Total resident memory of ``pid``'s descendants (not ``pid`` itself), from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
        except (OSError, ValueError):
            continue  # ended meanwhile
        parents[int(entry.name)] = int(fields["PPid"])
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0])

    def descends(candidate: int) -> bool:
        while candidate in parents and candidate != pid:
            candidate = parents[candidate]
            if candidate == pid:
                return True
        return False

    return sum(kib for proc, kib in rss.items() if proc != pid and descends(proc))


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
