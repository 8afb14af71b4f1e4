"""Policy-gradient losses shared by the toy harness and the distributed trainer.

Tensors are per token, shape [B, T], with `mask` 1.0 on completion tokens and 0.0 on padding.
The losses know nothing of models: they take log-probabilities, reference log-probabilities,
masks and rewards.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y_t) - log pi_ref(y_t): unbiased for KL(pi || ref), can be negative."""
    return logprob - ref_logprob


def kl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - 1 - d with d = log pi_ref - log pi: unbiased, non-negative, lower variance."""
    d = ref_logprob - logprob
    return torch.expm1(d) - d


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def kl_full(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The exact per-token KL(pi(.|s_t) || pi_ref(.|s_t)) = sum_a pi(a|s_t) log(pi(a|s_t) /
    pi_ref(a|s_t)), from log-probabilities over the vocabulary [B, T, V]; returns [B, T].

    With no sampling noise in it. The sequence KL(pi || pi_ref) = E_pi[sum_t KL_t(s_t)] has the
    gradient E_pi[grad log pi(y) sum_t KL_t] + E_pi[sum_t grad KL_t(s_t)] (states held fixed in
    the second): the first comes through the reward, the second is `kl_full` in the loss."""
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)


def kl_penalized_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards r_t = -beta * kl_t, plus the sequence score on its last token
    (the paper's PPO setup, Sec. 5). score: [B], kl: [B, T]; returns [B, T]."""
    rewards = -beta * kl * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    return rewards + last * score.unsqueeze(-1)


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016):
        delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_l (gamma lam)^l delta_{t+l}.
    With `values` None (no value head) V = 0, and A_t is the discounted reward-to-go.
    Returns (advantages, returns = A + V), both [B, T] and zero on padding."""
    if values is None:
        values = torch.zeros_like(rewards)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al., 2017):
        L = -E_t[min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)],  rho_t = pi(y_t) / pi_old(y_t).
    Returns (loss, fraction of clipped tokens)."""
    ratio = torch.exp(logprob - old_logprob)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    clip_frac = masked_mean((unclipped > clipped).float(), mask)
    return loss, clip_frac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> torch.Tensor:
    """Clipped value regression: 0.5 E_t[max((V - R)^2, (clip(V, V_old +- eps) - R)^2)]."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., 2024), k samples per prompt, rewards [P, k]:
    A_i = R_i - (1/(k-1)) sum_{j != i} R_j."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


def snis_advantages(total: torch.Tensor, seq_logratio: torch.Tensor) -> torch.Tensor:
    """Policy-gradient weights for k samples per prompt drawn from pi_ref, not from pi.

    The RL objective J = E_pi[R] = E_ref[rho R], rho = pi(y) / pi_ref(y), is estimated by
    self-normalised importance sampling, w_j = rho_j / sum_i rho_i, and its score-function
    gradient sum_j w_j (R_j - R_bar) grad log pi(y_j), R_bar = sum_i w_i R_i, is returned as
    A_j = k w_j (R_j - R_bar): at pi = pi_ref it is R_j minus the group mean, the on-policy
    advantage. total: R [P, k]; seq_logratio: log rho [P, k]."""
    w = torch.softmax(seq_logratio, dim=-1)
    baseline = (w * total).sum(-1, keepdim=True)
    return total.shape[-1] * w * (total - baseline)


def positional_group_advantages(
    returns: torch.Tensor, mask: torch.Tensor, seq_logratio: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token advantages from per-token returns G [P, k, T] of k samples per prompt, centred
    at each position t on the other samples' G at the same t (mask [P, k, T]; padding neither
    counts nor gets an advantage).

    On-policy (`seq_logratio` None), the leave-one-out baseline at each position:
        A_it = G_it - mean_{j != i, t < |y_j|} G_jt,
    a function of the other samples only, so unbiased whatever G is (RLOO per position).
    From pi_ref's samples, the self-normalised importance-sampling version of `snis_advantages`:
        A_it = k w_i (G_it - sum_j w_j G_jt / sum_j w_j),  w = softmax(log pi/pi_ref) over the
    samples that reach t. With G_it the same for every t this is `rloo_advantages` /
    `snis_advantages` on every token."""
    k = returns.shape[1]
    if seq_logratio is None:
        total = (returns * mask).sum(1, keepdim=True)
        count = mask.sum(1, keepdim=True)
        others = (count - mask).clamp_min(1.0)
        return (returns - (total - returns * mask) / others) * mask
    w = torch.softmax(seq_logratio, dim=-1)[..., None] * mask
    baseline = (w * returns).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-30)
    return k * w * (returns - baseline)


def effective_sample_fraction(seq_logratio: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size of the importance weights over k, per prompt [P]:
    (sum rho)^2 / (k sum rho^2); 1 at pi = pi_ref, towards 1/k as pi leaves it."""
    w = torch.softmax(seq_logratio, dim=-1)
    return 1.0 / (seq_logratio.shape[-1] * (w**2).sum(-1))


def sequence_kl_penalized_reward(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Sequence-level R(y) = score(y) - beta * sum_t kl_t, the reward that RLOO ranks. [B]."""
    return score - beta * (kl * mask).sum(-1)


def weighted_nll(
    logprob: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Forward-KL / maximum-likelihood loss on given sequences, weight w_i each:
        L = -sum_i w_i sum_t log pi(y_it) / sum_i w_i |y_i|.
    With BoN-pick weights (`vbon.core.bon.bon_pick_probs`) this estimates KL(pi_BoN || pi) up to a
    constant; with unit weights it is BoN-SFT's token-mean NLL. Dividing by the weighted length
    puts it on the scale of the token-mean policy-gradient losses. weights: [B] (None: all 1)."""
    if weights is None:
        weights = torch.ones_like(mask[:, 0])
    weights = weights.to(logprob.dtype)
    return -(weights * (logprob * mask).sum(-1)).sum() / (weights * mask.sum(-1)).sum().clamp_min(
        1e-12
    )


def bon_pairs(rewards: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BoNBoN's pairs: each prompt's k reference draws [P, k] (k a multiple of N) cut into k/N
    consecutive groups of N; in each, the best draw (the BoN pick: highest reward, the first on a
    tie) and the worst (lowest reward, the first on a tie). Returns their column indices [P, k/N].
    A group whose rewards all tie gives best == worst: a pair with no preference in it."""
    p, k = rewards.shape
    if n < 2 or k % n:
        raise ValueError(f"BoNBoN pairs need groups of N >= 2 draws; got k={k}, N={n}")
    groups = rewards.reshape(p, k // n, n)
    start = torch.arange(0, k, n, device=rewards.device)
    return groups.argmax(-1) + start, groups.argmin(-1) + start


def pair_columns(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """`bon_pairs` as one column index matrix [P, 2k/N]: best, worst, best, worst, ..."""
    return torch.stack(bon_pairs(rewards, n), -1).flatten(1)


def bonbon_loss(
    logratio_best: torch.Tensor,
    logratio_worst: torch.Tensor,
    target: torch.Tensor,
    logprob_best: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """BoNBoN (Gui et al., 2024, Sec. 4): SFT on the best of N plus IPO on best against worst,
        L = alpha E[-log pi(y_w)] + (1 - alpha) E[(h - h*)^2],
        h = log pi/pi_ref(y_w) - log pi/pi_ref(y_l),
    per pair [Q], on sequence log-probabilities. The paper's margin h* = (N-1) H_{N-1}
    (`vbon.core.bon.bon_log_ratio_margin`) is the mean over pairs of the BoN log-ratio difference
    log pi_BoN/pi_ref(y_w) - log pi_BoN/pi_ref(y_l) with continuous rewards; `target` is that
    difference for each pair, from the tie-aware masses, so pi_BoN minimises both terms exactly and
    tied pairs get h* = 0."""
    ipo = (logratio_best - logratio_worst - target) ** 2
    return alpha * -logprob_best.mean() + (1.0 - alpha) * ipo.mean()
