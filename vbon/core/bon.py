"""The Best-of-N distribution over a finite set of outcomes (paper, Sec. 2 and Eq. 3).

For outcomes y with reference probabilities p(y) and rewards r(y), let
    P_lt(y) = sum_{y': r(y') <  r(y)} p(y')   (= F(r(y)), the reward CDF strictly below)
    P_le(y) = sum_{y': r(y') <= r(y)} p(y').
Drawing N samples from p and keeping the highest reward (the first such draw on a tie) gives
    pi_BoN(y) = p(y) * (P_le^N - P_lt^N) / (P_le - P_lt),
which without ties (P_le = P_lt + p) is (F + p)^N - F^N, and for small p about N F^(N-1) p.
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


def log_bon_prob(log_cdf: torch.Tensor, log_p: torch.Tensor, n: int) -> torch.Tensor:
    """log pi_BoN(y) = logsumexp_{i=1..N} [log C(N,i) + (N-i) log F + i log p], for sequences
    whose probability p is known only in log space (no ties). F = 0 is allowed (log F = -inf)."""
    i = torch.arange(1, n + 1, dtype=log_p.dtype, device=log_p.device)
    log_binom = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)
    f_term = (n - i) * log_cdf.unsqueeze(-1)
    f_term = torch.where(i == n, torch.zeros_like(f_term), f_term)
    return torch.logsumexp(log_binom + f_term + i * log_p.unsqueeze(-1), dim=-1)


def win_rate_vs_ref(q: torch.Tensor, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """P(r(y) > r(y')) + 0.5 P(r(y) = r(y')) for y ~ q, y' ~ p (ties count half)."""
    p_lt, p_le = reward_masses(p, r)
    return (q * (p_lt + 0.5 * (p_le - p_lt))).sum(-1)


def bon_kl_bound(n: int) -> float:
    """KL(pi_BoN || pi_ref) <= log N - (N-1)/N, with equality in the continuous limit."""
    return math.log(n) - (n - 1) / n


def bon_win_rate_limit(n: int) -> float:
    """The win rate of BoN against the reference with continuous rewards: N/(N+1)."""
    return n / (n + 1)
