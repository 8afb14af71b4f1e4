"""Per-prompt reward CDF estimated from M reference samples (paper, Sec. 4).

    F_hat(r) = (#{i : r_i < r} + 1) / (M + 1)

The +1 keeps log F_hat finite: log F_hat lies in [-log(M+1), 0]. Rewards tie in practice (VADER
scores many texts exactly 0.0), and under ties the BoN mass of a tied block depends on both ends
of the block, P_lt = P(r' < r) and P_le = P(r' <= r) (see `vbon.core.bon`). Both are estimated
with the same smoothing:

    P_lt_hat(r) = (#{r_i <  r} + 1) / (M + 1),   P_le_hat(r) = (#{r_i <= r} + 1) / (M + 1).

A reward that no reference sample shares has P_le_hat = P_lt_hat = F_hat.
"""

from __future__ import annotations

import torch


def empirical_masses(
    rewards: torch.Tensor, ref_rewards: torch.Tensor, ref_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_lt_hat, P_le_hat) for each reward, per prompt.

    rewards: [B, K] rewards to evaluate (K per prompt); ref_rewards: [B, M_max] reference rewards,
    padded; ref_mask: [B, M_max] bool, True where a reference reward is real (prompts may have
    different M). Returns two [B, K] tensors.
    """
    if ref_mask is None:
        ref_mask = torch.ones_like(ref_rewards, dtype=torch.bool)
    ref, r, valid = ref_rewards.unsqueeze(-2), rewards.unsqueeze(-1), ref_mask.unsqueeze(-2)
    m = (ref_mask.sum(-1, keepdim=True) + 1).to(rewards.dtype)
    below = ((ref < r) & valid).sum(-1)
    at_or_below = ((ref <= r) & valid).sum(-1)
    return (below + 1).to(rewards.dtype) / m, (at_or_below + 1).to(rewards.dtype) / m


def empirical_cdf(
    rewards: torch.Tensor, ref_rewards: torch.Tensor, ref_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """F_hat = P_lt_hat for each reward, per prompt ([B, K]; see `empirical_masses`)."""
    return empirical_masses(rewards, ref_rewards, ref_mask)[0]
