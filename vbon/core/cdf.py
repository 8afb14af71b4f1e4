"""Per-prompt reward CDF estimated from M reference samples (paper, Sec. 4).

    F_hat(r) = (#{i : r_i < r} + 1) / (M + 1)

The +1 keeps log F_hat finite: log F_hat lies in [-log(M+1), 0].
"""

from __future__ import annotations

import torch


def empirical_cdf(
    rewards: torch.Tensor, ref_rewards: torch.Tensor, ref_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """F_hat for each reward, per prompt.

    rewards: [B, K] rewards to evaluate (K per prompt); ref_rewards: [B, M_max] reference rewards,
    padded; ref_mask: [B, M_max] bool, True where a reference reward is real (prompts may have
    different M). Returns [B, K].
    """
    if ref_mask is None:
        ref_mask = torch.ones_like(ref_rewards, dtype=torch.bool)
    below = (ref_rewards.unsqueeze(-2) < rewards.unsqueeze(-1)) & ref_mask.unsqueeze(-2)
    m = ref_mask.sum(-1, keepdim=True)
    return (below.sum(-1) + 1).to(rewards.dtype) / (m + 1).to(rewards.dtype)


def log_empirical_cdf(
    rewards: torch.Tensor, ref_rewards: torch.Tensor, ref_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log F_hat, the vBoN `l1` reward."""
    return torch.log(empirical_cdf(rewards, ref_rewards, ref_mask))
