"""Train a tabular policy in the toy world with the same losses the real trainer uses.

Gradients are Monte Carlo: each step samples sequences from the current policy, scores them,
and applies RLOO with a sequence-level KL penalty (or, for BoN-SFT, the NLL of best-of-N draws).
The exact KL to pi_BoN is then read off by enumeration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from vbon.core.bon import reward_masses
from vbon.core.cdf import empirical_cdf
from vbon.core.losses import (
    ppo_policy_loss,
    rloo_advantages,
    sequence_kl_penalized_reward,
    sft_loss,
)
from vbon.core.vbon_reward import beta_from_n, exact_reward, l1_reward
from vbon.toy.world import RewardFn, TabularPolicy, all_sequences, sequence_index

Method = Literal["vbon_exact", "vbon_l1", "kl_rl", "bon_sft"]

# log F for the lowest outcome is -inf under the exact CDF; the l1 reward floors F here.
L1_CDF_FLOOR = 1e-6


@dataclass(frozen=True)
class ToyRun:
    """One training run. `m` None uses the exact CDF; otherwise F_hat from m reference samples."""

    method: Method
    n: int
    beta: float | None = None
    m: int | None = None
    steps: int = 1500
    batch_size: int = 2048
    lr: float = 0.1
    seed: int = 0

    @property
    def kl_coef(self) -> float:
        if self.method == "kl_rl":
            if self.beta is None:
                raise ValueError("kl_rl needs beta")
            return self.beta
        return beta_from_n(self.n)


def cdf_fn(ref: TabularPolicy, reward_fn: RewardFn, m: int | None, seed: int = 0):
    """F(r(y)) for sequences y: exact (P_ref(r' < r)) when m is None, else F_hat from m samples."""
    if m is None:
        seqs = all_sequences(ref.vocab, ref.length)
        p_lt, _ = reward_masses(ref.probs(), reward_fn(seqs))
        return lambda s: p_lt[sequence_index(s, ref.vocab)]
    ref_rewards = reward_fn(ref.sample(m, torch.Generator().manual_seed(seed + 10_000)))
    return lambda s: empirical_cdf(reward_fn(s)[None], ref_rewards[None])[0]


def score_fn(run: ToyRun, ref: TabularPolicy, reward_fn: RewardFn):
    """The reward that the policy maximises: raw r for kl_rl, the vBoN reward otherwise."""
    if run.method == "kl_rl":
        return reward_fn
    cdf = cdf_fn(ref, reward_fn, run.m, run.seed)
    if run.method == "vbon_l1":
        return lambda s: l1_reward(torch.log(cdf(s).clamp_min(L1_CDF_FLOOR)))
    return lambda s: exact_reward(torch.log(cdf(s)), ref.token_logprobs(s).sum(-1), run.n)


def optimum(ref: TabularPolicy, reward_fn: RewardFn, run: ToyRun) -> torch.Tensor:
    """The analytic optimum of KL-regularised RL: pi* ~ pi_ref * exp(R / beta)."""
    seqs = all_sequences(ref.vocab, ref.length)
    with torch.no_grad():
        log_unnorm = torch.log(ref.probs()) + score_fn(run, ref, reward_fn)(seqs) / run.kl_coef
    return torch.softmax(log_unnorm, dim=0)


def train_toy(ref: TabularPolicy, reward_fn: RewardFn, run: ToyRun) -> TabularPolicy:
    """Fine-tune a copy of `ref`; Adam with a cosine-decayed learning rate."""
    g = torch.Generator().manual_seed(run.seed)
    policy = TabularPolicy(ref.vocab, ref.length, ref.logits.detach())
    opt = torch.optim.Adam(policy.parameters(), lr=run.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / run.steps))
    )
    score = None if run.method == "bon_sft" else score_fn(run, ref, reward_fn)
    for _ in range(run.steps):
        if score is None:
            loss = _bon_sft_loss(policy, ref, reward_fn, run, g)
        else:
            loss = _rl_loss(policy, ref, score, run, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy


def _rl_loss(policy, ref, score, run: ToyRun, g) -> torch.Tensor:
    seqs = policy.sample(run.batch_size, g)
    logp = policy.token_logprobs(seqs)
    mask = torch.ones_like(logp)
    with torch.no_grad():
        ref_logp = ref.token_logprobs(seqs)
        total = sequence_kl_penalized_reward(score(seqs), logp, ref_logp, mask, run.kl_coef)
        adv = rloo_advantages(total[None])[0]
    loss, _ = ppo_policy_loss(logp, logp.detach(), adv[:, None].expand_as(logp), mask)
    return loss


def _bon_sft_loss(policy, ref, reward_fn, run: ToyRun, g) -> torch.Tensor:
    draws = ref.sample(run.batch_size * run.n, g).view(run.batch_size, run.n, -1)
    best = reward_fn(draws.flatten(0, 1)).view(run.batch_size, run.n).argmax(-1)
    seqs = draws[torch.arange(run.batch_size), best]
    logp = policy.token_logprobs(seqs)
    return sft_loss(logp, torch.ones_like(logp))
