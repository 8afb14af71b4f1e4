"""The vBoN rewards and the N <-> beta mapping (paper, Sec. 3-4), tie-aware.

vBoN minimises KL(pi || pi_BoN). Written as KL-regularised RL with coefficient beta = 1/(N-1)
against pi_ref, the optimum is pi* ~ pi_ref * exp(R / beta) = pi_ref * exp((N-1) R). With
a = P_lt(y) and b = P_le(y) the reference mass below and at-or-below r(y) (`vbon.core.bon`),
pi_BoN(y) / pi_ref(y) = (b^N - a^N) / (b - a), the mean of N u^(N-1) over y's tied block, so:

- `exact`: R = (log pi_BoN(y) - log pi_ref(y)) / (N-1); then pi* = pi_BoN exactly, ties included.
- `l1`:    R = log F(r(y)) (Eq. 6, the lower bound) where r(y) is untied; on a tied block it is
           (1/(N-1)) log mean_{u in [a, b]} u^(N-1), so pi* ~ pi_ref * (b^N - a^N) / (b - a) as BoN.

Using F = P_lt alone would give a tied block the weight N a^(N-1), too little: the BoN mass of a
block of exact zeros (common with VADER) would be under-counted and everything above it overshot.
"""

from __future__ import annotations

import math

import torch

from vbon.core.bon import log_bon_ratio


def beta_from_n(n: int) -> float:
    """beta = 1/(N-1)."""
    if n < 2:
        raise ValueError(f"N must be >= 2 for a finite KL coefficient, got {n}")
    return 1.0 / (n - 1)


def n_from_beta(beta: float) -> float:
    """N = 1 + 1/beta (real-valued: beta need not come from an integer N)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return 1.0 + 1.0 / beta


def l1_reward(p_lt: torch.Tensor, p_le: torch.Tensor, n: int) -> torch.Tensor:
    """R_l1 = (log[(b^N - a^N) / (b - a)] - log N) / (N-1); log a when a = b (no tie)."""
    log_ratio = log_bon_ratio(torch.log(p_lt), torch.log(p_le - p_lt), n)
    return (log_ratio - math.log(n)) / (n - 1)


def exact_reward(
    p_lt: torch.Tensor, p_le: torch.Tensor, ref_logprob: torch.Tensor, n: int
) -> torch.Tensor:
    """R_exact = log[((a + w)^N - a^N) / w] / (N-1) with w = max(b - a, pi_ref(y)): the tied
    block's mass, which is at least y's own (an estimated block may have no reference sample but
    y). Without ties this is (log[(F + p)^N - F^N] - log p) / (N-1).

    Divided by N-1 (not N, as the authors' code does) so that beta = 1/(N-1) puts the optimum
    exactly at pi_BoN.
    """
    log_width = torch.maximum(torch.log(p_le - p_lt), ref_logprob)
    return log_bon_ratio(torch.log(p_lt), log_width, n) / (n - 1)
