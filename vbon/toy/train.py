"""Train a tabular policy in the toy world with the same losses the real trainer uses.

Gradients are Monte Carlo: each step samples sequences from the current policy, scores them,
and applies RLOO with a sequence-level KL penalty; cached-sample methods (BoN-SFT, BoN
distillation) take the weighted NLL of groups of reference samples, and BoNBoN the best and worst
of groups of N reference samples. Methods come from the same
registry as the real trainer. The exact KL to pi_BoN is then read off by enumeration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vbon.core.bon import reward_masses
from vbon.core.cdf import empirical_masses
from vbon.core.losses import (
    bon_pairs,
    bonbon_loss,
    kl_k1,
    ppo_policy_loss,
    rloo_advantages,
    sequence_kl_penalized_reward,
    weighted_nll,
)
from vbon.methods import get_method
from vbon.toy.world import RewardFn, TabularPolicy, all_sequences, sequence_index


@dataclass(frozen=True)
class ToyRun:
    """One training run of a method of `vbon.methods.METHODS`. `m` None gives the RL score the
    exact reference masses (P_lt, P_le); otherwise they are estimated from m reference samples.
    Cached-sample methods draw groups of `cached_m` reference samples (default 4N) per step and
    weight them as the method says; `mix` is the Jeffreys lambda, `alpha` BoNBoN's SFT share."""

    method: str
    n: int
    beta: float | None = None
    m: int | None = None
    steps: int = 1500
    batch_size: int = 2048
    lr: float = 0.1
    cached_m: int | None = None
    mix: float = 0.5
    alpha: float = 0.005
    seed: int = 0

    @property
    def kl_coef(self) -> float | None:
        coef = get_method(self.method).beta(self.n, self.beta)
        if get_method(self.method).kl == "config" and coef is None:
            raise ValueError(f"{self.method} needs beta")
        return coef


def masses_fn(ref: TabularPolicy, reward_fn: RewardFn, m: int | None, seed: int = 0):
    """(P_lt, P_le) of r(y) for sequences y: exact by enumeration when m is None, else the
    smoothed estimates from m reference samples (`vbon.core.cdf.empirical_masses`)."""
    if m is None:
        p_lt, p_le = reward_masses(ref.probs(), reward_fn(all_sequences(ref.vocab, ref.length)))
        return lambda s: (p_lt[sequence_index(s, ref.vocab)], p_le[sequence_index(s, ref.vocab)])
    ref_rewards = reward_fn(ref.sample(m, torch.Generator().manual_seed(seed + 10_000)))

    def estimate(s: torch.Tensor):
        p_lt, p_le = empirical_masses(reward_fn(s)[None], ref_rewards[None])
        return p_lt[0], p_le[0]

    return estimate


def score_fn(run: ToyRun, ref: TabularPolicy, reward_fn: RewardFn):
    """The sequence reward that the method's RL term maximises. It depends on y only through
    r(y), its masses and pi_ref(y), so it is tabulated once over all V^L sequences."""
    method = get_method(run.method)
    seqs = all_sequences(ref.vocab, ref.length)
    p_lt, p_le = masses_fn(ref, reward_fn, run.m, run.seed)(seqs)
    with torch.no_grad():
        table = method.score(reward_fn(seqs), p_lt, p_le, ref.token_logprobs(seqs).sum(-1), run.n)
    return lambda s: table[sequence_index(s, ref.vocab)]


def optimum(ref: TabularPolicy, reward_fn: RewardFn, run: ToyRun) -> torch.Tensor:
    """The analytic optimum of KL-regularised RL: pi* ~ pi_ref * exp(R / beta)."""
    seqs = all_sequences(ref.vocab, ref.length)
    with torch.no_grad():
        log_unnorm = torch.log(ref.probs()) + score_fn(run, ref, reward_fn)(seqs) / run.kl_coef
    return torch.softmax(log_unnorm, dim=0)


def train_toy(ref: TabularPolicy, reward_fn: RewardFn, run: ToyRun) -> TabularPolicy:
    """Fine-tune a copy of `ref`; Adam with a cosine-decayed learning rate. The loss is the
    trainer's: the RL term, the weighted NLL of cached samples, or the Jeffreys mix
    lambda * forward + (1 - lambda) / beta * RL."""
    method = get_method(run.method)
    g = torch.Generator().manual_seed(run.seed)
    policy = TabularPolicy(ref.vocab, ref.length, ref.logits.detach())
    opt = torch.optim.Adam(policy.parameters(), lr=run.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / run.steps))
    )
    score = score_fn(run, ref, reward_fn) if method.score is not None else None
    for _ in range(run.steps):
        if method.pairwise:
            loss = _pair_loss(policy, ref, reward_fn, score, run, g)
        elif score is None:
            loss = _cached_loss(policy, ref, reward_fn, run, g)
        elif method.uses_cached:
            fwd = _cached_loss(policy, ref, reward_fn, run, g)
            loss = run.mix * fwd + (1 - run.mix) / run.kl_coef * _rl_loss(
                policy, ref, score, run, g
            )
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
        total = sequence_kl_penalized_reward(score(seqs), kl_k1(logp, ref_logp), mask, run.kl_coef)
        adv = rloo_advantages(total[None])[0]
    loss, _ = ppo_policy_loss(logp, logp.detach(), adv[:, None].expand_as(logp), mask)
    return loss


def _cached_loss(policy, ref, reward_fn, run: ToyRun, g) -> torch.Tensor:
    """Groups of cached reference samples, each weighted by the method (per group summing to 1)."""
    m = run.cached_m or 4 * run.n
    groups = max(1, run.batch_size // m)
    seqs = ref.sample(groups * m, g)
    weights = get_method(run.method).cached_weights(reward_fn(seqs).view(groups, m), run.n)
    logp = policy.token_logprobs(seqs)
    return weighted_nll(logp, torch.ones_like(logp), weights.flatten())


def _pair_loss(policy, ref, reward_fn, score, run: ToyRun, g) -> torch.Tensor:
    """BoNBoN on groups of N reference samples; the target is the score difference / beta."""
    seqs = ref.sample(max(1, run.batch_size // run.n) * run.n, g)
    best, worst = (i[0] for i in bon_pairs(reward_fn(seqs)[None], run.n))
    logp = policy.token_logprobs(seqs).sum(-1)
    with torch.no_grad():
        ratio_ref = ref.token_logprobs(seqs).sum(-1)
        target = (score(seqs[best]) - score(seqs[worst])) / run.kl_coef
    ratio = logp - ratio_ref
    return bonbon_loss(ratio[best], ratio[worst], target, logp[best], run.alpha)
