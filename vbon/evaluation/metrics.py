"""Per-method estimates on held-out prompts, each with its standard error and a bootstrap interval.

Inputs are per-prompt tensors: a policy's k samples [P, k] (rewards, and the sequence KL estimates
k1 = sum_t log pi/pi_ref and k3 = sum_t (pi_ref/pi - 1 - log pi_ref/pi)), and the M cached
reference rewards [P, M]. Every statistic is a mean over prompts of a per-prompt value, so its
standard error and bootstrap interval are over prompts.
"""

from __future__ import annotations

import torch

from vbon.core.bon import bon_kl_bound
from vbon.core.metrics import (
    best_of_first_n,
    bootstrap_interval,
    mean_and_stderr,
    win_rate_vs_reward,
    win_rate_vs_samples,
)


def estimate(per_prompt: torch.Tensor, resamples: int) -> dict:
    """{"mean", "se", "ci": [lo, hi]} of a mean over prompts."""
    mean, se = mean_and_stderr(per_prompt)
    return {"mean": mean, "se": se, "ci": list(bootstrap_interval(per_prompt, resamples))}


def exact(value: float) -> dict:
    """A value known without sampling error."""
    return {"mean": value, "se": 0.0, "ci": [value, value]}


def policy_row(
    name: str,
    rewards: torch.Tensor,
    k1: torch.Tensor,
    k3: torch.Tensor,
    ref_rewards: torch.Tensor,
    bon_rewards: torch.Tensor,
    resamples: int,
) -> dict:
    """A sampled policy. Win rates, ties counting half: against the first cached reference
    sample (the paper's), against all M cached samples (lower variance), and against BoN's pick
    at the workflow's N."""
    per_sample = {
        "reward": rewards,
        "win_rate_first": win_rate_vs_reward(rewards, ref_rewards[:, :1]),
        "win_rate": win_rate_vs_reward(rewards[..., None], ref_rewards[:, None, :]).mean(-1),
        "win_rate_vs_bon": win_rate_vs_reward(rewards, bon_rewards[:, None]),
        "kl": k1,
        "kl_k3": k3,
    }
    row = {k: estimate(v.double().mean(-1), resamples) for k, v in per_sample.items()}
    return {"method": name, "kind": "policy", **row, "kl_method": "k1 Monte Carlo"}


def reference_row(ref_rewards: torch.Tensor, bon_n: int, resamples: int) -> dict:
    """The reference from its cached samples: samples 1..M-1 scored against sample 0 (the
    paper's) and against the other M-1 (leave one out), and the samples BoN did not see
    (n..M-1) against BoN's pick; KL is 0 exactly."""
    others, m = ref_rewards[:, 1:], ref_rewards.shape[1]
    loo = torch.stack(
        [win_rate_vs_samples(ref_rewards[:, j], _drop(ref_rewards, j)) for j in range(m)], -1
    )
    bon = best_of_first_n(ref_rewards, bon_n)
    row = {
        "reward": estimate(ref_rewards.mean(-1), resamples),
        "win_rate_first": estimate(
            win_rate_vs_reward(others, ref_rewards[:, :1]).mean(-1), resamples
        ),
        "win_rate": estimate(loo.mean(-1), resamples),
        "win_rate_vs_bon": estimate(
            win_rate_vs_reward(ref_rewards[:, bon_n:], bon[:, None]).mean(-1), resamples
        ),
        "kl": exact(0.0),
        "kl_k3": exact(0.0),
    }
    return {"method": "reference", "kind": "reference", **row, "kl_method": "exact (pi = pi_ref)"}


def bon_row(n: int, ref_rewards: torch.Tensor, resamples: int) -> dict:
    """BoN at n from the cached samples, no new generation: its pick among the first n, scored
    against the first unseen sample (index n, the paper's) and against all M - n unseen ones.
    KL is the closed form log n - (n-1)/n: exact for distinct rewards, an upper bound with ties."""
    best = best_of_first_n(ref_rewards, n)
    unseen = ref_rewards[:, n:]
    nan = {"mean": float("nan"), "se": float("nan"), "ci": [float("nan")] * 2}
    row = {
        "reward": estimate(best, resamples),
        "win_rate_first": estimate(win_rate_vs_reward(best, unseen[:, 0]), resamples)
        if unseen.shape[1]
        else nan,
        "win_rate": estimate(win_rate_vs_samples(best, unseen), resamples)
        if unseen.shape[1]
        else nan,
        "win_rate_vs_bon": nan,
        "kl": exact(bon_kl_bound(n)),
        "kl_k3": exact(bon_kl_bound(n)),
    }
    return {
        "method": f"BoN N={n}",
        "kind": "bon",
        "n": n,
        **row,
        "kl_method": "closed form log N - (N-1)/N",
    }


def _drop(x: torch.Tensor, j: int) -> torch.Tensor:
    return torch.cat([x[:, :j], x[:, j + 1 :]], -1)
