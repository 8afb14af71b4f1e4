"""One optimisation step on one worker's batch: PPO (per-token KL penalty, GAE, value head),
RLOO (sequence-level KL penalty, leave-one-out baseline), or BoN-SFT. The maths is in
`vbon.core.losses`; DeepSpeed all-reduces the gradients across workers."""

from __future__ import annotations

import torch

from vbon.config import TrainingConfig
from vbon.core.losses import (
    gae_advantages,
    kl_k1,
    kl_penalized_rewards,
    masked_whiten,
    ppo_policy_loss,
    rloo_advantages,
    sequence_kl_penalized_reward,
    sft_loss,
    value_loss,
)
from vbon.training.task import Batch, Task


def _advantages(batch: Batch, old_lp, old_values, t: TrainingConfig, beta: float):
    """Per-token advantages [B, T] and value targets (None for RLOO)."""
    mask = batch.mask
    if t.optimizer == "ppo":
        rewards = kl_penalized_rewards(
            batch.score, old_lp, batch.ref_logprobs, mask, beta, t.kl_estimator
        )
        adv, returns = gae_advantages(rewards, old_values, mask, t.gamma, t.gae_lambda)
        return masked_whiten(adv, mask), returns
    total = sequence_kl_penalized_reward(
        batch.score, old_lp, batch.ref_logprobs, mask, beta, t.kl_estimator
    )
    adv = rloo_advantages(total.view(-1, batch.group_size)).flatten()
    return adv[:, None].expand_as(mask) * mask, None


def rl_step(engine, task: Task, batch: Batch, t: TrainingConfig, beta: float) -> dict[str, float]:
    """`ppo_epochs` clipped policy-gradient updates on one rollout batch. The first epoch's
    forward pass also gives pi_old and the old values (the policy has not moved yet)."""
    mask = batch.mask
    for epoch in range(t.ppo_epochs):
        logprob, values = task.forward(engine, batch)
        if epoch == 0:
            old_lp = logprob.detach()
            old_values = None if values is None else values.detach()
            with torch.no_grad():
                adv, returns = _advantages(batch, old_lp, old_values, t, beta)
        loss, clip_frac = ppo_policy_loss(logprob, old_lp, adv, mask, t.clip_ratio)
        if values is not None:
            loss = loss + t.value_coef * value_loss(values, old_values, returns, mask)
        engine.backward(loss)
        engine.step()
    kl = (kl_k1(old_lp, batch.ref_logprobs) * mask).sum(-1)
    return {
        "loss": loss.item(),
        "clip_frac": float(clip_frac),
        "reward": float(batch.rewards.mean()),
        "score": float(batch.score.mean()),
        "kl": float(kl.mean()),
        "tokens": float(mask.sum()),
    }


def sft_step(engine, task: Task, batch: Batch, t: TrainingConfig) -> dict[str, float]:
    """Maximum likelihood on the best-of-N reference completions."""
    for _ in range(t.ppo_epochs):
        logprob, _ = task.forward(engine, batch)
        loss = sft_loss(logprob, batch.mask)
        engine.backward(loss)
        engine.step()
    return {"loss": loss.item(), "tokens": float(batch.mask.sum())}
