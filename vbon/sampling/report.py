"""The BoN baseline read off the cached samples: no new generation."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vbon.core.metrics import best_of_first_n, mean_and_stderr, win_rate_vs_samples
from vbon.sampling.stage import load_samples


def bon_table(samples: Path, n_values: list[int], split: str = "test") -> list[dict]:
    """Mean reward and win rate against the reference of BoN at each N, on one split.

    The win rate compares BoN's pick among the first n samples with the M - n samples it did not
    see (ties count half); at n = M there are none left and it is NaN.
    """
    ds = load_samples(samples, split)
    if len(ds) == 0:
        ds = load_samples(samples)
    rewards = torch.tensor(ds["rewards"], dtype=torch.float64)
    rows = []
    for n in n_values:
        best = best_of_first_n(rewards, n)
        reward, reward_se = mean_and_stderr(best)
        win, win_se = (
            mean_and_stderr(win_rate_vs_samples(best, rewards[:, n:]))
            if n < rewards.shape[1]
            else (float("nan"), float("nan"))
        )
        rows.append(
            {
                "n": n,
                "mean_reward": reward,
                "reward_se": reward_se,
                "win_rate": win,
                "win_rate_se": win_se,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["  N   mean reward        win rate vs reference"]
    for r in rows:
        win = (
            "n/a (N = M: no unseen samples)"
            if math.isnan(r["win_rate"])
            else f"{r['win_rate']:.3f} ± {r['win_rate_se']:.3f}"
        )
        lines.append(f"{r['n']:>3}   {r['mean_reward']:+.3f} ± {r['reward_se']:.3f}     {win}")
    return "\n".join(lines)
