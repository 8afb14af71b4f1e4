"""The vBoN rewards and the N <-> beta mapping (paper, Sec. 3-4).

vBoN minimises KL(pi || pi_BoN). Writing it as KL-regularised RL with coefficient
beta = 1/(N-1) against pi_ref, the optimum is pi* ~ pi_ref * exp(R / beta):
- `exact`: R = (log pi_BoN(y) - log pi_ref(y)) / (N-1), so pi* = pi_BoN exactly;
- `l1`:    R = log F(r(y)) (Eq. 6, the lower bound), so pi* ~ pi_ref * F^(N-1).
"""

from __future__ import annotations

import torch

from vbon.core.bon import log_bon_prob
from vbon.core.cdf import log_empirical_cdf


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


def l1_reward(log_cdf: torch.Tensor) -> torch.Tensor:
    """R_l1(y) = log F(r(y))."""
    return log_cdf


def exact_reward(log_cdf: torch.Tensor, ref_logprob: torch.Tensor, n: int) -> torch.Tensor:
    """R_exact(y) = (log pi_BoN(y) - log pi_ref(y)) / (N-1), with log pi_BoN from `log_bon_prob`.

    Divided by N-1 (not N, as the authors' code does) so that beta = 1/(N-1) puts the optimum
    exactly at pi_BoN.
    """
    return (log_bon_prob(log_cdf, ref_logprob, n) - ref_logprob) / (n - 1)


def policy_score(
    algorithm: str,
    vbon_reward: str,
    rewards: torch.Tensor,
    ref_rewards: torch.Tensor,
    ref_mask: torch.Tensor,
    ref_seq_logprob: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """The sequence score that the RL step maximises, per sample, [P, k].

    `kl_rl` keeps the raw reward r(y). `vbon` maps it through F_hat, estimated from that prompt's
    reference rewards [P, M] (padded, `ref_mask`): log F_hat(r) for `l1`, and for `exact`
    (log pi_BoN(y) - log pi_ref(y)) / (N-1) with the sequence log-probability [P, k] under pi_ref.
    """
    if algorithm == "kl_rl":
        return rewards
    if algorithm != "vbon":
        raise ValueError(f"no RL score for algorithm {algorithm!r}")
    log_cdf = log_empirical_cdf(rewards, ref_rewards, ref_mask)
    if vbon_reward == "l1":
        return l1_reward(log_cdf)
    return exact_reward(log_cdf, ref_seq_logprob, n)
