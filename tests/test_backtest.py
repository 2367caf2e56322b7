"""Rolling-origin backtests: origins, no look-ahead, and the summary across folds."""

from __future__ import annotations

import pandas as pd
import pytest

from customer_value.data.features import Split
from customer_value.errors import ModelFitError, UserError
from customer_value.evaluation.backtest import backtest, rolling_origins, summarise
from customer_value.models.clv.model import CLVModel


@pytest.fixture(scope="module")
def orders(synthetic_orders: pd.DataFrame) -> pd.DataFrame:
    frame = synthetic_orders.assign(date=synthetic_orders["timestamp"].dt.normalize())
    return frame.groupby(["customer_id", "date"], as_index=False)["amount"].sum()


def test_origins_step_back_from_the_calibration_end() -> None:
    split = Split(pd.Timestamp("2024-07-01"), pd.Timestamp("2024-12-31"))
    origins = rolling_origins(split, folds=3, step_days=30, first_date=pd.Timestamp("2024-01-01"))
    assert [o.calibration_end for o in origins] == list(
        pd.to_datetime(["2024-05-02", "2024-06-01", "2024-07-01"])
    )
    assert all(o.holdout_days == split.holdout_days for o in origins)
    assert origins[-1] == split
    with pytest.raises(UserError, match="not after the first order"):
        rolling_origins(split, folds=10, step_days=30, first_date=pd.Timestamp("2024-01-01"))


def test_each_fold_fits_only_on_orders_up_to_its_origin(orders: pd.DataFrame) -> None:
    last = orders["date"].max()
    split = Split(last - pd.Timedelta(days=180), last)
    origins = rolling_origins(split, folds=3, step_days=45, first_date=orders["date"].min())
    seen: list[pd.Timestamp] = []

    def fit(features: pd.DataFrame) -> CLVModel:
        # T_days is measured to the origin: the oldest customer's tenure dates the data the fold was given.
        seen.append(orders["date"].min() + pd.Timedelta(days=features["T_days"].max()))
        return CLVModel().fit(features)

    folds, failed = backtest(orders, origins, fit)
    assert seen == [o.calibration_end for o in origins] and failed == {}
    assert list(folds.index) == [o.calibration_end.date().isoformat() for o in origins]
    assert folds["churn_auc"].between(0.5, 1).all()
    summary = summarise(folds)
    assert summary["churn_auc.mean"] == pytest.approx(folds["churn_auc"].mean())
    assert summary["churn_auc.std"] == pytest.approx(folds["churn_auc"].std(ddof=1))
    assert summary["churn_auc.std"] > 0


def test_a_fold_that_cannot_be_fitted_is_left_out_with_its_reason(orders: pd.DataFrame) -> None:
    last = orders["date"].max()
    origins = rolling_origins(Split(last - pd.Timedelta(days=180), last), 3, 45, orders["date"].min())

    earliest_age = (origins[0].calibration_end - orders["date"].min()).days

    def fit(features: pd.DataFrame) -> CLVModel:
        if features["T_days"].max() <= earliest_age:  # the earliest origin
            raise ModelFitError("every fallback failed (forced by the test)")
        return CLVModel().fit(features)

    folds, failed = backtest(orders, origins, fit)
    earliest = origins[0].calibration_end.date().isoformat()
    assert failed == {earliest: "every fallback failed (forced by the test)"}
    assert list(folds.index) == [o.calibration_end.date().isoformat() for o in origins[1:]]
