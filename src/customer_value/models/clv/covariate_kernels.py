"""Compiled passes over the customers for the covariate likelihoods (numba).

Why compiled: with a numeric covariate every customer is a pattern of its own, and each BFGS evaluation
of the covariate likelihood is a pass over a million customers. In NumPy that pass is some thirty array
operations, each reading and writing a million values (~0.1 s an evaluation for BG/NBD; Pareto/NBD's
quadrature works on customers x nodes arrays); here it is one loop that keeps every intermediate in
registers. The arithmetic is the NumPy reference's (``covariate_likelihoods.bgnbd_pattern_terms``,
``pareto_likelihood.pattern_terms``), operation for operation where it can be; sums agree with the
reference's to ~1e-13 relative (tested).

Not numba's ``parallel=True``: on a two-core machine shared with other work it measured slower (72 ms
against 51 ms an evaluation at a million customers) and costs more to compile. Instead the chunks of one
evaluation are split over the cores in plain threads (``nogil``; ``_over_chunks``), except in threads that
already evaluate side by side (the covariance's 2k gradients, see ``threads.side_by_side``).

``cache=True`` keeps the machine code beside this file: the first call on a machine compiles (seconds,
see docs/benchmarks.md), later processes load it. ``fastmath=False``: the same IEEE arithmetic as NumPy.
``error_model="numpy"``: a division by zero gives inf or nan (BFGS then backs off), as in NumPy, instead of
raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from customer_value.threads import row_slices

CHUNKS = 64  # the customers' sums are taken in this many pieces, then added: less rounding than one sum
# Rows above which one evaluation's chunks are split over the cores (1M customers, 2-core Xeon: the BG/NBD
# covariate fit ~0.1 s faster, median of 4 fits 2.33 -> 2.22 s; an evaluation 37 -> 32-36 ms, its pass
# is bound by memory more than by arithmetic); below, starting the threads costs about what it saves.
KERNEL_ROWS_PER_THREAD = 100_000


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
    n, k = big_t.shape[0], gammas.shape[0]
    partial = np.zeros((max(1, min(CHUNKS, n)), 5 + k))
    args = (log_alpha0, r, gammas, z, big_t, w, wx, x_repeat, t_repeat, log_odds, group, ws_out, partial)
    _over_chunks(_bgnbd_chunks, n, args)
    total = _column_sums(partial)
    return total[:5], total[5:]


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _bgnbd_chunks(
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
    partial: np.ndarray,
    first_chunk: int,
    end_chunk: int,
) -> None:
    """``bgnbd_rows``' chunks ``first_chunk`` to ``end_chunk`` - 1, each chunk's sums into its row of
    ``partial``."""
    n = big_t.shape[0]
    n_repeat = x_repeat.shape[0]
    k = gammas.shape[0]
    n_chunks = partial.shape[0]
    for c in range(first_chunk, end_chunk):
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
                # ln(1 + small), not log1p: within 2e-16 absolute (small <= 1), and a scalar log1p
                # costs twice a log (~7 ms an evaluation at a million customers).
                s_soft += w[i] * (max(d, 0.0) + math.log(1.0 + small))
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


def pareto_rows(
    r: float,
    s: float,
    log_alpha0: float,
    log_beta0: float,
    alpha_gammas: np.ndarray,
    z_alpha: np.ndarray,
    beta_gammas: np.ndarray,
    z_beta: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    frequency: np.ndarray,
    w: np.ndarray,
    nodes: np.ndarray,
    node_weights: np.ndarray,
    tail_nats: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pareto/NBD's per-customer terms, summed: ll_i less lnG(r + x) - lnG(r), that is r ln alpha_i +
    s ln beta_i + ln((alpha + T)^-(r+x) (beta + T)^-s + s I), and its derivatives in (ln r less the
    digammas, ln alpha_i, ln s, ln beta_i), weighted and summed (5 values), with the ln alpha_i and ln
    beta_i ones summed against each row of ``z_alpha`` and ``z_beta``.

    ln alpha_i = ``log_alpha0`` + alpha_gammas . z_alpha[:, i] (signs folded in), likewise beta. I is
    ``pareto_likelihood.ParetoNBDLikelihood._log_integral``'s quadrature, node by node.
    """
    n, k_alpha, k_beta = big_t.shape[0], alpha_gammas.shape[0], beta_gammas.shape[0]
    partial = np.zeros((max(1, min(CHUNKS, n)), 5 + k_alpha + k_beta))
    args = (r, s, log_alpha0, log_beta0, alpha_gammas, z_alpha, beta_gammas, z_beta, t_x, big_t, frequency)
    _over_chunks(_pareto_chunks, n, (*args, w, nodes, node_weights, tail_nats, partial))
    total_sums = _column_sums(partial)
    return total_sums[:5], total_sums[5 : 5 + k_alpha], total_sums[5 + k_alpha :]


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _pareto_chunks(
    r: float,
    s: float,
    log_alpha0: float,
    log_beta0: float,
    alpha_gammas: np.ndarray,
    z_alpha: np.ndarray,
    beta_gammas: np.ndarray,
    z_beta: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    frequency: np.ndarray,
    w: np.ndarray,
    nodes: np.ndarray,
    node_weights: np.ndarray,
    tail_nats: float,
    partial: np.ndarray,
    first_chunk: int,
    end_chunk: int,
) -> None:
    """``pareto_rows``' chunks ``first_chunk`` to ``end_chunk`` - 1, each chunk's sums into its row of
    ``partial``."""
    n = big_t.shape[0]
    k_alpha, k_beta = alpha_gammas.shape[0], beta_gammas.shape[0]
    n_nodes = nodes.shape[0]
    n_chunks = partial.shape[0]
    log_s = math.log(s)
    sn = s + 1.0
    for c in range(first_chunk, end_chunk):
        low, high = c * n // n_chunks, (c + 1) * n // n_chunks
        sums = np.zeros(5 + k_alpha + k_beta)
        for i in range(low, high):
            log_alpha = log_alpha0
            for j in range(k_alpha):
                log_alpha += alpha_gammas[j] * z_alpha[j, i]
            log_beta = log_beta0
            for j in range(k_beta):
                log_beta += beta_gammas[j] * z_beta[j, i]
            alpha, beta = math.exp(log_alpha), math.exp(log_beta)
            m, tx, tt = r + frequency[i], t_x[i], big_t[i]
            log_alpha_t, log_beta_t = math.log(alpha + tt), math.log(beta + tt)
            first = -m * log_alpha_t - s * log_beta_t
            second = -math.inf
            g_r, g_alpha, g_s, g_beta = 0.0, 0.0, 0.0, 0.0  # mean d ln f / d params under the quadrature
            if tx < tt:
                decay = m / (alpha + tx) + sn / (beta + tx)
                drop = tail_nats + math.log1p(decay * (tt - tx))
                end = min(tt, (alpha + tx) * math.exp(drop / m) - alpha)
                end = min(end, (beta + tx) * math.exp(drop / sn) - beta)
                near_alpha = alpha <= beta
                cc, dd = min(alpha, beta), abs(alpha - beta)
                near, far = (m, sn) if near_alpha else (sn, m)
                u_start, u_end = math.log(cc + tx), math.log(cc + end)
                half = 0.5 * (u_end - u_start)
                mid = u_start + half
                shift = (1.0 - near) * u_start - far * math.log(dd + cc + tx)
                total, m_u, m_log_other, m_inv_near, m_inv_other = 0.0, 0.0, 0.0, 0.0, 0.0
                for q in range(n_nodes):
                    u = mid + half * nodes[q]
                    e_u = math.exp(u)
                    other = dd + e_u
                    log_other = math.log(other)
                    mass = math.exp((1.0 - near) * u - far * log_other - shift) * node_weights[q]
                    total += mass
                    m_u += mass * u
                    m_log_other += mass * log_other
                    m_inv_near += mass * (1.0 / e_u)
                    m_inv_other += mass * (1.0 / other)
                second = log_s + (shift + math.log(total) + math.log(half))
                m_u, m_log_other = m_u / total, m_log_other / total
                m_inv_near, m_inv_other = m_inv_near / total, m_inv_other / total
                if near_alpha:
                    g_r, g_alpha = -m_u, -m * m_inv_near
                    g_s, g_beta = -m_log_other, -sn * m_inv_other
                else:
                    g_r, g_alpha = -m_log_other, -m * m_inv_other
                    g_s, g_beta = -m_u, -sn * m_inv_near
            if second == -math.inf:
                log_sum = first
            else:  # numpy's logaddexp
                gap = first - second
                log_sum = (first if gap > 0 else second) + math.log1p(math.exp(-abs(gap)))
            share_first = math.exp(first - log_sum)
            share_second = math.exp(second - log_sum)
            wi = w[i]
            sums[0] += wi * (r * log_alpha + s * log_beta + log_sum)
            sums[1] += wi * (r * (log_alpha - share_first * log_alpha_t + share_second * g_r))
            d_alpha = wi * (alpha * (r / alpha - share_first * m / (alpha + tt) + share_second * g_alpha))
            sums[2] += d_alpha
            sums[3] += wi * (
                s * (log_beta - share_first * log_beta_t + share_second / s + share_second * g_s)
            )
            d_beta = wi * (beta * (s / beta - share_first * s / (beta + tt) + share_second * g_beta))
            sums[4] += d_beta
            for j in range(k_alpha):
                sums[5 + j] += z_alpha[j, i] * d_alpha
            for j in range(k_beta):
                sums[5 + k_alpha + j] += z_beta[j, i] * d_beta
        partial[c] = sums


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _column_sums(partial: np.ndarray) -> np.ndarray:
    """The chunks' sums added, in chunk order (compiled: the same addition as when it ended each kernel)."""
    return partial.sum(axis=0)


def _over_chunks(kernel: Callable[..., None], n_rows: int, args: tuple) -> None:
    """``kernel(*args, first_chunk, end_chunk)`` over every chunk of ``args``' last item (``partial``): in
    one call, or in one contiguous run of chunks per piece of ``row_slices`` (per core when the rows are
    many, one in a thread beside others: the covariance's gradients). Each chunk's arithmetic is the
    same in any thread and the chunks are added in order afterwards: the sums are one call's, bit for bit."""
    n_chunks = args[-1].shape[0]
    threads = len(row_slices(n_rows, KERNEL_ROWS_PER_THREAD))
    if threads == 1:
        kernel(*args, 0, n_chunks)
        return
    cuts = [n_chunks * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: kernel(*args, cuts[i], cuts[i + 1]), range(threads)))
