"""One optimisation step on one worker's batches: an RL term on rollouts (PPO with a per-token KL
penalty, GAE and a value head; or RLOO with a sequence-level KL penalty and a leave-one-out
baseline), a forward-KL term on weighted cached samples, the Jeffreys mix of both, or BoNBoN on
best/worst pairs of cached samples. The maths
is in `vbon.core.losses`; DeepSpeed all-reduces the gradients across workers."""

from __future__ import annotations

import torch

from vbon.config import TrainingConfig
from vbon.core.losses import (
    KL_ESTIMATORS,
    bonbon_loss,
    effective_sample_fraction,
    gae_advantages,
    kl_k1,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    positional_group_advantages,
    ppo_policy_loss,
    rloo_advantages,
    sequence_kl_penalized_reward,
    snis_advantages,
    value_loss,
    weighted_nll,
)
from vbon.training.memory import note_gradients
from vbon.training.task import Batch, Task
from vbon.training.timing import phase


def token_kl(
    batch: Batch, logprob: torch.Tensor, full: torch.Tensor | None, estimator: str
) -> torch.Tensor:
    """The per-token KL term of the penalty [B, T]: sampled (k1, k3) from the completion's
    log-probabilities, or the exact one over the vocabulary (`full`)."""
    if estimator != "full":
        return KL_ESTIMATORS[estimator](logprob, batch.ref_logprobs)
    if full is None:
        raise ValueError("training.kl_estimator: full needs a language-model task; use k1")
    return full


def advantages(
    batch: Batch,
    old_lp: torch.Tensor,
    old_kl: torch.Tensor,
    old_values: torch.Tensor | None,
    t: TrainingConfig,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [B, T] and value targets (None for RLOO). PPO: GAE over per-token
    rewards -beta kl_t (+ the score on the last token), whitened. RLOO: the leave-one-out
    advantage of R(y) = score - beta sum_t kl_t, on every token of y (not whitened, so the
    loss keeps the scale of the objective's gradient). On rows drawn from pi_ref the RLOO
    baseline becomes the self-normalised importance-sampling one (`snis_advantages`). With a
    prefix baseline (`batch.baseline`), RLOO's returns are per token: GAE over the same per-token
    rewards with the prefix's score as V, centred per position (`positional_group_advantages`)."""
    mask = batch.mask
    if t.estimator == "ppo":
        rewards = kl_penalized_rewards(batch.score, old_kl, mask, beta)
        adv, returns = gae_advantages(rewards, old_values, mask, t.gamma, t.gae_lambda)
        return masked_whiten(adv, mask), returns
    ratio = _seq_logratio(batch, old_lp) if batch.from_reference else None
    if batch.baseline is not None:
        rewards = kl_penalized_rewards(batch.score, old_kl, mask, beta)
        returns = gae_advantages(rewards, batch.baseline, mask, t.gamma, t.gae_lambda)[0]
        groups = (-1, batch.group_size, mask.shape[1])
        ratio = None if ratio is None else ratio.view(groups[:2])
        adv = positional_group_advantages(returns.view(groups), mask.view(groups), ratio)
        return adv.view_as(mask), None
    total = sequence_kl_penalized_reward(batch.score, old_kl, mask, beta)
    groups = total.view(-1, batch.group_size)
    if ratio is not None:
        adv = snis_advantages(groups, ratio.view_as(groups)).flatten()
    else:
        adv = rloo_advantages(groups).flatten()
    return adv[:, None].expand_as(mask) * mask, None


def _row_weights(batch: Batch, old_lp: torch.Tensor) -> torch.Tensor:
    """Each row's weight in an expectation under pi [B, 1]: 1 on the policy's own rollouts;
    k w_j (self-normalised importance weights, as in `snis_advantages`) on pi_ref's rows."""
    if not batch.from_reference:
        return torch.ones_like(old_lp[:, :1])
    ratio = _seq_logratio(batch, old_lp).view(-1, batch.group_size)
    return (batch.group_size * torch.softmax(ratio, -1)).reshape(-1, 1)


def _seq_logratio(batch: Batch, logprob: torch.Tensor) -> torch.Tensor:
    """log pi(y) - log pi_ref(y) per row [B]."""
    return ((logprob - batch.ref_logprobs) * batch.mask).sum(-1)


def rl_step(
    engine,
    task: Task,
    batch: Batch,
    t: TrainingConfig,
    beta: float,
    cached: Batch | None = None,
) -> dict[str, float]:
    """`update_epochs` clipped policy-gradient updates on one rollout batch. The first epoch's
    forward pass also gives pi_old and the old values (the policy has not moved yet).

    With `cached` (the Jeffreys mix, J-BOND), the loss is lambda * forward KL on the cached
    samples + (1 - lambda) * (1 / beta) * the RL loss: the RL objective E[R] - beta KL(pi || ref)
    is -beta KL(pi || pi_BoN) + const, so dividing by beta makes it the reverse KL itself."""
    mask = batch.mask
    lam = t.jeffreys_lambda if cached is not None else 0.0
    for epoch in range(t.update_epochs):
        with phase("forward"):
            logprob, values, kl = task.forward(engine, batch)
        if epoch == 0:
            old_lp = logprob.detach()
            old_values = None if values is None else values.detach()
            with torch.no_grad():
                old_kl = token_kl(batch, old_lp, kl, t.kl_estimator).detach()
                adv, returns = advantages(batch, old_lp, old_kl, old_values, t, beta)
                weights = _row_weights(batch, old_lp)
        loss, clip_frac = ppo_policy_loss(logprob, old_lp, adv, mask, t.clip_ratio)
        if kl is not None:  # the KL's gradient at fixed states (`core.losses.kl_full`)
            loss = loss + beta * masked_mean(weights * kl, mask)
        if values is not None:
            loss = loss + t.value_coef * value_loss(values, old_values, returns, mask)
        if cached is not None:
            with phase("forward"):
                fwd = weighted_nll(task.forward(engine, cached)[0], cached.mask, cached.weights)
            loss = lam * fwd + (1 - lam) / beta * loss
        with phase("backward"):
            engine.backward(loss)
        with phase("optimizer"):
            note_gradients(engine)
            engine.step()
    metrics = {"loss": loss.item(), "clip_frac": float(clip_frac), "tokens": float(mask.sum())}
    if batch.from_reference:  # the rows are pi_ref's: their reward says nothing of pi
        ratio = _seq_logratio(batch, old_lp).view(-1, batch.group_size)
        return metrics | {"ess": float(effective_sample_fraction(ratio).mean())}
    kl = (kl_k1(old_lp, batch.ref_logprobs) * mask).sum(-1)
    return metrics | {
        "reward": float(batch.rewards.mean()),
        "score": float(batch.score.mean()),
        "kl": float(kl.mean()),
    }


def cached_step(engine, task: Task, batch: Batch, t: TrainingConfig) -> dict[str, float]:
    """`update_epochs` steps of weighted maximum likelihood on cached reference samples: BoN-SFT
    (the best of the first N) or BoN distillation (every sample by its chance to be the pick)."""
    for _ in range(t.update_epochs):
        with phase("forward"):
            logprob = task.forward(engine, batch)[0]
            loss = weighted_nll(logprob, batch.mask, batch.weights)
        with phase("backward"):
            engine.backward(loss)
        with phase("optimizer"):
            note_gradients(engine)
            engine.step()
    return {"loss": loss.item(), "tokens": float(batch.mask.sum())}


def pair_step(engine, task: Task, batch: Batch, t: TrainingConfig, beta: float) -> dict[str, float]:
    """`update_epochs` BoNBoN updates on cached pairs (`Task.reference_rollout` with `pairs_of`:
    rows best, worst, best, ...), each pair's log-ratio target (score_w - score_l) / beta, the
    BoN log-ratio difference (`core.losses.bonbon_loss`)."""
    target = (batch.score[0::2] - batch.score[1::2]) / beta
    for _ in range(t.update_epochs):
        with phase("forward"):
            logprob = (task.forward(engine, batch)[0] * batch.mask).sum(-1)
            ratio = logprob - (batch.ref_logprobs * batch.mask).sum(-1)
            loss = bonbon_loss(ratio[0::2], ratio[1::2], target, logprob[0::2], t.bonbon_alpha)
        with phase("backward"):
            engine.backward(loss)
        with phase("optimizer"):
            note_gradients(engine)
            engine.step()
    margin = (ratio[0::2] - ratio[1::2]).detach()
    return {
        "loss": loss.item(),
        "tokens": float(batch.mask.sum()),
        "margin": float(margin.mean()),
        "target_margin": float(target.mean()),
    }
