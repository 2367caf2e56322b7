"""Compiled passes over the customers for the covariate likelihoods (numba).

Why compiled: with a numeric covariate every customer is a pattern of its own, and each BFGS evaluation
of the covariate likelihood is a pass over a million customers. In NumPy that pass is some thirty array
operations, each reading and writing a million values (~0.1 s an evaluation for BG/NBD; Pareto/NBD's
quadrature works on customers x nodes arrays); here it is one loop that keeps every intermediate in
registers. The arithmetic is the NumPy reference's (``covariate_likelihoods.bgnbd_pattern_terms``,
``pareto_likelihood.pattern_terms``), operation for operation where it can be; sums agree with the
reference's to ~1e-13 relative (tested).

Serial on purpose: on a two-core machine shared with other work, numba's ``parallel=True`` measured
slower (72 ms against 51 ms an evaluation at a million customers) and costs more to compile.

``cache=True`` keeps the machine code beside this file: the first call on a machine compiles (seconds,
see docs/benchmarks.md), later processes load it. ``fastmath=False``: the same IEEE arithmetic as NumPy.
``error_model="numpy"``: a division by zero gives inf or nan (BFGS then backs off), as in NumPy, instead of
raising.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

CHUNKS = 64  # the customers' sums are taken in this many pieces, then added: less rounding than one sum


@njit(cache=True, fastmath=False, error_model="numpy")
def bgnbd_rows(
    log_alpha0: float,
    r: float,
    gammas: np.ndarray,
    z: np.ndarray,
    big_t: np.ndarray,
    w: np.ndarray,
    wx: np.ndarray,
    x_repeat: np.ndarray,
    t_repeat: np.ndarray,
    log_odds: np.ndarray,
    group: np.ndarray,
    ws_out: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """BG/NBD's per-customer terms, summed: customers in any order with the repeat buyers first.

    ln alpha_i = ``log_alpha0`` + gammas . z[:, i] (signs folded into ``gammas``). Returns
    (sum w ln(alpha + T), sum w x ln(alpha + T), sum w softplus(d), sum w expit(d) ln((alpha + t_x) /
    (alpha + T)), sum of the weighted d ll_i / d ln alpha_i) and that derivative summed against each row of
    ``z``; ``ws_out`` receives each repeat buyer's w expit(d) (d = ``log_odds[group]`` - (r + x) ln((alpha
    + t_x) / (alpha + T))).
    """
    n = big_t.shape[0]
    n_repeat = x_repeat.shape[0]
    k = gammas.shape[0]
    n_chunks = max(1, min(CHUNKS, n))
    partial = np.zeros((n_chunks, 5 + k))
    for c in range(n_chunks):
        low, high = c * n // n_chunks, (c + 1) * n // n_chunks
        s_log_t, s_x_log_t, s_soft, s_gap, s_alpha = 0.0, 0.0, 0.0, 0.0, 0.0
        z_sums = np.zeros(k)
        for i in range(low, high):
            eta = log_alpha0
            for j in range(k):
                eta += gammas[j] * z[j, i]
            alpha = math.exp(eta)
            alpha_t = alpha + big_t[i]
            log_t = math.log(alpha_t)
            s_log_t += w[i] * log_t
            s_x_log_t += wx[i] * log_t
            share_t = alpha / alpha_t
            d_alpha = r * w[i] - (r * w[i] + wx[i]) * share_t
            if i < n_repeat:
                alpha_tx = alpha + t_repeat[i]
                log_gap = math.log(alpha_tx) - log_t
                rate = r + x_repeat[i]
                d = log_odds[group[i]] - rate * log_gap
                small = math.exp(-abs(d))
                s_soft += w[i] * (max(d, 0.0) + math.log1p(small))
                ws = w[i] * (1.0 if d >= 0.0 else small) / (1.0 + small)
                ws_out[i] = ws
                s_gap += ws * log_gap
                d_alpha -= ws * rate * (alpha / alpha_tx - share_t)
            s_alpha += d_alpha
            for j in range(k):
                z_sums[j] += z[j, i] * d_alpha
        partial[c, 0] = s_log_t
        partial[c, 1] = s_x_log_t
        partial[c, 2] = s_soft
        partial[c, 3] = s_gap
        partial[c, 4] = s_alpha
        partial[c, 5:] = z_sums
    total = partial.sum(axis=0)
    return total[:5], total[5:]
