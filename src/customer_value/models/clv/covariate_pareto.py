"""Pareto/NBD's covariate log-likelihood and gradient in theta, in one compiled pass over the customers.

Why: with a numeric covariate every customer is a pattern of its own, and the per-pattern NumPy arithmetic
(``pareto_likelihood.pattern_terms``: the dropout integral by 32-node quadrature on customers x nodes
arrays, then the chain rule) made an evaluation at a million customers several seconds. Here the terms in
x only (lnG(r + x) - lnG(r) and its digammas) are summed once per distinct frequency and everything else is
``covariate_kernels.pareto_rows``: the same quadrature, node by node, with nothing stored per customer.

The value and gradient are the per-pattern reference's to rounding (tested).
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln

from customer_value.models.clv.covariate_kernels import pareto_rows
from customer_value.models.clv.covariate_likelihoods import ScaledTimes, split_coefficients
from customer_value.models.clv.likelihoods import _codes
from customer_value.models.clv.pareto_likelihood import _LEGENDRE_NODES, _LEGENDRE_WEIGHTS, TAIL_NATS


class ParetoCovariateTerms:
    """ll and d ll / d theta of weighted (x, t_x, T, design row) patterns under Pareto/NBD with covariates.

    ``sets``: (parameter index, sign, design columns) per coefficient set in theta order: alpha's (index 1)
    and beta's (index 3).
    """

    def __init__(
        self,
        frequency: np.ndarray,
        recency: np.ndarray,
        T: np.ndarray,
        design: np.ndarray,
        weights: np.ndarray,
        sets: list[tuple[int, float, np.ndarray]],
    ) -> None:
        if sorted(index for index, _, _ in sets) != [1, 3]:
            raise ValueError("Pareto/NBD's coefficient sets move alpha and beta")
        self.frequency = np.ascontiguousarray(frequency, dtype="float64")
        self.recency = np.ascontiguousarray(recency, dtype="float64")
        self.T = np.ascontiguousarray(T, dtype="float64")
        self.w = np.ascontiguousarray(weights, dtype="float64")
        self.total_weight = float(self.w.sum())
        self.x_values, x_index = _codes(self.frequency)
        self.weight_by_x = np.bincount(x_index, self.w, len(self.x_values))
        self.sets = sets
        design = np.asarray(design, dtype="float64")
        # Each set's columns, one contiguous row per column.
        self.z = {index: np.ascontiguousarray(design[:, columns].T) for index, _, columns in sets}
        self.signs = {index: sign for index, sign, _ in sets}
        self.times = ScaledTimes(self.recency, self.T)

    def value_and_gradient(self, theta: np.ndarray, time_scale: float) -> tuple[float, np.ndarray]:
        """ll and d ll / d theta (theta: ln r, ln alpha0, ln s, ln beta0, then the sets' gammas in order)."""
        t_x, big_t = self.times.at(time_scale)
        r, _, s, _ = (float(v) for v in np.exp(theta[:4]))
        gammas = split_coefficients(theta, self.sets)
        sums, alpha_sums, beta_sums = pareto_rows(
            r,
            s,
            float(theta[1]),
            float(theta[3]),
            self.signs[1] * np.asarray(gammas[1], dtype="float64"),
            self.z[1],
            self.signs[3] * np.asarray(gammas[3], dtype="float64"),
            self.z[3],
            t_x,
            big_t,
            self.frequency,
            self.w,
            _LEGENDRE_NODES,
            _LEGENDRE_WEIGHTS,
            TAIL_NATS,
        )
        xs, wx, total = self.x_values, self.weight_by_x, self.total_weight
        value = sums[0] + float(wx @ gammaln(r + xs)) - total * float(gammaln(r))
        grad = np.empty(len(theta))
        grad[0] = sums[1] + r * (float(wx @ digamma(r + xs)) - total * float(digamma(r)))
        grad[1:4] = sums[2:5]
        start = 4
        for index, sign, columns in self.sets:
            grad[start : start + len(columns)] = sign * (alpha_sums if index == 1 else beta_sums)
            start += len(columns)
        return float(value), grad
