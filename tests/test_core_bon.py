"""The BoN distribution against brute-force simulation, closed forms and analytic facts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vbon.core.bon import (
    bon_kl_bound,
    bon_probs,
    bon_probs_l1,
    bon_probs_no_ties,
    bon_win_rate_limit,
    log_bon_prob,
    reward_masses,
    win_rate_vs_ref,
)
from vbon.toy.world import all_sequences, distinct_reward, kl, random_reference, tied_reward


def _simulate_bon(p: torch.Tensor, r: torch.Tensor, n: int, draws: int, seed: int) -> torch.Tensor:
    """Draw N from p, keep the highest reward (the first draw on a tie); return frequencies."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(p, draws * n, replacement=True, generator=g).view(draws, n)
    best = idx[torch.arange(draws), r[idx].argmax(-1)]
    return torch.bincount(best, minlength=len(p)).double() / draws


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 5])
def test_bon_matches_simulation(ties: bool, n: int) -> None:
    ref = random_reference(4, 3, seed=3)
    seqs = all_sequences(4, 3)
    r = tied_reward()(seqs) if ties else distinct_reward(4, 3, seed=4)(seqs)
    assert (len(torch.unique(r)) < len(r)) == ties
    p = ref.probs()
    exact = bon_probs(p, r, n)
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-12)
    tv = 0.5 * (exact - _simulate_bon(p, r, n, 1_000_000, seed=n)).abs().sum()
    assert tv <= 0.01


def test_closed_forms_agree_without_ties() -> None:
    p = torch.distributions.Dirichlet(torch.ones(500, dtype=torch.float64)).sample()
    r = torch.randn(500, dtype=torch.float64)
    p_lt, _ = reward_masses(p, r)
    for n in (2, 4, 16):
        exact = bon_probs(p, r, n)
        assert torch.allclose(bon_probs_no_ties(p, p_lt, n), exact, rtol=1e-10)
        assert torch.allclose(
            log_bon_prob(torch.log(p_lt), torch.log(p), n), torch.log(exact), atol=1e-9
        )
        # the L1 form N F^(N-1) p is a lower bound that becomes tight as p -> 0
        l1 = bon_probs_l1(p, p_lt, n)
        assert (l1 <= exact * (1 + 1e-12)).all()
        small = p < 1e-4
        assert torch.allclose(l1[small], exact[small], rtol=n * 1e-3)


def test_log_bon_prob_handles_the_lowest_outcome() -> None:
    """F = 0 (log F = -inf): only the i = N term survives, log pi_BoN = N log p."""
    log_p = torch.tensor([-2.0], dtype=torch.float64)
    got = log_bon_prob(torch.tensor([-math.inf], dtype=torch.float64), log_p, 4)
    assert torch.allclose(got, 4 * log_p)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_continuous_limit_kl_and_win_rate(n: int) -> None:
    k = 200_000
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    r = torch.randperm(k, generator=torch.Generator().manual_seed(0)).double()
    q = bon_probs(p, r, n)
    assert kl(q, p) == pytest.approx(bon_kl_bound(n), abs=1e-3)
    assert kl(q, p) <= bon_kl_bound(n)
    assert float(win_rate_vs_ref(q, p, r)) == pytest.approx(bon_win_rate_limit(n), abs=1e-4)


def _space(draw, max_k: int = 40):
    k = draw(st.integers(1, max_k))
    weights = draw(st.lists(st.floats(0.01, 10.0), min_size=k, max_size=k))
    rewards = draw(st.lists(st.integers(-3, 3), min_size=k, max_size=k))
    p = torch.tensor(weights, dtype=torch.float64)
    return p / p.sum(), torch.tensor(rewards, dtype=torch.float64)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(1, 24))
def test_bon_on_random_spaces(data, n: int) -> None:
    p, r = _space(data.draw)
    q = bon_probs(p, r, n)
    assert (q >= 0).all()
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-9)
    if n == 1:
        assert torch.allclose(q, p)
    # BoN stochastically dominates the reference: less mass at or below every reward level
    for level in torch.unique(r):
        below = r <= level
        assert float(q[below].sum()) <= float(p[below].sum()) + 1e-12
    # neither analytic bound is ever exceeded
    assert kl(q, p) <= bon_kl_bound(n) + 1e-9
    assert float(win_rate_vs_ref(q, p, r)) <= bon_win_rate_limit(n) + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.data(), st.integers(2, 12))
def test_tie_groups_share_mass_in_proportion_to_p(data, n: int) -> None:
    """Within one reward level, lowest-index tie breaking picks each outcome in proportion to p."""
    p, r = _space(data.draw)
    q = bon_probs(p, r, n)
    for level in torch.unique(r):
        group = r == level
        assert torch.allclose(q[group] / q[group].sum(), p[group] / p[group].sum(), atol=1e-9)
