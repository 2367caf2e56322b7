"""The evaluation sample of a large base (``jobs.stage.sample_customer_orders``) and giving freed memory
back between steps (``memory.release``)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from customer_value.data.loading import clean_transactions
from customer_value.jobs.stage import sample_customer_orders


def test_a_sample_holds_its_customers_whole_and_both_ends_of_the_log(synthetic_orders: pd.DataFrame) -> None:
    orders, _ = clean_transactions(synthetic_orders, source="synthetic")
    sample = sample_customer_orders(orders, 100, seed=3)
    customers = sample["customer_id"].unique()
    assert 100 <= len(customers) <= 102  # plus a first-day and a last-day customer when not drawn
    assert list(sample["customer_id"].cat.categories) == sorted(customers)  # only the sampled ids
    assert sample["date"].min() == orders["date"].min() and sample["date"].max() == orders["date"].max()
    theirs = orders[orders["customer_id"].isin(customers)]
    pd.testing.assert_frame_equal(  # every order of a sampled customer, in the loader's order
        sample.assign(customer_id=sample["customer_id"].astype(str)).reset_index(drop=True),
        theirs.assign(customer_id=theirs["customer_id"].astype(str)).reset_index(drop=True),
    )
    assert set(sample_customer_orders(orders, 100, seed=4)["customer_id"]) != set(customers)  # seeded
    assert sample_customer_orders(orders, 10_000, seed=3) is orders  # a small base is used whole


RELEASE_CHECK = """
from customer_value import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

# 300 MB of small blocks on the heap, all freed but the last one (which pins the heap's top)
blocks = [bytearray(64 * 1024) for _ in range(4800)]
del blocks[:-1]
before = rss_mb()
memory.release()
print(before - rss_mb())
"""


def test_release_gives_freed_heap_memory_back() -> None:
    freed = float(
        subprocess.run(
            [sys.executable, "-c", RELEASE_CHECK], check=True, capture_output=True, text=True
        ).stdout
    )
    assert freed > 200  # MB: glibc alone kept them (a heap's free pages below its top are not trimmed)


def test_customers_without_orders_do_not_count_towards_the_sample(synthetic_orders: pd.DataFrame) -> None:
    """The loader's categories keep customers whose rows were all dropped: a base of 800 buyers with 50
    such customers is below a sample of 820 and is used whole."""
    orders, _ = clean_transactions(synthetic_orders, source="synthetic")
    ids = orders["customer_id"].cat.add_categories([f"zz{i}" for i in range(50)])  # sorted after the rest
    padded = orders.assign(customer_id=ids)
    assert sample_customer_orders(padded, 820, seed=3) is padded
    assert padded["customer_id"].nunique() == 800 < len(ids.cat.categories)
    drawn = sample_customer_orders(padded, 700, seed=3)["customer_id"].nunique()
    assert 700 <= drawn <= 702  # drawn among the buyers only
