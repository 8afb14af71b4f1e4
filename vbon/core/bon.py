"""The Best-of-N distribution over a finite set of outcomes (paper, Sec. 2 and Eq. 3).

For outcomes y with reference probabilities p(y) and rewards r(y), let
    P_lt(y) = sum_{y': r(y') <  r(y)} p(y')   (= F(r(y)), the reward CDF strictly below)
    P_le(y) = sum_{y': r(y') <= r(y)} p(y').
Drawing N samples from p and keeping the highest reward (the first such draw on a tie) gives
    pi_BoN(y) = p(y) * (P_le^N - P_lt^N) / (P_le - P_lt),
which without ties (P_le = P_lt + p) is (F + p)^N - F^N, and for small p about N F^(N-1) p.
The ratio pi_BoN / p is the mean of N u^(N-1) over the tied interval [P_lt, P_le].
"""

from __future__ import annotations

import math

import torch


def reward_masses(p: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_lt, P_le): reference mass at rewards strictly below and at-or-below each r(y).

    Works over the last dimension; O(K log K) through a sort.
    """
    r_sorted, order = torch.sort(r, dim=-1)
    cum = torch.cumsum(torch.gather(p, -1, order), dim=-1)
    cum = torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)
    n_lt = torch.searchsorted(r_sorted.contiguous(), r.contiguous(), right=False)
    n_le = torch.searchsorted(r_sorted.contiguous(), r.contiguous(), right=True)
    return torch.gather(cum, -1, n_lt), torch.gather(cum, -1, n_le)


def _geometric_sum(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """(a^n - b^n) / (a - b) = sum_{k=0}^{n-1} a^k b^(n-1-k), without cancellation when a ~ b."""
    k = torch.arange(n, dtype=a.dtype, device=a.device)
    return (a.unsqueeze(-1) ** k * b.unsqueeze(-1) ** (n - 1 - k)).sum(-1)


def bon_probs(p: torch.Tensor, r: torch.Tensor, n: int) -> torch.Tensor:
    """Exact pi_BoN with ties broken by the lowest draw index:
    pi_BoN(y) = p(y) * (P_le^N - P_lt^N) / (P_le - P_lt)."""
    p_lt, p_le = reward_masses(p, r)
    return p * _geometric_sum(p_le, p_lt, n)


def bon_probs_no_ties(p: torch.Tensor, cdf: torch.Tensor, n: int) -> torch.Tensor:
    """pi_BoN(y) = (F(y) + p(y))^N - F(y)^N, exact when no two outcomes share a reward."""
    return p * _geometric_sum(cdf + p, cdf, n)


def bon_probs_l1(p: torch.Tensor, cdf: torch.Tensor, n: int) -> torch.Tensor:
    """The first-order approximation pi_BoN(y) ~ N F(y)^(N-1) p(y) (paper, Eq. 5); unnormalised."""
    return n * cdf ** (n - 1) * p


def log_bon_ratio(log_lo: torch.Tensor, log_width: torch.Tensor, n: int) -> torch.Tensor:
    """log of pi_BoN(y) / p(y) = ((a + w)^N - a^N) / w, the mean of N u^(N-1) over [a, a + w],
    in log space: logsumexp_{i=1..N} [log C(N,i) + (N-i) log a + (i-1) log w].

    a = P_lt is the reference mass strictly below r(y) and w = P_le - P_lt the mass of y's tied
    block (y's own mass p(y) when no other outcome shares its reward). w = 0 gives the L1 limit
    log N + (N-1) log a; a = 0 (the lowest block) is allowed. Works for sequences whose
    probabilities are known only in log space.
    """
    i = torch.arange(1, n + 1, dtype=log_lo.dtype, device=log_lo.device)
    log_binom = math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)
    lo_term = torch.where(i == n, 0.0, (n - i) * log_lo.unsqueeze(-1))
    width_term = torch.where(i == 1, 0.0, (i - 1) * log_width.unsqueeze(-1))
    return torch.logsumexp(log_binom + lo_term + width_term, dim=-1)


def empirical_bon_log_ratio(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """log pi_BoN / p of each of a prompt's M samples [P, M], for BoN over those samples' own
    empirical distribution (each of mass 1/M, ties by the lowest draw index): `log_bon_ratio` at
    a = P_lt and w = P_le - P_lt. The target a policy's log-ratio on reference samples tilts
    towards (`vbon.core.metrics.log_ratio_alignment`)."""
    p = torch.full_like(rewards, 1.0 / rewards.shape[-1], dtype=torch.float64)
    p_lt, p_le = reward_masses(p, rewards.double())
    return log_bon_ratio(p_lt.log(), (p_le - p_lt).log(), n)


def _log_comb(a: torch.Tensor, k: int) -> torch.Tensor:
    """log C(a, k) elementwise, -inf where a < k."""
    a = a.double()
    value = torch.lgamma(a + 1) - math.lgamma(k + 1) - torch.lgamma((a - k).clamp_min(0) + 1)
    return torch.where(a >= k, value, -torch.inf)


def subset_max_cdf(count: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """C(count, N) / C(M, N): the probability that all N samples drawn without replacement from M
    fall among `count` given ones, i.e. that their maximum is at or below a reward that `count` of
    the M samples do not exceed (or strictly below it, with `count` the samples below it)."""
    return torch.exp(_log_comb(count, n) - float(_log_comb(torch.tensor(m), n)))


def bon_pick_probs(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Probability that each of M samples is the Best-of-N pick when N of them are drawn without
    replacement and ties go to the lowest draw index (the rule of `bon_probs`):

        w_i = (C(n_le, N) - C(n_lt, N)) / (c_i C(M, N)),

    with n_lt, n_le the samples with reward below and at-or-below r_i and c_i = n_le - n_lt the
    size of i's tied block (which shares the block's mass equally). For i.i.d. reference samples an
    N-subset is N i.i.d. draws, so sum_i w_i delta(y_i) is an unbiased estimate of pi_BoN.
    rewards: [..., M]; returns [..., M], each row summing to 1.
    """
    m = rewards.shape[-1]
    if not 1 <= n <= m:
        raise ValueError(f"BoN pick weights need 1 <= N <= M, got N={n}, M={m}")
    r = rewards.unsqueeze(-1)
    n_lt = (rewards.unsqueeze(-2) < r).sum(-1)
    n_le = (rewards.unsqueeze(-2) <= r).sum(-1)
    block = subset_max_cdf(n_le, m, n) - subset_max_cdf(n_lt, m, n)
    return block / (n_le - n_lt).double()


def win_rate_vs_ref(q: torch.Tensor, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """P(r(y) > r(y')) + 0.5 P(r(y) = r(y')) for y ~ q, y' ~ p (ties count half)."""
    p_lt, p_le = reward_masses(p, r)
    return (q * (p_lt + 0.5 * (p_le - p_lt))).sum(-1)


def bon_log_ratio_margin(n: int) -> float:
    """E[log pi_BoN/pi_ref(y_w) - log pi_BoN/pi_ref(y_l)] = (N-1) H_{N-1} for the best y_w and the
    worst y_l of N draws with continuous rewards (H the harmonic number; Gui et al., 2024,
    BoNBoN). With log pi_BoN/pi_ref = log N + (N-1) log F and F ~ U(0, 1), the best
    draw's E[log F] is -1/N and the worst's -H_N. BoNBoN's IPO margin 1/(2 beta*) is this value."""
    return (n - 1) * sum(1.0 / k for k in range(1, n))


def bon_kl_bound(n: int) -> float:
    """KL(pi_BoN || pi_ref) <= log N - (N-1)/N, with equality in the continuous limit."""
    return math.log(n) - (n - 1) / n


def bon_win_rate_limit(n: int) -> float:
    """The win rate of BoN against the reference with continuous rewards: N/(N+1)."""
    return n / (n + 1)
