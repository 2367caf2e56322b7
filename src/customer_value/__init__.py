"""Customer segments, lifetime value and churn propensity from a transaction log.

The package reads as the data flow: ``data`` (logs to the customer table), ``models`` (``clv``, ``segments``),
``evaluation``, ``tracking`` (MLflow, registry, pyfunc), ``jobs`` (train, score, sweep, server), ``spark``
and ``bench``. ``legacy`` keeps the flat module names of before that layout importable for old models.
"""

from customer_value import legacy

__version__ = "0.1.0"
legacy.install()
