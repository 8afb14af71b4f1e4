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


def win_rate_vs_reward(rewards: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """1 where `rewards` beats `other`, 0.5 on a tie, 0 otherwise (broadcasting)."""
    return (rewards > other).double() + 0.5 * (rewards == other).double()


def bootstrap_interval(
    per_prompt: torch.Tensor, resamples: int, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling prompts with replacement."""
    if resamples <= 0 or len(per_prompt) < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(per_prompt), (resamples, len(per_prompt)), generator=g)
    means = per_prompt.double()[idx].mean(-1)
    lo, hi = torch.quantile(
        means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    )
    return float(lo), float(hi)


def pareto_front(kl: list[float], value: list[float]) -> list[bool]:
    """True for points that no other point dominates (KL no higher and value no lower, one of
    them strictly): the best value reachable at each drift from the reference."""
    return [
        not any(
            (k2 <= k and v2 >= v) and (k2 < k or v2 > v) for k2, v2 in zip(kl, value, strict=True)
        )
        for k, v in zip(kl, value, strict=True)
    ]
