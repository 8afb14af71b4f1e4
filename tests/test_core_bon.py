"""The BoN distribution against brute-force simulation, closed forms and analytic facts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vbon.core.bon import (
    bon_kl_bound,
    bon_log_ratio_margin,
    bon_pick_probs,
    bon_probs,
    bon_probs_l1,
    bon_probs_no_ties,
    bon_win_rate_limit,
    empirical_bon_log_ratio,
    log_bon_ratio,
    reward_masses,
    win_rate_vs_ref,
)
from vbon.core.losses import bon_pairs
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
            torch.log(p) + log_bon_ratio(torch.log(p_lt), torch.log(p), n),
            torch.log(exact),
            atol=1e-9,
        )
        # the L1 form N F^(N-1) p is a lower bound that becomes tight as p -> 0
        l1 = bon_probs_l1(p, p_lt, n)
        assert (l1 <= exact * (1 + 1e-12)).all()
        small = p < 1e-4
        assert torch.allclose(l1[small], exact[small], rtol=n * 1e-3)


def test_log_bon_ratio_edges_and_ties() -> None:
    """a = 0: ((0 + w)^N - 0) / w = w^(N-1); w = 0: the L1 limit N a^(N-1); a tied block
    [a, a + w] gives the mass p (b^N - a^N) / (b - a) of `bon_probs`."""
    w, a = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    ninf = torch.tensor([-math.inf], dtype=torch.float64)
    assert torch.allclose(log_bon_ratio(ninf, torch.log(w), 4), 3 * torch.log(w))
    assert torch.allclose(log_bon_ratio(torch.log(a), ninf, 4), math.log(4) + 3 * torch.log(a))
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    p_lt, p_le = reward_masses(p, r)
    got = p * torch.exp(log_bon_ratio(torch.log(p_lt), torch.log(p_le - p_lt), 3))
    assert torch.allclose(got, bon_probs(p, r, 3))


def _pick_by_enumeration(rewards: list[float], n: int) -> torch.Tensor:
    """Every ordered draw of N distinct samples; the first draw with the top reward wins."""
    wins = torch.zeros(len(rewards), dtype=torch.float64)
    draws = list(itertools.permutations(range(len(rewards)), n))
    for draw in draws:
        best = max(rewards[i] for i in draw)
        wins[next(i for i in draw if rewards[i] == best)] += 1
    return wins / len(draws)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bon_pick_probs_match_enumeration(n: int) -> None:
    rewards = [0.0, 1.0, 0.0, 2.0, 1.0, 1.0, -1.0]
    got = bon_pick_probs(torch.tensor(rewards, dtype=torch.float64), n)
    assert torch.allclose(got, _pick_by_enumeration(rewards, n), atol=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)


def test_bon_pick_probs_estimate_pi_bon_without_bias() -> None:
    """Averaged over many i.i.d. groups of M reference samples, the pick weights give pi_BoN
    (a draw without replacement from i.i.d. samples is i.i.d.), ties included."""
    p = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    r = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    groups = torch.multinomial(p, 6 * 20_000, replacement=True, generator=g).view(20_000, 6)
    weights = bon_pick_probs(r[groups], 4)
    estimate = torch.zeros(5, dtype=torch.float64).index_add_(
        0, groups.flatten(), weights.flatten()
    )
    estimate /= len(groups)
    assert torch.allclose(estimate, bon_probs(p, r, 4), atol=0.01)
    with pytest.raises(ValueError, match="1 <= N <= M"):
        bon_pick_probs(r, 6)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_continuous_limit_kl_and_win_rate(n: int) -> None:
    k = 200_000
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    r = torch.randperm(k, generator=torch.Generator().manual_seed(0)).double()
    q = bon_probs(p, r, n)
    assert kl(q, p) == pytest.approx(bon_kl_bound(n), abs=1e-3)
    assert kl(q, p) <= bon_kl_bound(n)
    assert float(win_rate_vs_ref(q, p, r)) == pytest.approx(bon_win_rate_limit(n), abs=1e-4)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_bon_log_ratio_margin_is_the_mean_best_minus_worst_log_ratio(n: int) -> None:
    """With continuous rewards, F(r) ~ U(0, 1): over groups of N draws, the best's log
    pi_BoN/pi_ref minus the worst's averages (N-1) H_{N-1}, BoNBoN's 1/(2 beta*)."""
    f = torch.rand(1, 200_000 * n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    log_ratio = log_bon_ratio(f.log(), torch.full_like(f, -torch.inf), n)[0]
    best, worst = (i[0] for i in bon_pairs(f, n))
    diff = log_ratio[best] - log_ratio[worst]
    stderr = float(diff.std()) / len(diff) ** 0.5
    assert float(diff.mean()) == pytest.approx(bon_log_ratio_margin(n), abs=4 * stderr)
    assert bon_log_ratio_margin(2) == 1.0
    assert 1 / (2 * bon_log_ratio_margin(8)) == pytest.approx(0.0275482094)  # the authors' beta


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


def test_empirical_bon_log_ratio_is_bon_over_the_samples_own_distribution() -> None:
    rewards = torch.tensor([[0.0, 0.5, 0.0, -1.0, 0.5, 2.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0] * 2])
    m = rewards.shape[1]
    t = empirical_bon_log_ratio(rewards, 4)
    p = torch.full_like(rewards, 1 / m, dtype=torch.float64)
    assert torch.allclose(t.exp(), bon_probs(p, rewards.double(), 4) / p)
    assert torch.allclose(t.exp().sum(-1) / m, torch.ones(2, dtype=torch.float64))
    assert float(t[0, 3]) == pytest.approx(3 * math.log(1 / m))  # kept only if drawn 4 times
    assert t[0, 0] == t[0, 2] == t[0, 6] == t[0, 7]  # a tied block shares one ratio
