"""Sample-based BoN metrics over cached reference samples (rewards [P, M] per prompt).

BoN-N's statistics are U-statistics: the average over every N-subset of the M cached samples
(and, for a win rate, over every unseen sample), in closed form through q(c) = C(c, N) / C(M, N),
the chance that N samples drawn without replacement all fall among c given ones. They are
unbiased for BoN-N under i.i.d. reference samples, like one pick among the first N, but with the
pick's own noise averaged out (the Rao-Blackwell improvement of that single pick).
"""

from __future__ import annotations

import torch

from vbon.core.bon import subset_max_cdf, win_rate_vs_ref


def best_of_first_n(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Reward of the BoN sample among the first n of each prompt's M samples: max_{i<n} r_i. [P]."""
    return rewards[:, :n].max(-1).values


def bon_reward(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """E[max of N of the M samples drawn without replacement] = sum_i r_(i) (q(i) - q(i-1)), with
    r_(1) <= ... <= r_(M) and q(i) = C(i, N) / C(M, N) the chance that the max is at most r_(i).
    rewards [P, M]; returns [P]."""
    m = rewards.shape[-1]
    q = subset_max_cdf(torch.arange(m + 1), m, n)
    return (rewards.double().sort(-1).values * (q[1:] - q[:-1])).sum(-1)


def win_rate_vs_bon(rewards: torch.Tensor, ref_rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Per sample, P(r beats BoN-N's pick among the M reference samples) + half the ties:
    (q(n_lt) + q(n_le)) / 2, with n_lt, n_le the reference samples below and at-or-below r.
    rewards [P, k], ref_rewards [P, M]; returns [P, k]."""
    m = ref_rewards.shape[-1]
    r, ref = rewards.unsqueeze(-1), ref_rewards.unsqueeze(-2)
    n_lt, n_le = (ref < r).sum(-1), (ref <= r).sum(-1)
    return 0.5 * (subset_max_cdf(n_lt, m, n) + subset_max_cdf(n_le, m, n))


def bon_win_rate(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """BoN-N's win rate against the reference, ties half: each sample j in turn is the reference
    draw and BoN picks among N of the other M - 1, so the estimate is
    1 - mean_j (q'(n_lt,j) + q'(n_le,j)) / 2 with q'(c) = C(c, N) / C(M - 1, N) and the counts
    over the others. With distinct rewards it is N/(N+1) on every prompt. Needs N <= M - 1.
    rewards [P, M]; returns [P]."""
    m = rewards.shape[-1]
    if not 1 <= n <= m - 1:
        raise ValueError(f"BoN's win rate needs 1 <= N <= M - 1 unseen samples, got N={n}, M={m}")
    r, others = rewards.unsqueeze(-1), rewards.unsqueeze(-2)
    n_lt, n_le = (others < r).sum(-1), (others <= r).sum(-1) - 1
    beaten = 0.5 * (subset_max_cdf(n_lt, m - 1, n) + subset_max_cdf(n_le, m - 1, n))
    return 1.0 - beaten.mean(-1)


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


def mean_and_stderr_from_sums(count: float, total: float, total_sq: float) -> tuple[float, float]:
    """`mean_and_stderr` from the sums n, sum x and sum x^2 (as all-reduced over workers):
    mean = S1/n, stderr = sqrt((S2 - n mean^2) / (n (n - 1)))."""
    mean = total / count
    if count < 2:
        return mean, float("nan")
    return mean, max(total_sq - count * mean**2, 0.0) ** 0.5 / (count * (count - 1)) ** 0.5


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


def gain_recovered(
    policy: torch.Tensor, bon: torch.Tensor, baseline: float = 0.5
) -> tuple[float, float]:
    """G = (mean(policy) - c) / (mean(bon) - c) with its standard error over prompts: the share of
    BoN's gain over the reference (c = 0.5, the reference's win rate) that the policy recovers.
    policy, bon: per-prompt win rates [P] on the same prompts; the error is the delta method's,
    with the pairing kept: se = std(a_p - G b_p) / (sqrt(P) |mean(b) - c|)."""
    a, b = policy.double(), bon.double()
    denom = float(b.mean()) - baseline
    g = (float(a.mean()) - baseline) / denom
    influence = (a - g * b) / abs(denom)
    se = float(influence.std(unbiased=True)) / len(a) ** 0.5 if len(a) > 1 else float("nan")
    return g, se


def interpolate_curve(x: float, xs: list[float], ys: list[float]) -> float:
    """The piecewise-linear curve through (xs, ys) (sorted by x) at x, flat beyond its ends."""
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def break_even_requests(one_time_s: float, one_sample_s: float, bon_s: float) -> float:
    """Served requests after which a trained policy (one sample per request) has repaid its
    one-time cost (reference sampling + training) against BoN (N samples, ranked, per request):
    one_time_s / (bon_s - one_sample_s); infinite if BoN is not slower per request."""
    saving = bon_s - one_sample_s
    return one_time_s / saving if saving > 0 else float("inf")


def log_ratio_alignment(log_ratio: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """How far a policy's log-ratio h = log pi/pi_ref on each prompt's reference samples [P, M]
    follows BoN's t = log pi_BoN/pi_ref (`core.bon.empirical_bon_log_ratio`). Both centred per
    prompt (a prompt's log-normaliser is free); returns their correlation and the least-squares
    slope sum(h t) / sum(t^2). pi_BoN itself gives (1, 1); 1 - corr^2 is the share of the
    policy's movement that BoN's reweighting does not explain."""
    h = log_ratio.double() - log_ratio.double().mean(-1, keepdim=True)
    t = target.double() - target.double().mean(-1, keepdim=True)
    return float((h * t).sum() / (h.norm() * t.norm())), float((h * t).sum() / (t * t).sum())


def tilt_scale(corr: float, slope: float) -> float:
    """slope / corr^2 of `log_ratio_alignment`: how steeply a policy tilts along its own
    direction, against the KL-optimal tilt along it. With h = c g for a fixed feature g, the
    vBoN objective per prompt in units of beta, E_pi[t] - KL(pi || pi_ref) ~ Cov(h, t) - Var(h)/2
    for small tilts, peaks at c = Cov(g, t) / Var(g), the least-squares fit of t on g; its slope
    on t is then corr^2, and its scale 1. Below 1 the policy is under-tilted for its feature
    (the optimiser's share of the shortfall); at 1 what is left is the feature, corr."""
    return slope / corr**2 if corr else float("nan")


def reweighted_win_rate(log_weights: torch.Tensor, rewards: torch.Tensor) -> float:
    """Win rate against the reference of the policy that reweights each prompt's M reference
    samples [P, M] by exp(h), self-normalised: mean over prompts of
    sum_i softmax(h)_i (P_lt_i + P_le_i) / 2 (a tie counts half; masses over the M samples).
    h = 0 gives 0.5; h = log pi_BoN/pi_ref gives BoN's win rate on the samples' distribution."""
    p = torch.full_like(rewards, 1 / rewards.shape[-1], dtype=torch.float64)
    q = torch.softmax(log_weights.double(), -1)
    return float(win_rate_vs_ref(q, p, rewards.double()).mean())
