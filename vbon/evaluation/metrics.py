"""Per-method estimates on held-out prompts, each with its standard error and a bootstrap interval.

Inputs are per-prompt tensors: a policy's k samples [P, k] (rewards, and the sequence KL estimates
k1 = sum_t log pi/pi_ref and k3 = sum_t (pi_ref/pi - 1 - log pi_ref/pi)), and the M cached
reference rewards [P, M]. Every statistic is a mean over prompts of a per-prompt value, so its
standard error and bootstrap interval are over prompts.
"""

from __future__ import annotations

import math

import torch

from vbon.core.bon import bon_kl_bound
from vbon.core.metrics import (
    best_of_first_n,
    bon_reward,
    bon_win_rate,
    bootstrap_interval,
    gain_recovered,
    interpolate_curve,
    mean_and_stderr,
    win_rate_vs_bon,
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
    bon_n: int,
    resamples: int,
) -> dict:
    """A sampled policy. Win rates, ties counting half: against the first cached reference
    sample (the paper's), against all M cached samples (lower variance), and against BoN's pick
    at `bon_n`, the N the policy was trained for (averaged over every N of the M cached
    samples)."""
    per_sample = {
        "reward": rewards,
        "win_rate_first": win_rate_vs_reward(rewards, ref_rewards[:, :1]),
        "win_rate": win_rate_vs_reward(rewards[..., None], ref_rewards[:, None, :]).mean(-1),
        "win_rate_vs_bon": win_rate_vs_bon(rewards, ref_rewards, bon_n),
        "kl": k1,
        "kl_k3": k3,
    }
    row = {k: estimate(v.double().mean(-1), resamples) for k, v in per_sample.items()}
    row["per_prompt_win_rate"] = per_sample["win_rate"].double().mean(-1).tolist()
    return {"method": name, "kind": "policy", **row, "kl_method": "k1 Monte Carlo"}


def closeness_to_bon(row: dict, bon_rows: list[dict], bon_n: int) -> dict:
    """How close a policy row is to Best-of-N:
    - `gain_recovered` G = (WR - 0.5) / (WR_BoN(N) - 0.5) at the policy's N, paired over prompts;
    - `gap_to_bon_curve`: BoN's win rate at the policy's KL (linear between the reference at KL 0
      and the measured BoN points) minus the policy's; its error is the policy's alone.
    Win rates are against all M reference samples (BoN: against the ones it did not pick from)."""
    curve = sorted(
        [(0.0, 0.5)]
        + [
            (r["kl"]["mean"], r["win_rate"]["mean"])
            for r in bon_rows
            if not math.isnan(r["win_rate"]["mean"])
        ]
    )
    target = next((r for r in bon_rows if r["n"] == bon_n), None)
    out = {"gain_recovered": _nan(), "gap_to_bon_curve": _nan()}
    if target is not None and not math.isnan(target["win_rate"]["mean"]):
        g, se = gain_recovered(
            torch.tensor(row["per_prompt_win_rate"]), torch.tensor(target["per_prompt_win_rate"])
        )
        out["gain_recovered"] = {"mean": g, "se": se, "ci": [float("nan")] * 2}
    if len(curve) > 1:
        bon_at_kl = interpolate_curve(row["kl"]["mean"], *map(list, zip(*curve, strict=True)))
        gap = bon_at_kl - row["win_rate"]["mean"]
        out["gap_to_bon_curve"] = {
            "mean": gap,
            "se": row["win_rate"]["se"],
            "ci": [float("nan")] * 2,
        }
    return out


def _nan() -> dict:
    return {"mean": float("nan"), "se": float("nan"), "ci": [float("nan")] * 2}


def reference_row(ref_rewards: torch.Tensor, bon_n: int, resamples: int) -> dict:
    """The reference from its cached samples: samples 1..M-1 scored against sample 0 (the
    paper's) and each against the other M-1 (leave one out), and each against BoN's pick among N
    of the others; KL is 0 exactly."""
    others, m = ref_rewards[:, 1:], ref_rewards.shape[1]
    loo = torch.stack(
        [win_rate_vs_samples(ref_rewards[:, j], _drop(ref_rewards, j)) for j in range(m)], -1
    )
    row = {
        "reward": estimate(ref_rewards.mean(-1), resamples),
        "win_rate_first": estimate(
            win_rate_vs_reward(others, ref_rewards[:, :1]).mean(-1), resamples
        ),
        "win_rate": estimate(loo.mean(-1), resamples),
        "win_rate_vs_bon": estimate(1.0 - bon_win_rate(ref_rewards, bon_n), resamples)
        if bon_n < m
        else _nan(),
        "kl": exact(0.0),
        "kl_k3": exact(0.0),
    }
    return {"method": "reference", "kind": "reference", **row, "kl_method": "exact (pi = pi_ref)"}


def bon_row(n: int, ref_rewards: torch.Tensor, resamples: int) -> dict:
    """BoN at n from the cached samples, no new generation. Reward and win rate (against all
    M - n samples it did not pick from) are averaged over every n-subset of the M samples
    (`vbon.core.metrics`), which removes the noise of a single pick; `win_rate_first` is the
    paper's protocol: the pick among the first n against sample n.
    KL is the closed form log n - (n-1)/n: exact for distinct rewards, an upper bound with ties."""
    win, first, per_prompt = _nan(), _nan(), []
    if n < ref_rewards.shape[1]:  # some samples lie outside the pick's subset
        wins = bon_win_rate(ref_rewards, n)
        win, per_prompt = estimate(wins, resamples), wins.tolist()
        pick = best_of_first_n(ref_rewards, n)
        first = estimate(win_rate_vs_reward(pick, ref_rewards[:, n]), resamples)
    row = {
        "reward": estimate(bon_reward(ref_rewards, n), resamples),
        "win_rate_first": first,
        "win_rate": win,
        "win_rate_vs_bon": _nan(),
        "kl": exact(bon_kl_bound(n)),
        "kl_k3": exact(bon_kl_bound(n)),
    }
    return {
        "method": f"BoN N={n}",
        "kind": "bon",
        "n": n,
        "per_prompt_win_rate": per_prompt,
        **row,
        "kl_method": "closed form log N - (N-1)/N",
    }


def _drop(x: torch.Tensor, j: int) -> torch.Tensor:
    return torch.cat([x[:, :j], x[:, j + 1 :]], -1)
