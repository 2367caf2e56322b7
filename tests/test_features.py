"""The customer table against lifetimes' own utilities on the same orders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from lifetimes.utils import calibration_and_holdout_data, summary_data_from_transaction_data

from customer_value.data.features import (
    FEATURE_COLUMNS,
    Split,
    calibration_and_holdout,
    customer_features,
    holdout_outcome,
    resolve_split,
)
from customer_value.data.loading import clean_transactions, load_bundled
from customer_value.errors import DataError


@pytest.fixture(scope="module")
def sample_orders() -> pd.DataFrame:
    return load_bundled("cdnow_sample")[0]


def test_features_equal_lifetimes_summary(sample_orders: pd.DataFrame) -> None:
    as_of = pd.Timestamp("1998-06-30")
    ours = customer_features(sample_orders, as_of)
    theirs = summary_data_from_transaction_data(
        sample_orders,
        "customer_id",
        "date",
        monetary_value_col="amount",
        observation_period_end=as_of,
        freq="D",
    ).reindex(ours.index)
    assert list(ours.columns) == FEATURE_COLUMNS
    np.testing.assert_array_equal(ours["frequency"], theirs["frequency"])
    np.testing.assert_array_equal(ours["recency_days"], theirs["recency"])
    np.testing.assert_array_equal(ours["T_days"], theirs["T"])
    np.testing.assert_allclose(ours["monetary_value"], theirs["monetary_value"], rtol=1e-12)
    assert (ours["days_since_last"] == ours["T_days"] - ours["recency_days"]).all()
    assert (ours["n_orders"] == ours["frequency"] + 1).all()


def test_litt_days_is_the_sum_of_log_gaps_between_purchase_days(sample_orders: pd.DataFrame) -> None:
    """MBG/CNBD-k's statistic against a plain pandas grouped diff (orders after as_of left out)."""
    as_of = pd.Timestamp("1997-09-30")
    ours = customer_features(sample_orders, as_of)["litt_days"]
    seen = sample_orders[sample_orders["date"] <= as_of].sort_values(["customer_id", "date"])
    gaps = seen.groupby("customer_id", observed=True)["date"].diff().dt.days
    theirs = np.log(gaps).groupby(seen["customer_id"], observed=True).sum().reindex(ours.index)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert (ours > 0).sum() > 500  # most repeat buyers' gaps are longer than a day


def test_calibration_and_holdout_equal_lifetimes(synthetic_orders: pd.DataFrame) -> None:
    orders = synthetic_orders.assign(date=synthetic_orders["timestamp"].dt.normalize())
    orders = orders.groupby(["customer_id", "date"], as_index=False)["amount"].sum()
    split = resolve_split(orders, None, 0.5)
    calibration, holdout = calibration_and_holdout(orders, split)
    theirs = calibration_and_holdout_data(
        orders,
        "customer_id",
        "date",
        calibration_period_end=split.calibration_end,
        observation_period_end=split.holdout_end,
        freq="D",
        monetary_value_col="amount",
    ).reindex(calibration.index)
    np.testing.assert_array_equal(calibration["frequency"], theirs["frequency_cal"])
    np.testing.assert_array_equal(calibration["recency_days"], theirs["recency_cal"])
    np.testing.assert_array_equal(calibration["T_days"], theirs["T_cal"])
    np.testing.assert_allclose(calibration["monetary_value"], theirs["monetary_value_cal"], rtol=1e-12)
    np.testing.assert_array_equal(holdout["purchases"], theirs["frequency_holdout"])
    np.testing.assert_allclose(
        holdout["revenue"], theirs["monetary_value_holdout"] * theirs["frequency_holdout"], rtol=1e-9
    )
    assert split.holdout_days == theirs["duration_holdout"].iloc[0]


def test_features_ignore_orders_after_as_of() -> None:
    orders = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b"],
            "date": pd.to_datetime(["2024-01-01", "2024-01-08", "2024-02-01", "2024-03-01"]),
            "amount": [10.0, 20.0, 99.0, 5.0],
        }
    )
    table = customer_features(orders, pd.Timestamp("2024-01-15"))
    assert list(table.index) == ["a"]
    row = table.loc["a"]
    assert (row["frequency"], row["recency_days"], row["T_days"], row["days_since_last"]) == (1, 7, 14, 7)
    assert row["monetary_value"] == 20.0
    assert row["mean_order_value"] == 15.0


def test_split_by_share_and_refusal_of_an_empty_window(synthetic_orders: pd.DataFrame) -> None:
    orders = synthetic_orders.assign(date=synthetic_orders["timestamp"].dt.normalize())
    first, last = orders["date"].min(), orders["date"].max()
    split = resolve_split(orders, None, 0.25)
    assert isinstance(split, Split)
    assert split.calibration_end == (first + (last - first) * 0.25).normalize()
    assert split.holdout_end == last
    with pytest.raises(DataError, match="calibration_end"):
        resolve_split(orders, str(last.date()), 0.5)
    with pytest.raises(DataError, match="calibration_share"):
        resolve_split(orders, None, 1.5)


def test_row_order_does_not_change_the_features(sample_orders: pd.DataFrame) -> None:
    as_of = pd.Timestamp("1997-09-30")
    shuffled = sample_orders.sample(frac=1.0, random_state=1).set_index(
        np.zeros(len(sample_orders), dtype=int)
    )
    pd.testing.assert_frame_equal(customer_features(shuffled, as_of), customer_features(sample_orders, as_of))


def test_purchase_regularity_is_the_coefficient_of_variation_of_gaps() -> None:
    from customer_value.data.features import purchase_regularity

    days = pd.to_datetime
    orders = pd.DataFrame(
        {
            "customer_id": ["clock"] * 4 + ["bursty"] * 4 + ["two"] * 2,
            "date": days(
                ["2024-01-01", "2024-01-11", "2024-01-21", "2024-01-31"]
                + ["2024-01-01", "2024-01-02", "2024-01-03", "2024-03-01"]
                + ["2024-01-01", "2024-02-01"]
            ),
            "amount": 1.0,
        }
    )
    regularity = purchase_regularity(orders, days("2024-12-31"))
    assert regularity["clock"] == 0.0
    gaps = np.array([1.0, 1.0, 58.0])
    assert regularity["bursty"] == pytest.approx(gaps.std(ddof=1) / gaps.mean())
    assert np.isnan(regularity["two"])  # one gap: no regularity to measure
    # Orders after as_of are ignored: by 2024-01-15 "clock" had one gap, by 2024-01-21 two equal ones.
    assert np.isnan(purchase_regularity(orders, days("2024-01-15"))["clock"])
    assert purchase_regularity(orders, days("2024-01-21"))["clock"] == 0.0


@pytest.mark.parametrize("code_scale", [1, 2**40])  # 2**40: key and row number no longer fit in 63 bits
def test_sorted_runs_group_like_a_stable_sort_by_customer_then_day(code_scale: int) -> None:
    """Both sorting paths of ``grouping`` (packed value sort, stable argsort) give the same runs."""
    from customer_value.data.grouping import run_sums, sorted_runs

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 50, 2_000) * code_scale
    days = rng.integers(19_000, 19_400, 2_000)
    amounts = rng.random(2_000)
    runs = sorted_runs(codes, days, by_day=True)
    expected = (
        pd.DataFrame({"code": codes, "day": days, "amount": amounts})
        .groupby(["code", "day"], sort=True)["amount"]
        .sum()
    )
    assert np.array_equal(runs.codes_at(runs.starts), expected.index.get_level_values("code"))
    assert np.array_equal(runs.days_at(runs.starts), expected.index.get_level_values("day"))
    np.testing.assert_allclose(run_sums(amounts, runs), expected.to_numpy(), rtol=1e-12)
    assert np.array_equal(runs.order, np.lexsort((days, codes)))  # stable: ties keep row order


@pytest.mark.parametrize("rows_per_thread", [10**9, 100])  # one Arrow encoding; slices in threads, unified
@pytest.mark.parametrize("dtype", ["str", pd.ArrowDtype(pa.large_string()), object])
def test_factorize_of_text_equals_pandas(
    rows_per_thread: int, dtype: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader hashes ids with Arrow, in threads: the codes and uniques are pandas' own, sorted or not."""
    from customer_value.data import grouping

    monkeypatch.setattr(grouping, "ROWS_PER_THREAD", rows_per_thread)
    rng = np.random.default_rng(5)
    ids = rng.choice(np.array(["b", "a", " a", "é", "Z", "", "c1", "c10", "c2"], dtype=object), 2_000)
    ids[rng.integers(0, 2_000, 40)] = None
    values = pd.Series(ids, dtype=dtype)
    for sort in (False, True):
        codes, uniques = grouping.factorize(values, sort=sort)
        expected_codes, expected_uniques = pd.factorize(values, sort=sort)
        assert np.array_equal(codes, expected_codes)
        assert list(uniques) == list(expected_uniques)


@pytest.mark.parametrize("dtype", ["str", pd.ArrowDtype(pa.large_string()), object])
def test_aligned_rows_are_reindex_rows(dtype: object) -> None:
    """The customer file joined by Arrow's hashing of the ids: reindex's frame, absent ids and types too."""
    from customer_value.data.grouping import aligned_rows

    frame = pd.DataFrame(
        {
            "score": [1.0, 2.0, 3.0],
            "visits": [1, 2, 3],
            "member": [True, False, True],
            "plan": pd.Series(["pro", None, "free"], dtype="str"),
            "tier": pd.Series(["a", "b", "a"], dtype="category"),
        },
        index=pd.Index(["c2", "é", "c10"], dtype=dtype),
    )
    for labels in (["c10", "c2", "é", "c2"], ["c10", "absent", "é"], []):
        index = pd.Index(labels, dtype=dtype)
        pd.testing.assert_frame_equal(aligned_rows(frame, index), frame.reindex(index))
    twice = pd.concat([frame, frame.iloc[:1]])  # a duplicated id: reindex's error, not a silent first match
    with pytest.raises(ValueError, match="duplicate"):
        aligned_rows(twice, pd.Index(["c2"], dtype=dtype))


def test_run_sums_of_runs_of_one_row_are_the_values_in_key_order() -> None:
    from customer_value.data.grouping import run_sums, sorted_runs

    codes, days = np.array([2, 0, 1]), np.array([5, 7, 6])
    assert run_sums(np.array([1.0, 2.0, 3.0]), sorted_runs(codes, days, by_day=True)).tolist() == [
        2.0,
        3.0,
        1.0,
    ]


def test_holdout_outcome_by_category_code_equals_grouping_the_ids(synthetic_orders: pd.DataFrame) -> None:
    """The loader's categorical ids are counted by code; any other id column is grouped: same table."""
    orders, _ = clean_transactions(synthetic_orders, source="synthetic")
    split = resolve_split(orders, None, 0.5)
    customers = pd.Index([*orders["customer_id"].cat.categories[::3], "never-seen"], name="customer_id")
    by_code = holdout_outcome(orders, customers, split)
    grouped = holdout_outcome(orders.assign(customer_id=orders["customer_id"].astype(str)), customers, split)
    pd.testing.assert_frame_equal(by_code, grouped, check_exact=False, rtol=1e-12)
    assert by_code.loc["never-seen"].tolist() == [0.0, 0.0] and by_code["purchases"].sum() > 0


def test_row_slices_cover_every_row_once_one_piece_per_core_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pieces the threaded steps (Arrow's id hashing, the per-customer 2F1) split their rows into."""
    from customer_value import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _: range(3))
    for n_rows, per_thread, expected in [(10, 3, 3), (10, 4, 2), (10, 11, 1), (0, 5, 1)]:
        pieces = threads.row_slices(n_rows, per_thread)
        assert len(pieces) == expected
        assert np.array_equal(np.concatenate([np.arange(n_rows)[s] for s in pieces]), np.arange(n_rows))
