"""Customer segments, lifetime value and churn propensity from a transaction log."""

__version__ = "0.1.0"
