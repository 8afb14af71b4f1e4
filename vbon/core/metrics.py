"""Sample-based BoN metrics over cached reference samples (rewards [P, M] per prompt)."""

from __future__ import annotations

import torch


def best_of_first_n(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Reward of the BoN sample among the first n of each prompt's M samples: max_{i<n} r_i. [P]."""
    return rewards[:, :n].max(-1).values


def win_rate_vs_samples(rewards: torch.Tensor, ref_rewards: torch.Tensor) -> torch.Tensor:
    """Per prompt, the share of reference samples that `rewards` beats, ties counted half:
    (#{r_j < r} + 0.5 #{r_j = r}) / M. rewards [P], ref_rewards [P, M]; returns [P]."""
    r = rewards.unsqueeze(-1)
    return ((ref_rewards < r).double() + 0.5 * (ref_rewards == r).double()).mean(-1)


def mean_and_stderr(x: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error over prompts."""
    x = x.double()
    stderr = float(x.std(unbiased=True) / len(x) ** 0.5) if len(x) > 1 else float("nan")
    return float(x.mean()), stderr
